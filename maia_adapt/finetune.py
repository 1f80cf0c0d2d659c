"""Skill calibration by fine-tuning: teach every Elo bucket the high-skill move on threat positions.

As in the study: positions (from a transitional dataset) that hold a chosen concept, e.g. any
defensive threat, are labelled at *every* Elo bucket with the correct move; the model is fine-tuned on
them with the Elo embedding frozen, and the checkpoint with the lowest validation loss is kept. Which
parameters train is a choice: the policy head alone (`fc_1`) adds no knowledge to the backbone, so a
low-skill level that improves under it already *knew* and only failed to act.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.store import store_from_fens
from .encoding import NUM_BUCKETS
from .errors import ConfigError
from .model.training import train_mode
from .transitional import correct_by_bucket, predictions_by_bucket, transition_points

# presets of finetune.trainable; anything else is a comma-separated list of parameter-name prefixes
TRAINABLE = {
    "all": [""],
    "policy_head": ["fc_1."],
    "heads": ["fc_1.", "fc_2.", "fc_3.", "fc_3_1."],
    "transformer": ["transformer.", "last_ln.", "fc_1.", "fc_2."],
}


def select_trainable(model, trainable: str, freeze_elo: bool = True) -> list[str]:
    """Turn gradients on for the chosen parameters only; returns their names."""
    prefixes = TRAINABLE.get(trainable, [p.strip() for p in trainable.split(",") if p.strip()])
    names = []
    for name, p in model.named_parameters():
        on = any(name.startswith(pre) for pre in prefixes)
        if freeze_elo and name.startswith("elo_embedding."):
            on = False
        p.requires_grad_(on)
        if on:
            names.append(name)
    if not names:
        raise ConfigError(f"finetune.trainable '{trainable}' matches no parameter: use {', '.join(TRAINABLE)} "
                          "or parameter-name prefixes such as fc_1.,transformer.elo_layers.1.")
    return names


def concept_rows(rows: list[dict], concept: str) -> list[dict]:
    """Rows whose active threat concepts include `concept` exactly, or any starting with it + '@'."""
    return [r for r in rows if any(t == concept or t.startswith(concept + "@") for t in r["threats"])]


@dataclass
class MoveSet:
    """Positions with their correct moves, as a position store the model can read."""

    store: object
    rows: list[dict]

    @classmethod
    def build(cls, rows: list[dict], folder: Path) -> "MoveSet":
        if not rows:
            raise ConfigError(f"no positions for {folder.name}: the transitional dataset has none that match")
        store = store_from_fens([r["fen"] for r in rows], folder, 5, 5, moves=[r["correct"][0] for r in rows])
        return cls(store, rows)

    def batch(self, positions: np.ndarray, buckets: np.ndarray) -> dict:
        b = self.store.batch(positions)
        b["elo_self"] = b["elo_oppo"] = torch.from_numpy(buckets).long()
        return b


def calibration_loss(model, batch: dict, side_info_weight: float) -> torch.Tensor:
    logits, side, _ = model(batch["boards"], batch["elo_self"], batch["elo_oppo"])
    loss = F.cross_entropy(logits.float(), batch["move"])
    if side_info_weight:
        loss = loss + side_info_weight * F.binary_cross_entropy_with_logits(side.float(), batch["side_info"])
    return loss


@torch.no_grad()
def all_bucket_loss(model, moves: MoveSet, side_info_weight: float, batch_size: int = 512) -> float:
    """Mean loss over every (position, bucket) pair of a move set."""
    model.eval()
    n = len(moves.rows)
    total, count = 0.0, 0
    for k in range(NUM_BUCKETS):
        for s in range(0, n, batch_size):
            pos = np.arange(s, min(n, s + batch_size))
            total += calibration_loss(model, moves.batch(pos, np.full(len(pos), k)), side_info_weight).item() * len(pos)
            count += len(pos)
    return total / count


def finetune(model, train: MoveSet, val: MoveSet, *, steps: int, lr: float, batch_size: int, side_info_weight: float,
             eval_every: int, seed: int, tracker=None, progress=None) -> dict:
    """Fine-tune in place on (position, bucket) pairs drawn at random; the lowest-val-loss weights are
    loaded back at the end. Returns {best_step, best_val_loss, val_losses}."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    best = (all_bucket_loss(model, val, side_info_weight), 0, copy.deepcopy(model.state_dict()))
    history = [(0, best[0])]
    for step in range(1, steps + 1):
        train_mode(model, freeze_batchnorm=True)
        pos = np.sort(rng.integers(0, len(train.rows), batch_size))
        loss = calibration_loss(model, train.batch(pos, rng.integers(0, NUM_BUCKETS, batch_size)), side_info_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tracker:
            tracker.log({"finetune/train_loss": loss.item()}, step=step)
        if step % eval_every == 0 or step == steps:
            v = all_bucket_loss(model, val, side_info_weight)
            history.append((step, v))
            if tracker:
                tracker.log({"finetune/val_loss": v}, step=step)
            if v < best[0]:
                best = (v, step, copy.deepcopy(model.state_dict()))
        if progress:
            progress(1)
    model.load_state_dict(best[2])
    model.eval()
    return {"best_step": best[1], "best_val_loss": best[0], "val_losses": history}


def transition_report(model, moves: MoveSet, batch_size: int = 512) -> dict:
    """Per-bucket accuracy against the correct moves, and transition points, of a move set."""
    preds, _ = predictions_by_bucket(model, moves.store, np.arange(len(moves.rows)), batch_size=batch_size)
    correct = correct_by_bucket(preds, moves.rows)
    tp, mono = transition_points(correct)
    return {"accuracy": correct.mean(0), "transition_points": tp, "monotone": mono, "predictions": preds}
