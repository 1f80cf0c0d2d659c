"""stage=finetune: skill calibration on concept positions of a transitional dataset, before vs after.

`model=maia1` fine-tunes the Maia-1 family: bucket b's examples train the network of its band, and
`finetune.trainable=policy_head` is each network's two policy convs (the study's head-only test).

Writes model.safetensors (the best-validation checkpoint; usable as model.checkpoint=<this run>, with
model=maia1 for a fine-tuned family),
results.md / results.json (per Elo bucket: accuracy against the correct move on the test positions and
on ordinary held-out positions, before and after; transition points before and after and their
shift), transition_points.png, accuracy plots, metrics.jsonl.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.preprocess import open_or_build_store
from ..encoding import NUM_BUCKETS
from ..errors import ConfigError
from ..analysis.evaluation import own_bucket_accuracy
from ..analysis.calibration import (MoveSet, concept_rows, finetune, select_trainable, shift_summary, split_rows, transition_report)
from ..io import atomic_write_json, atomic_write_text
from ..layout import MODEL_FILE
from ..model.skill import Maia2Skill, save_skill_model
from ..reporting.plots import bar_by_bucket, transition_histogram
from ..runtime.tracking import Tracker
from ..analysis.transitional import read_transitional
from .common import bucket_label, skill_model


def _report(model, fc, summary: dict, before: dict, after: dict) -> list[str]:
    """results.md's lines."""
    lines = ["# Calibration fine-tuning", "", f"model `{model.name}`; "
             f"concept `{fc.concept or 'all'}`, trainable `{fc.trainable}` ({summary['trainable_parameters']:,} parameters)"
             + (f", Elo embedding {'frozen' if fc.freeze_elo else 'trained'}" if isinstance(model, Maia2Skill) else "")
             + f"; {summary['positions_train']} train / {summary['positions_val']} "
             f"val / {summary['positions_test']} test positions; best validation loss {summary['best_val_loss']:.4f} at step "
             f"{summary['best_step']} of {fc.steps}.", "",
             f"Mean transition point {summary['mean_transition_point_before']:.2f} -> {summary['mean_transition_point_after']:.2f} "
             f"(shift {summary['mean_shift']:+.2f} [{summary['mean_shift_ci'][0]:+.2f}, {summary['mean_shift_ci'][1]:+.2f}], 95% "
             f"bootstrap; never right: {summary['never_before']} -> {summary['never_after']}; "
             f"right at every bucket: {summary['correct_everywhere_before']} -> {summary['correct_everywhere_after']}).", "",
             "![transition points](transition_points.png)", "", "![accuracy](accuracy_by_bucket.png)", "",
             "| Elo bucket | test: correct move before | after | held-out: human move before | after |", "|---|---|---|---|---|"]
    for k in range(NUM_BUCKETS):
        h = (f"{before['heldout'][f'accuracy_bucket_{k}']:.3f} | {after['heldout'][f'accuracy_bucket_{k}']:.3f}"
             if 'heldout' in before else "- | -")
        lines.append(f"| {bucket_label(model, k)} | {before['accuracy'][k]:.3f} | {after['accuracy'][k]:.3f} | {h} |")
    return lines


def run(cfg, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    fc = cfg.finetune
    if not fc.transitional:
        raise ConfigError("stage=finetune needs finetune.transitional (a stage=transitional run directory or CSV)")
    rows = read_transitional(fc.transitional)
    chosen = concept_rows(rows, fc.concept) if fc.concept else rows
    parts = {k: MoveSet.build(v, run_dir / f"positions_{k}") for k, v in split_rows(chosen).items()}
    model = skill_model(cfg, "finetune")
    if fc.side_info_weight and not isinstance(model, Maia2Skill):
        raise ConfigError(f"finetune.side_info_weight={fc.side_info_weight}: {model.name} has no side-info head (set it to 0)")
    trained = select_trainable(model, fc.trainable, fc.freeze_elo)
    n_params = sum(p.numel() for n, p in model.module.named_parameters() if n in set(trained))
    print(f"{len(chosen)} of {len(rows)} positions hold '{fc.concept or 'any'}': "
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
        bar = tqdm(total=fc.steps, desc="finetune", dynamic_ncols=True)
        fit = finetune(model, parts["train"], parts["val"], steps=fc.steps, lr=fc.lr, batch_size=fc.batch_size,
                       side_info_weight=fc.side_info_weight, eval_every=fc.eval_every, seed=cfg.seed,
                       tracker=tracker, progress=bar.update)
        bar.close()
        save_skill_model(model, run_dir / MODEL_FILE, finetune=str(dict(concept=fc.concept, trainable=fc.trainable)))
        after = report(model)

        tb, ta = before["transition_points"], after["transition_points"]
        summary = {"positions_train": len(parts["train"].rows), "positions_val": len(parts["val"].rows),
                   "positions_test": len(parts["test"].rows), "trainable_parameters": n_params,
                   **{k: v for k, v in fit.items() if k != "val_losses"}, **shift_summary(before, after, seed=cfg.seed)}
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
