"""Chess concepts computed from python-chess boards, as binary labels per position.

Every position is seen as Maia-2 sees it: a Black-to-move board is mirrored (flipped top to bottom,
colours swapped, as `chess.Board.mirror()` does), so "own" is always the side to move and squares
are named from its point of view ("defensive@e1" is Black's king on e8 when Black is to move).

Families (see `concept_specs()` for one-line definitions):
  threat       128  defensive@<sq> / offensive@<sq>: a piece outnumbered by its attackers
  strategic     13  in_check, mate_threat, connected rooks, bishop pair, open files, queen capture,
                    hanging pieces
  capture       64  capture_possible@<sq>: the side to move has a legal capture landing on <sq>
  study         13  study_*: the study's 13 strategic concepts as its code defines them, for
                    reproducing it. Six equal ours; mate threat, bishop pair and open-file control
                    are defined differently, and right-bishop rook pawns replace hanging pieces
                    (each definition says how it differs)
  seed172      172  seed172_*: the 172 concepts of the study's revision ("Playing Dumb",
                    CSSLab/maia2-skill-adaptation at 3d8d091, train/chess_concept_oracle.py) as its
                    code defines them, in its order and 5 categories (`ConceptSpec.category`;
                    "seed172:<category>" selects one): king_queen_safety 4, square_threats 128,
                    tactical_patterns_forks 7, tactical_patterns_pins 10, positional_structure 23;
                    `SEED172_SEED_NAMES` gives each one's name in the seed
  board-state  768  <own|opp>_<piece>@<sq>, the same names and order as `piece_square_concepts`

`position_concepts(boards, families)` computes only the families asked for; `all_position_concepts`
computes them all (1,158 columns).

Attack counts use python-chess `attackers_mask` semantics: every piece whose move pattern reaches
the square on the current board, pinned pieces included, x-rays (a rook behind a rook) excluded.

The seed172 family reproduces the revision's code, quirks included; docs/concepts_seed172.md has its
check against that code on real positions (every concept agrees on every position). The revision
labels the FENs it feeds Maia-2 unmirrored, so they are Maia-2's White-to-move views: its "mine" is
the side to move, as our "own" is, and its square threats, written for White, are our threat family.
Its quirks, kept (each concept's definition says which apply):
  - king danger: 5 or more attacked squares next to the king, occupied ones included, but not a
    square behind the king on a slider's line (the king blocks it); an edge king has 5 such
    squares and a corner king 3, so a corner king never counts
  - forks are attacks standing on the board, not moves: an unpinned piece attacking two or more
    enemy pieces of the forked types, defended or not, the king included (an enemy fork on the
    king is a check); knights and bishops fork only rooks, queens and kings, rooks only queens
    and kings; a pinned piece never forks, even when a target stands on its pin line; there is no
    queen fork, and the own rook fork the seed's code defines is not among its 172
  - pins are python-chess absolute pins (to the king), also of a piece free to move along the line
  - connected rooks on one file: the seed's code tests only the file's first-rank square (seen
    from the side to move), whatever stands between: rooks a1 and a5 never count, rooks a3 and a6
    count whenever a1 is empty; on a rank it tests the squares between. This is the one seed
    definition that depends on the mirroring (on an un-mirrored Black-to-move board it would test
    White's first rank)
  - bishop pair: exactly two bishops; open-file control judged per file (as the study family)
  - the opponent's captures with the turn passed, in check or not; the seed names their squares
    from the opponent's side (its capture_possible_d1_opponent is our seed172_opp_capture@d8)

Speed, measured on one core (taskset, Python 3.11, python-chess 1.11), best of 3 over the 5,451
lichess puzzle positions, before the study family was added: `all_position_concepts` ~4,600
positions/s (~3,900/s on the 1,497 STS middlegames); threat alone ~24,000/s, strategic + capture
~4,700/s (the mate-in-one search after a passed turn takes two thirds of it), board-state
~170,000/s. The study family's own mate-in-one search (for the side to move) makes
`all_position_concepts` 0.67x as fast (old and new timed in one run on one core of a loaded machine).
The seed172 family alone: ~5,900 positions/s on the 5,451 puzzle boards (~4,100/s on the 1,497 STS
FENs, parsing included), best of 3 on one core of the shared 2-core EPYC, where threat alone ran
~14,600/s in the same run (a slower machine than the one above); with it `all_position_concepts` runs
0.85x as fast as the other five families (~1,450 against ~1,700 positions/s, same run), and stages
that name their families (`position_concepts`) compute only those.
"""
from __future__ import annotations

from dataclasses import dataclass

import chess
import numpy as np
import torch

from ..errors import ConfigError, MaiaAdaptError
from .board import BoardConcepts

_PIECES = ["pawn", "knight", "bishop", "rook", "queen", "king"]
_SQUARES = [chess.square_name(sq) for sq in chess.SQUARES]


@dataclass(frozen=True)
class ConceptSpec:
    name: str
    family: str
    definition: str
    category: str = ""  # family seed172: the seed's category (select one with "seed172:<category>")


# ---------------------------------------------------------------- concept names and definitions

def _threat_specs() -> list[ConceptSpec]:
    defensive = [
        ConceptSpec(
            f"defensive@{s}",
            "threat",
            f"a piece of the side to move (king included) stands on {s} and more enemy pieces attack {s} "
            "than own pieces defend it",
        )
        for s in _SQUARES
    ]
    offensive = [
        ConceptSpec(
            f"offensive@{s}",
            "threat",
            f"an enemy piece (king included) stands on {s} and more own pieces attack {s} than enemy "
            "pieces defend it",
        )
        for s in _SQUARES
    ]
    return defensive + offensive


_STRATEGIC = [
    ("in_check", "the side to move is in check"),
    ("mate_threat", "not in check, and with the turn passed the opponent would have a mate in one (the study's "
                    "code asks whether the side to move has a mate in one: study_mate_threat)"),
    ("own_connected_rooks", "two own rooks share a rank or file with no piece between them"),
    ("opp_connected_rooks", "two enemy rooks share a rank or file with no piece between them"),
    ("own_bishop_pair", "the side to move has bishops on both light and dark squares (the study's code: "
                        "exactly two bishops, study_own_bishop_pair)"),
    ("opp_bishop_pair", "the opponent has bishops on both light and dark squares (the study's code: exactly "
                        "two bishops, study_opp_bishop_pair)"),
    ("own_open_file_control", "an own rook or queen stands on an open file (no pawns) and no enemy one stands on "
                              "any open file (the study's code judges each file: study_own_open_file_control)"),
    ("opp_open_file_control", "an enemy rook or queen stands on an open file (no pawns) and no own one stands on "
                              "any open file (the study's code judges each file: study_opp_open_file_control)"),
    ("contested_open_file", "an own and an enemy rook or queen stand on the same open file"),
    ("own_can_capture_queen", "the side to move has a legal capture of an enemy queen"),
    ("opp_can_capture_queen", "with the turn passed, the opponent would have a legal capture of an own queen"),
    ("own_has_hanging_piece", "an own piece other than the king is attacked and not defended (not in the "
                              "study's set, which has study_own_right_bishop_rook_pawn instead)"),
    ("opp_has_hanging_piece", "an enemy piece other than the king is attacked and not defended (not in the "
                              "study's set, which has study_opp_right_bishop_rook_pawn instead)"),
]

# The study's 13 strategic concepts (its concept code, read for the definitions), in its order. The
# six marked "as <ours>" are computed by our function of that name.
_STUDY = [
    ("study_in_check", "as in_check: the side to move is in check"),
    ("study_mate_threat", "the side to move has a mate in one, in check or not (ours, mate_threat: the "
                          "opponent would have one after a passed turn)"),
    ("study_own_connected_rooks", "as own_connected_rooks: two own rooks share a rank or file with no piece "
                                  "between them (the study's code, for two rooks on one file, looks only at "
                                  "that file's first-rank square, a bug not reproduced here)"),
    ("study_opp_connected_rooks", "as opp_connected_rooks (the study's code has the same same-file bug)"),
    ("study_own_bishop_pair", "the side to move has exactly two bishops, of any square colours (ours, "
                              "own_bishop_pair: bishops on both colours, any number)"),
    ("study_opp_bishop_pair", "the opponent has exactly two bishops, of any square colours (ours, "
                              "opp_bishop_pair: bishops on both colours, any number)"),
    ("study_own_open_file_control", "some open file (no pawns) holds an own rook or queen and no enemy one (ours, "
                                    "own_open_file_control: no enemy rook or queen on any open file)"),
    ("study_opp_open_file_control", "some open file (no pawns) holds an enemy rook or queen and no own one (ours, "
                                    "opp_open_file_control: no own rook or queen on any open file)"),
    ("study_own_can_capture_queen", "as own_can_capture_queen: a legal capture of an enemy queen"),
    ("study_opp_can_capture_queen", "as opp_can_capture_queen: with the turn passed, a legal capture of an own queen"),
    ("study_contested_open_file", "as contested_open_file: an own and an enemy rook or queen on the same open file"),
    ("study_own_right_bishop_rook_pawn", "an own passed a- or h-pawn whose promotion square has the colour of an own "
                                         "bishop (passed: no enemy pawn on its or a neighbouring file, on its rank or "
                                         "ahead; of doubled rook pawns only the one highest up the board, seen from "
                                         "the side to move, counts, as in the study's code); not among ours"),
    ("study_opp_right_bishop_rook_pawn", "the same for the opponent: an enemy passed a- or h-pawn (the one highest "
                                         "up the board of doubled ones) promoting on the colour of an enemy bishop; "
                                         "not among ours"),
]
# the study concepts that are ours: study column -> index in _STRATEGIC
_STUDY_AS_OURS = {0: 0, 2: 2, 3: 3, 8: 9, 9: 10, 10: 8}


def _strategic_specs() -> list[ConceptSpec]:
    return [ConceptSpec(n, "strategic", d) for n, d in _STRATEGIC]


def _study_specs() -> list[ConceptSpec]:
    return [ConceptSpec(n, "study", d) for n, d in _STUDY]


def _capture_specs() -> list[ConceptSpec]:
    return [
        ConceptSpec(f"capture_possible@{s}", "capture", f"the side to move has a legal capture landing on {s}")
        for s in _SQUARES
    ]


def _board_state_specs() -> list[ConceptSpec]:
    return [
        ConceptSpec(
            f"{side}_{p}@{s}", "board-state", f"{'an own' if side == 'own' else 'an enemy'} {p} stands on {s}"
        )
        for side in ("own", "opp")
        for p in _PIECES
        for s in _SQUARES
    ]


# The 172 concepts of the seed's revision ("Playing Dumb", CSSLab/maia2-skill-adaptation at 3d8d091,
# train/chess_concept_oracle.py: CONCEPT_CATEGORIES), in its order: (our name, the seed's name, category,
# definition). Its code's definitions are kept, quirks included; each one's quirk is said in its definition.
SEED172_CATEGORIES = ("king_queen_safety", "square_threats", "tactical_patterns_forks", "tactical_patterns_pins",
                      "positional_structure")
# the seed's capture_possible_<sq>_mine/_opponent squares, each named from the capturing side
_SEED172_CAPTURE_SQUARES = ("d1", "d2", "d3", "e1", "e2", "e3", "g5", "b5")
_FORK_TARGETS = {"pawn": "knights, bishops, rooks, queens or kings", "knight": "rooks, queens or kings (minor pieces "
                 "do not count)", "bishop": "rooks, queens or kings (minor pieces do not count)", "rook": "queens or kings"}
_PIN_NOTE = ("pinned to its king by a rook, bishop or queen (python-chess is_pinned: an absolute pin, also when the "
             "piece can move along the pin line; pins to other pieces do not count)")


def _seed172_table() -> list[tuple[str, str, str, str]]:
    rows = []
    for side, seed_side, king, attacker in (("own", "mine", "own king", "the opponent"),
                                            ("opp", "opponent", "enemy king", "the side to move")):
        rows.append((f"seed172_{side}_king_danger", f"king_danger_{seed_side}", "king_queen_safety",
                     f"at least 5 of the squares next to the {king} are attacked by {attacker} (occupied ones count; "
                     "a square behind the king on a slider's line does not, the king blocks it; a king on an edge has "
                     "5 such squares, in a corner 3, so it never counts there)"))
    rows.append(("seed172_own_can_capture_queen", "can_capture_queen_mine", "king_queen_safety",
                 "as own_can_capture_queen: the side to move has a legal capture of an enemy queen"))
    rows.append(("seed172_opp_can_capture_queen", "can_capture_queen_opponent", "king_queen_safety",
                 "as opp_can_capture_queen: with the turn passed, the opponent has a legal capture of an own queen "
                 "(also when the side to move is in check)"))
    for kind, seed_kind, piece, outnumbered in (("defensive", "defensive", "a piece of the side to move", "enemy"),
                                                ("offensive", "offensive", "an enemy piece", "own")):
        defenders = "own" if kind == "defensive" else "enemy"
        for s in _SQUARES:
            rows.append((f"seed172_{kind}@{s}", f"{seed_kind}_threat_{s}", "square_threats",
                         f"as {kind}@{s}: {piece} (king included) stands on {s} and more {outnumbered} pieces attack "
                         f"it than {defenders} pieces defend it"))
    for piece in ("pawn", "knight", "bishop", "rook"):
        for side, seed_side, whose, other in (("own", "mine", "an own", "enemy"), ("opp", "opponent", "an enemy", "own")):
            if (piece, side) == ("rook", "own"):
                continue  # the seed defines rook_fork_mine but leaves it out of its 172
            note = "; the seed's set has no own rook fork (its code defines one but leaves it out)" if piece == "rook" else ""
            rows.append((f"seed172_{side}_{piece}_fork", f"{piece}_fork_{seed_side}", "tactical_patterns_forks",
                         f"{whose} {piece} not pinned to its king attacks two or more {other} {_FORK_TARGETS[piece]}, "
                         f"defended or not (a position, not a move; an attacked king is a check){note}"))
    for piece in ("pawn", "knight", "bishop", "rook", "queen"):
        for side, seed_side, whose in (("own", "mine", "an own"), ("opp", "opponent", "an enemy")):
            rows.append((f"seed172_{side}_pinned_{piece}", f"has_pinned_{piece}_{seed_side}", "tactical_patterns_pins",
                         f"{whose} {piece} is {_PIN_NOTE}"))
    for side, seed_side, whose, other in (("own", "mine", "own", "enemy"), ("opp", "opponent", "enemy", "own")):
        rows.append((f"seed172_{side}_connected_rooks", f"has_connected_rooks_{seed_side}", "positional_structure",
                     f"two {whose} rooks on one rank with no piece between them, or on one file on neighbouring ranks or "
                     "with the file's first-rank square empty, whatever stands between (the seed's code tests only that "
                     f"square for a file; {side}_connected_rooks and study_{side}_connected_rooks test the squares between)"))
    for side, seed_side, whose in (("own", "mine", "the side to move"), ("opp", "opponent", "the opponent")):
        rows.append((f"seed172_{side}_bishop_pair", f"has_bishop_pair_{seed_side}", "positional_structure",
                     f"as study_{side}_bishop_pair: {whose} has exactly two bishops, of any square colours"))
    for side, seed_side, whose, other in (("own", "mine", "an own", "enemy"), ("opp", "opponent", "an enemy", "own")):
        rows.append((f"seed172_{side}_open_file_control", f"has_control_of_open_file_{seed_side}", "positional_structure",
                     f"as study_{side}_open_file_control: some open file (no pawns) holds {whose} rook or queen and no "
                     f"{other} one"))
    rows.append(("seed172_contested_open_file", "has_contested_open_file", "positional_structure",
                 "as contested_open_file: an own and an enemy rook or queen stand on the same open file"))
    for s in _SEED172_CAPTURE_SQUARES:
        rows.append((f"seed172_own_capture@{s}", f"capture_possible_{s}_mine", "positional_structure",
                     f"as capture_possible@{s}: the side to move has a legal capture landing on {s} (en passant: the "
                     "square the pawn lands on)"))
    for s in _SEED172_CAPTURE_SQUARES:
        m = chess.square_name(chess.square_mirror(chess.parse_square(s)))
        rows.append((f"seed172_opp_capture@{m}", f"capture_possible_{s}_opponent", "positional_structure",
                     f"with the turn passed, the opponent has a legal capture landing on {m} (the seed names it {s}, "
                     "from the opponent's side)"))
    return rows


# our name -> the seed's name, for reading the seed's results (its probes and positions are filed by its names)
SEED172_SEED_NAMES = {name: seed for name, seed, _, _ in _seed172_table()}


def _seed172_specs() -> list[ConceptSpec]:
    return [ConceptSpec(n, "seed172", d, c) for n, _, c, d in _seed172_table()]


def concept_specs() -> list[ConceptSpec]:
    """Every concept of `all_position_concepts`, in its column order."""
    return (_threat_specs() + _strategic_specs() + _capture_specs() + _study_specs() + _seed172_specs()
            + _board_state_specs())


# ---------------------------------------------------------------- per-board computations

def _as_board(b) -> chess.Board:
    return chess.Board(b) if isinstance(b, str) else b


def _from_side_to_move(board: chess.Board) -> chess.Board:
    """The board with the side to move as White; White-to-move boards are returned as they are.

    Same result as `board.mirror()`, but without copying the move stack, which can be long."""
    board = _as_board(board)
    if board.turn == chess.WHITE:
        return board
    mirrored = board.copy(stack=False)
    mirrored.apply_mirror()
    return mirrored


def _attack_masks(b: chess.Board) -> tuple[int, int, int, int]:
    """(defensive, offensive, own hanging, opp hanging) square masks of a White-to-move board.

    Only occupied squares can carry these concepts, so at most 32 squares are looked at. Kings are
    counted like any piece: an attacked king (check) is "defensive" when its own defenders of the
    square are fewer, while it is never hanging (it cannot be left en prise)."""
    own, kings = b.occupied_co[chess.WHITE], b.kings
    defensive = offensive = own_hanging = opp_hanging = 0
    for sq in chess.scan_forward(b.occupied):
        by_own = b.attackers_mask(chess.WHITE, sq).bit_count()
        by_opp = b.attackers_mask(chess.BLACK, sq).bit_count()
        bit = 1 << sq
        if own & bit:
            defensive |= bit if by_opp > by_own else 0
            own_hanging |= bit if by_opp and not by_own and not kings & bit else 0
        else:
            offensive |= bit if by_own > by_opp else 0
            opp_hanging |= bit if by_own and not by_opp and not kings & bit else 0
    return defensive, offensive, own_hanging, opp_hanging


def _passed_turn(b: chess.Board) -> chess.Board:
    """A copy of a White-to-move board with Black to move (a null move: the en-passant right lapses)."""
    flipped = b.copy(stack=False)
    flipped.turn = chess.BLACK
    flipped.ep_square = None
    return flipped


# A move can only give check if the moved piece lands on one of the king's queen lines or knight
# squares, or if it leaves a queen line (discovered check); castling moves a rook and en passant
# removes a pawn from a third square, so both are always tried. This filter skips pushing most
# moves, which is where the time of a mate search goes.
_CHECK_ZONE = [
    chess.BB_RANK_ATTACKS[sq][0] | chess.BB_FILE_ATTACKS[sq][0] | chess.BB_DIAG_ATTACKS[sq][0]
    | chess.BB_KNIGHT_ATTACKS[sq]
    for sq in chess.SQUARES
]


def _has_mate_in_one(b: chess.Board) -> bool:
    """Whether the side to move of `b` can give checkmate in one move."""
    king = b.king(not b.turn)
    if king is None:
        return False
    zone = _CHECK_ZONE[king]
    for move in b.generate_legal_moves():
        if not (zone >> move.from_square | zone >> move.to_square) & 1 and not b.is_castling(move) \
                and not b.is_en_passant(move):
            continue
        b.push(move)
        mate = b.is_checkmate()
        b.pop()
        if mate:
            return True
    return False


def _connected_rooks(b: chess.Board, color: chess.Color) -> bool:
    rooks = list(chess.scan_forward(b.rooks & b.occupied_co[color]))
    for i, r1 in enumerate(rooks):
        for r2 in rooks[i + 1 :]:
            aligned = chess.square_rank(r1) == chess.square_rank(r2) or chess.square_file(r1) == chess.square_file(r2)
            if aligned and not chess.between(r1, r2) & b.occupied:
                return True
    return False


def _bishop_pair(b: chess.Board, color: chess.Color) -> bool:
    bishops = b.bishops & b.occupied_co[color]
    return bool(bishops & chess.BB_LIGHT_SQUARES) and bool(bishops & chess.BB_DARK_SQUARES)


def _open_file_flags(b: chess.Board) -> tuple[bool, bool, bool, bool, bool]:
    """(own control, opp control, contested, own holds a file alone, opp holds a file alone) of the
    open files of a White-to-move board: ours judge all open files together, the study's each file."""
    heavy = b.rooks | b.queens
    own_any = opp_any = contested = own_file = opp_file = False
    for file_mask in chess.BB_FILES:
        if file_mask & b.pawns:
            continue
        own_here = bool(heavy & b.occupied_co[chess.WHITE] & file_mask)
        opp_here = bool(heavy & b.occupied_co[chess.BLACK] & file_mask)
        own_any |= own_here
        opp_any |= opp_here
        contested |= own_here and opp_here
        own_file |= own_here and not opp_here
        opp_file |= opp_here and not own_here
    return own_any and not opp_any, opp_any and not own_any, contested, own_file, opp_file


def _right_bishop_rook_pawn(b: chess.Board, color: chess.Color) -> bool:
    """The study's right-bishop concept for `color` on a White-to-move board: a passed a- or h-pawn
    promoting on a square of the colour of one of its bishops. Per rook file only the pawn on the
    highest rank counts (the study's code keeps the last pawn of a scan from rank 1 up)."""
    own_pawns, enemy_pawns = b.pawns & b.occupied_co[color], b.pawns & b.occupied_co[not color]
    bishops = b.bishops & b.occupied_co[color]
    for file in (0, 7):
        on_file = own_pawns & chess.BB_FILES[file]
        if not on_file:
            continue
        sq = chess.msb(on_file)
        rank = chess.square_rank(sq)
        # the study's "passed": no enemy pawn on the three files from the pawn's own rank forward
        ranks = range(rank, 8) if color == chess.WHITE else range(0, rank + 1)
        ahead = 0
        for r in ranks:
            ahead |= chess.BB_RANKS[r]
        span = chess.BB_FILES[file] | chess.BB_FILES[1 if file == 0 else 6]
        if enemy_pawns & ahead & span:
            continue
        promotion = chess.square(file, 7 if color == chess.WHITE else 0)
        same_colour = chess.BB_LIGHT_SQUARES if chess.BB_SQUARES[promotion] & chess.BB_LIGHT_SQUARES else chess.BB_DARK_SQUARES
        if bishops & same_colour:
            return True
    return False


def _can_capture_queen(b: chess.Board) -> bool:
    """Whether the side to move of `b` has a legal capture of an enemy queen."""
    queens = b.queens & b.occupied_co[not b.turn]
    return bool(queens) and any(b.generate_legal_captures(to_mask=queens))


def _capture_mask(b: chess.Board, to_mask: int = chess.BB_ALL) -> int:
    """Target squares of the legal captures (en passant: the square the pawn lands on), of those in
    `to_mask`."""
    mask = 0
    for move in b.generate_legal_captures(to_mask=to_mask):
        mask |= 1 << move.to_square
    return mask


def _strategic_row(b: chess.Board, own_hanging: int, opp_hanging: int) -> list[bool]:
    """The 13 strategic flags of a White-to-move board, in `_STRATEGIC` order."""
    in_check = b.is_check()
    passed = _passed_turn(b)
    # passing the turn while in check would leave the king capturable: no mate threat is defined then
    mate_threat = not in_check and _has_mate_in_one(passed)
    own_open, opp_open, contested = _open_file_flags(b)[:3]
    return [
        in_check,
        mate_threat,
        _connected_rooks(b, chess.WHITE),
        _connected_rooks(b, chess.BLACK),
        _bishop_pair(b, chess.WHITE),
        _bishop_pair(b, chess.BLACK),
        own_open,
        opp_open,
        contested,
        _can_capture_queen(b),
        _can_capture_queen(passed),
        bool(own_hanging),
        bool(opp_hanging),
    ]


def _study_row(b: chess.Board, ours: list[bool]) -> list[bool]:
    """The study's 13 strategic flags of a White-to-move board, in `_STUDY` order; `ours` is the
    board's `_strategic_row`, whose shared concepts are copied."""
    own_file, opp_file = _open_file_flags(b)[3:]
    row = [
        False,
        _has_mate_in_one(b),
        False,
        False,
        len(b.pieces(chess.BISHOP, chess.WHITE)) == 2,
        len(b.pieces(chess.BISHOP, chess.BLACK)) == 2,
        own_file,
        opp_file,
        False,
        False,
        False,
        _right_bishop_rook_pawn(b, chess.WHITE),
        _right_bishop_rook_pawn(b, chess.BLACK),
    ]
    for i, j in _STUDY_AS_OURS.items():
        row[i] = ours[j]
    return row


def _pinned_mask(b: chess.Board, color: chess.Color) -> int:
    """The pieces of `color` that python-chess's `is_pinned` calls pinned: the only piece between their
    king and an enemy rook or queen on its rank or file, or an enemy bishop or queen on its diagonals."""
    king = b.king(color)
    if king is None:
        return 0
    snipers = ((chess.BB_RANK_ATTACKS[king][0] | chess.BB_FILE_ATTACKS[king][0]) & (b.rooks | b.queens)
               | chess.BB_DIAG_ATTACKS[king][0] & (b.bishops | b.queens)) & b.occupied_co[not color]
    pinned = 0
    for sniper in chess.scan_forward(snipers):
        between = chess.between(king, sniper) & b.occupied
        if between and not between & (between - 1):  # exactly one piece between
            pinned |= between
    return pinned & b.occupied_co[color]


def _attacked_mask(b: chess.Board, color: chess.Color) -> int:
    """The squares a piece of `color` attacks (python-chess `is_attacked_by`, occupied or not)."""
    mask = 0
    for sq in chess.scan_forward(b.occupied_co[color]):
        mask |= b.attacks_mask(sq)
    return mask


def _king_danger(b: chess.Board, color: chess.Color, attacked_by_enemy: int) -> bool:
    king = b.king(color)
    return king is not None and (chess.BB_KING_ATTACKS[king] & attacked_by_enemy).bit_count() >= 5


def _forks(b: chess.Board, color: chess.Color, pinned: int) -> list[bool]:
    """The seed's (pawn, knight, bishop, rook) forks of `color`: a piece of that type not in `pinned`
    attacking two or more enemy pieces of the types it forks."""
    enemy = b.occupied_co[not color]
    heavy = enemy & (b.rooks | b.queens | b.kings)
    targets = (enemy & ~b.pawns, heavy, heavy, enemy & (b.queens | b.kings))
    free = b.occupied_co[color] & ~pinned
    # a pawn forks when both its capture squares hold a target: shifted target masks, no loop
    pawns = b.pawns & free & ~chess.BB_FILE_A & ~chess.BB_FILE_H
    t = targets[0]
    pawn_fork = bool(pawns & (t >> 7) & (t >> 9)) if color == chess.WHITE else bool(pawns & (t << 7) & (t << 9))
    out = [pawn_fork]
    for pieces, t in ((b.knights, targets[1]), (b.bishops, targets[2]), (b.rooks, targets[3])):
        out.append(t.bit_count() >= 2 and any((b.attacks_mask(sq) & t).bit_count() >= 2
                                              for sq in chess.scan_forward(pieces & free)))
    return out


def _seed_connected_rooks(b: chess.Board, color: chess.Color) -> bool:
    """The seed's connected rooks: a rank with nothing between two rooks, or a file where the rooks are
    on neighbouring ranks or the file's first-rank square is empty (its code's same-file test)."""
    rooks = list(chess.scan_forward(b.rooks & b.occupied_co[color]))
    for i, r1 in enumerate(rooks):
        for r2 in rooks[i + 1 :]:
            if chess.square_rank(r1) == chess.square_rank(r2):
                if not chess.between(r1, r2) & b.occupied:
                    return True
            elif chess.square_file(r1) == chess.square_file(r2):
                if abs(chess.square_rank(r1) - chess.square_rank(r2)) == 1 \
                        or not b.occupied & chess.BB_SQUARES[chess.square_file(r1)]:
                    return True
    return False


_SEED172_OWN_SQUARES = [chess.parse_square(s) for s in _SEED172_CAPTURE_SQUARES]
_SEED172_OPP_SQUARES = [chess.square_mirror(sq) for sq in _SEED172_OWN_SQUARES]
_SEED172_OWN_MASK = sum(1 << sq for sq in _SEED172_OWN_SQUARES)
_SEED172_OPP_MASK = sum(1 << sq for sq in _SEED172_OPP_SQUARES)


def _seed172_row(b: chess.Board) -> list[bool]:
    """The 44 non-square seed172 flags of a White-to-move board in the family's order, the 128 square
    threats left out (king danger and queen captures, forks, pins, structure and the 16 captures)."""
    own, opp = b.occupied_co[chess.WHITE], b.occupied_co[chess.BLACK]
    # only captures landing on the seed's squares or on a queen are asked for
    captures = _capture_mask(b, _SEED172_OWN_MASK | b.queens & opp)
    opp_captures = _capture_mask(_passed_turn(b), _SEED172_OPP_MASK | b.queens & own)
    own_pins, opp_pins = _pinned_mask(b, chess.WHITE), _pinned_mask(b, chess.BLACK)
    own_forks, opp_forks = _forks(b, chess.WHITE, own_pins), _forks(b, chess.BLACK, opp_pins)
    contested, own_file, opp_file = _open_file_flags(b)[2:]
    row = [
        _king_danger(b, chess.WHITE, _attacked_mask(b, chess.BLACK)),
        _king_danger(b, chess.BLACK, _attacked_mask(b, chess.WHITE)),
        bool(captures & b.queens & opp),
        bool(opp_captures & b.queens & own),
    ]
    for i in range(3):  # pawn, knight, bishop
        row += [own_forks[i], opp_forks[i]]
    row.append(opp_forks[3])  # the rook: the seed's 172 have no own rook fork
    for pieces in (b.pawns, b.knights, b.bishops, b.rooks, b.queens):
        row += [bool(own_pins & pieces), bool(opp_pins & pieces)]
    row += [
        _seed_connected_rooks(b, chess.WHITE),
        _seed_connected_rooks(b, chess.BLACK),
        len(b.pieces(chess.BISHOP, chess.WHITE)) == 2,
        len(b.pieces(chess.BISHOP, chess.BLACK)) == 2,
        own_file,
        opp_file,
        contested,
    ]
    row += [bool(captures >> sq & 1) for sq in _SEED172_OWN_SQUARES]
    row += [bool(opp_captures >> sq & 1) for sq in _SEED172_OPP_SQUARES]
    return row


def _piece_masks(b: chess.Board) -> list[int]:
    return [b.pieces_mask(pt, color) for color in (chess.WHITE, chess.BLACK) for pt in chess.PIECE_TYPES]


# ---------------------------------------------------------------- batching

def _unpack(masks: list[list[int]], n_masks: int) -> torch.Tensor:
    """bool [N, n_masks * 64] from per-position lists of 64-bit square masks (bit i = square i)."""
    arr = np.asarray(masks, dtype="<u8").reshape(len(masks), n_masks)
    bits = np.unpackbits(arr.view(np.uint8), axis=1, bitorder="little")
    return torch.from_numpy(bits.astype(bool))


def _names(specs: list[ConceptSpec]) -> list[str]:
    return [s.name for s in specs]


def threat_concepts(boards) -> BoardConcepts:
    """The 128 square-wise threat concepts: 64 defensive@a1..h8, then 64 offensive@a1..h8.

    `boards`: python-chess boards (or FEN strings); Black-to-move ones are mirrored first."""
    rows = [_attack_masks(_from_side_to_move(b))[:2] for b in boards]
    return BoardConcepts(_unpack(rows, 2), _names(_threat_specs()))


def strategic_concepts(boards) -> BoardConcepts:
    """The 13 strategic concepts, then the 64 capture_possible@a1..h8 concepts.

    `boards`: python-chess boards (or FEN strings); Black-to-move ones are mirrored first."""
    flags, captures = [], []
    for board in boards:
        b = _from_side_to_move(board)
        flags.append(_strategic_row(b, *_attack_masks(b)[2:]))
        captures.append([_capture_mask(b)])
    labels = torch.cat([torch.tensor(flags, dtype=torch.bool).reshape(-1, len(_STRATEGIC)), _unpack(captures, 1)], 1)
    return BoardConcepts(labels, _names(_strategic_specs() + _capture_specs()))


def study_concepts(boards) -> BoardConcepts:
    """The study's 13 strategic concepts (family "study"), as its code defines them.

    `boards`: python-chess boards (or FEN strings); Black-to-move ones are mirrored first."""
    rows = []
    for board in boards:
        b = _from_side_to_move(board)
        rows.append(_study_row(b, _strategic_row(b, *_attack_masks(b)[2:])))
    return BoardConcepts(torch.tensor(rows, dtype=torch.bool).reshape(-1, len(_STUDY)), _names(_study_specs()))


def board_state_concepts(boards) -> BoardConcepts:
    """The 768 piece-on-square concepts, named and ordered as `piece_square_concepts` names them."""
    rows = [_piece_masks(_from_side_to_move(b)) for b in boards]
    return BoardConcepts(_unpack(rows, 12), _names(_board_state_specs()))


def _seed172_labels(flags: torch.Tensor, threat: list[list[int]]) -> list[torch.Tensor]:
    """The seed's column order: king and queen safety (4 flags), the 128 square threats, the other 40 flags."""
    return [flags[:, :4], _unpack(threat, 2), flags[:, 4:]]


def seed172_concepts(boards) -> BoardConcepts:
    """The 172 concepts of the seed's revision (family "seed172"), in its order.

    `boards`: python-chess boards (or FEN strings); Black-to-move ones are mirrored first."""
    return position_concepts(boards, ["seed172"])


# concept families a stage can select (threats.families, probe.families), in `concept_specs()` order;
# "seed172:<category>" selects one of SEED172_CATEGORIES
FAMILIES = ("threat", "strategic", "capture", "study", "seed172", "board-state")


def _known_family(f) -> bool:
    family, colon, category = str(f).partition(":")
    return family == "seed172" and category in SEED172_CATEGORIES if colon else family in FAMILIES


def check_families(families, key: str = "threats.families") -> None:
    for f in families:
        if not _known_family(f):
            raise ConfigError(f"{key}: unknown family '{f}': expected some of {', '.join(FAMILIES)}, or one category "
                              f"of seed172 as seed172:<category> ({', '.join(SEED172_CATEGORIES)})")


def _chosen(spec: ConceptSpec, families) -> bool:
    return spec.family in families or f"{spec.family}:{spec.category}" in families


def position_concepts(boards, families=FAMILIES) -> BoardConcepts:
    """The concepts of `families` (names as `check_families` takes them) in `concept_specs()` order,
    computing only those families.

    Each board is mirrored and its attack counts computed once for all families."""
    families = list(families)
    check_families(families, "families")
    need = {str(f).partition(":")[0] for f in families}
    threat, flags, captures, study, seed172, pieces = [], [], [], [], [], []
    n = 0
    for n, board in enumerate(boards, 1):
        b = _from_side_to_move(board)
        if need & {"threat", "strategic", "study", "seed172"}:
            defensive, offensive, own_hanging, opp_hanging = _attack_masks(b)
            threat.append([defensive, offensive])
        if "capture" in need:
            captures.append([_capture_mask(b)])
        if need & {"strategic", "study"}:
            flags.append(_strategic_row(b, own_hanging, opp_hanging))
        if "study" in need:
            study.append(_study_row(b, flags[-1]))
        if "seed172" in need:
            seed172.append(_seed172_row(b))
        if "board-state" in need:
            pieces.append(_piece_masks(b))
    as_tensor = lambda rows, width: torch.tensor(rows, dtype=torch.bool).reshape(-1, width)
    blocks = {
        "threat": lambda: [_unpack(threat, 2)],
        "strategic": lambda: [as_tensor(flags, len(_STRATEGIC))],
        "capture": lambda: [_unpack(captures, 1)],
        "study": lambda: [as_tensor(study, len(_STUDY))],
        "seed172": lambda: _seed172_labels(as_tensor(seed172, 44), threat),
        "board-state": lambda: [_unpack(pieces, 12)],
    }
    parts = [p for family in FAMILIES if family in need for p in blocks[family]()]
    specs = [s for s in concept_specs() if s.family in need]
    labels = torch.cat(parts, 1) if parts else torch.zeros(n, 0, dtype=torch.bool)
    keep = [i for i, s in enumerate(specs) if _chosen(s, families)]
    if len(keep) < len(specs):
        labels, specs = labels[:, keep], [specs[i] for i in keep]
    return BoardConcepts(labels, _names(specs))


def all_position_concepts(boards) -> BoardConcepts:
    """Every family's concepts (threat, strategic, capture, study, seed172, board-state), in
    `concept_specs()` order."""
    return position_concepts(boards, FAMILIES)


def select_families(concepts: BoardConcepts, families) -> tuple[BoardConcepts, list]:
    """The columns of `families` (and their specs) out of concepts labelled for them, e.g. by
    `position_concepts(boards, families)` or `all_position_concepts`."""
    check_families(families)
    column = {n: j for j, n in enumerate(concepts.names)}
    specs = [s for s in concept_specs() if _chosen(s, list(families))]
    missing = [s.name for s in specs if s.name not in column]
    if missing:
        raise MaiaAdaptError(f"select_families: the concepts have no column '{missing[0]}' ({len(missing)} missing): "
                             "label the positions with position_concepts(boards, families)")
    keep = [column[s.name] for s in specs]
    return BoardConcepts(concepts.labels[:, keep], [s.name for s in specs]), specs
