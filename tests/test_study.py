"""The whole study on one subject (`python -m maia_adapt.study`): its plan, its headline, and a tiny run
of every step end to end on real games."""
import json

import pytest
from _study import TINY, _study

from maia_adapt.errors import ConfigError
from maia_adapt.study import QUICK, QUICK_STEPS, headline, plan


def test_plan_chains_the_presets_for_one_subject():
    model_id, steps = plan([])
    names = [s.name for s, _, _ in steps]
    assert model_id == "maia2_skill" and names[0] == "transitional" and names[-1] == "circuits"
    # a step comes after every step whose run directory it reads
    assert names.index("sae") < names.index("threats") < names.index("intervention_sae")
    assert names.index("finetune_all") < names.index("circuits") and names.index("transcoder") < names.index("circuits")
    dirs = {s.name: d for s, _, d in steps}
    assert str(dirs["sae"]).endswith("sae_study/maia2_skill") and str(dirs["threats_elo0"]).endswith("threats_study_elo0/maia2_skill")
    elo10 = dict(a.split("=", 1) for step, args, _d in steps if step.name == "threats_elo10" for a in args)
    assert elo10["threats.compare_to"] == str(dirs["threats_elo0"]) and elo10["threats.elo"] == "10"
    # another subject: every run directory follows it
    small_id, small = plan(["model=maia2_small"])
    assert small_id == "maia2_small" and all("maia2_small" in str(d) for _, _, d in small)
    # the Maia-1 family takes its own steps: the family's, then an SAE chain per end network
    fam_id, fam = plan(["model=maia1"])
    fam_names = [s.name for s, _, _ in fam]
    assert fam_id == "maia1" and "sae" not in fam_names
    fam_dirs = {s.name: d for s, _, d in fam}
    for r in (1100, 1900):
        assert fam_names.index(f"sae_{r}") < fam_names.index(f"threats_{r}") < fam_names.index(f"intervention_sae_{r}")
        assert str(fam_dirs[f"sae_{r}"]).endswith(f"sae_study/maia1-{r}")
        assert str(fam_dirs[f"intervention_sae_{r}"]).endswith(f"intervention_study_sae/maia1-{r}")
    # the strong network's detectors are paired with the weak one's, which runs first
    m19 = dict(a.split("=", 1) for step, args, _d in fam if step.name == "threats_1900" for a in args)
    assert m19["threats.compare_to"] == str(fam_dirs["threats_1100"])
    assert fam_names.index("threats_1100") < fam_names.index("threats_1900")
    with pytest.raises(ConfigError, match="Maia-1 family as a whole"):
        plan(["model=maia1", "model.rating=1100"])


def test_the_quick_study_runs_its_steps_on_the_embedded_games_in_its_own_directories():
    quick_id, quick = plan(["sae.steps=50"], quick=True)
    names = [s.name for s, _, _ in quick]
    assert quick_id == "maia2_skill" and names == [n for n in names if n in QUICK_STEPS] and len(names) == len(QUICK_STEPS)
    assert "circuits" not in names and "transcoder" not in names
    for step, args, run_dir in quick:
        # never the full study's run directories, and every step on the shipped games
        assert str(run_dir).startswith("outputs/quick/"), run_dir
        assert "data=lichess_5k" in args
    sae_args = next(a for s, a, _ in quick if s.name == "sae")
    assert sae_args.index("sae.steps=50") > sae_args.index(next(a for a in QUICK if a.startswith("sae.steps=")))  # the caller's override wins
    dirs = {s.name: d for s, _, d in quick}
    elo10 = dict(a.split("=", 1) for step, args, _d in quick if step.name == "threats_elo10" for a in args)
    assert elo10["threats.compare_to"] == str(dirs["threats_elo0"]) and str(dirs["threats_elo0"]).startswith("outputs/quick/threats/")
    # what the quick study reads is the quick study's: the SAEs, the transitional rows
    from maia_adapt.study import _compose
    iv = _compose(next(a for s, a, _ in quick if s.name == "intervention_sae"))
    assert iv.intervention.saes == str(dirs["sae"]) and iv.intervention.transitional == str(dirs["transitional"])
    assert iv.data.pgn[0].endswith("assets/lichess_rapid_5k.pgn.zst")
    with pytest.raises(ConfigError, match="--quick runs one network.s steps"):
        plan(["model=maia1"], quick=True)
    # a Maia-3: every step but those built on Maia-2's Elo-query heads, its fine-tune without a side-info head
    _, full = plan(["model=maia3_tiny"])
    assert {s.name for s, _, _ in full} == {s.name for s, _, _ in plan([])[1]} - {"circuits", "intervention_elo_heads"}
    ft = _compose(next(a for s, a, _ in full if s.name == "finetune_head"))
    assert ft.finetune.side_info_weight == 0 and ft.model.name == "maia3"
    assert len(plan(["model=maia3_tiny"], quick=True)[1]) == len(QUICK_STEPS)


def test_bad_overrides_and_steps_are_one_error_line(tmp_path):
    for args, expected in ((["train.lrr=3"], "error: train.lrr: Key 'lrr' not in 'TrainConfig'"),
                           (["--only", "nope"], "error: --only nope: expected steps of transitional, probe")):
        r = _study(args, tmp_path)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(expected), r.stderr[-1000:]


def test_headline_reads_each_step_and_marks_what_is_missing(tmp_path):
    def put(name, summary=None, results=None):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(summary or {}))
        if results is not None:
            (d / "results.json").write_text(json.dumps(results))
        return d

    runs = {"transitional": put("tr", {"skill_gain": 0.041, "skill_gain_ci95": [0.034, 0.049]}),
            "probe": put("pr", results={"sites": {"blocks.5.hook_resid_post": {"auc_gain_top_minus_bottom": 0.012,
                                                                               "auc_gain_top_minus_bottom_ci95": [-0.007, 0.033]}}}),
            "finetune_head": put("ft", {"mean_shift": 0.0, "mean_shift_ci": [0.0, 0.0]}),
            "intervention_steering": put("iv", {"effect_minus_control": -0.0004, "effect_minus_control_ci": [-0.004, 0.004]})}
    rows = {r["measurement"]: r for r in headline(runs)}
    assert rows["Stockfish's move, top minus bottom bucket"]["text"] == "+0.041 [+0.034, +0.049]"
    assert rows["probe AUC, top minus bottom bucket (blocks.5.hook_resid_post)"]["value"] == 0.012
    assert rows["mean shift (policy head)"]["ci95"] == [0.0, 0.0]
    assert not any("block 0's attention" in m for m in rows)  # no circuits step, no row
    assert rows["correct-move accuracy minus control (steering vector)"]["text"] == "-0.000 [-0.004, +0.004]"
    # steps this subject did not run are not rows; a run without the number is '-'
    assert not any("SAE features" in m for m in rows)
    # a Maia-1 network pair: the strong network's detectors against the weak one's, each network's amplification
    runs["threats_1900"] = put("t19", results={"sites": {"blocks.5.hook_resid_post (SAE topk, F=1024)": {"compared": {
        "threat": {"auc_difference": -0.044, "auc_difference_ci95": [-0.068, -0.021]}}}}})
    runs["intervention_sae_1100"] = put("i11", {"effect_minus_control": 0.003, "effect_minus_control_ci": [-0.002, 0.008]})
    rows = {r["measurement"]: r for r in headline(runs)}
    assert rows["best feature AUC on threat squares, maia-1900 minus maia-1100 (blocks.5.hook_resid_post)"]["text"] == \
        "-0.044 [-0.068, -0.021]"
    assert rows["correct-move accuracy minus control (SAE features, maia-1100)"]["value"] == 0.003
    runs["intervention_probe"] = put("ip", {})
    assert {r["measurement"]: r for r in headline(runs)}[
        "correct-move accuracy minus control (probe direction)"]["text"] == "-"


@pytest.mark.slow
def test_the_maia1_family_study_runs_with_an_sae_chain_per_end_network(shared_data, shared_models, tmp_path):
    # every network's probe (the family's probe intervention adds each network's own direction)
    r = _study([*TINY, "model=maia1", "probe.buckets=[1,2,3,4,5,6,7,8,9]", f"data.store_dir={tmp_path}/store"],
               tmp_path, timeout=1500)
    assert r.returncode == 0, [ln for ln in r.stderr.splitlines() if ln.startswith("error")]
    out = json.loads((tmp_path / "outputs" / "study" / "maia1" / "headline.json").read_text())
    assert all(r["value"] is not None for r in out["rows"]), [r["measurement"] for r in out["rows"] if r["value"] is None]
    measured = {r["measurement"] for r in out["rows"]}
    assert "best feature AUC on threat squares, maia-1900 minus maia-1100 (blocks.5.hook_resid_post)" in measured
    assert {f"correct-move accuracy minus control (SAE features, maia-{n})" for n in (1100, 1900)} <= measured
    # each end network has its own SAE, trained on its own activations
    for n in (1100, 1900):
        assert (tmp_path / "outputs" / "sae" / "sae_study" / f"maia1-{n}" / "summary.json").is_file()
    assert "[11/11] intervention_sae_1900" in r.stdout
