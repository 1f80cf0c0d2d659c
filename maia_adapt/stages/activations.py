"""stage=activations: cache model and dictionary activations of a position set on disk, in shards.

Writes run_dir/activations/ (see maia_adapt.analysis.activation_cache): site activations, SAE codes (sparse),
the model's predictions and the FENs, for every position under every Elo conditioning asked for.
Re-running the same command after an interruption continues the unfinished run's cache.
`model=maia1` caches the Maia-1 networks' sites (bucket b -> its band's network; a conv map is pooled
over its 64 squares, or kept per square with activations.token_pooling=none); `pred.value` is then
lc0's Q (win - loss probability).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..analysis.activation_cache import ActivationCache, write_activation_cache
from ..data.preprocess import open_or_build_store
from ..dictionaries import find_saes, load_sae
from ..errors import ConfigError
from ..runtime.resume import find_resumable, fresh_start, mark_started
from ..checks import POSITIVE_INT, check_section, elo
from ..data.store import SPLITS
from .common import fingerprint, skill_model


@dataclass
class ActivationsConfig:
    """stage=activations: cache model (and dictionary) activations on disk, in shards."""

    device: str = "auto"  # where the model runs: auto (CUDA when there is one) | cpu | cuda | cuda:N
    sites: list[str] = "${sites}"  # the site preset's (site=...); a list here overrides it
    saes: Optional[str] = None  # a stage=sae run or SAE folder: its codes are cached too (its sites added)
    positions: Optional[int] = 20000  # positions of `split`; null: all of them
    split: str = "test"
    elo: list[str] = field(default_factory=lambda: ["data"])  # Elo conditionings: 'data' and/or buckets 0..10
    shard_positions: int = 4096  # rows per shard
    dtype: str = "float16"  # of the site activations (dictionary codes are float32, sparse)
    token_pooling: str = "mean"  # mean | none (keep the 8 tokens)
    batch_size: int = 256


SCHEMA = ActivationsConfig  # cfg.activations
RULES = {"shard_positions": POSITIVE_INT, "elo": elo("data")}
CHOICES = {"token_pooling": ("mean", "none"), "dtype": ("float16", "float32"), "split": SPLITS}


def check(cfg) -> None:
    check_section(cfg, "activations", RULES, CHOICES)


def run(cfg, frame) -> dict:
    run_dir = frame.dir
    ac = cfg.activations
    model = skill_model(cfg, "activations")
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    pool = store.split_indices(ac.split)
    if len(pool) == 0:
        raise ConfigError(f"activations.split '{ac.split}' has no positions in the store")
    idx = np.sort(np.random.default_rng(cfg.seed).permutation(pool)[: ac.positions] if ac.positions else pool)
    saes = {}
    if ac.saes:
        for folder in find_saes(ac.saes):
            saes[folder.name] = load_sae(folder)
    sites = list(dict.fromkeys([*ac.sites, *(s.cfg.site for s in saes.values())]))
    elo = [e if e == "data" else int(e) for e in ac.elo]

    fp = fingerprint(cfg)
    prev = find_resumable(run_dir, fp, lambda d: (d / "activations" / "manifest.json").is_file())
    out = (prev or run_dir) / "activations"
    if prev:
        print(f"continuing the unfinished cache in {out}")
    else:
        fresh_start(run_dir, fp, lambda d: (d / "activations" / "manifest.json").is_file(), True, "activations")
    mark_started(prev or run_dir, fp)
    t = time.time()
    write_activation_cache(out, model, store, idx, sites, elo, saes, shard_positions=ac.shard_positions,
                           batch_size=ac.batch_size, dtype=ac.dtype, token_pooling=ac.token_pooling)
    seconds = time.time() - t
    cache = ActivationCache(out)
    frame.done_dir = prev or run_dir
    size = sum(p.stat().st_size for p in out.iterdir())
    return {"cache": str(out), "rows": len(cache), "positions": int(len(idx)), "sites": sites,
            "dictionaries": list(saes), "shards": len(cache.manifest["shards"]), "megabytes": round(size / 2**20, 1),
            "rows_per_s": round(len(cache) / max(seconds, 1e-9), 1)}
