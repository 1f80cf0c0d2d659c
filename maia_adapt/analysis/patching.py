"""Where does a Maia-2 carry its skill dependence? Activation patching across Elo buckets.

The same positions run at a low and a high bucket; then at the low bucket again with one site's
activation replaced by its value at the high bucket. If the policy becomes the high bucket's, what
makes the two skill levels differ has passed through that site by then; if it stays the low one's,
it enters later (or elsewhere). Patching the CNN's tokens changes nothing (they do not see the Elo)
and patching the last residual stream reproduces the high bucket exactly: the two ends a site lies
between.

Two finer questions about a site that carries the difference: which attention heads carry it
(`head_patching`: one head's output exchanged at a time; `attention_shift`: how much attention each
head moves between the buckets, the only thing the Elo acts on), and is it one direction, the same at every
position (`mean_shift=True`: the low run's activation moved by the mean high-minus-low difference
instead of exchanged; if that closes as much, skill is a steering vector at that site).

    from maia_adapt.analysis.patching import head_patching, skill_patching
    res = skill_patching(model, inputs, ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"], low=0, high=10)
    heads = head_patching(model, inputs, layer=0)
    moved = attention_shift(model, inputs, layer=0)["moved"]   # per head, 0..1

The Elo's own entry into a block is a site too: `blocks.{b}.hook_elo_q` (its query term) exchanged
gives what the Elo does there with everything upstream left at the low bucket.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from ..model.inference import masked_probs
from ..model.skill import as_skill_model


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[N] KL(p || q) over legal moves (zero-probability moves of p contribute nothing)."""
    return torch.where(p > 0, p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log()), 0.0).sum(-1)


class _Ends:
    """The low and high runs of the same positions, and how far a patched run gets from one to the other."""

    def __init__(self, model, inputs: dict, low: int, high: int, names: list[str], n_boot: int, seed: int,
                 cache_low: bool = False):
        model = as_skill_model(model)
        if len(model.spaces()) > 1:
            raise ConfigError(f"skill patching needs one network at every bucket; {model.name}'s buckets run different "
                              "networks, whose activations cannot be exchanged")
        self.names = [model.check_hook_name(s) for s in names]
        self.model, self.inputs, self.low = model, inputs, low
        self.legal = inputs["legal"].to(model.device)
        # the low run's activations are kept only when asked (the mean shifts): they double the memory
        lo_logits, self.lo_cache = model.run_with_cache(inputs, low, low, names=self.names if cache_low else [])
        hi_logits, self.hi_cache = model.run_with_cache(inputs, high, high, names=self.names)
        self.lo, self.hi = masked_probs(lo_logits, self.legal), masked_probs(hi_logits, self.legal)
        self.differ = self.lo.argmax(-1) != self.hi.argmax(-1)
        self.base = _kl(self.hi, self.lo).double()
        rng = np.random.default_rng(seed)
        self.boots = [torch.from_numpy(rng.integers(0, len(self.base), len(self.base))) for _ in range(n_boot)]

    def summary(self) -> dict:
        return {"positions": len(self.base), "top_moves_differ": float(self.differ.float().mean()),
                "kl_high_vs_low": float(self.base.mean())}

    def effect(self, hooks: list) -> dict:
        """The low run with `hooks` installed, against the two ends."""
        with self.model.hooks(hooks):
            patched = masked_probs(self.model.policy_logits(self.inputs, self.low, self.low), self.legal)
        gap = _kl(self.hi, patched).double()
        closed = [float(1 - gap[b].sum() / self.base[b].sum().clamp_min(1e-30)) for b in self.boots]
        hi_top = self.hi.argmax(-1)
        return {
            "top_moves_flipped": float((patched.argmax(-1) == hi_top)[self.differ].float().mean()) if self.differ.any() else float("nan"),
            "kl_closed": float(1 - gap.sum() / self.base.sum().clamp_min(1e-30)),
            "kl_closed_ci95": [float(np.percentile(closed, 2.5)), float(np.percentile(closed, 97.5))] if closed else None,
            "top_moves_changed": float((patched.argmax(-1) != self.lo.argmax(-1)).float().mean()),
        }


@torch.no_grad()
def skill_patching(model, inputs: dict, sites: list[str], low: int = 0, high: int = 10, n_boot: int = 1000,
                   seed: int = 0, mean_shift: bool = False) -> dict:
    """For each site: `top_moves_flipped` (of the positions whose top move differs between the two
    buckets, the share whose patched top move is the high bucket's), `kl_closed` (1 - KL(high ||
    patched) / KL(high || low), summed over positions, with a 95% bootstrap over positions) and
    `top_moves_changed` (the share of all positions whose top move the patch changes). The opponent's
    bucket follows the player's (`low` or `high`), as the skill matrix's `same` setting does.
    `mean_shift=True` adds `mean_shift`: the same numbers when the site's low activation is moved by
    the high-minus-low difference averaged over these positions (one vector per token) instead."""
    ends = _Ends(model, inputs, low, high, sites, n_boot, seed, cache_low=mean_shift)
    out = {**ends.summary(), "sites": {}}
    for site in ends.names:
        res = ends.effect([(site, lambda x, name, v=ends.hi_cache[site]: v.to(x.dtype))])
        if mean_shift:
            shift = (ends.hi_cache[site] - ends.lo_cache[site]).mean(0, keepdim=True)
            res["mean_shift"] = ends.effect([(site, lambda x, name, d=shift: x + d.to(x.dtype))])
        out["sites"][site] = res
    return out


@torch.no_grad()
def head_patching(model, inputs: dict, layer: int, low: int = 0, high: int = 10, n_boot: int = 1000,
                  seed: int = 0) -> dict:
    """`skill_patching` of one attention head at a time: block `layer`'s per-head output
    (`blocks.{layer}.hook_attn_heads`, before the output projection) exchanged for its value at the
    high bucket in that head only, for each head (`heads[h]`), and in all heads at once (`all`, which is
    patching the block's attention output)."""
    site = f"blocks.{layer}.hook_attn_heads"
    ends = _Ends(model, inputs, low, high, [site], n_boot, seed)
    hi = ends.hi_cache[site]  # [B, T, H, Dh]

    def one_head(h):
        def fn(x, name):
            x = x.clone()
            x[:, :, h] = hi[:, :, h].to(x.dtype)
            return x
        return fn

    heads = [ends.effect([(site, one_head(h))]) for h in range(hi.shape[2])]
    return {**ends.summary(), "site": site, "heads": heads,
            "all": ends.effect([(site, lambda x, name: hi.to(x.dtype))])}


@torch.no_grad()
def attention_shift(model, inputs: dict, layer: int, low: int = 0, high: int = 10) -> dict:
    """What the Elo does to each head of block `layer`: the Elo's only entry is a per-head bias on the
    attention scores that depends on the key token, so it moves attention between tokens. `moved[h]`:
    the attention mass head h moves between the two buckets (total variation between its patterns,
    averaged over positions and query tokens, 0..1); `key_gain[h][t]`: the mean attention key token t
    gains at `high` over `low` (sums to 0 over t)."""
    model = as_skill_model(model)
    site = model.check_hook_name(f"blocks.{layer}.hook_pattern")
    pats = [model.run_with_cache(inputs, b, b, names=[site])[1][site].double() for b in (low, high)]  # [B, Tq, H, Tk]
    diff = pats[1] - pats[0]
    return {"site": site, "moved": (0.5 * diff.abs().sum(-1)).mean((0, 1)).tolist(),
            "key_gain": diff.mean((0, 1)).tolist()}
