"""Maia-2: same outputs as the official model, checkpoint loading errors, hook points, inference."""
import chess
import pytest
import torch

from maia_adapt.encoding import board_planes
from maia_adapt.errors import MaiaAdaptError
from maia_adapt.model import Maia2, Maia2Config, load_model, predict, save_model

SMALL = Maia2Config(dim_cnn=16, num_blocks_cnn=2, dim_vit=64, elo_dim=8, heads=4, dim_head=16)
FENS = [
    "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
    "rnbqkbnr/ppp1pppp/8/3pP3/8/8/PPPP1PPP/RNBQKBNR b KQkq - 0 2",
    "8/P7/8/8/8/8/6k1/4K3 w - - 0 1",
    "4k3/8/8/8/8/8/p7/4K3 b - - 0 1",
]


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The official MAIA2Model (official size, random weights), saved in the official checkpoint format."""
    M = pytest.importorskip("maia2.main", reason="the official maia2 package is the reference")
    from importlib.resources import files

    from maia2.utils import create_elo_dict, parse_args

    cfg = parse_args(str(files("maia2.configs").joinpath("maia2-training.yaml")))
    torch.manual_seed(0)
    ref = M.MAIA2Model(1880, create_elo_dict(), cfg).eval()
    _randomise_bn(ref)
    path = tmp_path_factory.mktemp("official") / "rapid_model.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 1}, path)
    return ref, path


@pytest.fixture(scope="module")
def real_boards(shared_data):
    from _games import real_positions

    pos = real_positions(shared_data / "lichess/lichess_rated_rapid_58k.pgn.zst", 8)
    return [b for b, _ in pos]


@pytest.mark.reference
def test_same_outputs_as_official(official, real_boards):
    ref, path = official
    ours = load_model(path)
    assert ours.cfg.dim_vit == 1024 and ours.cfg.heads == 16 and ours.cfg.num_blocks_cnn == 5
    x = torch.from_numpy(board_planes(real_boards[:256]))
    g = torch.Generator().manual_seed(0)
    es, eo = torch.randint(0, 11, (len(x),), generator=g), torch.randint(0, 11, (len(x),), generator=g)
    with torch.no_grad():
        a, b = ref(x, es, eo), ours(x, es, eo)
    for name, p, q in zip(("policy", "side info", "value"), a, b):
        assert torch.allclose(p, q, atol=1e-5, rtol=0), f"{name} differs by {(p - q).abs().max()}"


@pytest.mark.reference
def test_predict_matches_official_inference(official, real_boards):
    from maia2.inference import inference_each, prepare

    ref, path = official
    ours = load_model(path)
    prepared = prepare()
    fens = [b.fen() for b in real_boards[::40][:12]] + FENS
    preds = predict(ours, fens, 1450, 1720)
    for fen, p in zip(fens, preds):
        ref_moves, ref_win = inference_each(ref, prepared, fen, 1450, 1720)
        assert set(p.move_probs) == set(ref_moves) == {m.uci() for m in chess.Board(fen).legal_moves}
        for m, prob in ref_moves.items():
            assert abs(p.move_probs[m] - prob) < 1e-4
        assert abs(p.win_prob - ref_win) < 1e-4
        assert abs(sum(p.move_probs.values()) - 1) < 1e-5


def test_wrong_shape_and_unknown_key_are_named(tmp_path):
    model = Maia2(SMALL)
    state = model.state_dict()
    state["fc_1.weight"] = torch.zeros(10, 64)
    torch.save({"model_state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(MaiaAdaptError, match=r"fc_1.weight.*\(10, 64\).*\(1880, 64\)"):
        load_model(tmp_path / "bad.pt", config=SMALL)
    state = Maia2(SMALL).state_dict()
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(MaiaAdaptError, match="unknown key 'extra.weight'"):
        load_model(tmp_path / "extra.pt", config=SMALL)
    with pytest.raises(MaiaAdaptError, match="not found"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MaiaAdaptError, match="junk.safetensors"):
        load_model(tmp_path / "junk.safetensors")


def test_safetensors_round_trip_is_exact(tmp_path):
    torch.manual_seed(3)
    model = Maia2(SMALL).eval()
    _randomise_bn(model)
    save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.cfg == model.cfg
    x = torch.from_numpy(board_planes([chess.Board(f) for f in FENS]))
    e = torch.tensor([0, 3, 7, 10])
    with torch.no_grad():
        for p, q in zip(model(x, e, e), loaded(x, e, e)):
            assert torch.equal(p, q)


def _inputs():
    x = torch.from_numpy(board_planes([chess.Board(f) for f in FENS]))
    return x, torch.tensor([0, 2, 5, 10]), torch.tensor([1, 1, 9, 10])


def test_cache_has_every_hook_with_documented_shapes():
    torch.manual_seed(0)
    model = Maia2(SMALL).eval()
    out, cache = model.run_with_cache(*_inputs())
    assert set(cache) == set(model.hook_names)
    assert cache["hook_cnn_out"].shape == (4, 8, 64)
    assert cache["blocks.1.hook_attn_heads"].shape == (4, 8, 4, 16)
    assert cache["blocks.0.hook_mlp_in"].shape == (4, 8, 64)
    assert cache["hook_final"].shape == (4, 64)
    # the residual stream adds up: resid_post = resid_mid + mlp_out = resid_pre + attn_out + mlp_out
    for i in range(2):
        c = lambda s: cache[f"blocks.{i}.{s}"]
        assert torch.allclose(c("hook_resid_mid"), c("hook_resid_pre") + c("hook_attn_out"), atol=1e-6)
        assert torch.allclose(c("hook_resid_post"), c("hook_resid_mid") + c("hook_mlp_out"), atol=1e-6)
    assert torch.equal(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    # heads are the per-head view of what the output projection reads
    attn = model.transformer.elo_layers[0][0]
    heads = cache["blocks.0.hook_attn_heads"].flatten(2)
    assert torch.allclose(attn.to_out(heads), cache["blocks.0.hook_attn_out"], atol=1e-6)
    assert torch.allclose(model.heads(cache["hook_final"])[0], out[0], atol=1e-6)


def test_elo_query_and_pattern_hooks():
    """The Elo's query term is one vector per head that only the buckets decide, and the pattern is
    what the heads average the values with."""
    torch.manual_seed(0)
    model = Maia2(SMALL).eval()
    boards, _, _ = _inputs()
    elo = torch.tensor([0, 0, 10, 10])
    _, cache = model.run_with_cache(boards, elo, elo)
    eq, pat = cache["blocks.0.hook_elo_q"], cache["blocks.1.hook_pattern"]
    assert eq.shape == (4, 1, 4, 16) and pat.shape == (4, 8, 4, 8)
    assert torch.equal(eq[0], eq[1]) and not torch.allclose(eq[0], eq[2])
    assert torch.allclose(pat.sum(-1), torch.ones(4, 8, 4), atol=1e-6)
    attn = model.transformer.elo_layers[0][0]
    v = attn.to_qkv(attn.norm(cache["blocks.0.hook_resid_pre"])).chunk(3, dim=-1)[2].view(4, 8, 4, 16)
    heads = torch.einsum("bqhk,bkhd->bqhd", cache["blocks.0.hook_pattern"], v)
    assert torch.allclose(heads, cache["blocks.0.hook_attn_heads"], atol=1e-5)
    # the low rows given the high rows' Elo term in every head of both blocks become the high rows
    hi = {i: cache[f"blocks.{i}.hook_elo_q"][2:3] for i in range(2)}
    low = torch.zeros(4, dtype=torch.long)
    swapped = model.run_with_hooks(boards, low, low, [(f"blocks.{i}.hook_elo_q", lambda x, n, i=i: hi[i].expand_as(x))
                                                      for i in range(2)])[0]
    assert torch.allclose(swapped, model(boards, torch.full((4,), 10), torch.full((4,), 10))[0], atol=1e-5)


def test_hooks_replace_and_are_removed():
    torch.manual_seed(0)
    model = Maia2(SMALL).eval()
    x, es, eo = _inputs()
    with torch.no_grad():
        base = model(x, es, eo)
        same = model.run_with_hooks(x, es, eo, [("blocks.1.hook_mlp_out", lambda t, n: t.clone())])
        zero = model.run_with_hooks(x, es, eo, [("blocks.1.hook_mlp_out", lambda t, n: torch.zeros_like(t))])
        after = model(x, es, eo)
    assert torch.equal(base[0], same[0]) and torch.equal(base[0], after[0])
    assert not torch.allclose(base[0], zero[0])
    assert model._hooks == {}
    # zero-ablating the MLP output equals running the residual stream without it
    _, cache = model.run_with_cache(x, es, eo, names=["blocks.1.hook_resid_mid"])
    final = model.last_ln(model.transformer.norm(cache["blocks.1.hook_resid_mid"]).mean(1))
    assert torch.allclose(model.heads(final)[0], zero[0], atol=1e-5)


def test_hook_errors_are_clear():
    model = Maia2(SMALL).eval()
    with pytest.raises(MaiaAdaptError, match="unknown hook site 'blocks.7.hook_resid_post'.*blocks.0.hook_resid_pre"):
        model.run_with_hooks(*_inputs(), [("blocks.7.hook_resid_post", lambda t, n: None)])
    with pytest.raises(MaiaAdaptError, match="returned shape"):
        model.run_with_hooks(*_inputs(), [("hook_final", lambda t, n: t[:, :3])])
    assert model._hooks == {}


def test_predict_unmirrors_black_moves_and_checks_input():
    torch.manual_seed(0)
    model = Maia2(SMALL).eval()
    black = FENS[1]
    p = predict(model, black, 5, 5)
    assert set(p.move_probs) == {m.uci() for m in chess.Board(black).legal_moves}
    assert "d5e4" not in p.move_probs and "f7f5" in p.move_probs
    assert list(p.move_probs.values()) == sorted(p.move_probs.values(), reverse=True)
    # a rating and its bucket give the same prediction
    assert predict(model, black, 1550, 1550).move_probs == p.move_probs
    with pytest.raises(MaiaAdaptError, match="bad FEN 'nonsense'"):
        predict(model, "nonsense", 5, 5)
    with pytest.raises(MaiaAdaptError, match="not a legal chess position"):
        predict(model, "8/8/8/8/8/8/8/8 w - - 0 1", 5, 5)
    with pytest.raises(MaiaAdaptError, match="elo_self.*out of range"):
        predict(model, black, 99999, 5)
    with pytest.raises(MaiaAdaptError, match="no legal moves"):
        predict(model, "7k/6Q1/6K1/8/8/8/8/8 b - - 0 1", 5, 5)


def test_grown_transformer_starts_as_the_same_function_and_its_new_blocks_learn():
    from maia_adapt.model.maia2 import grow_transformer

    torch.manual_seed(5)
    model = Maia2(SMALL).eval()
    _randomise_bn(model)
    grown = grow_transformer(model, 2).eval()
    assert grown.cfg.num_blocks_vit == SMALL.num_blocks_vit + 2
    assert "blocks.3.hook_elo_q" in grown.hook_names
    x, e, o = _inputs()
    with torch.no_grad():
        for p, q in zip(model(x, e, o), grown(x, e, o)):
            torch.testing.assert_close(q, p, rtol=0, atol=1e-6)
    # the zeroed output projections get gradient, so the new blocks do not stay the identity
    grown.train()
    grown(x, e, o)[0].logsumexp(-1).sum().backward()
    new_out = grown.transformer.elo_layers[3][0].to_out[0].weight
    assert new_out.grad is not None and new_out.grad.abs().sum() > 0
    # the original is untouched
    assert model.cfg.num_blocks_vit == SMALL.num_blocks_vit
