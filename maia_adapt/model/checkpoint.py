"""Load and save Maia-2 weights: official `.pt` checkpoints and our own safetensors files.

Official checkpoints are `torch.load(path)["model_state_dict"]`, keys possibly prefixed `module.`
(saved from DataParallel). Their architecture is read off the tensor shapes, except the attention
head count, which no shape shows (see infer_config). Our checkpoints are safetensors with the
architecture config as JSON in the metadata, so a file is self-describing. Every file's tensors are
checked against the model they load into (load_state_strict): key, shape, dtype, finiteness.
"""
from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..io import check_tensor_values, to_json
from .maia2 import Maia2, Maia2Config

CONFIG_KEY = "maia_adapt.model_config"


def _strip_module(state: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state.items()}


# the fields an architecture record must hold: without one of them the file's model is not known (the
# dropout rates may be absent; they change nothing a loaded model computes in eval mode)
_SHAPE_FIELDS = tuple(f.name for f in fields(Maia2Config) if not f.name.startswith("dropout"))


def infer_config(state: dict, heads: int | None = None, attention: tuple[int, int] | None = None) -> Maia2Config:
    """Architecture of a Maia-2 state dict, from its tensor shapes.

    The head count is visible in no shape (only heads x dim_head, the attention width), so it is never
    guessed: it is `heads` when given; else `attention` = (heads, dim_head) when their product is the
    file's width (the app passes model.heads and model.dim_head); else 16 x 64 when every shape is
    the official Maia-2's (the published rapid and blitz checkpoints); otherwise a CheckpointError
    says what to give.
    """
    try:
        inner = state["transformer.elo_layers.0.0.to_qkv.weight"].shape[0] // 3
        cfg = dict(
            input_channels=state["chess_cnn.conv1.weight"].shape[1],
            dim_cnn=state["chess_cnn.conv1.weight"].shape[0],
            num_blocks_cnn=len({k.split(".")[2] for k in state if k.startswith("chess_cnn.layers.")}),
            dim_vit=state["to_patch_embedding.0.weight"].shape[0],
            num_blocks_vit=len({k.split(".")[2] for k in state if k.startswith("transformer.elo_layers.")}),
            vit_length=state["chess_cnn.conv_last.weight"].shape[0],
            elo_dim=state["elo_embedding.weight"].shape[1],
            num_elo_buckets=state["elo_embedding.weight"].shape[0],
            num_moves=state["fc_1.weight"].shape[0],
        )
    except KeyError as e:
        raise CheckpointError(f"not a Maia-2 state dict: key {e.args[0]} is missing") from None
    except IndexError:  # a tensor with fewer dimensions than Maia-2's
        raise CheckpointError("not a Maia-2 state dict: its tensors do not have Maia-2's dimensions") from None
    bad = [k for k, v in cfg.items() if v < 1] + (["attention width"] if inner < 1 else [])
    if bad:
        raise CheckpointError(f"not a Maia-2 state dict: {bad[0]} is 0")
    official = Maia2Config()
    if heads is None and attention is not None and attention[0] * attention[1] == inner:
        heads = attention[0]
    if heads is None and all(getattr(official, k) == v for k, v in cfg.items()) and inner == 16 * 64:
        heads = official.heads
    if heads is None:
        given = f"; model.heads x model.dim_head = {attention[0]} x {attention[1]} = {attention[0] * attention[1]} " \
                f"does not match it" if attention is not None else ""
        raise CheckpointError(f"a .pt state dict does not record the attention head count (its attention width is {inner} "
                              f"= heads x dim_head{given}): give the heads (load_model(path, heads=...), or model.heads and "
                              "model.dim_head in the app), or save the model as safetensors (save_model), which records it")
    if heads < 1 or inner % heads:
        raise CheckpointError(f"heads={heads}: the attention width {inner} is not a multiple of it")
    return Maia2Config(**cfg, heads=heads, dim_head=inner // heads)


def config_from_metadata(meta: dict, source: str) -> Maia2Config | None:
    """The architecture recorded in a safetensors file's metadata (None when there is none), checked
    field by field: a damaged record or one written by a newer version is one CheckpointError."""
    if CONFIG_KEY not in meta:
        return None
    what = f"{source}: metadata '{CONFIG_KEY}'"
    try:
        rec = json.loads(meta[CONFIG_KEY])
    except ValueError as e:
        raise CheckpointError(f"{what} is not JSON ({e}): expected the architecture written by save_model") from None
    if not isinstance(rec, dict):
        raise CheckpointError(f"{what} is a JSON {type(rec).__name__}: expected an object of architecture fields")
    known = {f.name: f for f in fields(Maia2Config)}
    unknown = sorted(set(rec) - set(known))
    if unknown:
        raise CheckpointError(f"{what} has the unknown field '{unknown[0]}' (written by a newer maia-adapt?): expected "
                              f"only {', '.join(known)}")
    missing = [k for k in _SHAPE_FIELDS if k not in rec]
    if missing:
        raise CheckpointError(f"{what} lacks the field '{missing[0]}': expected every one of {', '.join(_SHAPE_FIELDS)}")
    for k, v in rec.items():
        if k.startswith("dropout"):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1
            expected = "a number in [0, 1]"
        else:
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
            expected = "a positive integer"
        if not ok:
            raise CheckpointError(f"{what}: field '{k}' is {v!r}: expected {expected}")
    return Maia2Config(**rec)


def load_state_strict(model: torch.nn.Module, state: dict, source: str) -> None:
    """load_state_dict with one-line errors naming the offending key: unknown, missing, of another
    shape, of another kind of dtype (integer weights, float counters) or not finite."""
    own = model.state_dict()
    for k, v in state.items():
        if k not in own:
            raise CheckpointError(f"{source}: unknown key '{k}' (not a parameter of this {type(model).__name__} architecture)")
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{source}: key '{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{source}: key '{missing[0]}' is missing ({len(missing)} missing in all)")
    check_tensor_values(source, state, integer={k for k, v in own.items() if not v.is_floating_point()})
    model.load_state_dict(state, strict=True)


def _unpickling_error(path: Path, e: Exception) -> CheckpointError:
    """One line for what torch.load says of a file it will not read: its weights-only unpickler's
    several paragraphs advise weights_only=False, which for a file of unknown origin means running
    whatever code it holds; name what it holds instead."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found or "Weights only load failed" in text:
        held = f" ({found.group(1)})" if found else ""
        return CheckpointError(f"checkpoint {path} holds pickled Python objects{held} besides tensors, which maia-adapt "
                               "never unpickles: expected a state dict of tensors (torch.save(model.state_dict())) or "
                               "a .safetensors file")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return CheckpointError(f"checkpoint {path} could not be read by torch.load ({type(e).__name__}: {first}): expected an "
                           "official .pt file or a .safetensors file")


def read_checkpoint(path) -> tuple[dict, Maia2Config | None]:
    """(state dict, architecture config or None) of an official .pt or our .safetensors file."""
    from ..layout import LAST_CHECKPOINT, MODEL_FILE

    path = Path(path)
    if path.is_dir():
        for name in (MODEL_FILE, LAST_CHECKPOINT):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path}: no {MODEL_FILE} or {LAST_CHECKPOINT} in this run directory")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: expected an official .pt file or a .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({e})") from None
        return _strip_module(state), config_from_metadata(meta, str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unpickling_error(path, e) from None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path}: expected a state dict or a dict with 'model_state_dict'")
    return _strip_module(obj), None


def load_model(path, config=None, device="cpu", eval: bool = True, heads: int | None = None,
               attention: tuple[int, int] | None = None) -> Maia2:
    """Load a Maia-2 from an official checkpoint, our safetensors checkpoint or a run directory.

    `config` (Maia2Config, dict or DictConfig) overrides the architecture; by default it comes from
    the file's metadata or, for .pt state dicts, from the tensor shapes, with the head count from
    `heads` or `attention` (see infer_config).
    """
    state, file_cfg = read_checkpoint(path)
    try:
        cfg = Maia2Config.from_any(config) if config is not None else (file_cfg or infer_config(state, heads, attention))
    except CheckpointError as e:
        if str(e).startswith("not a Maia-2"):  # e.g. an SAE or another model's file given as model.checkpoint
            keys = ", ".join(sorted(state)[:4])
            raise CheckpointError(f"checkpoint {path}: {e} (it holds {keys}...: another architecture?)") from None
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    model = Maia2(cfg)
    load_state_strict(model, state, str(path))
    model.to(device)
    return model.eval() if eval else model


def model_metadata(model: Maia2, **extra) -> dict[str, str]:
    meta = {CONFIG_KEY: to_json(model.cfg.to_dict())}
    meta.update({k: v if isinstance(v, str) else to_json(v) for k, v in extra.items()})
    return meta


def save_model(model: Maia2, path, **extra_metadata) -> Path:
    """Write weights + architecture as one self-describing safetensors file, atomically."""
    from ..io import save_safetensors

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(state, path, model_metadata(model, **extra_metadata))
