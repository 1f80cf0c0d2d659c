"""Distillation of the Maia-1 family into a Maia-2 (`train.teacher=maia1`).

A Maia-2 trained on a few million positions learns the average player and ignores its Elo input.
The nine Maia-1 networks each learned one rating band from far more games, so they disagree where
players of different strength disagree. Every training position is shown to the student at
`train.teacher_buckets` conditioning buckets drawn at random, each supervised by the move
distribution of that bucket's network (KL divergence over the legal moves), on top of the usual
human-move, side-info and value losses at the player's own bucket.

The teachers read lc0's 112 input planes with the game's history. Building them is the slow part
(python-chess replays every game), so they are built once per store, packed to bits (896 bytes a
position) and cached beside the store; the teacher forward passes run on the fly on the training
device, which on a GPU costs less than reading cached teacher outputs would.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..encoding import NUM_BUCKETS
from ..errors import DataError
from .skill import maia1_rating_for_bucket


def _pack_chunk(args):
    from ..encoding.lc0 import lc0_planes_game

    groups, history = args
    return [(rows, lc0_planes_game(fen, moves, ks.tolist(), history=history, pack=True))
            for fen, moves, rows, ks in groups]


def teacher_planes(store, history: bool = True, workers: int = 2) -> np.ndarray:
    """Packed lc0 input planes [len(store), 112, 8] (uint8) of every store row, built once and cached
    in the store's folder (a memory map; written under a temporary name and renamed when complete)."""
    path = Path(store.path) / f"lc0_planes_{'history' if history else 'bare'}.npy"
    if path.is_file():
        planes = np.load(path, mmap_mode="r")
        if planes.shape == (len(store), 112, 8):
            return planes
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(store), 112, 8))
    groups = store.history_by_game(np.arange(len(store)))
    chunks = [(groups[i:i + 64], history) for i in range(0, len(groups), 64)]
    bar = tqdm(total=len(store), desc="lc0 planes", unit=" pos", dynamic_ncols=True)
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for res in (pool.imap(_pack_chunk, chunks) if pool else map(_pack_chunk, chunks)):
            for rows, packed in res:
                out[rows] = packed
                bar.update(len(rows))
    finally:
        if pool:
            pool.close()
            pool.join()
        bar.close()
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


class Maia1Teacher:
    """The Maia-1 family as a teacher: move distributions in Maia-2's vocabulary at any Elo bucket."""

    def __init__(self, nets: dict, device, bf16: bool = True):
        self.ratings = sorted(int(r) for r in nets)
        missing = sorted({maia1_rating_for_bucket(b) for b in range(NUM_BUCKETS)} - set(self.ratings))
        if missing:
            raise DataError(f"the Maia-1 teacher needs networks {', '.join(f'maia-{r}' for r in missing)} as well")
        self.nets = [nets[r].to(device).eval() for r in self.ratings]
        for net in self.nets:
            net.requires_grad_(False)
        # bucket -> index into self.nets
        self.net_of_bucket = torch.tensor([self.ratings.index(maia1_rating_for_bucket(b)) for b in range(NUM_BUCKETS)],
                                          device=device)
        self.device = torch.device(device)
        self.amp = self.device.type == "cuda" and bf16

    @torch.no_grad()
    def probs(self, packed: torch.Tensor, legal: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
        """[B, K, 1880] teacher move probabilities (zero off the legal moves) for packed lc0 planes
        [B, 112, 8], legal masks [B, 1880] and conditioning buckets [B, K]."""
        from ..encoding.lc0 import lc0_policy_to_maia2, unpack_lc0_planes

        planes = unpack_lc0_planes(packed.to(self.device))
        which = self.net_of_bucket[buckets.to(self.device)]  # [B, K]
        out = torch.zeros((*buckets.shape, legal.shape[-1]), device=self.device)
        for j in which.unique().tolist():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.nets[j](planes)[0]
            logits = lc0_policy_to_maia2(logits.float(), planes).masked_fill(~legal, float("-inf"))
            rows, cols = (which == j).nonzero(as_tuple=True)
            out[rows, cols] = logits[rows].softmax(-1)
        return out


def distill_loss(model, teacher: Maia1Teacher, batch: dict, k: int, generator: torch.Generator) -> torch.Tensor:
    """Mean KL(teacher || student) over the legal moves at k random conditioning buckets per position
    (the opponent's bucket stays the real one, as stage=evaluate conditions)."""
    boards, legal = batch["boards"], batch["legal"]
    n = boards.size(0)
    buckets = torch.randint(0, NUM_BUCKETS, (n, k), generator=generator).to(boards.device)
    target = teacher.probs(batch["lc0"], legal, buckets).flatten(0, 1)
    logits = model(boards.repeat_interleave(k, 0), buckets.flatten(), batch["elo_oppo"].repeat_interleave(k, 0))[0]
    legal_k = legal.repeat_interleave(k, 0)
    logq = logits.float().masked_fill(~legal_k, float("-inf")).log_softmax(-1).masked_fill(~legal_k, 0.0)
    # only moves the teacher gives mass contribute (0 log 0 = 0)
    logp = target.clamp_min(1e-30).log()
    return (target * (logp - logq)).sum(-1).mean()


def prepare_teacher(models_dir, store, device, history: bool = True, bf16: bool = True, workers: int = 2):
    """(Maia1Teacher on `device`, packed lc0 planes of every store row) for train_model."""
    from .maia1 import load_maia1_family

    return Maia1Teacher(load_maia1_family(models_dir), device, bf16), teacher_planes(store, history, workers)
