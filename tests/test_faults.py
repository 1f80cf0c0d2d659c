"""Faults: a stage killed (SIGKILL) and started again with the same command finishes with the same
result as an uninterrupted run; half-written files are never taken as valid.

The kills land at named points (maia_adapt.runtime.faults, MAIA_ADAPT_FAULT=<point>:<step>): inside the
calibration, between the best/ write and the step checkpoint, inside a checkpoint write (files
written but unsealed, sealed but not renamed, renamed but the old ones not yet removed) and after it.
A kill from outside timed by the clock reached those millisecond windows only by chance, and which
one it reached depended on how busy the machine was.

The long-stage tests run on the embedded self-play corpus and the shipped model (no ../shared needed).
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _app import ONE_THREAD, ROOT, TINY_MODEL, app_summary, run_app
from maia_adapt.runtime import faults
from maia_adapt.runtime.checkpointing import latest_step_dir, write_step_dir
from maia_adapt.errors import CheckpointError, ConfigError
from maia_adapt.io import atomic_write_bytes, load_safetensors
from maia_adapt.model import Maia2, Maia2Config, load_model, save_model

TRAIN = ["stage=train", *TINY_MODEL, "train.max_steps=150", "train.batch_size=32", "train.checkpoint_every=10",
         "train.eval_every=50", "train.eval_positions=200", "train.log_every=10", "train.warmup_steps=5"]
SAE = ["stage=sae", "sae.dim=256", "sae.k=8", "sae.steps=400", "sae.batch_size=64", "sae.cache_positions=1024",
       "sae.chunk_positions=512", "sae.eval_positions=200", "sae.checkpoint_every=50", "sae.calibrate_every=100",
       "sae.calibration_positions=300", "sae.calibration_min_positives=5"]


def _env(fault: str | None = None) -> dict:
    """The app's environment changes: the fault point (or none inherited from the caller), and one thread:
    the result is the same, and on a 2-core machine shared with a CPU-heavy process two OpenMP threads
    spin-wait for each other (150 tiny steps took over 15 minutes that way)."""
    return {**ONE_THREAD, faults.ENV: fault}


def _run(args, parent: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    """The app with `args` in a new run directory under `parent`; with `fault`, killed there."""
    p = run_app(args, run_dir=f"{parent}/${{run_stamp:%H-%M-%S-%f}}", env=_env(fault))
    if fault:
        assert p.returncode == -signal.SIGKILL, f"{fault} was not reached (exit {p.returncode}): {p.stderr[-2000:]}"
    else:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _resumed_from(p: subprocess.CompletedProcess) -> int | None:
    line = next((l for l in p.stdout.splitlines() if l.startswith("resuming from ")), None)
    return int(line.rsplit("step_", 1)[1]) if line else None


def _steps(parent: Path) -> list[int]:
    """The valid (sealed) checkpoints of all runs under parent."""
    return sorted(int(p.name[5:]) for p in parent.glob("*/checkpoints/step_*") if (p / "state.json").is_file())


def _killed_then_finished(args, parent: Path, kills: list[tuple[str, int, int]], check=None) -> dict:
    """Kill a run at each (point, step, expect) in turn, each time started again with the same
    command: the newest whole checkpoint is then `expect`, and the next run continues from it
    (`check(point, step)` may look at the folders after a kill). Returns the last run's summary."""
    resumed = None
    for point, step, expect in kills:
        p = _run(args, parent, f"{point}:{step}")
        assert _resumed_from(p) == resumed
        assert max(_steps(parent)) == expect, (point, step, _steps(parent))
        if check:
            check(point, step)
        resumed = expect
    last = _run(args, parent)
    assert _resumed_from(last) == resumed
    return app_summary(last)


def test_a_fault_point_kills_at_its_step_only_and_a_bad_one_is_a_clear_error(monkeypatch):
    code = ("from maia_adapt.runtime.faults import reach\n"
            "reach('checkpointed', 1); reach('calibrated', 2); print('past', flush=True)\n"
            "reach('checkpointed', 2); print('not killed')")
    env = {**os.environ, faults.ENV: "checkpointed:2"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL and p.stdout == "past\n"
    # a typo in the point's name must not silently never fire (a test would then check nothing)
    monkeypatch.setenv(faults.ENV, "checkpoint_sealde:20")
    with pytest.raises(ConfigError, match="checkpoint_sealde:20.*checkpoint_sealed"):
        faults.reach("checkpointed", 20)


@pytest.mark.slow
def test_train_killed_at_each_point_of_a_checkpoint_write_resumes_to_the_same_model(tmp_path):
    straight = app_summary(_run(TRAIN, tmp_path / "a"))
    kills = [
        ("checkpoint_unsealed", 40, 30),  # files written, no state.json: step 40 is not taken
        ("checkpoint_sealed", 70, 60),    # sealed under its temporary name, not renamed
        ("checkpoint_renamed", 100, 100),  # step_100 in place, the older ones not yet removed
        ("checkpointed", 130, 130),
    ]
    summary = _killed_then_finished(TRAIN, tmp_path / "b", kills)
    # the half-written folders of the killed runs are left behind and were never loaded
    assert list((tmp_path / "b").glob("*/checkpoints/.tmp_step_0000040_*"))
    assert list((tmp_path / "b").glob("*/checkpoints/.tmp_step_0000070_*/state.json"))
    assert summary["resumed_from"].endswith("step_0000130")
    a = load_model(straight["model"]).state_dict()
    b = load_model(summary["model"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["test_accuracy"] == straight["test_accuracy"]
    assert summary["test_value_mse"] == straight["test_value_mse"]


@pytest.mark.slow
def test_sae_killed_at_each_point_of_calibration_and_checkpoint_resumes_to_the_same_dictionary(tmp_path):
    straight = app_summary(_run(SAE, tmp_path / "a"))
    parent = tmp_path / "b"
    kills = [
        ("calibrated", 100, 50),           # the first calibration's scores computed, best/ not yet written
        ("best_written", 100, 50),         # best/ holds step 100, its checkpoint does not exist yet
        ("checkpoint_unsealed", 200, 150),  # a calibration step too
        ("checkpoint_sealed", 250, 200),
        ("checkpoint_renamed", 300, 300),
    ]

    def best_ahead_of_the_checkpoint(point, step):
        if point == "best_written":
            # the window is real: this step's weights are in best/ while the newest checkpoint is older
            best = max(parent.glob("*/best/*.safetensors"), key=lambda f: f.stat().st_mtime)
            assert load_safetensors(best)[1]["step"] == str(step)

    summary = _killed_then_finished(SAE, parent, kills, best_ahead_of_the_checkpoint)
    a = load_file(str(next((tmp_path / "a").glob("*/saes/*/sae_weights.safetensors"))))
    finished = [d for d in parent.iterdir() if (d / "DONE").exists()]
    assert len(finished) == 1
    b = load_file(str(next(finished[0].glob("saes/*/sae_weights.safetensors"))))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the calibration's best step and score survive the kills as well; the best is a step whose best/
    # write a killed run made ahead of its checkpoint (100: killed after best/; 200: killed inside the
    # checkpoint write that follows the calibration)
    assert summary == straight
    assert summary["blocks.1.hook_resid_post:calibration_step"] in (100, 200)


def test_half_written_checkpoints_are_never_taken_as_valid(tmp_path):
    ckpt = tmp_path / "checkpoints"
    write_step_dir(ckpt, 10, lambda d: (d / "x.bin").write_bytes(b"ok"), {})
    # a kill inside a later write leaves a temporary folder, or a folder without its seal
    (ckpt / ".tmp_step_0000020_123").mkdir()
    (ckpt / ".tmp_step_0000020_123" / "x.bin").write_bytes(b"half")
    (ckpt / "step_0000030").mkdir()
    assert latest_step_dir(ckpt).name == "step_0000010"

    def fail(d):
        (d / "x.bin").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="step_0000040: .*No space left on device"):
        write_step_dir(ckpt, 40, fail, {})
    assert latest_step_dir(ckpt).name == "step_0000010"
    assert not list(ckpt.glob(".tmp_step_0000040*"))


def test_a_failed_atomic_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_bytes(path, b'{"v": 1}')

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="summary.json"):
        atomic_write_bytes(path, b'{"v": 2}')
    assert path.read_bytes() == b'{"v": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_truncated_model_file_is_a_clear_error(tmp_path):
    path = save_model(Maia2(Maia2Config(dim_cnn=8, num_blocks_cnn=1, dim_vit=32, elo_dim=4, heads=2, dim_head=16)),
                      tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_model(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="cut.safetensors"):
        load_safetensors(tmp_path / "cut.safetensors")


@pytest.mark.slow
def test_a_reused_run_directory_of_other_settings_starts_fresh(tmp_path):
    def run(*extra):
        p = run_app(["stage=train", *TINY_MODEL, "train.eval_positions=50", "train.checkpoint_every=5", *extra],
                    run_dir=tmp_path / "fixed", env=_env())
        assert p.returncode == 0, p.stderr[-2000:]
        return app_summary(p)

    run("train.max_steps=20")
    # other settings in the same folder, stopped before its end: its checkpoints alone remain
    second = run("train.max_steps=10", "train.lr=3e-3")
    assert second["resumed_from"] is None
    names = sorted(p.name for p in (tmp_path / "fixed" / "checkpoints").glob("step_*"))
    assert names == ["step_0000005", "step_0000010"]


def test_a_resumed_dictionary_run_keeps_the_calibration_best_of_the_killed_one(tmp_path):
    from maia_adapt.dictionaries import DictionaryTrainer, SAEConfig, SparseAutoencoder
    from maia_adapt.dictionaries.train import BestKeeper, start_or_resume
    from maia_adapt.runtime.resume import config_fingerprint, mark_started

    def trainer():
        sae = SparseAutoencoder(SAEConfig(d_in=16, dim=32, k=4, site="x"))
        return DictionaryTrainer({"s": (sae, "x")}, 10, 8)

    cfg = {"stage": "sae", "seed": 0}
    killed = tmp_path / "runs" / "a"
    killed.mkdir(parents=True)
    mark_started(killed, config_fingerprint(cfg))
    t = trainer()
    t.step = 5
    BestKeeper(killed / "best", t).offer({"s": 12.5})
    t.save(killed / "checkpoints")
    again = trainer()
    assert start_or_resume(again, config_fingerprint(cfg), tmp_path / "runs" / "b").name == "step_0000005"
    assert again.step == 5
    assert BestKeeper(tmp_path / "runs" / "b" / "best", again).scores == {"s": 12.5}


def test_a_killed_sae_run_resumes_after_an_edit_of_another_stage_only(tmp_path):
    # a preset's fixed run directory: the case where a changed fingerprint used to remove the checkpoints
    args = [*SAE[:1], "sae.dim=64", "sae.k=4", "sae.steps=30", "sae.batch_size=32", "sae.cache_positions=256",
            "sae.chunk_positions=128", "sae.eval_positions=50", "sae.checkpoint_every=10"]
    fixed = tmp_path / "fixed"

    def run(*extra, fault=None):
        p = run_app([*args, *extra], run_dir=fixed, env=_env(fault))
        assert p.returncode == (-signal.SIGKILL if fault else 0), p.stderr[-2000:]
        return p

    run(fault="checkpointed:20")
    # probe.l2 is not read by stage=sae: the run continues from its step 20
    assert _resumed_from(run("probe.l2=0.5", fault="checkpointed:30")) == 20
    assert _steps(tmp_path) == [20, 30]
    p = run("sae.lr=0.001")
    assert _resumed_from(p) is None
    line = next(l for l in p.stdout.splitlines() if l.startswith("not resuming "))
    assert line == (f"not resuming {fixed.resolve()} (other settings: sae.lr (0.002 -> 0.001)): "
                    "removing its checkpoints/, best/ and starting afresh")
