"""The maia-adapt app: `python -m maia_adapt.run stage=<name> [group=option] [key=value]`.

Each run gets its own directory under outputs/ holding the resolved config, what the stage wrote,
metrics.jsonl and a short summary. Errors in the user's input print one line; `hydra.verbose=true`
shows the traceback.
"""
from __future__ import annotations

import contextlib
import os
import random
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import config as _config  # noqa: F401  (registers the schemas)
from .runtime import distributed
from .errors import MaiaAdaptError
from .io import atomic_write_text, to_json
from .layout import CONF_DIR
from .reporting.summary import end_of_run_text
from .runtime.runlog import tee_output

# set to 1: the summary JSON is printed after the end-of-run lines too (for scripts reading stdout;
# summary.json in the run directory holds the same)
PRINT_JSON_ENV = "MAIA_ADAPT_PRINT_SUMMARY_JSON"

# the run directory's timestamp; under torchrun rank 0's, so that every rank writes to one directory.
# A plain dict, not functools.cache: launchers pickle this module's resolver by value into their workers
_STAMP = {"t": None}


def _run_stamp(fmt: str) -> str:
    if _STAMP["t"] is None:
        _STAMP["t"] = distributed.run_stamp()
    return _STAMP["t"].strftime(fmt)


if not OmegaConf.has_resolver("run_stamp"):
    # cached on the config, so a job that a launcher pickles to another process keeps the same stamp
    OmegaConf.register_new_resolver("run_stamp", _run_stamp, use_cache=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _title(cfg: DictConfig) -> str:
    return f"{cfg.stage.name} ({cfg.experiment})"


def execute(cfg: DictConfig, run_dir: Path) -> dict:
    from .stages import get_stage
    from .stages.frame import StageFrame

    stage = get_stage(cfg.stage.name)
    _config.validate(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        atomic_write_text(run_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(cfg.seed)
    with StageFrame(cfg, run_dir, _title(cfg)) as frame:
        return frame.finish(stage(cfg, frame) or {})


def objective(cfg: DictConfig, summary: dict) -> float | None:
    """The value a sweeper (Optuna) optimises: the summary entry named by `objective`."""
    if not cfg.objective:
        return None
    if cfg.objective not in summary:
        raise MaiaAdaptError(f"objective '{cfg.objective}' is not in the {cfg.stage.name} summary; "
                             f"expected one of: {', '.join(sorted(summary))}")
    return float(summary[cfg.objective])


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    distributed.init_from_env()  # a SLURM job of several tasks joins here (torchrun ranks already have)
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    # rank 0's output only: the other ranks of a DDP run would interleave theirs
    with tee_output(run_dir / f"{hc.job.name}.log") if distributed.is_main() else contextlib.nullcontext():
        try:
            summary = execute(cfg, run_dir)
            value = objective(cfg, summary)
        except (MaiaAdaptError, OSError) as e:
            if hc.verbose:
                raise
            # one line whatever a message quotes (a library's several paragraphs, a path holding a newline)
            print("error: " + " ".join(part.strip() for part in str(e).splitlines() if part.strip()), file=sys.stderr)
            sys.exit(1)
        if distributed.is_main():
            print(end_of_run_text(_title(cfg), summary, run_dir))
            if os.environ.get(PRINT_JSON_ENV, "") not in ("", "0"):
                print(to_json(summary, indent=1))
    return value


def config_error_line(e: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error: the key, what was wrong, what is allowed."""
    from omegaconf.errors import OmegaConfBaseException

    chain = [e]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for err in chain:
        if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
            return f"{err.full_key}: {str(getattr(err, 'msg', err)).splitlines()[0]}"
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    if len(lines) > 1 and lines[1].startswith("Available options"):  # an unknown group option
        options = lines[2:lines.index("Config search path:")] if "Config search path:" in lines else lines[2:]
        first = lines[0].split(": ", 1)[-1] if lines[0].startswith("In '") else lines[0]
        return f"{first}: {lines[1].lower().rstrip(':')}: {', '.join(options)}"
    return " ".join(lines)


def check_overrides(argv: list[str]) -> None:
    """Compose the config once before Hydra does, so that a typo, a wrong type or an unknown option is
    one line on stderr. Sweeps (-m), Hydra's flags and hydra.verbose=true are left to Hydra itself."""
    if any(a.startswith("-") for a in argv) or any(a.replace(" ", "").startswith("hydra.verbose=") for a in argv):
        return
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            compose("config", overrides=argv)
    except Exception as e:  # every composition error, whatever Hydra or OmegaConf calls it
        print(f"error: {config_error_line(e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    distributed.init_from_env()  # before Hydra: the ranks agree on the run directory's timestamp
    try:
        check_overrides(sys.argv[1:])
        main()
    except BaseException:
        distributed.shutdown(clean=False)
        raise
    distributed.shutdown()
