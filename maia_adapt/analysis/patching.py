"""Where does a Maia-2 carry its skill dependence? Activation patching across Elo buckets.

The same positions run at a low and a high bucket; then at the low bucket again with one site's
activation replaced by its value at the high bucket. If the policy becomes the high bucket's, what
makes the two skill levels differ has passed through that site by then; if it stays the low one's,
it enters later (or elsewhere). Patching the CNN's tokens changes nothing (they do not see the Elo)
and patching the last residual stream reproduces the high bucket exactly: the two ends a site lies
between.

    from maia_adapt.analysis.patching import skill_patching
    res = skill_patching(model, inputs, ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"], low=0, high=10)
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


@torch.no_grad()
def skill_patching(model, inputs: dict, sites: list[str], low: int = 0, high: int = 10, n_boot: int = 1000,
                   seed: int = 0) -> dict:
    """For each site: `top_moves_flipped` (of the positions whose top move differs between the two
    buckets, the share whose patched top move is the high bucket's), `kl_closed` (1 - KL(high ||
    patched) / KL(high || low), summed over positions, with a 95% bootstrap over positions) and
    `top_moves_changed` (the share of all positions whose top move the patch changes). The opponent's
    bucket follows the player's (`low` or `high`), as the skill matrix's `same` setting does."""
    model = as_skill_model(model)
    if len(model.spaces()) > 1:
        raise ConfigError(f"skill patching needs one network at every bucket; {model.name}'s buckets run different "
                          "networks, whose activations cannot be exchanged")
    sites = [model.check_hook_name(s) for s in sites]
    legal = inputs["legal"].to(model.device)
    lo = masked_probs(model.policy_logits(inputs, low, low), legal)
    hi_logits, cache = model.run_with_cache(inputs, high, high, names=sites)
    hi = masked_probs(hi_logits, legal)
    differ = lo.argmax(-1) != hi.argmax(-1)
    base = _kl(hi, lo).double()
    rng = np.random.default_rng(seed)
    boots = [torch.from_numpy(rng.integers(0, len(base), len(base))) for _ in range(n_boot)]
    out = {"positions": len(base), "top_moves_differ": float(differ.float().mean()),
           "kl_high_vs_low": float(base.mean()), "sites": {}}
    for site in sites:
        with model.hooks([(site, lambda x, name, v=cache[site]: v.to(x.dtype))]):
            patched = masked_probs(model.policy_logits(inputs, low, low), legal)
        gap = _kl(hi, patched).double()
        closed = [float(1 - gap[b].sum() / base[b].sum().clamp_min(1e-30)) for b in boots]
        out["sites"][site] = {
            "top_moves_flipped": float((patched.argmax(-1) == hi.argmax(-1))[differ].float().mean()) if differ.any() else float("nan"),
            "kl_closed": float(1 - gap.sum() / base.sum().clamp_min(1e-30)),
            "kl_closed_ci95": [float(np.percentile(closed, 2.5)), float(np.percentile(closed, 97.5))] if closed else None,
            "top_moves_changed": float((patched.argmax(-1) != lo.argmax(-1)).float().mean()),
        }
    return out
