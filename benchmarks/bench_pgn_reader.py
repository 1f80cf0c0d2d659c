"""PGN reader throughput: this checkout's reader against the reader of a git revision, same games, same run.

    python benchmarks/bench_pgn_reader.py [--move-games 1000] [--baseline main] [--rounds 3]

The reader is what turns PGN bytes into (board, move) pairs before any encoding, in three steps timed
cumulatively: open_text (the zstd stream) + split_games + header_reason on the whole real file; then
iter_moves (the movetext tokenizer) too; then resolve_san against the generated legal moves with the
move pushed (what encode_game does per position), on a fixed part of the file (its first
--move-games games, recompressed as they are), since python-chess's move generation dominates it.
Both readers run round after round in turn, so that a busy machine slows both alike; the best round
counts.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MAIA_ADAPT_DATA", ROOT.parent / "shared" / "data"))
REAL = DATA / "lichess" / "lichess_rated_rapid_58k.pgn.zst"


def first_games(n: int) -> bytes:
    """The first n games of the real file, byte for byte."""
    with open(REAL, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh)
        text = b""
        while text.count(b"\n[Event ") < n:
            chunk = reader.read(1 << 20)
            if not chunk:
                return text
            text += chunk
    starts = [m.start() + 1 for m in re.finditer(rb"\n\[Event ", text)]
    return text[: starts[n - 1]]


def baseline_module(rev: str):
    """maia_adapt/data/pgn.py as it is at `rev`, imported beside the current one."""
    src = subprocess.run(["git", "show", f"{rev}:maia_adapt/data/pgn.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    name = "maia_adapt.data._pgn_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "maia_adapt.data"  # its relative imports resolve to this checkout's package
    sys.modules[name] = mod  # dataclasses look their module up here
    exec(compile(src, f"{rev}:maia_adapt/data/pgn.py", "exec"), mod.__dict__)
    return mod


STEPS = {"split": "split + headers", "tokens": "split + headers + tokenize",
         "moves": "split + headers + tokenize + SAN + push"}


def read(pgn, path: Path, step: str) -> tuple[int, int]:
    """(games kept by the default filter, moves read) from path by the reader module `pgn`, up to `step`."""
    filt = pgn.GameFilter()
    games = moves = 0
    for game in pgn.split_games(pgn.open_text(path), str(path)):
        if pgn.header_reason(game.headers, filt) is not None:
            continue
        games += 1
        if step == "split":
            continue
        board, sans = pgn.iter_moves(game)
        moves += len(sans)
        if step == "tokens":
            continue
        for san, _comment in sans:
            legal = list(board.generate_legal_moves())
            board.push(pgn.resolve_san(board, san, legal))
    return games, moves


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--move-games", type=int, default=1000, help="games of the real file read with SAN + push")
    ap.add_argument("--baseline", default="main", help="git revision whose reader is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from maia_adapt.data import pgn as current

    readers = {a.baseline: baseline_module(a.baseline), "this checkout": current}
    best: dict = {}
    counts: dict = {}
    with tempfile.TemporaryDirectory() as d:
        part = Path(d) / "part.pgn.zst"
        part.write_bytes(zstandard.ZstdCompressor(level=3).compress(first_games(a.move_games)))
        for _ in range(a.rounds):
            for label, mod in readers.items():
                for step in STEPS:
                    t = time.perf_counter()
                    counts[label, step] = read(mod, part if step == "moves" else REAL, step)
                    s = time.perf_counter() - t
                    best[label, step] = min(best.get((label, step), s), s)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    print(f"the whole real file for split/tokenize, its first {a.move_games:,} games for SAN + push; best of "
          f"{a.rounds} rounds; {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| reader | steps | games kept | moves | seconds | games/s | time vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for step, what in STEPS.items():
        base = best[a.baseline, step]
        for label in readers:
            g, n = counts[label, step]
            s = best[label, step]
            print(f"| {label} | {what} | {g:,} | {n:,} | {s:.2f} | {g / s:,.0f} | {s / base:.3f} |")
    for step in STEPS:
        if counts[a.baseline, step] != counts["this checkout", step]:
            print(f"note: {step}: the readers kept different games/moves: {counts[a.baseline, step]} vs "
                  f"{counts['this checkout', step]}")


if __name__ == "__main__":
    main()
