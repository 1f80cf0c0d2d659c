"""Skill calibration by fine-tuning: teach every Elo bucket the high-skill move on threat positions.

As in the study: positions (from a transitional dataset) that hold a chosen concept, e.g. any
defensive threat, are labelled at *every* Elo bucket with the correct move; the model is fine-tuned on
them with the Elo embedding frozen, and the checkpoint with the lowest validation loss is kept. Which
parameters train is a choice: the policy head alone (`fc_1`) adds no knowledge to the backbone, so a
low-skill level that improves under it already *knew* and only failed to act.

`model` is a SkillModel (or a bare Maia2): for the Maia-1 family, "every Elo bucket" means every
network (bucket b trains the network of its band) and `policy_head` is each network's two policy convs.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.store import store_from_fens
from ..encoding import NUM_BUCKETS
from ..errors import ConfigError
from ..model.skill import Maia2Skill, as_skill_model
from ..model.training import train_mode
from .transitional import NEVER, correct_by_bucket, predictions_by_bucket, transition_points

def select_trainable(model, trainable: str, freeze_elo: bool = True) -> list[str]:
    """Turn gradients on for the chosen parameters only; returns their names. `trainable` is a preset
    of the model's family (`SkillModel.trainable_presets`) or comma-separated parameter-name prefixes;
    in the Maia-1 family a prefix applies within each network (`policy_conv` matches every network's
    `maia-<rating>.policy_conv1.weight`)."""
    sm = as_skill_model(model)
    presets = sm.trainable_presets()
    prefixes = presets.get(trainable, [p.strip() for p in trainable.split(",") if p.strip()])
    per_network = not isinstance(sm, Maia2Skill)
    names = []
    for name, p in sm.module.named_parameters():
        local = name.split(".", 1)[1] if per_network else name
        on = any(local.startswith(pre) for pre in prefixes)
        if freeze_elo and local.startswith("elo_embedding."):
            on = False
        p.requires_grad_(on)
        if on:
            names.append(name)
    if not names:
        example = "policy_conv2.,blocks.5." if per_network else "fc_1.,transformer.elo_layers.1."
        raise ConfigError(f"finetune.trainable '{trainable}' matches no parameter: use {', '.join(presets)} "
                          f"or parameter-name prefixes such as {example}")
    return names


def split_rows(rows: list[dict]) -> dict[str, list[dict]]:
    """train/val/test rows by the dataset's game split; a set without val or test rows (the seed
    positions) is split 60/20/20 by a hash of the FEN, so the split never depends on row order."""
    out = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    if out["val"] and out["test"]:
        return out
    out = {"train": [], "val": [], "test": []}
    for r in rows:
        h = zlib.crc32(r["fen"].encode()) % 10
        out["train" if h < 6 else "val" if h < 8 else "test"].append(r)
    return out


def concept_rows(rows: list[dict], concept: str) -> list[dict]:
    """Rows whose active threat concepts include `concept` exactly, or any starting with it + '@'."""
    return [r for r in rows if any(t == concept or t.startswith(concept + "@") for t in r["threats"])]


@dataclass
class MoveSet:
    """Positions with their correct moves, as a position store the model can read."""

    store: object
    rows: list[dict]
    _inputs: tuple | None = None  # (the model they were built for, its inputs for every row)

    @classmethod
    def build(cls, rows: list[dict], folder: Path) -> "MoveSet":
        if not rows:
            raise ConfigError(f"no positions for {folder.name}: the transitional dataset has none that match")
        store = store_from_fens([r["fen"] for r in rows], folder, 5, 5, moves=[r["correct"][0] for r in rows])
        return cls(store, rows)

    def batch(self, positions: np.ndarray, buckets: np.ndarray, model=None) -> dict:
        """The model's inputs (Maia-2 planes by default) for some rows, conditioned on `buckets`.
        A model's inputs for all rows are built once: Maia-1's replay the positions every step otherwise."""
        if model is None or isinstance(as_skill_model(model), Maia2Skill):
            b = self.store.batch(positions)
        else:
            if self._inputs is None or self._inputs[0] is not model:  # another model (e.g. history off) reads others
                self._inputs = (model, as_skill_model(model).inputs(self.store, np.arange(len(self.rows))))
            b = {k: v[torch.from_numpy(np.asarray(positions))] for k, v in self._inputs[1].items() if torch.is_tensor(v)}
        b["elo_self"] = b["elo_oppo"] = torch.from_numpy(buckets).long()
        return b


def calibration_loss(model, batch: dict, side_info_weight: float) -> torch.Tensor:
    """Cross-entropy of the correct move (plus Maia-2's side-info loss if weighted). Maia-1 has no
    side-info head; its illegal moves are masked, as lc0 trains."""
    sm = as_skill_model(model)
    if isinstance(sm, Maia2Skill):
        logits, side, _ = sm.model(batch["boards"], batch["elo_self"], batch["elo_oppo"])
        loss = F.cross_entropy(logits.float(), batch["move"])
        if side_info_weight:
            loss = loss + side_info_weight * F.binary_cross_entropy_with_logits(side.float(), batch["side_info"])
        return loss
    logits = sm.policy_logits(batch, batch["elo_self"], batch["elo_oppo"]).float()
    return F.cross_entropy(logits.masked_fill(~batch["legal"].to(logits.device), float("-inf")), batch["move"].to(logits.device))


@torch.no_grad()
def all_bucket_loss(model, moves: MoveSet, side_info_weight: float, batch_size: int = 512) -> float:
    """Mean loss over every (position, bucket) pair of a move set. Buckets that behave identically
    (`conditions()`: the Maia-1 family's 0/1 and 9/10) are run once and counted for each."""
    sm = as_skill_model(model)
    sm.module.eval()
    n = len(moves.rows)
    total, count = 0.0, 0
    for k, same in sm.conditions():
        for s in range(0, n, batch_size):
            pos = np.arange(s, min(n, s + batch_size))
            loss = calibration_loss(sm, moves.batch(pos, np.full(len(pos), k), sm), side_info_weight).item()
            total += loss * len(pos) * len(same)
            count += len(pos) * len(same)
    return total / count


def finetune(model, train: MoveSet, val: MoveSet, *, steps: int, lr: float, batch_size: int, side_info_weight: float,
             eval_every: int, seed: int, tracker=None, progress=None) -> dict:
    """Fine-tune in place on (position, bucket) pairs drawn at random; the lowest-val-loss weights are
    loaded back at the end. Returns {best_step, best_val_loss, val_losses}."""
    model = as_skill_model(model)
    module = model.module
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    best = (all_bucket_loss(model, val, side_info_weight), 0, copy.deepcopy(module.state_dict()))
    history = [(0, best[0])]
    for step in range(1, steps + 1):
        train_mode(module, freeze_batchnorm=True)
        pos = np.sort(rng.integers(0, len(train.rows), batch_size))
        loss = calibration_loss(model, train.batch(pos, rng.integers(0, NUM_BUCKETS, batch_size), model), side_info_weight)
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
                best = (v, step, copy.deepcopy(module.state_dict()))
        if progress:
            progress(1)
    module.load_state_dict(best[2])
    module.eval()
    return {"best_step": best[1], "best_val_loss": best[0], "val_losses": history}


def transition_report(model, moves: MoveSet, batch_size: int = 512) -> dict:
    """Per-bucket accuracy against the correct moves, and transition points, of a move set."""
    preds, _ = predictions_by_bucket(model, moves.store, np.arange(len(moves.rows)), batch_size=batch_size)
    correct = correct_by_bucket(preds, moves.rows)
    tp, mono = transition_points(correct)
    return {"accuracy": correct.mean(0), "correct": correct, "transition_points": tp, "monotone": mono, "predictions": preds}


def shift_summary(before: dict, after: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """How fine-tuning moved the test positions (two `transition_report`s of the same rows): mean
    transition point before/after and its shift with a 95% bootstrap interval over positions, the
    shift of the positions that were transitional, never-right and right-everywhere counts, and the
    correct-move accuracy over all buckets with the change's interval."""
    from .interventions import bootstrap_diff

    tb, ta = before["transition_points"], after["transition_points"]
    was_trans = (tb > 0) & (tb < NEVER)
    shift = bootstrap_diff(ta, tb, n_boot, seed)
    gain = bootstrap_diff(after["correct"].mean(1), before["correct"].mean(1), n_boot, seed)
    return {
        "mean_transition_point_before": float(tb.mean()), "mean_transition_point_after": float(ta.mean()),
        "mean_shift": shift[0], "mean_shift_ci": [shift[1], shift[2]],
        "mean_shift_of_transitional": float((ta - tb)[was_trans].mean()) if was_trans.any() else float("nan"),
        "never_before": int((tb == NEVER).sum()), "never_after": int((ta == NEVER).sum()),
        "correct_everywhere_before": int((tb == 0).sum()), "correct_everywhere_after": int((ta == 0).sum()),
        "test_accuracy_before": float(before["accuracy"].mean()), "test_accuracy_after": float(after["accuracy"].mean()),
        "test_accuracy_change_ci": [gain[1], gain[2]],
    }
