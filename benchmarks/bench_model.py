"""Maia-2 forward throughput on this machine: plain forward, with unused hook API, with activation
capture at hook sites, the 11 Elo buckets of the skill matrix (one forward each, or the Elo-blind CNN
trunk once and the transformer 11 times, as stage=evaluate and the transitional predictions run), and
the official maia2 model on the same inputs.

    python benchmarks/bench_model.py [--size official|small] [--batch 256] [--iters 10]
"""
from __future__ import annotations

import argparse
import time

import torch
from bench_sae import matmul_gflops
from torch.utils.flop_counter import FlopCounterMode

from maia_adapt.encoding import NUM_BUCKETS
from maia_adapt.model import Maia2, Maia2Config
from maia_adapt.model.skill import Maia2Skill

SIZES = {
    "official": Maia2Config(),
    "small": Maia2Config(dim_cnn=64, num_blocks_cnn=3, dim_vit=256, elo_dim=32, heads=8, dim_head=32),
}


def timed(fn, iters):
    fn()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t) / iters)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="official", choices=SIZES)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = Maia2(SIZES[a.size]).eval()
    x = torch.randint(0, 2, (a.batch, 18, 8, 8)).float()
    e = torch.randint(0, 11, (a.batch,))
    sites = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.1.hook_attn_heads"]
    rows = []
    with torch.inference_mode():
        rows.append(("plain forward", timed(lambda: model(x, e, e), a.iters)))
        rows.append(("run_with_cache, 4 sites", timed(lambda: model.run_with_cache(x, e, e, names=sites), a.iters)))
        rows.append((f"run_with_cache, all {len(model.hook_names)} sites", timed(lambda: model.run_with_cache(x, e, e), a.iters)))
        sm = Maia2Skill(model)
        inputs, buckets = {"boards": x}, [(b, b) for b in range(NUM_BUCKETS)]
        per_bucket = timed(lambda: [sm.policy_logits(inputs, b, o) for b, o in buckets], a.iters)
        shared = timed(lambda: list(sm.policy_logits_by_condition(inputs, buckets)), a.iters)
        rows.append(("11 buckets, a forward each (per position)", per_bucket))
        rows.append(("11 buckets, one trunk pass (policy_logits_by_condition)", shared))
        try:
            from importlib.resources import files

            from maia2.main import MAIA2Model
            from maia2.utils import create_elo_dict, parse_args

            if a.size == "official":
                cfg = parse_args(str(files("maia2.configs").joinpath("maia2-training.yaml")))
                ref = MAIA2Model(1880, create_elo_dict(), cfg).eval()
                rows.append(("official maia2 MAIA2Model", timed(lambda: ref(x, e, e), a.iters)))
        except ImportError:
            pass
    base = rows[0][1]
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x, e, e)
    peak = matmul_gflops(2048, 2048, 2048)
    print(f"model={a.size} batch={a.batch} threads={torch.get_num_threads()}; float32 matmul peak {peak:.0f} GFLOP/s; "
          f"a forward is {fc.get_total_flops() / a.batch / 1e6:.1f} MFLOP a position, the plain forward "
          f"{fc.get_total_flops() / base / 1e9 / peak:.0%} of the peak")
    print("| path | positions/s | vs plain |")
    print("|---|---|---|")
    for name, t in rows:
        print(f"| {name} | {a.batch / t:,.0f} | {100 * (t / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
