"""Data parallelism under torchrun (PyTorch DDP), and what single-process code needs to stay correct.

`torchrun --nproc_per_node N -m maia_adapt.run stage=train ...` starts N copies of the app. They join
one process group before Hydra runs (so they agree on the run directory), every rank computes its
share of each global batch, DDP averages the gradients, and rank 0 alone writes checkpoints, results
and logs. Without torchrun every helper here is a no-op, so the same code runs single-process.

Backends: NCCL when CUDA is available, gloo otherwise (the CPU tests use gloo). PyTorch's
SyncBatchNorm needs CUDA, so on CPU each rank normalises over its own part of the batch; on GPUs the
Maia-2 trunk's BatchNorm layers become SyncBatchNorm and see the whole global batch.
"""
from __future__ import annotations

import datetime
import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from ..errors import ConfigError

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group that torchrun (or a SLURM job of several tasks, started through
    Hydra's submitit launcher) describes; True when this is a DDP run."""
    if "RANK" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm" \
            and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)  # RANK etc. from SLURM_*
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and os.environ.get("MAIA_ADAPT_DDP_BACKEND", "") != "gloo"
        if cuda:
            torch.cuda.set_device(local_rank())
        # two processes on two cores must not each start a full thread pool
        threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])))
        torch.set_num_threads(threads)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=60))
    return True


def shutdown(clean: bool = True) -> None:
    """Leave the process group before the interpreter exits. Left to the interpreter's teardown, gloo's
    threads sometimes abort a rank whose work is done ("terminate called without an active exception",
    SIGABRT), and torchrun then fails the whole run. `clean`: every rank got here without an error, so
    they can meet once more; after an error a barrier could wait for a rank that is gone."""
    if dist.is_available() and dist.is_initialized():
        if clean:
            barrier()
        dist.destroy_process_group()


def broadcast(obj: T) -> T:
    """Rank 0's value of a picklable object, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def main_first(fn: Callable[[], T]) -> T:
    """Run fn on rank 0, then on the others (e.g. build a cache once, then everyone opens it)."""
    if is_main():
        out = fn()
        barrier()
        return out
    barrier()
    return fn()


def local_rows(n: int, what: str = "batch_size") -> slice:
    """This rank's rows of a global batch of n rows (n must divide evenly)."""
    w = world_size()
    if n % w:
        raise ConfigError(f"{what}={n} does not divide over {w} processes: expected a multiple of {w}")
    per = n // w
    return slice(rank() * per, (rank() + 1) * per)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over the ranks (each computed on its part of the batch)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = all_reduce_sum(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64))
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}


def gather_in_order(local: dict[int, T]) -> list[T]:
    """Items {global position: item} held by different ranks, as one ordered list on every rank."""
    if not is_distributed():
        return [local[k] for k in sorted(local)]
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, local)
    merged = {k: v for p in parts for k, v in p.items()}
    return [merged[k] for k in sorted(merged)]


def wrap(module: torch.nn.Module, device: torch.device | None = None) -> torch.nn.Module:
    """DDP around `module` when distributed (SyncBatchNorm on GPUs), else the module itself."""
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    if device is not None and device.type == "cuda":
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DDP(module, device_ids=[device.index])
    return DDP(module)


def run_stamp() -> datetime.datetime:
    """The start time of the run, rank 0's on every rank (it names the run directory)."""
    return broadcast(datetime.datetime.now())
