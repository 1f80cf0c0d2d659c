"""stage=ladder: the study from the seed's protocol to ours, one switch a rung.

Runs (or resumes) every step of every rung as an app run under `<run dir>/runs/` (maia_adapt/ladder.py),
then writes results.md (the ladder table), results.json (one row per rung) and ladder.png.
Overrides given to the ladder (model=..., model.checkpoint=..., data=...) reach every step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from ..ladder import execute, ladder_markdown, ladder_rows, plan
from ..model.skill import MAIA1_RATINGS
from ..reporting.plots import ladder_plot


_NOT_PASSED = ("experiment=", "stage=", "ladder.", "hydra.", "protocol=", "+ladder", "logger")


@dataclass
class RungConfig:
    name: str = MISSING
    what: str = ""  # the switch in words, for the table
    # keys switched back to our presets' values at this rung (a key ending in '.' names every key of the
    # protocol under it); each must be one the protocol sets
    keys: list[str] = field(default_factory=list)


@dataclass
class LadderConfig:
    """stage=ladder: the study from the seed's protocol to ours, one switch a rung (maia_adapt/ladder.py)."""

    protocol: str = "seed_neurips"  # rung 0: a protocol of maia_adapt/conf/protocol
    rungs: list[RungConfig] = field(default_factory=list)
    # overrides every step gets, after the protocol and the rungs (sizes for the machine); a rung may not
    # switch a key set here
    common: list[str] = field(default_factory=list)
    chains: list[str] = field(default_factory=lambda: ["intervention", "finetune"])  # intervention is always run
    # per model family (maia1 | maia2): {"all": overrides for every step, "<rung>": from that rung on,
    # "what": {"<rung>": the rung's switch in the family's words, for the table}}
    family_overrides: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False  # print each step's command, run nothing
    # run nothing, write the table from the steps finished so far (a ladder stopped part way; '-' where
    # a rung's step has not run)
    report: bool = False


SCHEMA = LadderConfig  # cfg.ladder


def _user_overrides(cfg) -> list[str]:
    """The command line's overrides that every step should get too."""
    from hydra.core.hydra_config import HydraConfig

    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return [o for o in task if not o.startswith(_NOT_PASSED)] + [f"logger={cfg.logger.backend}" if cfg.logger.backend == "none" else "logger=wandb"]


def run(cfg, frame) -> dict:
    run_dir = frame.dir
    lc = cfg.ladder
    family = "maia1" if cfg.model.name == "maia1" else "maia2"
    ratings = list(MAIA1_RATINGS) if family == "maia1" and cfg.model.rating is None else []
    p = plan(lc, _user_overrides(cfg), run_dir, family, ratings)
    if not lc.report:
        execute(p, dry_run=lc.dry_run)
    if lc.dry_run:
        return {"steps": len(p.steps), "rungs": len(p.rungs)}
    rows = ladder_rows(p)
    ladder_plot(rows, run_dir / "ladder.png", f"from protocol={lc.protocol} (top) to ours (bottom): {cfg.model.name}")
    frame.report("\n".join(ladder_markdown(cfg.model.name, lc, p, rows)) + "\n",
                 {"protocol": lc.protocol, "rungs": rows, "left_at_protocol": p.left_at_protocol})
    last = rows[-1]
    return {"rungs": len(rows), "steps": len(p.steps), "seed_intervention_effect": rows[0]["intervention_effect"],
            "ours_intervention_effect": last["intervention_effect"], "seed_finetune_shift": rows[0]["finetune_shift"],
            "ours_finetune_shift": last["finetune_shift"]}
