"""The study's causal stages on the Maia-1 family: hooks in the token view, policy-head fine-tuning of
every network, steering fitted per network, SAEs on one network, and what the family refuses."""
import copy
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from _app import error_line, run_app
from maia_adapt.data.store import store_from_fens
from maia_adapt.analysis.interventions import add_direction

SITE = "blocks.3.hook_resid_post"
FENS = ["r1bqkb1r/pppp1ppp/2n2n2/4p2Q/2B1P3/8/PPPP1PPP/RNB1K1NR w KQkq - 4 4",
        "rnbqkbnr/pppp1ppp/8/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R b KQkq - 1 2",
        "8/5pk1/6p1/8/3Q4/6P1/5PKP/3r4 b - - 0 40"]


@pytest.fixture(scope="module")
def family(shared_models):
    from maia_adapt.model.maia1 import load_maia1_family
    from maia_adapt.model.skill import Maia1Family

    return Maia1Family(load_maia1_family(shared_models / "maia1"))


@pytest.fixture(scope="module")
def transitional(shared_models, seed_transitional):
    """stage=transitional on the seed positions with the family (shared with test_transitional.py)."""
    return seed_transitional("model=maia1")


def test_hooks_see_conv_maps_as_square_tokens(family, tmp_path):
    store = store_from_fens(FENS, tmp_path / "s", 5, 5)
    inputs = family.inputs(store, np.arange(3))
    seen = []
    with torch.no_grad(), family.hooks([(SITE, lambda x, name: seen.append(tuple(x.shape)))]):
        clean = family.policy_logits(inputs, 4)
    assert seen == [(3, 64, 64)]  # [B, squares, channels]
    d = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    net = family.nets[family.rating_for_bucket(4)]
    with torch.no_grad():
        with family.hooks([(SITE, add_direction(d, 2.0))]):
            steered = family.policy_logits(inputs, 4)
        # the same edit written on the raw conv map [B, C, 8, 8]: every square's channels + 2d
        with net.hooks([(SITE, lambda x, name: x + 2.0 * d[:, :, None, None])]):
            from maia_adapt.encoding.lc0 import lc0_policy_to_maia2

            raw = lc0_policy_to_maia2(net(inputs["lc0"])[0], inputs["lc0"])
    legal = inputs["legal"]
    assert torch.allclose(steered[legal], raw[legal], atol=1e-4)
    assert not torch.allclose(steered[legal], clean[legal], atol=1e-2)
    assert family.site_dim(SITE) == 64 and family.site_dim("blocks.0.hook_se_gate") == 64
    assert len(family.spaces()) == 9 and family.spaces()[0] == (0, [0, 1])


def test_policy_head_finetune_of_every_network(family, shared_data, tmp_path):
    from maia_adapt.analysis.calibration import MoveSet, finetune, select_trainable, transition_report
    from maia_adapt.model.skill import Maia1Family, load_maia1_safetensors, load_skill_model, save_skill_model
    from maia_adapt.analysis.transitional import load_seed_positions

    fam = Maia1Family(  # private copies: the module's networks stay untouched
        {r: copy.deepcopy(n) for r, n in family.nets.items()})
    seed = load_seed_positions(shared_data / "transitional/seed_transitional_positions.json")
    rows = [{"fen": f, "correct": list(m), "threats": [], "split": "train"}
            for f, m in zip(seed["fens"][:48], seed["all_best_moves"][:48])]
    train = MoveSet.build(rows, tmp_path / "train")
    before = transition_report(fam, train)
    frozen = {k: v.clone() for k, v in fam.module.state_dict().items() if ".policy_conv" not in k}
    names = select_trainable(fam, "policy_head")
    assert len(names) == 9 * 4 and all(".policy_conv" in n for n in names)  # 2 convs x (weight, bias) x 9
    fit = finetune(fam, train, train, steps=30, lr=3e-3, batch_size=64, side_info_weight=0.0, eval_every=10, seed=0)
    after = transition_report(fam, train)
    # memorising 48 positions through each network's policy head: every network gets better
    assert after["accuracy"].mean() > before["accuracy"].mean() + 0.2
    assert (after["accuracy"] >= before["accuracy"]).all() and fit["best_val_loss"] < fit["val_losses"][0][1]
    state = fam.module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    # the fine-tuned family is a checkpoint: model=maia1 model.checkpoint=<file> gives the same outputs
    path = save_skill_model(fam, tmp_path / "run" / "model.safetensors")
    cfg = OmegaConf.create({"name": "maia1", "checkpoint": str(tmp_path / "run"), "rating": None, "history": True})
    back = load_skill_model(cfg)
    inputs = fam.inputs(train.store, np.arange(16))
    for b in (0, 5, 10):
        assert torch.equal(back.policy_logits(inputs, b), fam.policy_logits(inputs, b).detach())
    one = load_skill_model(OmegaConf.merge(cfg, {"rating": 1500}))
    assert list(one.nets) == [1500] and load_maia1_safetensors(path)[1500].rating == 1500


@pytest.mark.slow
def test_stage_finetune_and_intervention_on_the_family(transitional, shared_data, tmp_path):
    r = run_app(["stage=finetune", "model=maia1", f"finetune.transitional={transitional}", "finetune.concept=",
                 "finetune.steps=20", "finetune.eval_every=10", "finetune.trainable=policy_head", "finetune.side_info_weight=0",
                 "finetune.heldout_positions=200", "data=lichess", "data.max_games=40", f"data.store_dir={tmp_path}/store"],
                run_dir=tmp_path / "ft")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert res["trainable_parameters"] == 9 * (64 * 64 * 9 + 64 + 80 * 64 * 9 + 80)
    assert 0 < res["heldout_accuracy_before"] < 1 and len(res["accuracy_after"]) == 11
    assert "maia-1500" in (tmp_path / "ft" / "results.md").read_text()
    # the fine-tuned family feeds the next stage as model.checkpoint
    r = run_app(["stage=intervention", "model=maia1", f"model.checkpoint={tmp_path}/ft", "intervention.kind=steering",
                 f"intervention.transitional={transitional}", "intervention.strengths=[1.0,4.0]", "intervention.n_boot=100",
                 "intervention.heldout_positions=0", f"intervention.site={SITE}"], run_dir=tmp_path / "iv")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "iv" / "results.json").read_text())
    assert [g["strength"] for g in res["grid"]] == [None, 1.0, 4.0] and len(res["per_bucket_settings"]) == 11
    lo, hi = res["effect_minus_control_ci"]
    assert lo <= res["effect_minus_control"] <= hi
    # buckets 0,1 run one network, and so do 9,10: same accuracy without intervention
    acc = res["accuracy_by_bucket"]["base"]
    assert acc[0] == acc[1] and acc[9] == acc[10]
    r = run_app(["stage=intervention", "model=maia1", "intervention.kind=sae", f"intervention.transitional={transitional}"],
                run_dir=tmp_path / "iv2")
    assert r.returncode != 0 and "unrelated activation spaces" in error_line(r)


@pytest.mark.slow
def test_stage_sae_on_one_network(shared_data, shared_models, tmp_path):
    base = ["stage=sae", "model=maia1", "data=lichess", "data.max_games=60", f"data.store_dir={tmp_path}/store",
            "sae=topk", "sae.k=8", "sae.dim=256", f"sae.sites=[{SITE}]", "sae.token_pooling=none", "sae.steps=60",
            "sae.batch_size=256", "sae.chunk_positions=512", "sae.calibrate_every=0", "sae.eval_positions=200",
            "sae.log_every=20"]
    r = run_app(base, run_dir=tmp_path / "family")
    assert r.returncode != 0 and "model.rating" in error_line(r)
    r = run_app([*base, "model.rating=1500"], run_dir=tmp_path / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "run" / "results.json").read_text())["sites"][SITE]
    # every square a sample of 64 channels; the spliced network keeps more behaviour than zero-ablation
    assert m["l0"] <= 8 + 1e-6 and 0 < m["variance_explained"] <= 1
    assert m["sae/kl"] < m["zero/kl"] and m["sae/agreement"] > m["zero/agreement"]
    cfg = json.loads(next((tmp_path / "run" / "saes").glob("*/cfg.json")).read_text())
    assert cfg["d_in"] == 64
