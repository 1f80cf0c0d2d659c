"""Faults: a stage killed (SIGKILL) at random points and started again with the same command finishes
with the same result as an uninterrupted run; half-written files are never taken as valid.

The long-stage tests run on the embedded self-play corpus and the shipped model (no ../shared needed).
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from maia_adapt.checkpointing import latest_step_dir, write_step_dir
from maia_adapt.errors import CheckpointError
from maia_adapt.io import atomic_write_bytes, load_safetensors
from maia_adapt.model import Maia2, Maia2Config, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["stage=train", "model.dim_cnn=16", "model.num_blocks_cnn=1", "model.dim_vit=64", "model.elo_dim=8",
         "model.heads=4", "model.dim_head=16", "train.max_steps=150", "train.batch_size=32", "train.checkpoint_every=10",
         "train.eval_every=50", "train.eval_positions=200", "train.log_every=10", "train.warmup_steps=5"]
SAE = ["stage=sae", "sae.dim=256", "sae.k=8", "sae.steps=3000", "sae.batch_size=64", "sae.cache_positions=1024",
       "sae.chunk_positions=512", "sae.eval_positions=200", "sae.checkpoint_every=50", "sae.calibrate_every=250",
       "sae.calibration_positions=300", "sae.calibration_min_positives=5"]


def _start(args, parent: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen([sys.executable, "-m", "maia_adapt.run", *args, "logger=none",
                             f"hydra.run.dir={parent}/${{run_stamp:%H-%M-%S-%f}}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out[out.index("{"):])


def _latest_step(parent: Path) -> int:
    steps = [int(p.name[5:]) for p in parent.glob("*/checkpoints/step_*") if (p / "state.json").is_file()]
    return max(steps, default=0)


def _killed_and_rerun(args, parent: Path, total: int, kills: int, rng: random.Random) -> tuple[dict, list[int]]:
    """Run `args`, SIGKILL it `kills` times at random points (after a random checkpointed step, plus a
    random fraction of a second, so kills also land inside checkpoint writes), rerun it each time with
    the same command, and let the last run finish. Returns its summary and the steps of the kills."""
    killed_at = []
    for _ in range(kills):
        proc = _start(args, parent)
        target = rng.randrange(min(_latest_step(parent), total // 2), total * 3 // 4)
        deadline = time.time() + 600
        while _latest_step(parent) <= target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at.append(_latest_step(parent))
    return _finish(_start(args, parent)), killed_at


def test_train_killed_at_random_points_resumes_to_the_same_model(tmp_path):
    straight = _finish(_start(TRAIN, tmp_path / "a"))
    summary, killed_at = _killed_and_rerun(TRAIN, tmp_path / "b", 150, kills=3, rng=random.Random(1))
    print("train killed after checkpointed steps", killed_at)
    assert summary["resumed_from"] and all(0 < s < 150 for s in killed_at[1:])
    a = load_model(straight["model"]).state_dict()
    b = load_model(summary["model"]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["test_accuracy"] == straight["test_accuracy"]
    assert summary["test_value_mse"] == straight["test_value_mse"]


def test_sae_killed_at_random_points_resumes_to_the_same_dictionary(tmp_path):
    straight = _finish(_start(SAE, tmp_path / "a"))
    summary, killed_at = _killed_and_rerun(SAE, tmp_path / "b", 3000, kills=2, rng=random.Random(2))
    print("sae killed after checkpointed steps", killed_at)
    assert killed_at[-1] > 0
    a = load_file(str(next((tmp_path / "a").glob("*/saes/*/sae.safetensors"))))
    finished = [d for d in (tmp_path / "b").iterdir() if (d / "DONE").exists()]
    assert len(finished) == 1
    b = load_file(str(next(finished[0].glob("saes/*/sae.safetensors"))))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the calibration's best step survives the kills as well
    assert summary == straight


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


def test_a_reused_run_directory_of_other_settings_starts_fresh(tmp_path):
    fixed = [f"hydra.run.dir={tmp_path}/fixed", "logger=none"]
    env = {**os.environ, "WANDB_MODE": "offline"}

    def run(*extra):
        p = subprocess.run([sys.executable, "-m", "maia_adapt.run", *TRAIN[:7], "train.eval_positions=50",
                            "train.checkpoint_every=5", *extra, *fixed], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout[p.stdout.index("{"):])

    run("train.max_steps=20")
    # other settings in the same folder, stopped before its end: its checkpoints alone remain
    second = run("train.max_steps=10", "train.lr=3e-3")
    assert second["resumed_from"] is None
    names = sorted(p.name for p in (tmp_path / "fixed" / "checkpoints").glob("step_*"))
    assert names == ["step_0000005", "step_0000010"]


def test_a_resumed_dictionary_run_keeps_the_calibration_best_of_the_killed_one(tmp_path):
    from maia_adapt.dictionaries import DictionaryTrainer, SAEConfig, SparseAutoencoder
    from maia_adapt.dictionaries.train import BestKeeper, start_or_resume
    from maia_adapt.runs import config_fingerprint, mark_started

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
    assert start_or_resume(again, cfg, tmp_path / "runs" / "b").name == "step_0000005"
    assert again.step == 5
    assert BestKeeper(tmp_path / "runs" / "b" / "best", again).scores == {"s": 12.5}
