"""The seed's protocol as a config group, and the ladder from it to ours: which values each rung runs
with, which steps rungs share, the table it writes, and the app's plan end to end."""
import json
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from _app import run_app
from maia_adapt.config import validate
from maia_adapt.errors import ConfigError
from maia_adapt.ladder import Plan, _compose, ladder_markdown, ladder_rows, plan, protocol_keys, rung_overrides


def _ladder(*rungs, common=(), protocol="seed_neurips", family=None):
    return OmegaConf.create({"protocol": protocol, "rungs": [dict(name=n, what=n, keys=list(k)) for n, k in rungs],
                             "common": list(common), "chains": ["intervention", "finetune"],
                             "family_overrides": family or {}, "dry_run": False})


@pytest.mark.parametrize("protocol", ["seed", "seed_neurips", "seed_revision"])
def test_the_seed_protocols_compose_with_every_study_preset_and_keep_their_own_run_directories(protocol):
    for preset in ("transitional_study", "sae_study", "threats_study", "intervention_study", "finetune_study",
                   "probe_study", "transcoder_study"):
        cfg = _compose([f"experiment={preset}", f"protocol={protocol}", "hydra.run.dir=x"])
        validate(cfg)
    iv = _compose(["experiment=intervention_study", f"protocol={protocol}"]).intervention
    # the protocol wins over the preset (site, grid, control), and links run directories of its own
    assert iv.site == "blocks.1.hook_mlp_out" and iv.error == "replace" and iv.correct == "top_bucket"
    assert iv.transitional.endswith(f"transitional_study/maia2_skill@{protocol}")
    assert (iv.threshold, iv.control) == ((True, "random") if protocol == "seed_revision" else (False, "none"))
    ours = _compose(["experiment=intervention_study"]).intervention
    assert ours.transitional.endswith("transitional_study/maia2_skill") and ours.error == "keep"


def test_protocol_keys_follow_the_defaults_of_a_protocol():
    neurips, revision = protocol_keys("seed_neurips"), protocol_keys("seed_revision")
    assert "intervention.error" in neurips and "finetune.min_train_rows" not in neurips
    assert set(neurips) < set(revision) and "finetune.min_train_rows" in revision and "protocol" not in revision
    with pytest.raises(ConfigError, match="no maia_adapt/conf/protocol/nope.yaml"):
        protocol_keys("nope")


def test_each_rung_switches_its_keys_to_our_presets_values_and_keeps_the_ones_above():
    lc = _ladder(("seed", []), ("control", ["intervention.control"]), ("grid", ["intervention.strengths", "intervention.top_n"]),
                 ("features", ["threats."]), common=["threats.families=[threat]"])
    rungs, left = rung_overrides(lc, [], "maia2")
    assert rungs[0]["overrides"] == [] and rungs[1]["overrides"] == ["intervention.control=matched"]
    # our values come from our presets (intervention_study's grid), cumulative from the rung above
    assert rungs[2]["overrides"] == ["intervention.control=matched", "intervention.strengths=[2.0, 4.0, 8.0]",
                                     "intervention.top_n=[1, 3]"]
    # a prefix takes the protocol's keys under it except what ladder.common fixes for every rung
    feats = {o.split("=")[0] for o in rungs[3]["overrides"]}
    assert {"threats.top_k", "threats.heldout_fraction", "threats.max_per_class"} <= feats and "threats.families" not in feats
    # what no rung switched back and differs from ours is reported
    assert "intervention.error" in left and "intervention.kind" not in left and "threats.top_k" not in left
    with pytest.raises(ConfigError, match="'intervention.nope' is not one the protocol"):
        rung_overrides(_ladder(("x", ["intervention.nope"])), [], "maia2")
    with pytest.raises(ConfigError, match="set by ladder.common"):
        rung_overrides(_ladder(("x", ["threats.families"]), common=["threats.families=[threat]"]), [], "maia2")


def test_rungs_that_leave_a_step_unchanged_share_its_run_and_a_network_family_gets_an_sae_per_network(tmp_path):
    lc = _ladder(("seed", []), ("control", ["intervention.control"]), ("require", ["transitional.require"]))
    p = plan(lc, [], tmp_path, "maia2", [])
    by = p.by_rung
    # the control rung changes only the intervention: its transitional, SAE, detectors and fine-tune are rung 0's
    for stage in ("transitional", "saes", "threats", "finetune"):
        assert by["seed"][stage] == by["control"][stage]
    assert by["seed"]["intervention"] != by["control"]["intervention"]
    # the require rung changes the dataset, so everything reading it, but not the SAE
    assert by["require"]["transitional"] != by["control"]["transitional"] and by["require"]["saes"] == by["seed"]["saes"]
    assert by["require"]["finetune"] != by["control"]["finetune"]
    assert len(p.steps) == len({s.run_dir for s in p.steps}) == 5 + 1 + 3
    iv = next(s for s in p.steps if s.run_dir == by["control"]["intervention"]).overrides
    assert f"intervention.saes={by['seed']['saes']}" in iv and "intervention.control=matched" in iv
    # the same plan again: the same run directories (a ladder resumes)
    assert plan(lc, [], tmp_path, "maia2", []).by_rung == by
    fam = plan(_ladder(("seed", []), family={"maia1": {"all": ["intervention.site=blocks.5.hook_resid_post"]}}),
               ["model=maia1"], tmp_path / "m1", "maia1", [1100, 1900])
    saes = [s for s in fam.steps if s.stage == "sae"]
    assert [s.rating for s in saes] == [1100, 1900] and saes[0].run_dir.parent == saes[1].run_dir.parent
    assert str(fam.by_rung["seed"]["saes"]).endswith("maia1-{rating}")
    assert any(o == "sae.sites=[blocks.5.hook_resid_post]" for o in saes[0].overrides)
    # each network's detectors read its own SAE, yet all sit in one folder: the one the intervention reads
    threats = [s for s in fam.steps if s.stage == "threats"]
    assert [s.rating for s in threats] == [1100, 1900] and threats[0].run_dir.parent == threats[1].run_dir.parent
    assert fam.by_rung["seed"]["threats"] == threats[0].run_dir.parent / "maia1-{rating}"
    for s in threats:
        assert f"threats.saes={saes[0].run_dir.parent / f'maia1-{s.rating}'}" in s.overrides


def _results(path, **values):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(values))
    return path


def test_the_ladder_table_reads_each_rung_and_its_headline_follows_the_control(tmp_path):
    t = _results(tmp_path / "t", positions=300)
    seed_iv = _results(tmp_path / "iv0", test_positions=40, effect=0.05, effect_ci=[0.01, 0.09], effect_by_bucket=[0.1] * 11,
                       effect_by_bucket_ci=[[0.0, 0.2]] * 11, skill_trend_change=-0.1, skill_trend_change_ci=[-0.2, 0.0],
                       seed_mean_tp_base=4.0, seed_mean_tp_intervened=3.0)
    ours_iv = _results(tmp_path / "iv1", test_positions=40, effect=0.05, effect_ci=[0.01, 0.09], effect_minus_control=0.0,
                       effect_minus_control_ci=[-0.02, 0.02], minus_control_by_bucket=[0.0] * 11,
                       minus_control_by_bucket_ci=[[-0.1, 0.1]] * 11, skill_trend_change_minus_control=0.01,
                       skill_trend_change_minus_control_ci=[-0.03, 0.05], skill_trend_change=-0.1)
    ft = _results(tmp_path / "ft", mean_shift=-0.5, mean_shift_ci=[-0.9, -0.1], seed_tp_before=5.0, seed_tp_after=4.0)
    sae = _results(tmp_path / "sae", sites={"a": {"variance_explained": 0.6, "l0": 40.0}, "b": {"variance_explained": 0.8, "l0": 20.0}})
    p = Plan([{"name": "seed", "what": "nothing"}, {"name": "control", "what": "a control"}])
    p.by_rung = {"seed": {"transitional": t, "intervention": seed_iv, "finetune": ft, "saes": sae},
                 "control": {"transitional": t, "intervention": ours_iv, "finetune": ft}}
    rows = ladder_rows(p)
    assert rows[0]["headline"] == "effect" and rows[0]["intervention_effect"] == 0.05
    assert rows[1]["headline"] == "effect_minus_control" and rows[1]["intervention_effect"] == 0.0
    assert rows[1]["skill_trend_change"] == 0.01 and rows[0]["skill_trend_change"] == -0.1
    assert rows[1]["intervention_change_from_previous"] == pytest.approx(-0.05)
    md = "\n".join(ladder_markdown("m", SimpleNamespace(protocol="seed_neurips"), p, rows))
    assert "| seed | nothing | 300 | 40 | vs none +0.050 [+0.010, +0.090]" in md
    assert "minus control +0.000 [-0.020, +0.020]" in md and "4.00 -> 3.00" in md and "-0.50 [-0.90, -0.10]" in md
    assert "have not run yet" not in md
    # the SAE's reconstruction, the mean over its sites; '-' where a rung's SAE has not run
    assert rows[0]["sae_variance_explained"] == pytest.approx(0.7) and md.count("| 0.70 (30) |") == 1
    assert rows[1]["sae_variance_explained"] is None
    # a ladder stopped part way (ladder.report=true tabulates it): the rungs not run show '-' and say so
    from maia_adapt.ladder import Step
    (seed_iv / "summary.json").write_text("{}")
    p.steps = [Step("seed", "intervention", [], seed_iv), Step("control", "intervention", [], tmp_path / "iv_not_run")]
    p.by_rung["control"] = {"transitional": t, "intervention": tmp_path / "iv_not_run"}
    md = "\n".join(ladder_markdown("m", SimpleNamespace(protocol="seed_neurips"), p, ladder_rows(p)))
    assert "1 of 2 steps have not run yet (first: rung control, intervention)" in md
    assert "| control | a control | 300 | - | vs none - |" in md


def test_every_rung_of_the_preset_names_keys_of_its_protocol():
    lc = _compose(["experiment=seed_ladder"]).ladder
    rungs, left = rung_overrides(lc, [], "maia2")
    assert [r["name"] for r in rungs][0] == "seed" and not left  # the last rung is ours
    m1, _ = rung_overrides(lc, ["model=maia1"], "maia1")
    assert all("intervention.site=blocks.5.hook_resid_post" in r["family"] for r in m1)
    assert "sae.token_pooling=none" in m1[-1]["family"] and "sae.token_pooling=none" not in m1[-2]["family"]
    # the table names each family's own SAE; a family key that is no rung is a typo, named
    assert "TopK 4,096" in rungs[-1]["what"] and "TopK 1,024" in m1[-1]["what"] and m1[0]["what"] == rungs[0]["what"]
    bad = OmegaConf.create(OmegaConf.to_container(lc))
    bad.family_overrides.maia1.sea = ["sae.k=8"]
    with pytest.raises(ConfigError, match=r"ladder.family_overrides.maia1: 'sea' is not a rung: expected all, what or one of seed"):
        rung_overrides(bad, ["model=maia1"], "maia1")


def test_a_familys_own_settings_win_over_what_every_rung_shares(tmp_path):
    # the Maia-1 sae rung trains the study's SAE (2,000 steps from 20,000 positions), not ladder.common's
    # 150 steps from 65,536: the family's keys come after ladder.common, the command line's after both
    lc = _compose(["experiment=seed_ladder"]).ladder
    p = plan(lc, ["model=maia1"], tmp_path, "maia1", [1100])
    sae = {s.rung: _compose(s.overrides).sae for s in p.steps if s.stage == "sae"}
    assert (sae["seed"].steps, sae["seed"].cache_positions) == (150, 65536)
    assert (sae["sae"].steps, sae["sae"].cache_positions, sae["sae"].token_pooling) == (2000, 20000, "none")
    mine = plan(lc, ["model=maia1", "sae.steps=7"], tmp_path, "maia1", [1100])
    assert {_compose(s.overrides).sae.steps for s in mine.steps if s.stage == "sae"} == {7}


def test_the_ladder_app_plans_its_rungs_and_the_command_lines_overrides_reach_every_step(tmp_path):
    rungs = "[{name:seed,what:x},{name:control,what:y,keys:[intervention.control]}]"
    r = run_app(["experiment=seed_ladder", "ladder.dry_run=true", f"ladder.rungs={rungs}", "transitional.depth=7"],
                run_dir=tmp_path / "ladder", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("[ladder ")]
    assert len(lines) == 6 and "rung seed: transitional" in lines[0] and "rung control: intervention" in lines[-1]
    assert all("transitional.depth=7" in ln for ln in r.stdout.splitlines() if ln.startswith("  ") and "maia_adapt.run" in ln)
    assert not (tmp_path / "ladder" / "runs").exists()  # planned only
