"""Streams of activations at named hook sites of a SkillModel (Maia-2 or the Maia-1 family), for
dictionaries, probes and caches.

A site's activation is reshaped to [batch, tokens, features] (`SkillModel.site_tokens`: Maia-2's 8
tokens with attention heads concatenated, 16 x 64 -> 1024, as in the study; a Maia-1 conv map
[B, C, 8, 8] as 64 square tokens of C channels) and then pooled: `mean` over the tokens gives one
vector per position (the study's choice; for Maia-1 the mean over squares, C = 64 features),
`none` makes every token a sample.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..runtime import distributed
from ..encoding import NUM_BUCKETS
from ..errors import MaiaAdaptError
from ..io import load_safetensors, save_safetensors

def pool(x: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, ...] -> [B, F] (mean) or [B*T, F] (none); 2-D inputs (hook_final) pass through."""
    if x.dim() == 2:
        return x
    x = x.flatten(2)
    if pooling == "mean":
        return x.mean(dim=1)
    if pooling == "none":
        return x.flatten(0, 1)
    raise MaiaAdaptError(f"token_pooling '{pooling}': expected 'mean' or 'none'")


def elo_buckets_for(batch: dict, elo, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Elo conditioning: 'data' (the players' own buckets), 'random' (uniform per position), or a bucket."""
    n = len(batch["elo_self"])
    if elo == "data":
        return batch["elo_self"], batch["elo_oppo"]
    if elo == "random":
        b = torch.from_numpy(rng.integers(0, NUM_BUCKETS, n)).long()
        return b, b.clone()
    b = int(elo)
    if not 0 <= b < NUM_BUCKETS:
        raise MaiaAdaptError(f"elo bucket {b} out of range: expected 0..{NUM_BUCKETS - 1}, 'data' or 'random'")
    full = torch.full((n,), b, dtype=torch.long)
    return full, full.clone()


def _numbered_batches(model, store, indices, sites, batch_size=256, elo="data", token_pooling="mean", seed=0,
                      device="cpu", shard: bool = False) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(batch number, {site: [n, features]}); with shard, only this rank's batches of a DDP run.
    Random Elo draws depend on (seed, batch number) alone, so sharding does not change them."""
    from .skill import as_skill_model

    model = as_skill_model(model)
    for s in sites:
        model.check_hook_name(s)
    rank, world = (distributed.rank(), distributed.world_size()) if shard else (0, 1)
    with torch.no_grad():
        for j, start in enumerate(range(0, len(indices), batch_size)):
            if j % world != rank:
                continue
            batch = model.inputs(store, np.asarray(indices[start : start + batch_size]))
            es, eo = elo_buckets_for(batch, elo, np.random.default_rng([seed, j]))
            _, cache = model.run_with_cache(batch, es.to(device), eo.to(device), names=sites)
            yield j, {s: pool(model.site_tokens(s, cache[s]), token_pooling).float().cpu() for s in sites}


def activation_batches(
    model,
    store,
    indices: np.ndarray,
    sites: list[str],
    batch_size: int = 256,
    elo="data",
    token_pooling: str = "mean",
    seed: int = 0,
    device="cpu",
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield {site: [n, features] float32} for the positions `indices` of a position store, in order."""
    for _, acts in _numbered_batches(model, store, indices, sites, batch_size, elo, token_pooling, seed, device):
        yield acts


def collect_activations(model, store, indices, sites: list[str], shard: bool = False, **kw) -> dict[str, torch.Tensor]:
    """{site: all rows of activation_batches(...) concatenated}, from one pass of the model.

    With shard=True in a DDP run, each rank runs the model on its share of the batches and every rank
    receives all the rows (the same tensors as one process would compute)."""
    local = dict(_numbered_batches(model, store, indices, sites, shard=shard, **kw))
    parts = distributed.gather_in_order(local) if shard else list(local.values())  # batches come in order
    return {s: torch.cat([p[s] for p in parts]) for s in sites}


class ActivationChunks:
    """Training data for dictionaries at `sites`: chunk(r) -> {site: [rows, d]} on `device`.

    With `cache_positions`, the activations of that many train positions are collected once and each
    chunk samples `chunk_positions` positions' worth of rows from them; without, each chunk is a fresh
    forward pass over `chunk_positions` train positions. A chunk is a function of (seed, r) alone, so a
    resumed run sees the same batches. Under torchrun each rank runs the model on its share."""

    def __init__(self, model, store, train_idx, sites, *, chunk_positions: int, cache_positions: int | None, seed: int,
                 elo="data", token_pooling: str = "mean", device="cpu", batch_size: int = 512, verbose: bool = True,
                 shared: Path | None = None):
        self.model, self.store, self.train_idx, self.sites = model, store, np.asarray(train_idx), list(sites)
        self.chunk_positions, self.seed, self.device = int(chunk_positions), seed, device
        self.kw = dict(batch_size=batch_size, elo=elo, token_pooling=token_pooling, device=device)
        self.cache, self.per_position, self.cache_idx = None, 1, None
        if cache_positions:
            idx = np.sort(np.random.default_rng([seed, 99]).permutation(self.train_idx)[:cache_positions])
            self.cache_idx = idx  # the positions every chunk is drawn from
            self.cache = self._shared(shared, idx, seed, verbose)
            self.per_position = len(next(iter(self.cache.values()))) // max(len(idx), 1)

    def _shared(self, path: Path | None, idx, seed, verbose: bool) -> dict[str, torch.Tensor]:
        """The cached positions' activations, read from `path` when an earlier run (a sweep's first job)
        wrote them there, else computed (and written to `path`, atomically): the jobs of a sweep that
        differ only in the dictionary share one forward pass. The caller names the file by everything
        the activations depend on."""
        if path is not None and Path(path).is_file():
            tensors, meta = load_safetensors(path)
            if meta.get("positions") == str(len(idx)) and set(tensors) == set(self.sites):
                if verbose:
                    print(f"activations of {len(idx):,} train positions read from {path}")
                return {s: v.to(self.device) for s, v in tensors.items()}
        if verbose:
            print(f"caching activations of {len(idx):,} train positions at {len(self.sites)} site(s)")
        acts = self._forward(idx, seed)
        if path is not None:
            save_safetensors({s: v.cpu().contiguous() for s, v in acts.items()}, path, {"positions": str(len(idx))})
        return acts

    def _forward(self, idx, seed) -> dict[str, torch.Tensor]:
        acts = collect_activations(self.model, self.store, idx, self.sites, seed=seed, shard=True, **self.kw)
        return {s: v.to(self.device) for s, v in acts.items()}  # the chunk (or cache) lives where training runs

    def __call__(self, r: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, r])
        if self.cache is not None:
            n = len(next(iter(self.cache.values())))
            rows = torch.from_numpy(rng.choice(n, size=min(self.chunk_positions * self.per_position, n), replace=False))
            return {s: v[rows] for s, v in self.cache.items()}
        idx = np.sort(rng.choice(self.train_idx, size=min(self.chunk_positions, len(self.train_idx)), replace=False))
        return self._forward(idx, self.seed + r)


@torch.no_grad()
def position_codes(sae, acts: torch.Tensor, n_positions: int, chunk: int = 4096) -> torch.Tensor:
    """Dictionary codes [n_positions, F] of activations [n_positions, d] (mean-pooled) or
    [n_positions * tokens, d] (per token: a feature's value for a position is its largest over tokens)."""
    z = torch.cat([sae.encode(a) for a in acts.split(chunk)])
    if len(z) != n_positions:
        z = z.view(n_positions, -1, z.shape[-1]).amax(1)
    return z
