"""A sweep of a continuous-Elo model (Maia-3) over ratings: `stage=evaluate evaluate.ratings=[1000,1050,...]`.

The skill matrix conditions a model on the 11 Elo buckets; a model whose Elo is a rating can take any
number between them. The sweep conditions every position on each rating of the list (the opponent at
its data bucket's rating, or at the same rating with evaluate.oppo=same) and counts top-1 hits on
the played move per player bucket: rows are the players' buckets, columns the ratings. A player
bucket's best rating is where its column of hits peaks: for a model that adapts to skill, it rises
with the bucket.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..encoding import BUCKET_NAMES, NUM_BUCKETS
from ..errors import ConfigError
from ..io import atomic_write_csv


@torch.no_grad()
def rating_sweep(model, store, indices, ratings, batch_size: int = 512, oppo: str = "data") -> dict:
    """{"ratings", "top1" [R], "top1_bucket" [11][R] (None where a bucket has no positions), "counts" [11],
    "best_rating_bucket" [11]} for a SkillModel with `policy_logits_by_rating` (Maia3Skill)."""
    if not hasattr(model, "policy_logits_by_rating"):
        raise ConfigError(f"evaluate.ratings: {model.name} is conditioned by Elo buckets only; a rating sweep needs "
                          "model=maia3 (a continuous Elo)")
    ratings = [float(r) for r in ratings]
    idx = np.asarray(indices, dtype=np.int64)
    hits = np.zeros((len(idx), len(ratings)), dtype=bool)
    for s in range(0, len(idx), batch_size):
        inputs = model.inputs(store, idx[s : s + batch_size])
        legal, move = inputs["legal"].to(model.device), inputs["move"].to(model.device)
        oppo_r = model._ratings(inputs["elo_oppo"], len(move))
        pairs = [(r, oppo_r if oppo == "data" else r) for r in ratings]
        for j, logits in enumerate(model.policy_logits_by_rating(inputs, pairs)):
            hits[s : s + len(move), j] = (logits.float().masked_fill(~legal, float("-inf")).argmax(-1) == move).cpu().numpy()
    bucket = np.asarray(store.column("elo_self")[idx]).astype(np.int64)
    counts = np.bincount(bucket, minlength=NUM_BUCKETS)
    per = np.stack([hits[bucket == b].mean(0) if counts[b] else np.full(len(ratings), np.nan) for b in range(NUM_BUCKETS)])
    best = [None if not counts[b] else ratings[int(np.argmax(per[b]))] for b in range(NUM_BUCKETS)]
    return {"ratings": ratings, "top1": hits.mean(0).tolist() if len(idx) else [None] * len(ratings),
            "top1_bucket": [[None if not np.isfinite(v) else float(v) for v in row] for row in per],
            "counts": counts.tolist(), "best_rating_bucket": best}


def write_rating_sweep(run_dir, res: dict) -> Path:
    """rating_sweep.csv: a row per player bucket, a column per rating (top-1), its best rating."""
    rows = [{"player_bucket": BUCKET_NAMES[b], "positions": res["counts"][b],
             **{f"Elo {r:g}": (None if v is None else round(v, 6)) for r, v in zip(res["ratings"], res["top1_bucket"][b])},
             "best_rating": res["best_rating_bucket"][b]} for b in range(NUM_BUCKETS)]
    return atomic_write_csv(Path(run_dir) / "rating_sweep.csv", rows)
