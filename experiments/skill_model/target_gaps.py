"""The skill gaps of the distillation targets themselves, for several `train.teacher_amplify` betas:
each network's (amplified) top-k target taken as a predictor of the played move, on test positions
of players < 1100 and >= 2000 (maia-1100's minus maia-1900's accuracy on the first, the reverse on
the second). A student that matched its targets exactly would have these gaps.

    python experiments/skill_model/target_gaps.py [--positions 8000] [--betas 0 1 2 3 6] [--smooth]

--smooth: the targets of `train.teacher_smooth=true` (a line in rating per position and move, its
slope exaggerated by 1 + beta) instead of each network's own.
"""
from __future__ import annotations

import argparse

import numpy as np
from _preset import preset_store_and_teacher

from maia_adapt.model.distill import target_accuracy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=8000, help="test positions of each end bucket")
    ap.add_argument("--betas", type=float, nargs="+", default=[0, 1, 2, 3, 6])
    ap.add_argument("--smooth", action="store_true", help="the rating-line targets (train.teacher_smooth=true)")
    a = ap.parse_args()
    _, store, teacher = preset_store_and_teacher()
    test = store.split_indices("test")
    bucket = np.asarray(store.column("elo_self")[test])
    acc = {}
    for end in (0, 10):
        rows = test[bucket == end]
        rows = np.sort(np.random.default_rng(0).choice(rows, min(a.positions, len(rows)), replace=False))
        acc[end] = target_accuracy(teacher, store, rows, a.betas, smooth=a.smooth)
    kind = "rating-line targets" if a.smooth else "targets"
    print(f"{a.positions} test positions of each end; top-1 of the {kind}, maia-1100 / maia-1900, in %")
    print("| beta | players < 1100 | low gap | players >= 2000 | high gap |")
    print("|---|---|---|---|---|")
    for b in map(float, a.betas):
        lo, hi = acc[0][b], acc[10][b]
        print(f"| {b:g} | {100 * lo[0]:.1f} / {100 * lo[-1]:.1f} | {100 * (lo[0] - lo[-1]):+.1f} | "
              f"{100 * hi[0]:.1f} / {100 * hi[-1]:.1f} | {100 * (hi[-1] - hi[0]):+.1f} |")


if __name__ == "__main__":
    main()
