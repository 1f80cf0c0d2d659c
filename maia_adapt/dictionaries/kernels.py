"""Sparse kernels for TopK dictionaries: k·d work per sample where a dense layer does d·F.

A TopK dictionary's code is sparse: sample b has latents cols[crow[b]:crow[b+1]] (sorted) with
values vals[...]. The dense way decodes it as a [B, F] matrix product and back-propagates the top-k
selection as a dense [B, F] gradient, so every matmul costs d·F per sample although only k latents
are live. Here (as EleutherAI's sparsify does with its Triton kernel, in plain PyTorch):

* `sparse_decode` sums the k decoder rows of each sample (embedding_bag); its backward gives each
  value the dot product of the output gradient with its row (a sampled matmul, SDDMM) and scatters
  the gradient into only the k rows used (a CSR x dense product, SpMM).
* `topk_encode` runs the encoder matmul, keeps the top k pre-activations per sample (ReLU after the
  selection, so no [B, F] activation is materialised) and back-propagates to W_enc with the same
  SpMM: k·d per sample instead of the dense x^T @ grad.

Both are torch.library custom ops, so torch.compile keeps them as single nodes (sparse tensors do
not trace) and compiles the rest of the loss around them once. Which path is faster depends on the
machine's FLOP-to-bandwidth ratio: each sparse product reads k rows of d numbers per sample, which
on a CPU costs far less than a d·F matmul, on a GPU's tensor cores not necessarily (measured by
benchmarks/gpu_all.sh); `kernel: auto` picks sparse on the CPU and dense elsewhere.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import custom_op

KERNELS = ("auto", "sparse", "dense")
# the CSR matrices here are built in order by construction; the beta notice says nothing to a user
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def use_sparse(kernel: str, device: torch.device) -> bool:
    return kernel == "sparse" or (kernel == "auto" and device.type == "cpu")


def _rows(crow: Tensor, n: int) -> Tensor:
    """The sample each of the n stored latents belongs to."""
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), crow.diff(), output_size=n)


def _argsort(cols: Tensor) -> Tensor:
    if cols.device.type == "cpu":
        try:  # numpy's stable sort of integers is a radix sort, 10-15x torch's CPU sort on 2 cores here
            import numpy as np

            return torch.from_numpy(np.argsort(cols.numpy(), kind="stable"))
        except ImportError:
            pass
    return torch.argsort(cols, stable=True)


def _code_t(crow: Tensor, cols: Tensor, vals: Tensor, dim: int) -> Tensor:
    """The transposed code S^T [F, B] as a CSR matrix (latents as rows)."""
    order = _argsort(cols)
    crow_t = torch.zeros(dim + 1, dtype=cols.dtype, device=cols.device)
    crow_t[1:] = torch.bincount(cols, minlength=dim).cumsum(0)
    return torch.sparse_csr_tensor(crow_t, _rows(crow, cols.numel())[order], vals[order], (dim, crow.numel() - 1),
                                   check_invariants=False)


@custom_op("maia_adapt::code_t_matmul", mutates_args=())
def code_t_matmul(crow: Tensor, cols: Tensor, vals: Tensor, dense: Tensor, dim: int) -> Tensor:
    """S^T @ dense [F, n] for the code S (float32): the weight gradient of a sparse layer."""
    return _code_t(crow, cols, vals.float(), dim) @ dense.float()


@code_t_matmul.register_fake
def _(crow, cols, vals, dense, dim):
    return dense.new_empty((dim, dense.shape[1]), dtype=torch.float32)


@custom_op("maia_adapt::sampled_dot", mutates_args=())
def sampled_dot(crow: Tensor, cols: Tensor, g: Tensor, w: Tensor) -> Tensor:
    """<g[b], w[cols[n]]> for each stored latent n of sample b (float32): (g @ w^T) only where S is."""
    mask = torch.sparse_csr_tensor(crow, cols, torch.zeros(cols.numel(), device=g.device), (g.shape[0], w.shape[0]),
                                    check_invariants=False)
    return torch.sparse.sampled_addmm(mask, g.float(), w.float().t(), beta=0.0).values()


@sampled_dot.register_fake
def _(crow, cols, g, w):
    return g.new_empty(cols.shape, dtype=torch.float32)


@custom_op("maia_adapt::sparse_decode", mutates_args=())
def sparse_decode(crow: Tensor, cols: Tensor, vals: Tensor, w: Tensor) -> Tensor:
    """out[b] = sum over the latents n of sample b of vals[n] * w[cols[n]], in w's dtype."""
    return F.embedding_bag(cols, w, crow, mode="sum", per_sample_weights=vals.to(w.dtype), include_last_offset=True)


@sparse_decode.register_fake
def _(crow, cols, vals, w):
    return w.new_empty((crow.shape[0] - 1, w.shape[1]))


def _decode_setup(ctx, inputs, output):
    crow, cols, vals, w = inputs
    ctx.save_for_backward(crow, cols, vals, w)
    ctx.vals_dtype = vals.dtype


def _decode_backward(ctx, g):
    crow, cols, vals, w = ctx.saved_tensors
    g_vals = sampled_dot(crow, cols, g, w).to(ctx.vals_dtype) if ctx.needs_input_grad[2] else None
    g_w = code_t_matmul(crow, cols, vals, g, w.shape[0]).to(w.dtype) if ctx.needs_input_grad[3] else None
    return None, None, g_vals, g_w


sparse_decode.register_autograd(_decode_backward, setup_context=_decode_setup)


@custom_op("maia_adapt::topk_encode", mutates_args=())
def topk_encode(x: Tensor, shift: Tensor, w: Tensor, b: Tensor, k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """relu(top-k over latents of (x - shift) @ w + b) per sample, as (values [B, k], latents [B, k]);
    latents sorted within each sample (the CSR order the sparse products need). The matmul runs in
    `dtype` (bfloat16 under autocast), the gradients come back in float32."""
    with torch.autocast(x.device.type, enabled=False):
        pre = torch.addmm(b.to(dtype), (x - shift).to(dtype), w.to(dtype))
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    idx, order = idx.sort(dim=-1)
    return vals.gather(1, order).relu_(), idx


@topk_encode.register_fake
def _(x, shift, w, b, k, dtype):
    return x.new_empty((x.shape[0], k), dtype=dtype), x.new_empty((x.shape[0], k), dtype=torch.long)


def _encode_setup(ctx, inputs, output):
    x, shift, w, b, k, dtype = inputs
    vals, idx = output
    ctx.save_for_backward(x, shift, w, vals, idx)
    ctx.dtypes = (x.dtype, shift.dtype, w.dtype, b.dtype)


def _encode_backward(ctx, g_vals, g_idx):
    x, shift, w, vals, idx = ctx.saved_tensors
    n, k = idx.shape
    crow = torch.arange(0, n * k + 1, k, device=idx.device)
    cols = idx.flatten()
    g = torch.where(vals > 0, g_vals, 0).flatten().float()  # the ReLU after the selection
    g_b = torch.zeros(w.shape[1], device=g.device).index_add_(0, cols, g)
    g_x = g_shift = g_w = None
    if ctx.needs_input_grad[0]:
        g_x = sparse_decode(crow, cols, g, w.float().t().contiguous()).to(ctx.dtypes[0])
    if ctx.needs_input_grad[1]:
        g_shift = -(w.float() @ g_b).to(ctx.dtypes[1])
    if ctx.needs_input_grad[2]:
        g_w = code_t_matmul(crow, cols, g, x - shift, w.shape[1]).t().to(ctx.dtypes[2])
    return g_x, g_shift, g_w, g_b.to(ctx.dtypes[3]), None, None


topk_encode.register_autograd(_encode_backward, setup_context=_encode_setup)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The matmul dtype autocast would use here (float32 outside autocast)."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


def row_crow(n: int, k: int, device) -> Tensor:
    """CSR row offsets of n samples with k latents each."""
    return torch.arange(0, n * k + 1, k, device=device)


def fired_counts(idx: Tensor, vals: Tensor, dim: int) -> Tensor:
    """Samples each latent fired on, from a sparse code."""
    return torch.zeros(dim, dtype=torch.long, device=idx.device).scatter_add_(0, idx.flatten(), (vals > 0).flatten().long())
