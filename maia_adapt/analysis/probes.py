"""Linear concept probes on a SkillModel's activations (Maia-2 or Maia-1), per Elo bucket, and the
logit lens (Maia-2 only).

A probe is one independent logistic regression per concept, fitted on standardised activations so
that a single L2 strength means the same thing at every site. Its `direction` is mapped back to the
raw activation space, the space a steering hook adds to. The logit lens reads the policy the model
would play if it stopped after an earlier block: the residual stream goes through the model's own
final norms and policy head, so the last block's lens is the model's policy, exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .activations import collect_activations
from ..concepts.auc import paired_auc
from ..errors import ConfigError, MaiaAdaptError
from ..io import load_safetensors, save_safetensors, to_json
from ..model.inference import masked_probs
from ..model.hooks import block_hook

FORMAT = "maia_adapt.linear_probe.v1"


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
                 names: list[str] | None = None) -> LinearProbe:
    """Fit C independent L2-regularised logistic regressions on x [N, d] for labels y [N, C] bool.

    Objective per concept: weighted mean BCE + l2/2 * |w|^2 on standardised x (sklearn's with
    C = 1 / (l2 * N)). class_balance weights positives by N / (2P) and negatives by N / (2(N-P)),
    so rare concepts are not fitted as "always absent". batch_size None: full-batch L-BFGS for
    `epochs` iterations from zero, deterministic; an int: Adam on minibatches shuffled by `seed`.
    A concept without positives (or without negatives) keeps zero weights and bias.
    """
    if x.dim() != 2 or y.dim() != 2 or len(x) != len(y):
        raise MaiaAdaptError(f"train_probes: expected x [N, d] and y [N, C], got {tuple(x.shape)} and {tuple(y.shape)}")
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
    """Per-concept AUC (NaN where y has one class only), accuracy at logit 0 and positive counts."""
    logits = probe(x.to(probe.mean.device))
    y = y.bool().to(logits.device)
    return {
        "names": probe.names,
        "auc": paired_auc(logits, y),
        "accuracy": ((logits > 0) == y).float().mean(0).cpu(),
        "positives": y.sum(0).cpu(),
    }


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


def probes_per_bucket(model, store, train_idx, test_idx, site: str, labels_train: torch.Tensor,
                      labels_test: torch.Tensor, names: list[str], buckets=range(11), l2: float = 1e-3,
                      seed: int = 0, shuffled_control: bool = True, batch_size: int = 256, **train_kw) -> dict:
    """Train and test probes on `site` (mean-pooled) with the model conditioned on each Elo bucket.

    The labels are properties of the board, so they are the same in every bucket; only the
    activations change. The control refits on train labels with rows permuted (one fixed
    permutation, keeping co-occurrence between concepts): its test AUC shows what the probe can
    reach from the activations' capacity alone, and should be about 0.5.
    """
    from ..model.skill import as_skill_model

    model = as_skill_model(model)
    buckets = [int(b) for b in buckets]
    if len(labels_train) != len(train_idx) or len(labels_test) != len(test_idx):
        raise MaiaAdaptError(f"labels ({len(labels_train)}, {len(labels_test)}) do not match the indices "
                             f"({len(train_idx)}, {len(test_idx)})")
    device = model.device
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(train_idx)))
    rows = {k: [] for k in ("auc", "accuracy", "control_auc")}
    probes, ends = {}, []
    for b in buckets:
        x_tr = _site_activations(model, store, train_idx, site, b, batch_size, device)
        x_te = _site_activations(model, store, test_idx, site, b, batch_size, device)
        if b in (buckets[0], buckets[-1]):
            ends.append(x_te)
        probe = train_probes(x_tr, labels_train, l2=l2, seed=seed, names=names, **train_kw)
        probe.metadata = {"site": site, "elo_bucket": b}
        ev = evaluate_probes(probe, x_te, labels_test)
        rows["auc"].append(ev["auc"])
        rows["accuracy"].append(ev["accuracy"])
        if shuffled_control:
            control = train_probes(x_tr, labels_train[perm], l2=l2, seed=seed, **train_kw)
            rows["control_auc"].append(evaluate_probes(control, x_te, labels_test)["auc"])
        else:
            rows["control_auc"].append(torch.full((len(names),), float("nan")))
        probes[b] = probe
    out = {k: torch.stack(v) for k, v in rows.items()}
    # one network at every bucket: its activations are comparable across buckets (not so for Maia-1's nine)
    change = activation_change(ends[0], ends[-1]) if len(model.spaces()) == 1 and len(ends) == 2 else None
    return {**out, "probes": probes, "buckets": buckets, "names": list(names), "site": site, "activation_change": change}


def concept_labels(train_fens, test_fens, families, min_positives: int, key: str = "probe"):
    """(names, train labels [N, C], test labels [M, C]) of the concept families' concepts that have at
    least `min_positives` positives and negatives in both splits (a probe needs both classes to be
    trained and judged); ConfigError naming `<key>.*` settings when none has."""
    from ..concepts import position_concepts

    tr, te = position_concepts(train_fens, families), position_concepts(test_fens, families)
    enough = lambda y: (y.sum(0) >= min_positives) & ((~y).sum(0) >= min_positives)
    keep = (enough(tr.labels) & enough(te.labels)).nonzero().flatten().tolist()
    if not keep:
        raise ConfigError(f"no concept has {min_positives} positives in both splits: raise {key}.train_positions/"
                          f"test_positions or lower {key}.min_positives")
    return [tr.names[c] for c in keep], tr.labels[:, keep], te.labels[:, keep]


def awareness_trend(auc, n_boot: int = 1000, seed: int = 0) -> dict:
    """Does probe AUC change with skill? auc [C concepts, B buckets in rising order] (NaN where a
    concept was left out). Returns the mean over concepts of AUC(top bucket) - AUC(bottom bucket)
    and of each concept's least-squares slope per bucket step, with 95% intervals from a bootstrap over
    concepts: an interval holding 0 is what "awareness is flat across skill" (H2) predicts."""
    a = np.asarray(auc, dtype=float)
    a = a[np.isfinite(a).all(1)]
    x = np.arange(a.shape[1], dtype=float)
    x -= x.mean()
    gain = a[:, -1] - a[:, 0]
    slope = (a - a.mean(1, keepdims=True)) @ x / max(float((x ** 2).sum()), 1e-12)
    rng = np.random.default_rng(seed)
    out = {"concepts": int(len(a))}
    for name, v in (("auc_gain_top_minus_bottom", gain), ("auc_slope_per_bucket", slope)):
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
