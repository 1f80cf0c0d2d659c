"""stage=train: train Maia-2 from lichess PGN (or the embedded self-play corpus).

Writes into the run directory: checkpoints/ (resumable), model.safetensors (final weights + config),
accuracy_by_bucket.png, metrics.jsonl (through the tracker), summary.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..runtime import distributed
from ..config import check_model_shape
from ..data.preprocess import open_or_build_store
from ..encoding import BUCKET_NAMES, NUM_BUCKETS
from ..errors import ConfigError
from ..analysis.evaluation import evaluate_run, json_safe
from ..layout import MODEL_FILE
from ..model import Maia2, Maia2Config, load_model, save_model
from ..model.maia2 import grow_transformer
from ..model.distill import prepare_teacher
from ..model.skill import Maia2Skill
from ..model.training import evaluate, resolve_device, train_model
from ..reporting import bar_by_bucket
from ..runtime.resume import config_fingerprint, mark_done, resume_point
from ..runtime.tracking import Tracker


def run(cfg, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if str(cfg.model.name) == "maia3":  # not a Maia-2 config: training would build a Maia-2 under its name
        raise ConfigError("stage=train does not take model=maia3: it trains a Maia-2 (model=maia2_small, or the model.* "
                          "shape keys); Maia-3 checkpoints are trained with the maia3 package's own code")
    # under torchrun rank 0 builds the position store (if it is not cached) while the others wait
    store = distributed.main_first(lambda: open_or_build_store(cfg.data, cfg.paths.cache_dir))
    if cfg.train.init_from_checkpoint:
        if not cfg.model.checkpoint:
            raise ConfigError("train.init_from_checkpoint=true needs model.checkpoint (a .pt/.safetensors file or run directory)")
        model = load_model(cfg.model.checkpoint, eval=False, attention=(cfg.model.heads, cfg.model.dim_head))
        check_model_shape(cfg.model, model)
        if cfg.train.grow_vit_blocks:
            model = grow_transformer(model, cfg.train.grow_vit_blocks)
    else:
        model = Maia2(Maia2Config.from_any(cfg.model))
    teacher = extras = train_idx = None
    if cfg.train.teacher:
        if distributed.world_size() > 1:
            raise ConfigError("train.teacher=maia1 runs in one process: distillation under torchrun is not supported")
        teacher, extras, train_idx = prepare_teacher(
            Path(cfg.paths.models_root) / "maia1", store, store.split_indices("train"), cfg.train,
            resolve_device(cfg.train.device), cfg.data.workers, cfg.seed)
    resume = resume_point(run_dir, config_fingerprint(cfg), cfg.train.resume)
    tracker = Tracker(cfg, run_dir, job_type="train", continues=resume is not None)
    try:
        train_model(model, store, cfg.train, run_dir, tracker=tracker, seed=cfg.seed, resume_from=resume,
                    teacher=teacher, extras=extras, train_idx=train_idx)
        if not distributed.is_main():
            return {}
        device = resolve_device(cfg.train.device)
        test_idx = store.split_indices("test")
        rng = np.random.default_rng(cfg.seed + 1)
        test_idx = np.sort(rng.permutation(test_idx)[: cfg.train.eval_positions])
        result = evaluate(model, store, test_idx, device=device)
        # the numbers stage=evaluate reports (top1, top1_macro, per bucket, skill gaps, skill matrix), on
        # the same test positions
        skill = evaluate_run(Maia2Skill(model, name=cfg.model.name), store, cfg.evaluate, run_dir,
                             f"{cfg.model.name} after {cfg.train.max_steps} steps (test split)", seed=cfg.seed,
                             indices=test_idx)
        model.cpu().eval()
        path = save_model(model, run_dir / MODEL_FILE, steps=int(cfg.train.max_steps))
        acc = [result[f"accuracy_bucket_{i}"] for i in range(NUM_BUCKETS)]
        png = bar_by_bucket(
            {"test": acc}, run_dir / "accuracy_by_bucket.png",
            f"Held-out top-1 move accuracy ({result['positions']} positions, overall {result['accuracy']:.3f})",
        )
        tracker.log({f"test/{k}": v for k, v in result.items() if not k.startswith("count")}, step=int(cfg.train.max_steps))
        tracker.log_image("test/accuracy_by_bucket", png)
        if cfg.logger.log_checkpoints:
            tracker.log_artifact(path, name="maia2-model", type="model")
        table = "\n".join(
            f"| {name} | {result[f'count_bucket_{i}']} | {acc[i]:.3f} |" for i, name in enumerate(BUCKET_NAMES)
        )
        (run_dir / "accuracy_by_bucket.md").write_text(
            "| Elo bucket | positions | top-1 accuracy |\n|---|---|---|\n" + table
            + f"\n| all | {result['positions']} | {result['accuracy']:.3f} |\n"
        )
        summary = {
            **skill,  # first, so that "model" below is the file written, not the evaluation's model name
            "model": str(path),
            "resumed_from": str(resume) if resume else None,
            "test_accuracy": result["accuracy"],
            "test_positions": result["positions"],
            "test_value_mse": result["value_loss"],
            **{f"test_accuracy_bucket_{i}": acc[i] for i in range(NUM_BUCKETS)},
        }
        summary = json_safe(summary)  # strict JSON: an empty bucket's accuracy is null, not NaN
        tracker.summary(summary)
    finally:
        tracker.finish()
    mark_done(run_dir)
    return summary
