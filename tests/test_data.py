"""PGN reader, filters, corrupt input and the position store, on real and hand-made games."""
import io

import chess
import chess.pgn
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maia_adapt.data import GameFilter, PositionStore, build_store, store_from_fens
from maia_adapt.data.pgn import EVAL_MISSING, MATE_SCORE, parse_eval
from maia_adapt.encoding import all_moves, decode_move
from maia_adapt.errors import DataError

PGN = "lichess/lichess_rated_rapid_58k.pgn.zst"


def _game(event="Rated Rapid game", white=1500, black=1600, result="1-0", moves="1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 1-0", extra=""):
    return (f'[Event "{event}"]\n[Site "https://lichess.org/{abs(hash((event, white, black, moves, extra))) % 10**8}"]\n'
            f'[WhiteElo "{white}"]\n[BlackElo "{black}"]\n[Result "{result}"]\n{extra}\n{moves}\n\n')


def _build(tmp_path, text, **kw):
    p = tmp_path / "g.pgn"
    p.write_text(text)
    filt = GameFilter(first_n_plies=0, **kw)
    return build_store([p], tmp_path / "store", filt, workers=1)


def _real_text(shared_data, n_games):
    """The first n_games games of the real file as PGN text."""
    out = []
    with open(shared_data / PGN, "rb") as fh:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
        for _ in range(n_games):
            out.append(str(chess.pgn.read_game(text)))
    return "\n\n".join(out) + "\n\n"


@pytest.fixture(scope="module")
def real_store(shared_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    return build_store([shared_data / PGN], d / "store", GameFilter(first_n_plies=0, max_games=120), workers=2)


def test_reader_matches_python_chess_on_real_games(shared_data, real_store):
    from _games import real_positions

    ref = real_positions(shared_data / PGN, 120)
    assert len(real_store) == len(ref) > 5000
    idx = np.arange(len(real_store))
    moves = real_store.column("move")
    fens = real_store.fens(idx)
    for i, (board, move) in enumerate(ref):
        assert fens[i] == board.fen(), i
        assert decode_move(int(moves[i]), board.turn) == move.uci()
    # evals are kept per position (White's view, after the move)
    assert (real_store.column("eval_cp") != EVAL_MISSING).mean() > 0.9


@pytest.mark.reference
def test_store_batches_equal_official_encoding(shared_data, real_store):
    U = pytest.importorskip("maia2.utils")
    md = {m: i for i, m in enumerate(all_moves())}
    idx = np.arange(0, len(real_store), 7)[:800]
    b = real_store.batch(idx)
    fens = real_store.fens(idx)
    for j, fen in enumerate(fens):
        board = chess.Board(fen)
        uci = decode_move(int(b["move"][j]), board.turn)
        if not board.turn:
            board, uci = board.mirror(), U.mirror_move(uci)
        board = chess.Board(board.fen())
        assert np.array_equal(b["boards"][j].numpy(), U.board_to_tensor(board).numpy())
        legal, side = U.get_side_info(board, uci, md)
        assert np.array_equal(b["side_info"][j].numpy(), side.numpy())
        assert np.array_equal(b["legal"][j].numpy(), legal.numpy().astype(bool))


def test_splits_are_by_game(real_store):
    gid = real_store.column("game_id")
    seen = [set(gid[real_store.split_indices(s)].tolist()) for s in ("train", "val", "test")]
    assert seen[0] and seen[1] | seen[2]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(real_store.split_indices(s)) for s in ("train", "val", "test")) == len(real_store)


def test_header_filters(tmp_path):
    text = (_game() + _game(event="Casual Rapid game") + _game(event="Rated Blitz game")
            + _game(extra='[WhiteTitle "BOT"]') + _game(white="?") + _game(result="*", moves="1. e4 e5 *"))
    store = _build(tmp_path, text)
    s = store.manifest["summary"]
    assert s["games_kept"] == 1 and len(store) == 6
    assert s["skipped"] == {"not rated": 1, "other speed": 1, "bot": 1, "missing Elo": 1, "unknown result": 1}
    both = _build(tmp_path, text, speeds=["Rapid", "Blitz"], rated_only=False, skip_bots=False)
    assert both.manifest["summary"]["games_kept"] == 4


def test_first_plies_max_ply_and_clock_threshold(tmp_path):
    moves = ("1. e4 { [%clk 0:10:00] } 1... e5 { [%clk 0:00:20] } 2. Nf3 { [%clk 0:09:00] } "
             "2... Nc6 { [%clk 0:00:10] } 3. Bb5 { [%clk 0:08:00] } 1-0")
    p = tmp_path / "c.pgn"
    p.write_text(_game(moves=moves))
    clocked = build_store([p], tmp_path / "s1", GameFilter(first_n_plies=1, clock_threshold=30), workers=1)
    assert clocked.column("ply").tolist() == [2, 4]  # ply 0 skipped, plies 1 and 3 under 30 s
    capped = build_store([p], tmp_path / "s2", GameFilter(first_n_plies=0, max_ply=2), workers=1)
    assert capped.column("ply").tolist() == [0, 1, 2]
    assert capped.column("value").tolist() == [1, -1, 1]  # result from the mover's point of view


def test_corrupt_games_are_skipped_and_counted_without_losing_the_next(tmp_path):
    text = (_game() + _game(moves="1. e4 e5 2. Ke3 Nc6 1-0") + _game(moves="1. e4 e5 2. Nf3 Nf6 1-0")
            + '[Event "Rated Rapid game"\n1. e4 *\n\n' + _game(moves="1. d4 Qxh7 1-0") + _game(moves="1. d4 d5 2. c4 0-1", result="0-1"))
    store = _build(tmp_path, text)
    s = store.manifest["summary"]
    assert s["games_kept"] == 3
    assert s["skipped"]["corrupt game: illegal move"] == 2
    assert s["skipped"]["broken header"] == 1
    assert store.column("ply").tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1, 2]


def test_corrupt_zstd_stream_keeps_the_games_before_it(tmp_path):
    rng = np.random.default_rng(0)
    # random comments keep the text incompressible, so the damage lies far into the stream
    games = "".join(_game(white=1000 + i % 1000, moves=f"1. e4 {{ {rng.bytes(60).hex()} }} e5 1-0") for i in range(4000))
    data = bytearray(zstandard.ZstdCompressor(level=1, write_checksum=True).compress(games.encode()))
    data[3 * len(data) // 4 : 3 * len(data) // 4 + 64] = b"\xff" * 64
    p = tmp_path / "broken.pgn.zst"
    p.write_bytes(bytes(data))
    store = build_store([p], tmp_path / "s", GameFilter(first_n_plies=0), workers=2)
    s = store.manifest["summary"]
    assert 1000 < s["games_kept"] <= 4000 and len(s["stream_errors"]) == 1
    assert "broken.pgn.zst" in s["stream_errors"][0] and "corrupt" in s["stream_errors"][0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.lists(st.text(alphabet=st.characters(codec="utf-8"), max_size=80), min_size=1, max_size=5),
       cut=st.integers(0, 200))
def test_fuzz_damaged_pgn_never_crashes_nor_loses_valid_games(tmp_path_factory, junk, cut):
    valid = [_game(white=1100 + i, moves="1. e4 e5 2. Nf3 Nc6 1-0") for i in range(4)]
    damaged = _game(moves="1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. Ba4 Nf6 1-0")[:cut]
    parts = [valid[0], "\n".join(junk) + "\n\n", damaged + "\n\n", valid[1], "[" + junk[0] + "\n\n", valid[2], valid[3]]
    d = tmp_path_factory.mktemp("fuzz")
    store = _build(d, "".join(parts))
    ratings = set(store.column("rating_self")[store.column("ply") % 2 == 0].tolist())
    assert {1100, 1101, 1102, 1103} <= ratings


def test_missing_manifest_and_empty_input_are_clear_errors(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="not a finished position store"):
        PositionStore(tmp_path / "half")
    with pytest.raises(DataError, match="not found"):
        build_store([tmp_path / "nope.pgn"], tmp_path / "s")
    with pytest.raises(DataError, match="empty position set"):
        store_from_fens([], tmp_path / "f", 5, 5)


def test_store_from_fens_round_trip(tmp_path):
    fens = ["r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
            "rnbqkbnr/ppp1pppp/8/3pP3/8/8/PPPP1PPP/RNBQKBNR b KQkq - 0 2"]
    store = store_from_fens(fens, tmp_path / "s", [1500, 3], 1200, moves=["f1b5", "g8f6"])
    assert store.fens([0, 1]) == fens
    b = store.batch([0, 1])
    assert b["elo_self"].tolist() == [5, 3] and b["elo_oppo"].tolist() == [2, 2]
    assert [decode_move(int(m), t) for m, t in zip(b["move"], (True, False))] == ["f1b5", "g8f6"]
    with pytest.raises(DataError, match="illegal"):
        store_from_fens(fens[:1], tmp_path / "t", 5, 5, moves=["e1e5"])


def test_eval_parsing():
    assert parse_eval("[%eval 0.24]") == 24 and parse_eval("[%eval -1.5]") == -150
    assert parse_eval("[%eval #3]") == MATE_SCORE - 3 and parse_eval("[%eval #-2]") == -(MATE_SCORE - 2)
    assert parse_eval("no eval") == EVAL_MISSING
