"""Maia-3 (CSSLab's "Chessformer", sizes 3M, 5M, 23M, 79M) with TransformerLens-style hook points.

Written from the architecture's description and checked output for output against the maia3-runtime
package (AGPL-3.0; a test reference only, never imported here: tests/test_maia3.py). Parameter names
are that package's, so its checkpoints (`torch.save({"model_state_dict": ...})`) load as they are.

The network: 64 square tokens, each its 8-position piece history (encoding/maia3.py) concatenated
with the self and opponent Elo embeddings, projected to the model width; post-LayerNorm encoder blocks
(RMSNorm) whose attention scores get a per-position bias generated from the board (GAB, one
generator weight shared by every block); a final LayerNorm. Heads: move logits from from-square x
to-square scores (4096) plus 256 promotions (the rank-7 -> rank-8 score plus a per-target-file
piece bias), and win/draw/loss and ponder heads on the token mean.

The Elo is continuous: a rating r in [0, 5000] (clamped) is (r / 5000) * e_low + (1 - r / 5000) *
e_high, two learned vectors (the package's names: the weight on `elo_embedding_low` grows with r).

Hook sites (tensors [batch, tokens, dim] unless noted; T = 64 square tokens):
  hook_elo [B, 2, dim_emb]          the interpolated self and opponent Elo embeddings
  hook_elo_in [B, dim_vit]          the Elo's term of the token projection, added to every square token
                                    (the only place the Elo enters the network)
  hook_tokens                       the square tokens after the projection (and absolute PE, if any)
  blocks.{i}.hook_resid_pre         input of block i
  blocks.{i}.hook_attn_bias         the board-generated attention bias [B, T query, H, T key]
  blocks.{i}.hook_pattern           attention weights [B, T query, H, T key] (token-first, as Maia-2's)
  blocks.{i}.hook_attn_heads        per-head attention output before the output projection [B, T, H, Dh]
  blocks.{i}.hook_attn_out          attention output (after projection, before the residual add)
  blocks.{i}.hook_resid_mid         RMSNorm(resid_pre + attn_out): the blocks are post-norm
  blocks.{i}.hook_mlp_in            the FFN's input (the same values as hook_resid_mid, its own site so a
                                    transcoder or a splice of the FFN input leaves the residual alone)
  blocks.{i}.hook_mlp_act           FFN hidden activations after GELU [B, T, mlp_ratio * dim_vit]
  blocks.{i}.hook_mlp_out           FFN output (before the residual add)
  blocks.{i}.hook_resid_post        RMSNorm(resid_mid + mlp_out)
  hook_final                        the encoder's final LayerNorm output (what the move head reads)
  hook_pooled [B, dim_vit]          LayerNorm of the token mean (what the value and ponder heads read)
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoding.maia3 import PIECE_CHANNELS
from ..errors import CheckpointError, ConfigError
from .hooks import HookFn, HookPoints, block_hook

ELO_MAX = 5000  # ratings are clamped to [0, ELO_MAX] and interpolated between the two embeddings
CONFIG_KEY = "maia_adapt.maia3_config"


@dataclass
class Maia3Config:
    history: int = 8
    dim_emb: int = 128
    dim_vit: int = 256
    num_blocks: int = 8
    num_heads: int = 8
    mlp_ratio: float = 2.0
    head_hid_dim: int = 256
    use_gab: bool = True
    gab_gen_size: int = 64
    gab_per_square_dim: int = 0  # 0: the generator reads the token mean; p > 0: p features per square
    gab_intermediate_dim: int = 64
    use_absolute_pe: bool = False
    use_rms_norm: bool = True
    omit_qkv_biases: bool = True
    activation: str = "gelu"

    def __post_init__(self):
        if self.activation not in ("gelu", "relu"):
            raise ConfigError(f"Maia-3 activation={self.activation!r}: expected gelu or relu")
        if not (self.use_gab or self.use_absolute_pe):
            raise ConfigError("Maia-3 config: use_gab or use_absolute_pe must be true (the tokens need a position signal)")
        if self.dim_vit % self.num_heads:
            raise ConfigError(f"Maia-3 config: dim_vit={self.dim_vit} is not a multiple of num_heads={self.num_heads}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "Maia-3 config") -> "Maia3Config":
        """From the package's own config keys; the keys that are not architecture (dropout, padding)
        are ignored, and the features not implemented here fail by name."""
        for key in ("use_relative_bias", "include_time_info"):
            if d.get(key):
                raise ConfigError(f"{source}: {key}=true is not supported (no published Maia-3 size uses it)")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


# the published sizes (maia3-runtime's model registry): name -> what differs from Maia3Config's defaults
SIZES = {
    "3m": dict(dim_vit=192, head_hid_dim=192, num_heads=6, gab_gen_size=64, gab_per_square_dim=0, gab_intermediate_dim=64),
    "5m": dict(dim_vit=256, head_hid_dim=256, num_heads=8, gab_gen_size=64, gab_per_square_dim=0, gab_intermediate_dim=64),
    "23m": dict(dim_vit=512, head_hid_dim=512, num_heads=16, gab_gen_size=128, gab_per_square_dim=32,
                gab_intermediate_dim=128),
    "79m": dict(dim_vit=1024, head_hid_dim=1024, num_heads=32, gab_gen_size=128, gab_per_square_dim=32,
                gab_intermediate_dim=128),
}


def size_config(size: str) -> Maia3Config:
    key = str(size).lower().removeprefix("maia3-").removesuffix("-ablation")
    if key not in SIZES:
        raise ConfigError(f"model.size={size!r}: expected one of {', '.join(SIZES)}")
    return Maia3Config(**SIZES[key])


def hook_names(cfg: Maia3Config) -> list[str]:
    names = ["hook_elo", "hook_elo_in", "hook_tokens"]
    for i in range(cfg.num_blocks):
        names += [block_hook(i, s) for s in (
            "hook_resid_pre", *(("hook_attn_bias",) if cfg.use_gab else ()), "hook_pattern", "hook_attn_heads",
            "hook_attn_out", "hook_resid_mid", "hook_mlp_in", "hook_mlp_act", "hook_mlp_out", "hook_resid_post")]
    return names + ["hook_final", "hook_pooled"]


class _ParamHolder(nn.Module):
    """Holds parameters under the package's names; the forward pass is ours (Maia3._block)."""


class AttentionBias(nn.Module):
    """The board-generated attention bias's per-block part (its 64x64 basis is Maia3.gab_shared_weight)."""

    def __init__(self, cfg: Maia3Config):
        super().__init__()
        p, hid = cfg.gab_per_square_dim, cfg.gab_intermediate_dim
        if p:
            self.sm1 = nn.Linear(cfg.dim_vit, p)
        self.sm2 = nn.Linear(64 * p if p else cfg.dim_vit, hid)
        self.ln1 = nn.LayerNorm(hid)
        self.sm3 = nn.Linear(hid, cfg.num_heads * cfg.gab_gen_size)
        self.ln2 = nn.LayerNorm(cfg.num_heads * cfg.gab_gen_size)


class Block(nn.Module):
    def __init__(self, cfg: Maia3Config):
        super().__init__()
        d = cfg.dim_vit
        self.self_attn = AttentionBias(cfg) if cfg.use_gab else _ParamHolder()
        mha = self.self_attn.mha = _ParamHolder()
        mha.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        nn.init.xavier_uniform_(mha.in_proj_weight)
        if not cfg.omit_qkv_biases:
            mha.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        mha.out_proj = nn.Linear(d, d, bias=not cfg.omit_qkv_biases)
        self.linear1 = nn.Linear(d, int(d * cfg.mlp_ratio))
        self.linear2 = nn.Linear(int(d * cfg.mlp_ratio), d)
        norm = nn.RMSNorm if cfg.use_rms_norm else nn.LayerNorm
        self.norm1, self.norm2 = norm(d), norm(d)


class Maia3(HookPoints, nn.Module):
    """forward(tokens [B, 64, 12 * history], elo_self [B], elo_oppo [B] ratings) ->
    (move logits [B, 4352], win/draw/loss logits [B, 3] as (loss, draw, win) for the side to move,
    ponder [B])."""

    def __init__(self, cfg: Maia3Config | None = None):
        super().__init__()
        self.cfg = cfg = cfg or Maia3Config()
        self.elo_embedding_low = nn.Embedding(1, cfg.dim_emb)
        self.elo_embedding_high = nn.Embedding(1, cfg.dim_emb)
        self.token_projection = nn.Linear(PIECE_CHANNELS * cfg.history + 2 * cfg.dim_emb, cfg.dim_vit)
        if cfg.use_gab:
            self.gab_shared_weight = nn.Parameter(torch.empty(64 * 64, cfg.gab_gen_size))
            nn.init.xavier_normal_(self.gab_shared_weight)
        if cfg.use_absolute_pe:
            self.abs_pe = _ParamHolder()
            self.abs_pe.bias = nn.Parameter(torch.zeros(64, cfg.dim_vit))
        self.transformer = _ParamHolder()
        self.transformer.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_blocks))
        self.transformer.norm = nn.LayerNorm(cfg.dim_vit)
        self.last_ln = nn.LayerNorm(cfg.dim_vit)
        h = cfg.head_hid_dim
        self.fc_value_hid, self.fc_value = nn.Linear(cfg.dim_vit, h), nn.Linear(h, 3)
        self.fc_ponder_hid, self.fc_ponder = nn.Linear(cfg.dim_vit, h), nn.Linear(h, 1)
        self.proj_sq_from = nn.Linear(cfg.dim_vit, h, bias=False)
        self.proj_sq_to = nn.Linear(cfg.dim_vit, h, bias=False)
        self.promo_bias_proj = nn.Linear(h, 4, bias=False)
        self.hook_names = hook_names(cfg)
        self._hooks: dict[str, list[HookFn]] = {}

    @property
    def board_width(self) -> int:
        return PIECE_CHANNELS * self.cfg.history

    # ---- hooks -----------------------------------------------------------------------------
    def run_with_hooks(self, tokens, elo_self, elo_oppo, fwd_hooks=()):
        with self.hooks(fwd_hooks):
            return self(tokens, elo_self, elo_oppo)

    def run_with_cache(self, tokens, elo_self, elo_oppo, names=None, detach: bool = True, *, names_filter=None):
        """(outputs, {hook name: activation}) for the sites `names` / `names_filter` picks (as Maia2's)."""
        names = self.select_hook_names(names, names_filter)
        cache: dict[str, torch.Tensor] = {}

        def save(x, name):
            cache[name] = x.detach() if detach else x

        return self.run_with_hooks(tokens, elo_self, elo_oppo, [(n, save) for n in names]), cache

    # ---- forward ---------------------------------------------------------------------------
    def elo_embedding(self, elos: torch.Tensor) -> torch.Tensor:
        """[B, dim_emb] for ratings [B] (any real number; clamped to [0, ELO_MAX])."""
        w = (elos.to(self.elo_embedding_low.weight.dtype).clamp(0, ELO_MAX) / ELO_MAX).unsqueeze(1)
        return w * self.elo_embedding_low.weight[0] + (1 - w) * self.elo_embedding_high.weight[0]

    def forward(self, tokens, elo_self, elo_oppo):
        return self.heads(self.encode(tokens, elo_self, elo_oppo))

    def board_term(self, tokens) -> torch.Tensor:
        """The pieces' part of the token projection (with its bias) [B, 64, dim_vit]: what does not
        depend on the Elo, so one pass serves every Elo conditioning."""
        w = self.token_projection.weight
        return F.linear(tokens[..., :self.board_width].to(w.dtype), w[:, :self.board_width], self.token_projection.bias)

    def encode(self, tokens, elo_self, elo_oppo, board_term=None):
        """The encoder's output [B, 64, dim_vit] (hook_final)."""
        elo = self._hook("hook_elo", torch.stack((self.elo_embedding(elo_self), self.elo_embedding(elo_oppo)), 1))
        # the projection of the concatenation is split into its board and Elo terms (the same numbers
        # to float rounding): the Elo's is one vector per position, a site of its own
        elo_in = self._hook("hook_elo_in", F.linear(elo.flatten(1), self.token_projection.weight[:, self.board_width:]))
        x = (self.board_term(tokens) if board_term is None else board_term) + elo_in.unsqueeze(1)
        if self.cfg.use_absolute_pe:
            x = x + self.abs_pe.bias
        x = self._hook("hook_tokens", x)
        for i, blk in enumerate(self.transformer.layers):
            x = self._block(blk, x, i)
        return self._hook("hook_final", self.transformer.norm(x))

    def _attention_bias(self, gab: AttentionBias, x) -> torch.Tensor:
        """[B, H, 64, 64] from the block's input: a board summary -> H mixing vectors -> the shared basis."""
        b = x.size(0)
        y = gab.sm2(gab.sm1(x).reshape(b, -1)) if hasattr(gab, "sm1") else gab.sm2(x.mean(dim=1))
        y = gab.ln1(F.gelu(y))
        y = gab.ln2(F.gelu(gab.sm3(y))).view(b, self.cfg.num_heads, self.cfg.gab_gen_size)
        return torch.einsum("bhg,og->bho", y, self.gab_shared_weight).view(b, self.cfg.num_heads, 64, 64)

    def _block(self, blk: Block, x, i: int):
        cfg = self.cfg
        b, t, d = x.shape
        h = cfg.num_heads
        x = self._hook(block_hook(i, "hook_resid_pre"), x)
        mha = blk.self_attn.mha
        q, k, v = F.linear(x, mha.in_proj_weight, getattr(mha, "in_proj_bias", None)).chunk(3, dim=-1)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        if cfg.use_gab:
            bias = self._attention_bias(blk.self_attn, x)
            bias = self._hook(block_hook(i, "hook_attn_bias"), bias.transpose(1, 2)).transpose(1, 2)
            scores = scores + bias
        pattern = self._hook(block_hook(i, "hook_pattern"), scores.softmax(-1).transpose(1, 2)).transpose(1, 2)
        heads = self._hook(block_hook(i, "hook_attn_heads"), (pattern @ v).transpose(1, 2))
        attn_out = self._hook(block_hook(i, "hook_attn_out"), mha.out_proj(heads.reshape(b, t, d)))
        x = self._hook(block_hook(i, "hook_resid_mid"), blk.norm1(x + attn_out))
        act = F.gelu if cfg.activation == "gelu" else F.relu
        hidden = self._hook(block_hook(i, "hook_mlp_act"), act(blk.linear1(self._hook(block_hook(i, "hook_mlp_in"), x))))
        mlp_out = self._hook(block_hook(i, "hook_mlp_out"), blk.linear2(hidden))
        return self._hook(block_hook(i, "hook_resid_post"), blk.norm2(x + mlp_out))

    def heads(self, x):
        """(move logits [B, 4352], wdl logits [B, 3], ponder [B]) from the encoder output [B, 64, d]."""
        return self.move_logits(x), *self.value_ponder(x)

    def move_logits(self, x) -> torch.Tensor:
        hid = self.cfg.head_hid_dim
        sq_from, sq_to = self.proj_sq_from(x), self.proj_sq_to(x)
        scores = sq_from @ sq_to.transpose(1, 2) / math.sqrt(hid)  # [B, from, to]
        # promotions: the pawn move's score (from a7..h7 to a8..h8) plus a bias per target file and piece
        base = scores[:, 48:56, 56:64]  # [B, from file, to file]
        piece_bias = self.promo_bias_proj(sq_to[:, 56:64]) * math.sqrt(hid)  # [B, to file, q r b n]
        promo = base.unsqueeze(-1) + piece_bias.unsqueeze(1)  # [B, from file, to file, piece]
        return torch.cat([scores.flatten(1), promo.flatten(1)], dim=1)

    def value_ponder(self, x) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self._hook("hook_pooled", self.last_ln(x.mean(dim=1)))
        wdl = self.fc_value(F.relu(self.fc_value_hid(pooled)))
        ponder = self.fc_ponder(F.relu(self.fc_ponder_hid(pooled))).squeeze(1)
        return wdl, ponder


def maia3_state_dict(model: Maia3) -> dict[str, torch.Tensor]:
    """The state dict in maia3-runtime's layout: the shared GAB basis also under every block's
    `self_attn.gab_weight` (their blocks each hold it)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if model.cfg.use_gab:
        for i in range(model.cfg.num_blocks):
            state[f"transformer.layers.{i}.self_attn.gab_weight"] = state["gab_shared_weight"]
    return state


def _read(path: Path) -> tuple[dict, Maia3Config | None]:
    """(state dict, the config recorded in our safetensors file or None) of a checkpoint file."""
    if path.suffix == ".safetensors":
        from ..io import load_safetensors

        state, meta = load_safetensors(path)
        if CONFIG_KEY not in meta:
            return state, None
        try:
            return state, Maia3Config.from_dict(json.loads(meta[CONFIG_KEY]), f"{path}: metadata '{CONFIG_KEY}'")
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: metadata '{CONFIG_KEY}' is not the record save_maia3 writes ({e})") from None
    from .checkpoint import read_checkpoint  # .pt: a state dict or {"model_state_dict": ...}, module. stripped

    state, _ = read_checkpoint(path)
    return state, None


def _guess_size(state: dict) -> str | None:
    """The published size whose shapes a state dict has (for the error message), or None."""
    for name in SIZES:
        with torch.device("meta"):  # the key shapes only, no weights
            own = Maia3(size_config(name)).state_dict()
        if all(k in state and tuple(state[k].shape) == tuple(v.shape) for k, v in own.items()):
            return name
    return None


def load_maia3(path, config: Maia3Config | None = None, size: str | None = None, device="cpu") -> Maia3:
    """A Maia-3 from a maia3-runtime checkpoint (.pt, `model_state_dict` or a bare state dict; older
    `smolgen` key names are read as `gab`) or a safetensors file written by save_maia3 (which
    records its config). The architecture: `config`, else the file's record, else `size` (3m | 5m |
    23m | 79m), which must agree with a record. A key that is unknown, missing or of another shape is one CheckpointError."""
    path = Path(path)
    if path.is_dir():
        from ..layout import MODEL_FILE

        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"Maia-3 checkpoint {path} not found: expected a maia3-runtime .pt file or a .safetensors "
                              "file written by maia-adapt")
    state, recorded = _read(path)
    state = {k.replace("smolgen", "gab"): v for k, v in state.items()}
    if recorded is not None and size and config is None and size_config(size) != recorded:
        raise CheckpointError(f"{path} records a Maia-3 of another shape than model.size={size} ({recorded}): "
                              "drop model.size (the file's own record is used)")
    cfg = config or recorded or (size_config(size) if size else None)
    if cfg is None:
        raise CheckpointError(f"{path}: a .pt file does not record its Maia-3 size: give model.size "
                              f"({', '.join(SIZES)})")
    model = Maia3(cfg)
    shared = state.get("gab_shared_weight")
    for i in range(cfg.num_blocks):  # the per-block copies of the shared basis must be that basis
        alias = state.pop(f"transformer.layers.{i}.self_attn.gab_weight", None)
        if alias is not None and shared is not None and not torch.equal(alias, shared):
            raise CheckpointError(f"{path}: key 'transformer.layers.{i}.self_attn.gab_weight' differs from "
                                  "'gab_shared_weight': expected the one shared attention-bias basis")
    from .checkpoint import load_state_strict

    try:
        load_state_strict(model, state, str(path))
    except CheckpointError as e:
        guess = _guess_size(state) if size or config else None
        hint = f" (its shapes are those of model.size={guess})" if guess else ""
        raise CheckpointError(f"{e}{hint}") from None
    return model.to(device).eval()


def save_maia3(model: Maia3, path, **metadata) -> Path:
    """Weights + architecture as one self-describing safetensors file (load_maia3 reads it back)."""
    from ..io import save_safetensors, to_json

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {CONFIG_KEY: to_json(model.cfg.to_dict())}
    meta.update({k: v if isinstance(v, str) else to_json(v) for k, v in metadata.items()})
    return save_safetensors(state, path, meta)
