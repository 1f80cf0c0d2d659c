"""Whether a move resolves a square threat: the seed's test of which positions an intervention is
judged on (`is_piece_no_longer_under_attack`, run_sae_intervention.py:25-50 of its NeurIPS code).

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
    square = chess.parse_square(name)
    if mover == chess.BLACK:  # the concept's square is named on the mirrored board
        square = chess.square_mirror(square)
    owner = mover if kind == "defensive" else not mover
    if not _threatened(board, square, owner):
        return False
    board.push(board.parse_uci(move))
    return not _threatened(board, square, owner)
