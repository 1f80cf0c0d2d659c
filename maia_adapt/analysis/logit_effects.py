"""Which moves a feature pushes up or down: its decoder direction run through the rest of the model.

SAELens / Neuronpedia show a feature's "positive / negative logits", W_dec[f] @ W_U, because a
language model's residual stream reaches the unembedding linearly. Maia-2's policy head sits behind
more transformer blocks, so the direct product means little; instead the direction is written into
the site (alpha * W_dec[f] added to every token, alpha the feature's typical activation) and the
model is run to its policy head. The effect of a move is the change of its log-probability among the
legal moves (log-softmax, so a shift shared by every move counts for nothing), averaged over the
positions where it is legal. Moves are in the side-to-move frame of Maia-2's vocabulary (a
Black-to-move board mirrored), like the concept names: e2e4 is "own pawn two squares forward".
"""
from __future__ import annotations

import numpy as np
import torch

from ..encoding import all_moves
from ..model.activations import elo_buckets_for
from .interventions import add_direction


def _log_probs(logits: torch.Tensor, legal: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float().masked_fill(~legal, float("-inf")), dim=-1)


@torch.no_grad()
def logit_effects(model, store, indices, site: str, directions: dict[int, torch.Tensor], scales: dict[int, float],
                  elo="data", k: int = 5, min_legal: int = 3, seed: int = 0) -> dict[int, dict]:
    """{feature: {"up": [(move, mean change), ...k], "down": [...k], "positions": n}} for each feature's
    direction [d] (the SAE decoder row, or a unit vector for a raw unit) at `site`, scaled by
    scales[feature], on the store rows `indices` (one batch). A move counts where it is legal on at
    least `min_legal` of them (one position's quirk is not a feature's effect)."""
    batch = model.inputs(store, np.asarray(indices))
    legal = batch["legal"].bool()
    es, eo = elo_buckets_for(batch, elo, np.random.default_rng(seed))
    base = _log_probs(model.policy_logits(batch, es, eo).cpu(), legal)
    counts = legal.sum(0)
    names = all_moves()
    out = {}
    for f, d in directions.items():
        with model.hooks([(site, add_direction(d, float(scales[f])))]):
            pushed = _log_probs(model.policy_logits(batch, es, eo).cpu(), legal)
        delta = torch.where(legal, pushed - base, 0.0).sum(0) / counts.clamp(min=1)
        delta = delta.masked_fill(counts < min_legal, float("nan"))
        finite = torch.nan_to_num(delta, nan=0.0)
        up = [int(i) for i in torch.argsort(finite, descending=True)[:k] if finite[i] > 0]
        down = [int(i) for i in torch.argsort(finite)[:k] if finite[i] < 0]
        out[int(f)] = {"up": [(names[i], float(delta[i])) for i in up], "down": [(names[i], float(delta[i])) for i in down],
                       "positions": len(indices), "scale": float(scales[f])}
    return out
