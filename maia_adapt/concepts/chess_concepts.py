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
  board-state  768  <own|opp>_<piece>@<sq>, the same names and order as `piece_square_concepts`

Attack counts use python-chess `attackers_mask` semantics: every piece whose move pattern reaches
the square on the current board, pinned pieces included, x-rays (a rook behind a rook) excluded.

Speed, measured on one core (taskset, Python 3.11, python-chess 1.11), best of 3 over the 5,451
lichess puzzle positions, before the study family was added: `all_position_concepts` ~4,600
positions/s (~3,900/s on the 1,497 STS middlegames); threat alone ~24,000/s, strategic + capture
~4,700/s (the mate-in-one search after a passed turn takes two thirds of it), board-state
~170,000/s. The study family's own mate-in-one search (for the side to move) makes
`all_position_concepts` 0.67x as fast (old and new timed in one run on one core of a loaded machine).
"""
from __future__ import annotations

from dataclasses import dataclass

import chess
import numpy as np
import torch

from ..errors import ConfigError
from .board import BoardConcepts

_PIECES = ["pawn", "knight", "bishop", "rook", "queen", "king"]
_SQUARES = [chess.square_name(sq) for sq in chess.SQUARES]


@dataclass(frozen=True)
class ConceptSpec:
    name: str
    family: str
    definition: str


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


def concept_specs() -> list[ConceptSpec]:
    """Every concept of `all_position_concepts`, in its column order."""
    return _threat_specs() + _strategic_specs() + _capture_specs() + _study_specs() + _board_state_specs()


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


def _capture_mask(b: chess.Board) -> int:
    """Target squares of the legal captures (en passant: the square the pawn lands on)."""
    mask = 0
    for move in b.generate_legal_captures():
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


def all_position_concepts(boards) -> BoardConcepts:
    """Threat, strategic (with capture_possible), study and board-state concepts, in `concept_specs()`
    order.

    Each board is mirrored and its attack counts computed once for all families."""
    threat, flags, captures, study, pieces = [], [], [], [], []
    for board in boards:
        b = _from_side_to_move(board)
        defensive, offensive, own_hanging, opp_hanging = _attack_masks(b)
        threat.append([defensive, offensive])
        flags.append(_strategic_row(b, own_hanging, opp_hanging))
        captures.append([_capture_mask(b)])
        study.append(_study_row(b, flags[-1]))
        pieces.append(_piece_masks(b))
    labels = torch.cat(
        [
            _unpack(threat, 2),
            torch.tensor(flags, dtype=torch.bool).reshape(-1, len(_STRATEGIC)),
            _unpack(captures, 1),
            torch.tensor(study, dtype=torch.bool).reshape(-1, len(_STUDY)),
            _unpack(pieces, 12),
        ],
        1,
    )
    return BoardConcepts(labels, _names(concept_specs()))


# concept families a stage can select (threats.families, probe.families)
FAMILIES = ("threat", "strategic", "capture", "study", "board-state")


def check_families(families, key: str = "threats.families") -> None:
    for f in families:
        if f not in FAMILIES:
            raise ConfigError(f"{key}: unknown family '{f}': expected some of {', '.join(FAMILIES)}")


def select_families(concepts: BoardConcepts, families) -> tuple[BoardConcepts, list]:
    check_families(families)
    specs = concept_specs()
    keep = [i for i, s in enumerate(specs) if s.family in families]
    return BoardConcepts(concepts.labels[:, keep], [specs[i].name for i in keep]), [specs[i] for i in keep]
