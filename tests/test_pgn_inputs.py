"""Real-world PGN that the shared file does not contain but lichess downloads and other sources do:
damaged Elo headers, games set up from a position, variants, padded titles, cut-short downloads."""
from __future__ import annotations

import chess
import numpy as np
import pytest
import zstandard

from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter, build_store

# a keep-everything filter, so that only the rule under test decides
ALL = dict(rated_only=False, speeds=[], skip_bots=False, require_elos=False, require_result=False, first_n_plies=0)


def _game(white="1500", black="1600", extra="", moves="1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 1-0", site="x"):
    return (f'[Event "Rated Rapid game"]\n[Site "https://lichess.org/{site}"]\n[WhiteElo "{white}"]\n'
            f'[BlackElo "{black}"]\n[Result "1-0"]\n{extra}\n{moves}\n\n')


def _build(tmp_path, text, name="s", **kw):
    p = tmp_path / f"{name}.pgn"
    p.write_text(text, encoding="utf-8")
    return build_store([p], tmp_path / name, GameFilter(first_n_plies=0, **kw), workers=1)


@pytest.mark.parametrize("cap", [None, 5])
def test_out_of_range_and_non_ascii_elos_are_skipped_and_counted(tmp_path, cap):
    text = (_game(site="ok") + _game(white="40000", site="a") + _game(black="1" * 20, site="b")
            + _game(white="1²00", site="c") + _game(black="0", site="d") + _game(white="١٢٠٠", site="e")
            + _game(white="?", site="f") + _game(white="4000", black=" 1234 ", site="g"))
    store = _build(tmp_path, text, max_games_per_elo_pair=cap)
    s = store.manifest["summary"]
    assert s["skipped"] == {"invalid Elo (not a number in 1..4000)": 5, "missing Elo": 1}
    assert [g["site"].rsplit("/", 1)[1] for g in store.games] == ["ok", "g"]
    assert sorted(set(store.column("rating_self").tolist())) == [1234, 1500, 1600, 4000]
    # without require_elos a missing Elo is kept (as 0) but a damaged one is still skipped
    loose = _build(tmp_path, text, name="loose", require_elos=False, max_games_per_elo_pair=cap)
    assert loose.manifest["summary"]["skipped"] == {"invalid Elo (not a number in 1..4000)": 5}
    assert loose.manifest["summary"]["games_kept"] == 3


SETUP_FEN = "r1bqkbnr/1ppp1ppp/p1n5/4p3/B3P3/5N2/PPPP1PPP/RNBQK2R b KQkq - 3 30"
SETUP_MOVES = "30... Nf6 31. O-O Be7 32. Re1 b5 33. Bb3 d6 34. c3 O-O 35. h3 Na5 36. Bc2 c5 37. d4 Qc7 1-0"


def _replay(fen, movetext):
    board = chess.Board(fen)
    fens = []
    for tok in movetext.split()[:-1]:
        if tok[0].isdigit():
            continue
        fens.append(board.fen())
        board.push_san(tok)
    return fens


def test_game_set_up_with_black_to_move_is_stored_from_its_real_position(tmp_path):
    from maia_adapt.model.checkpoint import load_model
    from maia_adapt.analysis.transitional import predictions_by_bucket

    extra = f'[SetUp "1"]\n[FEN "{SETUP_FEN}"]'
    store = _build(tmp_path, _game(extra=extra, moves=SETUP_MOVES))
    want = _replay(SETUP_FEN, SETUP_MOVES)
    assert store.manifest["summary"]["games_kept"] == 1
    assert store.fens(np.arange(len(store))) == want
    assert want[0].endswith(" b KQkq - 3 30") and want[-1].endswith(" b - - 0 37")
    model = load_model(ASSETS / "maia2_small.safetensors")
    moves, _ = predictions_by_bucket(model, store, np.arange(len(store)))
    for fen, row in zip(want, moves):
        legal = {m.uci() for m in chess.Board(fen).legal_moves}
        assert set(row) <= legal, (fen, row)
    # the mover's rating follows the real side to move: Black (1600) moves first
    assert store.column("rating_self")[:2].tolist() == [1600, 1500]


def test_move_numbers_beyond_the_store_are_clear(tmp_path):
    from maia_adapt.data import store_from_fens
    from maia_adapt.errors import DataError

    huge = SETUP_FEN.replace(" 30", " 20000")
    store = _build(tmp_path, _game(extra=f'[SetUp "1"]\n[FEN "{huge}"]', moves=SETUP_MOVES) + _game(site="ok"))
    assert store.manifest["summary"]["skipped"] == {"corrupt game: bad FEN header": 1}
    assert store.manifest["summary"]["games_kept"] == 1
    with pytest.raises(DataError, match=r"position 1\): move number 20000 too large: expected at most 16383"):
        store_from_fens([SETUP_FEN, huge], tmp_path / "fens", 5, 5)
    assert store_from_fens([SETUP_FEN], tmp_path / "one", 5, 5).fens([0]) == [SETUP_FEN]


def test_variants_are_dropped_and_counted(tmp_path):
    fp = f'[Variant "From Position"]\n[SetUp "1"]\n[FEN "{SETUP_FEN}"]'
    text = (_game(site="absent") + _game(extra='[Variant "Standard"]', site="standard")
            + _game(extra='[Variant "Chess960"]', site="960") + _game(extra='[Variant "Crazyhouse"]', site="zh")
            + _game(extra='[Variant "King of the Hill"]', site="koth") + _game(extra=fp, moves=SETUP_MOVES, site="fp"))
    store = _build(tmp_path, text)
    s = store.manifest["summary"]
    assert s["skipped"] == {"non-standard variant": 4}
    assert [g["site"].rsplit("/", 1)[1] for g in store.games] == ["absent", "standard"]
    # lichess's "From Position" is standard chess from a set-up board: kept on request, from its real start
    fp_store = _build(tmp_path, text, name="fp", keep_from_position=True)
    assert fp_store.manifest["summary"]["skipped"] == {"non-standard variant": 3}
    rows = np.nonzero(fp_store.column("game_id") == 2)[0]
    assert fp_store.fens(rows) == _replay(SETUP_FEN, SETUP_MOVES)


def test_padded_and_lowercase_bot_titles_are_bots(tmp_path):
    text = (_game(extra='[WhiteTitle " BOT "]', site="a") + _game(extra='[BlackTitle "bot"]', site="b")
            + _game(extra='[WhiteTitle "GM"]', site="c"))
    store = _build(tmp_path, text)
    assert store.manifest["summary"]["skipped"] == {"bot": 2}
    assert [g["site"].rsplit("/", 1)[1] for g in store.games] == ["c"]


def _selfplay_games(n):
    text = zstandard.ZstdDecompressor().stream_reader(open(ASSETS / "selfplay.pgn.zst", "rb")).read().decode()
    games = ["[Event" + g for g in text.split("[Event")[1 : n + 1]]
    assert len(games) == n
    return [g.rstrip("\n") + "\n\n" for g in games]


def test_cut_short_zst_is_reported_and_its_partial_game_dropped_at_every_cut(tmp_path, capfd):
    games = _selfplay_games(40)
    text = "".join(games).encode()
    # a block boundary every 1,500 bytes of text (lichess files: every 128 KiB), so that cuts fall inside
    # games, between games, inside headers and inside result markers
    cobj = zstandard.ZstdCompressor(level=3, write_checksum=True).compressobj()
    data = b"".join(cobj.compress(text[i : i + 1500]) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                    for i in range(0, len(text), 1500)) + cobj.flush()
    ends = np.cumsum([len(g.encode()) for g in games]) - 1  # offset just past each game's movetext line
    filt = GameFilter(**ALL, max_ply=8)
    full = build_store([_write(tmp_path / "full.pgn.zst", data)], tmp_path / "full", filt, workers=1)
    assert full.manifest["summary"]["games_kept"] == 40 and not full.manifest["summary"]["stream_errors"]
    full_pos = [g["positions"] for g in full.games]
    cuts = sorted(set(np.linspace(0, len(data) - 1, 45).astype(int).tolist() + [len(data) - 1, len(data) - 4]))
    seen = set()
    for cut in cuts:
        prefix = zstandard.ZstdDecompressor().decompressobj().decompress(data[:cut])
        complete = int((ends <= len(prefix)).sum())
        seen.add(complete)
        p = _write(tmp_path / f"cut{cut}.pgn.zst", data[:cut])
        capfd.readouterr()
        store = build_store([p], tmp_path / f"s{cut}", filt, workers=1)
        s = store.manifest["summary"]
        assert s["games_kept"] == complete, cut
        assert [g["index"] for g in store.games] == list(range(complete)), cut
        assert [g["positions"] for g in store.games] == full_pos[:complete], cut
        assert len(s["stream_errors"]) == 1 and f"cut{cut}.pgn.zst" in s["stream_errors"][0]
        assert f"at byte {cut:,}" in s["stream_errors"][0] and "cut short" in s["stream_errors"][0]
        assert s["stream_errors"][0] in capfd.readouterr().err
    assert len(seen) > 20  # the cuts really fell all through the file


def _write(path, data):
    path.write_bytes(data)
    return path
