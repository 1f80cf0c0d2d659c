"""How much of the Maia-1 networks' disagreement is skill, and how much of it a student reproduces.

1. For two networks d hundred points apart, the variance of log p_a - log p_b over the moves both rank
   (weighted by their mean probability; `distill.contrast_loss` with a student that is the same at
   both): a part that grows with d is skill, a part that does not is the noise of separate trainings.
2. For each given Maia-2 (default: the shipped ones), `contrast_loss` between its conditionings at 4
   random buckets per position and the (beta-amplified) targets there, against the same for a student
   blind to its Elo: the share of the targets' differences it reproduces.

    python experiments/skill_model/teacher_differences.py [--positions 2048] [--beta 3] [--models A B ...]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from _preset import preset_store_and_teacher

from maia_adapt.encoding import NUM_BUCKETS
from maia_adapt.model import load_model
from maia_adapt.model.distill import contrast_loss
from maia_adapt.model.skill import lc0_store_planes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=2048, help="random test positions")
    ap.add_argument("--beta", type=float, default=3.0, help="train.teacher_amplify of the targets in part 2")
    ap.add_argument("--models", nargs="*", default=None, help="Maia-2 checkpoints (default: the shipped two)")
    a = ap.parse_args()
    cfg, store, teacher = preset_store_and_teacher()
    rows = np.sort(np.random.default_rng(0).permutation(store.split_indices("test"))[: a.positions])
    batch = store.batch(rows)
    moves, probs = teacher.top_moves(lc0_store_planes(store, rows, True), batch["legal"])

    print(f"1. {len(rows)} test positions: variance of log p_a - log p_b (nats^2) by rating distance")
    same = torch.zeros(len(rows), 2, 1880)
    for d in range(1, len(teacher.ratings)):
        v = [contrast_loss(same, batch["legal"], moves[:, [i, i + d]], probs[:, [i, i + d]]).mean().item()
             for i in range(len(teacher.ratings) - d)]
        print(f"   {100 * d} points: {np.mean(v):.3f} ({len(v)} pairs)")

    teacher.amplify = a.beta
    batch["teacher_moves"], batch["teacher_probs"] = moves, probs  # every network's targets: the cached path
    buckets = torch.randint(0, NUM_BUCKETS, (len(rows), 4), generator=torch.Generator().manual_seed(1))
    m, p = teacher.targets(batch, buckets)
    print(f"2. the targets' differences between 4 random conditionings (beta = {a.beta:g}) a model misses")
    models = a.models or [f"{cfg.paths.assets}/maia2_small.safetensors", f"{cfg.paths.assets}/maia2_skill.safetensors"]
    for path in models:
        model = load_model(path)
        with torch.no_grad():
            tok = model.tokens(batch["boards"])
            logits = model.from_tokens(tok.repeat_interleave(4, 0), buckets.flatten(),
                                       batch["elo_oppo"].repeat_interleave(4, 0))[0].view(len(rows), 4, -1)
        miss = contrast_loss(logits, batch["legal"], m, p).mean().item()
        blind = contrast_loss(logits[:, :1].expand(-1, 4, -1), batch["legal"], m, p).mean().item()
        print(f"   {path}: {miss:.2f}, blind to its Elo {blind:.2f}: reproduces {100 * (1 - miss / blind):.1f}%")


if __name__ == "__main__":
    main()
