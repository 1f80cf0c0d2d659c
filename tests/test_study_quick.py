"""The main job, `python -m maia_adapt.study --quick`, at test sizes on the embedded games."""
from __future__ import annotations

import json

import pytest
from _study import TINY, _study

from maia_adapt.study import QUICK_STEPS

# the main job at test sizes: the quick study's own data (the first 2,000 embedded games) and its first
# transitional positions, which the shipped engine answers cover, so that no engine is searched
QUICK_TINY = [a for a in TINY if not a.startswith(("data.max_games", "transitional."))] + ["transitional.positions=100"]


@pytest.mark.slow
def test_the_quick_study_runs_and_resumes_on_the_embedded_games_without_searching(tmp_path):
    args = ["--quick", *QUICK_TINY, f"data.store_dir={tmp_path}/store", f"paths.cache_dir={tmp_path}/cache"]
    r = _study(args, tmp_path, timeout=1500)
    assert r.returncode == 0, [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    out = json.loads((tmp_path / "outputs" / "quick" / "study" / "maia2_skill" / "headline.json").read_text())
    rows = {r["measurement"]: r for r in out["rows"]}
    assert out["quick"] and all(r["value"] is not None for r in out["rows"]), [m for m, r in rows.items() if r["value"] is None]
    assert set(out["runs"]) == set(QUICK_STEPS)
    for r in out["rows"]:
        if r["ci95"]:
            assert r["ci95"][0] - 1e-9 <= r["value"] <= r["ci95"][1] + 1e-9, r
            assert r["reading"] == ("above 0" if r["ci95"][0] > 0 else "below 0" if r["ci95"][1] < 0 else "0 inside the interval")
    assert rows["Stockfish's move, top minus bottom bucket"]["n"] == 300
    # every transitional position answered from the shipped answers: nothing searched, nothing left out
    tr = json.loads((tmp_path / "outputs" / "quick" / "transitional" / "transitional_study" / "maia2_skill" / "summary.json").read_text())
    assert tr["engine"] == "Stockfish 15.1" and tr["positions_without_engine_answer"] == 0 and tr["positions"] == 300
    assert not (tmp_path / "cache" / "engine" / "answers.jsonl").exists() or not (tmp_path / "cache" / "engine" / "answers.jsonl").read_text()
    md = (tmp_path / "outputs" / "quick" / "study" / "maia2_skill" / "headline.md").read_text()
    assert "The quick study" in md and md.count("| ") > 10
    # a second call finds every step finished and only writes the headline again; --only reruns one step
    again = _study(args, tmp_path, timeout=600)
    assert again.returncode == 0 and "[1/10]" not in again.stdout
    one = _study([*args, "--only", "probe"], tmp_path, timeout=600)
    assert one.returncode == 0 and "[2/10] probe" in one.stdout and "[1/10]" not in one.stdout


