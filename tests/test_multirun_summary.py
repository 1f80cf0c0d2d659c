"""multirun_summary.md / .csv: a multirun's jobs side by side, from their summary.json files."""
import csv
import json

import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_class

from maia_adapt.config import CONF_DIR
from maia_adapt.runtime.multirun import MultirunSummaryCallback, write_multirun_summary


def _job(sweep, num, overrides, summary):
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))


def test_one_row_per_job_with_the_overrides_that_vary(tmp_path):
    common = ["stage=sae", "data=default", "sae.steps=10"]
    _job(tmp_path, 0, [*common, "sae.k=4"], {"l0": 4.0, "kl": 0.123456789, "kl_ci95": [0.1, 0.15],
                                             "top1_bucket_3": 0.5, "model": "a", "skipped": None})
    _job(tmp_path, 1, [*common, "sae.k=8"], {"l0": 8.0, "kl": 0.0987654321, "kl_ci95": [0.09, 0.11],
                                             "top1_bucket_3": 0.6, "model": "b", "skipped": None})
    _job(tmp_path, 2, [*common, "sae.k=16"], None)  # a job that failed before its summary
    (tmp_path / "optimization_results.yaml").write_text("x: 1\n")  # a sweeper's file is not a job
    md, path = write_multirun_summary(tmp_path)
    rows = list(csv.DictReader(path.open()))
    assert [r["job"] for r in rows] == ["0", "1", "2"] and [r["sae.k"] for r in rows] == ["4", "8", "16"]
    assert "sae.steps" not in rows[0] and "stage" not in rows[0]  # the same in every job
    assert float(rows[0]["kl"]) == 0.123456789 and float(rows[1]["kl_ci95_hi"]) == 0.11
    assert rows[2]["status"] == "no summary" and rows[2]["l0"] == "" and rows[0]["skipped"] == ""
    text = md.read_text()
    # the numbers, rounded, without per-bucket breakdowns (the CSV has every column)
    assert "| job | sae.k | l0 | kl |\n" in text and "top1_bucket_3" not in text
    assert "| 0 | 4 | 4 | 0.123 (95% CI 0.100 to 0.150) |" in text and "| 2 | 16 | - | - |" in text
    assert write_multirun_summary(tmp_path / "none") is None


def test_the_callback_is_registered_for_every_run():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["stage=sae"], return_hydra_config=True)
    targets = [get_class(c._target_) for c in cfg.hydra.callbacks.values()]
    assert MultirunSummaryCallback in targets
