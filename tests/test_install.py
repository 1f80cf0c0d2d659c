"""The app as a user installs it: a wheel (not editable) in a fresh folder, run from another directory."""
import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from _app import ONE_THREAD, ROOT, TINY_MODEL, app_env, run_app

TINY = ["stage=train", "data=default", "data.max_games=20", *TINY_MODEL, "train.eval_positions=50"]


@pytest.mark.slow
def test_wheel_runs_a_stage_from_any_directory_with_user_configs(tmp_path):
    # build from a copy, so that the checkout gets no build/ folder
    src = tmp_path / "src"
    shutil.copytree(ROOT / "maia_adapt", src / "maia_adapt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    # without network the build needs the environment's setuptools; CI's fresh venv may lack it (pip fetches it)
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", *isolation, "-w", str(tmp_path / "whl"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "whl").glob("maia_adapt-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    assert not (site / "conf").exists() and (site / "maia_adapt" / "conf" / "config.yaml").is_file()

    work = tmp_path / "elsewhere"
    (work / "my_conf" / "experiment").mkdir(parents=True)
    (work / "my_conf" / "experiment" / "mine.yaml").write_text("# @package _global_\ntrain:\n  max_steps: 2\n  batch_size: 8\n")
    env = {"MAIA_ADAPT_DATA": None, "PYTHONPATH": str(site), **ONE_THREAD}
    r = subprocess.run([sys.executable, "-c", "import maia_adapt; print(maia_adapt.__file__)"], cwd=work,
                       env=app_env(env), capture_output=True, text=True, timeout=600)
    assert r.stdout.strip().startswith(str(site)), r.stdout + r.stderr  # the wheel, not the checkout
    r = run_app([*TINY, "hydra.searchpath=[file://my_conf]", "experiment=mine"], cwd=work, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (summary,) = (work / "outputs" / "train").glob("*/summary.json")
    assert 0 <= json.loads(summary.read_text())["test_accuracy"] <= 1
    resolved = yaml.safe_load((summary.parent / "resolved_config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 2  # the user's experiment was found on the search path
    assert resolved["paths"]["root"] == str(work) and list((work / "cache" / "stores").iterdir())
    assert not (site / "outputs").exists() and not (site / "cache").exists()  # nothing written into the install
    r = run_app(["stage=nope"], logger=None, cwd=work, env=env, timeout=600)
    assert r.returncode == 1 and "available options in 'stage': activations" in r.stderr.strip().splitlines()[-1]


def test_what_building_a_wheel_in_the_checkout_leaves_is_ignored_by_git():
    """`pip wheel .` run in the checkout leaves build/, the wheel itself and the egg-info there."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    left = ["build/lib/maia_adapt/run.py", "build/bdist.linux-x86_64/wheel/x", "maia_adapt-0.1.0-py3-none-any.whl",
            "maia_adapt.egg-info/PKG-INFO", "dist/maia_adapt-0.1.0.tar.gz"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *left], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.split() == left, r.stdout + r.stderr
