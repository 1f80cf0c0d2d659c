"""Activation patching across Elo buckets (analysis/patching.py) on the shipped skill model."""
import chess
import numpy as np
import pytest

from maia_adapt.analysis.patching import skill_patching
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


def test_patching_rejects_an_unknown_site():
    model = Maia2Skill(load_model(ASSETS / "maia2_skill.safetensors"), name="maia2_skill")
    with pytest.raises(MaiaAdaptError, match="unknown hook site 'blocks.7.hook_resid_post'"):
        skill_patching(model, model.inputs_from_boards(_positions(4)), ["blocks.7.hook_resid_post"])
