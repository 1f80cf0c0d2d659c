"""The app's configuration, composed: the shared sections here, each stage's own from its module.

maia_adapt/conf/config.yaml starts from `base_config` (the `Config` dataclass) and every group YAML merges into
one of its typed fields, so a misspelt key (`train.lrr=3`) or a value of the wrong type fails before anything runs, and an
unknown option (`stage=nope`) fails with the list of valid ones.

A stage that has settings declares them in its module (maia_adapt/stages/<name>.py): SCHEMA, the dataclass of
cfg.<name>, and check(cfg), its value checks; `Config` gets a field per stage of stages.REGISTRY that has a
SCHEMA, and `validate` runs every check. Adding a stage: its module, conf/stage/<name>.yaml, one REGISTRY line.
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from .checks import FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, bad, check_section
from .data.preprocess import DataConfig
from .layout import ASSETS, CONF_DIR, PACKAGE_DIR, REPO_ROOT, project_root  # noqa: F401  (the app and tests name them here)
from .model.maia2 import Maia2Config
from .runtime.tracking import LoggerConfig
from . import resolvers  # noqa: F401  (registers ${run_dir:...}, ${model_id:...}, ... before any composition)


@dataclass
class StageConfig:
    name: str = MISSING


@dataclass
class ModelConfig(Maia2Config):
    """`model`: the architecture is Maia2Config's own fields (one definition), plus what to load."""

    name: str = "maia2"
    # official .pt file, our .safetensors file or a run directory; null = random initialisation.
    # model=maia1: the folder of maia-1100.pb.gz ... maia-1900.pb.gz (or a fine-tuned family's file)
    checkpoint: Optional[str] = None
    # model=maia1 only: one network (1100..1900) used for every Elo bucket; null = the family, bucket b
    # -> the network of its band (0 -> 1100, 10 -> 1900; see maia_adapt/model/skill.py)
    rating: Optional[int] = None
    # model=maia1 only: lc0 inputs carry the game's history (false: lc0's bare-FEN mode, position repeated)
    history: bool = True
    # model=maia3 only: the published size of a maia3-runtime .pt checkpoint (3m | 5m | 23m | 79m), which
    # such a file does not record; null for a .safetensors file written by maia-adapt (it records its own)
    size: Optional[str] = None


@dataclass
class PathsConfig:
    root: str = "${repo_root:}"
    data_root: str = "${oc.env:MAIA_ADAPT_DATA,${paths.root}/../shared/data}"
    models_root: str = "${oc.env:MAIA_ADAPT_MODELS,${paths.root}/../shared/models}"  # published networks (Maia-1)
    cache_dir: str = "${paths.root}/cache"
    assets: str = "${assets:}"
    outputs: str = "outputs"  # where run directories go (relative: to the working directory)


@dataclass
class Shared:
    """The sections every stage reads and the top-level keys; `Config` adds each stage's own section."""

    stage: StageConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    layer: int = 1  # transformer block used by the site presets (site=resid_post|mlp|attention|study)
    # hook sites of sae.sites, activations.sites and probe.sites unless one sets its own: set by the
    # site group (maia_adapt/conf/site), or directly (sites=[blocks.0.hook_mlp_out])
    sites: list[str] = field(default_factory=lambda: ["blocks.${layer}.hook_resid_post"])
    experiment: str = "default"  # experiment name: W&B group and the run's label
    # the study's protocol (set by the protocol group: maia_adapt/conf/protocol): ours, or the seed's
    # (seed_neurips, seed_revision) with every choice of its code; part of the presets' run directories
    protocol: str = "ours"
    seed: int = 0
    # the summary entry a sweeper optimises (e.g. 'blocks.1.hook_resid_post:sae/kl_recovered_vs_zero')
    objective: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into the run record


def _stage_modules() -> dict:
    from .stages import REGISTRY, stage_module

    return {name: stage_module(name) for name in REGISTRY}


# the stages' own sections, in REGISTRY order, each a field named after its stage (cfg.sae: SAEStageConfig)
Config = make_dataclass("Config", [(name, m.SCHEMA, field(default_factory=m.SCHEMA))
                                   for name, m in _stage_modules().items() if hasattr(m, "SCHEMA")], bases=(Shared,))
Config.__module__ = __name__

_MODEL_RULES = {**{k: POSITIVE_INT for k in ("dim_cnn", "num_blocks_cnn", "dim_vit", "num_blocks_vit", "heads",
                                            "dim_head", "elo_dim")},
                **{k: FRACTION for k in ("dropout_cnn", "dropout_vit", "dropout")}}
_DATA_RULES = {"workers": POSITIVE_INT, "shard_size": POSITIVE_INT, "first_n_plies": NON_NEGATIVE_INT,
               "val_fraction": FRACTION, "test_fraction": FRACTION}
_LOGGER_CHOICES = {"backend": ("wandb", "none"), "mode": ("offline", "online", "disabled")}


def validate(cfg) -> None:
    """Fail before a stage starts, naming the key, when a value is outside what it can mean: the shared
    sections' checks here, then every stage's own (each section is checked whichever stage runs)."""
    check_section(cfg, "model", _MODEL_RULES)
    check_section(cfg, "data", _DATA_RULES)
    check_section(cfg, "logger", choices=_LOGGER_CHOICES)
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        bad("data.val_fraction + data.test_fraction", cfg.data.val_fraction + cfg.data.test_fraction, "less than 1")
    if cfg.model.rating is not None and cfg.model.rating not in range(1100, 2000, 100):
        bad("model.rating", cfg.model.rating, "a Maia-1 band 1100, 1200, ..., 1900 or null")
    if cfg.model.rating is not None and cfg.model.name != "maia1":
        bad("model.rating", cfg.model.rating, "null unless model=maia1 (Maia-2 is conditioned by Elo buckets)")
    if cfg.model.size is not None:
        from .model.maia3 import SIZES

        if cfg.model.name != "maia3":
            bad("model.size", cfg.model.size, "null unless model=maia3 (a Maia-2's shape is its own model.* keys)")
        if str(cfg.model.size).lower() not in SIZES:
            bad("model.size", cfg.model.size, "a published Maia-3 size: " + ", ".join(SIZES))
    for m in _stage_modules().values():
        if hasattr(m, "check"):
            m.check(cfg)


def register() -> None:
    # group YAMLs merge into the typed fields of Config, which validates their keys and types
    ConfigStore.instance().store(name="base_config", node=Config)


register()
