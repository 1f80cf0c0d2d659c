"""The real square a concept names, and whether a move resolves a square threat: the seed's test of
which positions an intervention is judged on (`is_piece_no_longer_under_attack`,
run_sae_intervention.py:25-50 of its NeurIPS code).

Concept names are from the side to move's point of view, as the threat family's (a Black-to-move
board mirrored: `defensive@e1` is Black's piece on e8). A threat holds on a square when a piece
stands there and more pieces of the other colour attack it than its own colour defend it
(python-chess `attackers`, pinned pieces included, x-rays excluded). A move resolves it when the threat
holds before the move and not after it: the piece moved away, was defended, the attacker was taken or
blocked, or (offensive) the piece was captured.
"""
from __future__ import annotations

import chess

from ..errors import MaiaAdaptError


def concept_square(concept: str, fen: str) -> int | None:
    """Real board square named by a concept like "defensive@e4", or None if it names no square.

    Concept squares are in Maia-2's frame: Black-to-move boards are mirrored so the side to move
    always plays "up", hence the square must be mirrored back for a real Black-to-move position.
    """
    if "@" not in concept:
        return None
    square = chess.parse_square(concept.rsplit("@", 1)[1])
    return square if chess.Board(fen).turn == chess.WHITE else chess.square_mirror(square)


def _threatened(board: chess.Board, square: int, owner: chess.Color) -> bool:
    piece = board.piece_at(square)
    return (piece is not None and piece.color == owner
            and len(board.attackers(not owner, square)) > len(board.attackers(owner, square)))


def threat_resolved(fen: str, move: str, concept: str) -> bool:
    """Does `move` (UCI, real colours) resolve the threat `concept` (defensive@<sq> or offensive@<sq>)
    of the position `fen`? False when the threat does not hold before the move."""
    kind, _, name = concept.partition("@")
    if kind not in ("defensive", "offensive") or name not in chess.SQUARE_NAMES:
        raise MaiaAdaptError(f"'{concept}': expected a square threat concept, defensive@<square> or offensive@<square>")
    board = chess.Board(fen)
    mover = board.turn
    square = concept_square(concept, fen)
    owner = mover if kind == "defensive" else not mover
    if not _threatened(board, square, owner):
        return False
    board.push(board.parse_uci(move))
    return not _threatened(board, square, owner)
