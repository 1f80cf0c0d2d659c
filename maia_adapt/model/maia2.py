"""Maia-2 (CSSLab/maia2) with TransformerLens-style named hook points.

Parameter names match the official `maia2.main.MAIA2Model` exactly, so an official state dict loads
as it is. The forward pass is the official one; at each named site it calls `self._hook(name, x)`,
which is a single dict-emptiness check when no hook is installed.

Its hook sites, with their shapes, are listed in model/maia2_sites.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ..encoding import NUM_BUCKETS, NUM_MOVES
from .hooks import HookFn, HookPoints, block_hook
from .maia2_sites import hook_names


@dataclass
class Maia2Config:
    input_channels: int = 18
    dim_cnn: int = 256
    num_blocks_cnn: int = 5
    dim_vit: int = 1024
    num_blocks_vit: int = 2
    vit_length: int = 8
    elo_dim: int = 128
    heads: int = 16
    dim_head: int = 64
    num_elo_buckets: int = NUM_BUCKETS
    num_moves: int = NUM_MOVES
    # dropout rates of the official model
    dropout_cnn: float = 0.5
    dropout_vit: float = 0.1
    dropout: float = 0.1

    @classmethod
    def from_any(cls, cfg) -> "Maia2Config":
        """Build from a dataclass, dict or DictConfig, ignoring keys that are not architecture."""
        names = {f.name for f in fields(cls)}
        src = cfg if isinstance(cfg, dict) else {k: getattr(cfg, k) for k in dir(cfg) if k in names}
        return cls(**{k: v for k, v in dict(src).items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


class BasicBlock(nn.Module):
    def __init__(self, planes: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x):
        out = self.dropout(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class ChessResNet(nn.Module):
    def __init__(self, cfg: Maia2Config):
        super().__init__()
        self.conv1 = nn.Conv2d(cfg.input_channels, cfg.dim_cnn, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.dim_cnn)
        self.layers = nn.Sequential(*[BasicBlock(cfg.dim_cnn, cfg.dropout_cnn) for _ in range(cfg.num_blocks_cnn)])
        self.conv_last = nn.Conv2d(cfg.dim_cnn, cfg.vit_length, 3, 1, 1, bias=False)
        self.bn_last = nn.BatchNorm2d(cfg.vit_length)

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.bn_last(self.conv_last(out))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        # indices 0..5 kept so state-dict keys are the official net.0 / net.1 / net.4
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )


class EloAwareAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float, elo_dim: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.elo_query = nn.Linear(elo_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))


class Transformer(nn.Module):
    def __init__(self, cfg: Maia2Config):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim_vit)
        self.elo_layers = nn.ModuleList(
            nn.ModuleList(
                [
                    EloAwareAttention(cfg.dim_vit, cfg.heads, cfg.dim_head, cfg.dropout_vit, cfg.elo_dim * 2),
                    FeedForward(cfg.dim_vit, cfg.dim_vit, cfg.dropout_vit),
                ]
            )
            for _ in range(cfg.num_blocks_vit)
        )


class Maia2(HookPoints, nn.Module):
    """The Maia-2 network. forward(boards [B,18,8,8], elo_self [B], elo_oppo [B]) ->
    (policy logits [B,1880], side-info logits [B,2021], value [B] in [-1, 1] scale)."""

    n_inputs = 3  # boards, elo_self, elo_oppo

    def __init__(self, cfg: Maia2Config | None = None):
        super().__init__()
        self.cfg = cfg = cfg or Maia2Config()
        self.chess_cnn = ChessResNet(cfg)
        self.to_patch_embedding = nn.Sequential(nn.Linear(64, cfg.dim_vit), nn.LayerNorm(cfg.dim_vit))
        self.transformer = Transformer(cfg)
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.vit_length, cfg.dim_vit))
        self.fc_1 = nn.Linear(cfg.dim_vit, cfg.num_moves)
        self.fc_2 = nn.Linear(cfg.dim_vit, cfg.num_moves + 6 + 6 + 1 + 64 + 64)
        self.fc_3 = nn.Linear(128, 1)
        self.fc_3_1 = nn.Linear(cfg.dim_vit, 128)
        self.elo_embedding = nn.Embedding(cfg.num_elo_buckets, cfg.elo_dim)
        self.dropout = nn.Dropout(p=cfg.dropout)
        self.last_ln = nn.LayerNorm(cfg.dim_vit)
        self.hook_names = hook_names(cfg)
        self._hooks: dict[str, list[HookFn]] = {}

    # ---- forward ---------------------------------------------------------------------------
    def _attention(self, attn: EloAwareAttention, x, elo_emb, i: int):
        x = attn.norm(x)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=attn.heads) for t in attn.to_qkv(x).chunk(3, dim=-1))
        # the only place the Elo enters: one vector per head added to every token's query, i.e. a bias
        # on the attention scores that depends on the key token alone (which tokens a head reads)
        elo_q = self._hook(block_hook(i, "hook_elo_q"), rearrange(attn.elo_query(elo_emb), "b (h d) -> b 1 h d", h=attn.heads))
        q = q + rearrange(elo_q, "b 1 h d -> b h 1 d")
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * attn.scale, dim=-1)
        weights = rearrange(self._hook(block_hook(i, "hook_pattern"), rearrange(weights, "b h q k -> b q h k")),
                            "b q h k -> b h q k")
        weights = attn.dropout(weights)
        heads = rearrange(torch.matmul(weights, v), "b h n d -> b n h d")
        heads = self._hook(block_hook(i, "hook_attn_heads"), heads)
        return attn.to_out(rearrange(heads, "b n h d -> b n (h d)"))

    def _feedforward(self, ff: FeedForward, x, i: int):
        net = ff.net
        h = self._hook(block_hook(i, "hook_mlp_in"), net[0](x))
        return net[5](net[4](net[3](net[2](net[1](h)))))

    def forward(self, boards, elo_self, elo_oppo):
        return self.from_tokens(self.tokens(boards), elo_self, elo_oppo)

    def tokens(self, boards):
        """The part that does not see the Elo: CNN trunk and patch embedding -> tokens [B, 8, d]."""
        cfg = self.cfg
        b = boards.size(0)
        embs = self.chess_cnn(boards.view(b, cfg.input_channels, 8, 8)).view(b, cfg.vit_length, 64)
        embs = self._hook("hook_cnn_out", embs)
        x = self.to_patch_embedding(embs) + self.pos_embedding
        return self.dropout(self._hook("hook_tokens", x))

    def from_tokens(self, x, elo_self, elo_oppo):
        """The Elo-aware transformer and the heads; one tokens() pass serves any number of Elo
        conditionings (distillation asks for several per position)."""
        elo_emb = torch.cat((self.elo_embedding(elo_self), self.elo_embedding(elo_oppo)), dim=1)
        for i, (attn, ff) in enumerate(self.transformer.elo_layers):
            x = self._hook(block_hook(i, "hook_resid_pre"), x)
            x = x + self._hook(block_hook(i, "hook_attn_out"), self._attention(attn, x, elo_emb, i))
            x = self._hook(block_hook(i, "hook_resid_mid"), x)
            x = x + self._hook(block_hook(i, "hook_mlp_out"), self._feedforward(ff, x, i))
            x = self._hook(block_hook(i, "hook_resid_post"), x)
        x = self._hook("hook_final", self.last_ln(self.transformer.norm(x).mean(dim=1)))
        return self.heads(x)

    def heads(self, x):
        """Policy, side-info and value heads applied to a pooled representation [B, dim]."""
        value = self.fc_3(self.dropout(torch.relu(self.fc_3_1(x)))).squeeze(dim=-1)
        return self.fc_1(x), self.fc_2(x), value


def grow_transformer(model: Maia2, blocks: int) -> Maia2:
    """A copy of `model` with `blocks` more Elo-aware transformer blocks appended, each starting as the
    identity (its attention and FFN output projections zeroed, so both residual branches add
    nothing): the grown model computes exactly what `model` did, and training can give the new
    blocks' Elo queries more routing to do without first unlearning the old ones."""
    cfg = Maia2Config(**{**model.cfg.to_dict(), "num_blocks_vit": model.cfg.num_blocks_vit + blocks})
    grown = Maia2(cfg).to(next(model.parameters()).device)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("transformer.elo_layers.") for k in missing), (missing, unexpected)
    with torch.no_grad():
        for attn, ff in list(grown.transformer.elo_layers)[model.cfg.num_blocks_vit:]:
            for out in (attn.to_out[0], ff.net[4]):
                out.weight.zero_()
                out.bias.zero_()
    return grown.train(model.training)
