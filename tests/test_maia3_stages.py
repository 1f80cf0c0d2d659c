"""The stages on Maia-3 (model=maia3): a small Maia-3-architecture network with random weights, saved as
our safetensors file, on the embedded self-play games (no ../shared needed); the SkillModel adapter
against the network it wraps; what the stages that do not take Maia-3 say."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _app import ONE_THREAD, error_line, run_app
from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter, build_store
from maia_adapt.encoding import NUM_BUCKETS
from maia_adapt.model.maia3 import Maia3, Maia3Config, load_maia3, save_maia3
from maia_adapt.model.maia3_skill import BUCKET_RATINGS, Maia3Skill
from maia_adapt.model.skill import SkillModel, as_skill_model

TINY = Maia3Config(dim_vit=32, head_hid_dim=32, num_heads=4, num_blocks=2, dim_emb=16, gab_gen_size=8,
                   gab_intermediate_dim=16)
SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint path, the app arguments that run a stage on it over a small self-play store)."""
    root = tmp_path_factory.mktemp("maia3")
    torch.manual_seed(0)
    path = save_maia3(Maia3(TINY), root / "tiny.safetensors")
    return path, ["model=maia3", f"model.checkpoint={path}", "data.max_games=20", f"data.store_dir={root}/store"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store([ASSETS / "selfplay.pgn.zst"], tmp_path_factory.mktemp("s") / "store",
                       GameFilter(rated_only=False, speeds=[], first_n_plies=0, max_games=8), workers=1)


def test_adapter_satisfies_the_interface(store):
    torch.manual_seed(0)
    net = Maia3(TINY).eval()
    sm = as_skill_model(net)
    assert isinstance(sm, Maia3Skill) and isinstance(sm, SkillModel)
    idx = np.arange(0, len(store), 7)[:40]
    inputs = sm.inputs(store, idx)
    assert inputs["tokens"].shape == (len(idx), 64, 96) and "boards" not in inputs
    with torch.no_grad():
        # bucket b is the rating of its midpoint, for self and opponent alike
        logits3, wdl, _ = net(inputs["tokens"], torch.tensor(BUCKET_RATINGS)[inputs["elo_self"]],
                              torch.tensor(BUCKET_RATINGS)[inputs["elo_oppo"]])
        got = sm.policy_logits(inputs, inputs["elo_self"], inputs["elo_oppo"])
        from maia_adapt.encoding.maia3 import maia2_to_maia3

        assert torch.equal(got, logits3[:, torch.from_numpy(maia2_to_maia3())])
        p = wdl.softmax(-1)  # loss, draw, win
        assert torch.allclose(sm.value(inputs, inputs["elo_self"], inputs["elo_oppo"]), p[:, 2] - p[:, 0])
        # the shared board term: every conditioning as its own forward pass gives the same logits
        pairs = [(b, 10 - b) for b in range(NUM_BUCKETS)]
        for (es, eo), lg in zip(pairs, sm.policy_logits_by_condition(inputs, pairs)):
            assert torch.allclose(lg, sm.policy_logits(inputs, es, eo), atol=1e-5)
        logits, value, cache = sm.policy_value_with_cache(inputs, 3, 3, names=[SITE, "hook_elo_in"])
        assert torch.allclose(logits, sm.policy_logits(inputs, 3, 3), atol=1e-5) and set(cache) == {SITE, "hook_elo_in"}
    assert sm.site_dim(SITE) == 32 and sm.site_dim("blocks.0.hook_pattern") == 4 * 64 and sm.site_dim("hook_elo") == 16
    assert [sm.label(b) for b in (0, 1, 10)] == ["Elo 1000", "Elo 1150", "Elo 2100"] and sm.spaces() == [(0, list(range(11)))]


def test_a_fine_tuned_file_reads_back(tmp_path):
    from maia_adapt.model.skill import save_skill_model

    torch.manual_seed(1)
    sm = Maia3Skill(Maia3(TINY))
    path = save_skill_model(sm, tmp_path / "model.safetensors")
    back = load_maia3(tmp_path)  # a run directory: its model.safetensors, whose record gives the shape
    assert back.cfg == TINY and all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), sm.model.state_dict().values()))
    from maia_adapt.errors import CheckpointError

    with pytest.raises(CheckpointError, match="records a Maia-3 of another shape than model.size=5m"):
        load_maia3(path, size="5m")


@pytest.mark.slow
def test_stage_evaluate(tiny, tmp_path):
    _, base = tiny
    r = run_app(["stage=evaluate", *base, "evaluate.positions=200", "evaluate.n_boot=20",
                 "evaluate.ratings=[1000,1234.5,2100,3000]"], run_dir=tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["model"] == "maia3" and s["positions"] > 0 and 0 <= s["top1"] <= 1
    import csv

    matrix = list(csv.DictReader(open(tmp_path / "run" / "skill_matrix.csv")))
    assert list(matrix[0])[2:] == [f"Elo {r}" for r in BUCKET_RATINGS]
    # the rating sweep, on the same positions: at a bucket's own rating it is the skill matrix's column
    sweep = list(csv.DictReader(open(tmp_path / "run" / "rating_sweep.csv")))
    assert list(sweep[0])[2:] == ["Elo 1000", "Elo 1234.5", "Elo 2100", "Elo 3000", "best_rating"]
    for m, w in zip(matrix, sweep):
        assert m["player_bucket"] == w["player_bucket"] and m["positions"] == w["positions"]
        for col in ("Elo 1000", "Elo 2100"):
            assert m[col] == w[col]
    res = json.loads((tmp_path / "run" / "rating_sweep.json").read_text())
    assert res["ratings"] == [1000, 1234.5, 2100, 3000] and len(res["top1"]) == 4 and sum(res["counts"]) == s["positions"]


@pytest.mark.slow
def test_stage_activations_caches_the_model_sites(tiny, tmp_path):
    from maia_adapt.analysis.activation_cache import ActivationCache
    from maia_adapt.data.store import PositionStore

    path, base = tiny
    r = run_app(["stage=activations", *base, "activations.positions=60", f"activations.sites=[{SITE},hook_elo_in]",
                 "activations.elo=[data,0,10]", "activations.dtype=float32"], run_dir=tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    cache = ActivationCache(tmp_path / "run" / "activations")
    assert len(cache) == 3 * 60
    store_dir = next(a.split("=", 1)[1] for a in base if a.startswith("data.store_dir="))
    store = PositionStore(store_dir)
    sm = Maia3Skill(load_maia3(path))
    idx, es, eo = (cache.column(k).long() for k in ("index", "elo_self", "elo_oppo"))
    with torch.no_grad():
        _, want = sm.run_with_cache(sm.inputs(store, idx.numpy()), es, eo, names=[SITE, "hook_elo_in"])
    assert torch.allclose(cache.column(SITE), want[SITE].mean(1), atol=1e-5)  # mean over the 64 squares
    assert torch.allclose(cache.column("hook_elo_in"), want["hook_elo_in"], atol=1e-5)
    assert set(es[60:120].tolist()) == {0} and set(es[120:].tolist()) == {10}


@pytest.mark.slow
def test_stage_sae(tiny, tmp_path):
    _, base = tiny
    r = run_app(["stage=sae", *base, f"sae.sites=[{SITE}]", "sae.dim=64", "sae.k=4", "sae.steps=30", "sae.batch_size=256",
                 "sae.chunk_positions=256", "sae.cache_positions=256", "sae.eval_positions=100",
                 "sae.token_pooling=none"], run_dir=tmp_path / "run", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "run" / "results.json").read_text())["sites"][SITE]
    assert m["l0"] <= 4 + 1e-6 and m["sae/kl"] < m["zero/kl"]
    cfg = json.loads(next((tmp_path / "run" / "saes").glob("*/cfg.json")).read_text())
    assert cfg["d_in"] == 32 and cfg["hook_name"] == SITE


@pytest.mark.slow
def test_stages_threats_and_probe(tiny, tmp_path):
    _, base = tiny
    r = run_app(["stage=threats", *base, f"threats.sites=[{SITE}]", "threats.positions=300", "threats.n_boot=10",
                 "threats.n_null=3", "threats.dashboards=0", "threats.families=[threat,board-state]"],
                run_dir=tmp_path / "threats")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "threats" / "results.json").read_text())["sites"][f"{SITE} (units)"]
    assert res["features"] == 32  # the site's units
    r = run_app(["stage=probe", *base, "probe.train_positions=200", "probe.test_positions=100", "probe.buckets=[0,10]",
                 "probe.families=[board-state]", f"probe.sites=[{SITE}]"], run_dir=tmp_path / "probe", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    p = json.loads((tmp_path / "probe" / "results.json").read_text())["sites"][SITE]
    # the tokens are the pieces, so even a random network's residual stream holds the board
    assert min(v for v in p["mean_auc_per_bucket"] if v is not None) > p["mean_control_auc"] + 0.1


@pytest.mark.slow
def test_stages_transitional_finetune_intervention(tiny, tmp_path):
    path, base = tiny
    r = run_app(["stage=transitional", *base, "transitional.positions=40", "transitional.oracle=model"],
                run_dir=tmp_path / "tr")
    assert r.returncode == 0, r.stderr[-2000:]
    header = (tmp_path / "tr" / "transitional.csv").read_text().splitlines()[0].split(",")
    assert [h for h in header if h.startswith("pred_")] == [f"pred_{b}" for b in range(NUM_BUCKETS)]
    r = run_app(["stage=finetune", *base, f"finetune.transitional={tmp_path}/tr", "finetune.concept=", "finetune.steps=6",
                 "finetune.eval_every=3", "finetune.trainable=policy_head", "finetune.side_info_weight=0",
                 "finetune.heldout_positions=0"], run_dir=tmp_path / "ft", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "ft" / "results.json").read_text())
    h = TINY.head_hid_dim
    assert res["trainable_parameters"] == 2 * TINY.dim_vit * h + 4 * h  # from/to projections, promotion bias
    before, after = load_maia3(path).state_dict(), load_maia3(tmp_path / "ft").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("proj_sq_", "promo_bias_proj")) for k in changed)
    r = run_app(["stage=intervention", *base, "intervention.kind=steering", f"intervention.transitional={tmp_path}/tr",
                 "intervention.strengths=[1.0,4.0]", "intervention.n_boot=20", "intervention.heldout_positions=0",
                 f"intervention.site={SITE}"], run_dir=tmp_path / "iv")
    assert r.returncode == 0, r.stderr[-2000:]
    iv = json.loads((tmp_path / "iv" / "results.json").read_text())
    assert [g["strength"] for g in iv["grid"]] == [None, 1.0, 4.0] and len(iv["per_bucket_settings"]) == NUM_BUCKETS


@pytest.mark.slow
def test_stage_transcoder(tiny, tmp_path):
    _, base = tiny
    r = run_app(["stage=transcoder", *base, "transcoder.layers=[1]", "transcoder.steps=30", "transcoder.dim=64",
                 "transcoder.k=8", "transcoder.batch_size=256", "transcoder.chunk_positions=256",
                 "transcoder.cache_positions=256", "transcoder.eval_positions=40", "transcoder.grid_positions=2"],
                run_dir=tmp_path / "tc", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "tc" / "results.json").read_text())["layers"]["layer_1"]
    assert res["l0"] <= 8 + 1e-6 and np.array(res["grid_agreement"]).shape == (NUM_BUCKETS, NUM_BUCKETS)
    cfg = json.loads((tmp_path / "tc" / "transcoders" / "layer_1" / "cfg.json").read_text())
    assert cfg["hook_name"] == "blocks.1.hook_mlp_in" and cfg["d_in"] == TINY.dim_vit
    r = run_app(["stage=transcoder", *base, "transcoder.layers=[2]"], run_dir=tmp_path / "bad", timeout=300)
    assert r.returncode != 0 and "transcoder layer 2: the model has blocks 0..1" in error_line(r)


@pytest.mark.parametrize("stage,why", [("circuits", "circuits are built on Maia-2's"), ("train", "it trains a Maia-2")])
def test_stages_that_do_not_take_maia3_say_why(tiny, tmp_path, stage, why):
    _, base = tiny
    r = run_app([f"stage={stage}", *[a for a in base if not a.startswith("model.checkpoint")]], run_dir=tmp_path / "run",
                timeout=300)
    assert r.returncode != 0 and f"does not take model=maia3: {why}" in error_line(r)


def test_ratings_need_maia3(tmp_path):
    r = run_app(["stage=evaluate", "evaluate.ratings=[1500]"], run_dir=tmp_path / "run", timeout=300)
    assert r.returncode != 0 and "evaluate.ratings=[1500.0]: expected null unless model=maia3" in error_line(r)


def test_a_pt_checkpoint_needs_its_size(tmp_path):
    torch.save({"model_state_dict": Maia3(TINY).state_dict()}, tmp_path / "m.pt")
    r = run_app(["stage=evaluate", "model=maia3", f"model.checkpoint={tmp_path}/m.pt"], run_dir=tmp_path / "run", timeout=300)
    assert r.returncode != 0 and "does not record its Maia-3 size: give model.size" in error_line(r)
    r = run_app(["stage=evaluate", "model=maia3", "model.size=7m", f"model.checkpoint={tmp_path}/m.pt"],
                run_dir=tmp_path / "run2", timeout=300)
    assert r.returncode != 0 and "model.size='7m': expected a published Maia-3 size: 3m, 5m, 23m, 79m" in error_line(r)


def test_the_shipped_tiny_maia3_has_learnt_moves(store):
    """maia3_tiny (experiments/maia3_tiny): through its preset's file, well above the same network
    with random weights on the embedded self-play games, which it never saw."""
    from omegaconf import OmegaConf

    from maia_adapt.analysis.evaluation import own_bucket_accuracy
    from maia_adapt.stages.common import _model_preset
    from maia_adapt.model.skill import load_skill_model

    preset = OmegaConf.to_container(_model_preset("maia3_tiny"), resolve=False)
    assert preset["name"] == "maia3" and preset["checkpoint"] == "${paths.assets}/maia3_tiny.safetensors"
    trained = load_skill_model(OmegaConf.create({"name": "maia3", "size": None,
                                                 "checkpoint": str(ASSETS / "maia3_tiny.safetensors")}))
    torch.manual_seed(0)
    untrained = Maia3Skill(Maia3(trained.model.cfg))
    idx = np.arange(0, len(store), 3)[:300]
    with torch.no_grad():
        acc, base = (own_bucket_accuracy(m, store, idx)["accuracy"] for m in (trained, untrained))
    assert acc > 0.12 and acc > base + 0.1, (acc, base)  # measured: 18% vs 4%


@pytest.mark.slow
def test_sae_and_probe_interventions_run_on_maia3(tiny, tmp_path):
    """The two intervention kinds that read other stages' runs (an SAE with its threat detectors, or
    the concept probes) on a Maia-3: one network, so the features and probes of one activation space
    are edited at every bucket's rating."""
    _, base = tiny
    common = [f"intervention.transitional={tmp_path}/tr", "intervention.strengths=[2.0]", "intervention.top_n=[1]",
              "intervention.n_boot=20", "intervention.heldout_positions=0", f"intervention.site={SITE}"]
    runs = {"tr": ["stage=transitional", "transitional.positions=40", "transitional.oracle=model"],
            "sae": ["stage=sae", f"sae.sites=[{SITE}]", "sae.dim=64", "sae.k=4", "sae.steps=20", "sae.batch_size=256",
                    "sae.chunk_positions=256", "sae.cache_positions=256", "sae.eval_positions=50"],
            "threats": ["stage=threats", f"threats.saes={tmp_path}/sae", "threats.positions=300", "threats.n_boot=5",
                        "threats.n_null=2", "threats.dashboards=0", "threats.families=[threat]", "threats.min_positives=5"],
            "probe": ["stage=probe", "probe.train_positions=300", "probe.test_positions=100", "probe.buckets=[0,10]",
                      "probe.families=[threat]", f"probe.sites=[{SITE}]", "probe.min_positives=5"],
            "iv_sae": ["stage=intervention", "intervention.kind=sae", f"intervention.saes={tmp_path}/sae",
                       f"intervention.threats={tmp_path}/threats", *common],
            "iv_probe": ["stage=intervention", "intervention.kind=probe", f"intervention.probes={tmp_path}/probe", *common]}
    for name, args in runs.items():
        r = run_app([*args, *base], run_dir=tmp_path / name, env=ONE_THREAD)
        assert r.returncode == 0, (name, r.stderr[-2000:])
    for name in ("iv_sae", "iv_probe"):
        iv = json.loads((tmp_path / name / "results.json").read_text())
        assert [g["strength"] for g in iv["grid"]] == [None, 2.0] and len(iv["per_bucket_settings"]) == NUM_BUCKETS
        assert iv["test_positions"] > 0 and iv["effect_ci"][0] <= iv["effect"] <= iv["effect_ci"][1]
