"""Maia-1's (lc0's) hook sites: their names in forward order and the width of each per token.

A conv map [B, C, 8, 8] is read as 64 square tokens of C channels (SkillModel.site_tokens), so its
width is C; the SE gate and bias [B, C] and the heads' flat outputs have no tokens.
"""
from __future__ import annotations

from .hooks import block_hook

BLOCK_SITES = ("hook_resid_pre", "hook_conv1", "hook_conv2", "hook_se_gate", "hook_se_bias", "hook_resid_post")
HEAD_SITES = ("hook_policy_conv", "hook_policy_planes", "hook_policy", "hook_value_conv", "hook_value_hidden",
              "hook_wdl")


def hook_names(num_blocks: int) -> list[str]:
    """Every site of a Maia-1 network of `num_blocks` residual blocks, in forward order."""
    return ["hook_input_conv", *(block_hook(i, s) for i in range(num_blocks) for s in BLOCK_SITES), *HEAD_SITES]


def site_dim(net, name: str) -> int:
    """Features per token at site `name` of the Maia1 network `net` (its layers give the widths)."""
    widths = {"hook_policy_planes": net.policy_conv2.out_channels, "hook_policy": net.policy_gather.numel(),
              "hook_value_conv": net.value_conv.out_channels, "hook_value_hidden": net.value_fc1.out_features,
              "hook_wdl": net.value_fc2.out_features}
    return widths.get(name, net.filters)
