"""stage=evaluate: top-1 accuracy (overall, per Elo bucket, macro) and the skill matrix of any model.

`model=maia2_small` / `model=maia2 model.checkpoint=...` / `model=maia1` (the family) /
`model=maia1 model.rating=1500` / `model=maia3 model.checkpoint=...` (with `evaluate.ratings=[...]`
also a sweep over ratings: rating_sweep.csv/.json). Writes results.md, summary.json, skill_matrix.csv and
skill_matrix.png into the run directory (maia_adapt/evaluation.py holds the logic).
"""
from __future__ import annotations

from pathlib import Path

from ..config import check_model_shape
from ..data.preprocess import open_or_build_store
from ..analysis.evaluation import evaluate_run, sample_positions
from ..model.skill import load_skill_model
from ..model.training import resolve_device


def run(cfg, run_dir: Path) -> dict:
    ev = cfg.evaluate
    model = load_skill_model(cfg.model, history=ev.history, device=resolve_device(ev.device))
    check_model_shape(cfg.model, model)
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    hist = getattr(model, "history", None)
    title = (f"{model.name}{'' if hist is None else (', with history' if hist else ', no history')}"
             f" on {cfg.data.name} ({ev.split} split)")
    indices = sample_positions(store, ev.split, ev.positions, seed=cfg.seed)
    summary = evaluate_run(model, store, ev, run_dir, title, seed=cfg.seed, indices=indices)
    if ev.ratings:  # Maia-3's continuous Elo, on the same positions
        from ..analysis.rating_sweep import rating_sweep, write_rating_sweep
        from ..io import atomic_write_json

        sweep = rating_sweep(model, store, indices, list(ev.ratings), batch_size=ev.batch_size, oppo=ev.oppo)
        write_rating_sweep(run_dir, sweep)
        atomic_write_json(Path(run_dir) / "rating_sweep.json", sweep)
        summary["rating_sweep_top1"] = sweep["top1"]
        summary["rating_sweep_best_rating_bucket"] = sweep["best_rating_bucket"]
    return {"model": model.name, "history": hist, "split": ev.split, **summary}
