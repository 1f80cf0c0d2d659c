"""What several stages start with."""
from __future__ import annotations

from omegaconf import OmegaConf

from ..data.preprocess import data_fingerprint
from ..errors import ConfigError
from ..layout import CONF_DIR
from ..model import Maia2Config, load_model
from ..runtime.resume import Fingerprint, config_fingerprint


def preset_checkpoint(cfg):
    """model.checkpoint as the model preset sets it, resolved in this config (it may name ${paths.assets}):
    a preset's file is the architecture's trained copy, which stage=train may leave unused."""
    import copy

    preset = OmegaConf.to_container(_model_preset(str(cfg.model.name)), resolve=False).get("checkpoint")
    c = copy.deepcopy(cfg)
    OmegaConf.update(c, "model.checkpoint", preset, merge=False)
    return c.model.checkpoint


# model.* keys that give the network's shape: they build a new model; a loaded one has the file's
MODEL_SHAPE = ("input_channels", "dim_cnn", "num_blocks_cnn", "dim_vit", "num_blocks_vit", "vit_length", "elo_dim",
               "heads", "dim_head")


def _model_preset(name: str):
    """A model preset's own values, merged over those of the presets it extends (its `defaults`)."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        return OmegaConf.create({})
    node = OmegaConf.load(path)
    parents = [d for d in node.pop("defaults", []) if isinstance(d, str) and d != "_self_"]
    return OmegaConf.merge(*(_model_preset(p) for p in parents), node)


def check_model_shape(model_cfg, model) -> None:
    """Fail, naming the key and both values, when a shape value set for this run (one that differs
    from its model preset's) disagrees with the loaded checkpoint, instead of silently loading the
    file's shape. `model`: a Maia2, a Maia2Skill or a Maia-1 family (which has no such keys)."""
    loaded = getattr(getattr(model, "model", model), "cfg", None)
    if loaded is None or not all(hasattr(loaded, k) for k in MODEL_SHAPE):
        return
    preset = OmegaConf.merge(OmegaConf.create(Maia2Config().to_dict()), _model_preset(model_cfg.name))
    for key in MODEL_SHAPE:
        wanted, has = model_cfg[key], getattr(loaded, key)
        if wanted != preset[key] and wanted != has:
            raise ConfigError(f"model.{key}={wanted}: the checkpoint {model_cfg.checkpoint} has {key}={has} "
                              f"(a loaded model's shape is the file's: drop model.{key})")


def fingerprint(cfg) -> Fingerprint:
    """What a run of this stage reads, hashed: its settings (its section and its module's READS) and the
    position store's identity (another games file, or the same path holding other games, never resumes)."""
    from . import stage_module

    reads = getattr(stage_module(str(cfg.stage.name)), "READS", ())
    return config_fingerprint(cfg, data_fingerprint(cfg.data) if cfg.get("data") else None, reads)


def frozen_model(cfg, stage: str, why_not_maia1: str = "it reads Maia-2 only", why_not_maia3: str = "it reads Maia-2 only"):
    """The Maia-2 of model.checkpoint, in eval mode with gradients off (analysis stages read it only).

    A stage that reads only Maia-2 reaches here; `model=maia1` and `model=maia3` get one line saying
    why (the stage's own reason)."""
    if str(cfg.model.name) == "maia1":
        raise ConfigError(f"stage={stage} does not take model=maia1: {why_not_maia1} "
                          "(see docs/stages.md, 'Which stages take Maia-1')")
    if str(cfg.model.name) == "maia3":
        raise ConfigError(f"stage={stage} does not take model=maia3: {why_not_maia3} (see docs/maia3.md)")
    if not cfg.model.checkpoint:
        raise ConfigError(f"stage={stage} needs a trained model: set model.checkpoint (a .pt/.safetensors file or run directory)")
    model = load_model(cfg.model.checkpoint, attention=(cfg.model.heads, cfg.model.dim_head)).eval()
    check_model_shape(cfg.model, model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def stage_device(cfg, stage: str):
    """The torch device of `<stage>.device` (auto | cpu | cuda | cuda:N; a stage without the key runs
    on the CPU)."""
    from ..model.training import resolve_device

    section = cfg.get(stage)
    name = section.get("device", "cpu") if section is not None else "cpu"
    return resolve_device(name, f"{stage}.device")


def skill_model(cfg, stage: str, device=None):
    """The frozen SkillModel of `cfg.model`: a Maia-2 or Maia-3 checkpoint or the Maia-1 family (model=maia1),
    on `device` (None: the stage's own `<stage>.device`)."""
    from ..model.skill import load_skill_model

    if str(cfg.model.name) == "maia3" and not cfg.model.checkpoint:
        raise ConfigError(f"stage={stage} needs a trained model: set model.checkpoint (a maia3-runtime .pt file with "
                          "model.size, or a .safetensors file / run directory written by maia-adapt)")
    if str(cfg.model.name) != "maia1" and not cfg.model.checkpoint:
        raise ConfigError(f"stage={stage} needs a trained model: set model.checkpoint (a .pt/.safetensors file or run "
                          "directory), or model=maia1 for the Maia-1 family")
    model = load_skill_model(cfg.model, device=stage_device(cfg, stage) if device is None else device)
    check_model_shape(cfg.model, model)
    return model


def bucket_label(model, bucket: int) -> str:
    """A table's name for Elo bucket `bucket`: its range, plus the network it means for Maia-1."""
    from ..encoding import BUCKET_NAMES

    own = model.label(bucket)
    return BUCKET_NAMES[bucket] if own == BUCKET_NAMES[bucket] else f"{BUCKET_NAMES[bucket]} ({own})"
