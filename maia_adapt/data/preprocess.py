"""PGN -> position store, in parallel over the machine's cores, with a progress bar and a summary.

The main process streams game texts and applies the header filters; a process pool encodes games
(one legal-move generation per position) and returns column arrays; the main process writes shards
in game order, so the result does not depend on the number of workers.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Optional

import chess
import numpy as np
from tqdm import tqdm

from ..encoding.elo import elo_to_bucket
from ..encoding.planes import pack_board
from ..encoding.vocab import move_table
from ..errors import DataError
from ..io import atomic_write_json
from .pgn import (
    EVAL_MISSING,
    RESULTS,
    Game,
    GameFilter,
    PGNError,
    PGNStreamError,
    elo_pair,
    header_reason,
    iter_moves,
    open_text,
    parse_clock,
    parse_elo,
    parse_eval,
    resolve_san,
    split_games,
)
from .store import FIELDS, VERSION as STORE_VERSION, PositionStore, StoreWriter, game_split


@dataclass
class DataConfig(GameFilter):
    """`data`: the game filters are GameFilter's own fields (one definition), plus where and how to store."""

    name: str = "lichess"
    pgn: list[str] = field(default_factory=list)
    store_dir: Optional[str] = None  # null: ${paths.cache_dir}/stores/<name>-<fingerprint>
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    workers: int = 2
    shard_size: int = 262144

_TABLE = None


def encode_game(game: Game, filt: GameFilter, history_out: dict | None = None) -> dict[str, np.ndarray]:
    """Columns (see store.FIELDS) for the kept positions of one game; raises PGNError if unreadable.

    `history_out`, when given, receives "moves" (the game's moves in UCI up to the last one read) and
    "ply0" (the stored ply of the game's start position), so that any stored position can be replayed
    with its history: start FEN + moves[:ply - ply0] (PositionStore.history)."""
    global _TABLE
    if _TABLE is None:
        _TABLE = move_table()
    h = game.headers
    board, moves = iter_moves(game)
    white_elo, black_elo = parse_elo(h.get("WhiteElo")) or 0, parse_elo(h.get("BlackElo")) or 0
    # plies are stored counted from the standard start (python-chess's board.ply()), so that a game set
    # up with Black to move or at move 30 keeps its side to move and move number in store.fens()
    start_ply = board.ply()
    if start_ply + min(len(moves), filt.max_ply + 1) > np.iinfo(np.int16).max:
        raise PGNError("bad FEN header", game.headers.get("FEN"))
    result = RESULTS.get(h.get("Result"), 0)
    rows: list[tuple] = []
    legal_rows: list[int] = []
    legal_cols: list[int] = []
    prev_eval = EVAL_MISSING
    for ply, (san, comment) in enumerate(moves):
        legal = list(board.generate_legal_moves())
        move = resolve_san(board, san, legal)
        if history_out is not None:
            history_out.setdefault("moves", []).append(move.uci())
        ev = parse_eval(comment)
        keep = ply >= filt.first_n_plies
        if keep and filt.clock_threshold is not None:
            clock = parse_clock(comment)
            keep = clock is not None and clock > filt.clock_threshold
        if keep:
            if not rows:
                first_kept = ply  # how many moves precede the first stored position
            white = board.turn == chess.WHITE
            flip = 0 if white else 56
            r = len(rows)
            for mv in legal:
                promo = 0 if mv.promotion is None else 6 - mv.promotion
                legal_rows.append(r)
                legal_cols.append(int(_TABLE[promo, mv.from_square ^ flip, mv.to_square ^ flip]))
            masks, flags, ep = pack_board(board, legal_ep_only=True)
            promo = 0 if move.promotion is None else 6 - move.promotion
            idx = int(_TABLE[promo, move.from_square ^ flip, move.to_square ^ flip])
            moving = board.piece_type_at(move.from_square)
            captured = chess.PAWN if board.is_en_passant(move) else (board.piece_type_at(move.to_square) or 0)
            me, op = (white_elo, black_elo) if white else (black_elo, white_elo)
            halfmove = board.halfmove_clock
            board.push(move)
            rows.append((masks, flags, ep, idx, moving, captured, board.is_check(), me, op,
                         result if white else -result, ev, prev_eval, start_ply + ply, halfmove))
        else:
            board.push(move)
        prev_eval = ev
        if ply == filt.max_ply:
            break
    n = len(rows)
    cols = {k: np.zeros((n, *shape), dtype=dt) for k, (dt, shape) in FIELDS.items()}
    if n == 0:
        return cols
    masks, flags, ep, idx, moving, captured, check, me, op, val, ev, evb, plies, half = zip(*rows)
    cols["bitboards"][:] = np.array(masks, dtype=np.uint64)
    cols["flags"][:] = flags
    cols["ep"][:] = ep
    legal_bits = np.zeros((n, 1880), dtype=bool)
    legal_bits[legal_rows, legal_cols] = True
    cols["legal"][:] = np.packbits(legal_bits, axis=-1, bitorder="little")
    cols["move"][:] = idx
    cols["moving_piece"][:] = moving
    cols["captured"][:] = captured
    cols["check"][:] = check
    cols["rating_self"][:] = me
    cols["rating_oppo"][:] = op
    cols["elo_self"][:] = elo_to_bucket(np.array(me))
    cols["elo_oppo"][:] = elo_to_bucket(np.array(op))
    cols["value"][:] = val
    cols["eval_cp"][:] = ev
    cols["eval_before"][:] = evb
    cols["ply"][:] = plies
    cols["halfmove"][:] = np.minimum(np.array(half), 255)
    if history_out is not None:
        # read off the stored plies, so it holds whether plies count the game's moves or from the start
        history_out["ply0"] = int(cols["ply"][0]) - first_kept
    return cols


def _work(args):
    games, filt = args
    out = []
    for g in games:
        history: dict = {}
        try:
            out.append((g, encode_game(g, filt, history), history, None))
        except PGNError as e:
            out.append((g, None, None, e.args[0]))
        except (ValueError, AssertionError) as e:  # python-chess rejects a position: count, never stop
            out.append((g, None, None, f"invalid position ({type(e).__name__})"))
    return out


def _filtered_batches(paths: Iterable, filt: GameFilter, stats: Counter, batch: int, bar):
    """Header-filtered games in batches; the per-Elo-pair cap is applied here, in game order."""
    pair_counts: Counter = Counter()
    chunk: list[Game] = []
    kept = 0
    for path in paths:
        try:
            for game in split_games(open_text(path), str(path)):
                stats["games read"] += 1
                bar.update(1)
                reason = header_reason(game.headers, filt)
                if reason is None and not game.moves_text:
                    reason = "no moves"
                if reason is None and filt.max_games_per_elo_pair is not None:
                    pair = elo_pair(game.headers)
                    if pair_counts[pair] >= filt.max_games_per_elo_pair:
                        reason = "Elo pair cap"
                    else:
                        pair_counts[pair] += 1
                if reason:
                    stats[f"skipped: {reason}"] += 1
                    continue
                chunk.append(game)
                kept += 1
                if len(chunk) >= batch:
                    yield chunk
                    chunk = []
                if filt.max_games is not None and kept >= filt.max_games:
                    break
        except PGNStreamError as e:
            # the games before the damage are kept; the damaged tail is counted, not fatal
            # (split_games yields the game being read when the stream broke only if it is whole)
            stats["stream errors"] += 1
            stats.setdefault("stream error messages", []).append(str(e))  # type: ignore[arg-type]
            tqdm.write(f"warning: {e}", file=sys.stderr)
        if filt.max_games is not None and kept >= filt.max_games:
            break
    if chunk:
        yield chunk


def build_store(
    pgn_paths,
    out_dir,
    filt: GameFilter | None = None,
    *,
    workers: int = 2,
    shard_size: int = 262144,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    split_seed: int = 0,
    fingerprint: str = "",
    batch_games: int = 64,
) -> PositionStore:
    """Read PGN files into a position store at out_dir; returns the opened store."""
    filt = filt or GameFilter()
    paths = [Path(p) for p in ([pgn_paths] if isinstance(pgn_paths, (str, Path)) else pgn_paths)]
    for p in paths:
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "not found"
            raise DataError(f"PGN file {p} {what}: expected a .pgn or .pgn.zst file (set data.pgn or MAIA_ADAPT_DATA)")
    writer = StoreWriter(out_dir, shard_size, meta={"fingerprint": fingerprint, "sources": [str(p) for p in paths]})
    stats: Counter = Counter()
    errors: Counter = Counter()
    positions = 0
    game_id = 0
    bar = tqdm(desc="games", unit=" games", dynamic_ncols=True)
    batches = ((b, filt) for b in _filtered_batches(paths, filt, stats, batch_games, bar))
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_work, batches) if pool else map(_work, batches)
        for res in results:
            for game, cols, history, err in res:
                if err is not None:
                    errors[err] += 1
                    continue
                if not history.get("moves"):  # headers and a result, or moves only inside variations
                    stats["skipped: no moves"] += 1
                    continue
                n = len(cols["move"])
                h = game.headers
                split = game_split(h.get("Site") or f"{game.source}#{game.index}", split_seed, val_fraction, test_fraction)
                cols["game_id"][:] = game_id
                writer.add(cols)
                writer.add_game({
                    "id": game_id, "site": h.get("Site", ""), "white_elo": h.get("WhiteElo"), "black_elo": h.get("BlackElo"),
                    "result": h.get("Result"), "source": game.source, "index": game.index, "split": split, "positions": n,
                    # the game's history: stored position (game_id, ply) is start_fen + moves[:ply - ply0]
                    "start_fen": h.get("FEN") or None, "moves": " ".join(history.get("moves", [])),
                    "ply0": history.get("ply0", 0),
                })
                game_id += 1
                positions += n
            bar.set_postfix(positions=f"{positions:,}")
    finally:
        if pool:
            pool.close()
            pool.join()
        bar.close()
    stream_msgs = stats.pop("stream error messages", [])
    summary = {
        "games_read": stats.pop("games read", 0),
        "games_kept": game_id,
        "positions": positions,
        "skipped": {**{k.removeprefix("skipped: "): v for k, v in stats.items() if k.startswith("skipped")},
                    **{f"corrupt game: {k}": v for k, v in errors.items()}},
        "stream_errors": stream_msgs,
    }
    store = writer.close(summary)
    counts = np.bincount(store.column("elo_self"), minlength=11).tolist() if len(store) else [0] * 11
    summary["positions_per_elo_bucket"] = counts
    atomic_write_json(Path(out_dir) / "summary.json", summary)
    return store


def data_fingerprint(data_cfg) -> str:
    """Identity of a store: input files (path, size, mtime, ctime) plus every filter and split setting.

    The change time is there because tools that replace a file often keep its size and set its
    modification time back (cp -p, rsync -t, tar, a repaired copy of a damaged download); no tool can
    set the change time, so a replaced file never reuses the store of the old one. A metadata-only
    change (chmod) costs a rebuild, never a wrong store."""
    filt = GameFilter.from_any(data_cfg)

    def identity(p: Path):
        st = p.stat()
        return str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns

    files = [identity(Path(p)) if Path(p).is_file() else str(p) for p in data_cfg.pgn]
    key = {"files": files, "filter": filt.__dict__, "val": data_cfg.val_fraction, "test": data_cfg.test_fraction,
           "seed": data_cfg.split_seed, "v": STORE_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _publish(tmp: Path, out: Path, fp: str) -> PositionStore:
    """Move a store built under a temporary name into place. A store that exists is never rewritten
    in place: processes started together (a parallel sweep, two test sessions on a fresh clone) each
    build their own copy and the first one published wins, and a process still reading an older store
    at `out` keeps its (memory-mapped) files."""
    try:
        os.rename(tmp, out)  # refused when out exists and is not empty
        return PositionStore(out)
    except OSError:
        pass
    if (out / "manifest.json").is_file() and PositionStore(out).manifest.get("fingerprint") == fp:
        shutil.rmtree(tmp, ignore_errors=True)
        return PositionStore(out)
    old = out.with_name(f".{out.name}.old{os.getpid()}")  # an unfinished folder or a store of other inputs
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return PositionStore(out)


def open_or_build_store(data_cfg, cache_dir) -> PositionStore:
    """The store for a `data` config: reused when a finished store with the same fingerprint exists."""
    if not data_cfg.pgn:
        raise DataError("data.pgn is empty: expected at least one .pgn or .pgn.zst file")
    fp = data_fingerprint(data_cfg)
    out = Path(data_cfg.store_dir) if data_cfg.store_dir else Path(cache_dir) / "stores" / f"{data_cfg.name}-{fp}"
    store = PositionStore(out) if (out / "manifest.json").is_file() else None
    if store is not None and store.manifest.get("fingerprint") == fp and len(store) == 0:
        shutil.rmtree(out, ignore_errors=True)  # an empty store cached by an older version: junk, not a result
        store = None
    if store is None or store.manifest.get("fingerprint") != fp:
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            built = build_store(
                list(data_cfg.pgn), tmp, GameFilter.from_any(data_cfg), workers=data_cfg.workers,
                shard_size=data_cfg.shard_size, val_fraction=data_cfg.val_fraction, test_fraction=data_cfg.test_fraction,
                split_seed=data_cfg.split_seed, fingerprint=fp,
            )
            s = built.manifest["summary"]
            if len(built) == 0:  # nothing to reuse: the store would only be a leftover in the cache
                why = f": {s['stream_errors'][0]}" if s["stream_errors"] else ""
                raise DataError(f"no positions in {list(data_cfg.pgn)} pass the data filters (empty position set){why}; "
                                f"games read: {s['games_read']:,}, skipped: {s['skipped']}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        store = _publish(tmp, out, fp)
        print(f"position store {out}: {s['games_kept']:,} games, {s['positions']:,} positions; skipped {s['skipped']}"
              + (f"; stream errors: {s['stream_errors']}" if s["stream_errors"] else ""))
    return store
