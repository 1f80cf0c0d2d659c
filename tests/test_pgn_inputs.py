"""Real-world PGN that the shared file does not contain but lichess downloads and other sources do:
damaged Elo headers, games set up from a position, variants, padded titles, cut-short and damaged
downloads, and the PGN standard's import format as other tools write it (comments of both kinds,
escape lines, NAGs, variations, byte-order marks, CRLF)."""
from __future__ import annotations

import re

import chess
import chess.pgn
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maia_adapt.config import ASSETS
from maia_adapt.data import GameFilter, build_store
from maia_adapt.data.pgn import iter_moves, open_text, resolve_san, split_games

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


def _blocks(text: bytes, size: int = 1500) -> tuple[bytes, list[int]]:
    """text as one zstd frame with a block every `size` bytes of text, and the compressed offset of
    each block's header (the first one follows the frame header)."""
    cobj = zstandard.ZstdCompressor(level=3, write_checksum=True).compressobj()
    parts = [cobj.compress(text[i : i + size]) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
             for i in range(0, len(text), size)]
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]]).tolist()
    return b"".join(parts) + cobj.flush(), starts


def test_a_damaged_zstd_block_keeps_every_game_before_it(tmp_path, capfd):
    games = _selfplay_games(40)
    text = "".join(games).encode()
    data, starts = _blocks(text)
    ends = np.cumsum([len(g.encode()) for g in games]) - 1  # just past each game's movetext line
    filt = GameFilter(**ALL, max_ply=8)
    full_pos = [g["positions"] for g in build_store([_write(tmp_path / "full.pgn.zst", data)], tmp_path / "full",
                                                     filt, workers=1).games]
    for k in sorted(set(np.linspace(1, len(starts) - 1, 12).astype(int).tolist())):
        damaged = bytearray(data)
        damaged[starts[k]] |= 0b110  # block type 3: reserved, so the decoder must reject this very block
        p = _write(tmp_path / f"d{k}.pgn.zst", bytes(damaged))
        store = build_store([p], tmp_path / f"s{k}", filt, workers=1)
        s = store.manifest["summary"]
        complete = int((ends <= k * 1500).sum())  # the games whose text lies in the blocks before block k
        assert s["games_kept"] == complete > 0, k
        assert [g["positions"] for g in store.games] == full_pos[:complete], k
        assert len(s["stream_errors"]) == 1 and f"corrupt at byte {starts[k]:,}" in s["stream_errors"][0]
        capfd.readouterr()


def test_a_valid_frame_followed_by_garbage_keeps_the_frame_and_skippable_frames_are_skipped(tmp_path):
    text = "".join(_game(site=f"g{i}") for i in range(50)).encode()
    frame = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(text)
    # a skippable frame (a seek table, a tool's note) before and after the games is no damage
    skippable = (0x184D2A5E).to_bytes(4, "little") + (6).to_bytes(4, "little") + b"seek:1"
    ok = build_store([_write(tmp_path / "ok.pgn.zst", skippable + frame + skippable)], tmp_path / "ok",
                     GameFilter(first_n_plies=0), workers=1)
    assert ok.manifest["summary"]["games_kept"] == 50 and not ok.manifest["summary"]["stream_errors"]
    rng = np.random.default_rng(0)
    bad = build_store([_write(tmp_path / "bad.pgn.zst", frame + rng.bytes(3000))], tmp_path / "bad",
                      GameFilter(first_n_plies=0), workers=1)
    s = bad.manifest["summary"]
    assert s["games_kept"] == 50 and f"corrupt at byte {len(frame):,}" in s["stream_errors"][0]


# ---- the PGN standard's import format ------------------------------------------------------------

HEADERS = '[Event "Rated Rapid game"]\n[Site "https://lichess.org/{site}"]\n[WhiteElo "1500"]\n[BlackElo "1600"]\n[Result "1-0"]\n'
PLAIN = "1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. Bxc6 dxc6 1-0"
WANT = ["e2e4", "e7e5", "g1f3", "b8c6", "f1b5", "a7a6", "b5c6", "d7c6"]
# the same game as other tools write it; each must give the plain game's positions
SYNTAX = {
    "; comment": "1. e4 e5 ; to the end of the line { ( [x]\n2. Nf3 Nc6 3. Bb5 a6 4. Bxc6 dxc6 1-0",
    "; comment line": "; a whole line\n1. e4 e5 2. Nf3 Nc6 3. Bb5 a6 4. Bxc6 dxc6 1-0",
    "multi-line comment": "1. e4 { the\n[classic] reply ; is\n[%eval 0.3] } e5 2. Nf3 Nc6 3. Bb5 a6 4. Bxc6 dxc6 1-0",
    "comment holding ( and ;": "1. e4 {(1. d4) ; x} e5 2. Nf3 Nc6 3. Bb5 a6 4. Bxc6 dxc6 1-0",
    "NAGs apart": "1. e4 ! e5 ?! 2. Nf3 !! Nc6 ?? 3. Bb5 !? a6 ? 4. Bxc6 $1 dxc6 $146 1-0",
    "NAGs attached": "1. e4! e5?! 2. Nf3!! Nc6?? 3. Bb5!? a6? 4. Bxc6$1 dxc6 1-0",
    "nested variations": ("1. e4 (1. d4 {queen's} d5 (1... Nf6 2. c4 (2. Nf3)) 2. c4) 1... e5 "
                          "2. Nf3 (2. Bc4 {x} Nf6 (2... Bc5)) 2... Nc6 3. Bb5 a6 4. Bxc6 ( 4. Ba4 ) dxc6 1-0"),
    "variation ending in a result": "1. e4 e5 (1... c5 2. Nf3 0-1) 2. Nf3 Nc6 3. Bb5 a6 4. Bxc6 dxc6 1-0",
    "% escape line": "1. e4 e5\n% a tool's private data { ;\n2. Nf3 Nc6 3. Bb5 a6 4. Bxc6 dxc6 1-0",
    "move numbers without periods": "1 e4 e5 2 Nf3 Nc6 3 Bb5 a6 4 Bxc6 dxc6 1-0",
    "no move numbers, one move a line": "e4\ne5\nNf3\nNc6\nBb5\na6\nBxc6\ndxc6\n1-0",
    "long algebraic": "1. e2-e4 e7-e5 2. Ng1-f3 Nb8-c6 3. Bf1-b5 a7a6 4. Bb5xc6 d7xc6 1-0",
    "null move in a variation": "1. e4 e5 (1... -- 2. d4) 2. Nf3 Nc6 3. Bb5 a6 4. Bxc6 dxc6 1-0",
}


def _read_games(path) -> list[list[str]]:
    """The mainline of every game our reader takes from `path`, in UCI (a game it cannot read: None)."""
    out = []
    for game in split_games(open_text(path), str(path)):
        board, sans = iter_moves(game)
        moves = []
        for san, _ in sans:
            move = resolve_san(board, san, list(board.generate_legal_moves()))
            moves.append(move.uci())
            board.push(move)
        out.append(moves)
    return out


@pytest.mark.parametrize("case", list(SYNTAX))
def test_pgn_standard_syntax_keeps_the_game_and_its_positions(tmp_path, case):
    store = _build(tmp_path, _game(moves=SYNTAX[case], site="a") + _game(moves=PLAIN, site="b"))
    s = store.manifest["summary"]
    assert s["games_kept"] == 2 and s["skipped"] == {}, s
    rows = store.column("game_id")
    fens = store.fens(np.arange(len(store)))
    assert fens[: (rows == 0).sum()] == fens[(rows == 0).sum():]
    assert [g["moves"].split() for g in store.games] == [WANT, WANT]


def test_a_multi_line_comment_keeps_its_eval_and_a_line_starting_with_a_bracket_is_not_a_tag(tmp_path):
    text = _game(moves="1. e4 { a long\n[remark]\n[%eval 1.5] } e5 { [%eval\n-0.25] } 2. Nf3 1-0")
    store = _build(tmp_path, text)
    assert store.manifest["summary"]["games_read"] == 1
    assert store.column("eval_cp").tolist()[:2] == [150, -25]


@pytest.mark.parametrize("crlf", [False, True])
def test_byte_order_marks_at_the_start_and_between_concatenated_files_lose_nothing(tmp_path, crlf):
    files = [_game(site=f"s{i}").encode() for i in range(3)]
    data = b"".join(b"\xef\xbb\xbf" + f for f in files)  # `cat` of three files that each start with a BOM
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    p = _write(tmp_path / "bom.pgn", data)
    store = build_store([p], tmp_path / "s", GameFilter(first_n_plies=0), workers=1)
    s = store.manifest["summary"]
    assert s["games_read"] == 3 and s["games_kept"] == 3 and s["skipped"] == {}
    assert [g["site"] for g in store.games] == [f"https://lichess.org/s{i}" for i in range(3)]
    zst = _write(tmp_path / "bom.pgn.zst", zstandard.ZstdCompressor().compress(data))
    assert _read_games(zst) == [g["moves"].split() for g in store.games]


def test_a_tag_followed_by_a_comment_and_tags_named_as_python_chess_names_them(tmp_path):
    extra = '[TimeControl "600+0"] ; ten minutes\n[White-Title "x"]\n[Annotator "a;b"]'
    store = _build(tmp_path, _game(extra=extra))
    assert store.manifest["summary"]["games_kept"] == 1 and store.manifest["summary"]["skipped"] == {}


def test_games_without_moves_are_skipped_as_no_moves_not_kept(tmp_path):
    text = (_game(moves="1-0", site="result only") + _game(moves="{ White won on time } 1-0", site="comment")
            + _game(moves="( 1. e4 e5 ) 1-0", site="variation only") + _game(site="ok")
            + '[Event "Rated Rapid game"]\n[WhiteElo "1500"]\n[BlackElo "1600"]\n[Result "1-0"]\n\n'
            + _game(site="ok2"))
    store = _build(tmp_path, text)
    s = store.manifest["summary"]
    assert s["skipped"] == {"no moves": 4} and s["games_kept"] == 2, s
    assert [g["site"] for g in store.games] == ["https://lichess.org/ok", "https://lichess.org/ok2"]
    assert all(g["positions"] > 0 for g in store.games)
    # without headers either: a file holding nothing but a result
    loose = build_store([_write(tmp_path / "r.pgn", b"1-0\n")], tmp_path / "r", GameFilter(**ALL), workers=1)
    assert loose.manifest["summary"]["skipped"] == {"no moves": 1} and loose.manifest["summary"]["games_kept"] == 0


def test_games_separated_by_a_blank_line_only_are_two_games(tmp_path):
    p = _write(tmp_path / "bare.pgn", f"{PLAIN}\n\n1. d4 d5 0-1\n".encode())
    store = build_store([p], tmp_path / "s", GameFilter(**ALL), workers=1)
    assert store.manifest["summary"]["games_kept"] == 2
    assert [g["moves"] for g in store.games] == [" ".join(WANT), "d2d4 d7d5"]


def test_a_stray_brace_or_null_move_costs_its_own_game_only(tmp_path):
    text = (_game(moves="1. e4 { never closed e5 2. Nf3 1-0", site="brace") + _game(site="a")
            + _game(moves="1. e4 -- 2. d4 1-0", site="null") + _game(site="b"))
    store = _build(tmp_path, text)
    s = store.manifest["summary"]
    assert s["skipped"] == {"corrupt game: unterminated comment": 1, "corrupt game: null move": 1}, s
    assert [g["site"] for g in store.games] == ["https://lichess.org/a", "https://lichess.org/b"]


COMMENT = st.text(alphabet="ab [];{()%!?.\n1-0*", max_size=20)  # no '}' (the exporter drops it), '$' or '"'
NAG_FORMS = {1: "!", 2: "?", 3: "!!", 4: "??", 5: "!?", 6: "?!"}


def _random_game(draw) -> chess.pgn.Game:
    """A random legal game with random comments, NAGs and (nested) variations."""
    game = chess.pgn.Game()
    game.headers.update(Event="Rated Rapid game", WhiteElo="1500", BlackElo="1600", Result="1-0")
    node = game
    for _ in range(draw(st.integers(1, 24))):
        legal = list(node.board().legal_moves)
        if not legal:
            break
        node = node.add_main_variation(legal[draw(st.integers(0, len(legal) - 1))])
        node.comment = draw(COMMENT)
        node.nags.update(draw(st.sets(st.sampled_from([1, 2, 3, 4, 5, 6, 10, 14, 146]), max_size=2)))
        if draw(st.integers(0, 3)) == 0:
            node.starting_comment = draw(COMMENT)
        if len(legal) > 1 and draw(st.integers(0, 2)) == 0:  # a variation of one to three moves, maybe nested
            var = node.parent.add_variation(next(m for m in legal if m != node.move), comment=draw(COMMENT))
            for _ in range(draw(st.integers(0, 2))):
                replies = list(var.board().legal_moves)
                if not replies:
                    break
                var = var.add_variation(replies[draw(st.integers(0, len(replies) - 1))], comment=draw(COMMENT))
                if draw(st.booleans()) and var.parent.parent is not None:
                    var.parent.add_variation(next(iter(var.parent.board().legal_moves)))
    game.headers["Result"] = "1-0"
    return game


def _decorate(draw, text: str) -> str:
    """Exported PGN rewritten into the forms other tools write: NAGs as suffixes with or without a space,
    `;` comments at the ends of lines and `%` escape lines (both outside braces)."""
    text = re.sub(r"\s\$([1-6])(?!\d)", lambda m: (" " if draw(st.booleans()) else "") + NAG_FORMS[int(m.group(1))], text)
    out, in_brace = [], False
    for line in text.split("\n"):
        for ch in line:
            in_brace = (in_brace and ch != "}") or (not in_brace and ch == "{")
        if not in_brace and line and not line.startswith("[") and draw(st.integers(0, 3)) == 0:
            line += " ;" + draw(COMMENT.map(lambda c: c.replace("\n", " ")))
            if draw(st.booleans()):
                line += "\n% escape" + draw(COMMENT.map(lambda c: c.replace("\n", " ")))
        out.append(line)
    return "\n".join(out)


@pytest.fixture(scope="module")
def round_trip_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("round_trip")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_through_python_chess_export_with_comments_nags_and_variations(round_trip_dir, data):
    game = _random_game(data.draw)
    columns = data.draw(st.sampled_from([None, 12, 40, 80]))
    decorated = _decorate(data.draw, game.accept(chess.pgn.StringExporter(columns=columns)))
    plain = game.accept(chess.pgn.StringExporter(columns=None, comments=False, variations=False))
    bom = "\ufeff" if data.draw(st.booleans()) else ""
    text = bom + decorated + "\n\n" + bom + plain + "\n\n" + bom + decorated + "\n"
    if data.draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    want = [m.uci() for m in game.mainline_moves()]
    path = _write(round_trip_dir / "g.pgn", text.encode())
    assert _read_games(path) == [want, want, want], text
    # and python-chess reads the decorated text as the same game (the test's PGN is valid)
    assert [m.uci() for m in chess.pgn.read_game(open(path, encoding="utf-8-sig")).mainline_moves()] == want
