"""The stages of `python -m maia_adapt.run stage=<name>`: each module has `run(cfg, frame) -> dict` (frame:
stages/frame.py) and, if it has settings, SCHEMA (the dataclass of cfg.<name>, composed into config.Config),
check(cfg) (its value checks) and READS (other sections its results depend on, for the resume fingerprint).
Adding a stage: its module, conf/stage/<name>.yaml and one line here."""
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


def stage_module(name: str):
    """The module of stage `name`: run(cfg, frame), and what it declares (SCHEMA, check, READS)."""
    from ..errors import ConfigError

    if name not in REGISTRY:
        raise ConfigError(f"unknown stage '{name}': expected one of {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])


def get_stage(name: str):
    return stage_module(name).run
