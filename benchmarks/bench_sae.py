"""SAE training throughput against this machine's float32 matmul roofline.

    python benchmarks/bench_sae.py [--d 1024] [--f 16384] [--batch 1024] [--steps 5]

Counts the matmul FLOPs of one training step: dense SAE 10*d*F per sample (encoder forward 2dF and
weight gradient 2dF; decoder forward 2dF, weight gradient 2dF and input gradient 2dF). TopK with a
sparse decoder does the encoder part densely (4dF) and the decoder on k rows only (6dk).
"""
from __future__ import annotations

import argparse
import time

import torch

from maia_adapt.dictionaries import DictionaryTrainer, SAEConfig, SparseAutoencoder


def matmul_gflops(d: int, f: int, b: int) -> float:
    a, w = torch.randn(b, d), torch.randn(d, f)
    for _ in range(2):
        a @ w
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ w
        best = min(best, time.perf_counter() - t)
    return 2 * b * d * f / best / 1e9


def bench(arch: str, d: int, f: int, b: int, steps: int, k: int) -> float:
    cfg = SAEConfig(architecture=arch, d_in=d, dim=f, k=k, batch_size=b, steps=steps + 2, aux_k=0)
    sae = SparseAutoencoder(cfg)
    x = torch.randn(b, d)
    trainer = DictionaryTrainer({"s": (sae, "x")}, steps + 2, b)
    trainer.train_step({"x": x})
    trainer.train_step({"x": x})
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step({"x": x})
    return steps * b / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--f", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--k", type=int, default=256)
    a = ap.parse_args()
    peak = matmul_gflops(a.d, a.f, a.batch)
    print(f"threads={torch.get_num_threads()} d={a.d} F={a.f} batch={a.batch}; float32 matmul {peak:.0f} GFLOP/s")
    print("| SAE | samples/s | matmul FLOPs/sample | achieved GFLOP/s | fraction of matmul roofline |")
    print("|---|---|---|---|---|")
    for arch, flops in (("jumprelu", 10 * a.d * a.f), ("relu_l1", 10 * a.d * a.f), ("topk", 4 * a.d * a.f + 6 * a.d * a.k)):
        sps = bench(arch, a.d, a.f, a.batch, a.steps, a.k)
        g = sps * flops / 1e9
        name = f"{arch} (k={a.k}, sparse decoder)" if arch == "topk" else arch
        print(f"| {name} | {sps:,.0f} | {flops / 1e6:.0f} M | {g:.0f} | {g / peak:.0%} |")
    print(f"\nROC-AUC of {a.f} features x 768 concepts on 2,000 samples: {bench_auc(f=a.f):.2f} s")


def bench_auc(n: int = 2000, f: int = 16384, c: int = 768) -> float:
    """Seconds to score f sparse features against c concepts on n samples (calibration, threats)."""
    from maia_adapt.concepts import roc_auc_matrix

    g = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(n, f, generator=g) - 2.0)  # ~2% firing, like an SAE's features
    y = torch.rand(n, c, generator=g) < 0.1
    roc_auc_matrix(z[:, :64], y)
    t = time.perf_counter()
    roc_auc_matrix(z, y)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
