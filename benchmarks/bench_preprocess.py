"""Preprocessing throughput, PGN bytes -> training examples, official maia2 path vs ours, same games.

    python benchmarks/bench_preprocess.py [--games 400]

Official path (one core): chess.pgn.read_game, then per position what maia2's process_per_game and
MAIA2Dataset.__getitem__ do: FEN (mirrored for Black), chess.Board(fen), board_to_tensor, get_side_info.
Ours: build_store (tokenizer + SAN resolution against the generated legal moves, bitboard packing,
legal-mask bits, shard writing), one worker and then two.
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import chess
import chess.pgn
import zstandard

from maia_adapt.data import GameFilter, build_store
from maia_adapt.encoding import all_moves

DATA = Path(os.environ.get("MAIA_ADAPT_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def read_games_text(n: int) -> str:
    out = []
    with open(DATA / "lichess/lichess_rated_rapid_58k.pgn.zst", "rb") as fh:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
        for _ in range(n):
            g = chess.pgn.read_game(text)
            if g is None:
                break
            out.append(str(g))
    return "\n\n".join(out) + "\n\n"


def official(text: str, first_n: int = 10, max_ply: int = 300) -> int:
    from maia2.utils import board_to_tensor, get_side_info, mirror_move

    moves_dict = {m: i for i, m in enumerate(all_moves())}
    handle = io.StringIO(text)
    n = 0
    while (game := chess.pgn.read_game(handle)) is not None:
        board = game.board()
        for i, node in enumerate(game.mainline()):
            move = node.move
            if i >= first_n:
                if i % 2 == 0:
                    fen, uci = board.fen(), move.uci()
                else:
                    fen, uci = board.mirror().fen(), mirror_move(move.uci())
                b = chess.Board(fen)
                board_to_tensor(b)
                get_side_info(b, uci, moves_dict)
                n += 1
            board.push(move)
            if i == max_ply:
                break
    return n


def ours(text: str, workers: int) -> int:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "games.pgn"
        p.write_text(text)
        store = build_store([p], Path(d) / "store", GameFilter(), workers=workers)
        return len(store)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--games", type=int, default=400)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    text = read_games_text(a.games)
    rows = []
    t = time.perf_counter()
    n_off = official(text)
    rows.append(("official maia2 path, 1 process", n_off, time.perf_counter() - t))
    for w in (1, 2):
        t = time.perf_counter()
        n = ours(text, w)
        rows.append((f"maia-adapt build_store, {w} worker{'s' if w > 1 else ''}", n, time.perf_counter() - t))
    base = rows[0][1] / rows[0][2]
    print(f"{a.games} real games, {len(text) / 1e6:.1f} MB of PGN")
    print("| path | positions | seconds | positions/s | vs official |")
    print("|---|---|---|---|---|")
    for name, n, s in rows:
        print(f"| {name} | {n:,} | {s:.1f} | {n / s:,.0f} | {n / s / base:.1f}x |")


if __name__ == "__main__":
    main()
