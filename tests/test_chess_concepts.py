"""Chess concepts from python-chess boards, and the puzzle / STS theme loaders.

Hand-checked positions cover every concept family; each is also checked colour-flipped with Black
to move, which must give the same labels because the side to move is always seen as White."""
import shutil

import chess
import pytest
import torch

from maia_adapt.concepts import piece_square_concepts
from maia_adapt.concepts.chess_concepts import (
    all_position_concepts,
    board_state_concepts,
    concept_specs,
    seed172_concepts,
    strategic_concepts,
    study_concepts,
    threat_concepts,
)
from maia_adapt.concepts.realworld import load_puzzles, load_sts
from maia_adapt.errors import DataError
from maia_adapt.model.inference import encode_fens

PUZZLES = "puzzles/lichess_puzzles_5k.csv"
STS = "sts/STS1-STS15_LAN_v3.epd"


def _labels(fen: str) -> dict[str, bool]:
    """All concepts of one position, checked to be the same for its colour-flipped twin."""
    board = chess.Board(fen)
    c = all_position_concepts([board, board.mirror()])
    assert torch.equal(c.labels[0], c.labels[1]), f"mirrored twin of {fen} differs"
    return dict(zip(c.names, c.labels[0].tolist()))


def _positives(lab: dict[str, bool], prefix: str) -> set[str]:
    return {n for n, v in lab.items() if v and n.startswith(prefix)}


# ---------------------------------------------------------------- threat family

def test_hanging_knight_is_offensive_and_same_names_when_black_moves():
    # White bishop g2 attacks the undefended black knight on d5 (via f3, e4)
    white = _labels("4k3/8/8/3n4/8/8/6B1/4K3 w - - 0 1")
    assert _positives(white, "offensive@") == {"offensive@d5"}
    assert _positives(white, "defensive@") == set()
    assert white["opp_has_hanging_piece"] and not white["own_has_hanging_piece"]
    assert _positives(white, "capture_possible@") == {"capture_possible@d5"}
    # the same position colour-flipped, written out: Black's bishop g7 attacks White's knight on d4
    black = _labels("4k3/6b1/8/8/3N4/8/8/4K3 b - - 0 1")
    assert black == white


def test_defensive_counts_attackers_against_defenders():
    # knight d4: attacked by bishop b2 and rook d8, defended only by pawn e3 -> 2 > 1
    lab = _labels("3r2k1/8/8/8/3N4/4P3/1b6/6K1 w - - 0 1")
    assert _positives(lab, "defensive@") == {"defensive@d4"}
    assert not lab["own_has_hanging_piece"]  # defended, so not hanging
    # without the rook it is 1 against 1
    lab = _labels("6k1/8/8/8/3N4/4P3/1b6/6K1 w - - 0 1")
    assert _positives(lab, "defensive@") == set()


def test_checked_black_king_is_defensive_on_e1_after_mirroring():
    # Black to move, in check from the rook on e1: Black's king e8 is "own" on e1 after mirroring
    lab = _labels("4k3/8/8/8/8/8/8/4RK2 b - - 0 1")
    assert _positives(lab, "defensive@") == {"defensive@e1"}
    assert lab["in_check"] and lab["own_king@e1"] and lab["opp_rook@e8"]
    assert not lab["own_has_hanging_piece"]  # the king never counts as hanging
    assert not lab["mate_threat"]  # undefined when in check


def test_pinned_pieces_count_as_attackers_but_cannot_capture():
    # knight f3 is pinned by the rook f8: it still counts for offensive@e5 (python-chess attackers),
    # but capturing the queen is illegal
    lab = _labels("k4r2/8/8/4q3/8/5N2/8/5K2 w - - 0 1")
    assert lab["offensive@e5"]
    assert not lab["own_can_capture_queen"] and not lab["capture_possible@e5"]


# ---------------------------------------------------------------- strategic family

def test_in_check():
    assert _labels("4k3/8/8/8/8/8/8/4RK2 b - - 0 1")["in_check"]
    assert not _labels("4k3/8/8/8/8/8/8/R4K2 b - - 0 1")["in_check"]


def test_back_rank_mate_threat():
    # if White passed, Ra1 would mate the king boxed in by its own pawns
    lab = _labels("r5k1/5ppp/8/8/8/8/5PPP/6K1 w - - 0 1")
    assert lab["mate_threat"] and not lab["in_check"]
    # a rook on d1 blocks the back rank
    assert not _labels("r5k1/5ppp/8/8/8/8/5PPP/3R2K1 w - - 0 1")["mate_threat"]
    # the same threat against Black, Black to move
    assert _labels("6k1/5ppp/8/8/8/8/5PPP/R5K1 b - - 0 1")["mate_threat"]


def test_mate_threat_by_discovered_and_knight_checks():
    # any move of the knight d1 uncovers the rook a1 onto the king h1, boxed in by its pawns
    assert _labels("4k3/8/8/8/8/8/6PP/r2n3K w - - 0 1")["mate_threat"]
    # smothered: Nf2 would mate the king h1 walled in by its own rook g1 and pawns g2/h2
    assert _labels("4k3/8/8/8/6n1/8/6PP/6RK w - - 0 1")["mate_threat"]
    assert not _labels("4k3/8/8/8/6n1/8/6PP/7K w - - 0 1")["mate_threat"]  # Kg1 escapes


def test_connected_rooks():
    assert _labels("3k4/8/8/8/8/8/4K3/R6R w - - 0 1")["own_connected_rooks"]
    assert not _labels("8/8/3k4/8/8/8/8/R2K3R w - - 0 1")["own_connected_rooks"]  # king between
    lab = _labels("r3k3/8/8/8/r7/8/8/4K3 w - - 0 1")  # a8 and a4 on an empty a-file
    assert lab["opp_connected_rooks"] and not lab["own_connected_rooks"]
    assert not _labels("r3k3/8/P7/8/r7/8/8/4K3 w - - 0 1")["opp_connected_rooks"]


def test_bishop_pair():
    assert _labels("4k3/8/8/8/8/8/8/2B1KB2 w - - 0 1")["own_bishop_pair"]  # c1 dark, f1 light
    assert not _labels("4k3/8/8/8/8/4B3/8/2B1K3 w - - 0 1")["own_bishop_pair"]  # both dark
    lab = _labels("2b1kb2/8/8/8/8/8/8/4K3 w - - 0 1")
    assert lab["opp_bishop_pair"] and not lab["own_bishop_pair"]


def test_open_file_control_and_contested():
    lab = _labels("6k1/pppp1ppp/8/8/8/8/PPPP1PPP/4RK2 w - - 0 1")  # rook on the open e-file
    assert lab["own_open_file_control"] and not lab["opp_open_file_control"] and not lab["contested_open_file"]
    lab = _labels("3q2k1/ppp2ppp/8/8/8/8/PPP2PPP/4RK2 w - - 0 1")  # each side on its own open file
    assert not lab["own_open_file_control"] and not lab["opp_open_file_control"] and not lab["contested_open_file"]
    lab = _labels("4r1k1/pppp1ppp/8/8/8/8/PPPP1PPP/4RK2 w - - 0 1")  # both on the e-file
    assert lab["contested_open_file"] and not lab["own_open_file_control"] and not lab["opp_open_file_control"]
    lab = _labels("4r1k1/pppp1ppp/8/8/8/8/PPPP1PPP/5K2 w - - 0 1")
    assert lab["opp_open_file_control"] and not lab["own_open_file_control"]
    # a half-open file (one side's pawn on it) is not open
    assert not _labels("4k3/pppppppp/8/8/8/8/PPPP1PPP/4RK2 w - - 0 1")["own_open_file_control"]


def test_can_capture_queen_and_hanging_pieces():
    lab = _labels("4k3/8/8/4q3/8/5N2/8/7K w - - 0 1")  # Nf3xe5
    assert lab["own_can_capture_queen"] and not lab["opp_can_capture_queen"]
    lab = _labels("k7/8/8/3p4/4Q3/8/8/4K3 w - - 0 1")  # ...dxe4 if Black were to move
    assert lab["opp_can_capture_queen"] and not lab["own_can_capture_queen"]
    assert lab["own_has_hanging_piece"] and lab["opp_has_hanging_piece"]  # Q and p attack each other
    assert lab["defensive@e4"] and lab["offensive@d5"]
    assert not _labels("1k6/8/8/8/4Q3/8/8/4K3 w - - 0 1")["own_has_hanging_piece"]


def test_capture_possible_includes_en_passant_landing_square():
    white = _labels("4k3/8/8/3pP3/8/8/8/4K3 w - d6 0 1")
    assert _positives(white, "capture_possible@") == {"capture_possible@d6"}
    black = _labels("4k3/8/8/8/3Pp3/8/8/4K3 b - d3 0 1")  # ...exd3 e.p., d3 is d6 after mirroring
    assert black == white


# ---------------------------------------------------------------- the study's definitions

def test_study_mate_threat_is_the_side_to_moves_mate_in_one():
    lab = _labels("6k1/5ppp/8/8/8/8/8/R5K1 w - - 0 1")  # Ra8 mates now; Black threatens nothing
    assert lab["study_mate_threat"] and not lab["mate_threat"]
    lab = _labels("r5k1/8/8/8/8/8/5PPP/6K1 w - - 0 1")  # ...Ra1 would mate if White passed
    assert lab["mate_threat"] and not lab["study_mate_threat"]


def test_study_mate_threat_finds_an_en_passant_discovered_mate():
    # exd6 e.p. takes the d5 pawn off the a8-h1 diagonal: the bishop f3 mates the king a8, boxed in
    # by its pawn a7 and bishop b8 (which cannot interpose); neither e5 nor d6 is on a line to a8
    fen = "kb6/p7/8/3pP3/8/5B2/8/4K3 w - d6 0 1"
    b = chess.Board(fen)
    b.push_uci("e5d6")
    assert b.is_checkmate()
    assert _labels(fen)["study_mate_threat"]


def test_study_bishop_pair_counts_two_bishops_of_any_colour():
    lab = _labels("4k3/8/8/8/8/3B4/8/4KB2 w - - 0 1")  # d3 and f1: both light
    assert lab["study_own_bishop_pair"] and not lab["own_bishop_pair"]
    lab = _labels("4k3/8/8/8/8/3B4/8/2B1KB2 w - - 0 1")  # three bishops, both colours
    assert lab["own_bishop_pair"] and not lab["study_own_bishop_pair"]
    lab = _labels("2b1kb2/8/8/8/8/8/8/4K3 w - - 0 1")  # the usual pair: both agree
    assert lab["study_opp_bishop_pair"] and lab["opp_bishop_pair"] and not lab["study_own_bishop_pair"]


def test_study_open_file_control_judges_each_file():
    lab = _labels("3r2k1/5ppp/8/8/8/8/5PPP/4R1K1 w - - 0 1")  # rook d8 alone on d, rook e1 alone on e
    assert lab["study_own_open_file_control"] and lab["study_opp_open_file_control"]
    assert not lab["own_open_file_control"] and not lab["opp_open_file_control"]
    assert not lab["contested_open_file"] and not lab["study_contested_open_file"]
    lab = _labels("4r1k1/pppp1ppp/8/8/8/8/PPPP1PPP/4RK2 w - - 0 1")  # both on the e-file: contested
    assert lab["study_contested_open_file"] and not lab["study_own_open_file_control"]


def test_study_right_bishop_rook_pawn():
    assert _labels("4k3/8/8/7P/8/8/8/2B1K3 w - - 0 1")["study_own_right_bishop_rook_pawn"]  # h8 and c1 dark
    assert not _labels("4k3/8/8/7P/8/8/8/4KB2 w - - 0 1")["study_own_right_bishop_rook_pawn"]  # f1 light
    assert not _labels("4k3/8/6p1/7P/8/8/8/2B1K3 w - - 0 1")["study_own_right_bishop_rook_pawn"]  # g6 stops it
    # the study's "passed" also counts an enemy pawn beside it on its own rank
    assert not _labels("4k3/8/8/6pP/8/8/8/2B1K3 w - - 0 1")["study_own_right_bishop_rook_pawn"]
    lab = _labels("4kb2/8/8/8/p7/8/8/4K3 w - - 0 1")  # Black's a-pawn promotes on dark a1, bishop f8 dark
    assert lab["study_opp_right_bishop_rook_pawn"] and not lab["study_own_right_bishop_rook_pawn"]
    # of doubled rook pawns the study's code looks only at the one highest up the board
    assert _labels("4k3/8/8/7P/8/7P/8/2B1K3 w - - 0 1")["study_own_right_bishop_rook_pawn"]


def test_study_connected_rooks_is_the_intended_definition():
    # rooks a1 and a5: the study's code tests a1 (a rook) for every square between and says no; the
    # study family keeps the intended definition, as ours does
    lab = _labels("4k3/8/8/R7/8/8/8/R3K3 w - - 0 1")
    assert lab["own_connected_rooks"] and lab["study_own_connected_rooks"]
    assert not _labels("4k3/8/8/R7/8/N7/8/R3K3 w - - 0 1")["study_own_connected_rooks"]


# ---------------------------------------------------------------- specs and combined labels

def test_specs_are_unique_defined_and_match_the_label_columns():
    specs = concept_specs()
    names = [s.name for s in specs]
    assert len(set(names)) == len(names) >= 172
    assert all(s.definition and "\n" not in s.definition for s in specs)
    counts = {f: sum(s.family == f for s in specs) for f in {s.family for s in specs}}
    assert counts == {"threat": 128, "strategic": 13, "capture": 64, "study": 13, "seed172": 172, "board-state": 768}
    boards = [chess.Board()]
    assert all_position_concepts(boards).names == names
    families = (threat_concepts(boards), strategic_concepts(boards), study_concepts(boards), seed172_concepts(boards),
                board_state_concepts(boards))
    assert [n for f in families for n in f.names] == names
    assert threat_concepts(boards).names[0] == "defensive@a1" and threat_concepts(boards).names[64] == "offensive@a1"


@pytest.fixture(scope="module")
def puzzle_positions(shared_data):
    fens, _ = load_puzzles(shared_data / PUZZLES)
    return fens[:400]


def test_families_agree_with_combined_labels_and_are_mirror_invariant(puzzle_positions):
    boards = [chess.Board(f) for f in puzzle_positions]
    c = all_position_concepts(boards)
    parts = torch.cat(
        [threat_concepts(boards).labels, strategic_concepts(boards).labels, study_concepts(boards).labels,
         seed172_concepts(boards).labels, board_state_concepts(boards).labels], 1
    )
    assert torch.equal(c.labels, parts)
    assert torch.equal(c.labels, all_position_concepts([b.mirror() for b in boards]).labels)
    assert all_position_concepts(puzzle_positions).labels.equal(c.labels)  # FEN strings work too


def test_board_state_equals_model_input_planes(puzzle_positions):
    assert any(" b " in f for f in puzzle_positions) and any(" w " in f for f in puzzle_positions)
    planes = encode_fens(puzzle_positions)[0]
    expected = piece_square_concepts(planes)
    got = all_position_concepts(puzzle_positions)
    board_state = got.labels[:, -768:]
    assert got.names[-768:] == expected.names
    assert torch.equal(board_state, expected.labels)


def _white_view(fen: str) -> chess.Board:
    board = chess.Board(fen)
    return board.mirror() if board.turn == chess.BLACK else board


def _naive_labels(b: chess.Board) -> dict[str, bool]:
    """Straightforward re-implementations (SquareSets, every move pushed) of the trickier concepts."""
    out = {}
    for sq in chess.SQUARES:
        piece = b.piece_at(sq)
        own = len(b.attackers(chess.WHITE, sq))
        opp = len(b.attackers(chess.BLACK, sq))
        name = chess.square_name(sq)
        out[f"defensive@{name}"] = piece is not None and piece.color == chess.WHITE and opp > own
        out[f"offensive@{name}"] = piece is not None and piece.color == chess.BLACK and own > opp
    passed = b.copy()
    mate = False
    if not b.is_check():
        passed.push(chess.Move.null())
        for m in list(passed.legal_moves):
            passed.push(m)
            mate |= passed.is_checkmate()
            passed.pop()
    out["mate_threat"] = mate
    flipped = b.copy()
    flipped.turn = chess.BLACK
    flipped.ep_square = None
    for side, board in (("own", b), ("opp", flipped)):
        out[f"{side}_can_capture_queen"] = any(
            board.piece_type_at(m.to_square) == chess.QUEEN for m in board.legal_moves if board.is_capture(m)
        )
    for side, color in (("own", chess.WHITE), ("opp", chess.BLACK)):
        out[f"{side}_has_hanging_piece"] = any(
            b.attackers(not color, sq) and not b.attackers(color, sq)
            for sq in chess.SQUARES
            if b.color_at(sq) == color and b.piece_type_at(sq) != chess.KING
        )
    for sq in chess.SQUARES:
        out[f"capture_possible@{chess.square_name(sq)}"] = any(
            m.to_square == sq for m in b.legal_moves if b.is_capture(m)
        )
    # the study's definitions, from its description, square by square
    mine = b.copy()
    out["study_mate_threat"] = False
    for m in list(mine.legal_moves):
        mine.push(m)
        out["study_mate_threat"] |= mine.is_checkmate()
        mine.pop()
    for side, color in (("own", chess.WHITE), ("opp", chess.BLACK)):
        out[f"study_{side}_bishop_pair"] = len(b.pieces(chess.BISHOP, color)) == 2
        out[f"study_{side}_open_file_control"] = any(
            not any(b.piece_type_at(chess.square(f, r)) == chess.PAWN for r in range(8))
            and any(b.piece_at(chess.square(f, r)) in (chess.Piece(chess.ROOK, color), chess.Piece(chess.QUEEN, color)) for r in range(8))
            and not any(b.piece_at(chess.square(f, r)) in (chess.Piece(chess.ROOK, not color), chess.Piece(chess.QUEEN, not color)) for r in range(8))
            for f in range(8)
        )
        right = False
        for f in (0, 7):
            ranks = [r for r in range(8) if b.piece_at(chess.square(f, r)) == chess.Piece(chess.PAWN, color)]
            if not ranks:
                continue
            r = max(ranks)
            front = range(r, 8) if color == chess.WHITE else range(0, r + 1)
            blocked = any(b.piece_at(chess.square(ff, rr)) == chess.Piece(chess.PAWN, not color)
                          for rr in front for ff in range(max(0, f - 1), min(7, f + 1) + 1))
            promotion_parity = (f + (7 if color == chess.WHITE else 0)) % 2
            if not blocked and any((chess.square_file(q) + chess.square_rank(q)) % 2 == promotion_parity
                                   for q in b.pieces(chess.BISHOP, color)):
                right = True
        out[f"study_{side}_right_bishop_rook_pawn"] = right
    return out


def test_fast_concepts_equal_naive_definitions_on_real_positions(puzzle_positions):
    c = all_position_concepts(puzzle_positions)
    col = {n: j for j, n in enumerate(c.names)}
    for i, fen in enumerate(puzzle_positions):
        for name, value in _naive_labels(_white_view(fen)).items():
            assert c.labels[i, col[name]].item() == value, f"{name} on {fen}"
    assert c.labels[:, col["mate_threat"]].any()  # the real sample does exercise the mate search
    assert c.labels[:, col["study_mate_threat"]].any()
    # the six study concepts that are ours are the same columns
    for study, ours in (("study_in_check", "in_check"), ("study_own_connected_rooks", "own_connected_rooks"),
                        ("study_opp_connected_rooks", "opp_connected_rooks"), ("study_contested_open_file", "contested_open_file"),
                        ("study_own_can_capture_queen", "own_can_capture_queen"),
                        ("study_opp_can_capture_queen", "opp_can_capture_queen")):
        assert torch.equal(c.labels[:, col[study]], c.labels[:, col[ours]])


# ---------------------------------------------------------------- real-world loaders

def test_load_puzzles(shared_data):
    fens, c = load_puzzles(shared_data / PUZZLES)
    assert len(fens) == 5451 and c.labels.shape == (5451, len(c.names))
    assert c.names == sorted(c.names) and {"puzzle:fork", "puzzle:mateIn1", "puzzle:hangingPiece"} <= set(c.names)
    assert c.labels.any(0).all()  # every listed theme occurs
    # first row: FEN "... b - - 1 16" then b6c5: the puzzle position has White to move
    board = chess.Board("r2qr1k1/b1p2ppp/pp4n1/P1P1p3/4P1n1/B2P2Pb/3NBP1P/RN1QR1K1 b - - 1 16")
    board.push_uci("b6c5")
    assert fens[0] == board.fen()
    first = {n for n, v in zip(c.names, c.labels[0].tolist()) if v}
    assert first == {"puzzle:advantage", "puzzle:middlegame", "puzzle:short"}
    _, some = load_puzzles(shared_data / PUZZLES, themes=["fork", "puzzle:pin", "noSuchTheme"])
    assert some.names == ["puzzle:fork", "puzzle:pin", "puzzle:noSuchTheme"]
    assert torch.equal(some.labels[:, 0], c.labels[:, c.names.index("puzzle:fork")])
    assert not some.labels[:, 2].any()


def test_load_puzzles_reports_file_and_line(shared_data, tmp_path):
    lines = (shared_data / PUZZLES).read_text().splitlines(keepends=True)
    bad = tmp_path / "bad_puzzles.csv"
    fields = lines[3].split(",")
    fields[2] = "e2e5 " + fields[2]  # a well-formed but illegal first move
    bad.write_text("".join(lines[:3]) + ",".join(fields) + "".join(lines[4:10]))
    with pytest.raises(DataError, match=r"bad_puzzles\.csv:4: .*e2e5"):
        load_puzzles(bad)
    bad.write_text("".join(lines[:2]) + lines[2].replace("/", "/x", 1))
    with pytest.raises(DataError, match=r"bad_puzzles\.csv:3: bad FEN"):
        load_puzzles(bad)
    bad.write_text("PuzzleId,FEN,Rating\n0009B,8/8/8/8/8/8/8/8 w - - 0 1,1000\n")
    with pytest.raises(DataError, match=r"bad_puzzles\.csv: .*missing column\(s\) Moves, Themes"):
        load_puzzles(bad)
    with pytest.raises(DataError, match="nowhere.csv"):
        load_puzzles(tmp_path / "nowhere.csv")


def test_load_sts(shared_data):
    fens, c = load_sts(shared_data / STS)
    # 1,500 records, of which 3 positions appear in two suites each: they are merged
    assert len(fens) == 1497 and c.labels.shape == (1497, 15)
    assert c.labels.sum().item() == 1500 and (c.labels.sum(1) == 2).sum().item() == 3
    assert c.labels.sum(0).tolist() == [100] * 15
    assert c.names[0] == "sts:Undermine" and c.names[-1] == "sts:AT"
    assert "sts:Knight Outposts/Repositioning/Centralization" in c.names  # the majority spelling
    assert fens[0] == "1kr5/3n4/q3p2p/p2n2p1/PppB1P2/5BP1/1P2Q2P/3R2K1 w - - 0 1"
    assert c.labels[0, 0]


def test_load_sts_reports_file_and_line(shared_data, tmp_path):
    bad = tmp_path / "bad_sts.epd"
    shutil.copy(shared_data / STS, bad)
    lines = bad.read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:2]) + "1kr5/3n4/q3p2p/p2n2p1 w - - bm f5;\n" + "".join(lines[3:]))
    with pytest.raises(DataError, match=r"bad_sts\.epd:3: bad EPD position"):
        load_sts(bad)
    bad.write_text("".join(lines[:4]) + lines[4].replace("STS(", "XTS(") + "".join(lines[5:]))
    with pytest.raises(DataError, match=r"bad_sts\.epd:5: no STS id"):
        load_sts(bad)
