"""Data parallelism: 2 processes under torchrun (gloo, CPU) against 1 process on the same global batch.

These run on the embedded self-play corpus and the shipped small model, so they need no ../shared.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _app import ONE_THREAD, TINY_MODEL, run_app
from maia_adapt.model import load_model

# no dropout: the two runs draw different dropout masks
NO_DROPOUT_MODEL = [*TINY_MODEL, "model.dropout_cnn=0", "model.dropout_vit=0", "model.dropout=0"]


def _torchrun(procs: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]


def _run(args, run_dir: Path, procs: int = 1) -> subprocess.CompletedProcess:
    p = run_app(args, run_dir=run_dir, env=ONE_THREAD, timeout=600,
                launcher=_torchrun(procs) if procs > 1 else (sys.executable,))
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_on_two_processes_equals_one_process(tmp_path):
    # BatchNorm frozen: PyTorch's SyncBatchNorm needs CUDA, and per-rank batch statistics would differ
    args = ["stage=train", *NO_DROPOUT_MODEL, "train.max_steps=20", "train.batch_size=32", "train.checkpoint_every=10",
            "train.eval_every=10", "train.eval_positions=200", "train.log_every=5", "train.warmup_steps=2",
            "train.batchnorm=frozen"]
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    _run(args, one)
    p = _run(args, two, procs=2)
    assert p.stdout.count("run directory:") == 1  # rank 0 reports, the other rank only trains
    a = load_model(one / "model.safetensors").state_dict()
    b = load_model(two / "model.safetensors").state_dict()
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert diff < 1e-4, diff
    # one writer: the same checkpoints and the same number of metric lines as the single process
    assert sorted(x.name for x in (two / "checkpoints").glob("step_*")) == ["step_0000010", "step_0000020"]
    m1, m2 = _metric_lines(one), _metric_lines(two)
    assert [m["step"] for m in m1] == [m["step"] for m in m2]
    # the logged training loss is the global batch's (averaged over the ranks), not rank 0's half
    loss1, loss2 = ([m["train/loss"] for m in ms if "train/loss" in m] for ms in (m1, m2))
    assert loss2 == pytest.approx(loss1, abs=1e-3)
    val1, val2 = ([m["val/accuracy"] for m in ms if "val/accuracy" in m] for ms in (m1, m2))
    assert len(val2) == 2 and val2 == pytest.approx(val1, abs=0.01)
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s2["test_accuracy"] == pytest.approx(s1["test_accuracy"], abs=0.01)


def test_train_on_two_processes_rejects_an_uneven_batch(tmp_path):
    p = run_app(["stage=train", *NO_DROPOUT_MODEL, "train.max_steps=2", "train.batch_size=33"], run_dir=tmp_path / "r",
                env=ONE_THREAD, timeout=300, launcher=_torchrun(2))
    assert p.returncode != 0
    assert "error: train.batch_size=33 does not divide over 2 processes" in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage,files", [
    ("sae", ["sae.dim=256", "sae.k=8", "sae.steps=30", "sae.batch_size=64", "sae.cache_positions=1024",
             "sae.chunk_positions=512", "sae.eval_positions=200", "sae.checkpoint_every=10"]),
    ("transcoder", ["transcoder.dim=256", "transcoder.k=8", "transcoder.steps=20", "transcoder.batch_size=64",
                    "transcoder.cache_positions=256", "transcoder.chunk_positions=128", "transcoder.eval_positions=64",
                    "transcoder.grid_positions=8", "transcoder.checkpoint_every=10"]),
])
def test_dictionaries_on_two_processes_equal_one_process(tmp_path, stage, files):
    args = [f"stage={stage}", *files]
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"
    _run(args, one)
    _run(args, two, procs=2)
    pattern = "saes/*/sae_weights.safetensors" if stage == "sae" else "transcoders/*/sae_weights.safetensors"
    a, b = (load_file(str(next(d.glob(pattern)))) for d in (one, two))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), (k, (a[k] - b[k]).abs().max())
    assert [m["step"] for m in _metric_lines(one)] == [m["step"] for m in _metric_lines(two)]
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1.keys() == s2.keys()
    for k in s1:
        assert s2[k] == pytest.approx(s1[k], rel=1e-3, abs=1e-4), k
