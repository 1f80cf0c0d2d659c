"""Strict JSON checks: what jq, browsers and other languages accept (no NaN, Infinity or -Infinity)."""
from __future__ import annotations

import json
import struct
from pathlib import Path


def _reject(token: str):
    raise ValueError(f"non-standard JSON constant {token}")


def strict_loads(text: str):
    return json.loads(text, parse_constant=_reject)


def _check(text: str) -> None:
    """Fail on JSON that only Python's lenient parser reads (NaN, Infinity); text that is no JSON at
    all is a file a test damaged on purpose, which is the readers' tests' business."""
    try:
        json.loads(text)
    except ValueError:
        return
    strict_loads(text)


def _safetensors_header(path: Path) -> str | None:
    """The JSON header of a safetensors file (8-byte little-endian length, then the header)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        n = struct.unpack("<Q", head)[0]
        if n > path.stat().st_size - 8:
            return None
        return f.read(n).decode("utf-8", errors="replace")


def check_json_tree(root) -> list[Path]:
    """Check every .json and .jsonl file under root, and the JSON metadata of its .safetensors files;
    returns the files checked (fails naming the file on the first that is not strict JSON)."""
    checked = []
    for path in sorted(Path(root).rglob("*")):
        if "wandb" in path.parts or not path.is_file():
            continue  # W&B's own files are its business
        try:
            if path.suffix == ".json":
                _check(path.read_text(errors="replace"))
            elif path.suffix == ".jsonl":
                for line in path.read_text(errors="replace").splitlines():
                    _check(line)
            elif path.suffix == ".safetensors":
                header = _safetensors_header(path)
                if header is None:
                    continue
                _check(header)
                try:
                    meta = json.loads(header).get("__metadata__") or {}
                except (ValueError, AttributeError):
                    continue
                for value in meta.values():
                    if isinstance(value, str) and value[:1] in "[{":
                        _check(value)
            else:
                continue
        except ValueError as e:
            raise AssertionError(f"{path}: not strict JSON ({e})") from None
        checked.append(path)
    return checked
