"""Atomic file writes and safetensors with metadata: a file that exists is complete.

Every result and checkpoint goes through these helpers: the bytes go to a temporary file in the same
folder, are flushed to disk, and the file is renamed into place (atomic on POSIX), so a run killed
mid-write leaves the previous version, never half a file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import CheckpointError, MaiaAdaptError


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


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


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

    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(tensors, metadata=meta))


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


def resolve_input(path_or_run_dir, *candidates: str) -> Path:
    """An input named by a file path or by an earlier run directory holding one of `candidates`."""
    p = Path(path_or_run_dir)
    if p.is_file():
        return p
    if p.is_dir():
        for c in candidates:
            if (p / c).exists():
                return p / c
        raise MaiaAdaptError(f"run directory {p} has none of {', '.join(candidates)}")
    raise MaiaAdaptError(f"{p} not found: expected a file or a run directory holding one of {', '.join(candidates)}")
