"""What several stages start with."""
from __future__ import annotations

from ..errors import ConfigError
from ..model import load_model


def frozen_model(cfg, stage: str):
    """The model of model.checkpoint, in eval mode with gradients off (analysis stages read it only)."""
    if not cfg.model.checkpoint:
        raise ConfigError(f"stage={stage} needs a trained model: set model.checkpoint (a .pt/.safetensors file or run directory)")
    model = load_model(cfg.model.checkpoint).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
