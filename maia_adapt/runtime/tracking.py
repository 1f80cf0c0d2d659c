"""One small module between the stages and Weights & Biases.

W&B runs offline by default (no account, no network; `wandb sync` uploads later) with its files in
the run directory; `logger=none` switches it off. Metrics always go to run_dir/metrics.jsonl as well,
so every run is readable without W&B. In a DDP run only rank 0 logs.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from ..io import to_json


@dataclass
class LoggerConfig:
    """`logger`: where the Tracker sends metrics besides metrics.jsonl."""

    backend: str = "wandb"  # wandb | none
    mode: str = "offline"  # offline | online | disabled
    project: str = "maia-adapt"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: the experiment name
    job_type: Optional[str] = None  # null: the stage name
    tags: list[str] = field(default_factory=list)
    log_checkpoints: bool = True


class Tracker:
    def __init__(self, cfg, run_dir, job_type: str | None = None, continues: bool = False):
        """`continues`: this run resumes an earlier one in run_dir and appends to its metrics.jsonl;
        otherwise a metrics.jsonl left there (a preset's fixed run directory) is started anew, so the
        file never mixes two runs' curves."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.wandb = None
        from .distributed import is_main

        self.active = is_main()
        if self.active and not continues:
            self.metrics_path.unlink(missing_ok=True)
        lc = cfg.logger
        if lc.backend == "none" or lc.mode == "disabled" or not self.active:
            return
        if lc.backend != "wandb":
            from ..errors import ConfigError

            raise ConfigError(f"logger.backend '{lc.backend}': expected 'wandb' or 'none'")
        try:
            os.environ.setdefault("WANDB_SILENT", "true")
            os.environ.setdefault("WANDB_CONSOLE", "off")
            import wandb

            self.wandb = wandb.init(
                project=lc.project,
                entity=lc.entity,
                group=lc.group or cfg.get("experiment", None),
                job_type=lc.job_type or job_type or cfg.stage.name,
                tags=list(lc.tags),
                mode=lc.mode,
                dir=str(self.run_dir),
                config=OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg),
                name=f"{cfg.stage.name}-{self.run_dir.name}",
                reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
            )
        except Exception as e:  # never lose a run because of logging
            warnings.warn(f"W&B could not start ({type(e).__name__}: {e}); logging to metrics.jsonl only")
            self.wandb = None

    def log(self, metrics: dict, step: int | None = None) -> None:
        if not self.active:
            return
        with open(self.metrics_path, "a") as f:
            f.write(to_json({"step": step, **metrics}) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def log_image(self, name: str, path) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Image(str(path))})

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Table(columns=columns, data=rows)})

    def log_artifact(self, path, name: str, type: str) -> None:
        if self.wandb is not None:
            import wandb

            art = wandb.Artifact(name, type=type)
            path = Path(path)
            art.add_dir(str(path)) if path.is_dir() else art.add_file(str(path))
            self.wandb.log_artifact(art)

    def summary(self, values: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update(values)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
