"""Activation patching across Elo buckets (analysis/patching.py) on the shipped skill model."""
import chess
import numpy as np
import pytest

import torch
from maia_adapt.analysis.patching import _Ends, attention_shift, head_patching, skill_patching
from maia_adapt.config import ASSETS
from maia_adapt.errors import MaiaAdaptError
from maia_adapt.model import load_model
from maia_adapt.model.skill import Maia2Skill


def _positions(n: int, seed: int = 0) -> list[chess.Board]:
    """Positions of seeded random games, 6 to 40 plies in."""
    rng, out = np.random.default_rng(seed), []
    while len(out) < n:
        b = chess.Board()
        for ply in range(int(rng.integers(6, 40))):
            moves = list(b.legal_moves)
            if not moves:
                break
            b.push(moves[int(rng.integers(len(moves)))])
        if not b.is_game_over():
            out.append(b.copy())
    return out


def test_patching_lies_between_the_elo_blind_tokens_and_the_last_residual_stream():
    model = Maia2Skill(load_model(ASSETS / "maia2_skill.safetensors"), name="maia2_skill")
    inputs = model.inputs_from_boards(_positions(300))
    sites = ["hook_tokens", "blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"]
    res = skill_patching(model, inputs, sites, low=0, high=10, n_boot=50)
    s = res["sites"]
    # the skill model plays differently at the two ends on some positions
    assert res["top_moves_differ"] > 0.02 and res["kl_high_vs_low"] > 0
    # the CNN's tokens do not see the Elo: patching them is the identity
    assert s["hook_tokens"]["top_moves_changed"] == 0 and abs(s["hook_tokens"]["kl_closed"]) < 1e-4
    # after the last block nothing reads the Elo: patching it gives the high bucket's policy
    assert s["blocks.1.hook_resid_post"]["top_moves_flipped"] == 1 and s["blocks.1.hook_resid_post"]["kl_closed"] > 1 - 1e-4
    for site in sites[1:3]:
        lo, hi = s[site]["kl_closed_ci95"]
        assert lo <= s[site]["kl_closed"] <= hi and -0.5 < s[site]["kl_closed"] < 1.0 + 1e-6
    # the Elo enters through the attention queries: block 0's output carries most of the difference,
    # and patching its attention output is the same as patching the block's output (its FFN is Elo-blind)
    both = skill_patching(model, inputs, ["blocks.0.hook_attn_out", "blocks.0.hook_resid_post"], n_boot=0)["sites"]
    assert both["blocks.0.hook_attn_out"]["kl_closed"] == pytest.approx(both["blocks.0.hook_resid_post"]["kl_closed"], abs=1e-5)
    assert s["blocks.0.hook_resid_post"]["kl_closed"] > 0.5


def test_head_patching_splits_the_attention_output_by_head():
    model = Maia2Skill(load_model(ASSETS / "maia2_skill.safetensors"), name="maia2_skill")
    inputs = model.inputs_from_boards(_positions(200, seed=1))
    res = head_patching(model, inputs, layer=0, n_boot=20)
    heads = [h["kl_closed"] for h in res["heads"]]
    assert len(heads) == model.model.cfg.heads and res["site"] == "blocks.0.hook_attn_heads"
    # every head at once is the attention output patch (the output projection is linear)
    whole = skill_patching(model, inputs, ["blocks.0.hook_attn_out"], n_boot=0)["sites"]["blocks.0.hook_attn_out"]
    assert res["all"]["kl_closed"] == pytest.approx(whole["kl_closed"], abs=1e-5)
    assert res["all"]["top_moves_flipped"] == pytest.approx(whole["top_moves_flipped"])
    # one head moves less than all of them, and the heads are not interchangeable
    assert max(heads) < res["all"]["kl_closed"] and max(heads) - min(heads) > 0.01
    for h in res["heads"]:
        assert h["kl_closed_ci95"][0] <= h["kl_closed"] <= h["kl_closed_ci95"][1]


def test_the_elo_enters_by_its_query_term_and_moves_attention():
    model = Maia2Skill(load_model(ASSETS / "maia2_skill.safetensors"), name="maia2_skill")
    inputs = model.inputs_from_boards(_positions(200, seed=3))
    s = skill_patching(model, inputs, ["blocks.0.hook_elo_q", "blocks.0.hook_attn_out", "blocks.1.hook_elo_q"],
                       n_boot=0)["sites"]
    # block 0 reads Elo-blind tokens, so its Elo term decides its whole attention output
    assert s["blocks.0.hook_elo_q"]["kl_closed"] == pytest.approx(s["blocks.0.hook_attn_out"]["kl_closed"], abs=1e-5)
    # the Elo's two entries together are the whole skill dependence; block 1's alone is a part of it
    with torch.no_grad():
        both = _Ends(model, inputs, 0, 10, ["blocks.0.hook_elo_q", "blocks.1.hook_elo_q"], 0, 0)
        whole = both.effect([(n, lambda x, name, v=both.hi_cache[n]: v) for n in both.names])
    assert whole["kl_closed"] == pytest.approx(1.0, abs=1e-4) and whole["top_moves_flipped"] == 1.0
    assert 0 < s["blocks.1.hook_elo_q"]["kl_closed"] < 0.5
    # the heads that carry the difference are the heads whose attention the Elo moves the most
    shift = attention_shift(model, inputs, layer=0)
    moved, gain = shift["moved"], torch.tensor(shift["key_gain"])
    heads = [h["kl_closed"] for h in head_patching(model, inputs, 0, n_boot=0)["heads"]]
    top2 = sorted(range(len(heads)), key=heads.__getitem__)[-2:]
    assert all(0 <= m <= 1 for m in moved) and min(moved[h] for h in top2) > sorted(moved)[len(moved) // 2]
    assert torch.allclose(gain.sum(-1), torch.zeros(len(moved), dtype=gain.dtype), atol=1e-6)
    # the same bucket twice moves nothing
    assert max(attention_shift(model, inputs, layer=0, low=4, high=4)["moved"]) == 0


def test_mean_shift_is_the_identity_where_the_elo_is_not_seen():
    model = Maia2Skill(load_model(ASSETS / "maia2_skill.safetensors"), name="maia2_skill")
    inputs = model.inputs_from_boards(_positions(200, seed=2))
    s = skill_patching(model, inputs, ["hook_tokens", "blocks.1.hook_resid_post"], n_boot=20, mean_shift=True)["sites"]
    # the tokens are the same at both buckets: their mean difference is zero and moves nothing
    assert s["hook_tokens"]["mean_shift"]["top_moves_changed"] == 0
    assert abs(s["hook_tokens"]["mean_shift"]["kl_closed"]) < 1e-4
    # at the last residual stream exchanging gives the high policy exactly; one vector for all positions does not
    last = s["blocks.1.hook_resid_post"]
    assert last["kl_closed"] > 1 - 1e-4 and last["mean_shift"]["kl_closed"] < last["kl_closed"] - 1e-3
    assert last["mean_shift"]["kl_closed_ci95"][0] <= last["mean_shift"]["kl_closed"] <= last["mean_shift"]["kl_closed_ci95"][1]


def test_patching_rejects_an_unknown_site():
    model = Maia2Skill(load_model(ASSETS / "maia2_skill.safetensors"), name="maia2_skill")
    with pytest.raises(MaiaAdaptError, match="unknown hook site 'blocks.7.hook_resid_post'"):
        skill_patching(model, model.inputs_from_boards(_positions(4)), ["blocks.7.hook_resid_post"])
