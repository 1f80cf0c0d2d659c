"""Maia-3's inputs and move vocabulary, written from its published description and checked against
the maia3-runtime package (tests/test_maia3.py; that package is AGPL-3.0 and only a test reference).

Tokens. A position is 64 square tokens (a1, b1, ..., h8). Each token holds 12 piece bits for each of
the last `history` positions (oldest first, the current position last): token[sq, 12 * j + c] is
1 when square sq of history slot j holds piece c, c = piece type - 1 (P N B R Q K) for the side to
move in that position and 6 + piece type - 1 for the other side. Every position is written in its
own side-to-move frame: one where Black moves is mirrored top to bottom with the colours swapped
(python-chess `Board.mirror()`), so consecutive history slots alternate between the two players'
frames. A game shorter than `history` positions repeats its first position in the missing slots.

Moves. 4352 moves in the side-to-move frame (a Black move is mirrored top to bottom, as Maia-2's):
index from * 64 + to for every square pair (4096, most of them no chess move), then 256 promotions
4096 + 32 * from_file + 4 * to_file + piece, piece 0..3 = q r b n, from rank 7 to rank 8. Every
legal move is in both this vocabulary and Maia-2's 1880-move one; `maia2_to_maia3` maps ours into
theirs and `maia3_to_maia2` back (-1 for their entries no chess move can be).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import chess
import numpy as np

from ..errors import DataError
from .vocab import NUM_MOVES, PROMOTION_PIECES, all_moves

MAIA3_MOVES = 4096 + 8 * 8 * 4
MAIA3_HISTORY = 8
PIECE_CHANNELS = 12


@lru_cache(maxsize=1)
def maia3_moves() -> tuple[str, ...]:
    """The 4352 moves as UCI strings in the side-to-move frame (a1a1 is index 0: no move at all)."""
    names = chess.SQUARE_NAMES
    out = [names[f] + names[t] for f in range(64) for t in range(64)]
    out += [f"{ff}7{ft}8{p}" for ff in "abcdefgh" for ft in "abcdefgh" for p in PROMOTION_PIECES]
    return tuple(out)


def maia3_move_index(uci: str) -> int:
    """Index of a side-to-move-frame UCI move in the 4352 vocabulary (ValueError if it has none)."""
    m = chess.Move.from_uci(uci)
    if m.promotion is None:
        return m.from_square * 64 + m.to_square
    if chess.square_rank(m.from_square) != 6 or chess.square_rank(m.to_square) != 7 or m.promotion == chess.KING:
        raise ValueError(f"promotion {uci} is not in the Maia-3 vocabulary (rank 7 to rank 8, q r b n)")
    piece = PROMOTION_PIECES.index(chess.piece_symbol(m.promotion))
    return 4096 + 32 * chess.square_file(m.from_square) + 4 * chess.square_file(m.to_square) + piece


@lru_cache(maxsize=1)
def maia2_to_maia3() -> np.ndarray:
    """int64 [1880]: the Maia-3 index of every Maia-2 vocabulary move (a gather of Maia-3 logits
    with it gives logits in Maia-2's order)."""
    return np.array([maia3_move_index(u) for u in all_moves()], dtype=np.int64)


@lru_cache(maxsize=1)
def maia3_to_maia2() -> np.ndarray:
    """int64 [4352]: the Maia-2 index of every Maia-3 move, -1 where Maia-2 has none (square pairs no
    piece can join, a square to itself, promotions more than one file aside)."""
    out = np.full(MAIA3_MOVES, -1, dtype=np.int64)
    out[maia2_to_maia3()] = np.arange(NUM_MOVES)
    return out


def _square_bits(mask: int) -> np.ndarray:
    """A 64-bit square set as 64 booleans, a1 first."""
    return np.unpackbits(np.array([mask], dtype="<u8").view(np.uint8), bitorder="little").astype(bool)


def position_tokens(board: chess.Board) -> np.ndarray:
    """bool [64, 12]: one position's piece bits in its own side-to-move frame (see the module doc)."""
    own, other = board.turn, not board.turn
    out = np.zeros((64, PIECE_CHANNELS), dtype=bool)
    for c, (color, piece) in enumerate((col, p) for col in (own, other) for p in chess.PIECE_TYPES):
        mask = board.pieces_mask(piece, color)
        out[:, c] = _square_bits(chess.flip_vertical(mask) if board.turn == chess.BLACK else mask)
    return out


def stack_history(frames: Sequence[np.ndarray], history: int = MAIA3_HISTORY) -> np.ndarray:
    """float32 [64, 12 * history] from up to `history` per-position frames, oldest first; a short
    list repeats its first frame in front (how Maia-3 infers early in a game)."""
    frames = list(frames)[-history:]
    if not frames:
        raise DataError("Maia-3 tokens need at least one position")
    frames = [frames[0]] * (history - len(frames)) + frames
    return np.concatenate(frames, axis=1).astype(np.float32)


def maia3_tokens(board: chess.Board, history: int = MAIA3_HISTORY) -> np.ndarray:
    """float32 [64, 12 * history] of a python-chess board; its move stack is the history (a board
    set from a FEN has none, so its position fills every slot)."""
    b = board.copy()
    frames = [position_tokens(b)]
    while b.move_stack and len(frames) < history:
        b.pop()
        frames.append(position_tokens(b))
    return stack_history(frames[::-1], history)


def maia3_tokens_game(start_fen: str | None, moves_uci: Sequence[str], plies: Sequence[int],
                      history: int = MAIA3_HISTORY) -> np.ndarray:
    """float32 [len(plies), 64, 12 * history]: the tokens before the move at each ply of one game
    (ply 0 = its start), replaying the game once."""
    plies = np.asarray(plies, dtype=np.int64).reshape(-1)
    if len(plies) and (plies.min() < 0 or plies.max() > len(moves_uci)):
        raise DataError(f"plies must lie in [0, {len(moves_uci)}] for a game of {len(moves_uci)} moves, "
                        f"got {int(plies.min())}..{int(plies.max())}")
    try:
        board = chess.Board(start_fen) if start_fen else chess.Board()
    except ValueError as e:
        raise DataError(f"bad start FEN {start_fen!r}: {e}") from None
    upto = int(plies.max()) if len(plies) else 0
    frames = [position_tokens(board)]
    for uci in moves_uci[:upto]:
        board.push_uci(uci)
        frames.append(position_tokens(board))
    out = np.zeros((len(plies), 64, PIECE_CHANNELS * history), dtype=np.float32)
    for j, k in enumerate(plies.tolist()):
        out[j] = stack_history(frames[max(0, k - history + 1):k + 1], history)
    return out
