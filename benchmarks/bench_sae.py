"""SAE and transcoder training throughput against the matmul peak measured in the same run.

    python benchmarks/bench_sae.py [--d 1024] [--f 16384] [--batch 1024] [--steps 5]     # CPU, float32
    python benchmarks/bench_sae.py --device cuda --bf16 --batch 1024 8192 --modes eager compile --out t.md
    (benchmarks/gpu_all.sh runs the whole GPU set)

FLOPs per sample are those of the matmuls the computation needs: a dense SAE 10·d·F (encoder forward
and weight gradient 2dF each; decoder forward, weight gradient and input gradient 2dF each); the
TopK family 4·d·F + 6·d·k (a dense encoder, then k decoder rows), whichever kernel runs, so a dense
TopK kernel's fraction understates how busy its matmuls are. AuxK is off (aux_k=0), as before any
latent dies. The timed steps skip the per-step metrics, as the training loop does between logs.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from maia_adapt.dictionaries import DictionaryTrainer, SAEConfig, SparseAutoencoder
from maia_adapt.dictionaries.kernels import use_sparse
from maia_adapt.dictionaries.transcoder import Transcoder, TranscoderConfig

ARCHS = ("jumprelu", "relu_l1", "topk", "batchtopk", "transcoder")
TOPK_FAMILY = ("topk", "batchtopk", "transcoder")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(d: int, f: int, b: int, device="cpu", dtype=torch.float32) -> float:
    a, w = torch.randn(b, d, device=device, dtype=dtype), torch.randn(d, f, device=device, dtype=dtype)
    for _ in range(2):
        a @ w
    best = float("inf")
    for _ in range(5 if torch.device(device).type == "cpu" else 20):
        _sync(device)
        t = time.perf_counter()
        a @ w
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * b * d * f / best / 1e9


def make_trainer(arch: str, d: int, f: int, b: int, k: int, steps: int, device="cpu", bf16=False, compile=False,
                 kernel="auto"):
    g = torch.Generator().manual_seed(0)  # the same batch for every setting: first-step losses compare
    x, y = (torch.randn(b, d, generator=g).to(device) for _ in range(2))
    if arch == "transcoder":
        module = Transcoder(TranscoderConfig(d_in=d, d_out=d, dim=f, k=k, batch_size=b, steps=steps, aux_k=0,
                                             site="x", target_site="y", kernel=kernel))
        batch = {"x": x, "y": y}
    else:
        module = SparseAutoencoder(SAEConfig(architecture=arch, d_in=d, dim=f, k=k, batch_size=b, steps=steps, aux_k=0,
                                             kernel=kernel))
        batch = {"x": x}
    return DictionaryTrainer({"s": (module, "x")}, steps, b, device=device, bf16=bf16, compile=compile), batch


def bench(arch: str, d: int, f: int, b: int, steps: int, k: int, device="cpu", bf16=False, compile=False,
          kernel="auto", warmup: int = 3) -> dict:
    """Training samples per second of one SAE (arch) or one transcoder (arch='transcoder'), the loss
    of the first step (equal for eager and compiled runs of the same setting) and, compiled, the
    number of graphs dynamo built."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # a fresh compile per setting, and dynamo's per-code cache never fills
    counters.clear()
    trainer, batch = make_trainer(arch, d, f, b, k, steps + warmup, device, bf16, compile, kernel)
    t0 = time.perf_counter()
    first = trainer.train_step(batch)["s/loss"]
    for _ in range(warmup - 1):  # warm-up (and compilation)
        trainer.train_step(batch, metrics=False)
    _sync(device)
    warm_s = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch, metrics=False)
    _sync(device)
    sps = steps * b / (time.perf_counter() - t)
    return {"sps": sps, "first_loss": first, "warm_s": warm_s,
            "graphs": counters["stats"]["unique_graphs"] if compile else None}


def check_kernels(device, bf16: bool) -> str:
    """The sparse TopK kernels against the dense ones on this device: largest relative difference of
    the loss and of each gradient after one backward pass (same weights, same batch)."""
    worst = {}
    for arch in TOPK_FAMILY:
        grads = {}
        for kernel in ("sparse", "dense"):
            trainer, batch = make_trainer(arch, 64, 1024, 512, 16, 1, device, kernel=kernel)
            m = trainer.dicts["s"][0]
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=trainer.autocast and bf16):
                out = m.losses(batch["x"], **({"target": batch["y"]} if arch == "transcoder" else {}))
            out["loss"].backward()
            grads[kernel] = {"loss": out["loss"].detach(), **{n: p.grad for n, p in m.named_parameters() if p.grad is not None}}
        for n, ref in grads["dense"].items():
            err = ((grads["sparse"][n] - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
            worst[f"{arch}.{n}"] = err
    name, err = max(worst.items(), key=lambda kv: kv[1])
    return f"sparse vs dense kernels on {device} (float32, loss and every gradient): largest relative difference {err:.1e} ({name})"


def flops_per_sample(arch: str, d: int, f: int, k: int) -> int:
    return 4 * d * f + 6 * d * k if arch in TOPK_FAMILY else 10 * d * f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--f", type=int, default=16384)
    ap.add_argument("--batch", type=int, nargs="+", default=[1024])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the losses (CUDA)")
    ap.add_argument("--compile", action="store_true", help="same as --modes compile")
    ap.add_argument("--modes", nargs="+", default=None, choices=["eager", "compile"])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--kernels", nargs="+", default=["auto"], choices=["auto", "sparse", "dense"],
                    help="TopK-family kernels: the first in every mode, the others eager, last")
    ap.add_argument("--out", type=Path, help="append the table to this file, a row as soon as it is measured")
    ap.add_argument("--budget-s", type=float, default=0, help="skip the settings left once this many seconds have passed")
    ap.add_argument("--check", action="store_true", help="first compare the sparse and dense TopK kernels here")
    ap.add_argument("--auc", action="store_true", help="also time the ROC-AUC of SAE features (CPU)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    modes = a.modes or (["compile"] if a.compile else ["eager"])
    dtype = torch.bfloat16 if a.bf16 and a.device.startswith("cuda") else torch.float32
    peak = max(matmul_gflops(a.d, a.f, b, a.device, dtype) for b in a.batch)
    dev = torch.cuda.get_device_name() if a.device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    head = (f"{dev}, torch {torch.__version__}, d={a.d} F={a.f} k={a.k}, {a.steps} timed steps after 3 warm-up; "
            f"{str(dtype)[6:]} matmul peak in this run {peak:,.1f} GFLOP/s (best of [batch, d] x [d, F])")
    lines = [head, "",
             "| dictionary | kernel | batch | mode | samples/s | fraction of matmul peak | loss at step 1 | graphs | warm-up s |",
             "|---|---|---|---|---|---|---|---|---|"]

    def emit(text_lines):
        for line in text_lines:
            print(line, flush=True)
        if a.out:
            with open(a.out, "a") as fh:
                fh.write("\n".join(text_lines) + "\n")

    if a.check:
        try:
            check = check_kernels(a.device, a.bf16)
        except Exception as e:  # the sparse kernels failing here must not cost the dense measurements
            check = f"sparse vs dense kernel check failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        lines[1:1] = ["", check]
    emit(lines)
    # under a time budget the cheap and the headline numbers come first: eager, then compiled (larger
    # batch first), then the other TopK kernels (eager)
    settings = [(m, b, arch, "-" if arch not in TOPK_FAMILY else a.kernels[0]) for m in modes
                for b in (a.batch if m == "eager" else sorted(a.batch, reverse=True)) for arch in a.archs]
    settings += [("eager", b, arch, kern) for kern in a.kernels[1:] for b in a.batch for arch in a.archs
                 if arch in TOPK_FAMILY]
    for mode, b, arch, kern in settings:
        kernel = "auto" if kern == "-" else kern
        if kern == "auto":
            kern = "sparse (auto)" if use_sparse("auto", torch.device(a.device)) else "dense (auto)"
        row = f"| {arch} | {kern} | {b} | {mode} |"
        if a.budget_s and time.perf_counter() - t_start > a.budget_s:
            emit([f"{row} skipped: past the {a.budget_s:.0f} s budget | | | | |"])
            continue
        try:
            r = bench(arch, a.d, a.f, b, a.steps, a.k, a.device, a.bf16, mode == "compile", kernel)
        except Exception as e:  # one failing setting must not lose the others' numbers
            emit([f"{row} failed: {type(e).__name__}: {str(e).splitlines()[0][:150]} | | | | |"])
            continue
        g = r["sps"] * flops_per_sample(arch, a.d, a.f, a.k) / 1e9
        graphs = "" if r["graphs"] is None else r["graphs"]
        emit([f"{row} {r['sps']:,.0f} | {g / peak:.1%} | {r['first_loss']:.5g} | {graphs} | {r['warm_s']:.1f} |"])
    if a.auc:
        emit(["", f"ROC-AUC of {a.f} features x 768 concepts on 2,000 samples: {bench_auc(f=a.f):.2f} s"])
    emit(["", f"(total {time.perf_counter() - t_start:.0f} s)", ""])


def bench_auc(n: int = 2000, f: int = 16384, c: int = 768) -> float:
    """Seconds to score f sparse features against c concepts on n samples (calibration, threats)."""
    from maia_adapt.concepts import roc_auc_matrix

    g = torch.Generator().manual_seed(0)
    z = torch.relu(torch.randn(n, f, generator=g) - 2.0)  # ~2% firing, like an SAE's features
    y = torch.rand(n, c, generator=g) < 0.1
    roc_auc_matrix(z[:, :64], y)
    t = time.perf_counter()
    roc_auc_matrix(z, y)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
