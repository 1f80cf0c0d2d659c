"""Sparse autoencoders: JumpReLU, TopK, BatchTopK and ReLU-L1, in one module.

x (d) -> pre = (x - b_dec) W_enc + b_enc (F) -> z = act(pre) -> x_hat = z W_dec + b_dec.
Training happens on normalised activations (scaled so E||x||^2 = d); `fold_normalisation` folds the
scale back into the weights so a saved SAE works on raw activations. Decoder rows have unit norm
during training (`project_decoder_grad` before the step, `normalise_decoder` after it).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .kernels import KERNELS, compute_dtype, fired_counts, row_crow, sparse_decode, topk_encode, use_sparse

ARCHITECTURES = ("jumprelu", "topk", "batchtopk", "relu_l1")


@dataclass
class SAEConfig:
    architecture: str = "topk"  # jumprelu | topk | batchtopk | relu_l1
    dim: int = 4096  # dictionary size F
    d_in: int = 0  # filled from the hook site
    k: int = 32  # TopK / BatchTopK: active latents per sample (mean for BatchTopK)
    # JumpReLU: weight of the L0 penalty. 1 is SAELens's default and the study's, on inputs scaled the
    # same way (E||x||^2 = d, MSE summed over d): at the initial threshold below the L0 term then gives
    # about twice the reconstruction's threshold gradient; at 1e-3 it gave 0.2% and L0 drifted up
    l0_coefficient: float = 1.0
    # JumpReLU: width of the rectangle kernel of the threshold gradient, in activation units
    bandwidth: float = 0.1
    # JumpReLU: starting threshold (thresholds are trained in log space, where Adam moves them by about
    # lr per step). With normalised activations 1.0 starts near L0 40 of 256 latents, 60 of 4096
    init_threshold: float = 1.0
    l1_coefficient: float = 5.0  # ReLU-L1: weight of sum_i z_i * ||W_dec,i||
    aux_k: int = 256  # AuxK: dead latents used to model the residual (TopK family); 0 disables
    aux_coefficient: float = 1 / 32
    dead_after: int = 100_000  # samples without a firing after which a latent counts as dead
    dense_threshold: float = 0.1  # a latent firing on more than this fraction of samples is dense
    b_dec_init: str = "median"  # mean | median | zeros
    normalise: bool = True
    # training
    lr: float = 4e-4
    batch_size: int = 1024
    steps: int = 2000
    warmup_steps: int = 100
    decay_start: float = 0.8  # fraction of steps after which the lr decays linearly to 0
    sparsity_warmup_steps: int = 200  # JumpReLU / ReLU-L1 penalty ramps up from 0
    seed: int = 0
    # TopK / BatchTopK: sparse (k·d gathers and scatters, dictionaries.kernels) | dense (matmuls on
    # the [B, F] code) | auto: sparse on the CPU, dense on a GPU
    kernel: str = "auto"
    decoder_norm: str = "latent"  # latent: unit-norm decoder rows | none: unconstrained (the seed's SAE)
    # where the activations come from (recorded in cfg.json)
    site: str = "blocks.1.hook_resid_post"
    token_pooling: str = "mean"  # mean | none
    elo: str = "random"  # data | random | 0..10: Elo conditioning while caching activations
    extra: dict = field(default_factory=dict)

    def validate(self) -> "SAEConfig":
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(f"sae.architecture '{self.architecture}': expected one of {', '.join(ARCHITECTURES)}")
        if self.architecture in ("topk", "batchtopk") and not 0 < self.k <= self.dim:
            raise ConfigError(f"sae.k={self.k}: expected 1..sae.dim ({self.dim})")
        if self.kernel not in KERNELS:
            raise ConfigError(f"sae.kernel '{self.kernel}': expected one of {', '.join(KERNELS)}")
        if self.decoder_norm not in ("latent", "none"):
            raise ConfigError(f"sae.decoder_norm '{self.decoder_norm}': expected latent or none")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


class _JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - t) and the per-sample L0 count sum_i H(pre_i - t_i), in one pass.

    The threshold gets its gradient through a rectangle kernel of width eps around it (Rajamanoharan
    et al. 2024), from both outputs. Fusing them saves two thirds of the elementwise passes over the
    [batch, F] pre-activations, which on a CPU cost as much as a fifth of the matmuls.
    """

    @staticmethod
    def forward(ctx, pre, threshold, eps):
        above = pre > threshold
        near = (pre - threshold).abs_() < eps / 2
        ctx.save_for_backward(above, near, threshold)
        ctx.eps = eps
        # counts in float32: bfloat16 (autocast) holds integers exactly only up to 256
        return pre * above, above.sum(-1, dtype=torch.float32)

    @staticmethod
    def backward(ctx, g_z, g_l0):
        above, near, threshold = ctx.saved_tensors
        g_pre = g_z * above if g_z is not None else None
        # dz/dt = -(t / eps) * kernel, dL0/dt = -(1 / eps) * kernel
        inner = g_z * threshold if g_z is not None else torch.zeros_like(near, dtype=threshold.dtype)
        if g_l0 is not None:
            inner = inner + g_l0[:, None]
        g_t = (inner * near).sum(0, dtype=torch.float32).mul_(-1.0 / ctx.eps)
        return g_pre, g_t, None


# what the steps keep at unit norm (cfg.decoder_norm). W_dec is [dim, d_out], one row a latent's
# decoder vector. latent (ours): each row, with the gradient's component along the row removed before
# the step | output (the seed's transcoder, N train/transcoder_train.py:76-80: `norm(decoder.weight,
# dim=1)` of an nn.Linear weight [d_out, dim], i.e. each output dimension's weights across the
# latents, a column here; no gradient projection) | none (unconstrained: the seed's SAE, whose
# decoder had no constraint, N train/train_sae.py:87-115)
DECODER_NORMS = ("latent", "output", "none")


class UnitDecoderMixin:
    """Decoder upkeep shared by SAEs and transcoders: unit-norm rows (`decoder_norm`) and AuxK for
    dead latents."""

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """After each step: the unit norms `cfg.decoder_norm` names (DECODER_NORMS)."""
        norm = getattr(self.cfg, "decoder_norm", "latent")
        if norm == "latent":
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
        elif norm == "output":
            self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the gradient component parallel to each (unit) decoder row (decoder_norm=latent only:
        the seed's updates had no projection, nor has an unconstrained decoder)."""
        if self.W_dec.grad is not None and getattr(self.cfg, "decoder_norm", "latent") == "latent":
            w = self.W_dec
            # vecdot and addcmul_: no [F, d] temporaries (two passes over W_dec fewer)
            self.W_dec.grad.addcmul_(torch.linalg.vecdot(self.W_dec.grad, w)[:, None], w, value=-1.0)

    def aux_loss(self, acts: torch.Tensor, err: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """AuxK (Gao et al. 2024): the top dead latents of acts [B, F] reconstruct the residual err,
        relative to the residual's own size, so dead latents get gradient toward useful directions."""
        # a fixed k (extra picks are live latents masked to 0, which add nothing) and a 0/1 factor
        # instead of branching on the dead count: no host sync, one compiled graph
        vals, idx = acts.masked_fill(~dead, 0.0).topk(min(self.cfg.aux_k, acts.shape[-1]), dim=-1)
        aux_recon = torch.zeros_like(acts).scatter(-1, idx, vals) @ self.W_dec
        e = err.detach()
        return (e - aux_recon).pow(2).sum(-1).mean() / e.pow(2).sum(-1).mean().clamp_min(1e-8) * dead.any()


class SparseAutoencoder(UnitDecoderMixin, nn.Module):
    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg.validate()
        d, f = cfg.d_in, cfg.dim
        g = torch.Generator().manual_seed(cfg.seed)
        w_dec = torch.randn(f, d, generator=g)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())  # encoder starts as the decoder transpose
        self.b_enc = nn.Parameter(torch.zeros(f))
        self.b_dec = nn.Parameter(torch.zeros(d))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((f,), math.log(cfg.init_threshold)))
        # BatchTopK: threshold used at inference, estimated during training
        self.register_buffer("inference_threshold", torch.tensor(-1.0))
        # activations are multiplied by this before encoding (1 after folding)
        self.register_buffer("norm_scale", torch.tensor(1.0))

    # ---- encoding -----------------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        # addmm keeps the [B, F] pre-activations in the autocast dtype; adding b_enc after the matmul
        # would promote them to float32 and double the memory traffic of everything downstream
        return torch.addmm(self.b_enc, x * self.norm_scale - self.b_dec, self.W_enc)

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        a = self.cfg.architecture
        if a == "jumprelu":
            return _JumpReLU.apply(pre, self.threshold, self.cfg.bandwidth)[0]
        if a == "relu_l1":
            return F.relu(pre)
        if a == "topk" or (a == "batchtopk" and not self.training and self.inference_threshold < 0):
            vals, idx = F.relu(pre).topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals)
        # batchtopk
        if not self.training:
            return pre * (pre > self.inference_threshold)
        flat = F.relu(pre).flatten()
        vals, idx = flat.topk(min(self.cfg.k * pre.shape[0], flat.numel()))
        return torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_acts(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.W_dec + self.b_dec) / self.norm_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # ---- training -----------------------------------------------------------------------------
    def losses(self, x: torch.Tensor, sparsity_scale: float | torch.Tensor = 1.0, dead: torch.Tensor | None = None) -> dict:
        """Loss terms on a batch of raw activations x [B, d] (normalised inside), with the firing
        counts per latent ("fired") and the mean L0 ("l0") as tensors. sparsity_scale may be a 0-d
        tensor, as the trainer passes it, so a compiled loss does not recompile while it ramps up;
        dead [F] (bool) switches AuxK on for the TopK family."""
        a = self.cfg.architecture
        aux = a in ("topk", "batchtopk") and bool(self.cfg.aux_k) and dead is not None
        if a in ("topk", "batchtopk"):
            pre, recon, fired, l0 = self._topk_forward(x, need_pre=aux)
        else:
            pre = self.pre_acts(x)
            if a == "jumprelu":
                z, l0_count = _JumpReLU.apply(pre, self.threshold, self.cfg.bandwidth)
            else:
                z = F.relu(pre)
            recon = z @ self.W_dec + self.b_dec
            fired = (z > 0).sum(0)
            l0 = (z > 0).sum(-1, dtype=torch.float32).mean()
        target = x * self.norm_scale
        err = target - recon
        mse = err.pow(2).sum(-1).mean()
        out = {"mse": mse, "recon": recon.detach(), "fired": fired, "l0": l0.detach()}
        loss = mse
        if a == "jumprelu":
            l0 = l0_count.mean()
            out["l0_loss"] = l0
            loss = loss + sparsity_scale * self.cfg.l0_coefficient * l0
        elif a == "relu_l1":
            l1 = (z * self.W_dec.norm(dim=1)).sum(-1).mean()
            out["l1_loss"] = l1
            loss = loss + sparsity_scale * self.cfg.l1_coefficient * l1
        elif aux:
            # AuxK (Gao et al. 2024): dead latents learn to reconstruct what the live ones miss
            aux_loss = self.aux_loss(F.relu(pre), err, dead)
            out["aux_loss"] = aux_loss
            loss = loss + self.cfg.aux_coefficient * aux_loss
        out["loss"] = loss
        return out

    def _topk_forward(self, x: torch.Tensor, need_pre: bool):
        """TopK / BatchTopK training forward: (pre-activations or None, reconstruction, fired, l0).

        The selection runs on the pre-activations and ReLU on the k kept values only, so no [B, F]
        activation exists; with the sparse kernel neither do the [B, F] gradients."""
        n, dim, k = x.shape[0], self.cfg.dim, self.cfg.k
        sparse = use_sparse(self.cfg.kernel, x.device)
        pre = None
        if self.cfg.architecture == "topk" and sparse and not need_pre:
            vals, idx = topk_encode(x * self.norm_scale, self.b_dec, self.W_enc, self.b_enc, k, compute_dtype(x.device))
        else:
            pre = self.pre_acts(x)
        if self.cfg.architecture == "topk":
            if pre is not None:
                vals, idx = pre.topk(k, dim=-1, sorted=False)
                vals = F.relu(vals)
            if sparse:
                if pre is not None:  # the CSR layout of the sparse decoder wants sorted latents
                    idx, order = idx.sort(dim=-1)
                    vals = vals.gather(1, order)
                recon = sparse_decode(row_crow(n, k, x.device), idx.flatten(), vals.flatten(), self.W_dec)
            else:
                recon = torch.zeros_like(pre).scatter(-1, idx, vals) @ self.W_dec
            return pre, recon + self.b_dec, fired_counts(idx, vals, dim), (vals > 0).sum(-1, dtype=torch.float32).mean()
        # BatchTopK: the k * B largest pre-activations of the whole batch
        vals, flat = pre.flatten().topk(min(k * n, pre.numel()), sorted=False)
        vals = F.relu(vals)
        if sparse:
            flat, order = flat.sort()
            vals = vals[order]
            rows, cols = flat // dim, flat % dim
            crow = torch.searchsorted(rows, torch.arange(n + 1, device=x.device))
            recon = sparse_decode(crow, cols, vals, self.W_dec)
        else:
            recon = torch.zeros_like(pre).flatten().scatter(0, flat, vals).view_as(pre) @ self.W_dec
        if self.training:
            # running estimate of the smallest kept activation, used as the inference threshold;
            # tensor arithmetic instead of branches, so compile sees no data-dependent control flow
            m = torch.where(vals > 0, vals.detach(), torch.inf).min().float()
            t = self.inference_threshold
            new = torch.where(t < 0, m, 0.99 * t + 0.01 * m)
            t.copy_(torch.where(torch.isfinite(m), new, t))
        l0 = (vals > 0).sum(dtype=torch.float32) / n
        return pre, recon + self.b_dec, fired_counts(flat % dim, vals, dim), l0

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Normalisation scale and b_dec from a sample of raw activations [N, d]."""
        if self.cfg.normalise:
            self.norm_scale.fill_(math.sqrt(x.shape[1] / x.pow(2).sum(1).mean().clamp_min(1e-12).item()))
        xs = x * self.norm_scale
        if self.cfg.b_dec_init == "mean":
            self.b_dec.copy_(xs.mean(0))
        elif self.cfg.b_dec_init == "median":
            self.b_dec.copy_(geometric_median(xs))
        # the encoder reads centred inputs: start b_enc so that about half the latents are positive
        self.b_enc.zero_()

    @torch.no_grad()
    def fold_normalisation(self) -> None:
        """Fold norm_scale into the weights: same function of raw activations, norm_scale = 1."""
        s = float(self.norm_scale)
        self.W_enc.mul_(s)
        self.W_dec.div_(s)
        self.b_dec.div_(s)
        self.norm_scale.fill_(1.0)


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of distances to the rows of x."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() < eps * (1 + m.norm()):
            return new
        m = new
    return m
