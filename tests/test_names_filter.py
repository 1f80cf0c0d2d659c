"""run_with_cache's TransformerLens spelling: names_filter as a name, a list of names or a predicate,
on the shipped Maia-2 and on the SkillModel wrappers (Maia-2 and a Maia-1 family)."""
import chess
import pytest
import torch

from maia_adapt.config import ASSETS
from maia_adapt.errors import MaiaAdaptError
from maia_adapt.model import load_model
from maia_adapt.model.maia1 import Maia1
from maia_adapt.model.skill import Maia1Family, as_skill_model

FENS = ["r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
        "rnbqkbnr/ppp1pppp/8/3pP3/8/8/PPPP1PPP/RNBQKBNR b KQkq - 0 2"]


@pytest.fixture(scope="module")
def shipped():
    return load_model(ASSETS / "maia2_small.safetensors").eval()


def _boards():
    return [chess.Board(f) for f in FENS]


@torch.no_grad()
def test_maia2_names_filter_forms_pick_the_same_sites_as_names(shipped):
    wrapped = as_skill_model(shipped)
    x = wrapped.inputs_from_boards(_boards())
    boards, es, eo = x["boards"], torch.tensor([0, 10]), torch.tensor([5, 5])
    out_all, full = shipped.run_with_cache(boards, es, eo)
    assert list(full) == shipped.hook_names

    site = "blocks.1.hook_resid_post"
    resid = [n for n in shipped.hook_names if n.endswith("hook_resid_post")]
    assert len(resid) == shipped.cfg.num_blocks_vit >= 2
    for filt, want in ((site, [site]), ([site, "hook_final"], [site, "hook_final"]),
                       (lambda n: n.endswith("hook_resid_post"), resid)):
        out, cache = shipped.run_with_cache(boards, es, eo, names_filter=filt)
        assert list(cache) == want
        assert torch.equal(out[0], out_all[0])
        for n in want:
            assert torch.equal(cache[n], full[n])
    # the project's names= takes the same forms
    assert list(shipped.run_with_cache(boards, es, eo, names=site)[1]) == [site]
    assert list(shipped.run_with_cache(boards, es, eo, names=lambda n: "pattern" in n)[1]) == \
        [n for n in shipped.hook_names if "pattern" in n]

    # the wrapper: the same activations, through names= and names_filter=
    logits, cache = wrapped.run_with_cache(x, es, eo, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert list(cache) == resid and torch.equal(logits, out_all[0])
    assert all(torch.equal(cache[n], full[n]) for n in resid)
    _, value, cache = wrapped.policy_value_with_cache(x, es, eo, names_filter=site)
    assert list(cache) == [site] and torch.equal(value, out_all[2])
    assert list(wrapped.run_with_cache(x, es, eo, [site])[1]) == [site]


def test_unknown_site_and_both_spellings_are_one_clear_error(shipped):
    wrapped = as_skill_model(shipped)
    x = wrapped.inputs_from_boards(_boards())
    e = torch.zeros(2, dtype=torch.long)
    with pytest.raises(MaiaAdaptError, match=r"unknown hook site 'blocks.9.hook_resid_post': expected one of "
                                             r"hook_cnn_out, hook_tokens, blocks.0.hook_resid_pre"):
        shipped.run_with_cache(x["boards"], e, e, names_filter=["hook_final", "blocks.9.hook_resid_post"])
    with pytest.raises(MaiaAdaptError, match="unknown hook site 'resid'"):
        wrapped.run_with_cache(x, e, e, names_filter="resid")
    with pytest.raises(MaiaAdaptError, match="names= or names_filter=, not both"):
        wrapped.run_with_cache(x, e, e, names=["hook_final"], names_filter="hook_final")
    assert shipped._hooks == {}


@torch.no_grad()
def test_maia1_family_names_filter():
    torch.manual_seed(0)
    nets = {1100: Maia1(filters=8, blocks=2, se_channels=2).eval(), 1900: Maia1(filters=8, blocks=2, se_channels=2).eval()}
    fam = Maia1Family(nets)
    fam.rating_for_bucket = lambda b: 1100 if b <= 5 else 1900
    x = fam.inputs_from_boards(_boards())
    es = torch.tensor([1, 9])
    _, full = fam.run_with_cache(x, es)
    assert list(full) == fam.hook_names
    convs = [n for n in fam.hook_names if n.endswith("hook_conv1")]
    assert len(convs) == 2
    _, cache = fam.run_with_cache(x, es, names_filter=lambda n: n.endswith("hook_conv1"))
    assert list(cache) == convs and all(torch.equal(cache[n], full[n]) for n in convs)
    _, value, cache = fam.policy_value_with_cache(x, es, None, names_filter=convs[0])
    assert list(cache) == [convs[0]] and value.shape == (2,)
    with pytest.raises(MaiaAdaptError, match="unknown hook site 'hook_final'.*hook_input_conv"):
        fam.run_with_cache(x, es, names_filter="hook_final")
