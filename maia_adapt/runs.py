"""Run directories: fingerprints of a run's settings, and finding an interrupted run to resume.

Re-running the same command starts a new Hydra run directory; a stage that supports resuming looks
for an earlier directory of the same stage whose fingerprint matches and that did not finish.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

FINGERPRINT_FILE = "fingerprint.txt"
DONE_FILE = "DONE"
# settings that do not change what a run computes
_IGNORED = {"paths", "logger", "hydra"}


def config_fingerprint(cfg, ignore=()) -> str:
    container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    kept = {k: v for k, v in container.items() if k not in _IGNORED | set(ignore)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mark_started(run_dir: Path, fingerprint: str) -> None:
    (Path(run_dir) / DONE_FILE).unlink(missing_ok=True)  # a run directory used again is not done until it is
    (Path(run_dir) / FINGERPRINT_FILE).write_text(fingerprint + "\n")


def clear_stale(run_dir: Path, *folders: str) -> None:
    """Remove what an earlier, different run left in a reused run directory (a preset's fixed
    hydra.run.dir), so that a fresh start never resumes from another run's checkpoints."""
    import shutil

    for f in folders:
        shutil.rmtree(Path(run_dir) / f, ignore_errors=True)


def mark_done(run_dir: Path) -> None:
    (Path(run_dir) / DONE_FILE).write_text("ok\n")


def find_resumable(run_dir: Path, fingerprint: str, has_checkpoint) -> Path | None:
    """The run directory itself (a job requeued by SLURM, or a fixed hydra.run.dir) or else the newest
    sibling with this fingerprint, not done, for which has_checkpoint(dir)."""
    run_dir = Path(run_dir).resolve()
    own = run_dir / FINGERPRINT_FILE
    if own.is_file() and own.read_text().strip() == fingerprint and not (run_dir / DONE_FILE).exists() \
            and has_checkpoint(run_dir):
        return run_dir
    candidates = []
    for d in run_dir.parent.glob("*"):
        if d.resolve() == run_dir or not d.is_dir() or (d / DONE_FILE).exists():
            continue
        fp = d / FINGERPRINT_FILE
        if fp.is_file() and fp.read_text().strip() == fingerprint and has_checkpoint(d):
            candidates.append(d)
    return max(candidates, key=lambda d: d.stat().st_mtime) if candidates else None


def resume_point(run_dir: Path, fingerprint: str, resume: bool = True, carry: tuple[str, ...] = ()) -> Path | None:
    """The checkpoint (checkpoints/step_*) a run of these settings continues from, or None.

    Rank 0 decides and every rank of a DDP run gets the same answer. With a checkpoint of an
    unfinished run (find_resumable), the folders in `carry` (e.g. the calibration's best/) come along
    from that run's directory; without one, what an earlier, different run left in run_dir is
    removed (checkpoints/ and `carry`). Either way run_dir is marked as started."""
    import shutil

    from . import distributed
    from .checkpointing import latest_step_dir

    last = None
    if distributed.is_main():
        has_checkpoint = lambda d: latest_step_dir(d / "checkpoints") is not None  # noqa: E731
        prev = find_resumable(run_dir, fingerprint, has_checkpoint) if resume else None
        if prev is not None:
            last = latest_step_dir(prev / "checkpoints")
            print(f"resuming from {last}")
            for folder in carry:
                if prev.resolve() != Path(run_dir).resolve() and (prev / folder).is_dir():
                    shutil.copytree(prev / folder, Path(run_dir) / folder, dirs_exist_ok=True)
        else:
            clear_stale(run_dir, "checkpoints", *carry)
        mark_started(run_dir, fingerprint)
    return distributed.broadcast(last)
