"""Run directories: fingerprints of a run's settings, and finding an interrupted run to resume.

Re-running the same command starts a new Hydra run directory; a stage that supports resuming looks
for an earlier directory of the same stage whose fingerprint matches and that did not finish. The
fingerprint covers what the stage reads (its own section, model, seed, the data's store fingerprint),
so editing another stage's settings still resumes and other games never do.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from ..io import atomic_write_json
from .rundir import in_use

FINGERPRINT_FILE = "fingerprint.txt"
FINGERPRINT_KEYS_FILE = "fingerprint.json"  # what the fingerprint hashed: names the keys when a run does not resume
DONE_FILE = "DONE"
# every stage reads these, and `data`: its filter and split keys plus the position store's fingerprint
# (each file's identity), so that another games file, or the same path holding other games, never resumes
_SHARED = ("stage", "model", "seed")
# keys of a stage's own section that only say how the run is watched or continued
_RUN_ONLY = {"resume", "log_every"}
# data keys that change where and how the store is built, not which positions it holds
_DATA_LAYOUT = {"name", "store_dir", "workers", "shard_size"}


class Fingerprint(str):
    """The hash of what a stage reads, carrying the hashed settings (`keys`) so that a run that does
    not resume can say which of them differ. A str, so that callers compare and store it as before."""

    keys: dict


def fingerprint_keys(cfg, store: str | None = None, reads: tuple[str, ...] = ()) -> dict:
    """The settings a stage's results depend on, flattened to {dotted key: value}; `store` is the
    position store's own fingerprint (data.preprocess.data_fingerprint), which the caller computes, and
    `reads` the sections the stage reads besides its own (its module's READS: other stages' sections,
    paths, logger, hydra, experiment, objective and extra change nothing a stage computes)."""
    container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    stage = container.get("stage")
    name = stage.get("name") if isinstance(stage, dict) else stage
    kept = {k: container[k] for k in (*_SHARED, name, *reads) if k in container}
    if isinstance(kept.get(name), dict):
        kept[name] = {k: v for k, v in kept[name].items() if k not in _RUN_ONLY}
    if container.get("data"):
        kept["data"] = {**{k: v for k, v in container["data"].items() if k not in _DATA_LAYOUT}, "store": store}

    if isinstance(kept.get("model"), dict) and kept["model"].get("checkpoint"):
        kept["model"]["file"] = _file_identity(kept["model"]["checkpoint"])

    def flat(prefix, v, out):
        if isinstance(v, dict) and v:
            for k, x in v.items():
                flat(f"{prefix}.{k}" if prefix else str(k), x, out)
        else:
            out[prefix] = v
        return out

    return flat("", kept, {})


def _file_identity(checkpoint: str):
    """(size, modification and change time) of the model file a checkpoint setting loads, as the data
    fingerprint has for games files: a retrained or replaced model under the same path never resumes
    a run of the old one. None for a folder that holds no model file (the Maia-1 networks)."""
    from ..layout import LAST_CHECKPOINT, MODEL_FILE

    path = Path(checkpoint)
    if path.is_dir():
        path = next((path / n for n in (MODEL_FILE, LAST_CHECKPOINT) if (path / n).is_file()), path)
    if not path.is_file():
        return None
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def config_fingerprint(cfg, store: str | None = None, reads: tuple[str, ...] = ()) -> Fingerprint:
    keys = json.loads(json.dumps(fingerprint_keys(cfg, store, reads), sort_keys=True, default=str))
    fp = Fingerprint(hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16])
    fp.keys = keys
    return fp


def fingerprint_difference(run_dir: Path, fingerprint: str) -> str:
    """Which settings of `fingerprint` differ from those of the run that last started in run_dir
    ('' when none is recorded), e.g. "sae.lr (0.0004 -> 0.001)"."""
    path = Path(run_dir) / FINGERPRINT_KEYS_FILE
    new = getattr(fingerprint, "keys", None)
    if new is None or not path.is_file():
        return ""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    diff = [f"{k} ({old.get(k, '<unset>')} -> {new.get(k, '<unset>')})"
            for k in sorted(set(old) | set(new)) if old.get(k, "<unset>") != new.get(k, "<unset>")]
    return ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")


def mark_started(run_dir: Path, fingerprint: str) -> None:
    (Path(run_dir) / DONE_FILE).unlink(missing_ok=True)  # a run directory used again is not done until it is
    (Path(run_dir) / FINGERPRINT_FILE).write_text(fingerprint + "\n")
    if getattr(fingerprint, "keys", None) is not None:
        atomic_write_json(Path(run_dir) / FINGERPRINT_KEYS_FILE, fingerprint.keys)


def clear_stale(run_dir: Path, *folders: str) -> None:
    """Remove what an earlier, different run left in a reused run directory (a preset's fixed
    hydra.run.dir), so that a fresh start never resumes from another run's checkpoints."""
    import shutil

    for f in folders:
        shutil.rmtree(Path(run_dir) / f, ignore_errors=True)


def fresh_start(run_dir: Path, fingerprint: str, has_checkpoint, resume: bool, *folders: str) -> None:
    """Start run_dir afresh: say in one line why an earlier unfinished run is not continued (the
    settings that differ) and what happens to what run_dir holds, then clear `folders` there."""
    run_dir = Path(run_dir).resolve()
    if has_checkpoint(run_dir):
        if not resume:
            why = "resume=false"
        elif (run_dir / DONE_FILE).exists() and (run_dir / FINGERPRINT_FILE).is_file() \
                and (run_dir / FINGERPRINT_FILE).read_text().strip() == fingerprint:
            why = "it holds a finished run of these settings"
        else:
            why = f"other settings: {fingerprint_difference(run_dir, fingerprint) or 'the earlier run recorded none'}"
        print(f"not resuming {run_dir} ({why}): removing its {', '.join(f + '/' for f in folders)} and starting afresh")
    elif resume:
        unfinished = [d for d in run_dir.parent.glob("*") if d.is_dir() and d.resolve() != run_dir
                      and not (d / DONE_FILE).exists() and (d / FINGERPRINT_FILE).is_file() and has_checkpoint(d)
                      and not in_use(d)]
        if unfinished:
            newest = max(unfinished, key=lambda d: d.stat().st_mtime)
            diff = fingerprint_difference(newest, fingerprint) or "settings recorded by an older version"
            print(f"not resuming the unfinished run {newest} (other settings: {diff}): starting afresh")
    clear_stale(run_dir, *folders)


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
            holder = in_use(d)
            if holder:  # not interrupted: still running, and continuing it would fork its run
                print(f"not resuming {d}: it is still running ({holder})")
                continue
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
            fresh_start(run_dir, fingerprint, has_checkpoint, resume, "checkpoints", *carry)
        mark_started(run_dir, fingerprint)
    return distributed.broadcast(last)
