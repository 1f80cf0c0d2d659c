"""stage=evaluate: top-1 accuracy (overall, per Elo bucket, macro) and the skill matrix of any model.

`model=maia2_small` / `model=maia2 model.checkpoint=...` / `model=maia1` (the family) /
`model=maia1 model.rating=1500`. Writes results.md, summary.json, skill_matrix.csv and
skill_matrix.png into the run directory (maia_adapt/evaluation.py holds the logic).
"""
from __future__ import annotations

from ..config import check_model_shape
from ..data.preprocess import open_or_build_store
from ..analysis.evaluation import evaluate_run
from ..model.skill import load_skill_model
from ..model.training import resolve_device


def run(cfg, frame) -> dict:
    ev = cfg.evaluate
    model = load_skill_model(cfg.model, history=ev.history, device=resolve_device(ev.device))
    check_model_shape(cfg.model, model)
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    hist = getattr(model, "history", None)
    title = (f"{model.name}{'' if hist is None else (', with history' if hist else ', no history')}"
             f" on {cfg.data.name} ({ev.split} split)")
    summary = evaluate_run(model, store, ev, frame.dir, title, seed=cfg.seed)
    return {"model": model.name, "history": hist, "split": ev.split, **summary}
