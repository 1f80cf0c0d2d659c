"""debug=default: any stage and any preset shrinks to a smoke test of seconds, after the experiment and
the protocol (their sizes lose), before the command line (which still wins)."""
import json
import time

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from _app import TINY_MODEL, run_app
from maia_adapt.config import CONF_DIR, validate

DEBUG = OmegaConf.load(CONF_DIR / "debug" / "default.yaml")
STAGES = sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if p.stem != "none")
PROTOCOLS = sorted(p.stem for p in (CONF_DIR / "protocol").glob("*.yaml"))


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    # one initialisation for the module's ~30 compositions (each would re-read the config tree)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield


def _cfg(*overrides):
    return compose("config", overrides=list(overrides))


def _debug_keys(node=DEBUG, prefix=""):
    for k, v in node.items():
        if OmegaConf.is_dict(v):
            yield from _debug_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _assert_debug_sizes(cfg, where):
    for key, want in _debug_keys():
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        want = OmegaConf.to_container(want) if OmegaConf.is_config(want) else want
        assert got == want, f"{where}: {key}={got!r}, debug=default sets {want!r}"


def test_debug_is_off_by_default():
    cfg = _cfg("stage=sae")
    assert cfg.sae.steps > 100 and cfg.data.max_games is None


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_composes_and_validates_with_debug_sizes(stage):
    cfg = _cfg(f"stage={stage}", "debug=default")
    validate(cfg)
    _assert_debug_sizes(cfg, f"stage={stage}")


@pytest.mark.parametrize("overrides", [[f"experiment={p}"] for p in PRESETS] +
                         [["stage=ladder", f"protocol={p}"] for p in PROTOCOLS],
                         ids=[f"experiment={p}" for p in PRESETS] + [f"protocol={p}" for p in PROTOCOLS])
def test_debug_wins_over_every_experiment_and_protocol(overrides):
    # one config holds every stage's section, so one composition checks a preset for all of them
    cfg = _cfg(*overrides, "debug=default")
    validate(cfg)
    _assert_debug_sizes(cfg, " ".join(overrides))


def test_the_command_line_wins_over_debug():
    cfg = _cfg("experiment=sae_study", "debug=default", "sae.steps=7", "data.max_games=null")
    assert cfg.sae.steps == 7 and cfg.data.max_games is None and cfg.sae.dim == DEBUG.sae.dim


@pytest.mark.slow
@pytest.mark.parametrize("stage,extra", [("train", TINY_MODEL), ("sae", [])])
def test_a_debug_run_finishes_in_seconds(stage, extra, tmp_path_factory):
    store = tmp_path_factory.getbasetemp() / "debug_store"  # the second run reuses the first one's store
    run_dir = tmp_path_factory.mktemp(stage)
    t = time.perf_counter()
    proc = run_app([f"stage={stage}", "debug=default", f"data.store_dir={store}", *extra],
                   run_dir=run_dir, timeout=120, env={"OMP_NUM_THREADS": "1"})
    took = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run_dir / "DONE").exists() and json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = max((r.get("step", 0) for r in rows), default=0)
    assert steps == 4  # train.max_steps / sae.steps of debug=default
    resolved = OmegaConf.load(run_dir / "resolved_config.yaml")
    assert resolved.data.max_games == DEBUG.data.max_games
    # generous for a loaded 2-core CI machine; alone on it each takes 5-8 s (store build included)
    assert took < 60, f"stage={stage} debug=default took {took:.0f} s"
    # run.log holds what the run printed, its end-of-run digest included; stdout has the digest, not the JSON
    log = (run_dir / "run.log").read_text()
    assert f"== {stage} (default) ==" in log and f"run directory: {run_dir}" in log
    assert "{" not in proc.stdout.split("run directory: ")[-1]
    assert "Warning" not in proc.stderr  # the buckets without a test position are null, silently


def test_sae_runs_that_differ_in_the_sae_share_one_activation_cache(tmp_path_factory):
    """sae.shared_activations (experiment=sae_sweep's): the second run, another SAE width, reads the first
    one's activations instead of computing them, and trains exactly as if it had computed them."""
    store = tmp_path_factory.getbasetemp() / "debug_store"
    shared = tmp_path_factory.mktemp("shared")
    common = ["stage=sae", "debug=default", f"data.store_dir={store}", "sae.cache_positions=256"]
    runs = {}
    for name, extra in (("first", [f"sae.shared_activations={shared}"]), ("second", [f"sae.shared_activations={shared}", "sae.dim=96"]),
                        ("alone", ["sae.dim=96"])):
        run_dir = tmp_path_factory.mktemp(name)
        proc = run_app([*common, *extra], run_dir=run_dir, timeout=120, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = (proc.stdout, json.loads((run_dir / "summary.json").read_text()))
    assert len(list(shared.glob("activations-*.safetensors"))) == 1
    assert "caching activations of 256" in runs["first"][0] and "read from" not in runs["first"][0]
    assert "activations of 256 train positions read from" in runs["second"][0]
    assert runs["second"][1] == runs["alone"][1]  # the same SAE as one trained on its own forward pass
