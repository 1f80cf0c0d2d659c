"""Resumable training state on disk, shared by every trainer (Maia-2, SAEs, transcoders).

A checkpoint is a folder `step_XXXXXXX/` written under a temporary name and renamed when complete,
so a folder that exists is whole; `state.json` inside it marks it valid. Optimizer state is stored as
safetensors (tensors) plus JSON (scalars and param groups): no pickle.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError
from .faults import reach
from ..io import to_json


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "") -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"{prefix}{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = float(v)
    return tensors, {"scalars": scalars, "param_groups": sd["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "") -> None:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith(prefix):
            pid, k = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = torch.tensor(v)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_step_dir(ckpt_dir, step: int, write: Callable[[Path], None], state: dict, keep: int = 2) -> Path:
    """Create ckpt_dir/step_XXXXXXX/ atomically: `write(tmp_dir)` fills it, then state.json seals it."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:07d}"
    tmp = ckpt_dir / f".tmp_step_{step:07d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        write(tmp)
        reach("checkpoint_unsealed", step)
        (tmp / "state.json").write_text(to_json({"step": step, **state}))
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
    except Exception as e:  # e.g. a full disk; safetensors reports it as its own error type
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {e}") from e
    reach("checkpoint_sealed", step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    reach("checkpoint_renamed", step)
    for old in sorted(ckpt_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_step_dir(ckpt_dir) -> Path | None:
    done = sorted(p for p in Path(ckpt_dir).glob("step_*") if (p / "state.json").is_file())
    return done[-1] if done else None


def read_state(step_dir) -> dict:
    return json.loads((Path(step_dir) / "state.json").read_text())
