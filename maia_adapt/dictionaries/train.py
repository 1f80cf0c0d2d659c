"""Training several sparse dictionaries from one stream of activations, resumably.

The stream is a sequence of *chunks*: `make_chunk(r)` returns {site: [N, d]} activations for chunk r,
a deterministic function of r (positions sampled with a seed derived from r). Each chunk is shuffled
with a permutation derived from r and cut into batches, so step s always sees the same batch: a run
resumed at step s recomputes chunk s // batches_per_chunk and continues exactly.

Under torchrun every rank holds the same chunk (its forward pass is split across the ranks, see
`collect_activations(shard=True)`), trains on its slice of each global batch, and DDP averages the
gradients; firing statistics are summed over the ranks, and rank 0 alone writes checkpoints.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..runtime import distributed
from ..runtime.checkpointing import latest_step_dir, load_optimizer, optimizer_tensors, read_state, write_step_dir
from ..runtime.faults import reach
from ..io import load_safetensors, save_safetensors, to_json
from .sae import SparseAutoencoder


@dataclass
class DictionaryRunConfig:
    """How stage=sae and stage=transcoder run their DictionaryTrainer (their sections extend it)."""

    log_every: int = 50
    checkpoint_every: int = 500
    resume: bool = True
    device: str = "auto"  # where the model runs and the dictionaries train: auto | cpu | cuda
    bf16: bool = True  # bfloat16 autocast of the dictionary losses (CUDA only)
    compile: bool = False  # torch.compile the dictionary losses


def lr_factor(step: int, steps: int, warmup: int, decay_start: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    start = int(decay_start * steps)
    if step < start:
        return 1.0
    return max(0.0, (steps - step) / max(1, steps - start))


@dataclass
class FiringStats:
    """Samples since each latent last fired (dead latents) and firing counts in a window (dense ones).

    The counters live on the training device and are updated without reading them back, so a step
    does not wait for the GPU; `seen` (host side) bounds `since` and says when a latent can be dead."""

    dim: int
    device: torch.device | str = "cpu"
    since: torch.Tensor = field(init=False)
    window_fires: torch.Tensor = field(init=False)
    window_samples: int = 0
    seen: int = 0

    def __post_init__(self):
        self.since = torch.zeros(self.dim, dtype=torch.long, device=self.device)
        self.window_fires = torch.zeros(self.dim, dtype=torch.long, device=self.device)

    def update(self, fired: torch.Tensor, n: int) -> None:
        """fired [F]: samples each latent fired on among this rank's n."""
        # summed over the ranks of a DDP run, so every rank agrees on which latents are dead
        fired = distributed.all_reduce_sum(fired)
        n *= distributed.world_size()
        self.since += n
        self.since.masked_fill_(fired > 0, 0)
        self.window_fires += fired
        self.window_samples += n
        self.seen += n

    def dead(self, dead_after: int) -> torch.Tensor | None:
        """The dead latents, or None while there are none (the host reads the device once a latent
        can be dead, not before)."""
        if self.seen < dead_after:
            return None
        mask = self.since >= dead_after
        return mask if bool(mask.any()) else None

    def reset_window(self) -> None:
        self.window_fires.zero_()
        self.window_samples = 0


class _Losses(nn.Module):
    """A dictionary whose forward is its training losses: what DDP wraps to average the gradients."""

    def __init__(self, dictionary: nn.Module):
        super().__init__()
        self.dictionary = dictionary

    def forward(self, x, **kw):
        return self.dictionary.losses(x, **kw)


def _adam(module: nn.Module) -> torch.optim.Adam:
    # not fused=True: 6x faster on 2 CPU cores (1.05 s -> 0.18 s a step for 50M parameters), but a
    # run resumed from a checkpoint then drifts from the uninterrupted one (tests/test_sae.py)
    return torch.optim.Adam(module.parameters(), lr=module.cfg.lr, betas=(0.9, 0.999))


class DictionaryTrainer:
    """Trains named dictionaries {name: (module, site)} on batches {site: activations}.

    `batch_size` is the global batch; under torchrun each rank is given its slice of it. On a GPU,
    `bf16` runs the losses' matmuls under bfloat16 autocast (parameters, optimizer and the loss
    reductions stay float32). `compile` puts the losses through torch.compile: the step-varying
    sparsity scale is a device tensor and AuxK's dead mask is None or a tensor, so each dictionary
    compiles at most two graphs (before and after its first dead latent), not one per step."""

    def __init__(self, dictionaries: dict[str, tuple[SparseAutoencoder, str]], steps: int, batch_size: int,
                 device: torch.device | str = "cpu", bf16: bool = False, compile: bool = False):
        self.dicts = dictionaries
        self.steps = steps
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.autocast = bf16 and self.device.type == "cuda"
        self.rows = distributed.local_rows(batch_size, "batch_size")
        for m, _ in dictionaries.values():
            m.to(self.device)
        self.loss_fns = {n: distributed.wrap(_Losses(m), self.device) for n, (m, _) in dictionaries.items()}
        if compile:
            # each dictionary compiles at most two graphs of the same code (before and after AuxK
            # starts); past dynamo's per-code limit (8) a many-site run would fall back to eager.
            # Imported here: dynamo takes ~2 s to import, which every app start would pay
            from torch import _dynamo

            dyn = _dynamo.config
            limit = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
            setattr(dyn, limit, max(getattr(dyn, limit), 2 * len(dictionaries) + 2))
            self.loss_fns = {n: torch.compile(f) for n, f in self.loss_fns.items()}
        self.opts = {n: _adam(m) for n, (m, _) in dictionaries.items()}
        self.stats = {n: FiringStats(m.cfg.dim, self.device) for n, (m, _) in dictionaries.items()}
        self.sparsity = {n: torch.zeros((), device=self.device) for n in dictionaries}
        self.step = 0

    def train_step(self, batch: dict[str, torch.Tensor], metrics: bool = True) -> dict[str, float]:
        """One optimizer step of every dictionary; with `metrics` the step's losses as floats (which
        waits for the device: the training loop asks only on logging steps)."""
        out = {}
        for name, (sae, site) in self.dicts.items():
            cfg = sae.cfg
            x = batch[site]
            for g in self.opts[name].param_groups:
                g["lr"] = cfg.lr * lr_factor(self.step, self.steps, cfg.warmup_steps, cfg.decay_start)
            self.sparsity[name].fill_(min(1.0, (self.step + 1) / max(1, getattr(cfg, "sparsity_warmup_steps", 0))))
            # AuxK is for the TopK family (transcoders included); the others never get a dead mask
            auxk = cfg.aux_k and getattr(cfg, "architecture", "topk") in ("topk", "batchtopk")
            dead = self.stats[name].dead(cfg.dead_after) if auxk else None
            # a transcoder predicts another site's activation; an SAE its own input
            extra = {"target": batch[sae.target_site]} if getattr(sae, "target_site", None) else {}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                res = self.loss_fns[name](x, sparsity_scale=self.sparsity[name], dead=dead, **extra)
            self.opts[name].zero_grad(set_to_none=True)
            res["loss"].backward()
            sae.project_decoder_grad()
            self.opts[name].step()
            sae.normalise_decoder()
            self.stats[name].update(res["fired"], x.shape[0])
            if not metrics:
                continue
            target = res["target"] if "target" in res else x * sae.norm_scale
            var = (target - target.mean(0)).pow(2).sum(-1).mean()
            out.update({
                f"{name}/loss": res["loss"].item(),
                f"{name}/mse": res["mse"].item(),
                f"{name}/fvu": (res["mse"] / var).item(),
                f"{name}/l0": res["l0"].item(),
            })
            for k in ("l0_loss", "l1_loss", "aux_loss"):
                if k in res:
                    out[f"{name}/{k}"] = res[k].item()
        self.step += 1
        return distributed.mean_over_ranks(out) if metrics else out

    def firing_metrics(self) -> dict[str, float]:
        out = {}
        for name, (sae, _) in self.dicts.items():
            st = self.stats[name]
            out[f"{name}/dead_fraction"] = (st.since >= sae.cfg.dead_after).float().mean().item()
            if st.window_samples:
                freq = st.window_fires.float() / st.window_samples
                out[f"{name}/dense_fraction"] = (freq > sae.cfg.dense_threshold).float().mean().item()
        return out

    # ---- checkpoints ----------------------------------------------------------------------------
    def save(self, ckpt_dir: Path, keep: int = 2) -> Path:
        from safetensors.torch import save_file

        def write(tmp: Path) -> None:
            for name, (sae, _) in self.dicts.items():
                tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
                ot, ometa = optimizer_tensors(self.opts[name], prefix="opt.")
                tensors.update(ot)
                st = self.stats[name]
                tensors["stats.since"] = st.since.cpu().clone()
                tensors["stats.window_fires"] = st.window_fires.cpu().clone()
                meta = {"optimizer": to_json(ometa), "window_samples": str(st.window_samples), "seen": str(st.seen)}
                save_file(tensors, str(tmp / f"{name}.safetensors"), metadata=meta)

        return write_step_dir(ckpt_dir, self.step, write, {"names": list(self.dicts)}, keep)

    def load(self, step_dir: Path) -> None:
        from safetensors import safe_open

        for name, (sae, _) in self.dicts.items():
            with safe_open(str(Path(step_dir) / f"{name}.safetensors"), framework="pt") as f:
                meta = f.metadata()
                t = {k: f.get_tensor(k) for k in f.keys()}
            sae.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
            load_optimizer(self.opts[name], t, json.loads(meta["optimizer"]), prefix="opt.")
            st = self.stats[name]
            st.since = t["stats.since"].to(self.device)
            st.window_fires = t["stats.window_fires"].to(self.device)
            st.window_samples = int(meta["window_samples"])
            # checkpoints from before `seen` was recorded: the oldest counter is a valid bound
            st.seen = int(meta.get("seen", int(st.since.max())))
        self.step = int(read_state(step_dir)["step"])


class BestKeeper:
    """The best-scoring weights of each dictionary so far, on disk (atomic), surviving a resume."""

    def __init__(self, folder: Path, trainer: DictionaryTrainer):
        self.folder, self.trainer = folder, trainer
        self.scores: dict[str, float] = {}
        for name in trainer.dicts:
            p = folder / f"{name}.safetensors"
            if p.is_file():
                _, meta = load_safetensors(p)
                self.scores[name] = float(meta["score"])

    def offer(self, scores: dict[str, float]) -> None:
        for name, score in scores.items():
            if name not in self.scores or score > self.scores[name]:
                self.scores[name] = score
                sae = self.trainer.dicts[name][0]
                save_safetensors({k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()},
                                 self.folder / f"{name}.safetensors", {"score": str(score), "step": str(self.trainer.step)})

    def restore(self) -> dict[str, dict]:
        """Load the best weights into each dictionary; {name: {score, step}}."""
        out = {}
        for name, (sae, _) in self.trainer.dicts.items():
            p = self.folder / f"{name}.safetensors"
            if p.is_file():
                tensors, meta = load_safetensors(p)
                sae.load_state_dict(tensors)
                out[name] = {"score": float(meta["score"]), "step": int(meta["step"])}
        return out


def start_or_resume(trainer: DictionaryTrainer, fingerprint: str, run_dir: Path, resume: bool = True) -> Path | None:
    """Mark run_dir as a run of these settings (`fingerprint`: runtime.resume's) and, with resume, load
    the last checkpoint of an unfinished earlier run of the same settings (and keep its calibration
    best); returns that checkpoint, if any."""
    from ..runtime.resume import resume_point

    last = resume_point(run_dir, fingerprint, resume, carry=("best",))
    if last is not None:
        trainer.load(last)
    return last


def chunk_batches(chunk: dict[str, torch.Tensor], batch_size: int, seed: int, r: int):
    """The batches of chunk r, in a shuffled order that depends only on (seed, r)."""
    import numpy as np  # here, not at the top: the trainer itself needs only torch (benchmarks/gpu_all.sh)

    n = len(next(iter(chunk.values())))
    perm = torch.from_numpy(np.random.default_rng([seed, r, 7]).permutation(n))
    return [{s: v[perm[i : i + batch_size]] for s, v in chunk.items()} for i in range(0, n - batch_size + 1, batch_size)]


def train_dictionaries(
    trainer: DictionaryTrainer,
    make_chunk: Callable[[int], dict[str, torch.Tensor]],
    run_dir: Path,
    *,
    seed: int = 0,
    log_every: int = 50,
    checkpoint_every: int = 500,
    tracker=None,
    resume: bool = True,
    calibrate: Callable[[], dict[str, float]] | None = None,
    calibrate_every: int = 0,
) -> dict[str, float]:
    """Run `trainer` to trainer.steps over the chunk stream; checkpoints in run_dir/checkpoints.

    With `calibrate` (returning a score per dictionary, higher is better) called every
    `calibrate_every` steps, the best-scoring weights of each dictionary are kept in run_dir/best.
    """
    from tqdm import tqdm

    ckpt_dir = Path(run_dir) / "checkpoints"
    if resume and (last := distributed.broadcast(latest_step_dir(ckpt_dir))) is not None:
        trainer.load(last)
    main = distributed.is_main()
    # rank 0 calibrates and keeps the best weights; the others wait for it at the next gradient sync
    best = BestKeeper(Path(run_dir) / "best", trainer) if calibrate and main else None
    first = make_chunk(0)
    rows = len(next(iter(first.values())))
    if rows < trainer.batch_size:
        from ..errors import ConfigError

        raise ConfigError(f"a chunk of activations holds {rows} rows, fewer than one batch of {trainer.batch_size}: raise "
                          "chunk_positions (and cache_positions) or lower batch_size")
    per_chunk = rows // trainer.batch_size
    r = trainer.step // per_chunk
    chunk = first if r == 0 else make_chunk(r)
    batches = chunk_batches(chunk, trainer.batch_size, seed, r)
    metrics: dict[str, float] = {}
    t0, seen = time.time(), 0
    bar = tqdm(total=trainer.steps, initial=trainer.step, desc="dictionaries", dynamic_ncols=True, disable=not main)
    while trainer.step < trainer.steps:
        i = trainer.step % per_chunk
        if trainer.step // per_chunk != r:
            r = trainer.step // per_chunk
            batches = chunk_batches(make_chunk(r), trainer.batch_size, seed, r)
        # chunks may live on the CPU (pinned) or already on the trainer's device
        batch = {s: v[trainer.rows].to(trainer.device, non_blocking=True) for s, v in batches[i].items()}
        last = trainer.step + 1 == trainer.steps
        step_metrics = trainer.train_step(batch, metrics=(trainer.step + 1) % log_every == 0 or last)
        metrics = step_metrics or metrics
        seen += trainer.batch_size
        bar.update(1)
        if trainer.step % log_every == 0 or trainer.step == trainer.steps:
            metrics.update(trainer.firing_metrics())
            metrics["samples_per_s"] = seen / max(time.time() - t0, 1e-9)
            for st in trainer.stats.values():
                st.reset_window()
            if tracker:
                tracker.log({f"train/{k}": v for k, v in metrics.items()}, step=trainer.step)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in list(metrics.items())[:3]})
        if best and (trainer.step % calibrate_every == 0 or trainer.step == trainer.steps):
            scores = calibrate()
            reach("calibrated", trainer.step)
            best.offer(scores)
            reach("best_written", trainer.step)
            if tracker:
                tracker.log({f"calibration/{k}": v for k, v in scores.items()}, step=trainer.step)
        # the best weights are written before the step checkpoint, so a resumed run never lacks them
        if main and (trainer.step % checkpoint_every == 0 or trainer.step == trainer.steps):
            trainer.save(ckpt_dir)
            reach("checkpointed", trainer.step)
    bar.close()
    distributed.barrier()
    return metrics
