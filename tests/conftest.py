"""Shared fixtures. Real data lives in ../shared/data (or $MAIA_ADAPT_DATA), the published Maia-1
networks in ../shared/models (or $MAIA_ADAPT_MODELS); tests that need them skip with a clear reason
when they are absent, e.g. on a fresh clone elsewhere."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (`-n 2`, the default in pyproject.toml) each worker keeps to one torch thread, and so
# does every app run it launches: two workers with two threads each on a 2-core machine spin against each
# other and tiny ops run many times slower. Set before torch is imported anywhere in the worker.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helpers such as _games


def _data_root() -> Path:
    env = os.environ.get("MAIA_ADAPT_DATA")
    return Path(env) if env else (ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = _data_root()
    if not (root / "README.md").is_file():
        pytest.skip(f"real data not found at {root} (set MAIA_ADAPT_DATA to the shared/data folder)")
    return root


def _models_root() -> Path:
    env = os.environ.get("MAIA_ADAPT_MODELS")
    return Path(env) if env else (ROOT.parent / "shared" / "models")


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The shared models folder (maia1/maia-1100.pb.gz ... maia-1900.pb.gz, GPL-3.0, read by path)."""
    root = _models_root()
    if not (root / "maia1" / "maia-1100.pb.gz").is_file():
        pytest.skip(f"Maia-1 networks not found at {root}/maia1 (set MAIA_ADAPT_MODELS to the shared/models folder)")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One torch intra-op thread for a module: on a 2-core machine shared with a CPU-heavy process, two
    threads spin against each other and L-BFGS or tiny training steps run 10-50x slower; the results
    do not depend on the thread count. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _outputs_are_strict_json(request):
    """After every test that used tmp_path: every JSON written there parses strictly (no NaN/Infinity)."""
    root = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if root is not None:
        from _strict_json import check_json_tree

        check_json_tree(root)


def pytest_collection_modifyitems(items):
    """`-m shared_data` / `-m "not shared_data"`: every test that reads ../shared (through these fixtures,
    directly or through another fixture) gets the marker, so nobody has to remember to add it."""
    for item in items:
        if {"shared_data", "shared_models"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared_data)


@pytest.fixture(scope="session")
def seed_transitional(shared_data, tmp_path_factory):
    """`seed_transitional(*overrides)`: the run directory of stage=transitional on the seed study's 264
    positions with those overrides (e.g. "model=maia1"), run once per session: several stages' tests read
    the same dataset, and each run costs 10-30 s. Tests only read it."""
    from _app import run_app
    from _strict_json import check_json_tree

    runs: dict[tuple[str, ...], Path] = {}

    def run(*overrides: str) -> Path:
        if overrides not in runs:
            out = tmp_path_factory.mktemp("seed_transitional") / "tr"
            r = run_app(["stage=transitional", "transitional.position_set=seed", *overrides], run_dir=out, timeout=600)
            assert r.returncode == 0, r.stderr[-2000:]
            check_json_tree(out)
            runs[overrides] = out
        return runs[overrides]

    return run
