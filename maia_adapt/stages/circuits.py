"""stage=circuits: which transcoder features depend on skill, and how layer 0 feeds them in layer 1.

Writes features_layer_<l>.csv (mean activation per Elo bucket for the base model and, with
circuits.finetuned, the calibrated one, and the skill relevance), circuit.csv and circuit.png (the
strongest attributed edges into the top layer-1 features), skill_profile.png, dashboards/ (top
positions of the selected layer-1 features), results.md.
"""
from __future__ import annotations

from pathlib import Path

from ..analysis.circuits import (attributions, circuit_edges, codes_by_bucket, connections, plot_circuit, rng_positions, skill_relevance, top_indices)
from ..data.preprocess import open_or_build_store
from ..dictionaries.transcoder import load_transcoder
from ..encoding import BUCKET_NAMES
from ..errors import ConfigError
from ..io import atomic_write_csv, atomic_write_json, atomic_write_text
from ..layout import transcoder_folder
from ..model import load_model
from ..reporting.dashboard import write_dashboards
from ..reporting.plots import bucket_heatmap
from ..runtime.tracking import Tracker
from .common import frozen_model


def run(cfg, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    cc = cfg.circuits
    model = frozen_model(cfg, "circuits")  # first: model=maia1 is refused before anything else
    if not cc.transcoders:
        raise ConfigError("stage=circuits needs circuits.transcoders (a stage=transcoder run with layers 0 and 1)")
    folders = {l: transcoder_folder(cc.transcoders, l) for l in (0, 1)}
    for l, f in folders.items():
        if not (f / "cfg.json").is_file():
            raise ConfigError(f"{f}: no transcoder for layer {l} (run stage=transcoder transcoder.layers=[0,1])")
    tcs = {l: load_transcoder(f) for l, f in folders.items()}
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    idx = rng_positions(store, "test", cc.positions, cfg.seed)
    means, tokens = codes_by_bucket(model, store, idx, tcs, cc.batch_size)
    tuned = None
    if cc.finetuned:
        ft = load_model(cc.finetuned).eval()
        tuned, _ = codes_by_bucket(ft, store, idx, tcs, cc.batch_size)

    relevance = {l: skill_relevance(means[l], tuned[l] if tuned else None) for l in tcs}
    down = top_indices(relevance[1], cc.top_down)
    up = top_indices(relevance[0], cc.top_up)
    gamma = model.transformer.elo_layers[1][1].net[0].weight.detach()
    conn = connections(tcs[0], tcs[1], gamma)
    attr = attributions(tokens[0], tokens[1], conn)
    edges = circuit_edges(attr, up, down, cc.edges_per_node)

    for l in tcs:
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
    what = "change under fine-tuning" if tuned else "spread across Elo buckets"
    graph = plot_circuit(edges, run_dir / "circuit.png", f"layer 0 -> layer 1 circuit of the {cc.top_down} features with the largest {what}")
    prof = means[1][:, down].T
    vmax = float(prof.max()) if prof.numel() else 1.0
    profile = bucket_heatmap(prof.numpy(), [f"L1 #{f}" for f in down], run_dir / "skill_profile.png",
                             "mean activation of the selected layer-1 features per Elo bucket", vmin=0.0,
                             vmax=max(vmax, 1e-6), label="mean activation")
    index = None
    if cc.dashboards and down:
        pos = tokens[1].view(len(idx), -1, tokens[1].shape[-1]).amax(1)
        fc = {f: [{"concept": f"skill relevance {float(relevance[1][f]):.3f}", "auc": float("nan"), "auc_heldout": float("nan")}]
              for f in down}
        index = write_dashboards(run_dir / "dashboards", pos, store.fens(idx), fc, elo_profile=means[1],
                                 title="layer-1 transcoder features most tied to skill")
    tracker = Tracker(cfg, run_dir, job_type="circuits")
    try:
        for png in (graph, profile):
            tracker.log_image(f"circuits/{png.stem}", png)
    finally:
        tracker.finish()
    summary = {"positions": int(len(idx)), "layer1_features": len(down), "edges": len(edges),
               "mean_relevance_selected": float(relevance[1][down].mean()) if down else 0.0,
               "strongest_edge": max((abs(e[2]) for e in edges), default=0.0),
               "compared_with_finetuned": bool(tuned)}
    lines = ["# Transcoder circuits", "", f"{len(idx)} test positions; layer-1 features ranked by their {what}; "
             f"attribution A[i, j] = E[z0_i | z1_j > 0] x C[i, j], C = (W_dec0 * gamma) W_enc1.", "",
             "![circuit](circuit.png)", "", "![profile](skill_profile.png)", ""]
    if index is not None:
        lines += ["Top positions of each selected feature: [dashboards/index.html](dashboards/index.html)", ""]
    lines += ["| layer-0 feature | layer-1 feature | attribution | connection |", "|---|---|---|---|"]
    lines += [f"| {i} | {j} | {v:+.4f} | {float(conn[i, j]):+.4f} |" for i, j, v in edges]
    atomic_write_text(run_dir / "results.md", "\n".join(lines) + "\n")
    atomic_write_json(run_dir / "results.json", {**summary, "selected_layer1": down, "edges": edges})
    return summary
