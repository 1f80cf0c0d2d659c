"""Spliced evaluation: put a dictionary's reconstruction in place of a site's activation inside the
model and measure how much of the model's behaviour survives, next to zero- and mean-ablation.

With token pooling `mean` the SAE models the token mean, so the splice shifts every token by the
SAE's error on the mean (x_t - mean + SAE(mean)): exact when the SAE is, and the tokens keep their
individual deviations. With pooling `none` every token is replaced by its own reconstruction.
The zero- and mean-ablation baselines ablate the same part: the token mean, or every token.
The model is a SkillModel (or a bare Maia2): a Maia-1 conv map is spliced as its 64 square tokens.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..model.activations import elo_buckets_for
from ..model.inference import legal_logits, top_move
from ..encoding import NUM_BUCKETS


def _as_tokens(x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """[B, T, ...] -> ([B, T, F], original shape); [B, d] (hook_final) -> ([B, 1, d], shape)."""
    shape = tuple(x.shape)
    if x.dim() == 2:
        return x[:, None, :], shape
    return x.flatten(2), shape


def splice_fn(sae, pooling: str):
    def fn(x, name):
        t, shape = _as_tokens(x)
        if pooling == "mean":
            m = t.mean(1)
            out = t + (sae(m) - m)[:, None, :]
        else:
            out = sae(t.flatten(0, 1)).view_as(t)
        return out.reshape(shape)

    return fn


def ablate_fn(mean: torch.Tensor | None, pooling: str = "none"):
    """Zero-ablation (mean None) or mean-ablation (mean: the site's mean activation, `site_mean`) of
    what a splice with the same pooling replaces: the whole activation with pooling `none`, only its
    token mean with pooling `mean` (x_t - mean + 0, or + the mean's average over positions), so the
    tokens keep their deviations there too and "KL recovered" compares like with like."""
    def fn(x, name):
        if pooling != "mean":
            return torch.zeros_like(x) if mean is None else mean.expand_as(x).clone()
        t, shape = _as_tokens(x)
        out = t - t.mean(1, keepdim=True)
        if mean is not None:
            out = out + _as_tokens(mean[None])[0].mean(1, keepdim=True)
        return out.reshape(shape)

    return fn


@torch.no_grad()
def site_mean(model, store, indices, site: str, batch_size: int = 512) -> torch.Tensor:
    """The site's mean activation over positions (players' own buckets), in its token view [T, ...]."""
    from ..model.skill import as_skill_model

    model = as_skill_model(model)
    total, n = None, 0
    for s in range(0, len(indices), batch_size):
        b = model.inputs(store, np.asarray(indices[s : s + batch_size]))
        _, cache = model.run_with_cache(b, b["elo_self"], b["elo_oppo"], names=[site])
        a = model.site_tokens(site, cache[site]).float().sum(0)
        total = a if total is None else total + a
        n += len(b["move"])
    return total / n


@torch.no_grad()
def spliced_metrics(model, store, indices, site: str, variants: dict, batch_size: int = 512, elo="data") -> dict:
    """For each variant (name -> hook fn or None for the clean model): top-1 agreement with the clean
    model, policy KL(clean || variant) over legal moves, accuracy on the played move, per Elo bucket."""
    from ..model.skill import as_skill_model

    model = as_skill_model(model)
    model.module.eval()
    rng = np.random.default_rng(0)
    acc = {v: {"agree": np.zeros(NUM_BUCKETS), "correct": np.zeros(NUM_BUCKETS), "kl": np.zeros(NUM_BUCKETS)} for v in variants}
    count = np.zeros(NUM_BUCKETS)
    for s in range(0, len(indices), batch_size):
        b = model.inputs(store, np.asarray(indices[s : s + batch_size]))
        es, eo = elo_buckets_for(b, elo, rng)
        legal = b["legal"]
        clean_logits = legal_logits(model.policy_logits(b, es, eo).cpu(), legal)
        clean_logp = F.log_softmax(clean_logits, -1)
        clean_top = clean_logits.argmax(-1)
        bucket = es.numpy()
        np.add.at(count, bucket, 1)
        for name, fn in variants.items():
            if fn is None:
                logits = clean_logits
            else:
                with model.hooks([(site, fn)]):
                    logits = model.policy_logits(b, es, eo).float().cpu()
            logp = F.log_softmax(legal_logits(logits, legal), -1)
            kl = (clean_logp.exp() * (clean_logp - logp)).masked_fill(~legal, 0.0).sum(-1)
            top = logp.argmax(-1)
            np.add.at(acc[name]["agree"], bucket, (top == clean_top).numpy())
            np.add.at(acc[name]["correct"], bucket, (top == b["move"]).numpy())
            np.add.at(acc[name]["kl"], bucket, kl.numpy())
    out = {"positions": int(count.sum())}
    for name, a in acc.items():
        out[f"{name}/agreement"] = float(a["agree"].sum() / count.sum())
        out[f"{name}/kl"] = float(a["kl"].sum() / count.sum())
        out[f"{name}/accuracy"] = float(a["correct"].sum() / count.sum())
        for i in range(NUM_BUCKETS):
            if count[i]:
                out[f"{name}/accuracy_bucket_{i}"] = float(a["correct"][i] / count[i])
                out[f"{name}/agreement_bucket_{i}"] = float(a["agree"][i] / count[i])
    for abl in ("zero", "mean"):
        if f"{abl}/kl" in out and "sae/kl" in out and out[f"{abl}/kl"] > 0:
            # fraction of the behaviour (policy KL) that the dictionary recovers relative to ablation
            out[f"sae/kl_recovered_vs_{abl}"] = 1.0 - out["sae/kl"] / out[f"{abl}/kl"]
    return out


@torch.no_grad()
def evaluate_dictionary(model, store, indices, site: str, sae, pooling: str, dense_threshold: float) -> tuple[dict, torch.Tensor]:
    """An SAE at `site` on held-out positions: spliced into the model next to zero- and mean-ablation of
    what the splice replaces (`spliced_metrics`), plus reconstruction (FVU, variance explained), L0 and
    the dead / dense fractions. Returns (metrics, each feature's firing frequency)."""
    from ..model.activations import activation_batches

    mean = site_mean(model, store, indices, site)
    m = spliced_metrics(model, store, indices, site, {
        "clean": None, "sae": splice_fn(sae, pooling), "zero": ablate_fn(None, pooling), "mean": ablate_fn(mean, pooling)})
    acts = torch.cat([p[site] for p in activation_batches(model, store, indices, [site], elo="data", token_pooling=pooling)])
    z = sae.encode(acts)
    recon = sae.decode(z)
    fvu = float((acts - recon).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum())
    freq = (z > 0).float().mean(0)
    m.update({"fvu": fvu, "variance_explained": 1 - fvu, "l0": float((z > 0).sum(1).float().mean()),
              "dead_fraction_eval": float((freq == 0).float().mean()),
              "dense_fraction_eval": float((freq > dense_threshold).float().mean())})
    return m, freq


def _policy_value(model, b, es, eo) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy logits in Maia-2's vocabulary, value in [-1, 1]) of a SkillModel from one forward pass."""
    logits, value, _ = model.policy_value_with_cache(b, es, eo, names=[])
    return logits, value


@torch.no_grad()
def agreement_grid(model, store, indices, hooks: list, batch_size: int = 256) -> dict:
    """Top-1 agreement between the clean and the hooked model for every (self, opponent) Elo bucket
    pair [11, 11], plus both models' win probabilities over all pairs (for correlation and QQ plots).
    `model`: a SkillModel or a bare Maia2."""
    from ..encoding import NUM_BUCKETS
    from ..model.inference import masked_probs
    from ..model.skill import as_skill_model

    model = as_skill_model(model)
    model.module.eval()
    agree = torch.zeros(NUM_BUCKETS, NUM_BUCKETS)
    wins_clean, wins_hooked = [], []
    n = 0
    for s in range(0, len(indices), batch_size):
        b = model.inputs(store, np.sort(np.asarray(indices[s : s + batch_size])))
        m = len(b["move"])
        legal = b["legal"].to(model.device)
        for i in range(NUM_BUCKETS):
            for j in range(NUM_BUCKETS):
                es, eo = torch.full((m,), i), torch.full((m,), j)
                lc, vc = _policy_value(model, b, es, eo)
                with model.hooks(hooks):
                    lh, vh = _policy_value(model, b, es, eo)
                agree[i, j] += (masked_probs(lc, legal).argmax(-1) == masked_probs(lh, legal).argmax(-1)).sum().cpu()
                wins_clean.append((vc.float().cpu() / 2 + 0.5).clamp(0, 1))  # as in inference.predict
                wins_hooked.append((vh.float().cpu() / 2 + 0.5).clamp(0, 1))
        n += m
    return {"agreement": agree / max(n, 1), "win_clean": torch.cat(wins_clean), "win_hooked": torch.cat(wins_hooked)}


@torch.no_grad()
def transcoder_splice_metrics(model, store, idx, t, layer: int, batch_size: int = 256) -> dict:
    """Top-1 agreement and policy KL of the model with the transcoder in place of the FFN (data Elo)."""
    from ..model.inference import masked_probs
    from ..model.skill import as_skill_model
    from .transcoder import splice_hooks

    model = as_skill_model(model)
    agree, kl, n = 0.0, 0.0, 0
    for s in range(0, len(idx), batch_size):
        b = model.inputs(store, np.sort(idx[s : s + batch_size]))
        legal = b["legal"].to(model.device)
        lc = model.policy_logits(b, b["elo_self"], b["elo_oppo"])
        with model.hooks(splice_hooks(t, layer)):
            lh = model.policy_logits(b, b["elo_self"], b["elo_oppo"])
        pc, ph = masked_probs(lc, legal), masked_probs(lh, legal)
        agree += float((pc.argmax(-1) == ph.argmax(-1)).sum())
        kl += float(F.kl_div(ph.clamp_min(1e-12).log(), pc, reduction="sum"))
        n += len(pc)
    return {"agreement": agree / max(n, 1), "kl": kl / max(n, 1)}


@torch.no_grad()
def spliced_move_accuracy(model, store, idx, t, layer: int, batch_size: int = 256, device="cpu") -> float:
    """Top-1 accuracy against the recorded (human) move with transcoder `t` in place of block `layer`'s
    FFN, at the data's Elo: the seed study's checkpoint score (N train/transcoder_train.py:203-326,
    `evaluate_transcoder`), legal moves masked."""
    from ..model.skill import as_skill_model
    from .transcoder import splice_hooks

    model = as_skill_model(model)
    right, n = 0, 0
    for s in range(0, len(idx), batch_size):
        b = model.inputs(store, np.sort(idx[s : s + batch_size]))
        with model.hooks(splice_hooks(t, layer)):
            logits = model.policy_logits(b, b["elo_self"], b["elo_oppo"])
        pred = top_move(logits, b["legal"].to(logits.device))
        right += int((pred.cpu() == b["move"]).sum())
        n += len(pred)
    return right / max(n, 1)


@torch.no_grad()
def evaluate_transcoder(model, store, eval_idx, grid_idx, t, test_tokens: dict) -> tuple[dict, dict]:
    """A transcoder of block `t.cfg.layer`'s FFN on held-out positions: FVU, L0 and dead fraction on
    the test tokens, the model with the transcoder spliced in place of the FFN (agreement and KL,
    next to the zero-ablated FFN), and over the 11 x 11 (own, opponent) Elo grid (`agreement_grid`).
    Returns (metrics, the grid with both models' win probabilities)."""
    from .transcoder import splice_hooks

    layer = t.cfg.layer
    x, y = test_tokens[t.cfg.site], test_tokens[t.cfg.target_site]
    z = torch.cat([t.encode(c) for c in x.split(8192)])
    pred = torch.cat([t(c) for c in x.split(8192)])
    m = spliced_metrics(model, store, eval_idx, t.cfg.target_site, {"clean": None, "zero": ablate_fn(None)})
    spliced = transcoder_splice_metrics(model, store, eval_idx, t, layer)
    grid = agreement_grid(model, store, grid_idx, splice_hooks(t, layer))
    wc, wh = grid["win_clean"].numpy(), grid["win_hooked"].numpy()
    res = {"fvu": float((y - pred).pow(2).sum() / (y - y.mean(0)).pow(2).sum()), "l0": float((z > 0).sum(1).float().mean()),
           "dead_fraction_eval": float(((z > 0).sum(0) == 0).float().mean()),
           "agreement": spliced["agreement"], "kl": spliced["kl"], "zero/agreement": m["zero/agreement"],
           "zero/kl": m["zero/kl"], "grid_agreement_mean": float(grid["agreement"].mean()),
           "grid_agreement_min": float(grid["agreement"].min()), "win_correlation": float(np.corrcoef(wc, wh)[0, 1]),
           "grid_agreement": grid["agreement"].tolist()}
    return res, grid
