"""Run fingerprints: a stage resumes exactly when what it reads (its own section, model, data, seed)
is unchanged, and a run that does not resume says why in one line before it removes anything. Run
directories are locked by the process that runs in them; a run still going is never resumed."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from _app import ROOT
from maia_adapt.errors import MaiaAdaptError
from maia_adapt.runtime.checkpointing import latest_step_dir, write_step_dir
from maia_adapt.config import CONF_DIR
from maia_adapt.runtime.resume import mark_started, resume_point
from maia_adapt.stages.common import fingerprint
from maia_adapt.runtime.rundir import LOCK_FILE, claim, in_use, release


def _cfg(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _fp(*overrides):
    return fingerprint(_cfg(*overrides))


@pytest.mark.parametrize("stage,same,other", [
    ("sae", ["probe.l2=0.5", "threats.top_k=3", "train.lr=0.01", "transcoder.dim=64", "logger=none",
             "paths.cache_dir=/tmp/elsewhere", "objective=sae/l0", "sae.log_every=7", "sae.resume=false",
             "+extra.note=x"],
     ["sae.lr=0.001", "sae.k=16", "model.dim_vit=512", "seed=1", "data.max_games=10", "data=lichess", "layer=0",
      "site=mlp"]),
    ("train", ["sae.lr=0.001", "probe.l2=0.5", "layer=0", "train.log_every=3"],
     ["train.lr=0.01", "evaluate.n_boot=10", "data.split_seed=2", "model.heads=4"]),
    ("transcoder", ["sae.k=16", "site=mlp"], ["layer=0", "transcoder.k=8"]),
])
def test_the_fingerprint_covers_what_the_stage_reads_and_nothing_else(stage, same, other):
    base = _fp(f"stage={stage}")
    for o in same:
        assert _fp(f"stage={stage}", o) == base, o
    for o in other:
        assert _fp(f"stage={stage}", o) != base, o


def test_other_games_under_the_same_path_change_the_fingerprint(tmp_path):
    pgn = tmp_path / "games.pgn"
    pgn.write_text('[Event "a"]\n[Result "1-0"]\n\n1. e4 e5 1-0\n')
    first = _fp("stage=sae", f"data.pgn=[{pgn}]")
    assert _fp("stage=sae", f"data.pgn=[{pgn}]") == first
    pgn.write_text('[Event "b"]\n[Result "0-1"]\n\n1. d4 d5 0-1\n')  # another file at the same path
    assert _fp("stage=sae", f"data.pgn=[{pgn}]") != first


def test_another_model_under_the_same_path_changes_the_fingerprint(tmp_path):
    from maia_adapt.config import ASSETS

    model = tmp_path / "model.safetensors"
    shutil.copyfile(ASSETS / "maia2_small.safetensors", model)
    first = _fp("stage=sae", f"model.checkpoint={model}")
    assert _fp("stage=sae", f"model.checkpoint={model}") == first
    model.write_bytes(model.read_bytes()[:-1] + b"x")  # retrained in place
    again = _fp("stage=sae", f"model.checkpoint={model}")
    assert again != first and again.keys["model.file"] != first.keys["model.file"]
    # a run directory counts as the model file it loads
    assert _fp("stage=sae", f"model.checkpoint={tmp_path}").keys["model.file"] == again.keys["model.file"]


def _interrupted_run(run_dir: Path, fingerprint) -> Path:
    """run_dir as an unfinished run of `fingerprint` that wrote a checkpoint at step 5."""
    run_dir.mkdir(parents=True)
    mark_started(run_dir, fingerprint)
    return write_step_dir(run_dir / "checkpoints", 5, lambda d: (d / "w.bin").write_bytes(b"w"), {})


def test_editing_another_stages_section_resumes_the_run(tmp_path, capsys):
    ckpt = _interrupted_run(tmp_path / "runs" / "a", _fp("stage=sae"))
    (tmp_path / "runs" / "b").mkdir()  # the app makes the new run's directory first
    assert resume_point(tmp_path / "runs" / "b", _fp("stage=sae", "probe.l2=0.5")) == ckpt.resolve()
    assert f"resuming from {ckpt.resolve()}" in capsys.readouterr().out


def test_a_sibling_of_other_settings_is_not_resumed_and_the_message_names_the_key(tmp_path, capsys):
    ckpt = _interrupted_run(tmp_path / "runs" / "a", _fp("stage=sae"))
    (tmp_path / "runs" / "b").mkdir()  # the app makes the new run's directory first
    assert resume_point(tmp_path / "runs" / "b", _fp("stage=sae", "sae.lr=0.001")) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"not resuming the unfinished run {ckpt.parents[1]} (other settings: sae.lr (0.002 -> 0.001)): "
                   + "starting afresh"]
    assert latest_step_dir(ckpt.parent) == ckpt  # the other run's checkpoints are left alone


def test_other_data_in_a_fixed_run_directory_says_what_it_removes(tmp_path, capsys):
    games = Path(_cfg("data=lichess").data.pgn[0])
    if not games.is_file():
        pytest.skip(f"real data not found at {games}")
    fixed = tmp_path / "fixed"
    ckpt = _interrupted_run(fixed, _fp("stage=sae"))
    assert resume_point(fixed, _fp("stage=sae", "data=lichess"), carry=("best",)) is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"not resuming {fixed.resolve()} (other settings: data.")
    assert "selfplay.pgn.zst" in out[0] and out[0].endswith("removing its checkpoints/, best/ and starting afresh")
    assert not ckpt.exists()


def test_resume_false_in_a_fixed_run_directory_says_so(tmp_path, capsys):
    fixed = tmp_path / "fixed"
    _interrupted_run(fixed, _fp("stage=sae"))
    assert resume_point(fixed, _fp("stage=sae"), resume=False) is None
    assert "(resume=false): removing its checkpoints/" in capsys.readouterr().out
    shutil.rmtree(fixed)


def test_metrics_of_a_reused_run_directory_belong_to_one_run(tmp_path):
    """A preset's fixed run directory run twice: the second run's metrics.jsonl holds its own lines
    only, unless it continues the first (a resumed run appends)."""
    import json

    from maia_adapt.runtime.tracking import Tracker

    cfg = _cfg("logger=none")
    Tracker(cfg, tmp_path).log({"val/loss": 3.0}, step=10)
    Tracker(cfg, tmp_path, continues=True).log({"val/loss": 2.5}, step=20)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10, 20]
    Tracker(cfg, tmp_path).log({"val/loss": 9.0}, step=5)
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [{"step": 5, "val/loss": 9.0}]


def _holder_process(run_dir: Path) -> subprocess.Popen:
    """A process that claims run_dir (as the app does before Hydra writes into it) and waits."""
    code = ("import sys, time\nfrom maia_adapt.runtime.rundir import claim\n"
            "claim(sys.argv[1]); print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "held\n"
    return p


def test_a_sibling_still_running_is_not_resumed_and_a_dead_holders_lock_blocks_nothing(tmp_path, capsys):
    ckpt = _interrupted_run(tmp_path / "runs" / "a", _fp("stage=sae"))
    (tmp_path / "runs" / "b").mkdir()
    holder = _holder_process(tmp_path / "runs" / "a")
    try:
        # a run of the same settings still going is not an interrupted one: continuing it would fork it
        assert resume_point(tmp_path / "runs" / "b", _fp("stage=sae")) is None
        out = capsys.readouterr().out
        assert f"not resuming {ckpt.parents[1]}: it is still running (process {holder.pid} on " in out
        with pytest.raises(MaiaAdaptError, match=rf"runs/a is in use by process {holder.pid} on .*another hydra.run.dir"):
            claim(tmp_path / "runs" / "a")
    finally:
        holder.kill()  # SIGKILL: no cleanup, the lock file stays behind
        holder.wait()
    assert (tmp_path / "runs" / "a" / LOCK_FILE).is_file() and in_use(tmp_path / "runs" / "a") is None
    assert resume_point(tmp_path / "runs" / "b", _fp("stage=sae")) == ckpt.resolve()
    claim(tmp_path / "runs" / "a")
    release(tmp_path / "runs" / "a")
