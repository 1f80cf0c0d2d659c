"""Saving and loading dictionaries in a layout SAELens users recognise: a folder with
`sae.safetensors` (W_enc [d, F], b_enc, W_dec [F, d], b_dec, threshold) and `cfg.json`."""
from __future__ import annotations

import copy
import json
from pathlib import Path


from ..errors import CheckpointError
from ..io import atomic_write_json, load_safetensors, save_safetensors
from .sae import SAEConfig, SparseAutoencoder


def save_sae(sae: SparseAutoencoder, folder, extra: dict | None = None) -> Path:
    """Write the SAE with its normalisation folded in, so it works on raw activations."""
    folder = Path(folder)
    folded = copy.deepcopy(sae).cpu()
    folded.fold_normalisation()
    cfg = sae.cfg
    tensors = {"W_enc": folded.W_enc, "b_enc": folded.b_enc, "W_dec": folded.W_dec, "b_dec": folded.b_dec}
    if cfg.architecture == "jumprelu":
        tensors["threshold"] = folded.threshold
    if cfg.architecture == "batchtopk":
        tensors["threshold"] = folded.inference_threshold.expand(cfg.dim).clone()
    save_safetensors(tensors, folder / "sae.safetensors", {"format": "maia-adapt-sae-v1"})
    atomic_write_json(folder / "cfg.json", {
        "architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.dim, "k": cfg.k,
        "hook_name": cfg.site, "token_pooling": cfg.token_pooling, "elo": cfg.elo,
        "normalize_activations": "folded" if cfg.normalise else "none",
        "norm_scale_folded": float(sae.norm_scale), "apply_b_dec_to_input": True,
        "dtype": "float32", "model_name": (extra or {}).get("model_name", "maia2"),
        "training": cfg.to_dict(), **(extra or {}),
    })
    return folder


def load_sae(path, device="cpu") -> SparseAutoencoder:
    """An SAE from a folder written by save_sae (or a run directory holding one in `sae/`)."""
    path = Path(path)
    if path.is_dir() and not (path / "cfg.json").is_file() and (path / "sae" / "cfg.json").is_file():
        path = path / "sae"
    if not (path / "cfg.json").is_file():
        raise CheckpointError(f"{path}: no cfg.json (expected a folder with sae.safetensors and cfg.json)")
    meta = json.loads((path / "cfg.json").read_text())
    cfg = SAEConfig(**{**meta["training"], "d_in": meta["d_in"], "dim": meta["d_sae"], "normalise": False})
    sae = SparseAutoencoder(cfg)
    tensors, _ = load_safetensors(path / "sae.safetensors")
    for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
        want = tuple(getattr(sae, k).shape)
        if k not in tensors or tuple(tensors[k].shape) != want:
            got = tuple(tensors[k].shape) if k in tensors else "missing"
            raise CheckpointError(f"{path / 'sae.safetensors'}: key '{k}' has shape {got}, cfg.json implies {want}")
        getattr(sae, k).data.copy_(tensors[k])
    if cfg.architecture == "jumprelu":
        sae.log_threshold.data.copy_(tensors["threshold"].log())
    if cfg.architecture == "batchtopk":
        sae.inference_threshold.fill_(float(tensors["threshold"][0]))
    return sae.to(device).eval()


def find_saes(path) -> list[Path]:
    """The SAE folders under a stage=sae run directory (saes/<site>/), or [path] for one SAE folder."""
    path = Path(path)
    if (path / "cfg.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.glob("saes/*/cfg.json")) or sorted(p.parent for p in path.glob("*/cfg.json"))
    if not found:
        raise CheckpointError(f"{path}: no SAE found (expected a folder with cfg.json, or a stage=sae run directory with saes/)")
    return found
