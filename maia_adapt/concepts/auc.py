"""ROC-AUC of every feature against every binary concept, in one pass of matrix algebra.

AUC is the Mann-Whitney statistic: with features ranked over the N samples (ties get their average
rank), AUC = (sum of the positives' ranks - P(P+1)/2) / (P * (N - P)). Ranking each feature column
once and multiplying by the label matrix scores thousands of features against hundreds of concepts
at the cost of one matmul. Ties matter: sparse features are exactly zero on most samples.
"""
from __future__ import annotations

import torch


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of each column of x [N, F], ties sharing their average rank."""
    s, _ = torch.sort(x, dim=0)
    st, xt = s.T.contiguous(), x.T.contiguous()
    below = torch.searchsorted(st, xt, right=False)  # values strictly smaller
    upto = torch.searchsorted(st, xt, right=True)  # values smaller or equal
    return ((below + upto + 1).to(torch.float64) / 2).T


def roc_auc_matrix(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[F, C] AUC of feature f for concept c; scores [N, F] float, labels [N, C] bool.

    A concept with no positive or no negative sample gets NaN (its AUC is undefined).
    """
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores have {scores.shape[0]} samples but labels have {labels.shape[0]}")
    ranks = average_ranks(scores.float())
    y = labels.to(torch.float64)
    pos = y.sum(0)
    neg = y.shape[0] - pos
    rank_sum = ranks.T @ y  # [F, C]
    auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    auc[:, (pos == 0) | (neg == 0)] = float("nan")
    return auc.float()


def best_auc_per_concept(auc: torch.Tensor, two_sided: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(best AUC, feature index) per concept. two_sided also counts a feature that fires on the
    concept's absence (AUC well below 0.5) as a detector, with score max(AUC, 1 - AUC)."""
    a = torch.maximum(auc, 1 - auc) if two_sided else auc
    a = torch.nan_to_num(a, nan=-1.0)
    best, idx = a.max(dim=0)
    best[best < 0] = float("nan")
    return best, idx
