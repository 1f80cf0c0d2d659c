"""PGN reader throughput: this checkout's reader against the reader of a git revision, same games, same run.

    python benchmarks/bench_pgn_reader.py [--baseline main] [--rounds 4] [--move-games 2000]

The reader is what turns PGN bytes into (board, move) pairs before any encoding, timed in three steps
on the real file: "split" is open_text (the zstd stream) + split_games + header_reason over the whole
file; "tokenize" is iter_moves (the movetext tokenizer) over every game of it; "SAN" is iter_moves +
resolve_san against the generated legal moves + push (what encode_game does per position) over its
first --move-games games, since python-chess's move generation makes that step slow.

On a small machine shared with other jobs the same code's time varied by 20-30% from one pass to the
next, so the two readers are interleaved finely: split passes alternate ABBA over --rounds rounds, and
tokenize and SAN alternate every batch of games, in alternating order. Times are the process's CPU
time (time.process_time), summed over all passes or batches.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MAIA_ADAPT_DATA", ROOT.parent / "shared" / "data"))
REAL = DATA / "lichess" / "lichess_rated_rapid_58k.pgn.zst"


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


def split(pgn, path: Path) -> list:
    """The games of `path` that the default filter keeps, read by the reader module `pgn`."""
    filt = pgn.GameFilter()
    return [g for g in pgn.split_games(pgn.open_text(path), str(path)) if pgn.header_reason(g.headers, filt) is None]


def tokenize(pgn, games) -> int:
    return sum(len(pgn.iter_moves(g)[1]) for g in games)


def resolve(pgn, games) -> int:
    n = 0
    for g in games:
        board, sans = pgn.iter_moves(g)
        for san, _comment in sans:
            board.push(pgn.resolve_san(board, san, list(board.generate_legal_moves())))
            n += 1
    return n


def interleaved(readers: dict, work, batches: list) -> tuple[dict, dict]:
    """CPU seconds per reader of work(module, batch) over all batches, the readers taking turns in
    alternating order, and what each returned in total."""
    secs = {k: 0.0 for k in readers}
    out = {k: 0 for k in readers}
    for i, batch in enumerate(batches):
        order = list(readers) if i % 2 == 0 else list(readers)[::-1]
        for k in order:
            t = time.process_time()
            out[k] += work(readers[k], batch[k])
            secs[k] += time.process_time() - t
    return secs, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="main", help="git revision whose reader is the baseline")
    ap.add_argument("--rounds", type=int, default=4, help="split passes over the whole file per reader")
    ap.add_argument("--move-games", type=int, default=2000, help="games read with SAN resolution")
    ap.add_argument("--batch", type=int, default=500, help="games per turn in the tokenize step (SAN: a tenth)")
    a = ap.parse_args()
    from maia_adapt.data import pgn as current

    readers = {a.baseline: baseline_module(a.baseline), "this checkout": current}
    games = {k: None for k in readers}
    # split: whole passes, ABBA
    split_secs = {k: 0.0 for k in readers}
    for r in range(a.rounds):
        for k in (list(readers) if r % 2 == 0 else list(readers)[::-1]):
            t = time.process_time()
            games[k] = split(readers[k], REAL)
            split_secs[k] += time.process_time() - t
    n = min(len(g) for g in games.values())
    tok_secs, moves = interleaved(readers, tokenize, [{k: games[k][i : i + a.batch] for k in readers}
                                                      for i in range(0, n, a.batch)])
    step = max(1, a.batch // 10)
    m = min(n, a.move_games)
    san_secs, plies = interleaved(readers, resolve, [{k: games[k][i : i + step] for k in readers}
                                                     for i in range(0, m, step)])
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    print(f"the real file ({len(games[a.baseline]):,} games kept by the default filter); {cpu}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}; CPU seconds")
    print("| step | what | baseline " + a.baseline + " | this checkout | after / before |")
    print("|---|---|---|---|---|")
    rows = [("split", f"{a.rounds} passes over the file", split_secs),
            ("tokenize", f"{n:,} games, {moves[a.baseline]:,} moves", tok_secs),
            ("SAN", f"first {m:,} games, {plies[a.baseline]:,} moves", san_secs)]
    for name, what, secs in rows:
        b, c = secs[a.baseline], secs["this checkout"]
        print(f"| {name} | {what} | {b:.2f} | {c:.2f} | {c / b:.3f} |")
    whole_b = split_secs[a.baseline] / a.rounds + tok_secs[a.baseline] + san_secs[a.baseline] * n / m
    whole_c = split_secs["this checkout"] / a.rounds + tok_secs["this checkout"] + san_secs["this checkout"] * n / m
    print(f"| reader, whole file | split + tokenize + SAN (SAN scaled to {n:,} games) | {whole_b:.1f} | {whole_c:.1f} "
          f"| {whole_c / whole_b:.3f} |")
    for name, got in (("games", {k: len(g) for k, g in games.items()}), ("moves", moves), ("plies", plies)):
        if len(set(got.values())) > 1:
            print(f"note: the readers differ in {name}: {got}")


if __name__ == "__main__":
    main()
