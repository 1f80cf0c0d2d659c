"""The Hydra app: multirun sweeps, W&B offline logging, run directories, atomic writes."""
import json
import os

import pytest
from omegaconf import OmegaConf

from _app import ROOT, TINY_MODEL, run_app
from maia_adapt.io import atomic_write_bytes
from maia_adapt.layout import resolve
from maia_adapt.errors import MaiaAdaptError


def _tiny(tmp_path):
    return ["stage=train", "data=lichess", "data.max_games=40", f"data.store_dir={tmp_path}/store", *TINY_MODEL,
            "train.max_steps=4", "train.batch_size=16", "train.eval_positions=100", "train.log_every=2",
            "train.checkpoint_every=2"]


@pytest.mark.slow
def test_multirun_sweep_runs_every_job(shared_data, tmp_path):
    r = run_app(["-m", *_tiny(tmp_path), "train.lr=1e-3,3e-3", f"hydra.sweep.dir={tmp_path}/sweep"], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert len(jobs) == 2
    lrs = sorted(OmegaConf.load(j.parent / "resolved_config.yaml").train.lr for j in jobs)
    assert lrs == [1e-3, 3e-3]


@pytest.mark.slow
def test_wandb_offline_run_and_metrics(shared_data, tmp_path):
    r = run_app([*_tiny(tmp_path), "experiment=train_small"], run_dir=tmp_path / "run", logger="wandb", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline, "no offline W&B run was written"
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert {m["step"] for m in metrics if "train/loss" in m} == {2, 4}
    assert any("test/accuracy" in m for m in metrics)
    assert "experiment: train_small" in (run / "resolved_config.yaml").read_text()


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    p = tmp_path / "result.json"
    atomic_write_bytes(p, b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"old"
    assert [f.name for f in tmp_path.iterdir()] == ["result.json"]


def test_resolve_file_or_run_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.safetensors").write_bytes(b"x")
    assert resolve(tmp_path / "run", "checkpoints/last.safetensors", "model.safetensors", what="a model").name == "model.safetensors"
    assert resolve(tmp_path / "run" / "model.safetensors", "other", what="a model").name == "model.safetensors"
    with pytest.raises(MaiaAdaptError, match="run: no sae.safetensors in this directory .expected stage=sae"):
        resolve(tmp_path / "run", "sae.safetensors", what="stage=sae's output")
    with pytest.raises(MaiaAdaptError, match="nope not found: expected a thing"):
        resolve(tmp_path / "nope", "a", what="a thing")


def test_unknown_experiment_fails_with_choices():
    r = run_app(["experiment=nope", "--cfg", "job"], logger=None, timeout=120)
    assert r.returncode != 0
    assert "Could not find 'experiment/nope'" in r.stderr and "train_small" in r.stderr


def test_experiment_preset_composes():
    r = run_app(["experiment=train_small", "--cfg", "job", "--resolve"], logger=None, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout
    assert "experiment: train_small" in text and "name: maia2_small" in text and "name: lichess" in text
    assert "lichess_rated_rapid_58k.pgn.zst" in text and "max_steps: 5800" in text


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "maia_adapt" / "conf" / "experiment").glob("*.yaml") if p.stem != "none"))
def test_every_experiment_preset_composes_and_has_a_readme(name):
    r = run_app([f"experiment={name}", "--cfg", "job", "--resolve"], logger=None, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = OmegaConf.create(r.stdout)
    assert cfg.experiment == name
    assert (ROOT / "experiments" / name / "README.md").is_file()
    assert f"experiment={name}" in (ROOT / "experiments" / name / "README.md").read_text()
