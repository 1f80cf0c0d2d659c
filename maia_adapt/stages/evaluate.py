"""stage=evaluate: top-1 accuracy (overall, per Elo bucket, macro) and the skill matrix of any model.

`model=maia2_small` / `model=maia2 model.checkpoint=...` / `model=maia1` (the family) /
`model=maia1 model.rating=1500` / `model=maia3 model.checkpoint=...` (with `evaluate.ratings=[...]`
also a sweep over ratings: rating_sweep.csv/.json). Writes results.md, summary.json, skill_matrix.csv and
skill_matrix.png into the run directory (maia_adapt/evaluation.py holds the logic).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..data.preprocess import open_or_build_store
from ..analysis.evaluation import SPLITS, evaluate_run, sample_positions
from ..model.skill import load_skill_model
from ..checks import POSITIVE_INT, bad, check_section
from .common import check_model_shape, stage_device


@dataclass
class EvaluateConfig:
    """stage=evaluate (and the end of stage=train): move accuracy and the skill matrix of any model."""

    split: str = "test"  # train | val | test | all
    # positions drawn uniformly at random from the split (so `top1` is the split's own accuracy and each
    # bucket gets rows in proportion to its share); null: every position of the split
    positions: Optional[int] = 20000
    # Maia-1 only: inputs with the game's history (null: model.history)
    history: Optional[bool] = None
    # the opponent bucket under each conditioning column: data (the real opponent's; default) | same (= column)
    oppo: str = "data"
    n_boot: int = 1000  # paired bootstrap resamples of games for every 95% interval
    batch_size: int = 512
    device: str = "auto"  # auto | cpu | cuda
    # model=maia3 only (a continuous Elo): also sweep these ratings (rating_sweep.csv: top-1 per player
    # bucket at each); null: the 11 buckets' skill matrix only
    ratings: Optional[list[float]] = None


SCHEMA = EvaluateConfig  # cfg.evaluate
RULES = {"positions": POSITIVE_INT, "n_boot": POSITIVE_INT, "batch_size": POSITIVE_INT}
CHOICES = {"split": SPLITS, "oppo": ("data", "same")}


def check(cfg) -> None:
    check_section(cfg, "evaluate", RULES, CHOICES)
    ratings = cfg.evaluate.ratings
    if ratings is not None:
        if cfg.model.name != "maia3":
            bad("evaluate.ratings", list(ratings), "null unless model=maia3 (the other families take Elo buckets only)")
        if not ratings or not all(0 <= r <= 5000 for r in ratings):
            bad("evaluate.ratings", list(ratings), "a non-empty list of ratings 0..5000 (Maia-3 clamps to it)")


def _rating_sweep(model, store, indices, ev, run_dir) -> dict:
    from ..analysis.rating_sweep import rating_sweep, write_rating_sweep
    from ..io import atomic_write_json

    sweep = rating_sweep(model, store, indices, list(ev.ratings), batch_size=ev.batch_size, oppo=ev.oppo)
    write_rating_sweep(run_dir, sweep)
    atomic_write_json(run_dir / "rating_sweep.json", sweep)
    return {"rating_sweep_top1": sweep["top1"], "rating_sweep_best_rating_bucket": sweep["best_rating_bucket"]}


def run(cfg, frame) -> dict:
    ev = cfg.evaluate
    model = load_skill_model(cfg.model, history=ev.history, device=stage_device(cfg, "evaluate"))
    check_model_shape(cfg.model, model)
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    hist = getattr(model, "history", None)
    title = (f"{model.name}{'' if hist is None else (', with history' if hist else ', no history')}"
             f" on {cfg.data.name} ({ev.split} split)")
    indices = sample_positions(store, ev.split, ev.positions, seed=cfg.seed)
    summary = evaluate_run(model, store, ev, frame.dir, title, seed=cfg.seed, indices=indices)
    if ev.ratings:  # Maia-3's continuous Elo, on the same positions
        summary.update(_rating_sweep(model, store, indices, ev, frame.dir))
    return {"model": model.name, "history": hist, "split": ev.split, **summary}
