"""Dictionary files in SAELens's layout, so `sae_lens.SAE.load_from_disk(folder)` reads them.

A folder holds `sae_weights.safetensors` and `cfg.json` (SAELens 6's names). Normalisation is folded
into the weights, so every file works on raw activations and says `normalize_activations: "none"`.

SAEs (`save_sae` / `load_sae`), x [.., d] -> z [.., F] -> x_hat [.., d]:

| ours      | SAELens `architecture` | tensors                                                          |
|-----------|------------------------|------------------------------------------------------------------|
| jumprelu  | `jumprelu`             | W_enc [d, F], b_enc [F], W_dec [F, d], b_dec [d], threshold [F] |
| topk      | `topk` (+ `k`)         | W_enc, b_enc, W_dec, b_dec                                       |
| batchtopk | `jumprelu`             | as jumprelu; threshold = the inference threshold on every latent |
| relu_l1   | `standard`             | W_enc, b_enc, W_dec, b_dec                                       |

with `apply_b_dec_to_input: true` (z = act((x - b_dec) W_enc + b_enc)). A BatchTopK SAE that never
estimated its threshold encodes with per-sample top-k, and is saved as `topk` for the same reason.

Transcoders (`transcoder.save_transcoder` / `load_transcoder`), x [.., d_in] -> y [.., d_out]:
W_enc [d_in, F], b_enc [F], W_dec [F, d_out], b_dec [d_out] and, with a skip path, W_skip
[d_out, d_in] in SAELens's orientation: y = act(x W_enc + b_enc) W_dec + b_dec + x W_skip^T.
ReLU transcoders (k = 0) are SAELens's `transcoder` / `skip_transcoder`. SAELens has no TopK
transcoder, so k > 0 is written as `topk_transcoder` / `topk_skip_transcoder` with `k`: SAELens
refuses the unknown architecture instead of running it as a ReLU transcoder (which fires several
times as many latents), unless `dictionaries.saelens.register()` has taught it the architecture.

Beyond SAELens's keys, cfg.json keeps `hook_name` (and `hook_name_out`), `model_name`, our own
`maia_adapt_architecture` and the full training config under `training`; `load_sae` /
`load_transcoder` rebuild our modules from them, and also read plain SAELens folders of the
architectures above.

Older runs wrote `sae.safetensors` / `transcoder.safetensors` with our architecture names, and their
transcoders' W_skip as [d_in, d_out]; the loaders read those by their file name, which is what decides
the orientation of a square W_skip (its shape cannot).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..layout import SAES_DIR
from ..io import atomic_write_json, check_tensor_values, load_safetensors, save_safetensors
from .sae import SAEConfig, SparseAutoencoder

WEIGHTS = "sae_weights.safetensors"  # SAELens's SAE_WEIGHTS_FILENAME
LEGACY_SAE_WEIGHTS = "sae.safetensors"  # maia-adapt-sae-v1, before the SAELens layout
SAELENS_SAE = {"jumprelu": "jumprelu", "topk": "topk", "batchtopk": "jumprelu", "relu_l1": "standard"}
FROM_SAELENS = {"jumprelu": "jumprelu", "topk": "topk", "standard": "relu_l1"}


def saelens_cfg(architecture: str, d_in: int, d_sae: int, hook_name: str, model_name: str,
                apply_b_dec_to_input: bool) -> dict:
    """The keys SAELens's SAEConfig reads, for a float32 file with normalisation folded in. Without a
    `sae_lens_version` SAELens reads it as its pre-6.0 flat layout and moves hook_name and model_name
    into its cfg.metadata itself."""
    return {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": apply_b_dec_to_input, "normalize_activations": "none",
            "reshape_activations": "none", "hook_name": hook_name, "model_name": model_name}


def read_folder(path, legacy: str, what: str) -> tuple[Path, dict, Path]:
    """(folder, cfg.json, weight file) of a dictionary folder; the weight file is WEIGHTS or, for
    folders written before the SAELens layout, `legacy`."""
    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise CheckpointError(f"{path}: no cfg.json (expected a {what} folder with {WEIGHTS} and cfg.json)")
    try:
        meta = json.loads((path / "cfg.json").read_text())
    except ValueError as e:
        raise CheckpointError(f"{path / 'cfg.json'}: not JSON ({e})") from None
    for name in (WEIGHTS, legacy):
        if (path / name).is_file():
            return path, meta, path / name
    raise CheckpointError(f"{path}: has cfg.json but neither {WEIGHTS} nor {legacy}")


def meta_get(meta: dict, cfg_path: Path, key: str):
    if key not in meta:
        raise CheckpointError(f"{cfg_path}: key '{key}' missing")
    return meta[key]


def check_tensors(file: Path, tensors: dict, want: dict[str, tuple]) -> None:
    """Every expected key present with its shape, nothing else (an unknown key is a layout we do not know),
    and every tensor finite floating-point weights."""
    for k, shape in want.items():
        if k not in tensors:
            raise CheckpointError(f"{file}: key '{k}' missing (expected shape {shape})")
        if tuple(tensors[k].shape) != shape:
            raise CheckpointError(f"{file}: key '{k}' has shape {tuple(tensors[k].shape)}, cfg.json implies {shape}")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise CheckpointError(f"{file}: unexpected key '{extra[0]}' (expected only {', '.join(want)})")
    check_tensor_values(file, tensors)


def folded_copy(module) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A float32 CPU copy of a dictionary (SAE or transcoder) with its normalisation folded into the
    weights, so it works on raw activations, and its four SAELens tensors."""
    folded = copy.deepcopy(module).cpu().float()
    folded.fold_normalisation()
    return folded, {"W_enc": folded.W_enc, "b_enc": folded.b_enc, "W_dec": folded.W_dec, "b_dec": folded.b_dec}


def save_sae(sae: SparseAutoencoder, folder, extra: dict | None = None) -> Path:
    """Write the SAE with its normalisation folded in, so it works on raw activations."""
    folder = Path(folder)
    folded, tensors = folded_copy(sae)
    cfg = sae.cfg
    arch = SAELENS_SAE[cfg.architecture]
    if cfg.architecture == "jumprelu":
        tensors["threshold"] = folded.threshold
    elif cfg.architecture == "batchtopk":
        if float(folded.inference_threshold) >= 0:
            tensors["threshold"] = folded.inference_threshold.expand(cfg.dim).clone()
        else:
            arch = "topk"
    extra = dict(extra or {})
    out = saelens_cfg(arch, cfg.d_in, cfg.dim, cfg.site, extra.pop("model_name", "maia2"), True)
    if arch == "topk":
        out["k"] = cfg.k
    save_safetensors({k: v.detach() for k, v in tensors.items()}, folder / WEIGHTS, {"format": "maia-adapt-sae-v2"})
    atomic_write_json(folder / "cfg.json", {
        **out, "maia_adapt_architecture": cfg.architecture, "token_pooling": cfg.token_pooling, "elo": cfg.elo,
        "norm_scale_folded": float(sae.norm_scale), "training": cfg.to_dict(), **extra,
    })
    return folder


def load_sae(path, device="cpu") -> SparseAutoencoder:
    """An SAE from a folder written by save_sae, an older `sae.safetensors` folder, a SAELens folder of
    architecture standard / topk / jumprelu, or a stage=sae run directory holding exactly one SAE."""
    path = Path(path)
    if path.is_dir() and not (path / "cfg.json").is_file():
        found = find_saes(path)
        if len(found) > 1:
            raise CheckpointError(f"{path}: {len(found)} SAEs in this run directory ({', '.join(p.name for p in found)}): "
                                  "name one folder")
        path = found[0]
    path, meta, file = read_folder(path, LEGACY_SAE_WEIGHTS, "SAE")
    cfg_path = path / "cfg.json"
    d_in, dim = meta_get(meta, cfg_path, "d_in"), meta_get(meta, cfg_path, "d_sae")
    if "training" in meta:
        cfg = SAEConfig(**{**meta["training"], "d_in": d_in, "dim": dim, "normalise": False})
    else:  # written by SAELens itself
        arch = meta_get(meta, cfg_path, "architecture")
        if arch not in FROM_SAELENS:
            raise CheckpointError(f"{cfg_path}: architecture '{arch}': expected one of {', '.join(FROM_SAELENS)}")
        for key, want in (("apply_b_dec_to_input", True), ("normalize_activations", "none")):
            if meta.get(key, want) != want:
                raise CheckpointError(f"{cfg_path}: {key}={meta[key]!r}: only {want!r} is supported")
        cfg = SAEConfig(architecture=FROM_SAELENS[arch], d_in=d_in, dim=dim, k=int(meta.get("k", 1)),
                        site=meta.get("hook_name", meta.get("metadata", {}).get("hook_name", "")), normalise=False)
    sae = SparseAutoencoder(cfg)
    tensors, _ = load_safetensors(file)
    want = {k: tuple(getattr(sae, k).shape) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
    thresholded = cfg.architecture == "jumprelu" or (cfg.architecture == "batchtopk" and "threshold" in tensors)
    if thresholded:
        want["threshold"] = (dim,)
    check_tensors(file, tensors, want)
    for k in ("W_enc", "b_enc", "W_dec", "b_dec"):
        getattr(sae, k).data.copy_(tensors[k])
    if cfg.architecture == "jumprelu":
        # SAELens computes relu(pre) * (pre > t), we pre * (pre > t): the same only where t >= 0
        if (tensors["threshold"] < 0).any():
            raise CheckpointError(f"{file}: key 'threshold' has negative entries (a JumpReLU threshold is >= 0)")
        sae.log_threshold.data.copy_(tensors["threshold"].log())
    elif thresholded:
        t = tensors["threshold"]
        if not torch.equal(t, t[:1].expand_as(t)):
            raise CheckpointError(f"{file}: key 'threshold' differs between latents; a BatchTopK SAE has one threshold")
        # negative only in older files of an SAE that never estimated it: it then encodes with top-k
        sae.inference_threshold.fill_(float(t[0]))
    return sae.to(device).eval()


def find_saes(path) -> list[Path]:
    """The SAE folders under a stage=sae run directory (saes/<site>/), or [path] for one SAE folder."""
    path = Path(path)
    if (path / "cfg.json").is_file():
        return [path]
    found = sorted(p.parent for p in path.glob(f"{SAES_DIR}/*/cfg.json")) or sorted(p.parent for p in path.glob("*/cfg.json"))
    if not found:
        raise CheckpointError(f"{path}: no SAE found (expected a folder with cfg.json, or a stage=sae run directory with {SAES_DIR}/)")
    return found
