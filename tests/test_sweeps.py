"""Multirun sweeps: Optuna over a stated objective with the joblib launcher, submitit (locally, the
code path a SLURM cluster runs), the SLURM preset, and a SLURM job of two tasks joining one DDP group.
They run on the embedded self-play corpus and the shipped small model (no ../shared needed)."""
import json
import socket
import subprocess

import pytest
import yaml
from hydra import compose, initialize_config_dir

from _app import ONE_THREAD, ROOT, TINY_MODEL, app_command, app_env, run_app
import maia_adapt.config  # noqa: F401  (registers the schemas)

TINY_SAE = ["data=default", "sae.steps=10", "sae.cache_positions=1024", "sae.chunk_positions=512", "sae.batch_size=64",
            "sae.eval_positions=100"]


@pytest.mark.slow
def test_optuna_sweep_on_the_joblib_launcher_maximises_the_objective(tmp_path):
    p = run_app(["-m", "experiment=sae_sweep", *TINY_SAE, "hydra.sweeper.n_trials=3", "hydra/launcher=parallel",
                 f"hydra.sweep.dir={tmp_path}"], env=ONE_THREAD, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    objective = "blocks.1.hook_resid_post:sae/kl_recovered_vs_zero"
    values = {}
    for job in sorted(d for d in tmp_path.iterdir() if d.is_dir()):
        summary = json.loads((job / "summary.json").read_text())
        values[job.name] = summary[objective]
        overrides = yaml.safe_load((job / "resolved_config.yaml").read_text())["sae"]
        assert 1e-4 <= overrides["lr"] <= 3e-3 and overrides["dim"] in (1024, 2048, 4096)
    assert len(values) == 3
    assert best["best_value"] == max(values.values())


@pytest.mark.slow
def test_submitit_launcher_runs_each_job_of_a_sweep(tmp_path):
    # submitit's local executor: the same pickled job function a SLURM array task runs
    p = run_app(["-m", "stage=sae", *TINY_SAE, "sae.dim=256", "sae.k=4,8", "hydra/launcher=submitit_local",
                 "hydra.launcher.timeout_min=5", f"hydra.sweep.dir={tmp_path}"], env=ONE_THREAD, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    l0 = {json.loads((tmp_path / j / "summary.json").read_text())["blocks.1.hook_resid_post:l0"] for j in ("0", "1")}
    assert l0 == {4.0, 8.0}


def test_slurm_preset_composes_with_resume_on_requeue():
    with initialize_config_dir(config_dir=str(ROOT / "maia_adapt" / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == launcher.tasks_per_node == 4
    assert launcher.max_num_timeout > 0  # requeued jobs resume from their checkpoint
    assert any("MAIA_ADAPT_DATA" in line for line in launcher.setup)


@pytest.mark.slow
def test_a_slurm_job_of_two_tasks_trains_as_one_ddp_group(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = app_command(["stage=train", *TINY_MODEL, "train.max_steps=6", "train.batch_size=32", "train.checkpoint_every=3",
                       "train.log_every=3", "train.eval_positions=100", "train.warmup_steps=2"], run_dir=tmp_path / "run")
    env = {**ONE_THREAD, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2",
           "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "MASTER_PORT": str(port)}
    # two tasks at once, as SLURM starts them: run_app would wait for the first before starting the second
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=app_env({**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)}),
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    # the tasks joined one group: task 0 alone reports and writes, task 1 only trained
    assert "run directory:" in outs[0][0] and "run directory:" not in outs[1][0]
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if "train/loss" in m] == [3, 6]
