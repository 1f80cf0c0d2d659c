"""Our encoders against the official maia2 ones, on thousands of real positions."""
import chess
import numpy as np
import pytest

from maia_adapt.encoding import (
    NUM_MOVES,
    all_moves,
    board_planes,
    decode_move,
    elo_to_bucket,
    encode_move,
    legal_mask,
    move_facts,
    pack_boards,
    pack_mask,
    side_info_targets,
    unpack_mask,
    unpack_planes,
    as_bucket,
)

U = pytest.importorskip("maia2.utils", reason="the official maia2 package is the reference for these tests")
pytestmark = pytest.mark.reference  # the whole module needs maia2

PGN = "lichess/lichess_rated_rapid_58k.pgn.zst"


@pytest.fixture(scope="module")
def positions(shared_data):
    from _games import real_positions

    return real_positions(shared_data / PGN, 60)


def test_vocabulary_is_official():
    assert list(all_moves()) == U.get_all_possible_moves()
    assert len(all_moves()) == NUM_MOVES


def test_elo_buckets_match_official():
    d = U.create_elo_dict()
    elos = np.arange(0, 3200)
    ours = elo_to_bucket(elos)
    assert [U.map_to_category(int(e), d) for e in elos] == ours.tolist()
    assert as_bucket(1500) == 5 and as_bucket(5) == 5
    with pytest.raises(ValueError):
        as_bucket(11, is_bucket=True)


def _official(board, move):
    """Official encoding: mirror Black-to-move positions via a FEN round trip, as the maia2 pipeline does."""
    if board.turn:
        b, uci = chess.Board(board.fen()), move.uci()
    else:
        b, uci = chess.Board(board.mirror().fen()), U.mirror_move(move.uci())
    planes = U.board_to_tensor(b).numpy()
    legal, side = U.get_side_info(b, uci, {m: i for i, m in enumerate(all_moves())})
    return planes, legal.numpy().astype(bool), side.numpy(), uci


def test_planes_legal_and_side_info_match_official(positions):
    assert len(positions) > 3000
    boards = [b for b, _ in positions]
    packed = pack_boards(boards, legal_ep_only=True)
    planes = unpack_planes(packed.bitboards, packed.flags, packed.ep)
    legal = legal_mask(boards)
    idx, moving, captured, check = [], [], [], []
    for b, m in positions:
        idx.append(encode_move(m, b.turn))
        mp, cp = move_facts(b, m)
        moving.append(mp)
        captured.append(cp)
        after = b.copy(stack=False)
        after.push(m)
        check.append(after.is_check())
    side = side_info_targets(np.array(idx), np.array(moving), np.array(captured), np.array(check), legal)
    for i, (b, m) in enumerate(positions):
        ref_planes, ref_legal, ref_side, uci = _official(b, m)
        assert np.array_equal(planes[i], ref_planes), b.fen()
        assert np.array_equal(legal[i], ref_legal), b.fen()
        assert np.array_equal(side[i], ref_side), (b.fen(), m.uci())
        assert all_moves()[idx[i]] == uci
        assert decode_move(idx[i], b.turn) == m.uci()


def test_board_planes_of_raw_fen_match_official_inference(positions):
    # inference path: the official package encodes chess.Board(fen) (mirrored), ep square as given
    boards = [chess.Board(b.fen()) for b, _ in positions[:500]]
    ours = board_planes(boards)
    for i, b in enumerate(boards):
        ref = U.board_to_tensor(b if b.turn else b.mirror()).numpy()
        assert np.array_equal(ours[i], ref)


def test_legal_mask_pack_round_trip(positions):
    legal = legal_mask([b for b, _ in positions[:300]])
    assert np.array_equal(unpack_mask(pack_mask(legal)), legal)


def test_mirroring_black_to_move_equals_white_twin():
    b = chess.Board("r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3")
    twin = b.mirror()  # Black to move, colours swapped
    assert np.array_equal(board_planes([b]), board_planes([twin]))
    m = chess.Move.from_uci("f1b5")
    assert encode_move(m, True) == encode_move(chess.Move.from_uci("f8b4"), False)


def test_unknown_move_raises():
    with pytest.raises(ValueError):
        encode_move(chess.Move.from_uci("a1c4"), True)  # neither a queen nor a knight move
