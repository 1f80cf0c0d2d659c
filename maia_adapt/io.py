"""Atomic file writes and safetensors with metadata: a file that exists is complete.

Every result and checkpoint goes through these helpers: the bytes go to a temporary file in the same
folder, are flushed to disk, and the file is renamed into place (atomic on POSIX), so a run killed
mid-write leaves the previous version, never half a file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError


def atomic_write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # a full disk: say which file could not be written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_ready(obj):
    """`obj` with NaN/inf as None and numpy/torch scalars and arrays as Python values: strict JSON
    (jq, browsers, other languages) has no NaN, and an empty Elo bucket's accuracy is one."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {(k.item() if isinstance(k, np.generic) else k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        return json_ready(obj.item())
    return obj


def to_json(obj, indent: int | None = None, sort_keys: bool = False) -> str:
    """Strict JSON text for every JSON the project writes: non-finite numbers become null, objects that
    JSON has no type for (paths, dates) their str()."""
    return json.dumps(json_ready(obj), indent=indent, sort_keys=sort_keys, default=str, allow_nan=False)


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, to_json(obj, indent=1) + "\n")


def atomic_write_csv(path, rows: list[dict]) -> Path:
    """A CSV with a header from the first row's keys, written atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def save_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict | None = None) -> Path:
    """Save tensors with string metadata (non-string values are JSON-encoded), atomically."""
    from safetensors.torch import save

    meta = {k: v if isinstance(v, str) else to_json(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(tensors, metadata=meta))


def check_tensor_values(source, tensors: dict[str, torch.Tensor], integer=frozenset()) -> None:
    """Weights are floating point and finite, and the keys in `integer` (BatchNorm's batch counters)
    are of an integer dtype: load_state_dict and copy_ convert silently, so integer weights or NaN
    would load and predict NaN with an arbitrary top move."""
    for k, v in tensors.items():
        if k in integer:
            if v.is_floating_point() or v.is_complex() or v.dtype == torch.bool:
                raise CheckpointError(f"{source}: key '{k}' has dtype {v.dtype}: expected an integer tensor (a counter)")
            continue
        if not v.is_floating_point():
            raise CheckpointError(f"{source}: key '{k}' has dtype {v.dtype}: expected floating-point weights")
        bad = int((~torch.isfinite(v)).sum())
        if bad:
            raise CheckpointError(f"{source}: key '{k}' holds {bad} NaN or infinite values (of {v.numel()}): "
                                  "expected finite weights")


def load_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, with a one-line error for a missing or corrupt file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found: expected a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None

