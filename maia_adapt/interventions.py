"""Causal interventions at a hook site: amplify SAE features, add a probe direction or a steering vector.

All three act on the site's activation [B, tokens, ...] through the model's hook API (a Maia-1 conv map
as its 64 square tokens, `SkillModel.hooks`) and, like the SAE's mean-pooled training, change every
token by the same vector. The SAE intervention keeps the
reconstruction error by default: x + decode(z') - decode(z), so strength 1 changes nothing and only
the amplified features move; `keep_error=False` is the study's variant, which replaces the pooled
activation by the reconstruction, error dropped. Each position can have its own features (those of
the concepts active in it) through a per-sample mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import MaiaAdaptError
from .transitional import correct_by_bucket, predictions_by_bucket, transition_points


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(1)  # [B, tokens, ...] -> [B, features]


def _add_to_tokens(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] plus delta [B, F] on every token (F = the product of the trailing dims)."""
    return (x.flatten(2) + delta[:, None, :]).view_as(x)


def sae_amplify(sae, mask: torch.Tensor, strength: float, keep_error: bool = True):
    """Hook fn multiplying the SAE features in mask [B, F] (bool or weights) by `strength`."""
    mask = mask.float()

    def fn(x, name):
        pooled = _pooled(x).float()
        z = sae.encode(pooled)
        z2 = z * (1 + (strength - 1) * mask.to(z.device))
        if keep_error:
            delta = sae.decode(z2) - sae.decode(z)
        else:
            delta = sae.decode(z2) - pooled
        return _add_to_tokens(x, delta.to(x.dtype))

    return fn


def add_direction(direction: torch.Tensor, alpha: float, mask: torch.Tensor | None = None):
    """Hook fn adding alpha * direction [F] (or per-sample directions [B, F]) to every token; mask [B]
    restricts it to some positions."""

    def fn(x, name):
        d = direction.to(x.dtype).to(x.device)
        delta = (d.expand(x.shape[0], -1) if d.dim() == 1 else d) * alpha
        if mask is not None:
            delta = delta * mask.to(delta.dtype).to(x.device)[:, None]
        return _add_to_tokens(x, delta)

    return fn


def steering_vector(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean pooled activation where the concept holds minus where it does not ([N, F], [N] bool)."""
    if labels.all() or not labels.any():
        raise MaiaAdaptError("a steering vector needs positions with and without the concept")
    return acts[labels].mean(0) - acts[~labels].mean(0)


def matched_random_features(freq: torch.Tensor, chosen: list[int], rng: np.random.Generator, bins: int = 20) -> list[int]:
    """For each chosen feature, a different random feature of similar firing frequency (same quantile
    bin): the control for 'any features that fire this often would do the same'."""
    order = torch.argsort(freq).numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    bin_of = rank * bins // len(order)
    out = []
    for f in chosen:
        pool = np.flatnonzero((bin_of == bin_of[f]) & (np.arange(len(order)) != f))
        out.append(int(rng.choice(pool)) if len(pool) else int(f))
    return out


@dataclass
class BucketReport:
    accuracy: np.ndarray  # [11] fraction of positions where the top move is correct
    correct: np.ndarray  # [N, 11] bool
    transition_points: np.ndarray  # [N]


def evaluate_under(model, store, rows: list[dict], site: str | None = None, make_hook=None, batch_size: int = 256) -> BucketReport:
    """Correct-move accuracy per Elo bucket with an intervention active: make_hook(positions, bucket)
    returns the hook fn at `site` for a batch of row indices under a conditioning bucket (None: no
    intervention)."""
    hooks_for = (lambda pos, k: [(site, make_hook(pos, k))]) if make_hook is not None else None
    preds, _ = predictions_by_bucket(model, store, np.arange(len(rows)), batch_size=batch_size, hooks_for=hooks_for)
    correct = correct_by_bucket(preds, rows)
    return BucketReport(correct.mean(0), correct, transition_points(correct)[0])


def bootstrap_diff(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over positions (per-position values) with a 95% bootstrap interval."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_boot)] if len(d) else [np.nan]
    return float(d.mean()) if len(d) else float("nan"), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))
