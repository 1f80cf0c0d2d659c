"""Feature-concept ROC-AUC: the study's way (scikit-learn's roc_auc_score once per feature and
concept) against maia_adapt.concepts.roc_auc_matrix (all features and concepts at once).

    python benchmarks/bench_auc.py [--samples 2000] [--features 16384] [--concepts 128]

scikit-learn is timed on a subsample of (feature, concept) pairs and extrapolated per pair; ours runs
the whole matrix. Both see the same SAE-like features (about 2% non-zero, so most values tie at 0).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from maia_adapt.concepts import roc_auc_matrix


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--features", type=int, default=16384)
    ap.add_argument("--concepts", type=int, default=128)
    ap.add_argument("--sklearn-pairs", type=int, default=2000)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(a.samples, a.features, generator=g) - 2.0)
    y = torch.rand(a.samples, a.concepts, generator=g) < 0.5  # balanced samples, as in the study
    zn, yn = z.numpy(), y.numpy()
    rng = np.random.default_rng(0)
    pairs = [(int(rng.integers(a.features)), int(rng.integers(a.concepts))) for _ in range(a.sklearn_pairs)]
    t = time.perf_counter()
    ref = [roc_auc_score(yn[:, c], zn[:, f]) for f, c in pairs]
    per_pair = (time.perf_counter() - t) / len(pairs)
    roc_auc_matrix(z[:, :64], y)
    t = time.perf_counter()
    auc = roc_auc_matrix(z, y)
    ours = time.perf_counter() - t
    err = max(abs(float(auc[f, c]) - r) for (f, c), r in zip(pairs, ref))
    total_pairs = a.features * a.concepts
    print(f"threads={torch.get_num_threads()} samples={a.samples} features={a.features} concepts={a.concepts}")
    print("| method | seconds for all pairs | ms per (feature, concept) | speed-up |")
    print("|---|---|---|---|")
    print(f"| scikit-learn roc_auc_score per pair ({len(pairs)} timed, extrapolated) | {per_pair * total_pairs:,.0f} | "
          f"{per_pair * 1e3:.3f} | 1x |")
    print(f"| roc_auc_matrix | {ours:.2f} | {ours / total_pairs * 1e3:.5f} | {per_pair * total_pairs / ours:,.0f}x |")
    print(f"max |difference| on the timed pairs: {err:.2e}")


if __name__ == "__main__":
    main()
