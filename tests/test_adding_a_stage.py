"""Adding a stage touches its module, its YAML and one REGISTRY line (docs/stages.md, "Adding a stage"):
a toy stage in a temporary package runs through the app, its section typed and checked, its report and
finished marker written by the frame."""
import json
import subprocess
import sys
import textwrap

from _app import ROOT, app_env

TOY_MODULE = '''
from dataclasses import dataclass

from maia_adapt.checks import POSITIVE_INT, check_section


@dataclass
class ToyConfig:
    rounds: int = 3  # numbers summed


SCHEMA = ToyConfig


def check(cfg) -> None:
    check_section(cfg, "toy", {"rounds": POSITIVE_INT})


def run(cfg, frame) -> dict:
    total = sum(range(cfg.toy.rounds))
    frame.tracker().log({"toy/total": total}, step=1)
    frame.report(f"# Toy\\n\\n{total}\\n", {"total": total})
    return {"total": total}
'''

# the one registry line, made before the app (and its composed schema) is imported
DRIVER = '''
import sys

import maia_adapt.stages as stages

stages.REGISTRY["toy"] = "toy"
from maia_adapt import run  # noqa: E402

run.check_overrides(sys.argv[1:])
run.main()
'''


def _toy_app(tmp_path, *overrides):
    (tmp_path / "pkg").mkdir(exist_ok=True)
    (tmp_path / "pkg" / "toy.py").write_text(textwrap.dedent(TOY_MODULE))
    (tmp_path / "pkg" / "driver.py").write_text(DRIVER)
    (tmp_path / "conf" / "stage").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "stage" / "toy.yaml").write_text("# a toy stage: sums numbers\nname: toy\n")
    env = app_env({"PYTHONPATH": f"{tmp_path / 'pkg'}:{ROOT}"})
    cmd = [sys.executable, str(tmp_path / "pkg" / "driver.py"), "stage=toy", "logger=none",
           f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_toy_stage_runs_through_the_app_from_its_module_yaml_and_one_registry_line(tmp_path):
    proc = _toy_app(tmp_path, "toy.rounds=5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text()) == {"total": 10}
    assert json.loads((run / "results.json").read_text()) == {"total": 10}
    assert (run / "results.md").read_text() == "# Toy\n\n10\n" and (run / "DONE").exists()
    assert "toy/total" in (run / "metrics.jsonl").read_text()


def test_a_toy_stages_settings_are_typed_and_checked_in_one_line(tmp_path):
    for override, expected in (("toy.rounds=0", "error: toy.rounds=0: expected a positive integer"),
                               ("toy.roundz=2", "error: toy.roundz: Key 'roundz' not in 'ToyConfig'")):
        proc = _toy_app(tmp_path, override)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith(expected), proc.stderr[-2000:]


def test_the_frame_closes_the_tracker_and_marks_nothing_finished_when_a_stage_fails(tmp_path, monkeypatch):
    import pytest
    from hydra import compose, initialize_config_dir

    from maia_adapt.layout import CONF_DIR
    from maia_adapt.runtime.tracking import Tracker
    from maia_adapt.stages.frame import StageFrame

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["stage=evaluate", "logger=none"])
    closed = []
    monkeypatch.setattr(Tracker, "finish", lambda self: closed.append(self))
    with pytest.raises(RuntimeError), StageFrame(cfg, tmp_path, "evaluate (test)") as frame:
        frame.tracker().log({"x": 1.0}, step=1)
        frame.report("# never written\n", {"never": True})
        raise RuntimeError("the stage failed")
    assert len(closed) == 1
    assert not any((tmp_path / f).exists() for f in ("DONE", "summary.json", "results.md", "results.json"))
