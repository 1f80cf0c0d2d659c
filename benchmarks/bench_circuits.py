"""Circuit attributions: batched tensors against the position-by-position, feature-by-feature loop
(how the study computed them), on the same inputs.

    python benchmarks/bench_circuits.py [--tokens 8000] [--features 4096] [--up 20] [--down 12]
"""
from __future__ import annotations

import argparse
import time

import torch

from maia_adapt.analysis.circuits import attributions, attributions_loop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--features", type=int, default=4096)
    ap.add_argument("--up", type=int, default=20)
    ap.add_argument("--down", type=int, default=12)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    z0 = torch.relu(torch.randn(a.tokens, a.features, generator=g) - 2.0)
    z1 = torch.relu(torch.randn(a.tokens, a.features, generator=g) - 2.0)
    conn = torch.randn(a.features, a.features, generator=g) / 64
    up, down = list(range(a.up)), list(range(a.down))
    t = time.perf_counter()
    slow = attributions_loop(z0, z1, conn, up, down)
    t_loop = time.perf_counter() - t
    t = time.perf_counter()
    fast = attributions(z0, z1, conn)
    t_fast = time.perf_counter() - t
    err = float((fast[up][:, down] - slow).abs().max())
    pairs_loop, pairs_fast = a.up * a.down, a.features * a.features
    print(f"tokens={a.tokens} features={a.features}; max |difference| {err:.1e}")
    print("| method | pairs | seconds | microseconds per pair | speed-up per pair |")
    print("|---|---|---|---|---|")
    print(f"| Python loop over positions and features | {pairs_loop:,} | {t_loop:.2f} | {t_loop / pairs_loop * 1e6:,.0f} | 1x |")
    print(f"| batched (`attributions`) | {pairs_fast:,} | {t_fast:.2f} | {t_fast / pairs_fast * 1e6:.3f} | "
          f"{(t_loop / pairs_loop) / (t_fast / pairs_fast):,.0f}x |")


if __name__ == "__main__":
    main()
