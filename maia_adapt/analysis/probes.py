"""Linear concept probes on a SkillModel's activations (Maia-2 or Maia-1), per Elo bucket, and the
logit lens (Maia-2 only).

A probe is one independent logistic regression per concept, fitted on standardised activations so
that a single L2 strength means the same thing at every site. Its `direction` is mapped back to the
raw activation space, the space a steering hook adds to. The logit lens reads the policy the model
would play if it stopped after an earlier block: the residual stream goes through the model's own
final norms and policy head, so the last block's lens is the model's policy, exactly.

The seed study's probe choices are reachable through `ProbeOptions` (experiments/probe_study/README.md,
"The seed's probes"): an L1 penalty (`fit_logistic`, accelerated proximal gradient), a grid of
inverse strengths C chosen per concept and bucket on a validation part (`fit_and_select`), balanced
per-concept samples (`balanced_pool_parts`, `balanced_split_parts`), and accuracy or R^2 of the
predicted probability as the metric (`probe_scores`). The defaults are the probe described above.
"""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..model.activations import collect_activations
from ..concepts.auc import paired_auc
from ..errors import ConfigError, MaiaAdaptError
from ..io import load_safetensors, save_safetensors, to_json
from ..model.inference import masked_probs
from ..model.hooks import block_hook

FORMAT = "maia_adapt.linear_probe.v1"
PENALTIES = ("l2", "l1")
METRICS = ("auc", "accuracy", "r2")
SAMPLINGS = ("split", "balanced", "balanced_splits")
C_SCALES = ("sum", "mean")
# the L1 solver's step cap: weakly penalised probes of nearly separable concepts (sklearn-scale C=100)
# converge slowly; a fit stopped here is counted in the results ("not_converged")
L1_MAX_ITER = 10000


class LinearProbe(nn.Module):
    """logits [N, C] = ((x - mean) / std) @ weight + bias, for activations x [N, d]."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 names: list[str] | None = None, metadata: dict | None = None):
        super().__init__()
        d, c = weight.shape
        if mean.shape != (d,) or std.shape != (d,) or bias.shape != (c,):
            raise MaiaAdaptError(f"probe shapes disagree: mean {tuple(mean.shape)}, std {tuple(std.shape)}, "
                                 f"weight {tuple(weight.shape)}, bias {tuple(bias.shape)}")
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.names = list(names) if names is not None else [str(i) for i in range(c)]
        if len(self.names) != c:
            raise MaiaAdaptError(f"probe has {c} concepts but {len(self.names)} names")
        self.metadata = dict(metadata or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) / self.std) @ self.weight + self.bias

    def index(self, c: int | str) -> int:
        if isinstance(c, str):
            if c not in self.names:
                raise MaiaAdaptError(f"probe has no concept '{c}'")
            return self.names.index(c)
        return int(c)

    def direction(self, c: int | str) -> torch.Tensor:
        """Unit vector [d] in raw activation space along which concept c's logit grows fastest."""
        i = self.index(c)
        w = self.weight[:, i] / self.std  # chain rule through the standardisation
        norm = w.norm()
        if norm == 0:
            # a zero direction would make steering a silent no-op
            raise MaiaAdaptError(f"probe for '{self.names[i]}' has zero weights (no positives or negatives in training)")
        return w / norm


def _fit_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    # a constant feature carries no signal; dividing by ~0 would only amplify float noise
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def train_probes(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, epochs: int = 200, lr: float | None = None,
                 batch_size: int | None = None, seed: int = 0, class_balance: bool = True,
                 names: list[str] | None = None, penalty: str = "l2", l1: float = 1e-3, penalize_bias: bool = False,
                 standardize: bool = True) -> LinearProbe:
    """Fit C independent L2-regularised logistic regressions on x [N, d] for labels y [N, C] bool.

    Objective per concept: weighted mean BCE + l2/2 * |w|^2 on standardised x (sklearn's with
    C = 1 / (l2 * N)). class_balance weights positives by N / (2P) and negatives by N / (2(N-P)),
    so rare concepts are not fitted as "always absent". batch_size None: full-batch L-BFGS for
    `epochs` iterations from zero, deterministic; an int: Adam on minibatches shuffled by `seed`.
    A concept without positives (or without negatives) keeps zero weights and bias.

    penalty="l1" (weighted mean BCE + l1 * |w|_1, sklearn's with C = 1 / (l1 * N)), penalize_bias
    or standardize=False fit with fit_logistic instead (full batch only).
    """
    if x.dim() != 2 or y.dim() != 2 or len(x) != len(y):
        raise MaiaAdaptError(f"train_probes: expected x [N, d] and y [N, C], got {tuple(x.shape)} and {tuple(y.shape)}")
    opts = ProbeOptions(penalty=penalty, l2=l2, l1=l1, penalize_bias=penalize_bias, standardize=standardize,
                        class_balance=class_balance)
    if not opts.todays_fit:
        if batch_size is not None:
            raise MaiaAdaptError("train_probes: penalty l1, penalize_bias and standardize=False fit full-batch only "
                                 "(batch_size None)")
        fit = fit_and_select(x[None], y[None], torch.ones(1, len(x), dtype=torch.bool), opts,
                             max_iter=None if penalty == "l1" else epochs)
        return LinearProbe(fit["mean"][0], fit["std"][0], fit["weight"][0], fit["bias"][0], names)
    x, y = x.float(), y.bool()
    n, c = y.shape
    mean, std = _fit_stats(x)
    z = (x - mean) / std
    yf = y.float()
    pos = yf.sum(0)
    active = (pos > 0) & (pos < n)
    if class_balance:
        w_pos = torch.where(active, n / (2 * pos.clamp(min=1)), 0.0)
        w_neg = torch.where(active, n / (2 * (n - pos).clamp(min=1)), 0.0)
    else:
        w_pos = w_neg = active.float()
    weight = torch.zeros(x.shape[1], c, device=x.device, requires_grad=True)
    bias = torch.zeros(c, device=x.device, requires_grad=True)

    def loss_on(zb, yb):
        sample_w = yb * w_pos + (1 - yb) * w_neg
        bce = nn.functional.binary_cross_entropy_with_logits(zb @ weight + bias, yb, reduction="none")
        # summed over concepts: they share no parameters, so each gets its own optimum
        return (sample_w * bce).mean(0).sum() + 0.5 * l2 * weight.pow(2).sum()

    if batch_size is None:
        opt = torch.optim.LBFGS([weight, bias], lr=lr or 1.0, max_iter=epochs, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-10)

        def closure():
            opt.zero_grad()
            loss = loss_on(z, yf)
            loss.backward()
            return loss

        opt.step(closure)
    else:
        opt = torch.optim.Adam([weight, bias], lr=lr or 1e-2)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            for b in torch.randperm(n, generator=gen).split(batch_size):
                b = b.to(x.device)
                opt.zero_grad()
                loss_on(z[b], yf[b]).backward()
                opt.step()
    with torch.no_grad():
        weight[:, ~active] = 0
        bias[~active] = 0
    return LinearProbe(mean, std, weight.detach().clone(), bias.detach().clone(), names)


@torch.no_grad()
def evaluate_probes(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-concept AUC and R^2 of the probability (NaN where y has one class only), accuracy at logit 0
    and positive counts (probe_scores)."""
    logits = probe(x.to(probe.mean.device))
    y = y.bool().to(logits.device)
    return {"names": probe.names, **probe_scores(logits, y), "positives": y.sum(0).cpu()}


@dataclass(frozen=True)
class ProbeOptions:
    """How a probe is fitted, selected and scored (stage=probe's `probe.*` keys of the same names).

    penalty l2: weighted mean BCE + l2/2 |w|^2 (on standardised activations unless not `standardize`);
    l1: weighted mean BCE + l1 |w|_1. `c_grid` empty: that fixed strength. `c_grid` given: one fit per
    C, and per (concept, bucket) the C whose probe scores best on the validation part by `select_by`
    (first in grid order on ties). C maps to the strength on the mean loss as
      c_scale=sum  (sklearn's C, which multiplies the SUM of the losses): lambda = 1 / (C * n),
      c_scale=mean (the seed revision's torch probe: mean batch loss + (1/C) * penalty): lambda = 1 / C,
    with n the probe's train rows; so C=1 with c_scale=sum is sklearn's LogisticRegression(C=1)
    (class_weight='balanced' when class_balance). penalize_bias: the penalty also takes the bias, as
    liblinear (its intercept is a penalised feature) and the revision (|b| in its L1 term) do."""

    penalty: str = "l2"
    l2: float = 1.0e-3
    l1: float = 1.0e-3
    c_grid: tuple = ()
    c_scale: str = "sum"
    select_by: str = "auc"
    metric: str = "auc"
    penalize_bias: bool = False
    standardize: bool = True
    class_balance: bool = True

    @classmethod
    def from_config(cls, pc) -> "ProbeOptions":
        grid = tuple(float(c) for c in (pc.c_grid or ()))
        return cls(penalty=str(pc.penalty), l2=float(pc.l2), l1=float(pc.l1), c_grid=grid, c_scale=str(pc.c_scale),
                   select_by=str(pc.metric if pc.select_by == "metric" else pc.select_by), metric=str(pc.metric),
                   penalize_bias=bool(pc.penalize_bias), standardize=bool(pc.standardize),
                   class_balance=bool(pc.class_balance))

    @property
    def todays_fit(self) -> bool:
        """The fit `train_probes` has always made (L2, fixed strength, standardised, bias free)."""
        return self.penalty == "l2" and not self.c_grid and not self.penalize_bias and self.standardize

    def strengths(self, n_rows: torch.Tensor) -> torch.Tensor:
        """[K, G] strength on the mean loss for K problems of n_rows [K] train rows and the G grid
        entries (G = 1: the fixed strength)."""
        n = n_rows.double().clamp(min=1)[:, None]
        if not self.c_grid:
            return torch.full((len(n), 1), self.l1 if self.penalty == "l1" else self.l2, dtype=torch.float64)
        c = torch.tensor(self.c_grid, dtype=torch.float64)[None, :]
        return (1.0 / (c * n)) if self.c_scale == "sum" else (1.0 / c).expand(len(n), -1).clone()


def _row_weights(y: torch.Tensor, mask: torch.Tensor, class_balance: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row weights a [K, n, G] summing to 1 per column (the weighted mean of the loss; 0 on padding
    rows) and active [K, G]: columns with both classes. Class balance as in train_probes."""
    m = mask.to(y.dtype)[:, :, None]
    n = m.sum(1, keepdim=True)
    pos = (y * m).sum(1, keepdim=True)
    active = (pos > 0) & (pos < n)
    if class_balance:
        w = torch.where(y > 0, n / (2 * pos.clamp(min=1)), n / (2 * (n - pos).clamp(min=1)))
    else:
        w = torch.ones_like(y)
    return w * m * active / n.clamp(min=1), active[:, 0]


def fit_logistic(z: torch.Tensor, y: torch.Tensor, a: torch.Tensor, lam: torch.Tensor, penalty: str = "l2",
                 penalize_bias: bool = False, max_iter: int | None = None, tol: float = 1e-6,
                 feature_scale: torch.Tensor | None = None, init: tuple | None = None):
    """Independent penalised logistic regressions, batched: problem k's column g minimises
    sum_i a[k,i,g] * BCE(z[k,i] . W[k,:,g] + b[k,g], y[k,i,g]) + lam[k,g] * P(W[k,:,g]) (and P(b) when
    penalize_bias), with P = |w|^2 / 2 (l2) or |w|_1 (l1). z [K, n, d], y and a [K, n, G], lam [K, G];
    feature_scale [K, d] (l1 only) multiplies the weights' strength per feature (the bias keeps lam);
    init (W, b): the starting point (a warm start), else zero.

    l2: full-batch L-BFGS (strong Wolfe) for max_iter (200) iterations, as train_probes.
    l1: FISTA (accelerated proximal gradient with soft-thresholding, so weights are exactly zero
    off the support) with gradient-based adaptive restart and per-column step 1/L, L the largest
    eigenvalue of the weighted Gram matrix / 4 (power iteration, x1.1); it stops when every column's
    gradient mapping is below `tol` or after max_iter (L1_MAX_ITER) steps. Deterministic.
    Returns W [K, d, G], b [K, G] and converged [K, G] bool (l2: the largest gradient entry < 1e-4)."""
    # column-major inside: [K, G, n] scores and [K, G, d] weights, so the products are (G x d)(d x n)
    # and (G x n)(n x d), which MKL runs several times faster than (n x d)(d x G) for a few columns
    zt = z.float().transpose(1, 2).contiguous()  # [K, d, n]
    z = z.float().contiguous()
    y, a = y.float().transpose(1, 2).contiguous(), a.float().transpose(1, 2).contiguous()  # [K, G, n]
    lam_b = lam.to(z)[:, :, None]  # [K, G, 1]
    k_, _, d = z.shape
    g_ = y.shape[1]
    w0 = torch.zeros(k_, g_, d) if init is None else init[0].float().transpose(1, 2).contiguous()
    b0 = torch.zeros(k_, g_, 1) if init is None else init[1].float()[:, :, None].clone()
    if penalty == "l2":
        w = w0.clone().requires_grad_(True)
        b = b0.clone().requires_grad_(True)

        def loss_fn():
            bce = nn.functional.binary_cross_entropy_with_logits(torch.baddbmm(b, w, zt), y, reduction="none")
            loss = (a * bce).sum() + 0.5 * (lam_b * w.pow(2)).sum()
            return loss + 0.5 * (lam_b * b.pow(2)).sum() if penalize_bias else loss

        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter or 200, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-10)

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        opt.step(closure)
        opt.zero_grad()
        loss_fn().backward()
        grad = torch.maximum(w.grad.abs().amax(2), b.grad.abs()[:, :, 0])
        return w.detach().transpose(1, 2), b.detach()[:, :, 0], grad < 1e-4
    if penalty != "l1":
        raise MaiaAdaptError(f"penalty '{penalty}': expected one of {', '.join(PENALTIES)}")
    lam_w = lam_b if feature_scale is None else lam_b * feature_scale.to(z)[:, None, :]
    w, b, conv = _fista_l1(z, zt, y, a, lam_w, lam_b, penalize_bias, max_iter or L1_MAX_ITER, tol, w0, b0)
    return w.transpose(1, 2), b[:, :, 0], conv[:, :, 0]


def _fista_l1(z, zt, y, a, lam_w, lam_b, penalize_bias: bool, max_iter: int, tol: float, w0, b0,
              compact_every: int = 50):
    """fit_logistic's l1 solver, column-major (y, a [K, G, n]; weights [K, G, d]; lam_w [K, G, 1 or d]).
    Every `compact_every` steps the problems and columns that have converged everywhere are set
    aside, so the slow (weakly penalised) ones do not make the others pay."""
    k_, g_ = y.shape[:2]
    d = z.shape[2]
    # L: the largest eigenvalue of [z 1]^T diag(a) [z 1] per column, by power iteration from a fixed start
    vw, vb = torch.ones(k_, g_, d), torch.ones(k_, g_, 1)
    ev = torch.zeros(k_, g_, 1)
    for _ in range(60):
        norm = (vw.pow(2).sum(2, keepdim=True) + vb.pow(2)).sqrt().clamp(min=1e-30)
        vw, vb = vw / norm, vb / norm
        u = a * torch.baddbmm(vb, vw, zt)
        vw, vb = torch.bmm(u, z), u.sum(2, keepdim=True)
        ev = (vw.pow(2).sum(2, keepdim=True) + vb.pow(2)).sqrt()
    lip = 1.1 * ev / 4
    lip = torch.where(lip > 0, lip, torch.ones_like(lip))
    w_out, b_out = w0.clone(), b0.clone()
    conv_out = torch.zeros(k_, g_, 1, dtype=torch.bool)
    ks, gs = torch.arange(k_), torch.arange(g_)  # the live problems and columns
    zz, zzt, yy, aa, ll, th, thb = z, zt, y, a, lip, lam_w / lip, lam_b / lip  # thresholds: weights, bias
    w, b = w0.clone(), b0.clone()
    yw, yb, t = w, b, torch.ones(k_, g_, 1)
    for it in range(1, max_iter + 1):
        r = aa * (torch.sigmoid(torch.baddbmm(yb, yw, zzt)) - yy)
        vw, vb = yw - torch.bmm(r, zz) / ll, yb - r.sum(2, keepdim=True) / ll
        nw = torch.sign(vw) * (vw.abs() - th).clamp(min=0)
        nb = torch.sign(vb) * (vb.abs() - thb).clamp(min=0) if penalize_bias else vb
        conv = torch.maximum((yw - nw).abs().amax(2, keepdim=True), (yb - nb).abs()) * ll <= tol
        # restart the momentum of a column whose last step went against its gradient mapping
        restart = ((yw - nw) * (nw - w)).sum(2, keepdim=True) + (yb - nb) * (nb - b) > 0
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        beta = torch.where(restart, torch.zeros_like(t), (t - 1) / t_next)
        t = torch.where(restart, torch.ones_like(t), t_next)
        yw, yb = nw + beta * (nw - w), nb + beta * (nb - b)
        w, b = nw, nb
        done = bool(conv.all()) or it == max_iter
        if done or it % compact_every == 0:
            w_out[ks[:, None], gs[None, :]] = w
            b_out[ks[:, None], gs[None, :]] = b
            conv_out[ks[:, None], gs[None, :]] = conv
            if done:
                break
            live_k, live_g = ~conv.all(2).all(1), ~conv.all(2).all(0)
            if not (live_k.all() and live_g.all()):
                ks, gs = ks[live_k], gs[live_g]
                sel = lambda v: v[live_k][:, live_g]
                zz, zzt = zz[live_k], zzt[live_k]
                yy, aa, ll, th, thb, w, b, yw, yb, t = map(sel, (yy, aa, ll, th, thb, w, b, yw, yb, t))
    return w_out, b_out, conv_out


def probe_scores(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """Per column of logits [N, C] against labels y [N, C]: ROC-AUC, accuracy at p > 0.5 (logit > 0;
    the revision's `sigmoid > 0.5`) and R^2 of the predicted probability p against the 0/1 label,
    1 - sum (y - p)^2 / sum (y - mean y)^2 (sklearn's r2_score(y, p), the NeurIPS probes' metric).
    AUC and R^2 are NaN where a column has one class only."""
    logits, y = logits.float().cpu(), y.bool().cpu()
    yd = y.double()
    p = torch.sigmoid(logits.double())
    ss_tot = (yd - yd.mean(0)).pow(2).sum(0)
    r2 = 1 - (yd - p).pow(2).sum(0) / ss_tot
    return {"auc": paired_auc(logits, y), "accuracy": ((logits > 0) == y).float().mean(0),
            "r2": r2.masked_fill(ss_tot == 0, float("nan")).float()}


def _fit_in_scale(x, mask, mean, std, y, a, lam, opts: "ProbeOptions", max_iter=None, init=None):
    """fit_logistic on (x - mean) / std. With standardize=False and the L1 penalty the raw problem is
    solved on x / s (s: each feature's spread over the real rows) with per-feature thresholds lam / s,
    the same optimum (w_raw = w / s; the bias is the same parameter, penalised or not) with a far better
    conditioned gradient step; the weights come back in raw space. init: a warm start in the space
    the weights come back in."""
    if opts.standardize or opts.penalty != "l1":
        return fit_logistic((x.float() - mean[:, None]) / std[:, None], y, a, lam, opts.penalty, opts.penalize_bias,
                            max_iter=max_iter, init=init)
    _, s = _standardise(x.float(), mask, True)
    init = None if init is None else (init[0] * s[:, :, None], init[1])
    w, b, conv = fit_logistic(x.float() / s[:, None], y, a, lam, opts.penalty, opts.penalize_bias,
                              max_iter=max_iter, feature_scale=1 / s, init=init)
    return w / s[:, :, None], b, conv


def _standardise(x: torch.Tensor, mask: torch.Tensor, on: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem mean and std [K, d] of x [K, n, d] over its real rows (mask [K, n]), as _fit_stats."""
    if not on:
        return torch.zeros(x.shape[0], x.shape[2]), torch.ones(x.shape[0], x.shape[2])
    m = mask.float()[:, :, None]
    n = m.sum(1).clamp(min=1)
    mean = (x * m).sum(1) / n
    std = (((x - mean[:, None]) * m).pow(2).sum(1) / n).sqrt()
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def fit_and_select(x_tr, y_tr, mask_tr, opts: ProbeOptions, x_va=None, y_va=None, mask_va=None,
                   max_iter: int | None = None, init: tuple | None = None) -> dict:
    """K batched probe problems, each with C concept columns: x [K, n, d] raw activations, y [K, n, C]
    bool, mask [K, n] (real rows; padding rows are ignored). Without a grid: one fit at the fixed
    strength. With `opts.c_grid`: one fit per C and per (problem, concept) the C whose probe scores
    best on the validation rows by `opts.select_by`, first in grid order on ties.

    Returns mean/std [K, d] (the standardisation, from the train rows), weight [K, d, C] and bias [K, C]
    (in standardised space), lam [K, C] (the strength used), chosen [K, C] (grid index, -1 without a
    grid), not_converged (fits, counting every grid entry, that did not reach the tolerance) and
    state: every grid entry's fit, which `init` takes as a warm start (e.g. the previous bucket's)."""
    k_, _, c_ = y_tr.shape
    mean, std = _standardise(x_tr.float(), mask_tr, opts.standardize)
    lam = opts.strengths(mask_tr.sum(1))  # [K, G]
    g_ = lam.shape[1]
    y_rep = y_tr.float().repeat(1, 1, g_)  # column g * C + c
    a, active = _row_weights(y_rep, mask_tr, opts.class_balance)
    lam_cols = lam.repeat_interleave(c_, dim=1)
    w, b, conv = _fit_in_scale(x_tr, mask_tr, mean, std, y_rep, a, lam_cols, opts, max_iter, init)
    w = torch.where(active[:, None, :], w, torch.zeros_like(w))
    b = torch.where(active, b, torch.zeros_like(b))
    state = (w, b)
    not_converged = int((~conv & active).sum())
    if g_ == 1:
        chosen = torch.full((k_, c_), -1, dtype=torch.long)
    else:
        if x_va is None:
            raise MaiaAdaptError("fit_and_select: a C grid needs validation rows to choose C on")
        zv = (x_va.float() - mean[:, None]) / std[:, None]
        logits = torch.baddbmm(b[:, None, :], zv, w)  # [K, n_val, G * C]
        score = torch.stack([probe_scores(logits[k][mask_va[k]], y_va[k][mask_va[k]].repeat(1, g_))[opts.select_by]
                             for k in range(k_)])
        score = torch.nan_to_num(score.view(k_, g_, c_), nan=-float("inf"))
        chosen = score.argmax(1)  # the first maximum: grid order breaks ties
        w = w.view(k_, -1, g_, c_).gather(2, chosen[:, None, None, :].expand(-1, w.shape[1], 1, -1))[:, :, 0]
        b = b.view(k_, g_, c_).gather(1, chosen[:, None, :])[:, 0]
    lam_used = lam.gather(1, chosen.clamp(min=0)) if g_ > 1 else lam.expand(-1, c_)
    return {"mean": mean, "std": std, "weight": w, "bias": b, "lam": lam_used, "chosen": chosen,
            "not_converged": not_converged, "state": state}


def _concept_seed(seed: int, name: str, part: int = 0) -> np.random.Generator:
    # by name, so a concept's sample does not depend on which other concepts are probed with it
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), part])


def balanced_pool_parts(pool_idx, labels: torch.Tensor, names: list[str], max_per_class: int | None,
                        fractions=(0.7, 0.1, 0.2), seed: int = 0, min_per_part: int = 20) -> dict:
    """The seed revision's concept positions (train_probes.py collect_concept_positions and
    split_train_val_test), from one labelled pool of store positions pool_idx [N] (labels [N, C]).

    Per concept: n = min(positives, negatives, max_per_class) positives and n negatives drawn without
    replacement (seeded by `seed` and the concept's name), each class split train/val/test by
    `fractions` (int(n * f_train), int(n * f_val), the rest), so every part is balanced. A concept is
    kept when each part has at least `min_per_part` rows of each class. Returns {"parts": {name:
    {part: (store indices, labels)}} for the kept concepts, in their order, "left_out": names}."""
    pool_idx = np.asarray(pool_idx)
    lab = labels.bool().numpy()
    cap = np.inf if max_per_class is None else int(max_per_class)
    parts, left_out = {}, []
    for c, name in enumerate(names):
        rng = _concept_seed(seed, name)
        pos, neg = np.flatnonzero(lab[:, c]), np.flatnonzero(~lab[:, c])
        n = int(min(len(pos), len(neg), cap))
        p, q = rng.permutation(pos)[:n], rng.permutation(neg)[:n]
        n_tr, n_va = int(n * fractions[0]), int(n * fractions[1])
        cuts = {"train": (0, n_tr), "val": (n_tr, n_tr + n_va), "test": (n_tr + n_va, n)}
        if min(hi - lo for lo, hi in cuts.values()) < max(min_per_part, 1):
            left_out.append(name)
            continue
        parts[name] = {}
        for part, (lo, hi) in cuts.items():
            rows = np.concatenate([p[lo:hi], q[lo:hi]])
            order = np.argsort(pool_idx[rows], kind="stable")
            parts[name][part] = (pool_idx[rows][order], np.r_[np.ones(hi - lo, bool), np.zeros(hi - lo, bool)][order])
    return {"parts": parts, "left_out": left_out}


def balanced_split_parts(pools: dict, names: list[str], max_per_class: int | None = None, seed: int = 0,
                         min_per_part: int = 20) -> dict:
    """The NeurIPS probes' balancing (run_probes.py create_square_dataset), within each predefined
    split: pools {part: (store indices [N_p], labels [N_p, C])} for train, val and test. Per concept and
    part: every positive (at most max_per_class; the seed had no cap) and as many negatives, drawn
    without replacement (all of them when the positives outnumber them). A concept is kept when every
    part has at least `min_per_part` positives and negatives. Same return as balanced_pool_parts."""
    cap = np.inf if max_per_class is None else int(max_per_class)
    parts, left_out = {}, []
    for c, name in enumerate(names):
        chosen = {}
        for j, (part, (idx, labels)) in enumerate(pools.items()):
            idx, lab = np.asarray(idx), labels[:, c].bool().numpy()
            rng = _concept_seed(seed, name, j + 1)
            pos, neg = np.flatnonzero(lab), np.flatnonzero(~lab)
            p = rng.permutation(pos)[: int(min(len(pos), cap))]
            q = rng.permutation(neg)[: min(len(p), len(neg))]
            if min(len(p), len(q)) < max(min_per_part, 1):
                break
            rows = np.sort(np.concatenate([p, q]))
            chosen[part] = (idx[rows], lab[rows])
        else:
            parts[name] = chosen
            continue
        left_out.append(name)
    return {"parts": parts, "left_out": left_out}


def activations_by_bucket(model, store, indices, sites, buckets, batch_size: int = 256):
    """Yield (bucket, {site: [len(indices), d]}) for each bucket, mean-pooled as collect_activations
    (and equal to it). A Maia-2's CNN trunk does not see the Elo: its tokens are computed once and kept
    ([N, 8, dim] floats) for every bucket; other models run collect_activations per bucket."""
    from ..model.activations import pool
    from ..model.skill import Maia2Skill, as_skill_model

    model = as_skill_model(model)
    indices = np.asarray(indices)
    for s in sites:
        model.check_hook_name(s)
    if not isinstance(model, Maia2Skill):
        for bk in buckets:
            yield bk, collect_activations(model, store, indices, list(sites), batch_size=batch_size, elo=bk,
                                          device=model.device)
        return
    net, device = model.model, model.device
    cache: dict = {}
    hooks = [(s, lambda x, name: cache.__setitem__(name, x.detach())) for s in sites]
    tokens, fixed = [], {s: [] for s in sites}
    # no yield inside these blocks: grad mode and the hooks must not leak into the caller's loop body
    with torch.no_grad(), net.hooks(hooks):
        for start in range(0, len(indices), batch_size):
            cache.clear()
            tokens.append(net.tokens(model.inputs(store, indices[start : start + batch_size])["boards"].to(device)))
            for s in list(cache):  # sites before the transformer do not depend on the Elo
                fixed[s].append(pool(cache[s], "mean").float().cpu())
    for bk in buckets:
        out = {s: [] for s in sites}
        with torch.no_grad(), net.hooks(hooks):
            for tok in tokens:
                cache.clear()
                e = torch.full((len(tok),), int(bk), dtype=torch.long, device=device)
                net.from_tokens(tok, e, e)
                for s in sites:
                    out[s].append(fixed[s][len(out[s])] if fixed[s] else pool(cache[s], "mean").float().cpu())
        yield bk, {s: torch.cat(v) for s, v in out.items()}


def _padded(x: torch.Tensor, groups: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `groups[k]` of x [U, d] as [K, max rows, d] with zero padding, and the real-row mask [K, max]."""
    n = max(len(g) for g in groups)
    out = torch.zeros(len(groups), n, x.shape[1])
    mask = torch.zeros(len(groups), n, dtype=torch.bool)
    for k, g in enumerate(groups):
        out[k, : len(g)] = x[torch.from_numpy(g)]
        mask[k, : len(g)] = True
    return out, mask


def _padded_labels(labels: list[np.ndarray], n: int) -> torch.Tensor:
    out = torch.zeros(len(labels), n, 1, dtype=torch.bool)
    for k, y in enumerate(labels):
        out[k, : len(y), 0] = torch.from_numpy(np.asarray(y, bool))
    return out


def probes_balanced(model, store, parts: dict, sites, buckets=range(11), opts: ProbeOptions = ProbeOptions(),
                    seed: int = 0, shuffled_control: bool = True, batch_size: int = 256,
                    max_floats: int = 1 << 25) -> dict:
    """Probes per site and Elo bucket on per-concept balanced positions (balanced_pool_parts or
    balanced_split_parts: {name: {"train"|"val"|"test": (store indices, labels)}}): each concept's probe
    is fitted on its own train rows (C chosen on its val rows when opts.c_grid) and scored on its test
    rows. The activations of every position any concept uses are computed once per bucket for all
    sites. The control refits each concept on its train labels permuted (seeded by its name) at the
    strength chosen for the real probe. Each bucket's fits start from the previous bucket's
    solution (the same optimum, to the solver's tolerance, reached in fewer steps). Returns {site:
    the keys probes_per_bucket returns}; each bucket's LinearProbe holds raw-space weights (mean 0,
    std 1: each concept was standardised with its own train rows)."""
    names = list(parts)
    if not names:
        raise MaiaAdaptError("probes_balanced: no concept to probe")
    buckets = [int(bk) for bk in buckets]
    union = np.unique(np.concatenate([parts[c][p][0] for c in names for p in ("train", "val", "test")]))
    rows = {p: [np.searchsorted(union, parts[c][p][0]) for c in names] for p in ("train", "val", "test")}
    ys = {p: [np.asarray(parts[c][p][1], bool) for c in names] for p in ("train", "val", "test")}
    perms = [_concept_seed(seed, c, 99).permutation(len(ys["train"][k])) for k, c in enumerate(names)]
    grid = torch.tensor(opts.c_grid or [float("nan")], dtype=torch.float64)
    keys = ("auc", "accuracy", "r2", "control_auc", "control_accuracy", "control_r2", "chosen_c")
    out = {s: {"rows": {k: [] for k in keys}, "probes": {}, "ends": [], "not_converged": 0} for s in sites}
    d_max = max(len(r) for p in rows.values() for r in p)
    warm: dict = {}
    print(f"balanced probes: {len(names)} concepts, {len(union):,} positions, buckets {buckets}")
    start = time.time()
    for bk, acts in activations_by_bucket(model, store, union, list(sites), buckets, batch_size=batch_size):
        for site in sites:
            x = acts[site]
            step = max(1, max_floats // (d_max * x.shape[1]))
            res = {k: [] for k in keys}
            ws, bs = [], []
            for lo in range(0, len(names), step):
                ks = range(lo, min(lo + step, len(names)))
                xt, mt = _padded(x, [rows["train"][k] for k in ks])
                yt = _padded_labels([ys["train"][k] for k in ks], xt.shape[1])
                xv, mv = _padded(x, [rows["val"][k] for k in ks])
                yv = _padded_labels([ys["val"][k] for k in ks], xv.shape[1])
                # warm start from the previous bucket's fit of the same concepts (same chunks every bucket)
                fit = fit_and_select(xt, yt, mt, opts, xv, yv, mv, init=warm.get((site, lo)))
                warm[(site, lo)] = fit["state"]
                out[site]["not_converged"] += fit["not_converged"]
                ctrl = None
                if shuffled_control:
                    yp = _padded_labels([ys["train"][k][perms[k]] for k in ks], xt.shape[1])
                    ctrl = _fit_at(xt, yp, mt, opts, fit["lam"], init=warm.get((site, lo, "control")))
                    warm[(site, lo, "control")] = ctrl["state"]
                    out[site]["not_converged"] += ctrl["not_converged"]
                for j, k in enumerate(ks):
                    xs, y_te = x[torch.from_numpy(rows["test"][k])], torch.from_numpy(ys["test"][k])[:, None]
                    z = (xs - fit["mean"][j]) / fit["std"][j]
                    sc = probe_scores(z @ fit["weight"][j] + fit["bias"][j], y_te)
                    for m in METRICS:
                        res[m].append(sc[m][0])
                        if ctrl is not None:
                            zc = (xs - ctrl["mean"][j]) / ctrl["std"][j]
                            res[f"control_{m}"].append(
                                probe_scores(zc @ ctrl["weight"][j] + ctrl["bias"][j], y_te)[m][0])
                        else:
                            res[f"control_{m}"].append(torch.tensor(float("nan")))
                    g = int(fit["chosen"][j, 0])
                    res["chosen_c"].append(grid[g] if g >= 0 else grid[0])
                    w = fit["weight"][j][:, 0] / fit["std"][j]  # raw space
                    ws.append(w)
                    bs.append(fit["bias"][j][0] - (fit["mean"][j] * w).sum())
            for k in keys:
                out[site]["rows"][k].append(torch.stack(res[k]) if k == "chosen_c" else torch.stack(res[k]).float())
            probe = LinearProbe(torch.zeros(x.shape[1]), torch.ones(x.shape[1]), torch.stack(ws, 1), torch.stack(bs),
                                names, {"site": site, "elo_bucket": bk})
            out[site]["probes"][bk] = probe
            if bk in (buckets[0], buckets[-1]):
                test_rows = np.unique(np.concatenate(rows["test"]))[:2000]
                out[site]["ends"].append(x[torch.from_numpy(test_rows)])
        print(f"  bucket {bk} done ({(time.time() - start) / 60:.1f} min)", flush=True)
    results = {}
    one_space = len(as_skill(model).spaces()) == 1
    for site, o in out.items():
        r = {k: torch.stack(v) for k, v in o["rows"].items()}
        change = activation_change(o["ends"][0], o["ends"][-1]) if one_space and len(o["ends"]) == 2 else None
        results[site] = {**r, "probes": o["probes"], "buckets": buckets, "names": names, "site": site,
                         "activation_change": change, "not_converged": o["not_converged"]}
    return results


def _fit_at(x, y, mask, opts: ProbeOptions, lam: torch.Tensor, init: tuple | None = None) -> dict:
    """fit_and_select at given strengths lam [K, C] (the control's: the real probe's chosen ones)."""
    mean, std = _standardise(x.float(), mask, opts.standardize)
    a, active = _row_weights(y.float(), mask, opts.class_balance)
    w, b, conv = _fit_in_scale(x, mask, mean, std, y.float(), a, lam, opts, init=init)
    w = torch.where(active[:, None, :], w, torch.zeros_like(w))
    b = torch.where(active, b, torch.zeros_like(b))
    return {"mean": mean, "std": std, "weight": w, "bias": b, "state": (w, b),
            "not_converged": int((~conv & active).sum())}


def as_skill(model):
    from ..model.skill import as_skill_model

    return as_skill_model(model)


def _site_activations(model, store, indices, site, bucket, batch_size, device) -> torch.Tensor:
    return collect_activations(model, store, np.asarray(indices), [site], batch_size=batch_size, elo=bucket,
                               device=device)[site]


def activation_change(x_low: torch.Tensor, x_high: torch.Tensor) -> dict:
    """How far the Elo input moves a site's activations: the same positions [N, d] at two buckets.
    `change`: the mean distance between them over the mean distance of the low bucket's activations
    from their mean (the spread over positions); `position_dependent`: the same after removing the
    mean shift, which a probe's bias absorbs. Near 0: flat probe AUC across skill says nothing, the
    buckets see the same activations; well above 0: the representation moves and the probes read the
    concepts off it as well at every bucket."""
    d = (x_high - x_low).double()
    spread = (x_low - x_low.mean(0)).double().norm(dim=1).mean().clamp_min(1e-12)
    return {"change": float(d.norm(dim=1).mean() / spread),
            "position_dependent": float((d - d.mean(0)).norm(dim=1).mean() / spread)}


def _fit_probe(x_tr, y_tr, opts: ProbeOptions, names, seed, x_va=None, y_va=None, lam=None, init=None,
               **train_kw):
    """(LinearProbe, chosen grid index [C] or None, strength [C], fits not converged, warm-start state)
    on one shared set of rows: today's train_probes when opts.todays_fit and no strength is imposed,
    otherwise fit_and_select (lam [C]: fit at these strengths, the control's; init: a warm start)."""
    if opts.todays_fit and lam is None:
        kw = {} if opts.class_balance else {"class_balance": False}
        return train_probes(x_tr, y_tr, l2=opts.l2, seed=seed, names=names, **kw, **train_kw), None, None, 0, None
    mask = torch.ones(1, len(x_tr), dtype=torch.bool)
    if lam is not None:
        fit = {**_fit_at(x_tr[None], y_tr[None], mask, opts, lam[None], init=init), "chosen": None, "lam": lam[None]}
    else:
        fit = fit_and_select(x_tr[None], y_tr[None], mask, opts,
                             None if x_va is None else x_va[None], None if y_va is None else y_va[None],
                             None if x_va is None else torch.ones(1, len(x_va), dtype=torch.bool), init=init)
    probe = LinearProbe(fit["mean"][0], fit["std"][0], fit["weight"][0], fit["bias"][0], names)
    chosen = None if fit["chosen"] is None or (fit["chosen"] < 0).all() else fit["chosen"][0]
    return probe, chosen, fit["lam"][0], fit["not_converged"], fit["state"]


def probes_per_bucket(model, store, train_idx, test_idx, site: str, labels_train: torch.Tensor,
                      labels_test: torch.Tensor, names: list[str], buckets=range(11), l2: float = 1e-3,
                      seed: int = 0, shuffled_control: bool = True, batch_size: int = 256, val_idx=None,
                      labels_val: torch.Tensor | None = None, opts: ProbeOptions | None = None, **train_kw) -> dict:
    """Train and test probes on `site` (mean-pooled) with the model conditioned on each Elo bucket.

    The labels are properties of the board, so they are the same in every bucket; only the
    activations change. The control refits on train labels with rows permuted (one fixed
    permutation, keeping co-occurrence between concepts): its test AUC shows what the probe can
    reach from the activations' capacity alone, and should be about 0.5.

    opts (default: ProbeOptions(l2=l2), today's probe) sets the penalty, the C grid (chosen per
    concept and bucket on val_idx / labels_val, which a grid needs; the control is refitted at each
    concept's chosen strength) and the rest of ProbeOptions. Returns, per bucket and concept, the test
    AUC, accuracy and R^2 and the control's ("control_<metric>"), "chosen_c" (NaN without a grid)
    and "not_converged" (fits that did not reach the solver's tolerance; 0 for today's L-BFGS).
    """
    from ..model.skill import as_skill_model

    model = as_skill_model(model)
    opts = opts or ProbeOptions(l2=l2)
    buckets = [int(b) for b in buckets]
    if len(labels_train) != len(train_idx) or len(labels_test) != len(test_idx):
        raise MaiaAdaptError(f"labels ({len(labels_train)}, {len(labels_test)}) do not match the indices "
                             f"({len(train_idx)}, {len(test_idx)})")
    if opts.c_grid and (val_idx is None or labels_val is None or len(labels_val) != len(val_idx)):
        raise MaiaAdaptError("probes_per_bucket: a C grid needs validation positions and their labels")
    device = model.device
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(train_idx)))
    keys = ("auc", "accuracy", "r2", "control_auc", "control_accuracy", "control_r2", "chosen_c")
    rows = {k: [] for k in keys}
    probes, ends, not_converged = {}, [], 0
    warm = warm_control = None  # the previous bucket's fits: a warm start for the next (not today's fit)
    for b in buckets:
        x_tr = _site_activations(model, store, train_idx, site, b, batch_size, device)
        x_te = _site_activations(model, store, test_idx, site, b, batch_size, device)
        x_va = _site_activations(model, store, val_idx, site, b, batch_size, device) if opts.c_grid else None
        if b in (buckets[0], buckets[-1]):
            ends.append(x_te)
        probe, chosen, lam, nc, warm = _fit_probe(x_tr, labels_train, opts, names, seed, x_va, labels_val,
                                                  init=warm, **train_kw)
        not_converged += nc
        probe.metadata = {"site": site, "elo_bucket": b}
        ev = evaluate_probes(probe, x_te, labels_test)
        for m in METRICS:
            rows[m].append(ev[m])
        rows["chosen_c"].append(torch.full((len(names),), float("nan"), dtype=torch.float64) if chosen is None
                                else torch.tensor(opts.c_grid, dtype=torch.float64)[chosen])
        if shuffled_control:
            control, _, _, nc, warm_control = _fit_probe(x_tr, labels_train[perm], opts, None, seed, lam=lam,
                                                         init=warm_control, **train_kw)
            not_converged += nc
            ev = evaluate_probes(control, x_te, labels_test)
            for m in METRICS:
                rows[f"control_{m}"].append(ev[m])
        else:
            for m in METRICS:
                rows[f"control_{m}"].append(torch.full((len(names),), float("nan")))
        probes[b] = probe
    out = {k: torch.stack(v) for k, v in rows.items()}
    # one network at every bucket: its activations are comparable across buckets (not so for Maia-1's nine)
    change = activation_change(ends[0], ends[-1]) if len(model.spaces()) == 1 and len(ends) == 2 else None
    return {**out, "probes": probes, "buckets": buckets, "names": list(names), "site": site,
            "activation_change": change, "not_converged": not_converged}


def concept_labels(train_fens, test_fens, families, min_positives: int, key: str = "probe"):
    """(names, train labels [N, C], test labels [M, C]) of the concept families' concepts that have at
    least `min_positives` positives and negatives in both splits (a probe needs both classes to be
    trained and judged); ConfigError naming `<key>.*` settings when none has."""
    names, labels, _ = concept_labels_parts({"train": train_fens, "test": test_fens}, families, min_positives, key)
    return names, labels["train"], labels["test"]


def concept_labels_parts(fens: dict, families, min_positives: int, key: str = "probe"):
    """(names, {part: labels [N_part, C]}, names left out) of the concept families' concepts with at
    least `min_positives` positives and negatives in every part of fens {part: FENs}."""
    from ..concepts import position_concepts

    labelled = {part: position_concepts(f, families) for part, f in fens.items()}
    enough = lambda y: (y.sum(0) >= min_positives) & ((~y).sum(0) >= min_positives)
    ok = None
    for c in labelled.values():
        ok = enough(c.labels) if ok is None else ok & enough(c.labels)
    keep = ok.nonzero().flatten().tolist()
    all_names = next(iter(labelled.values())).names
    if not keep:
        raise ConfigError(f"no concept has {min_positives} positives in every part ({', '.join(fens)}): raise "
                          f"{key}.train_positions/test_positions (or {key}.val_positions) or lower {key}.min_positives")
    left_out = [n for j, n in enumerate(all_names) if not ok[j]]
    return [all_names[c] for c in keep], {p: c.labels[:, keep] for p, c in labelled.items()}, left_out


def awareness_trend(auc, n_boot: int = 1000, seed: int = 0, metric: str = "auc") -> dict:
    """Does probe AUC change with skill? auc [C concepts, B buckets in rising order] (NaN where a
    concept was left out). Returns the mean over concepts of AUC(top bucket) - AUC(bottom bucket)
    and of each concept's least-squares slope per bucket step, with 95% intervals from a bootstrap over
    concepts: an interval holding 0 is what "awareness is flat across skill" (H2) predicts.
    `metric` names the keys (accuracy_gain_top_minus_bottom, ...) for another metric's scores."""
    a = np.asarray(auc, dtype=float)
    a = a[np.isfinite(a).all(1)]
    x = np.arange(a.shape[1], dtype=float)
    x -= x.mean()
    gain = a[:, -1] - a[:, 0]
    slope = (a - a.mean(1, keepdims=True)) @ x / max(float((x ** 2).sum()), 1e-12)
    rng = np.random.default_rng(seed)
    out = {"concepts": int(len(a))}
    for name, v in ((f"{metric}_gain_top_minus_bottom", gain), (f"{metric}_slope_per_bucket", slope)):
        boots = [v[rng.integers(0, len(v), len(v))].mean() for _ in range(n_boot)] if len(v) else [np.nan]
        out[name] = float(v.mean()) if len(v) else float("nan")
        out[f"{name}_ci95"] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
    return out


def save_probe(probe: LinearProbe, path, metadata: dict | None = None) -> Path:
    tensors = {k: getattr(probe, k) for k in ("mean", "std", "weight", "bias")}
    meta = {"format": FORMAT, "names": to_json(probe.names), "metadata": to_json({**probe.metadata, **(metadata or {})})}
    return save_safetensors(tensors, path, meta)


def load_probe(path) -> LinearProbe:
    path = Path(path)
    tensors, meta = load_safetensors(path)  # CheckpointError (a MaiaAdaptError) names the file
    missing = {"mean", "std", "weight", "bias"} - set(tensors)
    if meta.get("format") != FORMAT or missing:
        raise MaiaAdaptError(f"{path} is not a linear probe file (format {meta.get('format')!r}, "
                             f"missing {sorted(missing)}): expected one written by save_probe")
    try:
        return LinearProbe(tensors["mean"], tensors["std"], tensors["weight"], tensors["bias"],
                           json.loads(meta["names"]), json.loads(meta.get("metadata", "{}")))
    except (json.JSONDecodeError, KeyError, MaiaAdaptError) as e:
        raise MaiaAdaptError(f"{path}: damaged linear probe file ({e})") from None


def _lens(model, boards, elo_self, elo_oppo, legal, blocks):
    """({lens name: probs}, final policy probs); blocks None = every block."""
    n_blocks = model.cfg.num_blocks_vit
    blocks = range(n_blocks) if blocks is None else [int(i) for i in blocks]
    names = ["hook_tokens"] + [block_hook(i, "hook_resid_post") for i in blocks]
    device = next(model.parameters()).device
    legal = legal.to(device)
    was_training = model.training
    model.eval()  # dropout on would make the lens differ from the policy it is compared with
    try:
        with torch.no_grad():
            (logits, _, _), cache = model.run_with_cache(boards.to(device), elo_self.to(device),
                                                         elo_oppo.to(device), names=names)
            lenses = {k: masked_probs(model.fc_1(model.last_ln(model.transformer.norm(cache[k]).mean(dim=1))), legal)
                      for k in names}
            return lenses, masked_probs(logits, legal)
    finally:
        model.train(was_training)


def logit_lens(model, boards, elo_self, elo_oppo, legal, blocks=None) -> dict[str, torch.Tensor]:
    """{lens name: legal-move probabilities [B, 1880]} for the input tokens and after each block."""
    return _lens(model, boards, elo_self, elo_oppo, legal, blocks)[0]


def logit_lens_by_bucket(model, store, indices, buckets=range(11), batch_size: int = 256) -> dict:
    """Per lens and Elo bucket: top-1 agreement with the final policy and top-1 accuracy on the
    played move (positions without a played move count for agreement only)."""
    buckets = [int(b) for b in buckets]
    indices = np.asarray(indices)
    agree, correct, names = None, None, None
    n_moves = 0
    for j, b in enumerate(buckets):
        for s in range(0, len(indices), batch_size):
            batch = store.batch(indices[s : s + batch_size])
            full = torch.full_like(batch["elo_self"], b)
            lenses, final = _lens(model, batch["boards"], full, full, batch["legal"], None)
            if names is None:
                names = list(lenses)
                agree = torch.zeros(len(names), len(buckets), dtype=torch.float64)
                correct = torch.zeros_like(agree)
            top_final = final.argmax(-1).cpu()
            move = batch["move"]
            if j == 0:
                n_moves += int((move >= 0).sum())
            for i, p in enumerate(lenses.values()):
                top = p.argmax(-1).cpu()
                agree[i, j] += (top == top_final).sum()
                correct[i, j] += ((top == move) & (move >= 0)).sum()
    if names is None:
        raise MaiaAdaptError("logit_lens_by_bucket: no positions or no buckets given")
    return {
        "lenses": names,
        "buckets": buckets,
        "agreement": (agree / len(indices)).float(),
        "accuracy": (correct / max(n_moves, 1)).float(),
        "n_positions": len(indices),
        "n_with_move": n_moves,
    }
