"""SAE training throughput against this machine's float32 matmul roofline.

    python benchmarks/bench_sae.py [--d 1024] [--f 16384] [--batch 1024] [--steps 5]
    python benchmarks/bench_sae.py --device cuda --bf16 [--compile] --steps 50   # the GPU path

Counts the matmul FLOPs of one training step: dense SAE 10*d*F per sample (encoder forward 2dF and
weight gradient 2dF; decoder forward 2dF, weight gradient 2dF and input gradient 2dF). TopK with a
sparse decoder does the encoder part densely (4dF) and the decoder on k rows only (6dk).
"""
from __future__ import annotations

import argparse
import time

import torch

from maia_adapt.dictionaries import DictionaryTrainer, SAEConfig, SparseAutoencoder
from maia_adapt.dictionaries.transcoder import Transcoder, TranscoderConfig


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(d: int, f: int, b: int, device="cpu", dtype=torch.float32) -> float:
    a, w = torch.randn(b, d, device=device, dtype=dtype), torch.randn(d, f, device=device, dtype=dtype)
    for _ in range(2):
        a @ w
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        a @ w
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * b * d * f / best / 1e9


def bench(arch: str, d: int, f: int, b: int, steps: int, k: int, device="cpu", bf16=False, compile=False) -> float:
    """Training samples per second of one SAE (arch) or one transcoder (arch='transcoder')."""
    if arch == "transcoder":
        module = Transcoder(TranscoderConfig(d_in=d, d_out=d, dim=f, k=k, batch_size=b, steps=steps + 3, aux_k=0,
                                             site="x", target_site="y"))
        batch = {"x": torch.randn(b, d, device=device), "y": torch.randn(b, d, device=device)}
    else:
        module = SparseAutoencoder(SAEConfig(architecture=arch, d_in=d, dim=f, k=k, batch_size=b, steps=steps + 3, aux_k=0))
        batch = {"x": torch.randn(b, d, device=device)}
    trainer = DictionaryTrainer({"s": (module, "x")}, steps + 3, b, device=device, bf16=bf16, compile=compile)
    for _ in range(3):  # warm-up (and compilation)
        trainer.train_step(batch)
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    _sync(device)
    return steps * b / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--f", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the losses (CUDA)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the losses")
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.bf16 and a.device.startswith("cuda") else torch.float32
    peak = matmul_gflops(a.d, a.f, a.batch, a.device, dtype)
    print(f"device={a.device} threads={torch.get_num_threads()} d={a.d} F={a.f} batch={a.batch} bf16={a.bf16} "
          f"compile={a.compile}; {str(dtype)[6:]} matmul {peak:.0f} GFLOP/s")
    print("| dictionary | samples/s | matmul FLOPs/sample | achieved GFLOP/s | fraction of matmul roofline |")
    print("|---|---|---|---|---|")
    sparse = 4 * a.d * a.f + 6 * a.d * a.k
    for arch, flops in (("jumprelu", 10 * a.d * a.f), ("relu_l1", 10 * a.d * a.f), ("topk", sparse), ("transcoder", sparse)):
        sps = bench(arch, a.d, a.f, a.batch, a.steps, a.k, a.device, a.bf16, a.compile)
        g = sps * flops / 1e9
        name = f"{arch} (k={a.k}, sparse decoder)" if arch in ("topk", "transcoder") else arch
        print(f"| {name} | {sps:,.0f} | {flops / 1e6:.0f} M | {g:.0f} | {g / peak:.0%} |")
    if a.device == "cpu":
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
