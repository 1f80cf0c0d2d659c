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
from ..model.skill import Maia1Family, Maia2Skill, as_skill_model
from ..model.training import train_mode
from .transitional import (NEVER, SEED_DROPPED, SEED_NEVER, correct_by_bucket, predictions_by_bucket,
                           transition_points)

def select_trainable(model, trainable: str, freeze_elo: bool = True) -> list[str]:
    """Turn gradients on for the chosen parameters only; returns their names. `trainable` is a preset
    of the model's family (`SkillModel.trainable_presets`) or comma-separated parameter-name prefixes;
    in the Maia-1 family a prefix applies within each network (`policy_conv` matches every network's
    `maia-<rating>.policy_conv1.weight`)."""
    sm = as_skill_model(model)
    presets = sm.trainable_presets()
    prefixes = presets.get(trainable, [p.strip() for p in trainable.split(",") if p.strip()])
    per_network = isinstance(sm, Maia1Family)
    names = []
    for name, p in sm.module.named_parameters():
        local = name.split(".", 1)[1] if per_network else name
        on = any(local.startswith(pre) for pre in prefixes)
        if freeze_elo and local.startswith("elo_embedding"):  # Maia-3's: elo_embedding_low / _high
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


def select_concept(rows: list[dict], concept: str) -> list[dict]:
    """The rows holding `concept` ('' = every row): a threat concept or kind ('defensive@e4',
    'defensive') is read from the dataset's threats column (`concept_rows`); any other concept of
    maia_adapt.concepts, by our name ('seed172_own_knight_fork', 'seed172_defensive@e4') or by the
    seed's ('knight_fork_mine', 'defensive_threat_e4': SEED172_SEED_NAMES), or a name before '@'
    ('seed172_defensive'), is computed from each row's FEN."""
    if not concept:
        return rows
    from ..concepts import SEED172_SEED_NAMES, concept_specs, position_concepts

    specs = concept_specs()
    match = lambda name: name == concept or name.startswith(concept + "@")
    if any(match(s.name) for s in specs if s.family == "threat"):
        return concept_rows(rows, concept)
    concept = {seed: ours for ours, seed in SEED172_SEED_NAMES.items()}.get(concept, concept)
    chosen = {s.name: s.family for s in specs if match(s.name)}
    if not chosen:
        raise ConfigError(f"finetune.concept='{concept}': no concept of that name: expected a threat concept or kind "
                          "('defensive@e4', 'defensive'), another concept of maia_adapt.concepts (e.g. "
                          "'seed172_own_knight_fork' or the seed's 'knight_fork_mine'), or '' for every position")
    found = position_concepts([r["fen"] for r in rows], sorted(set(chosen.values())))
    cols = [i for i, n in enumerate(found.names) if n in chosen]
    hit = found.labels[:, cols].any(1).tolist() if rows else []
    return [r for r, h in zip(rows, hit) if h]


# finetune.row_filter: which rows of the transitional dataset the fine-tune (train, val and test) uses
ROW_FILTERS = ("all", "transitional", "blundered_transitional")
# finetune.target: the move every bucket is trained toward and scored against
TARGETS = ("dataset", "top_bucket")


def _flag(v) -> bool:
    return v is True or str(v).strip().lower() in ("1", "true")


def finetune_rows(rows: list[dict], row_filter: str = "all", target: str = "dataset") -> list[dict]:
    """The rows of a transitional dataset the fine-tune uses, each with `dataset_seed_tp`: its transition
    point as the dataset gives it, in the seed's convention (`seed_tp_from_ours`; None without one).

    row_filter: all (ours) | transitional (the seed's `is_transitional`, N test/intervention.py:72-84:
    wrong below some bucket x in 1..10 and right from x, i.e. our transitional and monotone rows) |
    blundered_transitional (those whose bucket-0 move is also a blunder, the seed's "blundered
    transitional dataset"; our blunder flag is a real centipawn loss, not the seed's sign-bugged one).
    target: dataset (the row's correct moves: the seed's `row['correct_move']`, N maia2_ft.py:48-50) |
    top_bucket (the model's own bucket-10 move, the dataset's pred_10, which the seed's interventions
    score against); with top_bucket the dataset's transition point is recomputed from pred_0..pred_10."""
    from .transitional import seed_tp_from_ours

    if row_filter not in ROW_FILTERS:
        raise ConfigError(f"finetune.row_filter='{row_filter}': expected one of {', '.join(ROW_FILTERS)}")
    if target not in TARGETS:
        raise ConfigError(f"finetune.target='{target}': expected one of {', '.join(TARGETS)}")
    out = []
    for r in rows:
        if row_filter != "all":
            tp = int(r["transition_point"])
            if not (0 < tp < NEVER and _flag(r.get("monotone"))):
                continue
            if row_filter == "blundered_transitional" and not _flag(r.get("blunder")):
                continue
        r = dict(r)
        if target == "top_bucket":
            preds = [r.get(f"pred_{k}") for k in range(NUM_BUCKETS)]
            if not all(preds):
                raise ConfigError("finetune.target=top_bucket: the transitional dataset has no pred_0..pred_10 columns "
                                  "(written by stage=transitional)")
            r["correct"] = [preds[-1]]
            ours, mono = transition_points(np.array([[p == preds[-1] for p in preds]]))
            r["transition_point"], r["monotone"] = int(ours[0]), bool(mono[0])
        has_tp = "transition_point" in r and "monotone" in r
        r["dataset_seed_tp"] = (int(seed_tp_from_ours([int(r["transition_point"])], [_flag(r["monotone"])])[0])
                                if has_tp else None)
        out.append(r)
    return out


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
        # each row's game history where the dataset has one: Maia-1 and Maia-3 read it, as they did in
        # stage=transitional, so a row's base accuracy here is the one its transition point came from
        store = store_from_fens([r["fen"] for r in rows], folder, 5, 5, moves=[r["correct"][0] for r in rows],
                                histories=[r.get("history") for r in rows])
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
        b = {k: batch[k].to(sm.device) for k in ("boards", "elo_self", "elo_oppo", "move", "side_info") if k in batch}
        logits, side, _ = sm.model(b["boards"], b["elo_self"], b["elo_oppo"])
        loss = F.cross_entropy(logits.float(), b["move"])
        if side_info_weight:
            loss = loss + side_info_weight * F.binary_cross_entropy_with_logits(side.float(), b["side_info"])
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


# finetune.buckets: which (position, bucket) pairs a step trains on
BUCKET_SAMPLING = ("random", "all_each_epoch")
# finetune.keep: which weights the fine-tune ends with
KEEP = ("best", "last")
# finetune.train_mode: the modules' mode while training (the validation always runs in eval mode)
TRAIN_MODES = ("frozen_batchnorm", "train", "eval")


def pair_batches(n: int, batch_size: int, buckets: str, rng: np.random.Generator):
    """Endless (positions, buckets) batches over n training positions.

    random (ours): each step draws batch_size positions with replacement, each at a uniformly random
    bucket. all_each_epoch (the seed's `ConceptDataset` / `ThreatAwareDataset`: every row expanded to
    all 11 buckets, a DataLoader with shuffle=True, drop_last=False): the n x 11 pairs are shuffled and
    walked through without replacement; a pass's last batch holds what is left, and every pass
    (an epoch) visits each pair exactly once."""
    if buckets == "random":
        while True:
            # this order of the two draws is the one the stage always had: its runs repeat exactly
            pos = np.sort(rng.integers(0, n, batch_size))
            yield pos, rng.integers(0, NUM_BUCKETS, batch_size)
    elif buckets == "all_each_epoch":
        while True:
            perm = rng.permutation(n * NUM_BUCKETS)
            for s in range(0, len(perm), batch_size):
                pairs = perm[s : s + batch_size]
                pos, bk = pairs // NUM_BUCKETS, pairs % NUM_BUCKETS
                order = np.argsort(pos, kind="stable")  # the store reads positions in order
                yield pos[order], bk[order]
    else:
        raise ConfigError(f"finetune.buckets='{buckets}': expected one of {', '.join(BUCKET_SAMPLING)}")


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Steps of one pass over the n x 11 (position, bucket) pairs (the last batch may be short)."""
    return -(-n * NUM_BUCKETS // batch_size)


def _set_train_mode(module, mode: str) -> None:
    if mode == "frozen_batchnorm":  # ours: dropout on, BatchNorm on its running statistics
        train_mode(module, freeze_batchnorm=True)
    elif mode == "train":  # the seed's full fine-tune (N maia2_ft.py:260, model.train()): BatchNorm on batch statistics
        train_mode(module, freeze_batchnorm=False)
    elif mode == "eval":  # the seed's head-only fine-tunes: the frozen trunk runs as at inference, no dropout
        module.eval()
    else:
        raise ConfigError(f"finetune.train_mode='{mode}': expected one of {', '.join(TRAIN_MODES)}")


def finetune(model, train: MoveSet, val: MoveSet, *, steps: int, lr: float, batch_size: int, side_info_weight: float,
             eval_every: int, seed: int, weight_decay: float = 0.0, epochs: int | None = None,
             patience: int | None = None, buckets: str = "random", keep: str = "best",
             untouched_is_candidate: bool = True, train_mode: str = "frozen_batchnorm",
             tracker=None, progress=None) -> dict:
    """Fine-tune in place with AdamW on (position, bucket) pairs; returns {best_step, best_val_loss,
    val_losses, steps_run, epochs_run, stopped_early, kept_step}.

    The defaults are the stage's own: `steps` steps of random pairs (`pair_batches`), the validation
    loss over every (position, bucket) pair every `eval_every` steps and at the end, and the weights
    of the lowest validation loss loaded back at the end, the untouched model (step 0) included.
    The seed's choices, each on its own:
    - epochs=N: N passes of `steps_per_epoch` steps (`steps` and `eval_every` unused), validated
      after each pass, as the seed's epoch loop;
    - patience=P: stop after P validations in a row without a new lowest validation loss (the
      revision: P=3 per epoch);
    - keep='last': end with the last step's weights (the seed's NeurIPS head-only test; the
      revision's "best state" was a shallow copy of the live weights, so it is the last too);
    - untouched_is_candidate=False: the validation before any step is recorded but neither a
      candidate for keep='best' nor the mark patience counts from (the seed's best_val_loss starts
      at infinity, so its first epoch always counts as an improvement);
    - weight_decay, train_mode (see TRAIN_MODES) and buckets (see pair_batches)."""
    if keep not in KEEP:
        raise ConfigError(f"finetune.keep='{keep}': expected one of {', '.join(KEEP)}")
    model = as_skill_model(model)
    module = model.module
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    batches = pair_batches(len(train.rows), batch_size, buckets, rng)
    per_epoch = steps_per_epoch(len(train.rows), batch_size)
    total = steps if epochs is None else epochs * per_epoch

    def validation_due(step: int) -> bool:
        return step % per_epoch == 0 if epochs is not None else (step % eval_every == 0 or step == total)

    v0 = all_bucket_loss(model, val, side_info_weight)
    history = [(0, v0)]
    if untouched_is_candidate:
        best = (v0, 0, copy.deepcopy(module.state_dict()) if keep == "best" else None)
    else:
        best = (float("inf"), None, None)
    since_best, stopped, step = 0, False, 0
    for step in range(1, total + 1):
        _set_train_mode(module, train_mode)
        pos, bk = next(batches)
        loss = calibration_loss(model, train.batch(pos, bk, model), side_info_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if tracker:
            tracker.log({"finetune/train_loss": loss.item()}, step=step)
        if validation_due(step):
            v = all_bucket_loss(model, val, side_info_weight)
            history.append((step, v))
            if tracker:
                tracker.log({"finetune/val_loss": v}, step=step)
            if v < best[0]:
                best = (v, step, copy.deepcopy(module.state_dict()) if keep == "best" else None)
                since_best = 0
            else:
                since_best += 1
            if patience is not None and since_best >= patience:
                stopped = True
        if progress:
            progress(1)
        if stopped:
            break
    if keep == "best" and best[2] is not None:
        module.load_state_dict(best[2])
    module.eval()
    return {"best_step": best[1], "best_val_loss": best[0], "val_losses": history, "steps_run": step,
            "epochs_run": step / per_epoch, "stopped_early": stopped,
            "kept_step": best[1] if keep == "best" else step}


def transition_report(model, moves: MoveSet, batch_size: int = 512) -> dict:
    """Per-bucket accuracy against the correct moves, and transition points, of a move set."""
    preds, _ = predictions_by_bucket(model, moves.store, np.arange(len(moves.rows)), batch_size=batch_size)
    correct = correct_by_bucket(preds, moves.rows)
    tp, mono = transition_points(correct)
    return {"accuracy": correct.mean(0), "correct": correct, "transition_points": tp, "monotone": mono, "predictions": preds}


SCORE_ROWS = ("all", "transitional")


def shift_summary(before: dict, after: dict, n_boot: int = 1000, seed: int = 0, score_rows: str = "all") -> dict:
    """How fine-tuning moved the test positions (two `transition_report`s of the same rows): mean
    transition point before/after and its paired shift with a 95% bootstrap interval over positions,
    over the rows `score_rows` names (all: every test row; transitional: those transitional before
    fine-tuning, 0 < tp < 11); the shift over all rows and over the transitional ones always; never-right
    and right-everywhere counts; the correct-move accuracy over all buckets with the change's interval."""
    from .interventions import bootstrap_diff

    if score_rows not in SCORE_ROWS:
        raise ConfigError(f"finetune.score_rows='{score_rows}': expected one of {', '.join(SCORE_ROWS)}")
    tb, ta = before["transition_points"], after["transition_points"]
    was_trans = (tb > 0) & (tb < NEVER)
    rows = was_trans if score_rows == "transitional" else np.ones(len(tb), dtype=bool)
    shift = bootstrap_diff(ta[rows], tb[rows], n_boot, seed)
    every = shift if score_rows == "all" else bootstrap_diff(ta, tb, n_boot, seed)
    trans = bootstrap_diff(ta[was_trans], tb[was_trans], n_boot, seed)
    gain = bootstrap_diff(after["correct"].mean(1), before["correct"].mean(1), n_boot, seed)
    mean = lambda v: float(v.mean()) if len(v) else float("nan")
    return {
        "mean_transition_point_before": mean(tb[rows]), "mean_transition_point_after": mean(ta[rows]),
        "mean_shift": shift[0], "mean_shift_ci": [shift[1], shift[2]], "score_rows": score_rows,
        "scored_rows": int(rows.sum()),
        "mean_shift_all": every[0], "mean_shift_all_ci": [every[1], every[2]],
        "mean_shift_of_transitional": float((ta - tb)[was_trans].mean()) if was_trans.any() else float("nan"),
        "mean_shift_of_transitional_ci": [trans[1], trans[2]], "transitional_before": int(was_trans.sum()),
        "never_before": int((tb == NEVER).sum()), "never_after": int((ta == NEVER).sum()),
        "correct_everywhere_before": int((tb == 0).sum()), "correct_everywhere_after": int((ta == 0).sum()),
        "test_accuracy_before": float(before["accuracy"].mean()), "test_accuracy_after": float(after["accuracy"].mean()),
        "test_accuracy_change_ci": [gain[1], gain[2]],
    }


def seed_summary(dataset_tp: np.ndarray, after_tp: np.ndarray) -> dict:
    """The seed's success metric, reproduced with its row sets (N maia2_ft.py:244-253 and :366-394; R
    ft_per_concept_head_only.py `train_concept` / `evaluate_model`), both in the seed's convention
    (`seed_transition_points`: -1 dropped, 10 = never right *or* right only at the top bucket):
    before = the dataset's transition points (read, not recomputed: the seed takes the CSV's column),
    after = recomputed from the fine-tuned model. Each side's mean is over its own kept rows: "excl 0,10"
    = rows not in {-1, 0, 10}, "with 0,10" = rows not -1. The two row sets differ (a row can enter or
    leave either side), which the paired shift of `shift_summary` does not allow."""
    b, a = np.asarray(dataset_tp), np.asarray(after_tp)
    kb, ka = ~np.isin(b, (SEED_DROPPED, 0, SEED_NEVER)), ~np.isin(a, (SEED_DROPPED, 0, SEED_NEVER))
    wb, wa = b != SEED_DROPPED, a != SEED_DROPPED
    mean = lambda v: float(v.mean()) if len(v) else float("nan")
    out = {"seed_tp_before": mean(b[kb]), "seed_tp_after": mean(a[ka]), "seed_rows_before": int(kb.sum()),
           "seed_rows_after": int(ka.sum()), "seed_rows_in_both": int((kb & ka).sum()),
           "seed_dropped_before": int((~wb).sum()), "seed_dropped_after": int((~wa).sum()),
           "seed_tp_before_with_0_10": mean(b[wb]), "seed_tp_after_with_0_10": mean(a[wa])}
    out["seed_shift"] = out["seed_tp_after"] - out["seed_tp_before"]
    return out
