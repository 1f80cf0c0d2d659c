"""stage=probe: does the model represent each concept equally well at every skill level?

For each site, linear probes (one per concept) are trained on train-split positions and tested on
test-split positions (other games) with the model conditioned on each Elo bucket; a probe trained on
shuffled labels is the control. The logit lens reads the policy off each block's residual stream per
bucket. Writes probes/<site>/bucket_<b>.safetensors, probe_auc_<site>.png, probe_<site>.csv,
logit_lens.png, results.md and results.json.

`model=maia1` probes each Maia-1 network (bucket b -> the network of its band) at its own hook sites,
e.g. `probe.sites=[blocks.5.hook_resid_post]`: a conv map [B, 64, 8, 8] is mean-pooled over the 64
squares into one 64-channel vector per position (as Maia-2's 8 tokens are mean-pooled), so the
probe API is unchanged. The logit lens reads Maia-2's transformer stream through its own final
norms and head; Maia-1 has no such stream, so it is skipped with a note.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..concepts import check_families
from ..data.preprocess import open_or_build_store
from ..encoding import BUCKET_NAMES
from ..errors import ConfigError
from ..io import atomic_write_csv, atomic_write_json, atomic_write_text
from ..layout import probe_file, site_slug
from ..model.skill import Maia2Skill
from ..analysis.probes import awareness_trend, concept_labels, logit_lens_by_bucket, probes_per_bucket, save_probe
from ..reporting.plots import bucket_heatmap
from ..runtime.tracking import Tracker
from .common import bucket_label, skill_model


def _site_report(model, site: str, buckets, auc, ctrl, spread, trend: dict, png_name: str,
                 change: dict | None = None) -> list[str]:
    """results.md's section for one site: AUC per bucket [buckets, concepts], controls, the trend."""
    per_bucket = np.nanmean(auc, axis=1)
    lines = [f"## {site}", "", f"mean test AUC {np.nanmean(auc):.3f} (shuffled-label control "
             f"{np.nanmean(ctrl):.3f}); a concept's AUC varies across buckets by {np.nanmean(spread):.3f} on average. "
             f"Top minus bottom bucket, mean over {trend['concepts']} concepts: "
             f"{trend['auc_gain_top_minus_bottom']:+.3f} [{trend['auc_gain_top_minus_bottom_ci95'][0]:+.3f}, "
             f"{trend['auc_gain_top_minus_bottom_ci95'][1]:+.3f}]; slope per bucket {trend['auc_slope_per_bucket']:+.4f} "
             f"[{trend['auc_slope_per_bucket_ci95'][0]:+.4f}, {trend['auc_slope_per_bucket_ci95'][1]:+.4f}] "
             "(95% bootstrap over concepts; 0 inside = awareness flat across skill)."
             + ("" if change is None else
                f" The Elo input moves these activations: top vs bottom bucket, {change['change']:.3f} of their spread "
                f"over positions ({change['position_dependent']:.3f} beyond the mean shift)."),
             "", f"![probe AUC]({png_name})", "", "| Elo bucket | mean probe AUC | mean control AUC |", "|---|---|---|"]
    lines += [f"| {bucket_label(model, b)} | {per_bucket[i]:.3f} | {np.nanmean(ctrl[i]):.3f} |" for i, b in enumerate(buckets)]
    lines.append("")
    return lines


def run(cfg, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    pc = cfg.probe
    check_families(pc.families, "probe.families")
    model = skill_model(cfg, "probe")
    for s in pc.sites:
        model.check_hook_name(s)
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    rng = np.random.default_rng(cfg.seed)
    train_idx = np.sort(rng.permutation(store.split_indices("train"))[: pc.train_positions])
    test_idx = np.sort(rng.permutation(store.split_indices("test"))[: pc.test_positions])
    if not len(train_idx) or not len(test_idx):
        raise ConfigError("stage=probe needs positions in both the train and the test split of the data")
    names, y_tr, y_te = concept_labels(store.fens(train_idx), store.fens(test_idx), pc.families, pc.min_positives,
                                       key="probe")
    print(f"{len(names)} concepts, {len(train_idx)} train / {len(test_idx)} test positions, buckets {list(pc.buckets)}")

    tracker = Tracker(cfg, run_dir, job_type="probe")
    results: dict = {"model": model.name, "concepts": names, "buckets": list(pc.buckets), "sites": {}}
    lines = ["# Linear probes per Elo bucket", "", f"{len(names)} concepts ({', '.join(pc.families)}), "
             f"{len(train_idx)} train / {len(test_idx)} test positions (different games), l2 {pc.l2}.", ""]
    summary = {}
    try:
        for site in pc.sites:
            torch.manual_seed(cfg.seed)
            res = probes_per_bucket(model, store, train_idx, test_idx, site, y_tr, y_te, names, buckets=pc.buckets,
                                    l2=pc.l2, seed=cfg.seed, shuffled_control=pc.shuffled_control,
                                    batch_size=pc.batch_size)
            slug = site_slug(site)
            for b, probe in res["probes"].items():
                save_probe(probe, probe_file(run_dir, site, b), {"site": site, "elo_bucket": b})
            auc = res["auc"].numpy()
            ctrl = res["control_auc"].numpy()
            png = bucket_heatmap(auc.T, names, run_dir / f"probe_auc_{slug}.png", f"{site}: probe test AUC per Elo bucket")
            tracker.log_image(f"probe/{slug}", png)
            atomic_write_csv(run_dir / f"probe_{slug}.csv", [
                {"concept": n, **{f"auc_{BUCKET_NAMES[b]}": round(float(auc[i, c]), 4) for i, b in enumerate(pc.buckets)},
                 **{f"control_{BUCKET_NAMES[b]}": round(float(ctrl[i, c]), 4) for i, b in enumerate(pc.buckets)}}
                for c, n in enumerate(names)])
            per_bucket = np.nanmean(auc, axis=1)
            spread = np.nanmax(auc, axis=0) - np.nanmin(auc, axis=0)
            trend = awareness_trend(auc.T, seed=cfg.seed)  # [concepts, buckets]
            results["sites"][site] = {"mean_auc_per_bucket": per_bucket.tolist(),
                                      "mean_control_auc": float(np.nanmean(ctrl)),
                                      "mean_auc_spread_across_buckets": float(np.nanmean(spread)), **trend,
                                      "activation_change": res["activation_change"]}
            summary[f"{slug}:mean_auc"] = float(np.nanmean(auc))
            summary[f"{slug}:mean_control_auc"] = float(np.nanmean(ctrl))
            summary[f"{slug}:mean_spread_across_buckets"] = float(np.nanmean(spread))
            summary[f"{slug}:auc_gain_top_minus_bottom"] = trend["auc_gain_top_minus_bottom"]
            summary[f"{slug}:auc_gain_top_minus_bottom_ci95"] = trend["auc_gain_top_minus_bottom_ci95"]
            if res["activation_change"]:
                summary[f"{slug}:activation_change_top_vs_bottom"] = res["activation_change"]["change"]
            lines += _site_report(model, site, pc.buckets, auc, ctrl, spread, trend, png.name, res["activation_change"])
        if pc.logit_lens and not isinstance(model, Maia2Skill):
            results["logit_lens"] = None
            lines += ["## Logit lens", "", f"Skipped: the logit lens reads Maia-2's transformer residual stream through its "
                      f"final norms and policy head; {model.name} is a convolutional network with no such stream.", ""]
        elif pc.logit_lens:
            lens = logit_lens_by_bucket(model.model, store, test_idx, buckets=pc.buckets, batch_size=pc.batch_size)
            agree, acc = lens["agreement"].numpy(), lens["accuracy"].numpy()
            png = bucket_heatmap(agree, lens["lenses"], run_dir / "logit_lens.png",
                                 "logit lens: top-1 agreement with the model's policy", vmin=0.0, vmax=1.0, label="agreement")
            tracker.log_image("probe/logit_lens", png)
            results["logit_lens"] = {"lenses": lens["lenses"], "agreement": agree.tolist(), "accuracy": acc.tolist()}
            lines += ["## Logit lens", "", "The policy head read off each block's residual stream (after the model's final "
                      "norms): top-1 agreement with the real policy and accuracy on the played move, per bucket.", "",
                      "![logit lens](logit_lens.png)", "",
                      "| lens | " + " | ".join(BUCKET_NAMES[b] for b in pc.buckets) + " |",
                      "|---|" + "---|" * len(pc.buckets)]
            for i, name in enumerate(lens["lenses"]):
                lines.append(f"| {name} agreement | " + " | ".join(f"{v:.2f}" for v in agree[i]) + " |")
                lines.append(f"| {name} accuracy | " + " | ".join(f"{v:.2f}" for v in acc[i]) + " |")
        atomic_write_json(run_dir / "results.json", results)
        atomic_write_text(run_dir / "results.md", "\n".join(lines) + "\n")
        tracker.summary(summary)
    finally:
        tracker.finish()
    return summary
