"""Every JSON the project writes is strict JSON: NaN and infinities are written as null."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from _app import ONE_THREAD, TINY_MODEL, run_app
from _strict_json import check_json_tree, strict_loads
from maia_adapt.io import atomic_write_json, to_json



def test_non_finite_numbers_become_null_and_numpy_values_plain(tmp_path):
    obj = {"nan": float("nan"), "inf": math.inf, "ninf": -math.inf, "np32": np.float32("nan"), "np64": np.float64(np.inf),
           "half": np.float32(0.5), "tenth": 0.1, "int": np.int64(3), "bool": np.bool_(True), "arr": np.array([1.5, np.nan]),
           "tensor": torch.tensor([np.inf, 2.0]), "nested": [{"x": (float("nan"),)}], np.int64(7): "numpy key",
           "path": Path("/a/b")}
    back = strict_loads(atomic_write_json(tmp_path / "x.json", obj).read_text())
    assert back == {"nan": None, "inf": None, "ninf": None, "np32": None, "np64": None, "half": 0.5, "tenth": 0.1,
                    "int": 3, "bool": True, "arr": [1.5, None], "tensor": [None, 2.0], "nested": [{"x": [None]}],
                    "7": "numpy key", "path": "/a/b"}
    with pytest.raises(ValueError, match="non-standard JSON constant NaN"):
        strict_loads('{"a": NaN}')
    assert strict_loads(to_json({"a": [float("nan")]})) == {"a": [None]}


@pytest.mark.slow
def test_stage_outputs_are_strict_json_with_null_for_empty_buckets(tmp_path):
    # the first 30 self-play games are all low-Elo buckets, so the high buckets have no test positions
    data = ["data=default", "data.max_games=30", "data.test_fraction=0.3", f"data.store_dir={tmp_path}/store"]
    r = run_app(["stage=train", *data, *TINY_MODEL, "train.max_steps=4", "train.batch_size=16",
                 "train.checkpoint_every=2", "train.log_every=2", "train.eval_positions=200"], run_dir=tmp_path / "train", env=ONE_THREAD, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = strict_loads((tmp_path / "train" / "summary.json").read_text())
    assert summary["test_accuracy_bucket_10"] is None and summary["test_positions"] > 0
    assert 0 <= summary["test_accuracy"] <= 1
    assert "NaN" not in r.stdout  # the summary printed at the end is strict too
    r = run_app(["stage=sae", *data, "sae.steps=10", "sae.cache_positions=512", "sae.chunk_positions=256",
                 "sae.batch_size=64", "sae.eval_positions=100"], run_dir=tmp_path / "sae", env=ONE_THREAD, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    checked = {p.relative_to(tmp_path).as_posix() for p in check_json_tree(tmp_path)}
    for must in ("train/summary.json", "train/metrics.jsonl", "train/model.safetensors", "sae/summary.json",
                 "sae/results.json", "store/manifest.json", "store/games.json", "store/summary.json"):
        assert must in checked, (must, sorted(checked))
