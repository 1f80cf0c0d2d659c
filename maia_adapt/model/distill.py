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
from .losses import LossWeights, maia2_objective


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
                 amplify: float = 0.0, smooth: bool = False):
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
        self.smooth = smooth  # the targets: each network's own (amplified), or a line in rating (smooth_targets)

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

        if "teacher_moves" in batch or self.amplify or self.smooth:  # every network's targets at every row
            if "teacher_moves" in batch:  # cached for these positions (train.teacher_cache_positions)
                moves, probs = batch["teacher_moves"], batch["teacher_probs"].float()
            else:
                moves, probs = self.top_moves(unpack_lc0_planes(batch["lc0"]), batch["legal"])
            if self.smooth:
                moves, probs = smooth_targets(moves.long(), probs, self.ratings, self.amplify)
            elif self.amplify:
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


def dense_targets(moves: torch.Tensor, probs: torch.Tensor, num_moves: int = 1880) -> torch.Tensor:
    """Top-k targets (moves, probs) [..., J, k] as probabilities over the whole vocabulary [..., J, 1880]."""
    shape = (*moves.shape[:-1], num_moves)
    return torch.zeros(shape, device=probs.device).scatter_(-1, moves.long(), probs.float())


def amplify_targets(moves: torch.Tensor, probs: torch.Tensor, beta: float, num_moves: int = 1880) -> torch.Tensor:
    """Every network's top-k probabilities [B, J, k] raised to p_j^(1 + beta) / pbar^beta and
    renormalised, pbar being the J networks' mean probability of the same move (a move outside a
    network's top k counts as 0 there). Where the bands agree the target is unchanged; where one band
    prefers a move more than the others do, the target prefers it more still. A student that learns
    the bands' shared moves far better than their differences is pushed toward the differences."""
    b, j, k = moves.shape
    idx = moves.long().reshape(b, 1, j * k)
    dense = dense_targets(moves, probs, num_moves)
    pbar = dense.mean(1, keepdim=True).gather(2, idx).reshape(b, j, k)
    p = probs.float()
    out = torch.where(p > 0, p.clamp_min(1e-12) ** (1 + beta) / pbar.clamp_min(1e-12) ** beta, torch.zeros_like(p))
    return out / out.sum(-1, keepdim=True)


def smooth_targets(moves: torch.Tensor, probs: torch.Tensor, ratings, gain: float = 0.0,
                   num_moves: int = 1880) -> tuple[torch.Tensor, torch.Tensor]:
    """The nine networks' top-k targets [B, J, k] replaced by a straight line in rating: per position
    and move, log p_j = a + s * x_j fitted by least squares over the J networks (x_j their rating,
    standardised), the slope s exaggerated by (1 + gain), evaluated at each network's rating and
    renormalised over the moves any network ranks (its top k again, as (moves, probs)).

    Separately trained networks differ in ways that have nothing to do with skill: the variance of
    log p_a - log p_b between two of them grows with their rating distance d as about 0.24 + 0.009 d^2
    (d in hundreds of points, experiments/skill_model/README.md), so neighbouring networks differ
    mostly by their trainings' noise, while maia-1100 and maia-1900 differ mostly by skill. The line
    keeps what changes steadily with rating and averages the noise away (the intercept is the nine
    networks' geometric mean). A move outside a network's top k counts at half its k-th probability."""
    b, j, k = moves.shape
    dense = dense_targets(moves, probs, num_moves)
    support = (dense > 0).any(1, keepdim=True)  # [B, 1, V]
    floor = torch.where(probs > 0, probs.float(), torch.ones_like(probs, dtype=torch.float)).amin(-1, keepdim=True) / 2
    logp = torch.where(dense > 0, dense.clamp_min(1e-30).log(), floor.log())  # [B, J, V]
    x = torch.as_tensor(ratings, dtype=torch.float, device=probs.device)
    x = ((x - x.mean()) / x.std(unbiased=False)).view(1, j, 1)
    a, slope = logp.mean(1, keepdim=True), (x * logp).mean(1, keepdim=True)  # sum x^2 / J = 1
    logits = (a + (1 + gain) * slope * x).masked_fill(~support, float("-inf"))
    p, m = logits.softmax(-1).topk(k, dim=-1)
    return m, p / p.sum(-1, keepdim=True)


@torch.no_grad()
def target_accuracy(teacher: Maia1Teacher, store, indices, betas=(0.0,), history: bool = True,
                    batch_size: int = 512, smooth: bool = False) -> dict[float, np.ndarray]:
    """What a student that matched its distillation targets exactly would score: {beta: [J]} the top-1
    accuracy on the played move of each network's target (its top-k, amplified by beta as
    `train.teacher_amplify` does) over the store rows `indices`. The skill gaps of the targets follow
    from rows of the end buckets (e.g. maia-1100's minus maia-1900's on players < 1100): an upper
    reference for the gaps distillation at that beta can teach. smooth: the targets of
    `smooth_targets` with gain beta instead."""
    from .skill import lc0_store_planes

    idx = np.asarray(indices, dtype=np.int64)
    hits = {float(b): np.zeros(len(teacher.nets)) for b in betas}
    for s in range(0, len(idx), batch_size):
        rows = idx[s : s + batch_size]
        batch = store.batch(rows)
        moves, probs = teacher.top_moves(lc0_store_planes(store, rows, history), batch["legal"])
        played = batch["move"].to(moves.device)[:, None]
        for b in hits:
            m, p = (smooth_targets(moves, probs, teacher.ratings, b) if smooth
                    else (moves, amplify_targets(moves, probs, b) if b else probs))
            top = m.gather(2, p.argmax(-1, keepdim=True)).squeeze(2)  # [B, J]
            hits[b] += (top == played).sum(0).cpu().numpy()
    return {b: h / max(len(idx), 1) for b, h in hits.items()}


def sparse_kl(logits: torch.Tensor, legal: torch.Tensor, moves: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per row [N], the student's logits [N, 1880] softmaxed over the legal
    moves, the teacher given as its top moves [N, k] with probabilities [N, k]."""
    logq = logits.float().masked_fill(~legal, float("-inf")).log_softmax(-1).gather(-1, moves)
    # moves past the legal ones (positions with fewer than k legal moves) have probability 0 and
    # contribute nothing; 0 * log 0 = 0
    return torch.where(probs > 0, probs * (probs.clamp_min(1e-30).log() - logq), torch.zeros_like(probs)).sum(-1)


def contrast_loss(logits: torch.Tensor, legal: torch.Tensor, moves: torch.Tensor, probs: torch.Tensor,
                  num_moves: int = 1880) -> torch.Tensor:
    """Per row [N], how far the student's differences between its conditionings miss the targets'.

    logits [N, K, 1880] are the student's at K conditionings of one position, (moves, probs) [N, K, k]
    the targets there. For each pair of neighbouring conditionings (a, a+1) and each move in both
    targets' top k, the student's log q_a - log q_{a+1} is compared with the targets' log p_a - log
    p_{a+1}: the weighted variance of the residual (a constant offset is free, as the normalisers
    differ), weighted by the two targets' mean probability, averaged over the pairs. The student's
    error on what the conditionings share appears in both terms and cancels, so this loss sees only
    the part of the policy the Elo changes, which the KL at each bucket buries under the shared part."""
    n, kk, _ = logits.shape
    logq = logits.float().masked_fill(~legal[:, None], float("-inf")).log_softmax(-1)
    dense = dense_targets(moves, probs, num_moves)
    a, b = slice(0, kk - 1), slice(1, kk)
    m = moves[:, a]  # [N, K-1, k]: the first target's moves of each pair
    pa, pb = dense[:, a].gather(2, m), dense[:, b].gather(2, m)
    both = (pa > 0) & (pb > 0)
    w = torch.where(both, (pa + pb) / 2, torch.zeros_like(pa))
    resid = (logq[:, a].gather(2, m) - logq[:, b].gather(2, m)) - (pa.clamp_min(1e-30).log() - pb.clamp_min(1e-30).log())
    resid = torch.where(both, resid, torch.zeros_like(resid))
    wsum = w.sum(-1).clamp_min(1e-12)
    mean = (w * resid).sum(-1) / wsum
    return ((w * (resid - mean[..., None]) ** 2).sum(-1) / wsum).mean(-1)


def distill_losses(model, teacher: Maia1Teacher, batch: dict, w, k: int, coefficient: float,
                   generator: torch.Generator, contrast: float = 0.0) -> dict[str, torch.Tensor]:
    """maia2_losses at the players' own buckets plus `coefficient` x the mean KL(teacher || student)
    at k random conditioning buckets per position (the opponent's bucket stays the real one, as
    stage=evaluate conditions), plus `contrast` x `contrast_loss` over those k conditionings."""
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
    if contrast and k > 1:
        out["contrast_loss"] = contrast_loss(logits.view(n, k, -1), batch["legal"], moves.view(n, k, -1),
                                             probs.view(n, k, -1)).mean()
        out["loss"] = out["loss"] + contrast * out["contrast_loss"]
    return out


class DistillLoss:
    """train_model's loss with the teachers: distill_losses at a TrainConfig's settings. It runs the
    student module itself, not the trainer's DDP wrapper: distillation is one process (the stage checks)."""

    def __init__(self, model, teacher: Maia1Teacher, train_cfg, seed: int = 0):
        self.model, self.teacher, self.seed = model, teacher, seed
        self.w = LossWeights.of(train_cfg)
        self.k, self.coefficient = train_cfg.teacher_buckets, train_cfg.distill_coefficient
        self.contrast = train_cfg.teacher_contrast

    def __call__(self, step_fn, batch: dict, step: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)  # the buckets depend on the step only
        return distill_losses(self.model, self.teacher, batch, self.w, self.k, self.coefficient, gen, self.contrast)


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

    teacher = Maia1Teacher(load_maia1_family(models_dir), device, cfg.bf16, cfg.teacher_top_k, cfg.cpu_bf16,
                           cfg.teacher_amplify, cfg.teacher_smooth)
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
