"""What train_model minimises: a loss is fn(step_fn, batch, step) -> {"loss": ..., parts..., "logits": ...}.

Maia2Loss is the official objective; model/distill.py's DistillLoss adds the Maia-1 teachers' KL. The
trainer takes either, so training knows nothing of distillation and distillation builds on this module.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossWeights:
    side_info: float = 1.0
    value: float = 1.0

    @classmethod
    def of(cls, train_cfg) -> "LossWeights":
        """The weights of a TrainConfig (train.side_info_coefficient, train.value_coefficient)."""
        return cls(train_cfg.side_info_coefficient, train_cfg.value_coefficient)


def maia2_objective(outputs, batch: dict, w: LossWeights) -> dict[str, torch.Tensor]:
    """maia2_losses from the model's (policy, side-info, value) outputs."""
    logits, side, value = outputs
    policy = F.cross_entropy(logits.float(), batch["move"])
    side_info = F.binary_cross_entropy_with_logits(side.float(), batch["side_info"])
    val = F.mse_loss(value.float(), batch["value"])
    loss = policy + w.side_info * side_info + w.value * val
    return {"loss": loss, "policy_loss": policy, "side_info_loss": side_info, "value_loss": val, "logits": logits}


def maia2_losses(model, batch: dict, w: LossWeights) -> dict[str, torch.Tensor]:
    """The official objective: policy cross-entropy + side-info BCE + value MSE."""
    return maia2_objective(model(batch["boards"], batch["elo_self"], batch["elo_oppo"]), batch, w)


class Maia2Loss:
    """maia2_losses through the trainer's step function (the DDP-wrapped, maybe compiled, model)."""

    def __init__(self, w: LossWeights):
        self.w = w

    def __call__(self, step_fn, batch: dict, step: int) -> dict[str, torch.Tensor]:
        return maia2_losses(step_fn, batch, self.w)
