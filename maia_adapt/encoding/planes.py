"""Board planes, legal-move masks and side-info targets, identical to the official Maia-2 encoders.

Positions are always seen from the side to move: a Black-to-move position is mirrored (flipped top
to bottom, colours swapped), exactly as `chess.Board.mirror()` does, so the mover is White.

A position is packed as 12 uint64 bitboards (white P N B R Q K, black P N B R Q K, after
mirroring), a flags byte (bit 0 turn = White, bits 1-4 castling K Q k q) and an en-passant square
(-1 for none). Planes are unpacked from these with numpy in batches, never square by square.
"""
from __future__ import annotations

from dataclasses import dataclass

import chess
import numpy as np

from ..errors import MaiaAdaptError
from .vocab import NUM_MOVES, all_moves, index_from_to, move_table

NUM_PLANES = 18
SIDE_INFO_DIM = NUM_MOVES + 6 + 6 + 1 + 64 + 64
LEGAL_BYTES = (NUM_MOVES + 7) // 8
_PIECE_ATTRS = ("pawns", "knights", "bishops", "rooks", "queens", "kings")


def parse_fen(fen: str) -> chess.Board:
    """A python-chess board from a FEN, with a one-line error for a bad or illegal position."""
    try:
        board = chess.Board(fen)
    except ValueError as e:
        raise MaiaAdaptError(f"bad FEN {fen!r}: {e}") from None
    status = board.status()
    if status != chess.STATUS_VALID:
        flags = [n for n in dir(chess.Status) if n.isupper() and getattr(chess.Status, n) & status]
        raise MaiaAdaptError(f"FEN {fen!r} is not a legal chess position ({', '.join(flags)})")
    if board.is_game_over(claim_draw=False) and not any(board.generate_legal_moves()):
        raise MaiaAdaptError(f"FEN {fen!r} has no legal moves (checkmate or stalemate)")
    return board



@dataclass
class PackedBoards:
    bitboards: np.ndarray  # uint64 [N, 12]
    flags: np.ndarray  # uint8 [N]
    ep: np.ndarray  # int8 [N]

    def __len__(self) -> int:
        return len(self.flags)


def _flip(mask: int) -> int:
    return chess.flip_vertical(mask)


def pack_board(board: chess.Board, legal_ep_only: bool = False) -> tuple[list[int], int, int]:
    """Bitboards, flags and ep square of `board` seen from its side to move.

    legal_ep_only=True keeps the en-passant square only when an en-passant capture is legal, which is
    what the official pipeline sees after its FEN round trip (python-chess writes legal ep squares).
    """
    white = board.turn == chess.WHITE
    us, them = (chess.WHITE, chess.BLACK) if white else (chess.BLACK, chess.WHITE)
    occ_us, occ_them = board.occupied_co[us], board.occupied_co[them]
    masks = [getattr(board, a) & occ_us for a in _PIECE_ATTRS]
    masks += [getattr(board, a) & occ_them for a in _PIECE_ATTRS]
    if not white:
        masks = [_flip(m) for m in masks]
    flags = 1  # after mirroring the mover is always White
    rights = (
        board.has_kingside_castling_rights(us),
        board.has_queenside_castling_rights(us),
        board.has_kingside_castling_rights(them),
        board.has_queenside_castling_rights(them),
    )
    for i, r in enumerate(rights):
        if r:
            flags |= 1 << (i + 1)
    ep = board.ep_square
    if ep is not None and legal_ep_only and not board.has_legal_en_passant():
        ep = None
    if ep is None:
        ep_sq = -1
    else:
        ep_sq = ep if white else chess.square_mirror(ep)
    return masks, flags, ep_sq


def pack_boards(boards, legal_ep_only: bool = False) -> PackedBoards:
    rows = [pack_board(b, legal_ep_only) for b in boards]
    n = len(rows)
    bb = np.empty((n, 12), dtype=np.uint64)
    flags = np.empty(n, dtype=np.uint8)
    ep = np.empty(n, dtype=np.int8)
    for i, (m, f, e) in enumerate(rows):
        bb[i] = m
        flags[i] = f
        ep[i] = e
    return PackedBoards(bb, flags, ep)


def unpack_planes(bitboards: np.ndarray, flags: np.ndarray, ep: np.ndarray) -> np.ndarray:
    """float32 [N, 18, 8, 8] planes from packed positions (vectorised)."""
    n = len(flags)
    bb = np.ascontiguousarray(bitboards, dtype="<u8")
    bits = np.unpackbits(bb.view(np.uint8).reshape(n, 12, 8), axis=-1, bitorder="little")
    planes = np.zeros((n, NUM_PLANES, 64), dtype=np.float32)
    planes[:, :12] = bits.reshape(n, 12, 64)
    fl = np.unpackbits(np.asarray(flags, dtype=np.uint8)[:, None], axis=1, bitorder="little")[:, :5]
    planes[:, 12:17] = fl[:, :, None]
    ep = np.asarray(ep)
    has = ep >= 0
    planes[np.nonzero(has)[0], 17, ep[has].astype(np.int64)] = 1.0
    return planes.reshape(n, NUM_PLANES, 8, 8)


def board_planes(boards) -> np.ndarray:
    """Planes of python-chess boards (mirrored for Black to move), as the official encoder gives them."""
    p = pack_boards(list(boards))
    return unpack_planes(p.bitboards, p.flags, p.ep)


def legal_move_indices(board: chess.Board, moves: list[chess.Move] | None = None) -> np.ndarray:
    """Vocabulary indices of the legal moves of `board` (mirrored for Black to move).

    `moves` may pass the already generated legal moves of `board`, to avoid generating them twice.
    """
    if moves is None:
        moves = list(board.generate_legal_moves())
    if not moves:
        return np.zeros(0, dtype=np.int64)
    # python-chess piece types N=2 B=3 R=4 Q=5 -> vocabulary promotion codes q=1 r=2 b=3 n=4
    arr = np.array(
        [(m.from_square, m.to_square, 0 if m.promotion is None else 6 - m.promotion) for m in moves],
        dtype=np.int64,
    )
    if board.turn == chess.BLACK:
        arr[:, :2] ^= 56
    return move_table()[arr[:, 2], arr[:, 0], arr[:, 1]].astype(np.int64)


def legal_mask(boards) -> np.ndarray:
    """bool [N, 1880] legal-move masks."""
    boards = list(boards)
    out = np.zeros((len(boards), NUM_MOVES), dtype=bool)
    for i, b in enumerate(boards):
        out[i, legal_move_indices(b)] = True
    return out


def pack_mask(mask: np.ndarray) -> np.ndarray:
    return np.packbits(mask, axis=-1, bitorder="little")


def unpack_mask(packed: np.ndarray) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, count=NUM_MOVES, bitorder="little").astype(bool)


def _castle_indices() -> tuple[int, int]:
    moves = all_moves()
    return moves.index("e1g1"), moves.index("e1c1")


def side_info_targets(
    move_idx: np.ndarray,
    moving_piece: np.ndarray,
    captured_piece: np.ndarray,
    gives_check: np.ndarray,
    legal: np.ndarray,
) -> np.ndarray:
    """float32 [N, 2021] side-info targets, as the official `get_side_info` builds them.

    moving_piece and captured_piece are python-chess piece types (captured 0 = none, en passant = 1);
    legal is a bool [N, 1880] mask. As in the official code, a vocabulary move e1g1 / e1c1 counts as
    castling (rook bit and rook squares set) whatever piece makes it.
    """
    move_idx = np.asarray(move_idx, dtype=np.int64)
    n = len(move_idx)
    out = np.zeros((n, SIDE_INFO_DIM), dtype=np.float32)
    rows = np.arange(n)
    out[rows, np.asarray(moving_piece, dtype=np.int64) - 1] = 1.0
    ks, qs = _castle_indices()
    out[np.isin(move_idx, (ks, qs)), 3] = 1.0
    cap = np.asarray(captured_piece, dtype=np.int64)
    has_cap = cap > 0
    out[rows[has_cap], 6 + cap[has_cap] - 1] = 1.0
    out[:, 12] = np.asarray(gives_check, dtype=np.float32)
    ft = index_from_to()[move_idx]
    out[rows, 13 + ft[:, 0]] = 1.0
    out[rows, 13 + 64 + ft[:, 1]] = 1.0
    for idx, (rf, rt) in ((ks, (chess.H1, chess.F1)), (qs, (chess.A1, chess.D1))):
        sel = rows[move_idx == idx]
        out[sel, 13 + rf] = 1.0
        out[sel, 13 + 64 + rt] = 1.0
    out[:, 13 + 128 :] = legal
    return out


def move_facts(board: chess.Board, move: chess.Move) -> tuple[int, int]:
    """(moving piece type, captured piece type or 0) of a move, en passant counted as a pawn capture."""
    moving = board.piece_type_at(move.from_square)
    if moving is None:
        raise ValueError(f"no piece on {chess.square_name(move.from_square)} for move {move.uci()}")
    if board.is_en_passant(move):
        return moving, chess.PAWN
    captured = board.piece_type_at(move.to_square)
    return moving, captured or 0
