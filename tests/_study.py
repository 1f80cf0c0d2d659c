"""The study runner (`python -m maia_adapt.study`) launched from tests, and the sizes that make a whole
study run in a few minutes: tests/test_study.py and tests/test_study_quick.py (two files, so that the two
longest study runs go to different test workers)."""
from __future__ import annotations

import subprocess
import sys

from _app import app_env


def _study(args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "maia_adapt.study", *args], cwd=cwd, env=app_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


TINY = ["data.max_games=300", "transitional.positions=150", "transitional.depth=4", "probe.train_positions=1500",
        "probe.test_positions=500", "probe.min_positives=5", "probe.buckets=[0,10]", "probe.logit_lens=false", "finetune.steps=4", "finetune.eval_every=2",
        "finetune.heldout_positions=100", "sae.steps=20", "sae.dim=256", "sae.k=8", "sae.cache_positions=2048",
        "sae.chunk_positions=512", "sae.batch_size=128", "sae.eval_positions=100", "sae.calibrate_every=0",
        "threats.positions=400", "threats.n_boot=10", "threats.n_null=3", "threats.min_positives=5",
        "threats.dashboards=0", "intervention.strengths=[2.0]", "intervention.top_n=[1]", "intervention.n_boot=20",
        "intervention.heldout_positions=100", "transcoder.steps=20", "transcoder.dim=256", "transcoder.k=8",
        "transcoder.cache_positions=1024", "transcoder.chunk_positions=256", "transcoder.eval_positions=100",
        "transcoder.grid_positions=10", "circuits.positions=100", "circuits.dashboards=0", "circuits.patching_positions=100", "logger=none"]
