"""Load and save Maia-2 weights: official `.pt` checkpoints and our own safetensors files.

Official checkpoints are `torch.load(path)["model_state_dict"]`, keys possibly prefixed `module.`
(saved from DataParallel). Their architecture is read off the tensor shapes. Our checkpoints are
safetensors with the architecture config as JSON in the metadata, so a file is self-describing.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..io import to_json
from .maia2 import Maia2, Maia2Config

CONFIG_KEY = "maia_adapt.model_config"


def _strip_module(state: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state.items()}


def infer_config(state: dict, heads: int | None = None) -> Maia2Config:
    """Architecture of a Maia-2 state dict, from its tensor shapes.

    Head count is not visible in the shapes; the official models use 16 heads of 64, so an inner
    dimension of 1024 gives 16 x 64, otherwise heads of 64 are assumed unless `heads` is given.
    """
    try:
        inner = state["transformer.elo_layers.0.0.to_qkv.weight"].shape[0] // 3
        heads = heads or max(1, inner // 64)
        return Maia2Config(
            input_channels=state["chess_cnn.conv1.weight"].shape[1],
            dim_cnn=state["chess_cnn.conv1.weight"].shape[0],
            num_blocks_cnn=len({k.split(".")[2] for k in state if k.startswith("chess_cnn.layers.")}),
            dim_vit=state["to_patch_embedding.0.weight"].shape[0],
            num_blocks_vit=len({k.split(".")[2] for k in state if k.startswith("transformer.elo_layers.")}),
            vit_length=state["chess_cnn.conv_last.weight"].shape[0],
            elo_dim=state["elo_embedding.weight"].shape[1],
            heads=heads,
            dim_head=inner // heads,
            num_elo_buckets=state["elo_embedding.weight"].shape[0],
            num_moves=state["fc_1.weight"].shape[0],
        )
    except KeyError as e:
        raise CheckpointError(f"not a Maia-2 state dict: key {e.args[0]} is missing") from None


def load_state_strict(model: Maia2, state: dict, source: str) -> None:
    """load_state_dict with one-line errors naming the offending key and both shapes."""
    own = model.state_dict()
    for k, v in state.items():
        if k not in own:
            raise CheckpointError(f"{source}: unknown key '{k}' (not a parameter of this Maia-2 architecture)")
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{source}: key '{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{source}: key '{missing[0]}' is missing ({len(missing)} missing in all)")
    model.load_state_dict(state, strict=True)


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
        cfg = Maia2Config(**json.loads(meta[CONFIG_KEY])) if CONFIG_KEY in meta else None
        return _strip_module(state), cfg
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} could not be read by torch.load ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path}: expected a state dict or a dict with 'model_state_dict'")
    return _strip_module(obj), None


def load_model(path, config=None, device="cpu", eval: bool = True) -> Maia2:
    """Load a Maia-2 from an official checkpoint, our safetensors checkpoint or a run directory.

    `config` (Maia2Config, dict or DictConfig) overrides the architecture; by default it comes from
    the file's metadata or, for official checkpoints, from the tensor shapes.
    """
    state, file_cfg = read_checkpoint(path)
    try:
        cfg = Maia2Config.from_any(config) if config is not None else (file_cfg or infer_config(state))
    except CheckpointError as e:  # e.g. an SAE or another model's file given as model.checkpoint
        keys = ", ".join(sorted(state)[:4])
        raise CheckpointError(f"checkpoint {path}: {e} (it holds {keys}...: another architecture?)") from None
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
