"""Which features detect which concepts: ROC-AUC with selection/held-out splits, a shuffled-label
null and bootstrap confidence intervals.

The best feature of a concept is chosen on the *selection* half of the positions, so its AUC there is
biased upwards (the maximum over thousands of features). The *held-out* half gives the unbiased AUC
of that feature, the null (labels shuffled, the maximum over features recomputed) shows how high the
selection maximum gets by chance, and the bootstrap over held-out positions gives its uncertainty.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .auc import auc_from_rank_sums, average_ranks, paired_auc, roc_auc_matrix


def _balanced_auc(features: torch.Tensor, labels: torch.Tensor, max_per_class: int, rng) -> torch.Tensor:
    """[F, C] AUC with each concept scored on up to max_per_class positives and as many negatives."""
    out = torch.full((features.shape[1], labels.shape[1]), float("nan"))
    for c in range(labels.shape[1]):
        y = labels[:, c].numpy()
        pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
        idx = np.concatenate([rng.permutation(pos)[:max_per_class], rng.permutation(neg)[:max_per_class]])
        if len(idx):
            out[:, c] = roc_auc_matrix(features[idx], labels[idx, c : c + 1])[:, 0]
    return out


@dataclass
class ConceptDetection:
    names: list[str]
    positives: torch.Tensor  # [C] positive positions (selection + held-out)
    top_features: torch.Tensor  # [C, k] best features by selection AUC
    top_auc: torch.Tensor  # [C, k] their selection AUCs
    best_heldout_auc: torch.Tensor  # [C] held-out AUC of the top feature
    ci_low: torch.Tensor  # [C] bootstrap 2.5% of the held-out AUC
    ci_high: torch.Tensor  # [C] bootstrap 97.5%
    null_max95: torch.Tensor  # [C] 95th percentile of the best selection AUC with shuffled labels
    absence_feature: torch.Tensor  # [C] feature whose activity best signals the concept's absence
    absence_auc: torch.Tensor  # [C] its selection 1 - AUC

    def detected(self, threshold: float) -> torch.Tensor:
        """[C] bool: held-out AUC of the selected feature at least `threshold` and above the null."""
        a = torch.nan_to_num(self.best_heldout_auc, nan=0.0)
        return (a >= threshold) & (self.top_auc[:, 0] > torch.nan_to_num(self.null_max95, nan=1.0))

    def rows(self) -> list[dict]:
        out = []
        for c, name in enumerate(self.names):
            out.append({
                "concept": name, "positives": int(self.positives[c]),
                "feature": int(self.top_features[c, 0]), "auc_selection": float(self.top_auc[c, 0]),
                "auc_heldout": float(self.best_heldout_auc[c]), "ci_low": float(self.ci_low[c]),
                "ci_high": float(self.ci_high[c]), "null_max95": float(self.null_max95[c]),
                "absence_feature": int(self.absence_feature[c]), "absence_auc": float(self.absence_auc[c]),
                "top_features": " ".join(str(int(f)) for f in self.top_features[c]),
                "top_auc": " ".join(f"{float(a):.4f}" for a in self.top_auc[c]),
            })
        return out


def detect_concepts(
    features: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    *,
    heldout_fraction: float = 0.5,
    top_k: int = 5,
    n_null: int = 20,
    n_boot: int = 200,
    max_per_class: int | None = None,
    seed: int = 0,
) -> ConceptDetection:
    """Score every feature [N, F] against every concept [N, C] (bool) and pick the best per concept."""
    n = features.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"features have {n} positions but labels have {labels.shape[0]}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_held = int(round(n * heldout_fraction))
    sel, held = np.sort(perm[n_held:]), np.sort(perm[:n_held])
    fs, ys = features[sel], labels[sel]
    auc = _balanced_auc(fs, ys, max_per_class, rng) if max_per_class else roc_auc_matrix(fs, ys)  # [F, C]
    filled = torch.nan_to_num(auc, nan=-1.0)
    k = min(top_k, auc.shape[0])
    top_auc, top_features = filled.topk(k, dim=0)
    top_auc, top_features = top_auc.T.contiguous(), top_features.T.contiguous()
    top_auc[top_auc < 0] = float("nan")
    absence_auc, absence_feature = torch.nan_to_num(1 - auc, nan=-1.0).max(dim=0)
    absence_auc[absence_auc < 0] = float("nan")

    best = top_features[:, 0]
    held_scores = features[held][:, best]  # [Nh, C]: the selected feature of each concept
    yh = labels[held]
    heldout = paired_auc(held_scores, yh)
    boots = []
    for _ in range(n_boot):
        idx = torch.from_numpy(rng.integers(0, len(held), len(held)))
        boots.append(paired_auc(held_scores[idx], yh[idx]))
    if boots:
        b = torch.stack(boots)
        ci_low, ci_high = b.nanquantile(0.025, dim=0), b.nanquantile(0.975, dim=0)
    else:
        ci_low = ci_high = torch.full_like(heldout, float("nan"))

    # the null keeps each concept's positive count and the features' joint distribution
    nulls = []
    ranks = average_ranks(fs.float().T.contiguous()).double()  # [F, Ns], reused for every shuffle
    for _ in range(n_null):
        y = ys[torch.from_numpy(rng.permutation(len(sel)))].double()
        a = auc_from_rank_sums(ranks @ y, y.sum(0), len(sel))
        nulls.append(torch.nan_to_num(a, nan=-1.0).max(dim=0).values)
    null95 = torch.stack(nulls).float().quantile(0.95, dim=0) if nulls else torch.full_like(heldout, float("nan"))
    null95[null95 < 0] = float("nan")
    return ConceptDetection(names, labels.sum(0), top_features, top_auc, heldout, ci_low, ci_high, null95,
                            absence_feature, absence_auc)


def evidence_key(row: dict) -> tuple:
    """Sort key of detection rows (or dashboard concepts with the same keys), best evidence first.

    A held-out AUC is the unbiased estimate, so rows that have one come first, by it; rows without
    one (no held-out half, as in the seed's NeurIPS protocol, or no positive in it) follow, by their
    selection AUC; ties go to the higher selection AUC. Sorting on the held-out AUC alone put NaN keys
    in the sort, which leaves the input order (the concept list's: own_rook@f5 before own_king@f5).
    """
    held, sel = float(row["auc_heldout"]), float(row["auc_selection"])
    sel = sel if np.isfinite(sel) else -np.inf
    return (0, -held, -sel) if np.isfinite(held) else (1, -sel, 0.0)


def read_detection_table(path) -> list[dict]:
    """The rows of a detection_<site>.csv written by stage=threats (numbers as floats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no detection table (expected a stage=threats run scoring this site)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("auc_selection", "auc_heldout", "null_max95"):
            r[k] = float(r[k])
    return rows


def compare_detections(rows: list[dict], other: list[dict], family: dict[str, str], threshold: float = 0.7,
                       n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Paired over the concepts both runs scored, per concept family: the mean of (held-out AUC of this
    run's best feature - the other run's), with a 95% bootstrap over concepts, and each run's
    detected count. Two subjects (a weak and a strong network) or one model conditioned on two Elo
    buckets: an interval above zero means this run's features detect the family's concepts better."""
    theirs = {r["concept"]: r for r in other}
    pairs: dict[str, list] = {}
    for r in rows:
        o = theirs.get(r["concept"])
        if o is not None and np.isfinite(r["auc_heldout"]) and np.isfinite(o["auc_heldout"]):
            pairs.setdefault(family.get(r["concept"], "other"), []).append((r, o))
    rng = np.random.default_rng(seed)
    out = {}
    for fam, ps in pairs.items():
        diff = np.array([r["auc_heldout"] - o["auc_heldout"] for r, o in ps])
        boots = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n_boot)]
        found = [sum(x["auc_heldout"] >= threshold and x["auc_selection"] > x["null_max95"] for x in side)
                 for side in zip(*ps)]
        out[fam] = {"concepts": len(ps), "mean_auc": float(np.mean([r["auc_heldout"] for r, _ in ps])),
                    "mean_auc_other": float(np.mean([o["auc_heldout"] for _, o in ps])),
                    "auc_difference": float(diff.mean()),
                    "auc_difference_ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
                    "detected": int(found[0]), "detected_other": int(found[1])}
    return out
