"""Launching the Hydra app (`python -m maia_adapt.run`) from tests, and the tiny model they train."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a Maia-2 small enough that a few training steps take seconds on one CPU core
TINY_MODEL = ["model.dim_cnn=16", "model.num_blocks_cnn=1", "model.dim_vit=64", "model.elo_dim=8", "model.heads=4",
              "model.dim_head=16"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def app_env(env: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """os.environ with W&B offline (a test never talks to the network), updated by `env`; a None value removes
    that variable (e.g. MAIA_ADAPT_DATA, to run as a fresh install would)."""
    out = {**os.environ, "WANDB_MODE": "offline"}
    for k, v in (env or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def app_command(args: Sequence[str], *, run_dir: Path | str | None = None, logger: str | None = "none",
                launcher: Sequence[str] = (sys.executable,)) -> list[str]:
    """The command line: `launcher -m maia_adapt.run args [logger=...] [hydra.run.dir=...]`. logger=None leaves
    the logger to the config (a test of W&B passes its own)."""
    cmd = [*launcher, "-m", "maia_adapt.run", *args]
    if logger is not None:
        cmd.append(f"logger={logger}")
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    return cmd


def run_app(args: Sequence[str], *, run_dir: Path | str | None = None, timeout: float = 900,
            env: Mapping[str, str | None] | None = None, logger: str | None = "none",
            preexec_fn: Callable[[], None] | None = None, cwd: Path | str = ROOT,
            launcher: Sequence[str] = (sys.executable,)) -> subprocess.CompletedProcess:
    """The app run to its end with the checkout as working directory; stdout and stderr captured as text."""
    return subprocess.run(app_command(args, run_dir=run_dir, logger=logger, launcher=launcher), cwd=cwd,
                          env=app_env(env), capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one-line error a failed run ends with: stderr's last non-blank line, which must start with `error: `."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), (proc.returncode, proc.stderr[-2000:])
    return lines[-1]


def app_summary(proc: subprocess.CompletedProcess) -> dict:
    """The summary of a finished run: summary.json in the directory its `run directory:` line names (the
    run prints a one-screen digest, not the JSON, unless MAIA_ADAPT_PRINT_SUMMARY_JSON=1)."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("run directory: ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    path = Path(lines[-1].removeprefix("run directory: "))
    return json.loads((path if path.is_absolute() else Path(ROOT) / path).joinpath("summary.json").read_text())
