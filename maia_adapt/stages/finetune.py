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

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.preprocess import open_or_build_store
from ..encoding import NUM_BUCKETS
from ..errors import ConfigError
from ..analysis.evaluation import own_bucket_accuracy
from ..analysis.calibration import (MoveSet, finetune, finetune_rows, seed_summary, select_concept, select_trainable,
                                    shift_summary, split_rows, steps_per_epoch, transition_report)
from ..io import atomic_write_json, atomic_write_text
from ..layout import MODEL_FILE
from ..model.skill import Maia2Skill, save_skill_model
from ..reporting.plots import bar_by_bucket, transition_histogram
from ..runtime.tracking import Tracker
from ..analysis.transitional import read_transitional, seed_transition_points
from .common import bucket_label, skill_model


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


def _skipped(fc, run_dir: Path, parts: dict) -> dict:
    """A dataset below finetune.min_train_rows: results.md and results.json say so; no error."""
    counts = {f"positions_{k}": len(v) for k, v in parts.items()}
    why = (f"{counts['positions_train']} train positions hold '{fc.concept or 'any'}', fewer than "
           f"finetune.min_train_rows={fc.min_train_rows}")
    print(f"skipped: {why}")
    atomic_write_text(run_dir / "results.md", f"# Calibration fine-tuning: skipped\n\nconcept `{fc.concept or 'all'}`: {why}; "
                      f"nothing was trained ({counts['positions_val']} val / {counts['positions_test']} test positions).\n")
    summary = {"skipped": True, "skip_reason": why, "concept": fc.concept, **counts}
    atomic_write_json(run_dir / "results.json", summary)
    return summary


def _dataset_seed_tp(moves: MoveSet, before: dict) -> np.ndarray:
    """The test rows' transition points as the dataset gives them (seed convention); a row without
    one (a dataset written without the column) takes the one recomputed before fine-tuning."""
    recomputed = seed_transition_points(before["correct"])
    return np.array([r["dataset_seed_tp"] if r.get("dataset_seed_tp") is not None else t
                     for r, t in zip(moves.rows, recomputed)], dtype=np.int64)


def run(cfg, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    fc = cfg.finetune
    if not fc.transitional:
        raise ConfigError("stage=finetune needs finetune.transitional (a stage=transitional run directory or CSV)")
    rows = read_transitional(fc.transitional)
    usable = finetune_rows(rows, fc.row_filter, fc.target)
    chosen = select_concept(usable, fc.concept)
    split = split_rows(chosen)
    if len(split["train"]) < fc.min_train_rows:
        return _skipped(fc, run_dir, split)
    parts = {k: MoveSet.build(v, run_dir / f"positions_{k}") for k, v in split.items()}
    model = skill_model(cfg, "finetune")
    if fc.side_info_weight and not isinstance(model, Maia2Skill):
        raise ConfigError(f"finetune.side_info_weight={fc.side_info_weight}: {model.name} has no side-info head (set it to 0)")
    trained = select_trainable(model, fc.trainable, fc.freeze_elo)
    n_params = sum(p.numel() for n, p in model.module.named_parameters() if n in set(trained))
    print(f"{len(chosen)} of {len(usable)} positions ({fc.row_filter} of {len(rows)}) hold '{fc.concept or 'any'}': "
          + ", ".join(f"{k} {len(v.rows)}" for k, v in parts.items()) + f"; training {n_params:,} parameters")

    heldout = None
    if fc.heldout_positions:
        store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
        test_idx = store.split_indices("test")
        heldout = (store, np.sort(np.random.default_rng(cfg.seed).permutation(test_idx)[: fc.heldout_positions]))

    def report(m) -> dict:
        rep = transition_report(m, parts["test"])
        if heldout is not None:
            rep["heldout"] = own_bucket_accuracy(m, *heldout)
        return rep

    before = report(model)
    tracker = Tracker(cfg, run_dir, job_type="finetune")
    try:
        total = fc.steps if fc.epochs is None else fc.epochs * steps_per_epoch(len(parts["train"].rows), fc.batch_size)
        bar = tqdm(total=total, desc="finetune", dynamic_ncols=True)
        fit = finetune(model, parts["train"], parts["val"], steps=fc.steps, lr=fc.lr, batch_size=fc.batch_size,
                       side_info_weight=fc.side_info_weight, eval_every=fc.eval_every, seed=cfg.seed,
                       weight_decay=fc.weight_decay, epochs=fc.epochs, patience=fc.patience, buckets=fc.buckets,
                       keep=fc.keep, untouched_is_candidate=fc.untouched_is_candidate, train_mode=fc.train_mode,
                       tracker=tracker, progress=bar.update)
        bar.close()
        save_skill_model(model, run_dir / MODEL_FILE, finetune=str(dict(concept=fc.concept, trainable=fc.trainable, keep=fc.keep)))
        after = report(model)

        tb, ta = before["transition_points"], after["transition_points"]
        summary = {"positions_train": len(parts["train"].rows), "positions_val": len(parts["val"].rows),
                   "positions_test": len(parts["test"].rows), "trainable_parameters": n_params,
                   **{k: v for k, v in fit.items() if k != "val_losses"},
                   **shift_summary(before, after, seed=cfg.seed, score_rows=fc.score_rows),
                   **seed_summary(_dataset_seed_tp(parts["test"], before), seed_transition_points(after["correct"]))}
        if heldout is not None:
            summary["heldout_accuracy_before"] = before["heldout"]["accuracy"]
            summary["heldout_accuracy_after"] = after["heldout"]["accuracy"]
        hist = transition_histogram({"before": tb.tolist(), "after": ta.tolist()}, run_dir / "transition_points.png",
                                    f"transition points of {len(tb)} test positions ({fc.concept or 'all'})")
        acc = bar_by_bucket({"before": before["accuracy"].tolist(), "after": after["accuracy"].tolist()},
                            run_dir / "accuracy_by_bucket.png", "correct move on the test positions", ylabel="accuracy")
        for name, png in (("transition_points", hist), ("accuracy_by_bucket", acc)):
            tracker.log_image(f"finetune/{name}", png)
        lines = _report(model, fc, summary, before, after)
        atomic_write_text(run_dir / "results.md", "\n".join(lines) + "\n")
        atomic_write_json(run_dir / "results.json", {**summary, "accuracy_before": before["accuracy"].tolist(),
                                                     "accuracy_after": after["accuracy"].tolist(),
                                                     "val_losses": fit["val_losses"]})
        tracker.summary(summary)
    finally:
        tracker.finish()
    return summary
