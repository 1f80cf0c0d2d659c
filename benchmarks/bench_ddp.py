"""Data-parallel throughput: stage=train and stage=sae on 1 process against N processes (torchrun).

    python benchmarks/bench_ddp.py [--procs 2] [--steps 200] [--model maia2_small]
    python benchmarks/bench_ddp.py --procs 4 --device cuda        # on a machine with 4 GPUs

Each run is the real app on the embedded self-play corpus; throughput is the last logged
`positions_per_s` (Maia-2) or `samples_per_s` (SAE) of metrics.jsonl, so start-up is not counted.
On CPU the single process gets all cores and each of the N processes cores / N threads.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], procs: int, run_dir: Path) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] \
        if procs > 1 else [sys.executable]
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run([*launcher, "-m", "maia_adapt.run", *args, "logger=none", f"hydra.run.dir={run_dir}"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if any(k.endswith("_per_s") for k in m)][-1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--model", default="maia2_small")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    jobs = {
        "train (Maia-2, batch 256)": [
            "stage=train", f"model={a.model}", "model.checkpoint=null", f"train.max_steps={a.steps}",
            "train.batch_size=256", f"train.log_every={a.steps // 2}", f"train.checkpoint_every={a.steps}",
            "train.eval_every=100000", "train.eval_positions=100", f"train.device={a.device}"],
        "sae (TopK F=4096, batch 1024)": [
            "stage=sae", f"sae.steps={a.steps}", "sae.batch_size=1024", "sae.dim=4096", "sae.k=32",
            "sae.cache_positions=8192", "sae.chunk_positions=8192", f"sae.log_every={a.steps // 2}",
            f"sae.checkpoint_every={a.steps}", "sae.eval_positions=100", f"sae.device={a.device}"],
    }
    print(f"| job | 1 process | {a.procs} processes | speed-up |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in jobs.items():
            rates = []
            for procs in (1, a.procs):
                m = run(args, procs, Path(tmp) / f"{name.split()[0]}_{procs}" / "run")
                rates.append(next(v for k, v in m.items() if k.endswith("_per_s")))
            print(f"| {name} | {rates[0]:,.0f}/s | {rates[1]:,.0f}/s | {rates[1] / rates[0]:.2f}x |")


if __name__ == "__main__":
    main()
