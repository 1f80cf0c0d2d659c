"""Training Maia-2 on a position store: losses, schedule, evaluation, resumable checkpoints.

Every step draws its batch and its dropout noise from (seed, step) alone, so a run resumed from a
checkpoint at step s continues exactly as the uninterrupted run would have. Under torchrun each rank
takes its slice of the same global batch and DDP averages the gradients (see maia_adapt.runtime.distributed).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..runtime import distributed
from ..runtime.checkpointing import load_optimizer, optimizer_tensors, read_state, write_step_dir
from ..encoding import NUM_BUCKETS
from ..runtime.faults import reach
from ..errors import ConfigError, MaiaAdaptError
from .inference import BucketTop1, top_move
from .losses import LossWeights, Maia2Loss, maia2_losses
from .maia2 import Maia2


def resolve_device(name: str = "auto", key: str = "device") -> torch.device:
    """'auto' is CUDA when available; under torchrun, CUDA means this rank's GPU. A name torch does
    not know, or CUDA where torch sees none, is one line naming `key` (the config key that set it)."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}='{name}': expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}='{name}': torch sees no CUDA device here (torch.cuda.is_available() is False); "
                          f"use {key}=auto or {key}=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{key}='{name}': torch sees {torch.cuda.device_count()} CUDA device(s)")
    if distributed.is_distributed() and name == "cuda":
        return torch.device("cuda", distributed.local_rank())
    return torch.device(name)


def train_mode(model, freeze_batchnorm: bool = False) -> None:
    """Training mode; with freeze_batchnorm, BatchNorm layers keep normalising with their running
    statistics and do not update them (fine-tuning on a few hundred positions, or DDP on CPU where
    PyTorch has no SyncBatchNorm and exact agreement with one process is wanted)."""
    model.train()
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def lr_at(step: int, base_lr: float, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.1) -> float:
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return base_lr * (1 - (1 - min_ratio) * progress)
    if schedule == "cosine":
        return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise MaiaAdaptError(f"train.lr_schedule '{schedule}': expected cosine, linear or constant")


@torch.no_grad()
def evaluate(model: Maia2, store, indices, batch_size: int = 1024, device="cpu", w: LossWeights | None = None) -> dict:
    """Top-1 (legal-masked) move accuracy per self Elo bucket and overall, value MSE, mean losses."""
    w = w or LossWeights()
    was = model.training
    model.eval()
    top1 = BucketTop1()
    sums = {"policy_loss": 0.0, "side_info_loss": 0.0, "value_loss": 0.0}
    n = 0
    for s in range(0, len(indices), batch_size):
        batch = to_device(store.batch(np.sort(indices[s : s + batch_size])), device)
        out = maia2_losses(model, batch, w)
        top1.add(top_move(out["logits"], batch["legal"]), batch["move"], batch["elo_self"])
        m = len(batch["move"])
        for k in sums:
            sums[k] += float(out[k]) * m
        n += m
    model.train(was)
    res = {k: v / max(n, 1) for k, v in sums.items()}
    acc = top1.results()
    res.update(accuracy=acc.pop("accuracy"), positions=int(n))
    for i in range(NUM_BUCKETS):
        res[f"accuracy_bucket_{i}"] = acc[f"accuracy_bucket_{i}"]
        res[f"count_bucket_{i}"] = int(top1.count[i])
    return res


# ---- checkpoints -----------------------------------------------------------------------------

def save_training_checkpoint(ckpt_dir: Path, step: int, model: Maia2, opt, extra: dict, keep: int = 2) -> Path:
    """checkpoints/step_XXXXXXX/ (model, optimizer, state) plus checkpoints/last.safetensors."""
    from safetensors.torch import save_file

    from ..io import atomic_write_bytes, to_json
    from .checkpoint import model_metadata

    def write(tmp: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata=model_metadata(model, step=step))
        ot, ometa = optimizer_tensors(opt)
        save_file(ot, str(tmp / "optimizer.safetensors"), metadata={"optimizer": to_json(ometa)})

    final = write_step_dir(ckpt_dir, step, write, extra, keep)
    atomic_write_bytes(Path(ckpt_dir) / "last.safetensors", (final / "model.safetensors").read_bytes())
    return final


def load_training_checkpoint(path: Path, model: Maia2, opt) -> dict:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .checkpoint import load_state_strict

    load_state_strict(model, load_file(str(path / "model.safetensors")), str(path / "model.safetensors"))
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["optimizer"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    load_optimizer(opt, tensors, meta)
    return read_state(path)


# ---- the loop --------------------------------------------------------------------------------

def elo_groups(store, train_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows grouped by the mover's Elo bucket: (rows in bucket order, group starts, group
    sizes), empty buckets left out, for train.sampling=elo_balanced."""
    buckets = store.column("elo_self")[train_idx]
    order = train_idx[np.argsort(buckets, kind="stable")]
    counts = np.bincount(buckets, minlength=NUM_BUCKETS)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = counts > 0
    return order, starts[keep], counts[keep]


def _batch_indices(train_idx: np.ndarray, seed: int, step: int, batch_size: int, groups=None) -> np.ndarray:
    rng = np.random.default_rng([seed, step])
    if groups is None:
        return np.sort(train_idx[rng.integers(0, len(train_idx), batch_size)])
    order, starts, counts = groups
    g = rng.integers(0, len(counts), batch_size)
    return np.sort(order[starts[g] + (rng.random(batch_size) * counts[g]).astype(np.int64)])


class StepBatches(torch.utils.data.Dataset):
    """Item i = this rank's rows of the global batch of step start + i: a function of the step alone,
    so DataLoader workers (which prepare batches ahead, pinned on CUDA) never change the result."""

    def __init__(self, store, train_idx: np.ndarray, seed: int, batch_size: int, rows: slice, start: int, stop: int,
                 groups=None, extras: dict | None = None):
        self.store, self.train_idx, self.seed, self.batch_size, self.rows = store, train_idx, seed, batch_size, rows
        self.start, self.stop, self.groups, self.extras = start, stop, groups, extras or {}

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict:
        idx = _batch_indices(self.train_idx, self.seed, self.start + i, self.batch_size, self.groups)[self.rows]
        batch = self.store.batch(idx)
        for name, values in self.extras.items():  # per-row teacher inputs or targets (distillation)
            batch[name] = torch.from_numpy(np.ascontiguousarray(values[idx]))
        return batch


def train_model(
    model: Maia2,
    store,
    cfg,
    run_dir: Path,
    tracker=None,
    seed: int = 0,
    resume_from: Path | None = None,
    loss=None,
    extras: dict | None = None,
    train_idx: np.ndarray | None = None,
) -> dict:
    """Train `model` on `store` with the TrainConfig `cfg`; returns the final evaluation.

    Checkpoints go to run_dir/checkpoints; `resume_from` is a step_* folder to continue from.
    `loss` (model/losses.py) is what each step minimises, by default the official objective at
    cfg's weights; model.distill.DistillLoss with its per-row `extras` (model.distill.prepare_teacher)
    adds the Maia-1 teachers' KL. `train_idx` restricts the training rows.
    """
    device = resolve_device(cfg.device, "train.device")
    freeze_bn = cfg.batchnorm == "frozen"
    model.to(device)
    train_mode(model, freeze_bn)
    loss_fn = loss or Maia2Loss(LossWeights.of(cfg))
    w = loss_fn.w
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_idx = store.split_indices("train") if train_idx is None else train_idx
    val_idx = store.split_indices("val")
    if len(train_idx) == 0:
        raise MaiaAdaptError("training split is empty: the position store holds no training positions")
    rng = np.random.default_rng(seed)
    eval_idx = np.sort(rng.permutation(val_idx)[: cfg.eval_positions]) if len(val_idx) else np.array([], dtype=np.int64)
    start = 0
    if resume_from is not None:
        state = load_training_checkpoint(Path(resume_from), model, opt)
        start = int(state["step"])
        model.to(device)
    amp = cfg.bf16 if device.type == "cuda" else cfg.cpu_bf16
    rows = distributed.local_rows(cfg.batch_size, "train.batch_size")
    step_fn = distributed.wrap(model, device)
    step_fn = torch.compile(step_fn) if cfg.compile else step_fn
    main = distributed.is_main()
    ckpt_dir = Path(run_dir) / "checkpoints"
    last_eval: dict = {}
    t0, seen = time.time(), 0
    workers = cfg.loader_workers
    loader = torch.utils.data.DataLoader(
        StepBatches(store, train_idx, seed, cfg.batch_size, rows, start, cfg.max_steps,
                    elo_groups(store, train_idx) if cfg.sampling == "elo_balanced" else None,
                    extras),
        batch_size=None,
        shuffle=False, num_workers=workers, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    bar = tqdm(zip(range(start, cfg.max_steps), loader), initial=start, total=cfg.max_steps, desc="train",
               dynamic_ncols=True, disable=not main)
    for step, cpu_batch in bar:
        lr = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule, cfg.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        # dropout noise depends on the step (and rank) only
        torch.manual_seed(seed * 1_000_003 + step + 7919 * distributed.rank())
        batch = to_device(cpu_batch, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = loss_fn(step_fn, batch, step)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise MaiaAdaptError(f"non-finite training loss at step {step}: lower train.lr or check the data")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        seen += cfg.batch_size  # positions of the global batch
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            rate = seen / (time.time() - t0)
            metrics = distributed.mean_over_ranks(
                {f"train/{k}": out[k].item() for k in ("loss", "policy_loss", "side_info_loss", "value_loss", "distill_loss", "contrast_loss")
                 if k in out})
            metrics.update({"train/lr": lr, "train/positions_per_s": rate})
            bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", pos_s=f"{rate:.0f}")
            if tracker:
                tracker.log(metrics, step=done)
        # rank 0 evaluates and writes; the other ranks wait for it in the next step's gradient sync
        if main and len(eval_idx) and (done % cfg.eval_every == 0 or done == cfg.max_steps):
            last_eval = evaluate(model, store, eval_idx, device=device, w=w)
            if tracker:
                tracker.log({f"val/{k}": v for k, v in last_eval.items() if not k.startswith("count")}, step=done)
            train_mode(model, freeze_bn)
        if main and (done % cfg.checkpoint_every == 0 or done == cfg.max_steps):
            save_training_checkpoint(ckpt_dir, done, model, opt, {"val_accuracy": last_eval.get("accuracy")})
            reach("checkpointed", done)
    bar.close()
    distributed.barrier()
    return last_eval
