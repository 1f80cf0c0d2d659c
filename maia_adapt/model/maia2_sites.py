"""Maia-2's hook sites: their names in forward order and the width of each per token.

Shapes (tensors [batch, tokens, dim] unless noted):
  hook_cnn_out [B, vit_length, 64]   CNN trunk output, one 64-square map per token
  hook_tokens                        patch embedding + position embedding (before dropout)
  blocks.{i}.hook_resid_pre          input of transformer block i
  blocks.{i}.hook_elo_q              the Elo's term of the attention queries [B, 1, H, Dh]: the same for every
                                     token (one query token, broadcast), it depends on the two buckets only
  blocks.{i}.hook_pattern            attention weights [B, T query, H, T key] (query tokens first, as every
                                     site here is token-first; TransformerLens orders it [B, H, Tq, Tk])
  blocks.{i}.hook_attn_heads         per-head attention output before the output projection [B, T, H, Dh]
  blocks.{i}.hook_attn_out           Elo-aware attention output (after projection, before the residual add)
  blocks.{i}.hook_resid_mid          after the attention residual add
  blocks.{i}.hook_mlp_in             FFN LayerNorm output
  blocks.{i}.hook_mlp_out            FFN output (before the residual add)
  blocks.{i}.hook_resid_post         after the FFN residual add
  hook_final [B, dim]                token mean after both final LayerNorms (what the heads read)
"""
from __future__ import annotations

from .hooks import block_hook

BLOCK_SITES = ("hook_resid_pre", "hook_elo_q", "hook_pattern", "hook_attn_heads", "hook_attn_out", "hook_resid_mid",
               "hook_mlp_in", "hook_mlp_out", "hook_resid_post")


def hook_names(cfg) -> list[str]:
    """Every site of a Maia-2 of config `cfg` (a Maia2Config), in forward order."""
    names = ["hook_cnn_out", "hook_tokens"]
    for i in range(cfg.num_blocks_vit):
        names += [block_hook(i, s) for s in BLOCK_SITES]
    return names + ["hook_final"]


def site_dim(cfg, name: str) -> int:
    """Features per token at site `name` (heads concatenated: 16 x 64 -> 1024, as in the study)."""
    if name == "hook_cnn_out":
        return 64
    if name.endswith(("hook_attn_heads", "hook_elo_q")):
        return cfg.heads * cfg.dim_head
    if name.endswith("hook_pattern"):
        return cfg.heads * cfg.vit_length
    return cfg.dim_vit
