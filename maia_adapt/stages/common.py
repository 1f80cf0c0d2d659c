"""What several stages start with."""
from __future__ import annotations

from ..config import check_model_shape
from ..errors import ConfigError
from ..model import load_model


# why each stage that reads a Maia-2 only cannot take model=maia1 (one line each, for the error)
MAIA2_ONLY = {
    "transcoder": "Maia-1 is a convolutional network with no transformer FFN (MLP) to transcode",
    "circuits": "circuits are built from transcoders of Maia-2's transformer FFNs, and Maia-1 has none",
}
# why each stage that reads a Maia-2 only does not take model=maia3 yet
MAIA3_NOT_YET = {
    "circuits": "circuits are built on Maia-2's Elo-query attention and its transcoders (see docs/maia3.md)",
}


def frozen_model(cfg, stage: str):
    """The Maia-2 of model.checkpoint, in eval mode with gradients off (analysis stages read it only).

    A stage that reads only Maia-2 reaches here; `model=maia1` gets one line saying why."""
    if str(cfg.model.name) == "maia1":
        raise ConfigError(f"stage={stage} does not take model=maia1: {MAIA2_ONLY.get(stage, 'it reads Maia-2 only')} "
                          "(see docs/stages.md, 'Which stages take Maia-1')")
    if str(cfg.model.name) == "maia3":
        raise ConfigError(f"stage={stage} does not take model=maia3: {MAIA3_NOT_YET.get(stage, 'it reads Maia-2 only')}")
    if not cfg.model.checkpoint:
        raise ConfigError(f"stage={stage} needs a trained model: set model.checkpoint (a .pt/.safetensors file or run directory)")
    model = load_model(cfg.model.checkpoint, attention=(cfg.model.heads, cfg.model.dim_head)).eval()
    check_model_shape(cfg.model, model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def skill_model(cfg, stage: str, device="cpu"):
    """The frozen SkillModel of `cfg.model`: a Maia-2 or Maia-3 checkpoint or the Maia-1 family (model=maia1)."""
    from ..model.skill import load_skill_model

    if str(cfg.model.name) == "maia3" and not cfg.model.checkpoint:
        raise ConfigError(f"stage={stage} needs a trained model: set model.checkpoint (a maia3-runtime .pt file with "
                          "model.size, or a .safetensors file / run directory written by maia-adapt)")
    if str(cfg.model.name) != "maia1" and not cfg.model.checkpoint:
        raise ConfigError(f"stage={stage} needs a trained model: set model.checkpoint (a .pt/.safetensors file or run "
                          "directory), or model=maia1 for the Maia-1 family")
    model = load_skill_model(cfg.model, device=device)
    check_model_shape(cfg.model, model)
    return model


def bucket_label(model, bucket: int) -> str:
    """A table's name for Elo bucket `bucket`: its range, plus the network it means for Maia-1."""
    from ..encoding import BUCKET_NAMES

    own = model.label(bucket)
    return BUCKET_NAMES[bucket] if own == BUCKET_NAMES[bucket] else f"{BUCKET_NAMES[bucket]} ({own})"
