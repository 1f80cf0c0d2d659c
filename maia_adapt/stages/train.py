"""stage=train: train Maia-2 from lichess PGN (or the embedded self-play corpus).

Writes into the run directory: checkpoints/ (resumable), model.safetensors (final weights + config),
accuracy_by_bucket.png, metrics.jsonl (through the tracker), summary.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..runtime import distributed
from ..data.preprocess import open_or_build_store
from ..encoding import BUCKET_NAMES, NUM_BUCKETS
from ..errors import ConfigError
from ..analysis.evaluation import evaluate_run, json_safe
from ..layout import MODEL_FILE
from ..model import Maia2, Maia2Config, load_model, save_model
from ..model.maia2 import grow_transformer
from ..model.distill import DistillLoss, prepare_teacher
from ..model.skill import Maia2Skill
from ..model.training import evaluate, lr_at, train_model
from ..reporting.plots import bar_by_bucket
from ..runtime.resume import resume_point
from ..checks import FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, bad, check_section
from .common import check_model_shape, fingerprint, preset_checkpoint, stage_device


READS = ("evaluate",)  # the end-of-training evaluation is stage=evaluate's


@dataclass
class TrainConfig:
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 200
    max_steps: int = 500
    lr_schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    side_info_coefficient: float = 1.0
    value_coefficient: float = 1.0
    eval_every: int = 500
    eval_positions: int = 5000
    checkpoint_every: int = 500
    log_every: int = 50
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # autocast on CUDA only
    # bfloat16 autocast on a CPU too (student and Maia-1 teachers): several times faster where the CPU
    # has bf16 matrix units (AMX, `lscpu | grep amx`), slow emulation where it has not
    cpu_bf16: bool = False
    compile: bool = False
    # batch: BatchNorm normalises each batch (SyncBatchNorm over the global batch under DDP on GPUs;
    # on CPU, where PyTorch has no SyncBatchNorm, each rank's part); frozen: running statistics only
    batchnorm: str = "batch"
    # uniform: positions as the data has them; elo_balanced: each Elo bucket of the player to move
    # equally often (the rare <1100 and >=2000 buckets are otherwise ~10x under-represented)
    sampling: str = "uniform"
    # distillation (model/distill.py): null, or maia1 = every position also supervised at
    # teacher_buckets random Elo buckets by the Maia-1 network of each bucket's band
    teacher: Optional[str] = None
    teacher_buckets: int = 4
    distill_coefficient: float = 1.0
    teacher_history: bool = True  # the teachers see the game's move history (false: lc0's bare-FEN mode)
    teacher_top_k: int = 32  # the teacher's most likely moves the KL runs over (renormalised)
    # beta >= 0: each band's target p_b^(1+beta) / pbar^beta (pbar: the nine networks' mean), which
    # exaggerates what sets a band apart from the others; 0: the network's own distribution
    teacher_amplify: float = 0.0
    # true: every band's target is a straight line in rating fitted to the nine networks per position and
    # move (distill.py smooth_targets; teacher_amplify then exaggerates the line's slope): what changes
    # steadily with skill, without the networks' separate trainings' noise
    teacher_smooth: bool = False
    # weight of a loss on the differences between a position's targets at two buckets (distill.py
    # contrast_loss): the part of the policy the Elo changes, without the part the buckets share
    teacher_contrast: float = 0.0
    # null: the teachers run on every batch (a GPU); N: their targets for N random training positions are
    # computed once and cached beside the store, and training draws from those positions (a CPU)
    teacher_cache_positions: Optional[int] = None
    # DataLoader processes preparing the next batches (0: in the training process); on CUDA the
    # batches are pinned and copied asynchronously
    loader_workers: int = 0
    resume: bool = True  # continue an interrupted run of the same settings
    init_from_checkpoint: bool = False  # start from model.checkpoint instead of random weights
    # with init_from_checkpoint: append this many transformer blocks to the checkpoint's, each starting
    # as the identity (model/maia2.py grow_transformer): more places for the Elo to route the tokens
    grow_vit_blocks: int = 0


SCHEMA = TrainConfig  # cfg.train
RULES = {**{k: POSITIVE_INT for k in ("batch_size", "max_steps", "eval_every", "checkpoint_every", "log_every",
                                    "teacher_top_k", "teacher_cache_positions")},
         **{k: NON_NEGATIVE_INT for k in ("warmup_steps", "grow_vit_blocks", "loader_workers", "eval_positions")},
         "lr": POSITIVE, "min_lr_ratio": FRACTION,
         **{k: NON_NEGATIVE for k in ("teacher_amplify", "teacher_contrast", "distill_coefficient")}}
CHOICES = {"batchnorm": ("batch", "frozen"), "sampling": ("uniform", "elo_balanced")}


def check(cfg) -> None:
    """train.*'s values, and what only acts with another setting (a value that would do nothing fails)."""
    check_section(cfg, "train", RULES, CHOICES)
    tc = cfg.train
    if tc.teacher not in (None, "maia1"):
        bad("train.teacher", tc.teacher, "null or maia1")
    if not 1 <= tc.teacher_buckets <= 11:
        bad("train.teacher_buckets", tc.teacher_buckets, "a number of Elo buckets 1..11")
    for key in ("teacher_amplify", "teacher_contrast", "teacher_smooth"):
        if tc[key] and not tc.teacher:
            bad(f"train.{key}", tc[key], "its default unless train.teacher=maia1 (it shapes the teacher's targets)")
    if tc.teacher_contrast and tc.teacher_buckets < 2:
        bad("train.teacher_contrast", tc.teacher_contrast, "0 unless train.teacher_buckets >= 2 (it compares "
            "a position's conditionings)")
    if tc.grow_vit_blocks and not tc.init_from_checkpoint:
        bad("train.grow_vit_blocks", tc.grow_vit_blocks, "0 unless train.init_from_checkpoint=true (it grows a "
            "trained model; one from random weights takes model.num_blocks_vit)")
    # (a Maia-3 preset names its family, not its file: stage=train refuses Maia-3 when it starts)
    if cfg.stage.name == "train" and not tc.init_from_checkpoint and cfg.model.checkpoint \
            and str(cfg.model.name) != "maia3" and cfg.model.checkpoint != preset_checkpoint(cfg):
        raise ConfigError(f"model.checkpoint={cfg.model.checkpoint!r}: stage=train starts from random weights unless "
                          "train.init_from_checkpoint=true, so the file would not be used: add "
                          "train.init_from_checkpoint=true to train from it, or drop model.checkpoint")
    lr_at(0, 1.0, 0, 1, tc.lr_schedule)  # the schedule's own check, before the first step


def _model(cfg):
    """A new Maia-2 of model.*, or (train.init_from_checkpoint) model.checkpoint's, grown by train.grow_vit_blocks."""
    if str(cfg.model.name) == "maia3":  # not a Maia-2 config: training would build a Maia-2 under its name
        raise ConfigError("stage=train does not take model=maia3: it trains a Maia-2 (model=maia2_small, or the model.* "
                          "shape keys); the tiny Maia-3 is trained by experiments/maia3_tiny/train.py")
    if not cfg.train.init_from_checkpoint:
        return Maia2(Maia2Config.from_any(cfg.model))
    if not cfg.model.checkpoint:
        raise ConfigError("train.init_from_checkpoint=true needs model.checkpoint (a .pt/.safetensors file or run directory)")
    model = load_model(cfg.model.checkpoint, eval=False, attention=(cfg.model.heads, cfg.model.dim_head))
    check_model_shape(cfg.model, model)
    return grow_transformer(model, cfg.train.grow_vit_blocks) if cfg.train.grow_vit_blocks else model


def _teacher(cfg, model, store) -> dict:
    """train_model's loss, extras and rows: the Maia-1 teachers' (train.teacher=maia1), else the defaults."""
    if not cfg.train.teacher:
        return {}
    if distributed.world_size() > 1:
        raise ConfigError("train.teacher=maia1 runs in one process: distillation under torchrun is not supported")
    teacher, extras, train_idx = prepare_teacher(
        Path(cfg.paths.models_root) / "maia1", store, store.split_indices("train"), cfg.train,
        stage_device(cfg, "train"), cfg.data.workers, cfg.seed)
    return {"loss": DistillLoss(model, teacher, cfg.train, cfg.seed), "extras": extras, "train_idx": train_idx}


def _bucket_table(result: dict, acc: list) -> str:
    """accuracy_by_bucket.md."""
    table = "\n".join(
        f"| {name} | {result[f'count_bucket_{i}']} | {acc[i]:.3f} |" for i, name in enumerate(BUCKET_NAMES)
    )
    return ("| Elo bucket | positions | top-1 accuracy |\n|---|---|---|\n" + table
            + f"\n| all | {result['positions']} | {result['accuracy']:.3f} |\n")


def run(cfg, frame) -> dict:
    run_dir = frame.dir
    # under torchrun rank 0 builds the position store (if it is not cached) while the others wait
    store = distributed.main_first(lambda: open_or_build_store(cfg.data, cfg.paths.cache_dir))
    model = _model(cfg)
    teacher = _teacher(cfg, model, store)
    resume = resume_point(run_dir, fingerprint(cfg), cfg.train.resume)
    tracker = frame.tracker(continues=resume is not None)
    train_model(model, store, cfg.train, run_dir, tracker=tracker, seed=cfg.seed, resume_from=resume,
                **teacher)
    if not distributed.is_main():
        return {}
    device = stage_device(cfg, "train")
    rng = np.random.default_rng(cfg.seed + 1)
    test_idx = np.sort(rng.permutation(store.split_indices("test"))[: cfg.train.eval_positions])
    result = evaluate(model, store, test_idx, device=device)
    # the numbers stage=evaluate reports (top1, top1_macro, per bucket, skill gaps, skill matrix), on
    # the same test positions
    skill = evaluate_run(Maia2Skill(model, name=cfg.model.name), store, cfg.evaluate, run_dir,
                         f"{cfg.model.name} after {cfg.train.max_steps} steps (test split)", seed=cfg.seed,
                         indices=test_idx)
    model.cpu().eval()
    path = save_model(model, run_dir / MODEL_FILE, steps=int(cfg.train.max_steps))
    acc = [result[f"accuracy_bucket_{i}"] for i in range(NUM_BUCKETS)]
    png = bar_by_bucket({"test": acc}, run_dir / "accuracy_by_bucket.png",
                        f"Held-out top-1 move accuracy ({result['positions']} positions, overall {result['accuracy']:.3f})")
    tracker.log({f"test/{k}": v for k, v in result.items() if not k.startswith("count")}, step=int(cfg.train.max_steps))
    tracker.log_image("test/accuracy_by_bucket", png)
    if cfg.logger.log_checkpoints:
        tracker.log_artifact(path, name="maia2-model", type="model")
    (run_dir / "accuracy_by_bucket.md").write_text(_bucket_table(result, acc))
    return json_safe({  # strict JSON: an empty bucket's accuracy is null, not NaN
        **skill,  # first, so that "model" below is the file written, not the evaluation's model name
        "model": str(path), "resumed_from": str(resume) if resume else None, "test_accuracy": result["accuracy"],
        "test_positions": result["positions"], "test_value_mse": result["value_loss"],
        **{f"test_accuracy_bucket_{i}": acc[i] for i in range(NUM_BUCKETS)}})
