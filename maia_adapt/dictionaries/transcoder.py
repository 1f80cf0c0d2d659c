"""Wide sparse transcoders: a sparse replacement for a transformer block's FFN.

The transcoder reads the FFN's input (`blocks.{i}.hook_mlp_in`, after its LayerNorm) and predicts its
output (`blocks.{i}.hook_mlp_out`), per token, through a TopK (or ReLU) bottleneck of `dim` latents
with unit-norm decoder rows (`decoder_norm`: also the seed study's axis, or none); an optional linear
skip path (skip transcoders) carries what is linear.
Inputs and targets are normalised to E|x|^2 = d during training and the scales are folded into the
weights when saved, so the saved module works on raw activations. It plugs into DictionaryTrainer
like an SAE: `losses(x, target=y)` and the decoder upkeep methods.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_json, load_safetensors, save_safetensors
from .files import WEIGHTS, check_tensors, folded_copy, meta_get, read_folder, saelens_cfg
from .kernels import KERNELS, compute_dtype, fired_counts, row_crow, sparse_decode, topk_encode, use_sparse
from .sae import DECODER_NORMS, UnitDecoderMixin
from ..model.hooks import block_hook

LEGACY_WEIGHTS = "transcoder.safetensors"  # maia-adapt-transcoder-v1: W_skip as [d_in, d_out]


@dataclass
class TranscoderConfig:
    dim: int = 4096
    k: int = 32  # active latents per token; 0 = plain ReLU
    d_in: int = 0
    d_out: int = 0
    skip: bool = False  # a linear skip path from input to output
    aux_k: int = 256  # AuxK: dead latents model what the live ones miss; 0 disables
    aux_coefficient: float = 1 / 32
    dead_after: int = 100_000
    dense_threshold: float = 0.1
    lr: float = 2e-3
    batch_size: int = 1024
    steps: int = 2000
    warmup_steps: int = 100
    decay_start: float = 0.8
    sparsity_warmup_steps: int = 0
    seed: int = 0
    kernel: str = "auto"  # k > 0: sparse | dense | auto (sparse on the CPU), as sae.kernel
    decoder_norm: str = "latent"  # latent | output (the seed's wrong axis) | none: see DECODER_NORMS
    layer: int = 1
    site: str = "blocks.1.hook_mlp_in"
    target_site: str = "blocks.1.hook_mlp_out"
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TranscoderConfig":
        if self.k < 0 or self.k > self.dim:
            raise ConfigError(f"transcoder.k={self.k}: expected 0 (ReLU) or 1..transcoder.dim ({self.dim})")
        if self.kernel not in KERNELS:
            raise ConfigError(f"transcoder.kernel '{self.kernel}': expected one of {', '.join(KERNELS)}")
        if self.decoder_norm not in DECODER_NORMS:
            raise ConfigError(f"transcoder.decoder_norm='{self.decoder_norm}': expected one of {', '.join(DECODER_NORMS)}")
        return self


class Transcoder(UnitDecoderMixin, nn.Module):
    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        self.cfg = cfg.validate()
        g = torch.Generator().manual_seed(cfg.seed)
        w = torch.randn(cfg.dim, cfg.d_out, generator=g)
        self.W_dec = nn.Parameter(w / w.norm(dim=1, keepdim=True))
        if cfg.decoder_norm == "output":  # start inside the constraint the steps keep
            self.normalise_decoder()
        # encoder rows start random and small: input and output spaces differ, so no transpose trick
        self.W_enc = nn.Parameter(torch.randn(cfg.d_in, cfg.dim, generator=g) / math.sqrt(cfg.d_in))
        self.b_enc = nn.Parameter(torch.zeros(cfg.dim))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_out))
        self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out)) if cfg.skip else None
        self.register_buffer("in_scale", torch.tensor(1.0))
        self.register_buffer("out_scale", torch.tensor(1.0))
        self.target_site = cfg.target_site

    @property
    def norm_scale(self) -> torch.Tensor:  # what DictionaryTrainer multiplies the *target* by
        return self.out_scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu((x * self.in_scale) @ self.W_enc + self.b_enc)
        if not self.cfg.k:
            return pre
        vals, idx = pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals)

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        out = z @ self.W_dec + self.b_dec
        if self.W_skip is not None and x is not None:
            out = out + (x * self.in_scale) @ self.W_skip
        return out / self.out_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    def losses(self, x: torch.Tensor, target: torch.Tensor, sparsity_scale=1.0, dead=None) -> dict:
        """Loss terms, firing counts ("fired") and mean L0 ("l0"), as SparseAutoencoder.losses."""
        xs = x * self.in_scale
        aux = bool(self.cfg.aux_k) and dead is not None
        sparse = use_sparse(self.cfg.kernel, x.device)
        pre = None
        if self.cfg.k and sparse and not aux:
            # the selection and both weight gradients touch k latents per token (dictionaries.kernels)
            vals, idx = topk_encode(xs, xs.new_zeros(xs.shape[1]), self.W_enc, self.b_enc,
                                    self.cfg.k, compute_dtype(x.device))
        else:
            # addmm keeps the [B, F] pre-activations in the autocast dtype
            pre = torch.addmm(self.b_enc, xs, self.W_enc)
        if self.cfg.k:
            n = x.shape[0]
            if pre is not None:
                vals, idx = pre.topk(self.cfg.k, dim=-1, sorted=False)
                vals = F.relu(vals)  # after the selection: no [B, F] activation
            if sparse:
                if pre is not None:
                    idx, order = idx.sort(dim=-1)
                    vals = vals.gather(1, order)
                recon = sparse_decode(row_crow(n, self.cfg.k, x.device), idx.flatten(), vals.flatten(), self.W_dec)
            else:
                recon = torch.zeros_like(pre).scatter(-1, idx, vals) @ self.W_dec
            recon = recon + self.b_dec
            fired, l0 = fired_counts(idx, vals, self.cfg.dim), (vals > 0).sum(-1, dtype=torch.float32).mean()
        else:
            z = F.relu(pre)
            recon = z @ self.W_dec + self.b_dec
            fired, l0 = (z > 0).sum(0), (z > 0).sum(-1, dtype=torch.float32).mean()
        if self.W_skip is not None:
            recon = recon + xs @ self.W_skip
        y = target * self.out_scale
        err = y - recon
        mse = err.pow(2).sum(-1).mean()
        out = {"mse": mse, "recon": recon.detach(), "target": y, "fired": fired, "l0": l0.detach()}
        loss = mse
        if aux:
            aux_loss = self.aux_loss(F.relu(pre), err, dead)
            out["aux_loss"] = aux_loss
            loss = loss + self.cfg.aux_coefficient * aux_loss
        out["loss"] = loss
        return out

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Normalisation scales from samples of inputs and targets; b_dec at the target mean."""
        self.in_scale.fill_(math.sqrt(x.shape[1] / x.pow(2).sum(1).mean().clamp_min(1e-12).item()))
        self.out_scale.fill_(math.sqrt(y.shape[1] / y.pow(2).sum(1).mean().clamp_min(1e-12).item()))
        self.b_dec.copy_((y * self.out_scale).mean(0))

    @torch.no_grad()
    def fold_normalisation(self) -> None:
        """Same function of raw activations with both scales 1."""
        si, so = float(self.in_scale), float(self.out_scale)
        self.W_enc.mul_(si)
        if self.W_skip is not None:
            self.W_skip.mul_(si / so)
        self.W_dec.div_(so)
        self.b_dec.div_(so)
        self.in_scale.fill_(1.0)
        self.out_scale.fill_(1.0)


def transcoder_architecture(cfg: TranscoderConfig) -> str:
    """The SAELens architecture name: its own for ReLU transcoders, ours (unknown to it) for TopK."""
    return ("topk_" if cfg.k else "") + ("skip_transcoder" if cfg.skip else "transcoder")


def save_transcoder(tc: Transcoder, folder, extra: dict | None = None) -> Path:
    """Write the transcoder with its scales folded in, in the layout of dictionaries/files.py."""
    folder = Path(folder)
    folded, tensors = folded_copy(tc)
    cfg = tc.cfg
    if folded.W_skip is not None:
        tensors["W_skip"] = folded.W_skip.t()  # SAELens's [d_out, d_in]: y = ... + x @ W_skip.T
    extra = dict(extra or {})
    out = saelens_cfg(transcoder_architecture(cfg), cfg.d_in, cfg.dim, cfg.site, extra.pop("model_name", "maia2"), False)
    out["d_out"] = cfg.d_out
    if cfg.k:
        out["k"] = cfg.k
    save_safetensors({k: v.detach() for k, v in tensors.items()}, folder / WEIGHTS,
                     {"format": "maia-adapt-transcoder-v2", "W_skip": "[d_out, d_in]"})
    atomic_write_json(folder / "cfg.json", {**out, "hook_name_out": cfg.target_site, "maia_adapt_architecture": "transcoder",
                                            "training": asdict(cfg), **extra})
    return folder


def load_transcoder(path) -> Transcoder:
    """A transcoder from a folder written by save_transcoder, an older `transcoder.safetensors` folder
    (W_skip stored as [d_in, d_out]), or a SAELens `transcoder` / `skip_transcoder` folder."""
    path, meta, file = read_folder(path, LEGACY_WEIGHTS, "transcoder")
    cfg_path = path / "cfg.json"
    legacy = file.name == LEGACY_WEIGHTS
    if "training" in meta:
        cfg = TranscoderConfig(**meta["training"])
        if not legacy and meta.get("architecture") != transcoder_architecture(cfg):
            raise CheckpointError(f"{cfg_path}: architecture {meta.get('architecture')!r} but its training config "
                                  f"(k={cfg.k}, skip={cfg.skip}) is a {transcoder_architecture(cfg)!r}")
    else:  # written by SAELens itself
        arch = meta_get(meta, cfg_path, "architecture")
        if arch not in ("transcoder", "skip_transcoder"):
            raise CheckpointError(f"{cfg_path}: architecture '{arch}': expected transcoder or skip_transcoder")
        if meta.get("normalize_activations", "none") != "none":
            raise CheckpointError(f"{cfg_path}: normalize_activations={meta['normalize_activations']!r}: only 'none' is supported")
        site = meta.get("hook_name", meta.get("metadata", {}).get("hook_name", ""))
        cfg = TranscoderConfig(dim=meta_get(meta, cfg_path, "d_sae"), k=0, d_in=meta_get(meta, cfg_path, "d_in"),
                               d_out=meta_get(meta, cfg_path, "d_out"), skip=arch == "skip_transcoder", site=site,
                               target_site=meta.get("hook_name_out", site))
    tc = Transcoder(cfg)
    tensors, _ = load_safetensors(file)
    want = {k: tuple(getattr(tc, k).shape) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if cfg.skip:
        want["W_skip"] = (cfg.d_in, cfg.d_out) if legacy else (cfg.d_out, cfg.d_in)
    check_tensors(file, tensors, want)
    for k in want:
        v = tensors[k]
        getattr(tc, k).data.copy_(v if k != "W_skip" or legacy else v.t())
    return tc.eval()


def splice_hooks(tc: Transcoder, layer: int) -> list:
    """Hooks that replace block `layer`'s FFN output by the transcoder's prediction from its input."""
    seen = {}

    def grab(x, name):
        seen["x"] = x
        return x

    def replace(x, name):
        inp = seen.pop("x")
        return tc(inp.reshape(-1, inp.shape[-1])).reshape(x.shape).to(x.dtype)

    return [(block_hook(layer, "hook_mlp_in"), grab), (block_hook(layer, "hook_mlp_out"), replace)]
