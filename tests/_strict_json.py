"""Strict JSON checks: what jq, browsers and other languages accept (no NaN, Infinity or -Infinity)."""
from __future__ import annotations

import json
from pathlib import Path


def _reject(token: str):
    raise ValueError(f"non-standard JSON constant {token}")


def strict_loads(text: str):
    return json.loads(text, parse_constant=_reject)


def check_json_tree(root) -> list[Path]:
    """Parse every .json and .jsonl file under root strictly, and every JSON value in the metadata of
    its .safetensors files; returns the files checked (fails naming the file on the first bad one)."""
    from safetensors import safe_open

    checked = []
    for path in sorted(Path(root).rglob("*")):
        if "wandb" in path.parts or not path.is_file():
            continue  # W&B's own files are its business
        try:
            if path.suffix == ".json":
                strict_loads(path.read_text())
            elif path.suffix == ".jsonl":
                for line in path.read_text().splitlines():
                    strict_loads(line)
            elif path.suffix == ".safetensors":
                try:
                    with safe_open(str(path), framework="pt") as f:
                        meta = f.metadata() or {}
                except Exception:  # a junk file a test wrote on purpose: not JSON's business
                    continue
                for value in meta.values():
                    if value[:1] in "[{":
                        strict_loads(value)
            else:
                continue
        except ValueError as e:
            raise AssertionError(f"{path}: not strict JSON ({e})") from None
        checked.append(path)
    return checked
