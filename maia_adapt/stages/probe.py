"""stage=probe: does the model represent each concept equally well at every skill level?

For each site, linear probes (one per concept) are trained on train-split positions and tested on
test-split positions (other games) with the model conditioned on each Elo bucket; a probe trained on
shuffled labels is the control. The logit lens reads the policy off each block's residual stream per
bucket. Writes probes/<site>/bucket_<b>.safetensors, probe_auc_<site>.png, probe_<site>.csv,
logit_lens.png, results.md and results.json.

The seed study's probe choices are `probe.*` switches (ProbeOptions; experiments/probe_study/
README.md, "The seed's probes"): `probe.sampling=balanced|balanced_splits` draws per-concept balanced
positions instead of the two splits, `probe.c_grid` chooses the strength per concept and bucket on a
validation part, `probe.metric=accuracy|r2` adds that metric's table, heatmap probe_<metric>_<site>.png
and top-minus-bottom interval (AUC is always reported).

`model=maia1` probes each Maia-1 network (bucket b -> the network of its band) at its own hook sites,
e.g. `probe.sites=[blocks.5.hook_resid_post]`: a conv map [B, 64, 8, 8] is mean-pooled over the 64
squares into one 64-channel vector per position (as Maia-2's 8 tokens are mean-pooled), so the
probe API is unchanged. The logit lens reads Maia-2's transformer stream through its own final
norms and head; Maia-1 has no such stream, so it is skipped with a note.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from ..concepts import check_families, position_concepts
from ..data.preprocess import open_or_build_store
from ..encoding import BUCKET_NAMES
from ..errors import ConfigError
from ..io import atomic_write_csv
from ..layout import probe_file, site_slug
from ..model.skill import Maia2Skill
from ..analysis.probes import (C_SCALES, METRICS, PENALTIES, SAMPLINGS, ProbeOptions, awareness_trend,
                               balanced_pool_parts, balanced_split_parts, concept_labels_parts, logit_lens_by_bucket,
                               probes_balanced, probes_per_bucket, save_probe)
from ..reporting.plots import bucket_heatmap
from ..checks import NON_NEGATIVE, POSITIVE_INT, bad, check_section, elo
from .common import bucket_label, skill_model


_METRIC_NAMES = {"auc": "AUC", "accuracy": "accuracy", "r2": "R^2"}
# the probe.* keys of the seed's choices, recorded in results.json
_SEED_KEYS = ("penalty", "l1", "l2", "c_grid", "c_scale", "select_by", "metric", "penalize_bias", "standardize",
              "class_balance", "sampling", "val_positions", "pool_positions", "max_per_class", "split_fractions")


@dataclass
class ProbeConfig:
    """stage=probe: linear probes per concept and Elo bucket (awareness), and the logit lens."""

    device: str = "auto"  # where the model runs: auto (CUDA when there is one) | cpu | cuda | cuda:N
    sites: list[str] = "${sites}"  # the site preset's (site=...); a list here overrides it
    # of threat, strategic, capture, study (the study's own 13 strategic concepts), seed172 (the 172 of
    # the study's revision; seed172:<category> for one of its 5 categories), board-state
    families: list[str] = field(default_factory=lambda: ["threat", "strategic"])
    train_positions: int = 4000  # from the train split
    test_positions: int = 2000  # from the test split (other games)
    buckets: list[int] = field(default_factory=lambda: list(range(11)))
    min_positives: int = 20  # concepts with fewer positives (or negatives) in train or test are left out
    l2: float = 1.0e-3  # penalty=l2 without c_grid: strength of l2/2 |w|^2 on the (class-weighted) mean loss
    shuffled_control: bool = True
    logit_lens: bool = True
    batch_size: int = 256
    # The seed study's probe choices, each on its own (experiments/probe_study/README.md, "The seed's
    # probes"); the defaults are the probe above.
    penalty: str = "l2"  # l2 | l1 (the seed's, both versions)
    l1: float = 1.0e-3  # penalty=l1 without c_grid: strength of l1 |w|_1 on the mean loss
    # inverse strengths C, one chosen per (concept, bucket) on the validation part by select_by
    # (first in this order on ties); null/empty: the fixed l2 / l1
    c_grid: Optional[list[float]] = None
    c_scale: str = "sum"  # how C maps to the strength: sum (sklearn: 1 / (C n)) | mean (the revision: 1 / C)
    select_by: str = "metric"  # the validation score that chooses C: metric (probe.metric's) | auc | accuracy | r2
    metric: str = "auc"  # reported per bucket, with top minus bottom: auc | accuracy | r2 (AUC is always reported too)
    penalize_bias: bool = False  # true: the penalty also takes the bias (liblinear and the revision)
    standardize: bool = True  # false: fit the raw activations (the seed's)
    class_balance: bool = True  # false: unweighted loss (the seed's, which balances by sampling instead)
    # split: train_positions of train games, test_positions of test games (val_positions of val games
    # with a c_grid) | balanced: the revision's per-concept balanced positions from one pool of
    # pool_positions train positions, split by split_fractions | balanced_splits: the NeurIPS probes'
    # balancing within train_positions / val_positions / test_positions of each split
    sampling: str = "split"
    val_positions: int = 1000  # from the val split (sampling=split with a c_grid, balanced_splits)
    pool_positions: int = 100000  # sampling=balanced: the pool, from the train split
    max_per_class: Optional[int] = 5000  # balanced sampling: positives (and negatives) per concept; null: all
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])  # sampling=balanced


SCHEMA = ProbeConfig  # cfg.probe
RULES = {**{k: POSITIVE_INT for k in ("train_positions", "test_positions", "val_positions", "pool_positions",
                                    "max_per_class")},
         "l1": NON_NEGATIVE, "buckets": elo()}
CHOICES = {"penalty": PENALTIES, "c_scale": C_SCALES, "metric": METRICS, "select_by": ("metric", *METRICS),
           "sampling": SAMPLINGS}


def check(cfg) -> None:
    """probe.*'s values, probe.c_grid and probe.split_fractions, and the seed-choice keys that only act
    with another setting: a value that would do nothing fails, naming what it needs."""
    import math

    check_section(cfg, "probe", RULES, CHOICES)
    pc = cfg.probe
    grid = list(pc.c_grid or [])
    if not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in grid):
        bad("probe.c_grid", grid, "a list of inverse strengths C > 0, or null/[] for the fixed probe.l2 / probe.l1")
    f = list(pc.split_fractions)
    if len(f) != 3 or not all(0 < v < 1 for v in f) or abs(sum(f) - 1) > 1e-6:
        bad("probe.split_fractions", f, "three fractions > 0 (train, val, test) that sum to 1")
    default = ProbeConfig()
    needs = (("l1", pc.penalty == "l1" and not grid, "probe.penalty=l1 and no probe.c_grid"),
             ("l2", pc.penalty == "l2" and not grid, "probe.penalty=l2 and no probe.c_grid"),
             ("c_scale", bool(grid), "a probe.c_grid"), ("select_by", bool(grid), "a probe.c_grid"),
             ("val_positions", pc.sampling == "balanced_splits" or (pc.sampling == "split" and bool(grid)),
              "probe.sampling=balanced_splits, or split with a probe.c_grid"),
             ("train_positions", pc.sampling != "balanced", "probe.sampling split or balanced_splits"),
             ("test_positions", pc.sampling != "balanced", "probe.sampling split or balanced_splits"),
             ("pool_positions", pc.sampling == "balanced", "probe.sampling=balanced"),
             ("max_per_class", pc.sampling != "split", "probe.sampling balanced or balanced_splits"),
             ("split_fractions", pc.sampling == "balanced", "probe.sampling=balanced"))
    for key, used, what in needs:
        if not used and pc[key] != getattr(default, key):
            bad(f"probe.{key}", pc[key] if not OmegaConf.is_list(pc[key]) else list(pc[key]),
                f"its default unless {what} (otherwise it does nothing)")
    check_families(pc.families, "probe.families")


def _trend_text(trend: dict, m: str) -> str:
    g, ci = trend[f"{m}_gain_top_minus_bottom"], trend[f"{m}_gain_top_minus_bottom_ci95"]
    sl, sci = trend[f"{m}_slope_per_bucket"], trend[f"{m}_slope_per_bucket_ci95"]
    return (f"Top minus bottom bucket, mean over {trend['concepts']} concepts: {g:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]; "
            f"slope per bucket {sl:+.4f} [{sci[0]:+.4f}, {sci[1]:+.4f}] (95% bootstrap over concepts; 0 inside = "
            f"{'awareness' if m == 'auc' else _METRIC_NAMES[m]} flat across skill).")


def _site_report(model, site: str, buckets, res: dict, trends: dict, pngs: dict, metric: str) -> list[str]:
    """results.md's section for one site: AUC (and the chosen metric) per bucket [buckets, concepts],
    controls, the trend."""
    auc, ctrl = res["auc"].numpy(), res["control_auc"].numpy()
    spread = np.nanmax(auc, axis=0) - np.nanmin(auc, axis=0)
    change, trend = res["activation_change"], trends["auc"]
    lines = [f"## {site}", "", f"mean test AUC {np.nanmean(auc):.3f} (shuffled-label control "
             f"{np.nanmean(ctrl):.3f}); a concept's AUC varies across buckets by {np.nanmean(spread):.3f} on average. "
             + _trend_text(trend, "auc")
             + ("" if change is None else
                f" The Elo input moves these activations: top vs bottom bucket, {change['change']:.3f} of their spread "
                f"over positions ({change['position_dependent']:.3f} beyond the mean shift)."), ""]
    cols = [("auc", "mean probe AUC"), ("control_auc", "mean control AUC")]
    if metric != "auc":
        score, cs = res[metric].numpy(), res[f"control_{metric}"].numpy()
        name = _METRIC_NAMES[metric]
        lines += [f"**probe.metric={metric}**: mean test {name} {np.nanmean(score):.3f} (control {np.nanmean(cs):.3f}). "
                  + _trend_text(trends[metric], metric), ""]
        cols += [(metric, f"mean probe {name}"), (f"control_{metric}", f"mean control {name}")]
    for k, png in pngs.items():
        lines += [f"![probe {_METRIC_NAMES[k]}]({png.name})", ""]
    if res.get("not_converged"):
        lines += [f"{res['not_converged']} fits (grid entries and controls counted) stopped before the solver's "
                  "tolerance.", ""]
    lines += ["| Elo bucket | " + " | ".join(c for _, c in cols) + " |", "|---|" + "---|" * len(cols)]
    per = {k: np.nanmean(res[k].numpy(), axis=1) for k, _ in cols}
    lines += [f"| {bucket_label(model, b)} | " + " | ".join(f"{per[k][i]:.3f}" for k, _ in cols) + " |"
              for i, b in enumerate(buckets)]
    if not np.isnan(res["chosen_c"].numpy()).all():
        lines += ["", "C chosen on the validation part (count of concepts per bucket): " + "; ".join(
            f"{BUCKET_NAMES[b]} " + ", ".join(f"{c:g}: {n}" for c, n in zip(*np.unique(res["chosen_c"][i].numpy(),
                                                                                     return_counts=True)))
            for i, b in enumerate(buckets))]
    lines.append("")
    return lines


def _positions(cfg, store, rng):
    """(names, what probes need, results.json's "sampling" entry, results.md's line) for probe.sampling."""
    pc = cfg.probe
    draw = lambda split, n: np.sort(rng.permutation(store.split_indices(split))[:n])
    if pc.sampling == "split":
        train_idx, test_idx = draw("train", pc.train_positions), draw("test", pc.test_positions)
        val_idx = draw("val", pc.val_positions) if pc.c_grid else None
        if not len(train_idx) or not len(test_idx) or (val_idx is not None and not len(val_idx)):
            raise ConfigError("stage=probe needs positions in both the train and the test split of the data"
                              + (" (and the val split, for probe.c_grid)" if pc.c_grid else ""))
        fens = {"train": store.fens(train_idx), "test": store.fens(test_idx)}
        if val_idx is not None:
            fens["val"] = store.fens(val_idx)
        names, labels, left_out = concept_labels_parts(fens, pc.families, pc.min_positives, key="probe")
        sizes = f"{len(train_idx)} train / {len(test_idx)} test positions (different games)" + (
            "" if val_idx is None else f", {len(val_idx)} val positions (choose C)")
        data = {"train_idx": train_idx, "test_idx": test_idx, "val_idx": val_idx, "labels": labels}
        info = {"mode": "split", "train": len(train_idx), "val": 0 if val_idx is None else len(val_idx),
                "test": len(test_idx), "left_out": left_out}
        return names, data, info, sizes
    if pc.sampling == "balanced":
        pool = draw("train", pc.pool_positions)
        if not len(pool):
            raise ConfigError("probe.sampling=balanced needs positions in the train split of the data")
        concepts = position_concepts(store.fens(pool), pc.families)
        sample = balanced_pool_parts(pool, concepts.labels, concepts.names, pc.max_per_class, list(pc.split_fractions),
                                     cfg.seed, pc.min_positives)
        where = (f"one pool of {len(pool):,} train-split positions, per concept min(positives, negatives, "
                 f"{pc.max_per_class}) of each class split {'/'.join(f'{f:g}' for f in pc.split_fractions)}")
    else:
        pools = {part: draw(part, n) for part, n in (("train", pc.train_positions), ("val", pc.val_positions),
                                                     ("test", pc.test_positions))}
        if not all(len(v) for v in pools.values()):
            raise ConfigError("probe.sampling=balanced_splits needs positions in the train, val and test splits")
        labelled = {part: position_concepts(store.fens(idx), pc.families) for part, idx in pools.items()}
        names_all = labelled["train"].names
        sample = balanced_split_parts({p: (pools[p], labelled[p].labels) for p in pools}, names_all, pc.max_per_class,
                                      cfg.seed, pc.min_positives)
        where = (f"{', '.join(f'{len(v):,} {p}' for p, v in pools.items())} positions of their own splits, per "
                 f"concept and split every positive (at most {pc.max_per_class}) and as many negatives")
    names = list(sample["parts"])
    if not names:
        raise ConfigError(f"no concept has {pc.min_positives} positives in every part: raise probe.pool_positions "
                          "(balanced) or the split sizes (balanced_splits), or lower probe.min_positives")
    counts = {n: {p: int(len(v[0])) for p, v in sample["parts"][n].items()} for n in names}
    info = {"mode": pc.sampling, "positions_per_concept": counts, "left_out": sample["left_out"]}
    sizes = (f"balanced positions ({where}); rows per concept and part (both classes): train "
             f"{min(c['train'] for c in counts.values())}-{max(c['train'] for c in counts.values())}, test "
             f"{min(c['test'] for c in counts.values())}-{max(c['test'] for c in counts.values())}")
    return names, {"parts": sample["parts"]}, info, sizes


def _header(pc, opts, names, left, sizes) -> list[str]:
    """results.md's opening: the concepts, the positions and how the probes were fitted."""
    fit = (f"penalty {opts.penalty}" + (f", C in {list(opts.c_grid)} ({opts.c_scale} scale) chosen per concept and "
                                         f"bucket by val {opts.select_by}" if opts.c_grid else
                                         f" {opts.l1 if opts.penalty == 'l1' else opts.l2}")
           + ("" if opts.standardize else ", raw activations") + (", bias penalised" if opts.penalize_bias else "")
           + ("" if opts.class_balance else ", unweighted loss"))
    return ["# Linear probes per Elo bucket", "", f"{len(names)} concepts ({', '.join(pc.families)}), {sizes}, "
            + (f"l2 {pc.l2}." if opts.todays_fit and pc.sampling == "split" else f"{fit}; metric {opts.metric}.")
            + (f" {len(left)} concepts left out (fewer than {pc.min_positives} positives or negatives in a part)."
               if left else ""), ""]


def _fit(cfg, model, store, data, names, opts) -> dict:
    """{site: probes_per_bucket's results} for probe.sampling."""
    pc = cfg.probe
    if pc.sampling != "split":
        torch.manual_seed(cfg.seed)
        return probes_balanced(model, store, data["parts"], list(pc.sites), pc.buckets, opts, seed=cfg.seed,
                               shuffled_control=pc.shuffled_control, batch_size=pc.batch_size)
    per_site = {}
    for site in pc.sites:
        torch.manual_seed(cfg.seed)
        per_site[site] = probes_per_bucket(
            model, store, data["train_idx"], data["test_idx"], site, data["labels"]["train"],
            data["labels"]["test"], names, buckets=pc.buckets, l2=pc.l2, seed=cfg.seed,
            shuffled_control=pc.shuffled_control, batch_size=pc.batch_size, val_idx=data["val_idx"],
            labels_val=data["labels"].get("val"), opts=opts)
    return per_site


def _site(cfg, frame, model, site: str, res: dict, names, sampling, opts) -> tuple[dict, dict, list[str]]:
    """(results.json's entry, summary entries, results.md's section) for one site; writes its probes,
    probe_<site>.csv and heatmaps."""
    pc, metric, summary = cfg.probe, opts.metric, {}
    slug = site_slug(site)
    for b, probe in res["probes"].items():
        save_probe(probe, probe_file(frame.dir, site, b), {"site": site, "elo_bucket": b})
    auc = res["auc"].numpy()
    ctrl = res["control_auc"].numpy()
    pngs = {"auc": bucket_heatmap(auc.T, names, frame.dir / f"probe_auc_{slug}.png",
                                  f"{site}: probe test AUC per Elo bucket")}
    if metric != "auc":
        pngs[metric] = bucket_heatmap(res[metric].numpy().T, names, frame.dir / f"probe_{metric}_{slug}.png",
                                      f"{site}: probe test {_METRIC_NAMES[metric]} per Elo bucket",
                                      vmin=0.5 if metric == "accuracy" else 0.0, vmax=1.0,
                                      label=f"test {_METRIC_NAMES[metric]}")
    for k, png in pngs.items():
        frame.tracker().log_image(f"probe/{slug}" if k == "auc" else f"probe/{slug}/{k}", png)
    chosen = res["chosen_c"].numpy()
    rows = []
    for c, n in enumerate(names):
        row = {"concept": n, **{f"auc_{BUCKET_NAMES[b]}": round(float(auc[i, c]), 4) for i, b in enumerate(pc.buckets)},
               **{f"control_{BUCKET_NAMES[b]}": round(float(ctrl[i, c]), 4) for i, b in enumerate(pc.buckets)}}
        if metric != "auc":
            for pre in (metric, f"control_{metric}"):
                row.update({f"{pre}_{BUCKET_NAMES[b]}": round(float(res[pre][i, c]), 4)
                            for i, b in enumerate(pc.buckets)})
        if opts.c_grid:
            row.update({f"c_{BUCKET_NAMES[b]}": float(chosen[i, c]) for i, b in enumerate(pc.buckets)})
        if "positions_per_concept" in sampling:
            row.update({f"n_{p}": v for p, v in sampling["positions_per_concept"][n].items()})
        rows.append(row)
    atomic_write_csv(frame.dir / f"probe_{slug}.csv", rows)
    per_bucket = np.nanmean(auc, axis=1)
    spread = np.nanmax(auc, axis=0) - np.nanmin(auc, axis=0)
    trends = {"auc": awareness_trend(auc.T, seed=cfg.seed)}  # [concepts, buckets]
    site_out = {"mean_auc_per_bucket": per_bucket.tolist(), "mean_control_auc": float(np.nanmean(ctrl)),
                "mean_auc_spread_across_buckets": float(np.nanmean(spread)), **trends["auc"],
                "activation_change": res["activation_change"]}
    for m in METRICS:
        if m != "auc":
            site_out[f"mean_{m}_per_bucket"] = np.nanmean(res[m].numpy(), axis=1).tolist()
    if metric != "auc":
        trends[metric] = awareness_trend(res[metric].numpy().T, seed=cfg.seed, metric=metric)
        site_out[f"mean_control_{metric}"] = float(np.nanmean(res[f"control_{metric}"].numpy()))
        site_out.update(trends[metric])
    if opts.c_grid:
        site_out["chosen_c"] = chosen.tolist()
    if res.get("not_converged"):
        site_out["not_converged"] = res["not_converged"]
    summary[f"{slug}:mean_auc"] = float(np.nanmean(auc))
    summary[f"{slug}:mean_control_auc"] = float(np.nanmean(ctrl))
    summary[f"{slug}:mean_spread_across_buckets"] = float(np.nanmean(spread))
    summary[f"{slug}:auc_gain_top_minus_bottom"] = trends["auc"]["auc_gain_top_minus_bottom"]
    summary[f"{slug}:auc_gain_top_minus_bottom_ci95"] = trends["auc"]["auc_gain_top_minus_bottom_ci95"]
    if metric != "auc":
        summary[f"{slug}:mean_{metric}"] = float(np.nanmean(res[metric].numpy()))
        summary[f"{slug}:{metric}_gain_top_minus_bottom"] = trends[metric][f"{metric}_gain_top_minus_bottom"]
        summary[f"{slug}:{metric}_gain_top_minus_bottom_ci95"] = trends[metric][
            f"{metric}_gain_top_minus_bottom_ci95"]
    if res["activation_change"]:
        summary[f"{slug}:activation_change_top_vs_bottom"] = res["activation_change"]["change"]
    return site_out, summary, _site_report(model, site, pc.buckets, res, trends, pngs, metric)


def _logit_lens(cfg, frame, model, store, data) -> tuple[dict | None, list[str]]:
    """(results.json's logit_lens entry, results.md's section): the policy head read off each block."""
    pc = cfg.probe
    if not isinstance(model, Maia2Skill):
        entry, lines = None, ["## Logit lens", "", f"Skipped: the logit lens reads Maia-2's transformer residual stream through its "
                  f"final norms and policy head; {model.name} is a convolutional network with no such stream.", ""]
    else:
        test_idx = data["test_idx"] if pc.sampling == "split" else np.unique(
            np.concatenate([v["test"][0] for v in data["parts"].values()]))[:2000]
        lens = logit_lens_by_bucket(model.model, store, test_idx, buckets=pc.buckets, batch_size=pc.batch_size)
        agree, acc = lens["agreement"].numpy(), lens["accuracy"].numpy()
        png = bucket_heatmap(agree, lens["lenses"], frame.dir / "logit_lens.png",
                             "logit lens: top-1 agreement with the model's policy", vmin=0.0, vmax=1.0, label="agreement")
        frame.tracker().log_image("probe/logit_lens", png)
        entry = {"lenses": lens["lenses"], "agreement": agree.tolist(), "accuracy": acc.tolist()}
        lines = ["## Logit lens", "", "The policy head read off each block's residual stream (after the model's final "
                  "norms): top-1 agreement with the real policy and accuracy on the played move, per bucket.", "",
                  "![logit lens](logit_lens.png)", "",
                  "| lens | " + " | ".join(BUCKET_NAMES[b] for b in pc.buckets) + " |",
                  "|---|" + "---|" * len(pc.buckets)]
        for i, name in enumerate(lens["lenses"]):
            lines.append(f"| {name} agreement | " + " | ".join(f"{v:.2f}" for v in agree[i]) + " |")
            lines.append(f"| {name} accuracy | " + " | ".join(f"{v:.2f}" for v in acc[i]) + " |")
    return entry, lines


def run(cfg, frame) -> dict:
    pc = cfg.probe
    check_families(pc.families, "probe.families")
    opts = ProbeOptions.from_config(pc)
    model = skill_model(cfg, "probe")
    for s in pc.sites:
        model.check_hook_name(s)
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    rng = np.random.default_rng(cfg.seed)
    names, data, sampling, sizes = _positions(cfg, store, rng)
    left = sampling["left_out"]
    print(f"{len(names)} concepts ({len(left)} left out with fewer than {pc.min_positives} positives), {sizes}, "
          f"buckets {list(pc.buckets)}")
    frame.tracker()
    results: dict = {"model": model.name, "concepts": names, "buckets": list(pc.buckets), "metric": opts.metric,
                     "probe": {k: v for k, v in OmegaConf.to_container(pc, resolve=True).items() if k in _SEED_KEYS},
                     "sampling": sampling, "sites": {}}
    lines, summary = _header(pc, opts, names, left, sizes), {}
    per_site = _fit(cfg, model, store, data, names, opts)
    for site in pc.sites:
        results["sites"][site], part, site_lines = _site(cfg, frame, model, site, per_site[site], names, sampling, opts)
        summary.update(part)
        lines += site_lines
    if pc.logit_lens:
        results["logit_lens"], lens_lines = _logit_lens(cfg, frame, model, store, data)
        lines += lens_lines
    frame.report("\n".join(lines) + "\n", results)
    return summary
