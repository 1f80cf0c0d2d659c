"""Maia-3: the same outputs as maia3-runtime (the reference, AGPL-3.0, used here only) for every published
size's config with random weights, its token encoding and vocabulary, checkpoint errors, hook points."""
from __future__ import annotations

import argparse
from collections import deque
from pathlib import Path

import chess
import numpy as np
import pytest
import torch

from maia_adapt.encoding import all_moves, encode_move, legal_mask
from maia_adapt.encoding.maia3 import (MAIA3_MOVES, maia2_to_maia3, maia3_moves, maia3_to_maia2, maia3_tokens,
                                       maia3_tokens_game)
from maia_adapt.errors import CheckpointError
from maia_adapt.model.maia3 import SIZES, Maia3, load_maia3, maia3_state_dict, size_config

ROOT = Path(__file__).resolve().parents[1]
SELFPLAY = ROOT / "maia_adapt/assets/selfplay.pgn.zst"
# ratings: the two ends, bucket midpoints, values between them and outside [0, 5000] (clamped)
RATINGS = [0, 1150, 1234.5, 1500, 1999, 2100, 3333, 5000, 6000, -10]


def _games(n_games: int) -> list[list[chess.Move]]:
    """The first games of the shared lichess file when present, else of the embedded self-play file,
    read with the project's PGN reader."""
    import os

    from maia_adapt.data.pgn import iter_moves, open_text, resolve_san, split_games

    shared = Path(os.environ.get("MAIA_ADAPT_DATA", ROOT.parent / "shared" / "data"))
    lichess = shared / "lichess/lichess_rated_rapid_58k.pgn.zst"
    path = lichess if lichess.is_file() else SELFPLAY
    out = []
    for game in split_games(open_text(path), str(path)):
        board, sans = iter_moves(game)
        moves = []
        for san, _ in sans:
            moves.append(resolve_san(board, san, list(board.legal_moves)))
            board.push(moves[-1])
        out.append(moves)
        if len(out) == n_games:
            break
    return out


@pytest.fixture(scope="module")
def boards() -> list[chess.Board]:
    """Positions with their game history as the move stack: early plies (history shorter than 8),
    middlegames, both sides to move, and a promotion when the games have one."""
    out = []
    for moves in _games(6):
        b = chess.Board()
        for ply, m in enumerate(moves):
            if ply in (0, 3, 8, 17, 30, 41, 60) or m.promotion:
                out.append(b.copy())
            b.push(m)
    return out


def _reference():
    return pytest.importorskip("maia3.models", reason="maia3-runtime (pip install --no-deps maia3-runtime) is the reference")


def _reference_tokens(board: chess.Board, cfg) -> torch.Tensor:
    """The reference's tokens of a board with history: its UCI engine's replay of the move stack."""
    from maia3.dataset import get_historical_tokens, tokenize_board

    replay = board.root()
    hist = deque([tokenize_board(replay)], maxlen=cfg.history)
    for m in board.move_stack:
        replay.push(m)
        hist.append(tokenize_board(replay))
    return get_historical_tokens(hist, cfg, base=0.0, inc=0.0, clk_left_before=0.0, clk_ponder=0.0)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter moved off its initial value (norm gains off 1, biases off 0), so a swapped or
    misread tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.reference
@pytest.mark.parametrize("size", list(SIZES))
def test_same_outputs_as_reference(size, boards, tmp_path):
    M = _reference()
    from maia3.model_registry import MODEL_SPECS

    spec = next(s for s in MODEL_SPECS if size in (s.name, *s.aliases))
    cfg = argparse.Namespace(**spec.config)
    torch.manual_seed(0)
    ref = M.MAIA3Model(cfg).eval()
    _randomise(ref, 1)
    path = tmp_path / f"{spec.name}.pt"
    torch.save({"model_state_dict": ref.state_dict(), "epoch": 3}, path)  # as the package's loader reads it
    ours = load_maia3(path, size=size)
    rows = boards if size in ("3m", "5m") else boards[:6]  # the big ones on a few positions
    theirs = torch.stack([_reference_tokens(b, cfg) for b in rows])
    tokens = torch.from_numpy(np.stack([maia3_tokens(b) for b in rows]))
    assert torch.equal(tokens, theirs[:, :, :96]) and not theirs[:, :, 96:].any()  # the rest: a zero clock
    g = torch.Generator().manual_seed(2)
    pick = torch.randint(0, len(RATINGS), (2, len(rows)), generator=g)
    elo_self, elo_oppo = (torch.tensor(RATINGS, dtype=torch.float32)[p] for p in pick)
    with torch.no_grad():
        want = ref(theirs, elo_self, elo_oppo)
        got = ours(tokens, elo_self, elo_oppo)
        # the reference's engine passes integer ratings (a LongTensor): the same numbers
        want_int = ref(theirs, elo_self.round().long(), elo_oppo.round().long())
        got_int = ours(tokens, elo_self.round(), elo_oppo.round())
    for w, o in [*zip(want, got), *zip(want_int, got_int)]:
        assert w.shape == o.shape
        scale = w.abs().max().item()
        assert (w - o).abs().max().item() <= 1e-6 * max(scale, 1.0) * (1 + ours.cfg.num_blocks), (size, w.shape)
    # the rating matters, between the anchors too: 1234.5 is neither 0 nor 5000, and is their mix
    with torch.no_grad():
        at = {r: ours(tokens[:1], torch.tensor([r]), torch.tensor([1500.0]))[0] for r in (0.0, 1234.5, 5000.0)}
        w = 1234.5 / 5000
        mixed = w * ours.elo_embedding_low.weight[0] + (1 - w) * ours.elo_embedding_high.weight[0]
        assert torch.allclose(ours.elo_embedding(torch.tensor([1234.5]))[0], mixed)
    assert not torch.allclose(at[1234.5], at[0.0], atol=1e-3) and not torch.allclose(at[1234.5], at[5000.0], atol=1e-3)


def test_tokens_of_a_game_replay_match_board_tokens(boards):
    game = _games(1)[0][:40]
    b = chess.Board()
    per_board = []
    for m in game:
        per_board.append(maia3_tokens(b))
        b.push(m)
    plies = [0, 1, 7, 8, 9, 25, 39]
    replay = maia3_tokens_game(None, [m.uci() for m in game], plies)
    assert np.array_equal(replay, np.stack([per_board[k] for k in plies]))
    # a board from a FEN has no history: its position fills all 8 slots
    fen = chess.Board(boards[-1].fen())
    t = maia3_tokens(fen)
    assert all(np.array_equal(t[:, :12], t[:, 12 * j:12 * j + 12]) for j in range(8))


def test_black_to_move_is_mirrored():
    b = chess.Board()
    b.push_uci("e2e4")  # Black to move: its own pawns are written as the side to move's, on rank 2
    t = maia3_tokens(b)[:, -12:]
    assert t[chess.E5, 6] == 1 and t[chess.E7, 6] == 0  # White's pawn e2 -> e4 is an opponent pawn on e5
    assert t[chess.E8, 11] == 1 and t[chess.E1, 5] == 1  # the kings: the opponent's on e8, its own on e1
    assert all(t[sq, 0] == 1 for sq in chess.SquareSet(chess.BB_RANK_2))  # Black's pawns, mirrored


@pytest.mark.reference
def test_vocabulary_is_the_reference_one():
    M = pytest.importorskip("maia3.utils", reason="maia3-runtime (pip install --no-deps maia3-runtime) is the reference")
    assert list(maia3_moves()) == M.get_all_possible_moves()


def test_vocabulary_round_trip():
    assert len(maia3_moves()) == MAIA3_MOVES == 4352
    to3, to2 = maia2_to_maia3(), maia3_to_maia2()
    assert len(set(to3.tolist())) == len(all_moves())  # one-to-one into Maia-3's vocabulary
    assert np.array_equal(to2[to3], np.arange(len(all_moves())))
    inside = to2 >= 0
    assert np.array_equal(to3[to2[inside]], np.flatnonzero(inside))
    assert [maia3_moves()[i] for i in to3] == list(all_moves())
    assert maia3_moves()[0] == "a1a1" and to2[0] == -1 and to2[chess.A1 * 64 + chess.H2] == -1


def test_every_legal_move_maps_both_ways(boards):
    for b in boards:
        mask = legal_mask([b])[0]
        idx2 = [encode_move(m, b.turn == chess.WHITE) for m in b.legal_moves]
        assert sorted(idx2) == np.flatnonzero(mask).tolist()
        assert (maia3_to_maia2()[maia2_to_maia3()[idx2]] == idx2).all()


def test_checkpoint_errors_name_the_key(tmp_path):
    torch.manual_seed(0)
    model = Maia3(size_config("3m"))
    state = maia3_state_dict(model)
    path = tmp_path / "m.pt"
    torch.save({"model_state_dict": state}, path)
    assert torch.equal(load_maia3(path, size="3m").fc_value.weight, model.fc_value.weight)
    with pytest.raises(CheckpointError, match=r"does not record its Maia-3 size: give model.size"):
        load_maia3(path)
    with pytest.raises(CheckpointError, match=r"m.pt: key 'token_projection.weight' has shape .*model.size=3m"):
        load_maia3(path, size="5m")
    missing = dict(state)
    missing.pop("fc_ponder.bias")
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing.pt: key 'fc_ponder.bias' is missing"):
        load_maia3(tmp_path / "missing.pt", size="3m")
    odd = {**state, "transformer.layers.2.self_attn.gab_weight": torch.zeros_like(state["gab_shared_weight"])}
    torch.save(odd, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"'transformer.layers.2.self_attn.gab_weight' differs"):
        load_maia3(tmp_path / "odd.pt", size="3m")
    old = {k.replace("gab", "smolgen"): v for k, v in state.items()}  # the older key names
    torch.save(old, tmp_path / "old.pt")
    assert torch.equal(load_maia3(tmp_path / "old.pt", size="3m").gab_shared_weight, model.gab_shared_weight)
    with pytest.raises(CheckpointError, match="not found"):
        load_maia3(tmp_path / "none.pt", size="3m")


def test_hooks_cache_and_splice(boards):
    torch.manual_seed(0)
    model = Maia3(size_config("3m")).eval()
    tokens = torch.from_numpy(np.stack([maia3_tokens(b) for b in boards[:4]]))
    elo = torch.tensor([1000.0, 1500.0, 2000.0, 2500.0])
    with torch.no_grad():
        out, cache = model.run_with_cache(tokens, elo, elo)
        assert set(cache) == set(model.hook_names)
        h, d = model.cfg.num_heads, model.cfg.dim_vit
        assert cache["blocks.0.hook_pattern"].shape == (4, 64, h, 64)
        assert torch.allclose(cache["blocks.0.hook_pattern"].sum(-1), torch.ones(4, 64, h), atol=1e-5)
        assert cache["hook_elo"].shape == (4, 2, 128) and cache["hook_elo_in"].shape == (4, d)
        assert cache["blocks.3.hook_mlp_act"].shape == (4, 64, 2 * d)
        assert torch.equal(cache["blocks.1.hook_mlp_in"], cache["blocks.1.hook_resid_mid"])
        assert torch.equal(cache["blocks.0.hook_resid_post"], cache["blocks.1.hook_resid_pre"])
        # the Elo enters only at hook_elo_in: two ratings with the same projection give the same outputs
        other = torch.tensor([3000.0] * 4)
        same = model.run_with_hooks(tokens, other, other, [("hook_elo_in", lambda x, n: cache["hook_elo_in"])])
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out, same))
        assert not torch.allclose(model(tokens, other, other)[0], out[0], atol=1e-3)
        # a block's residual write spliced back in changes nothing; zeroed, it changes the moves
        keep = model.run_with_hooks(tokens, elo, elo, [("blocks.2.hook_mlp_out", lambda x, n: x.clone())])
        zero = model.run_with_hooks(tokens, elo, elo, [("blocks.2.hook_mlp_out", lambda x, n: torch.zeros_like(x))])
    assert torch.equal(keep[0], out[0]) and not torch.allclose(zero[0], out[0], atol=1e-3)
