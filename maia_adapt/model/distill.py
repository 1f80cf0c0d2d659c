"""Distillation of the Maia-1 family into a Maia-2 (`train.teacher=maia1`).

A Maia-2 trained on a few million positions learns the average player and ignores its Elo input.
The nine Maia-1 networks each learned one rating band from far more games, so they disagree where
players of different strength disagree. Every training position is shown to the student at
`train.teacher_buckets` conditioning buckets drawn at random, each supervised by the move
distribution of that bucket's network (KL divergence over the teacher's `train.teacher_top_k` most
likely moves, renormalised), on top of the usual human-move, side-info and value losses at the
player's own bucket. The student's CNN trunk does not see the Elo, so it runs once per position and
only the transformer runs at every conditioning (`Maia2.tokens` / `Maia2.from_tokens`).

Two ways to feed the teachers, chosen by `train.teacher_cache_positions`:
- null (a GPU): the teachers run on the fly on every batch. Their lc0 input planes, with the game's
  history, are built once per store (python-chess replays every game), packed to 896 bytes a
  position and cached beside the store.
- N (a CPU): the nine networks' top moves are computed once for N random training positions and
  cached; training then draws its batches from those positions. On two cores nine teacher passes
  cost more than the student's step, so computing them once per position instead of once per visit
  is what makes several epochs affordable.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..encoding import NUM_BUCKETS
from ..errors import DataError
from ..io import load_safetensors, save_safetensors
from .skill import lc0_store_planes, maia1_rating_for_bucket
from .training import maia2_objective


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
    """The Maia-1 family as a teacher: each network's most likely moves in Maia-2's vocabulary."""

    def __init__(self, nets: dict, device, bf16: bool = True, top_k: int = 32, cpu_bf16: bool = False,
                 amplify: float = 0.0):
        self.ratings = sorted(int(r) for r in nets)
        missing = sorted({maia1_rating_for_bucket(b) for b in range(NUM_BUCKETS)} - set(self.ratings))
        if missing:
            raise DataError(f"the Maia-1 teacher needs networks {', '.join(f'maia-{r}' for r in missing)} as well")
        self.device = torch.device(device)
        self.amp = self.device.type == "cuda" and bf16
        # on a CPU the networks hold bfloat16 weights instead of autocasting (faster there; the top
        # move agrees with float32 on about 98% of positions, benchmarks/RESULTS.md)
        self.dtype = torch.bfloat16 if self.device.type == "cpu" and cpu_bf16 else torch.float32
        self.nets = [nets[r].to(device, self.dtype).eval().requires_grad_(False) for r in self.ratings]
        # bucket -> index into self.nets
        self.net_of_bucket = torch.tensor([self.ratings.index(maia1_rating_for_bucket(b)) for b in range(NUM_BUCKETS)])
        self.top_k = top_k
        self.amplify = amplify

    @torch.no_grad()
    def top_moves(self, planes: torch.Tensor, legal: torch.Tensor, nets=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(moves [B, J, k] Maia-2 move indices, probabilities [B, J, k] renormalised over them) of the
        networks `nets` (indices into self.nets; default all) for float lc0 planes [B, 112, 8, 8]."""
        from ..encoding.lc0 import lc0_policy_to_maia2

        planes, legal = planes.to(self.device, self.dtype), legal.to(self.device)
        k = min(self.top_k, legal.shape[-1])
        moves, probs = [], []
        for j in (range(len(self.nets)) if nets is None else nets):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                logits = self.nets[j](planes)[0]
            logits = lc0_policy_to_maia2(logits.float(), planes).masked_fill(~legal, float("-inf"))
            p, m = logits.softmax(-1).topk(k, dim=-1)
            moves.append(m)
            probs.append(p / p.sum(-1, keepdim=True))
        return torch.stack(moves, 1), torch.stack(probs, 1)

    def targets(self, batch: dict, buckets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher (moves, probabilities) [B, K, k] at conditioning buckets [B, K]."""
        which = self.net_of_bucket[buckets.cpu()]
        from ..encoding.lc0 import unpack_lc0_planes

        if "teacher_moves" in batch or self.amplify:  # every network's targets at every row
            if "teacher_moves" in batch:  # cached for these positions (train.teacher_cache_positions)
                moves, probs = batch["teacher_moves"], batch["teacher_probs"].float()
            else:
                moves, probs = self.top_moves(unpack_lc0_planes(batch["lc0"]), batch["legal"])
            if self.amplify:
                probs = amplify_targets(moves, probs, self.amplify)
            rows, which = torch.arange(buckets.shape[0], device=moves.device)[:, None], which.to(moves.device)
            return moves[rows, which].long(), probs[rows, which]

        # each network runs on the rows that drew one of its buckets only: with 4 draws of 11 buckets a
        # row needs about 3.3 of the 9 networks
        planes, legal = unpack_lc0_planes(batch["lc0"]), batch["legal"]
        k, dev = min(self.top_k, legal.shape[-1]), planes.device
        moves = torch.zeros((*buckets.shape, k), dtype=torch.long, device=dev)
        probs = torch.zeros((*buckets.shape, k), device=dev)
        for j in which.unique().tolist():
            need = (which == j).to(dev)
            r = need.any(1).nonzero().squeeze(1)
            m, p = self.top_moves(planes[r], legal[r], [j])
            i, kk = need[r].nonzero(as_tuple=True)
            moves[r[i], kk], probs[r[i], kk] = m[i, 0].to(dev), p[i, 0].float().to(dev)
        return moves, probs


def amplify_targets(moves: torch.Tensor, probs: torch.Tensor, beta: float, num_moves: int = 1880) -> torch.Tensor:
    """Every network's top-k probabilities [B, J, k] raised to p_j^(1 + beta) / pbar^beta and
    renormalised, pbar being the J networks' mean probability of the same move (a move outside a
    network's top k counts as 0 there). Where the bands agree the target is unchanged; where one band
    prefers a move more than the others do, the target prefers it more still. A student that learns
    the bands' shared moves far better than their differences is pushed toward the differences."""
    b, j, k = moves.shape
    idx = moves.long().reshape(b, 1, j * k)
    dense = torch.zeros(b, j, num_moves, device=probs.device).scatter_(2, moves.long(), probs.float())
    pbar = dense.mean(1, keepdim=True).gather(2, idx).reshape(b, j, k)
    p = probs.float()
    out = torch.where(p > 0, p.clamp_min(1e-12) ** (1 + beta) / pbar.clamp_min(1e-12) ** beta, torch.zeros_like(p))
    return out / out.sum(-1, keepdim=True)


@torch.no_grad()
def target_accuracy(teacher: Maia1Teacher, store, indices, betas=(0.0,), history: bool = True,
                    batch_size: int = 512) -> dict[float, np.ndarray]:
    """What a student that matched its distillation targets exactly would score: {beta: [J]} the top-1
    accuracy on the played move of each network's target (its top-k, amplified by beta as
    `train.teacher_amplify` does) over the store rows `indices`. The skill gaps of the targets follow
    from rows of the end buckets (e.g. maia-1100's minus maia-1900's on players < 1100): an upper
    reference for the gaps distillation at that beta can teach."""
    from .skill import lc0_store_planes

    idx = np.asarray(indices, dtype=np.int64)
    hits = {float(b): np.zeros(len(teacher.nets)) for b in betas}
    for s in range(0, len(idx), batch_size):
        rows = idx[s : s + batch_size]
        batch = store.batch(rows)
        moves, probs = teacher.top_moves(lc0_store_planes(store, rows, history), batch["legal"])
        played = batch["move"].to(moves.device)[:, None]
        for b in hits:
            p = amplify_targets(moves, probs, b) if b else probs
            top = moves.gather(2, p.argmax(-1, keepdim=True)).squeeze(2)  # [B, J]
            hits[b] += (top == played).sum(0).cpu().numpy()
    return {b: h / max(len(idx), 1) for b, h in hits.items()}


def sparse_kl(logits: torch.Tensor, legal: torch.Tensor, moves: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per row [N], the student's logits [N, 1880] softmaxed over the legal
    moves, the teacher given as its top moves [N, k] with probabilities [N, k]."""
    logq = logits.float().masked_fill(~legal, float("-inf")).log_softmax(-1).gather(-1, moves)
    # moves past the legal ones (positions with fewer than k legal moves) have probability 0 and
    # contribute nothing; 0 * log 0 = 0
    return torch.where(probs > 0, probs * (probs.clamp_min(1e-30).log() - logq), torch.zeros_like(probs)).sum(-1)


def distill_losses(model, teacher: Maia1Teacher, batch: dict, w, k: int, coefficient: float,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """maia2_losses at the players' own buckets plus `coefficient` x the mean KL(teacher || student)
    at k random conditioning buckets per position (the opponent's bucket stays the real one, as
    stage=evaluate conditions)."""
    tokens = model.tokens(batch["boards"])
    out = maia2_objective(model.from_tokens(tokens, batch["elo_self"], batch["elo_oppo"]), batch, w)
    n = tokens.size(0)
    buckets = torch.randint(0, NUM_BUCKETS, (n, k), generator=generator)
    moves, probs = teacher.targets(batch, buckets)
    moves, probs = moves.to(tokens.device).flatten(0, 1), probs.to(tokens.device).flatten(0, 1)
    logits = model.from_tokens(tokens.repeat_interleave(k, 0), buckets.flatten().to(tokens.device),
                               batch["elo_oppo"].repeat_interleave(k, 0))[0]
    out["distill_loss"] = sparse_kl(logits, batch["legal"].repeat_interleave(k, 0), moves, probs).mean()
    out["loss"] = out["loss"] + coefficient * out["distill_loss"]
    return out


def cache_teacher_targets(store, teacher: Maia1Teacher, rows: np.ndarray, history: bool = True,
                          batch_size: int = 512) -> dict[str, torch.Tensor]:
    """The nine networks' top moves for store `rows`, computed once and kept beside the store:
    {"rows": [N], "moves": [N, 9, k] int16, "probs": [N, 9, k] float16}."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    key = hashlib.sha256(rows.tobytes() + f"{history}:{teacher.top_k}:{teacher.ratings}".encode()).hexdigest()[:16]
    path = Path(store.path) / f"teacher_targets_{key}.safetensors"
    if path.is_file():
        tensors, _ = load_safetensors(path)
        return tensors
    moves = torch.zeros((len(rows), len(teacher.nets), teacher.top_k), dtype=torch.int16)
    probs = torch.zeros((len(rows), len(teacher.nets), teacher.top_k), dtype=torch.float16)
    for s in tqdm(range(0, len(rows), batch_size), desc="teacher targets", unit=" batch", dynamic_ncols=True):
        idx = rows[s:s + batch_size]
        m, p = teacher.top_moves(lc0_store_planes(store, idx, history), store.batch(idx)["legal"])
        moves[s:s + len(idx)], probs[s:s + len(idx)] = m.cpu().to(torch.int16), p.cpu().half()
    tensors = {"rows": torch.from_numpy(rows), "moves": moves, "probs": probs}
    save_safetensors(tensors, path, {"history": str(history), "ratings": ",".join(map(str, teacher.ratings))})
    return tensors


def prepare_teacher(models_dir, store, train_idx: np.ndarray, cfg, device, workers: int = 2, seed: int = 0):
    """(Maia1Teacher, per-row extras for the batches, training rows) for train_model, from a TrainConfig:
    on the fly, the extras are the packed lc0 planes of every store row; cached, the teachers' targets
    of cfg.teacher_cache_positions random training rows, which become the training rows."""
    from .maia1 import load_maia1_family

    teacher = Maia1Teacher(load_maia1_family(models_dir), device, cfg.bf16, cfg.teacher_top_k,
                           getattr(cfg, "cpu_bf16", False), getattr(cfg, "teacher_amplify", 0.0))
    if cfg.teacher_cache_positions is None:
        return teacher, {"lc0": teacher_planes(store, cfg.teacher_history, workers)}, train_idx
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.permutation(train_idx)[: cfg.teacher_cache_positions])
    t = cache_teacher_targets(store, teacher, rows, cfg.teacher_history)
    return teacher, {"teacher_moves": RowLookup(t["rows"].numpy(), t["moves"].numpy()),
                     "teacher_probs": RowLookup(t["rows"].numpy(), t["probs"].numpy())}, t["rows"].numpy()


class RowLookup:
    """values[i] belongs to store row rows[i] (sorted): indexing by store rows, like a store column."""

    def __init__(self, rows: np.ndarray, values: np.ndarray):
        self.rows, self.values = rows, values

    def __getitem__(self, idx):
        return self.values[np.searchsorted(self.rows, idx)]
