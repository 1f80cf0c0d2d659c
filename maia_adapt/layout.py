"""Where things are: the package's own folders, and the run-directory layout: what each stage writes, and how a later stage finds it.

A stage that hands an artifact to another names it here, once: the writer calls the function to
get the path, and the reader calls the same function (with the run directory the user gave) or
`resolve` (for a setting that takes a file or a run directory). Every run directory also has
results.md / results.json / metrics.jsonl / .hydra/ (written by each stage and the app).

    <train run>/model.safetensors                    stage=train, stage=finetune (MODEL_FILE)
    <train run>/checkpoints/last.safetensors         a resumable run's latest weights
    <transitional run>/transitional.csv              stage=transitional (the rows `transitional.require` keeps)
    <transitional run>/all_positions.csv             every position searched, when a rule dropped some
    <probe run>/probes/<site>/bucket_<b>.safetensors stage=probe
    <threats run>/detection_<site>.csv               stage=threats (features ranked per concept)
    <sae run>/saes/<site>/                           stage=sae (one dictionary folder per site)
    <transcoder run>/transcoders/layer_<l>/          stage=transcoder

<site> is the hook name with dots as underscores (`site_slug`).
"""
from __future__ import annotations

from pathlib import Path

from .errors import MaiaAdaptError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent  # the source checkout when the package runs from one
CONF_DIR = PACKAGE_DIR / "conf"
ASSETS = PACKAGE_DIR / "assets"


def project_root() -> Path:
    """`paths.root`: the source checkout holding the package (a clone, an editable install), else the
    working directory. An installed package lives in site-packages, where no cache or data belongs."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()

MODEL_FILE = "model.safetensors"
LAST_CHECKPOINT = "checkpoints/last.safetensors"
TRANSITIONAL_CSV = "transitional.csv"
ALL_POSITIONS_CSV = "all_positions.csv"  # stage=transitional with a `require` rule: every position searched
SAES_DIR = "saes"


def site_slug(site: str) -> str:
    """A hook name as a file-name part: blocks.1.hook_resid_post -> blocks_1_hook_resid_post."""
    return site.replace(".", "_")


def probe_file(run_dir, site: str, bucket: int) -> Path:
    return Path(run_dir) / "probes" / site_slug(site) / f"bucket_{int(bucket)}.safetensors"


def detection_table(run_dir, site: str) -> Path:
    return Path(run_dir) / f"detection_{site_slug(site)}.csv"


def sae_folder(run_dir, site: str) -> Path:
    return Path(run_dir) / SAES_DIR / site_slug(site)


def transcoder_folder(run_dir, layer: int) -> Path:
    return Path(run_dir) / "transcoders" / f"layer_{int(layer)}"


def resolve(path, *candidates: str, what: str) -> Path:
    """A setting that names a file, or an earlier run directory holding one of `candidates` (first
    match wins). `what` says which stage writes it, for the one-line error."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for c in candidates:
            if (p / c).is_file():
                return p / c
        raise MaiaAdaptError(f"{p}: no {' or '.join(candidates)} in this directory (expected {what})")
    raise MaiaAdaptError(f"{p} not found: expected {what} (a file, or a run directory holding {' or '.join(candidates)})")
