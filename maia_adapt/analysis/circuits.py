"""Feature circuits between the transcoders of two consecutive FFNs, and how skill level moves them.

Layer-0 transcoder features write into the residual stream through their decoder rows; layer-1
transcoder features read the FFN input, which is the LayerNorm of that stream. Ignoring the
normalisation's per-position scale and the attention in between (the direct path), the input-invariant
connection from upstream feature i to downstream feature j is (W_dec0[i] * gamma) . W_enc1[:, j], with
gamma the layer-1 FFN LayerNorm weight. The input-dependent attribution weighs it by how strongly i
fires where j fires: A[i, j] = E[z0_i | z1_j > 0] * C[i, j]. Everything is one or two matmuls, where a
per-position, per-feature Python loop would take minutes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..model.activations import activation_batches
from ..encoding import NUM_BUCKETS
from ..model.hooks import block_hook


@torch.no_grad()
def connections(tc0, tc1, ln_weight: torch.Tensor | None = None) -> torch.Tensor:
    """[F0, F1] input-invariant connections from layer-0 to layer-1 transcoder features."""
    dec = tc0.W_dec / tc0.out_scale  # what one unit of feature i adds to the residual stream (raw units)
    if ln_weight is not None:
        dec = dec * ln_weight
    return dec @ (tc1.W_enc * tc1.in_scale)


@torch.no_grad()
def attributions(z0: torch.Tensor, z1: torch.Tensor, conn: torch.Tensor) -> torch.Tensor:
    """[F0, F1] mean upstream activation where the downstream feature fires, times the connection."""
    fires = (z1 > 0).float()
    counts = fires.sum(0).clamp_min(1.0)
    return (z0.T @ fires) / counts * conn


def attributions_loop(z0: torch.Tensor, z1: torch.Tensor, conn: torch.Tensor, up: list[int], down: list[int]) -> torch.Tensor:
    """The same for some features, position by position and feature by feature (the reference the
    batched version is checked and benchmarked against)."""
    out = torch.zeros(len(up), len(down))
    for b, j in enumerate(down):
        rows = [n for n in range(len(z1)) if z1[n, j] > 0]
        for a, i in enumerate(up):
            total = 0.0
            for n in rows:
                total += float(z0[n, i]) * float(conn[i, j])
            out[a, b] = total / max(len(rows), 1)
    return out


@torch.no_grad()
def codes_by_bucket(model, store, indices, transcoders: dict[int, object], batch_size: int = 256):
    """{layer: [11, F] mean code per Elo bucket (max over tokens per position)} and {layer: codes at
    the data's own buckets [N, 8, F]} for the given positions."""
    sites = [block_hook(l, "hook_mlp_in") for l in transcoders]
    means = {l: torch.zeros(NUM_BUCKETS, t.cfg.dim) for l, t in transcoders.items()}
    for k in range(NUM_BUCKETS):
        for batch in activation_batches(model, store, indices, sites, batch_size, elo=k, token_pooling="none"):
            for l, t in transcoders.items():
                z = t.encode(batch[block_hook(l, "hook_mlp_in")])
                means[l][k] += z.view(-1, 8, z.shape[-1]).amax(1).sum(0)
    for l in means:
        means[l] /= len(indices)
    tokens = {l: [] for l in transcoders}
    for batch in activation_batches(model, store, indices, sites, batch_size, elo="data", token_pooling="none"):
        for l, t in transcoders.items():
            tokens[l].append(t.encode(batch[block_hook(l, "hook_mlp_in")]))
    return means, {l: torch.cat(v) for l, v in tokens.items()}


def skill_relevance(means: torch.Tensor, tuned: torch.Tensor | None = None) -> torch.Tensor:
    """[F] how much a feature's mean activation depends on the skill level (spread over buckets), or,
    with a fine-tuned model's means, how much fine-tuning changed it (summed over buckets)."""
    if tuned is not None:
        return (tuned - means).abs().sum(0)
    return means.max(0).values - means.min(0).values


def top_indices(scores: torch.Tensor, n: int) -> list[int]:
    return torch.argsort(scores, descending=True)[:n].tolist()


def circuit_edges(attr: torch.Tensor, up: list[int], down: list[int], per_node: int = 3) -> list[tuple[int, int, float]]:
    """The strongest |attribution| edges into each downstream feature: (upstream, downstream, value)."""
    edges = []
    for j in down:
        col = attr[up, j]
        for a in torch.argsort(col.abs(), descending=True)[:per_node].tolist():
            edges.append((up[a], j, float(col[a])))
    return edges


def plot_circuit(edges, path, title: str):
    """Two columns of nodes (layer-0 left, layer-1 right) joined by edges whose width is |attribution|."""
    from pathlib import Path

    from ..reporting.plots import pyplot

    plt = pyplot()

    ups = sorted({e[0] for e in edges})
    downs = sorted({e[1] for e in edges})
    y_up = {f: i / max(len(ups) - 1, 1) for i, f in enumerate(ups)}
    y_down = {f: i / max(len(downs) - 1, 1) for i, f in enumerate(downs)}
    big = max((abs(e[2]) for e in edges), default=1.0) or 1.0
    fig, ax = plt.subplots(figsize=(6, 0.35 * max(len(ups), len(downs)) + 1.5))
    for i, j, v in edges:
        ax.plot([0, 1], [y_up[i], y_down[j]], color="tab:red" if v > 0 else "tab:blue", lw=0.5 + 4 * abs(v) / big, alpha=0.7)
    for f, y in y_up.items():
        ax.text(-0.02, y, f"L0 #{f}", ha="right", va="center", fontsize=7)
    for f, y in y_down.items():
        ax.text(1.02, y, f"L1 #{f}", ha="left", va="center", fontsize=7)
    ax.set_xlim(-0.3, 1.3)
    ax.axis("off")
    ax.set_title(title + "\n(red: excites, blue: inhibits; width: |attribution|)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rng_positions(store, split: str, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(store.split_indices(split))[:n])
