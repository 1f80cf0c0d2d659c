"""On-disk caches of model and dictionary activations, written and read in shards.

A cache is a folder: `manifest.json`, and per shard `shard_<i>.safetensors` holding, for each row
(a position conditioned on one Elo bucket), the activations of each site (`<site>`, float16 or
float32), each dictionary's codes in CSR form (`<site>/<dict>.indptr|indices|values`: SAE codes are
sparse, so a 16k-feature dictionary costs its L0, not 16k numbers, per row), the model's top move and
its probability, the win probability, the Elo buckets and the store index; `shard_<i>.fens` holds the
FENs. Shards are written atomically and a rerun skips the ones already there, so an interrupted run
resumes; readers stream shard by shard, so a cache larger than memory works.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..model.activations import pool, position_codes
from ..errors import MaiaAdaptError
from ..io import atomic_write_json, atomic_write_text, load_safetensors, save_safetensors
from ..model.inference import masked_probs


def _csr(z: torch.Tensor) -> dict[str, torch.Tensor]:
    nz = z != 0
    indptr = torch.zeros(len(z) + 1, dtype=torch.int64)
    indptr[1:] = nz.sum(1).cumsum(0)
    idx = nz.nonzero()
    return {"indptr": indptr, "indices": idx[:, 1].to(torch.int32), "values": z[nz].float()}


def _dense(indptr, indices, values, dim: int) -> torch.Tensor:
    rows = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr[1:] - indptr[:-1])
    out = torch.zeros(len(indptr) - 1, dim)
    out[rows, indices.long()] = values
    return out


@torch.no_grad()
def write_activation_cache(
    out_dir,
    model,
    store,
    indices: np.ndarray,
    sites: list[str],
    elo_buckets: list,
    dictionaries: dict[str, object] | None = None,
    shard_positions: int = 4096,
    batch_size: int = 256,
    dtype: str = "float16",
    token_pooling: str = "mean",
) -> Path:
    """Cache activations at `sites` (and codes of `dictionaries` {name: SAE}) for every position in
    `indices` under every Elo bucket in `elo_buckets` (a bucket 0..10, or 'data' for the players' own)."""
    from ..model.skill import as_skill_model

    model = as_skill_model(model)
    out = Path(out_dir)
    dictionaries = dictionaries or {}
    for s in sites:
        model.check_hook_name(s)
    for name, sae in dictionaries.items():
        if sae.cfg.site not in sites:
            raise MaiaAdaptError(f"dictionary '{name}' reads {sae.cfg.site}, which is not among the cached sites {sites}")
    torch_dtype = {"float16": torch.float16, "float32": torch.float32}.get(dtype)
    if torch_dtype is None:
        raise MaiaAdaptError(f"activations.dtype '{dtype}': expected float16 or float32")
    rows = [(int(i), e) for e in elo_buckets for i in indices]
    shards = [rows[s : s + shard_positions] for s in range(0, len(rows), shard_positions)]
    manifest = {"sites": sites, "dictionaries": {n: {"site": d.cfg.site, "dim": d.cfg.dim} for n, d in dictionaries.items()},
                "elo_buckets": [str(e) for e in elo_buckets], "token_pooling": token_pooling, "dtype": dtype,
                "rows": len(rows), "shards": [f"shard_{i:05d}" for i in range(len(shards))],
                "shard_rows": [len(s) for s in shards]}
    atomic_write_json(out / "manifest.json", manifest)
    bar = tqdm(total=len(rows), desc="activations", unit=" rows", dynamic_ncols=True)
    for i, shard in enumerate(shards):
        path = out / f"shard_{i:05d}.safetensors"
        if path.is_file() and (out / f"shard_{i:05d}.fens").is_file():
            bar.update(len(shard))  # written by an earlier, interrupted run
            continue
        cols: dict[str, list[torch.Tensor]] = {}
        fens: list[str] = []
        for s in range(0, len(shard), batch_size):
            part = shard[s : s + batch_size]
            idx = np.array([p for p, _ in part])
            order = np.argsort(idx, kind="stable")  # the store reads sorted indices fastest
            batch = model.inputs(store, idx[order])
            inv = torch.from_numpy(np.argsort(order))
            b = {k: v[inv] for k, v in batch.items()}
            es = torch.tensor([b["elo_self"][j] if e == "data" else int(e) for j, (_, e) in enumerate(part)])
            eo = torch.tensor([b["elo_oppo"][j] if e == "data" else int(e) for j, (_, e) in enumerate(part)])
            logits, value, cache = model.policy_value_with_cache(b, es, eo, sites)
            probs = masked_probs(logits.cpu(), b["legal"])
            top_p, top_m = probs.max(-1)
            add = {"pred.move": top_m.to(torch.int32), "pred.prob": top_p, "pred.value": value.float().cpu(),
                   "elo_self": es.to(torch.int8), "elo_oppo": eo.to(torch.int8), "index": torch.from_numpy(idx)}
            for site in sites:
                a = pool(model.site_tokens(site, cache[site]), token_pooling).float().cpu()  # the dictionaries are on the CPU
                # per-token activations stay [rows, tokens, features]; a dictionary's code for a
                # position is then its largest over the tokens (as stage=threats scores it)
                add[site] = (a.view(len(part), -1, a.shape[-1]) if token_pooling == "none" else a).to(torch_dtype)
                for name, sae in dictionaries.items():
                    if sae.cfg.site == site:
                        add[f"{site}/{name}.codes"] = position_codes(sae, a, len(part))
            for k, v in add.items():
                cols.setdefault(k, []).append(v)
            fens += store.fens(idx)
            bar.update(len(part))
        tensors = {}
        for k, parts in cols.items():
            v = torch.cat(parts)
            if k.endswith(".codes"):
                for part_name, t in _csr(v).items():
                    tensors[f"{k[:-6]}.{part_name}"] = t
            else:
                tensors[k] = v
        atomic_write_text(out / f"shard_{i:05d}.fens", "\n".join(fens) + "\n")
        save_safetensors(tensors, path)
    bar.close()
    return out


@dataclass
class ActivationCache:
    """Reads a cache written by write_activation_cache, shard by shard."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)
        if not (self.path / "manifest.json").is_file():
            raise MaiaAdaptError(f"{self.path}: not an activation cache (no manifest.json; run stage=activations)")
        self.manifest = json.loads((self.path / "manifest.json").read_text())

    def __len__(self) -> int:
        return self.manifest["rows"]

    @property
    def sites(self) -> list[str]:
        return self.manifest["sites"]

    def shards(self) -> Iterator[dict[str, torch.Tensor]]:
        """Each shard's tensors, with every dictionary's codes made dense as `<site>/<dict>`."""
        for name in self.manifest["shards"]:
            tensors, _ = load_safetensors(self.path / f"{name}.safetensors")
            for d, info in self.manifest["dictionaries"].items():
                key = f"{info['site']}/{d}"
                tensors[key] = _dense(tensors.pop(f"{key}.indptr"), tensors.pop(f"{key}.indices"),
                                      tensors.pop(f"{key}.values"), info["dim"])
            yield tensors

    def column(self, key: str) -> torch.Tensor:
        """One column over all shards (site activations, `<site>/<dict>` codes, `pred.move`, ...)."""
        parts = []
        for shard in self.shards():
            if key not in shard:
                raise MaiaAdaptError(f"{self.path}: no column '{key}' (columns: {', '.join(sorted(shard))})")
            parts.append(shard[key])
        return torch.cat(parts)

    def fens(self) -> list[str]:
        out = []
        for name in self.manifest["shards"]:
            out += (self.path / f"{name}.fens").read_text().split("\n")[:-1]
        return out
