"""stage=finetune: skill calibration on concept positions of a transitional dataset, before vs after.

`model=maia1` fine-tunes the Maia-1 family: bucket b's examples train the network of its band, and
`finetune.trainable=policy_head` is each network's two policy convs (the study's head-only test).

Writes model.safetensors (the weights finetune.keep names, by default the best-validation ones; usable as model.checkpoint=<this run>, with
model=maia1 for a fine-tuned family),
results.md / results.json (per Elo bucket: accuracy against the correct move on the test positions and
on ordinary held-out positions, before and after; transition points before and after and their
shift, paired, and the seed study's unpaired metric), transition_points.png, accuracy plots, metrics.jsonl.
A dataset with fewer than finetune.min_train_rows train positions is skipped: results.md says so and
the run ends without error, so a multirun over concepts goes on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from tqdm import tqdm

from ..data.preprocess import open_or_build_store
from ..encoding import NUM_BUCKETS
from ..errors import ConfigError
from ..analysis.evaluation import own_bucket_accuracy
from ..analysis.calibration import (BUCKET_SAMPLING, KEEP, ROW_FILTERS, SCORE_ROWS, TARGETS, TRAIN_MODES, MoveSet,
                                    finetune, finetune_rows, seed_summary, select_concept, select_trainable,
                                    shift_summary, split_rows, steps_per_epoch, transition_report)
from ..layout import MODEL_FILE
from ..model.skill import Maia2Skill, save_skill_model
from ..reporting.plots import bar_by_bucket, transition_histogram
from ..analysis.transitional import read_transitional, seed_transition_points
from ..checks import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, check_section
from .common import bucket_label, skill_model


@dataclass
class FinetuneConfig:
    """stage=finetune: calibrate low-skill levels toward the correct move on concept positions."""

    device: str = "auto"  # where the model runs: auto (CUDA when there is one) | cpu | cuda | cuda:N
    transitional: Optional[str] = None  # a stage=transitional run directory or its transitional.csv
    # positions whose active threat concepts include this one ('defensive@e4') or any of this kind
    # ('defensive', the study's); '' = every position. Per-concept variants: a multirun over it
    concept: str = "defensive"
    trainable: str = "all"  # all | policy_head (fc_1 only) | heads | transformer | prefixes 'fc_1.,transformer.'
    freeze_elo: bool = True
    steps: int = 300  # with epochs null
    lr: float = 3.0e-4
    batch_size: int = 128  # (position, bucket) pairs per step; the seed: 256 (revision), 8192 (NeurIPS checkpoints)
    side_info_weight: float = 1.0  # the seed: 1 (NeurIPS full fine-tune), 0 (its head-only fine-tunes)
    eval_every: int = 25  # validation loss (every bucket) for choosing the checkpoint; with epochs null
    heldout_positions: int = 2000  # ordinary test positions of `data`: is human-likeness kept? 0: skip
    # The seed study's choices, each a switch on its own (experiments/finetune_study/README.md, "The
    # seed's protocol"); the defaults are ours.
    weight_decay: float = 0.0  # AdamW's; the seed: 1e-5
    # null: `steps` steps; N: N epochs, each one pass over the train positions x 11 buckets
    # (ceil(11 n / batch_size) steps), validated after each; the seed's revision: at most 20
    epochs: Optional[int] = None
    # null: no early stopping (the seed's NeurIPS full fine-tune); P: stop after P validations in a row
    # without a new lowest validation loss (the revision: 3, per epoch)
    patience: Optional[int] = None
    buckets: str = "random"  # random: each pair's bucket drawn at random | all_each_epoch: every pair once a pass (the seed)
    # best: the lowest-validation-loss weights | last: the last step's (the seed's NeurIPS head-only test,
    # and in effect its revision, whose "best state" is a shallow copy of the live weights)
    keep: str = "best"
    # true: the untouched model (validated before any step) competes for keep=best and is where patience
    # starts counting; false: the seed's (its best validation loss starts at infinity)
    untouched_is_candidate: bool = True
    # frozen_batchnorm: dropout on, BatchNorm on its running statistics | train: PyTorch's train mode
    # (the seed's full fine-tune) | eval: no dropout, the frozen trunk as at inference (its head-only ones)
    train_mode: str = "frozen_batchnorm"
    # a (concept's) dataset with fewer train positions is skipped: results.md says so and the run
    # ends without error (a multirun over concepts goes on); the seed's revision: 500
    min_train_rows: int = 0
    # which rows the fine-tune uses: all | transitional (the seed's is_transitional) | blundered_transitional
    row_filter: str = "all"
    target: str = "dataset"  # dataset: the row's correct move (the seed's) | top_bucket: the model's own bucket-10 move
    # the rows of the headline mean_shift (paired): all test rows | transitional (those transitional
    # before fine-tuning); results.md reports both, and the seed's unpaired metric beside them
    score_rows: str = "all"


SCHEMA = FinetuneConfig  # cfg.finetune
RULES = {**{k: POSITIVE_INT for k in ("steps", "batch_size", "eval_every", "epochs", "patience")},
         "min_train_rows": NON_NEGATIVE_INT, "heldout_positions": NON_NEGATIVE_INT, "lr": POSITIVE,
         "weight_decay": NON_NEGATIVE, "side_info_weight": NON_NEGATIVE}
CHOICES = {"buckets": BUCKET_SAMPLING, "keep": KEEP, "train_mode": TRAIN_MODES, "row_filter": ROW_FILTERS,
           "target": TARGETS, "score_rows": SCORE_ROWS}


def check(cfg) -> None:
    check_section(cfg, "finetune", RULES, CHOICES)


def _ci(v: float, ci) -> str:
    return f"{v:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


def _schedule(fc, summary: dict) -> str:
    if fc.epochs is None:
        plan = f"{fc.steps} steps"
    else:
        plan = f"{fc.epochs} epochs ({summary['steps_run']} steps run, {summary['epochs_run']:.1f} epochs)"
    stop = f", stopped early (patience {fc.patience})" if summary["stopped_early"] else ""
    kept = ("the best-validation weights" if fc.keep == "best" else "the last step's weights") + f" (step {summary['kept_step']})"
    return (f"{plan} of {fc.batch_size} pairs ({fc.buckets} buckets), AdamW lr {fc.lr:g} weight decay {fc.weight_decay:g}, "
            f"{fc.train_mode} mode{stop}; kept {kept}")


def _report(model, fc, summary: dict, before: dict, after: dict) -> list[str]:
    """results.md's lines."""
    best = (f"best validation loss {summary['best_val_loss']:.4f} at step {summary['best_step']}"
            if summary["best_step"] is not None else "no validation")
    lines = ["# Calibration fine-tuning", "", f"model `{model.name}`; "
             f"concept `{fc.concept or 'all'}`, trainable `{fc.trainable}` ({summary['trainable_parameters']:,} parameters)"
             + (f", Elo embedding {'frozen' if fc.freeze_elo else 'trained'}" if not hasattr(model, "nets") else "")
             + f"; {summary['positions_train']} train / {summary['positions_val']} "
             f"val / {summary['positions_test']} test positions; {best} of {summary['steps_run']}.", "",
             f"Schedule: {_schedule(fc, summary)}; rows {fc.row_filter}, target {fc.target}.", "",
             f"Mean transition point {summary['mean_transition_point_before']:.2f} -> {summary['mean_transition_point_after']:.2f} "
             f"over {summary['scored_rows']} test rows ({summary['score_rows']}): shift "
             f"{_ci(summary['mean_shift'], summary['mean_shift_ci'])}, 95% "
             f"bootstrap; never right: {summary['never_before']} -> {summary['never_after']}; "
             f"right at every bucket: {summary['correct_everywhere_before']} -> {summary['correct_everywhere_after']}.", "",
             f"Paired shift over all {summary['positions_test']} test rows {_ci(summary['mean_shift_all'], summary['mean_shift_all_ci'])}; "
             f"over the {summary['transitional_before']} rows transitional before fine-tuning (0 < tp < 11) "
             f"{_ci(summary['mean_shift_of_transitional'], summary['mean_shift_of_transitional_ci'])}.", "",
             f"The seed's metric (unpaired; its convention, 10 = never right or right only at the top bucket): "
             f"mean transition point {summary['seed_tp_before']:.2f} before (the dataset's, {summary['seed_rows_before']} "
             f"rows not in {{-1, 0, 10}}) -> {summary['seed_tp_after']:.2f} after (recomputed, {summary['seed_rows_after']} "
             f"rows; {summary['seed_dropped_after']} dropped as -1: wrong at the top bucket and right below it), "
             f"difference {summary['seed_shift']:+.2f}; {summary['seed_rows_in_both']} rows are in both sets. "
             f"With 0 and 10 kept: {summary['seed_tp_before_with_0_10']:.2f} -> {summary['seed_tp_after_with_0_10']:.2f}.", "",
             "![transition points](transition_points.png)", "", "![accuracy](accuracy_by_bucket.png)", "",
             "| Elo bucket | test: correct move before | after | held-out: human move before | after |", "|---|---|---|---|---|"]
    for k in range(NUM_BUCKETS):
        h = (f"{before['heldout'][f'accuracy_bucket_{k}']:.3f} | {after['heldout'][f'accuracy_bucket_{k}']:.3f}"
             if 'heldout' in before else "- | -")
        lines.append(f"| {bucket_label(model, k)} | {before['accuracy'][k]:.3f} | {after['accuracy'][k]:.3f} | {h} |")
    return lines


def _skipped(fc, frame, parts: dict) -> dict:
    """A dataset below finetune.min_train_rows: results.md and results.json say so; no error."""
    counts = {f"positions_{k}": len(v) for k, v in parts.items()}
    why = (f"{counts['positions_train']} train positions hold '{fc.concept or 'any'}', fewer than "
           f"finetune.min_train_rows={fc.min_train_rows}")
    print(f"skipped: {why}")
    summary = {"skipped": True, "skip_reason": why, "concept": fc.concept, **counts}
    frame.report(f"# Calibration fine-tuning: skipped\n\nconcept `{fc.concept or 'all'}`: {why}; "
                 f"nothing was trained ({counts['positions_val']} val / {counts['positions_test']} test positions).\n",
                 summary)
    return summary


def _dataset_seed_tp(moves: MoveSet, before: dict) -> np.ndarray:
    """The test rows' transition points as the dataset gives them (seed convention); a row without
    one (a dataset written without the column) takes the one recomputed before fine-tuning."""
    recomputed = seed_transition_points(before["correct"])
    return np.array([r["dataset_seed_tp"] if r.get("dataset_seed_tp") is not None else t
                     for r, t in zip(moves.rows, recomputed)], dtype=np.int64)


def _parts(cfg, frame):
    """(train/val/test MoveSets of the dataset's rows that hold finetune.concept, or the skipped summary;
    a line on what was chosen)."""
    fc = cfg.finetune
    if not fc.transitional:
        raise ConfigError("stage=finetune needs finetune.transitional (a stage=transitional run directory or CSV)")
    rows = read_transitional(fc.transitional)
    usable = finetune_rows(rows, fc.row_filter, fc.target)
    chosen = select_concept(usable, fc.concept)
    split = split_rows(chosen)
    if len(split["train"]) < fc.min_train_rows:
        return _skipped(fc, frame, split), ""
    parts = {k: MoveSet.build(v, frame.dir / f"positions_{k}") for k, v in split.items()}
    return parts, (f"{len(chosen)} of {len(usable)} positions ({fc.row_filter} of {len(rows)}) hold '{fc.concept or 'any'}': "
                   + ", ".join(f"{k} {len(v.rows)}" for k, v in parts.items()))


def _heldout(cfg):
    """(store, ordinary test positions) for the human-likeness check, or None (finetune.heldout_positions=0)."""
    if not cfg.finetune.heldout_positions:
        return None
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    test_idx = store.split_indices("test")
    return store, np.sort(np.random.default_rng(cfg.seed).permutation(test_idx)[: cfg.finetune.heldout_positions])


def _fit(cfg, model, parts, tracker) -> dict:
    fc = cfg.finetune
    total = fc.steps if fc.epochs is None else fc.epochs * steps_per_epoch(len(parts["train"].rows), fc.batch_size)
    bar = tqdm(total=total, desc="finetune", dynamic_ncols=True)
    fit = finetune(model, parts["train"], parts["val"], steps=fc.steps, lr=fc.lr, batch_size=fc.batch_size,
                   side_info_weight=fc.side_info_weight, eval_every=fc.eval_every, seed=cfg.seed,
                   weight_decay=fc.weight_decay, epochs=fc.epochs, patience=fc.patience, buckets=fc.buckets,
                   keep=fc.keep, untouched_is_candidate=fc.untouched_is_candidate, train_mode=fc.train_mode,
                   tracker=tracker, progress=bar.update)
    bar.close()
    return fit


def _figures(frame, fc, before: dict, after: dict) -> None:
    tb, ta = before["transition_points"], after["transition_points"]
    hist = transition_histogram({"before": tb.tolist(), "after": ta.tolist()}, frame.dir / "transition_points.png",
                                f"transition points of {len(tb)} test positions ({fc.concept or 'all'})")
    acc = bar_by_bucket({"before": before["accuracy"].tolist(), "after": after["accuracy"].tolist()},
                        frame.dir / "accuracy_by_bucket.png", "correct move on the test positions", ylabel="accuracy")
    for name, png in (("transition_points", hist), ("accuracy_by_bucket", acc)):
        frame.tracker().log_image(f"finetune/{name}", png)


def run(cfg, frame) -> dict:
    fc = cfg.finetune
    parts, chosen = _parts(cfg, frame)
    if "skipped" in parts:
        return parts
    model = skill_model(cfg, "finetune")
    if fc.side_info_weight and not isinstance(model, Maia2Skill):
        raise ConfigError(f"finetune.side_info_weight={fc.side_info_weight}: {model.name} has no side-info head (set it to 0)")
    trained = select_trainable(model, fc.trainable, fc.freeze_elo)
    n_params = sum(p.numel() for n, p in model.module.named_parameters() if n in set(trained))
    print(f"{chosen}; training {n_params:,} parameters")
    heldout = _heldout(cfg)

    def report(m) -> dict:
        rep = transition_report(m, parts["test"])
        if heldout is not None:
            rep["heldout"] = own_bucket_accuracy(m, *heldout)
        return rep

    before = report(model)
    fit = _fit(cfg, model, parts, frame.tracker())
    save_skill_model(model, frame.dir / MODEL_FILE, finetune=str(dict(concept=fc.concept, trainable=fc.trainable, keep=fc.keep)))
    after = report(model)
    summary = {"positions_train": len(parts["train"].rows), "positions_val": len(parts["val"].rows),
               "positions_test": len(parts["test"].rows), "trainable_parameters": n_params,
               **{k: v for k, v in fit.items() if k != "val_losses"},
               **shift_summary(before, after, seed=cfg.seed, score_rows=fc.score_rows),
               **seed_summary(_dataset_seed_tp(parts["test"], before), seed_transition_points(after["correct"]))}
    if heldout is not None:
        summary["heldout_accuracy_before"] = before["heldout"]["accuracy"]
        summary["heldout_accuracy_after"] = after["heldout"]["accuracy"]
    _figures(frame, fc, before, after)
    frame.report("\n".join(_report(model, fc, summary, before, after)) + "\n",
                 {**summary, "accuracy_before": before["accuracy"].tolist(), "accuracy_after": after["accuracy"].tolist(),
                  "val_losses": fit["val_losses"]})
    return summary
