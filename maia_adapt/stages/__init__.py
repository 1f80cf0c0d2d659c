"""The stages of `python -m maia_adapt.run stage=<name>`: each module has `run(cfg, frame) -> dict` (frame: stages/frame.py)."""
from __future__ import annotations

import importlib

REGISTRY = {
    "train": "maia_adapt.stages.train",
    "sae": "maia_adapt.stages.sae",
    "threats": "maia_adapt.stages.threats",
    "activations": "maia_adapt.stages.activations",
    "transitional": "maia_adapt.stages.transitional",
    "finetune": "maia_adapt.stages.finetune",
    "probe": "maia_adapt.stages.probe",
    "intervention": "maia_adapt.stages.intervention",
    "transcoder": "maia_adapt.stages.transcoder",
    "circuits": "maia_adapt.stages.circuits",
    "evaluate": "maia_adapt.stages.evaluate",
    "ladder": "maia_adapt.stages.ladder",
}


def get_stage(name: str):
    from ..errors import ConfigError

    if name not in REGISTRY:
        raise ConfigError(f"unknown stage '{name}': expected one of {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name]).run
