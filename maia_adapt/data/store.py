"""The on-disk position store that training, activation caching and analyses read.

A store is a folder of shards, each a set of memory-mapped `.npy` arrays (one per field), a games
table and `manifest.json`. The manifest is written last and atomically: a folder without one is an
unfinished store and is never opened as valid. Boards are kept as bitboards (12 x uint64) and legal
moves as 1880-bit masks; planes and side-info targets are decoded per batch with numpy.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import chess
import numpy as np
import torch

from ..encoding import NUM_MOVES, pack_board, pack_mask, side_info_targets, unpack_mask, unpack_planes
from ..encoding.elo import as_bucket
from ..encoding.planes import LEGAL_BYTES, legal_move_indices
from ..errors import DataError
from ..io import to_json
from .pgn import EVAL_MISSING

# 2: games.json holds each game's start_fen and moves (UCI), so positions can be replayed with history
VERSION = 2
# field -> (dtype, per-position shape)
FIELDS: dict[str, tuple[str, tuple[int, ...]]] = {
    "bitboards": ("<u8", (12,)),
    "flags": ("u1", ()),
    "ep": ("i1", ()),
    "legal": ("u1", (LEGAL_BYTES,)),
    "move": ("<i2", ()),
    "moving_piece": ("u1", ()),
    "captured": ("u1", ()),
    "check": ("?", ()),
    "elo_self": ("u1", ()),
    "elo_oppo": ("u1", ()),
    "rating_self": ("<i2", ()),
    "rating_oppo": ("<i2", ()),
    "value": ("i1", ()),
    "eval_cp": ("<i2", ()),
    "eval_before": ("<i2", ()),
    "game_id": ("<i4", ()),
    "ply": ("<i2", ()),
    "halfmove": ("u1", ()),
}
SPLITS = ("train", "val", "test")


def empty_columns(n: int = 0) -> dict[str, np.ndarray]:
    return {k: np.zeros((n, *shape), dtype=dt) for k, (dt, shape) in FIELDS.items()}


def game_split(key: str, seed: int, val_fraction: float, test_fraction: float) -> int:
    """0 train, 1 val, 2 test: a deterministic function of the game's key, so a game is never split."""
    h = int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "little") / 2**64
    return 2 if h < test_fraction else 1 if h < test_fraction + val_fraction else 0


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StoreWriter:
    """Appends columns shard by shard; `close()` writes the manifest that makes the store valid."""

    def __init__(self, path, shard_size: int = 262144, meta: dict | None = None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "manifest.json").unlink(missing_ok=True)
        self.shard_size = shard_size
        self.meta = meta or {}
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.shards: list[dict] = []
        self.games: list[dict] = []

    def add(self, cols: dict[str, np.ndarray]) -> None:
        n = len(cols["move"])
        if n == 0:
            return
        self.buffer.append(cols)
        self.buffered += n
        while self.buffered >= self.shard_size:
            self._flush(self.shard_size)

    def add_game(self, info: dict) -> None:
        self.games.append(info)

    def _flush(self, n: int) -> None:
        cols = {k: np.concatenate([b[k] for b in self.buffer]) for k in FIELDS}
        name = f"shard_{len(self.shards):05d}"
        d = self.path / name
        d.mkdir(exist_ok=True)
        for k in FIELDS:
            np.save(d / f"{k}.npy", cols[k][:n])
        self.shards.append({"name": name, "n": int(n)})
        rest = {k: cols[k][n:] for k in FIELDS}
        self.buffer = [rest] if len(rest["move"]) else []
        self.buffered = len(rest["move"])

    def close(self, summary: dict | None = None) -> "PositionStore":
        if self.buffered:
            self._flush(self.buffered)
        _fsync_write(self.path / "games.json", to_json(self.games).encode())
        manifest = {
            "version": VERSION,
            "fields": {k: [dt, list(shape)] for k, (dt, shape) in FIELDS.items()},
            "shards": self.shards,
            "positions": int(sum(s["n"] for s in self.shards)),
            "summary": summary or {},
            **self.meta,
        }
        _fsync_write(self.path / "manifest.json", to_json(manifest, indent=1).encode())
        return PositionStore(self.path)


class PositionStore:
    """Read access to a finished store: `len`, `split_indices`, `batch`, `fens`, `column`."""

    def __init__(self, path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not mf.is_file():
            raise DataError(f"{self.path} is not a finished position store (no manifest.json): rebuild it")
        try:
            self.manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{mf}: unreadable manifest ({e})") from None
        if self.manifest.get("version") != VERSION:
            raise DataError(f"{mf}: store version {self.manifest.get('version')}, expected {VERSION}: rebuild it")
        self._cols: dict[str, np.ndarray] = {}
        self._offsets = np.cumsum([0] + [s["n"] for s in self.manifest["shards"]])
        self._games: list[dict] | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"PositionStore({self.path}, {len(self):,} positions)"

    @property
    def games(self) -> list[dict]:
        if self._games is None:
            self._games = json.loads((self.path / "games.json").read_text())
        return self._games

    def column(self, name: str) -> np.ndarray:
        """A whole field as one array (memory-mapped shards, concatenated on first use)."""
        if name not in self._cols:
            if name not in FIELDS:
                raise DataError(f"position store has no field '{name}': expected one of {', '.join(FIELDS)}")
            parts = [np.load(self.path / s["name"] / f"{name}.npy", mmap_mode="r") for s in self.manifest["shards"]]
            if len(parts) == 1:
                self._cols[name] = parts[0]
            elif parts:
                self._cols[name] = np.concatenate(parts)
            else:
                dt, shape = FIELDS[name]
                self._cols[name] = np.zeros((0, *shape), dtype=dt)
        return self._cols[name]

    def split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")
        splits = np.array([g["split"] for g in self.games], dtype=np.int8)
        game_id = self.column("game_id")
        return np.nonzero(splits[game_id] == SPLITS.index(split))[0] if len(splits) else np.zeros(0, np.int64)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Decoded model inputs and targets for the positions `indices` (sorted indices read fastest)."""
        idx = np.asarray(indices, dtype=np.int64)
        c = {k: np.asarray(self.column(k)[idx]) for k in FIELDS}
        legal = unpack_mask(c["legal"])
        has_move = c["move"] >= 0
        moves = np.where(has_move, c["move"], 0)
        side = side_info_targets(moves, np.maximum(c["moving_piece"], 1), c["captured"], c["check"], legal)
        side[~has_move, : side.shape[1] - NUM_MOVES] = 0.0
        t = torch.from_numpy
        return {
            "boards": t(unpack_planes(c["bitboards"], c["flags"], c["ep"])),
            "move": t(c["move"].astype(np.int64)),
            "elo_self": t(c["elo_self"].astype(np.int64)),
            "elo_oppo": t(c["elo_oppo"].astype(np.int64)),
            "legal": t(legal),
            "side_info": t(side),
            "value": t(c["value"].astype(np.float32)),
            "eval_cp": t(c["eval_cp"].astype(np.int64)),
            "index": t(idx),
        }

    def history(self, indices) -> list[tuple[str | None, list[str], int]]:
        """(start FEN or None for the standard start, the game's moves before the position in UCI, ply)
        for each position: chess.Board(start_fen) with those moves pushed is the position, and its
        move stack is the real game history (what lc0/Maia-1 inputs need)."""
        idx = np.asarray(indices, dtype=np.int64)
        plies = self.column("ply")[idx].tolist()
        out: list = [None] * len(idx)
        for start_fen, moves, rows, ks in self.history_by_game(idx):
            for r, k in zip(rows.tolist(), ks.tolist()):
                out[r] = (start_fen, moves[:k], plies[r])
        return out

    def history_by_game(self, indices) -> list[tuple[str | None, list[str], np.ndarray, np.ndarray]]:
        """The positions grouped by game, for replaying each game once: (start FEN or None, all of the
        game's moves in UCI, rows into `indices`, moves played before each of those positions)."""
        idx = np.asarray(indices, dtype=np.int64)
        gids = np.asarray(self.column("game_id")[idx]).astype(np.int64)
        plies = np.asarray(self.column("ply")[idx]).astype(np.int64)
        games = self.games
        order = np.argsort(gids, kind="stable")
        starts = np.flatnonzero(np.r_[True, gids[order][1:] != gids[order][:-1]]) if len(idx) else np.zeros(0, int)
        out = []
        for s, e in zip(starts, np.r_[starts[1:], len(order)].astype(int)):
            rows = order[s:e]
            game = games[int(gids[rows[0]])]
            if "moves" not in game:
                raise DataError(f"{self.path}: game {game.get('id')} has no move history (a store from before "
                                "version 2): rebuild it")
            # ply counts the game's own moves; ply0 is the ply of its first position (a bare-FEN set's)
            out.append((game.get("start_fen"), game["moves"].split(), rows, plies[rows] - game.get("ply0", 0)))
        return out

    def fens(self, indices) -> list[str]:
        """Exact FENs (real colours, not mirrored) rebuilt from the stored bitboards."""
        idx = np.asarray(indices, dtype=np.int64)
        bbs, flags, eps = self.column("bitboards")[idx], self.column("flags")[idx], self.column("ep")[idx]
        plies, halfs = self.column("ply")[idx], self.column("halfmove")[idx]
        white = plies % 2 == 0  # ply counts from the standard start, so its parity gives the side to move
        out = []
        for j in range(len(idx)):
            out.append(_fen(bbs[j], int(flags[j]), int(eps[j]), int(plies[j]), int(halfs[j]), bool(white[j])))
        return out


def _fen(bb, flags: int, ep: int, ply: int, halfmove: int, white: bool) -> str:
    board = chess.Board(None)
    for i in range(12):
        color = chess.WHITE if i < 6 else chess.BLACK
        mask = int(bb[i])
        for sq in chess.scan_forward(mask):
            board.set_piece_at(sq, chess.Piece(i % 6 + 1, color))
    rights = 0
    for bit, sq in ((1, chess.H1), (2, chess.A1), (3, chess.H8), (4, chess.A8)):
        if flags >> bit & 1:
            rights |= chess.BB_SQUARES[sq]
    board.castling_rights = rights
    board.ep_square = None if ep < 0 else ep
    board.turn = chess.WHITE
    if not white:
        board = board.mirror()
    board.halfmove_clock = halfmove
    board.fullmove_number = ply // 2 + 1
    return board.fen(en_passant="fen")


def store_from_fens(fens, out_dir, elo_self, elo_oppo, moves=None, histories=None) -> PositionStore:
    """Store an arbitrary set of FEN positions (e.g. an analysis or transitional set).

    Elo as ratings or buckets (scalar or one per FEN); `moves` (UCI, optional) become targets.
    `histories` (optional, one per FEN, None for a bare FEN): (start FEN or None for the standard start,
    the UCI moves from there to the position), so a model that reads history (Maia-1, Maia-3) sees the
    game that led to the position; each must replay to its FEN.
    """
    from ..encoding import encode_move
    from ..encoding.planes import move_facts
    from ..encoding import parse_fen

    fens = list(fens)
    if not fens:
        raise DataError("empty position set: no FENs given")
    n = len(fens)
    es = np.broadcast_to(np.asarray(elo_self), (n,))
    eo = np.broadcast_to(np.asarray(elo_oppo), (n,))
    cols = empty_columns(n)
    writer = StoreWriter(out_dir, meta={"source": "fens"})
    for i, fen in enumerate(fens):
        board = parse_fen(fen)
        if board.ply() > np.iinfo(np.int16).max:  # the store's ply column is int16
            raise DataError(f"FEN '{fen}' (position {i}): move number {board.fullmove_number} too large: "
                            f"expected at most {np.iinfo(np.int16).max // 2}")
        masks, fl, ep = pack_board(board, legal_ep_only=True)
        cols["bitboards"][i], cols["flags"][i], cols["ep"][i] = masks, fl, ep
        legal = np.zeros(NUM_MOVES, dtype=bool)
        legal[legal_move_indices(board)] = True
        cols["legal"][i] = pack_mask(legal)
        cols["move"][i] = -1
        if moves is not None and moves[i]:
            mv = chess.Move.from_uci(moves[i])
            if mv not in board.legal_moves:
                raise DataError(f"move {moves[i]} is illegal in FEN '{fen}' (position {i})")
            cols["move"][i] = encode_move(mv, board.turn)
            cols["moving_piece"][i], cols["captured"][i] = move_facts(board, mv)
            cols["check"][i] = board.gives_check(mv)
        cols["elo_self"][i], cols["elo_oppo"][i] = as_bucket(es[i]), as_bucket(eo[i])
        cols["eval_cp"][i] = cols["eval_before"][i] = EVAL_MISSING
        cols["game_id"][i] = i
        cols["ply"][i] = board.ply()
        cols["halfmove"][i] = min(board.halfmove_clock, 255)
        hist = histories[i] if histories is not None else None
        start, before = (fen, []) if hist is None else (hist[0], list(hist[1]))
        if hist is not None:
            _check_replay(start, before, board, f"FEN '{fen}' (position {i})")
        # ply0 maps the stored ply to an index into the moves (a bare FEN's are empty)
        writer.add_game({"id": i, "site": "", "split": 0, "fen": fen, "start_fen": start, "moves": " ".join(before),
                         "ply0": int(cols["ply"][i]) - len(before)})
    writer.add(cols)
    return writer.close({"positions": n})


def _check_replay(start_fen: str | None, moves: list[str], board: chess.Board, what: str) -> None:
    """The history must lead to the position: otherwise a model would read another game's past."""
    replay = chess.Board(start_fen) if start_fen else chess.Board()
    for k, uci in enumerate(moves):
        try:
            replay.push(replay.parse_uci(uci))  # refuses a malformed or an illegal move alike
        except ValueError:
            raise DataError(f"{what}: history move {k + 1} '{uci}' is illegal there: expected a legal UCI move") from None
    if replay.epd(en_passant="legal") != board.epd(en_passant="legal"):
        raise DataError(f"{what}: its history replays to '{replay.fen()}', not to the FEN")
