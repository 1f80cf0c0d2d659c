"""The Maia-2 move vocabulary (1880 UCI moves) and move mirroring.

The order is the official one: for every square (a1..h8) the moves of a lone white queen, then of a
lone white knight, as python-chess generates them, then the white under/promotions from rank 7.
Moves are always expressed from the side to move, which is White after mirroring.
"""
from __future__ import annotations

from functools import lru_cache

import chess
import numpy as np

NUM_MOVES = 1880
PROMOTION_PIECES = "qrbn"


def _promotions() -> list[str]:
    out = []
    for file in "abcdefgh":
        targets = [file]
        if file != "a":
            targets.append(chr(ord(file) - 1))
        if file != "h":
            targets.append(chr(ord(file) + 1))
        for target in targets:
            out.extend(f"{file}7{target}8{p}" for p in PROMOTION_PIECES)
    return out


@lru_cache(maxsize=1)
def all_moves() -> tuple[str, ...]:
    moves: list[str] = []
    for square in chess.SQUARES:
        for piece in (chess.QUEEN, chess.KNIGHT):
            board = chess.Board(None)
            board.set_piece_at(square, chess.Piece(piece, chess.WHITE))
            moves.extend(m.uci() for m in board.legal_moves)
    moves.extend(_promotions())
    assert len(moves) == NUM_MOVES, len(moves)
    return tuple(moves)


@lru_cache(maxsize=1)
def move_to_index() -> dict[str, int]:
    return {m: i for i, m in enumerate(all_moves())}


@lru_cache(maxsize=1)
def move_table() -> np.ndarray:
    """int16 [5, 64, 64]: index of (promotion, from, to); promotion 0 = none, 1..4 = q, r, b, n.

    -1 where the move is not in the vocabulary. Lets encoders look moves up without strings.
    """
    table = np.full((5, 64, 64), -1, dtype=np.int16)
    for i, uci in enumerate(all_moves()):
        m = chess.Move.from_uci(uci)
        promo = 0 if m.promotion is None else 1 + "qrbn".index(chess.piece_symbol(m.promotion))
        table[promo, m.from_square, m.to_square] = i
    return table


@lru_cache(maxsize=1)
def index_from_to() -> np.ndarray:
    """int64 [1880, 2]: from and to square of every vocabulary move."""
    out = np.zeros((NUM_MOVES, 2), dtype=np.int64)
    for i, uci in enumerate(all_moves()):
        m = chess.Move.from_uci(uci)
        out[i] = (m.from_square, m.to_square)
    return out


def mirror_square_name(square: str) -> str:
    return square[0] + str(9 - int(square[1]))


def mirror_move(uci: str) -> str:
    """Flip a UCI move top to bottom (a2a4 -> a7a5); promotion suffix kept."""
    return mirror_square_name(uci[:2]) + mirror_square_name(uci[2:4]) + uci[4:]


def encode_move(move: chess.Move, white_to_move: bool) -> int:
    """Vocabulary index of a move played in a position with the given side to move."""
    frm, to = move.from_square, move.to_square
    if not white_to_move:
        frm, to = chess.square_mirror(frm), chess.square_mirror(to)
    promo = 0 if move.promotion is None else 1 + "qrbn".index(chess.piece_symbol(move.promotion))
    idx = int(move_table()[promo, frm, to])
    if idx < 0:
        raise ValueError(f"move {move.uci()} is not in the Maia-2 vocabulary")
    return idx


def decode_move(index: int, white_to_move: bool) -> str:
    """UCI string of a vocabulary index, un-mirrored for the real side to move."""
    uci = all_moves()[index]
    return uci if white_to_move else mirror_move(uci)
