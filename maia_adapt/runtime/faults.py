"""Named fault points: a process killed at an exact place, for the resume tests.

A kill sent from outside at a moment chosen by the clock lands wherever the process happens to be,
which depends on how busy the machine is; the windows that matter (between the calibration's best/
write and the step checkpoint, inside a checkpoint write, ...) are a few milliseconds wide and were
reached only by chance. With MAIA_ADAPT_FAULT=<point>:<step> in its environment a process kills
itself with SIGKILL (no cleanup, no flush, like a power cut or the OOM killer) the first time it
passes `point` at `step`. Unset, `reach` is one dictionary lookup.

Points (in the order a checkpointed, calibrated step passes them):
  calibrated          the calibration scores are computed, best/ not yet offered them
  best_written        best/ holds this step's weights, the step checkpoint is not written
  checkpoint_unsealed a checkpoint's temporary folder has its files, not its state.json seal
  checkpoint_sealed   the temporary folder is sealed, not yet renamed to step_XXXXXXX
  checkpoint_renamed  step_XXXXXXX exists, the older checkpoints are not yet removed
  checkpointed        the checkpoint write has returned
"""
from __future__ import annotations

import os
import signal

ENV = "MAIA_ADAPT_FAULT"
POINTS = ("calibrated", "best_written", "checkpoint_unsealed", "checkpoint_sealed", "checkpoint_renamed",
          "checkpointed")


def reach(point: str, step: int) -> None:
    """SIGKILL this process if MAIA_ADAPT_FAULT names (point, step)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, at = spec.partition(":")
    if name not in POINTS or not at.isdigit():
        from ..errors import ConfigError

        raise ConfigError(f"{ENV}={spec!r}: expected <point>:<step> with point one of {', '.join(POINTS)}")
    if name == point and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL)
