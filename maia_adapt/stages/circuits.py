"""stage=circuits: which transcoder features depend on skill, and how layer 0 feeds them in layer 1.

Writes features_layer_<l>.csv (mean activation per Elo bucket for the base model and, with
circuits.finetuned, the calibrated one, and the skill relevance), circuit.csv and circuit.png (the
strongest attributed edges into the top layer-1 features), skill_profile.png, dashboards/ (top
positions of the selected layer-1 features), patching.json and patching_heads.png (where the skill
dependence enters: sites and heads exchanged between < 1100 and >= 2000, the attention each head
moves), results.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..analysis.circuits import (attributions, circuit_edges, codes_by_bucket, connections, plot_circuit, rng_positions, skill_relevance, top_indices)
from ..analysis.patching import attention_shift, head_patching, skill_patching
from ..data.preprocess import open_or_build_store
from ..dictionaries.transcoder import load_transcoder
from ..encoding import BUCKET_NAMES
from ..errors import ConfigError
from ..io import atomic_write_csv, atomic_write_json
from ..layout import transcoder_folder
from ..model import load_model
from ..model.hooks import block_hook
from ..model.skill import Maia2Skill
from ..reporting.dashboard import write_dashboards
from ..reporting.plots import bucket_heatmap, grouped_bars
from .common import frozen_model


# the model families it takes: Maia-2 only, and why not Maia-1 (the one-line error)
NOT_MAIA1 = "circuits are built from transcoders of Maia-2's transformer FFNs, and Maia-1 has none"
NOT_MAIA3 = "circuits are built on Maia-2's Elo-query attention and its transcoders"


@dataclass
class CircuitsConfig:
    """stage=circuits: layer-0 -> layer-1 transcoder feature circuits and their skill dependence."""

    transcoders: Optional[str] = None  # a stage=transcoder run with transcoders/layer_0 and layer_1
    finetuned: Optional[str] = None  # a calibrated model (e.g. a stage=finetune run) to compare with
    positions: int = 1000  # test positions
    top_down: int = 12  # layer-1 features kept (most skill-relevant / most changed by fine-tuning)
    top_up: int = 40  # layer-0 candidates per circuit (most skill-relevant)
    edges_per_node: int = 3
    dashboards: bool = True
    batch_size: int = 256
    # where skill enters (analysis/patching.py): test positions run at < 1100 and >= 2000, then at
    # < 1100 with each block's sites and each attention head taken from the >= 2000 run; 0: skip
    patching_positions: int = 2000


SCHEMA = CircuitsConfig  # cfg.circuits


def _patching(model, store, positions: int, seed: int, run_dir: Path) -> tuple[dict, list[str]]:
    """(summary numbers, results.md lines; writes patching.json and patching_heads.png): each block's
    Elo query term, attention output, FFN output and residual stream exchanged between < 1100 and
    >= 2000 (and moved by the mean difference instead), each attention head alone, and the attention
    each head moves between the two buckets."""
    sm = Maia2Skill(model)
    inputs = sm.inputs(store, rng_positions(store, "test", positions, seed))
    blocks = range(model.cfg.num_blocks_vit)
    sites = [block_hook(b, s) for b in blocks for s in ("hook_elo_q", "hook_attn_out", "hook_mlp_out", "hook_resid_post")]
    res = skill_patching(sm, inputs, sites, seed=seed, mean_shift=True)
    heads = {b: head_patching(sm, inputs, b, seed=seed) for b in blocks}
    shift = {b: attention_shift(sm, inputs, b) for b in blocks}
    grouped_bars({f"block {b}": [h["kl_closed"] for h in heads[b]["heads"]] for b in blocks},
                 [f"head {h}" for h in range(model.cfg.heads)], run_dir / "patching_heads.png",
                 "share of KL(>= 2000 || < 1100) closed by one head's output from the >= 2000 run", "head", "KL closed")
    atomic_write_json(run_dir / "patching.json", {**res, "heads": {str(b): h for b, h in heads.items()},
                                                  "attention_shift": {str(b): v for b, v in shift.items()}})
    a0, e1 = res["sites"][block_hook(0, "hook_attn_out")], res["sites"][block_hook(1, "hook_elo_q")]
    top = max(range(model.cfg.heads), key=lambda h: heads[0]["heads"][h]["kl_closed"])
    summary = {"skill_kl_closed_attn0": a0["kl_closed"], "skill_kl_closed_attn0_ci95": a0["kl_closed_ci95"],
               "skill_mean_shift_attn0": a0["mean_shift"]["kl_closed"],
               "skill_mean_shift_attn0_ci95": a0["mean_shift"]["kl_closed_ci95"],
               "skill_kl_closed_elo1": e1["kl_closed"], "skill_kl_closed_elo1_ci95": e1["kl_closed_ci95"],
               "skill_top_head0": top, "skill_top_head0_kl_closed": heads[0]["heads"][top]["kl_closed"],
               "skill_top_head0_attention_moved": shift[0]["moved"][top],
               "skill_top_moves_differ": res["top_moves_differ"]}

    def f(v):
        return f"{v['kl_closed']:.3f} [{v['kl_closed_ci95'][0]:.3f}, {v['kl_closed_ci95'][1]:.3f}]"

    lines = ["## Where the skill dependence enters", "",
             f"{res['positions']} test positions at < 1100 and at >= 2000 (opponent alike); the top move differs on "
             f"{res['top_moves_differ']:.1%}. Share of KL(>= 2000 || < 1100) closed when the < 1100 run takes a "
             "site from the >= 2000 run (exchange) or is moved by the mean difference, one vector per token "
             "(mean shift); 95% bootstrap over positions. `hook_elo_q` is the Elo's own entry into a block (its "
             "term of the attention queries, everything upstream left at < 1100); it does not vary with the "
             "position, so its mean shift is its exchange.", "",
             "| site | exchange | mean shift | top moves flipped (exchange / mean shift) |", "|---|---|---|---|"]
    lines += [f"| {s} | {f(v)} | {f(v['mean_shift'])} | {v['top_moves_flipped']:.3f} / {v['mean_shift']['top_moves_flipped']:.3f} |"
              for s, v in res["sites"].items()]
    def keys(gain):  # the key tokens that gain and lose the most attention at >= 2000
        up, down = max(range(len(gain)), key=gain.__getitem__), min(range(len(gain)), key=gain.__getitem__)
        return f"token {up} {gain[up]:+.2f}, token {down} {gain[down]:+.2f}"

    lines += ["", "One head at a time (`blocks.{b}.hook_attn_heads`); the attention mass the head moves between "
              "the two buckets (total variation between its patterns, mean over positions and query tokens; the "
              "Elo acts on nothing else), and the key tokens that gain and lose the most of it at >= 2000:", "",
              "![heads](patching_heads.png)", "",
              "| head | " + " | ".join(f"block {b}: KL closed | moved | gains, loses" for b in blocks) + " |",
              "|---" * (3 * len(blocks) + 1) + "|"]
    lines += [f"| {h} | " + " | ".join(f"{f(heads[b]['heads'][h])} | {shift[b]['moved'][h]:.3f} | {keys(shift[b]['key_gain'][h])}"
                                       for b in blocks) + " |" for h in range(model.cfg.heads)]
    lines += ["| all | " + " | ".join(f"{f(heads[b]['all'])} | - | -" for b in blocks) + " |", ""]
    return summary, lines


def _transcoders(cc) -> dict:
    if not cc.transcoders:
        raise ConfigError("stage=circuits needs circuits.transcoders (a stage=transcoder run with layers 0 and 1)")
    folders = {l: transcoder_folder(cc.transcoders, l) for l in (0, 1)}
    for l, f in folders.items():
        if not (f / "cfg.json").is_file():
            raise ConfigError(f"{f}: no transcoder for layer {l} (run stage=transcoder transcoder.layers=[0,1])")
    return {l: load_transcoder(f) for l, f in folders.items()}


def _write_tables(run_dir: Path, relevance, means, tuned, edges, conn) -> None:
    """features_layer_<l>.csv (the 200 most skill-relevant features of each layer) and circuit.csv."""
    for l in relevance:
        rows = []
        for f in top_indices(relevance[l], 200):
            row = {"feature": f, "relevance": round(float(relevance[l][f]), 5)}
            row.update({f"base_{BUCKET_NAMES[k]}": round(float(means[l][k, f]), 5) for k in range(len(BUCKET_NAMES))})
            if tuned:
                row.update({f"tuned_{BUCKET_NAMES[k]}": round(float(tuned[l][k, f]), 5) for k in range(len(BUCKET_NAMES))})
            rows.append(row)
        atomic_write_csv(run_dir / f"features_layer_{l}.csv", rows)
    atomic_write_csv(run_dir / "circuit.csv", [{"layer0_feature": i, "layer1_feature": j, "attribution": round(v, 6),
                                         "connection": round(float(conn[i, j]), 6)} for i, j, v in edges]
              or [{"layer0_feature": "", "layer1_feature": "", "attribution": "", "connection": ""}])


def _figures(run_dir: Path, cc, store, idx, down, edges, relevance, means, tokens, what: str):
    """(circuit.png, skill_profile.png, the dashboards' index or None)."""
    graph = plot_circuit(edges, run_dir / "circuit.png", f"layer 0 -> layer 1 circuit of the {cc.top_down} features with the largest {what}")
    prof = means[1][:, down].T
    vmax = float(prof.max()) if prof.numel() else 1.0
    profile = bucket_heatmap(prof.numpy(), [f"L1 #{f}" for f in down], run_dir / "skill_profile.png",
                             "mean activation of the selected layer-1 features per Elo bucket", vmin=0.0,
                             vmax=max(vmax, 1e-6), label="mean activation")
    index = None
    if cc.dashboards and down:
        pos = tokens[1].view(len(idx), -1, tokens[1].shape[-1]).amax(1)
        fc = {f: [{"concept": f"skill relevance {float(relevance[1][f]):.3f}", "auc_selection": float("nan"), "auc_heldout": float("nan")}]
              for f in down}
        index = write_dashboards(run_dir / "dashboards", pos, store.fens(idx), fc, elo_profile=means[1],
                                 title="layer-1 transcoder features most tied to skill")
    return graph, profile, index


def _report(n: int, what: str, index, edges, conn, patch_lines) -> str:
    lines = ["# Transcoder circuits", "", f"{n} test positions; layer-1 features ranked by their {what}; "
             f"attribution A[i, j] = E[z0_i | z1_j > 0] x C[i, j], C = (W_dec0 * gamma) W_enc1.", "",
             "![circuit](circuit.png)", "", "![profile](skill_profile.png)", ""]
    if index is not None:
        lines += ["Top positions of each selected feature: [dashboards/index.html](dashboards/index.html)", ""]
    lines += ["| layer-0 feature | layer-1 feature | attribution | connection |", "|---|---|---|---|"]
    lines += [f"| {i} | {j} | {v:+.4f} | {float(conn[i, j]):+.4f} |" for i, j, v in edges]
    lines += ["", *patch_lines]
    return "\n".join(lines) + "\n"


def run(cfg, frame) -> dict:
    run_dir, cc = frame.dir, cfg.circuits
    model = frozen_model(cfg, "circuits", NOT_MAIA1, NOT_MAIA3)  # first: model=maia1 is refused before anything else
    tcs = _transcoders(cc)
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    idx = rng_positions(store, "test", cc.positions, cfg.seed)
    means, tokens = codes_by_bucket(model, store, idx, tcs, cc.batch_size)
    tuned = None
    if cc.finetuned:
        ft = load_model(cc.finetuned, attention=(model.cfg.heads, model.cfg.dim_head)).eval()
        tuned, _ = codes_by_bucket(ft, store, idx, tcs, cc.batch_size)

    relevance = {l: skill_relevance(means[l], tuned[l] if tuned else None) for l in tcs}
    down = top_indices(relevance[1], cc.top_down)
    up = top_indices(relevance[0], cc.top_up)
    gamma = model.transformer.elo_layers[1][1].net[0].weight.detach()
    conn = connections(tcs[0], tcs[1], gamma)
    edges = circuit_edges(attributions(tokens[0], tokens[1], conn), up, down, cc.edges_per_node)
    _write_tables(run_dir, relevance, means, tuned, edges, conn)
    what = "change under fine-tuning" if tuned else "spread across Elo buckets"
    graph, profile, index = _figures(run_dir, cc, store, idx, down, edges, relevance, means, tokens, what)
    patched, patch_lines = _patching(model, store, cc.patching_positions, cfg.seed, run_dir) if cc.patching_positions else ({}, [])
    for png in (graph, profile, *([run_dir / "patching_heads.png"] if patched else [])):
        frame.tracker().log_image(f"circuits/{png.stem}", png)
    summary = {"positions": int(len(idx)), "layer1_features": len(down), "edges": len(edges),
               "mean_relevance_selected": float(relevance[1][down].mean()) if down else 0.0,
               "strongest_edge": max((abs(e[2]) for e in edges), default=0.0),
               "compared_with_finetuned": bool(tuned), **patched}
    frame.report(_report(len(idx), what, index, edges, conn, patch_lines),
                 {**summary, "selected_layer1": down, "edges": edges})
    return summary
