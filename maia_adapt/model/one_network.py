"""The part of a SkillModel of one network conditioned on the Elo (Maia2Skill, Maia3Skill)."""
from __future__ import annotations

import torch

from ..encoding import NUM_BUCKETS


class OneNetwork:
    """What a SkillModel of one network conditioned on the Elo (a Maia-2, a Maia-3) shares: every bucket
    runs the same weights, so the model, its device and its hook sites are that network's."""

    def __init__(self, model, name: str):
        self.model = model.eval()
        self.name = name
        self.buckets = tuple(range(NUM_BUCKETS))
        self.hook_names = list(model.hook_names)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device):
        self.model.to(device)
        return self
