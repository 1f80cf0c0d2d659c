"""Supervised training of a small Maia-3-architecture network from a position store: the played move
(cross-entropy over the legal moves, in Maia-3's 4352-move vocabulary) and the game's result (win /
draw / loss cross-entropy), each position conditioned on its players' real ratings (the store's
`rating_self` / `rating_oppo`, so the continuous Elo sees every rating, not 11 buckets).

It makes the shipped `maia3_tiny` checkpoint (experiments/maia3_tiny/README.md), which lets the
family run end to end with weights that have learnt something; it is not the published Maia-3
training (no ponder target, no clocks, a few CPU minutes).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from ..encoding.maia3 import maia2_to_maia3
from .maia3 import Maia3
from .maia3_skill import maia3_store_tokens


class TrainingSet:
    """A fixed pool of train positions with their tokens built once (one replay per game) as uint8:
    replaying a batch's games at every step would cost more than the tiny network's own step."""

    def __init__(self, store, positions: int, history: int, seed: int = 0):
        pool = store.split_indices("train")
        pool = pool[np.asarray(store.column("move")[pool]) >= 0]
        self.idx = np.sort(np.random.default_rng(seed).permutation(pool)[:positions])
        self.tokens = maia3_store_tokens(store, self.idx, history).to(torch.uint8)
        b = store.batch(self.idx)
        self.move, self.legal = b["move"], b["legal"]
        self.result = b["value"].round().long() + 1  # -1, 0, 1 -> loss, draw, win
        self.rating = {k: torch.from_numpy(np.asarray(store.column(k)[self.idx]).astype(np.float32))
                       for k in ("rating_self", "rating_oppo")}

    def __len__(self) -> int:
        return len(self.idx)

    def batch(self, rows) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(rows)
        return {"tokens": self.tokens[rows].float(), "move": self.move[rows], "legal": self.legal[rows],
                "result": self.result[rows], **{k: v[rows] for k, v in self.rating.items()}}


def maia3_loss(model: Maia3, batch: dict) -> tuple[torch.Tensor, dict]:
    """(move + result loss, {"move_loss", "result_loss", "top1"}) of a TrainingSet batch."""
    to3 = torch.from_numpy(maia2_to_maia3())
    moves, wdl, _ = model(batch["tokens"], batch["rating_self"], batch["rating_oppo"])
    # legal moves only, read in Maia-2's order: every legal move is in both vocabularies
    logits = moves[:, to3].masked_fill(~batch["legal"], float("-inf"))
    move_loss = F.cross_entropy(logits, batch["move"])
    result_loss = F.cross_entropy(wdl, batch["result"])
    top1 = (logits.argmax(-1) == batch["move"]).float().mean()
    return move_loss + result_loss, {"move_loss": move_loss.item(), "result_loss": result_loss.item(), "top1": top1.item()}


def train_maia3(model: Maia3, data: TrainingSet, steps: int, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
                log_every: int = 50, max_seconds: float | None = None) -> list[dict]:
    """AdamW with linear warm-up and cosine decay over `steps`, batches drawn from `data`; returns the
    logged metrics. Stops early after `max_seconds`."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))))
    model.train()
    log, start = [], time.time()
    for step in range(steps):
        loss, m = maia3_loss(model, data.batch(torch.randint(0, len(data), (batch_size,), generator=g)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        stop = max_seconds is not None and time.time() - start > max_seconds
        if step % log_every == 0 or step == steps - 1 or stop:
            log.append({"step": step, "seconds": round(time.time() - start, 1), **m})
            print(log[-1], flush=True)
        if stop:
            break
    model.eval()
    return log
