"""Training and distillation throughput of the small Maia-2 on this CPU, float32 against bfloat16
autocast (train.cpu_bf16), beside the float32 and bfloat16 matmul peaks measured in the same run.
Times, on real lichess positions: the nine Maia-1 teachers' top moves (float32 and bfloat16 weights),
the lc0 history planes they read, a plain training step and a distillation step (4 buckets).

    MAIA_ADAPT_DATA=../shared/data python benchmarks/bench_distill.py [--models ../shared/models]
        [--games 300] [--batch 256] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_maia1 import best_times
from bench_sae import matmul_gflops

from maia_adapt.data import GameFilter, build_store
from maia_adapt.model import load_model
from maia_adapt.model.distill import Maia1Teacher, distill_losses
from maia_adapt.model.maia1 import load_maia1_family
from maia_adapt.model.skill import lc0_store_planes
from maia_adapt.model.losses import LossWeights, maia2_losses

ROOT = Path(__file__).resolve().parents[1]
TRAIN_MFLOP = 135  # per position and step of the small Maia-2 (README, Scaling)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("MAIA_ADAPT_DATA", ROOT.parent / "shared" / "data"))
    ap.add_argument("--models", default=os.environ.get("MAIA_ADAPT_MODELS", ROOT.parent / "shared" / "models"))
    ap.add_argument("--games", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    peak32 = matmul_gflops(2048, 2048, 2048)
    peak16 = matmul_gflops(2048, 2048, 2048, dtype=torch.bfloat16)
    print(f"matmul peak, {a.threads} threads: float32 {peak32:.0f} GFLOP/s, bfloat16 {peak16:.0f} GFLOP/s")

    with tempfile.TemporaryDirectory() as tmp:
        store = build_store([Path(a.data) / "lichess" / "lichess_rated_rapid_58k.pgn.zst"], Path(tmp) / "store",
                            GameFilter(max_games=a.games), workers=1)
        idx = np.sort(np.random.default_rng(0).choice(len(store), a.batch, replace=False))
        batch = store.batch(idx)
        t = time.perf_counter()
        planes = lc0_store_planes(store, idx)
        print(f"lc0 planes with history (python-chess replay): {a.batch / (time.perf_counter() - t):,.0f} positions/s")

    n = a.batch
    teachers = {bf: Maia1Teacher(load_maia1_family(Path(a.models) / "maia1"), "cpu", cpu_bf16=bf) for bf in (False, True)}
    with torch.inference_mode():
        times = best_times({bf: (lambda t=t: t.top_moves(planes, batch["legal"])) for bf, t in teachers.items()}, 1)
        m32, m16 = (teachers[bf].top_moves(planes, batch["legal"])[0][..., 0] for bf in (False, True))
    for bf, s in times.items():
        print(f"teachers, 9 networks, {'bfloat16' if bf else 'float32'} weights: {n / s:,.0f} positions/s")
    print(f"bfloat16 teachers' top move = float32's: {(m16 == m32).float().mean():.1%} of (position, network)")

    model = load_model(ROOT / "maia_adapt" / "assets" / "maia2_small.safetensors", eval=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    w, dbatch = LossWeights(1.0, 1.0), dict(batch)
    dbatch["teacher_moves"], dbatch["teacher_probs"] = teachers[True].top_moves(planes, batch["legal"])

    def step(amp: bool, distill: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = (distill_losses(model, teachers[True], dbatch, w, 4, 1.0, torch.Generator().manual_seed(0))
                   if distill else maia2_losses(model, batch, w))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    runs = {(amp, d): (lambda amp=amp, d=d: step(amp, d)) for d in (False, True) for amp in (False, True)}
    for (amp, d), s in best_times(runs, 2).items():
        rate = n / s
        peak = peak16 if amp else peak32
        line = f"{'distillation (4 buckets)' if d else 'plain training'} step, {'bf16 autocast' if amp else 'float32'}"
        frac = "" if d else f" = {rate * TRAIN_MFLOP / 1e3 / peak:.0%} of the {'bf16' if amp else 'fp32'} peak"
        print(f"{line}: {rate:,.0f} positions/s{frac}")


if __name__ == "__main__":
    main()
