"""stage=threats: which dictionary features (or model units) detect which chess concepts.

For each site: the features of `threats.positions` held-out positions of the data, every concept of
the chosen families computed with python-chess, ROC-AUC of every feature for every concept on a
selection half, the best features per concept, confirmed on the held-out half with bootstrap
intervals and a shuffled-label null. `model=maia1` with `threats.sites=[blocks.5.hook_resid_post]`
scores the Maia-1 networks' channels (mean over the 64 squares; bucket b -> its band's network).
Writes concepts.csv (the concept table with positive rates),
detection_<site>.csv, threat_auc_<site>.png, results.md and results.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..model.activations import collect_activations, position_codes
from ..analysis.logit_effects import logit_effects
from ..concepts import BoardConcepts, ConceptSpec, check_families, load_puzzles, load_sts, position_concepts, select_families
from ..concepts.detection import compare_detections, detect_concepts, evidence_key, read_detection_table
from ..data.preprocess import open_or_build_store
from ..data.store import SPLITS, store_from_fens
from ..dictionaries import find_saes, load_sae
from ..errors import ConfigError
from ..io import atomic_write_csv
from .common import skill_model
from ..encoding import NUM_BUCKETS
from ..layout import detection_table, site_slug
from ..reporting.dashboard import write_dashboards
from ..reporting.plots import square_heatmaps
from ..checks import FRACTION, NON_NEGATIVE_INT, POSITIVE_INT, check_section, elo


@dataclass
class ThreatsConfig:
    """stage=threats: which dictionary features detect which concepts (ROC-AUC)."""

    device: str = "auto"  # where the model runs: auto (CUDA when there is one) | cpu | cuda | cuda:N
    saes: Optional[str] = None  # a stage=sae run directory or one SAE folder; null: raw units of `sites`
    sites: list[str] = field(default_factory=list)  # with saes=null: hook names whose units are the features
    # store: positions of the data's `split`; puzzles / sts: the lichess puzzles / the Strategic Test
    # Suite, whose themes are added as concepts (family "puzzle theme" / "sts theme")
    position_set: str = "store"
    puzzles_path: str = "${paths.data_root}/puzzles/lichess_puzzles_5k.csv"
    sts_path: str = "${paths.data_root}/sts/STS1-STS15_LAN_v3.epd"
    positions: int = 4000  # positions scored (half selection, half held-out)
    split: str = "test"
    elo: str = "data"  # Elo conditioning of the model: data | random | 0..10 (data on puzzles/sts: bucket 5)
    # the study family (its 13 strategic concepts as its code defines them) and seed172 (the 172 concepts
    # of its revision, or seed172:<category>) are for reproducing it
    families: list[str] = field(default_factory=lambda: ["threat", "strategic", "capture", "board-state"])
    min_positives: int = 10  # concepts with fewer positive (or negative) positions are left out
    heldout_fraction: float = 0.5
    top_k: int = 5  # features kept per concept
    auc_threshold: float = 0.7  # the study's: a concept counts as detected at held-out AUC >= this
    n_null: int = 20  # label shuffles for the null of the best selection AUC
    n_boot: int = 200  # bootstrap resamples of the held-out AUC
    max_per_class: Optional[int] = None  # balanced samples: up to this many positives and negatives per concept
    batch_size: int = 512
    dashboards: int = 24  # HTML pages for up to this many features (the best detectors); 0: none
    dashboard_top_n: int = 12  # boards per feature page
    elo_profile_positions: int = 256  # positions run at each of the 11 Elo buckets for the Elo plot
    # positions the dashboards' logit effects average over (each feature's decoder direction added at its
    # site, the change of every legal move's log-probability); 0: no logit effects
    logit_positions: int = 64
    # a stage=threats run directory (another subject, or this model at another threats.elo): results.md
    # adds, per site both scored, this run's held-out AUC minus that run's, paired over concepts
    compare_to: Optional[str] = None


SCHEMA = ThreatsConfig  # cfg.threats
RULES = {"positions": POSITIVE_INT, "n_null": NON_NEGATIVE_INT, "n_boot": NON_NEGATIVE_INT,
         "dashboards": NON_NEGATIVE_INT, "heldout_fraction": FRACTION, "elo": elo("data", "random")}
CHOICES = {"split": SPLITS, "position_set": ("store", "puzzles", "sts")}


def check(cfg) -> None:
    check_section(cfg, "threats", RULES, CHOICES)
    check_families(cfg.threats.families, "threats.families")


def _load_saes(tc) -> list:
    if tc.saes:
        return [load_sae(p) for p in find_saes(tc.saes)]
    if not tc.sites:
        raise ConfigError("stage=threats needs threats.saes (a stage=sae run or SAE folder) or threats.sites (hook names)")
    return []


def _set_name(sae) -> str:
    """The name of an SAE's feature set in results, plots and dashboards (raw units: '<site> (units)')."""
    return f"{sae.cfg.site} (SAE {sae.cfg.architecture}, F={sae.cfg.dim})"


def _features(model, store, idx, saes: list, tc, elo=None) -> dict[str, torch.Tensor]:
    """{site: features [N, F]} from the SAEs, or the raw units of threats.sites when there are none."""
    elo = tc.elo if elo is None else elo
    if not saes:
        acts = collect_activations(model, store, idx, list(tc.sites), batch_size=tc.batch_size, elo=elo)
        return {f"{site} (units)": a for site, a in acts.items()}
    acts = {}
    for pooling in dict.fromkeys(s.cfg.token_pooling for s in saes):
        sites = list(dict.fromkeys(s.cfg.site for s in saes if s.cfg.token_pooling == pooling))
        acts[pooling] = collect_activations(model, store, idx, sites, batch_size=tc.batch_size, elo=elo, token_pooling=pooling)
    return {_set_name(s): position_codes(s, acts[s.cfg.token_pooling][s.cfg.site], len(idx))
            for s in saes}


def _threat_panels(rows: list[dict]) -> dict[str, np.ndarray]:
    auc = {r["concept"]: r["auc_heldout"] for r in rows}
    from chess import SQUARE_NAMES

    return {kind: np.array([auc.get(f"{kind}@{sq}", np.nan) for sq in SQUARE_NAMES]) for kind in ("defensive", "offensive")}


def _direction_of(name: str, saes: list, model):
    """(site, feature -> its direction in the site's token space) of a feature set of _features: the
    SAE's decoder row, or the unit vector of a raw unit."""
    site = name.split(" ")[0]
    for s in saes:
        if name == _set_name(s):
            return site, lambda f: s.W_dec[f].detach().float().cpu()
    dim = model.site_dim(site)
    return site, lambda f: torch.nn.functional.one_hot(torch.tensor(f), dim).float()


def _logit_effects(model, store, idx, name, feats, features: list[int], saes, tc) -> dict:
    """analysis.logit_effects of the dashboard features on the first threats.logit_positions positions,
    each direction scaled by the feature's mean activation over its top dashboard_top_n positions."""
    site, direction = _direction_of(name, saes, model)
    top = feats[:, features].topk(min(tc.dashboard_top_n, len(feats)), dim=0).values.mean(0)
    return logit_effects(model, store, idx[: tc.logit_positions], site, {f: direction(f) for f in features},
                         {f: float(a) for f, a in zip(features, top)}, elo=tc.elo)


def _dashboards(out_dir: Path, name: str, feats, fens, rows, detected, profile, tc, effects=None) -> Path:
    """Pages for the features that best detect a concept (detected ones first, then by evidence_key)."""
    ranked = sorted(zip(rows, detected.tolist()), key=lambda rd: (not rd[1], evidence_key(rd[0])))
    feature_concepts: dict[int, list[dict]] = {}
    for r, _ in ranked:
        if len(feature_concepts) >= tc.dashboards and r["feature"] not in feature_concepts:
            continue
        feature_concepts.setdefault(r["feature"], []).append(
            {k: r[k] for k in ("concept", "auc_selection", "auc_heldout", "positives", "ci_low", "ci_high")})
    if callable(effects):
        effects = effects(list(feature_concepts))
    return write_dashboards(out_dir, feats, fens, feature_concepts, elo_profile=profile, top_n=tc.dashboard_top_n,
                            title=f"{name}: features that detect chess concepts", logit_effects=effects,
                            dense_frequency=None if name.endswith("(units)") else 0.1)


def positions(cfg, run_dir: Path):
    """(store, indices, theme labels or None, theme family) of the position set to score."""
    tc = cfg.threats
    rng = np.random.default_rng(cfg.seed)
    if tc.position_set == "store":
        store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
        pool = store.split_indices(tc.split)
        if len(pool) == 0:
            raise ConfigError(f"threats.split '{tc.split}' has no positions in the store")
        return store, np.sort(rng.permutation(pool)[: tc.positions]), None, None
    loaders = {"puzzles": (load_puzzles, tc.puzzles_path, "puzzle theme"), "sts": (load_sts, tc.sts_path, "sts theme")}
    if tc.position_set not in loaders:
        raise ConfigError(f"threats.position_set '{tc.position_set}': expected store, puzzles or sts")
    load, path, family = loaders[tc.position_set]
    fens, themes = load(Path(path))
    keep = np.sort(rng.permutation(len(fens))[: tc.positions])
    # these positions have no players: 'data' conditioning means a mid-table bucket
    elo = 5 if tc.elo in ("data", "random") else int(tc.elo)
    store = store_from_fens([fens[i] for i in keep], run_dir / "positions", elo, elo)
    return store, np.arange(len(keep)), BoardConcepts(themes.labels[keep], themes.names), family


def _site_report(name: str, site_res: dict, counts: dict, kinds: dict, png_name: str, best: list) -> list[str]:
    """results.md's section for one feature set: detections per family and the best detectors."""
    lines = [f"## {name}", "",
             f"threat concepts detected: defensive {kinds['defensive']}/64, offensive {kinds['offensive']}/64 "
             f"({site_res['threat_scored']} of 128 had enough positives); per family: "
             + ", ".join(f"{f} {c}" for f, c in counts.items()), "",
             f"![threat AUC]({png_name})", "",
             "| concept | feature | AUC selection | AUC held-out | 95% CI | null 95% | positives |",
             "|---|---|---|---|---|---|---|"]
    for r in best:
        lines.append(f"| {r['concept']} | {r['feature']} | {r['auc_selection']:.3f} | {r['auc_heldout']:.3f} | "
                     f"{r['ci_low']:.3f}-{r['ci_high']:.3f} | {r['null_max95']:.3f} | {r['positives']} |")
    lines.append("")
    return lines


def _comparison_report(compared: dict, other: str) -> list[str]:
    lines = [(f"Paired over concepts, this run minus `{other}` (held-out AUC of each concept's best feature, "
              "95% bootstrap over concepts):"), "",
             "| family | concepts | mean AUC here | there | difference | 95% CI | detected here / there |",
             "|---|---|---|---|---|---|---|"]
    for fam, c in compared.items():
        lo, hi = c["auc_difference_ci95"]
        lines.append(f"| {fam} | {c['concepts']} | {c['mean_auc']:.3f} | {c['mean_auc_other']:.3f} | "
                     f"{c['auc_difference']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {c['detected']} / {c['detected_other']} |")
    return lines + [""]


def _concept_set(cfg, run_dir: Path):
    """(store, positions, their FENs, the concepts scored, every concept's spec): the chosen families
    (and a puzzle set's themes) labelled on the positions, concepts.csv written, rare ones left out."""
    tc = cfg.threats
    store, idx, themes, theme_family = positions(cfg, run_dir)
    concepts, specs = select_families(position_concepts(fens := store.fens(idx), tc.families), list(tc.families))
    if themes is not None:
        concepts = BoardConcepts(torch.cat([concepts.labels, themes.labels], 1), concepts.names + themes.names)
        specs = specs + [ConceptSpec(n, theme_family, f"labelled '{n.split(':', 1)[1]}' in the source") for n in themes.names]
    rate = concepts.labels.float().mean(0)
    atomic_write_csv(run_dir / "concepts.csv", [{"name": s.name, "family": s.family, "definition": s.definition,
                                          "positives": int(concepts.labels[:, i].sum()), "positive_rate": round(float(rate[i]), 5)}
                                         for i, s in enumerate(specs)])
    scored = concepts.keep(tc.min_positives)
    print(f"{len(idx)} positions, {len(scored.names)} of {len(specs)} concepts with >= {tc.min_positives} positives and negatives")
    if not scored.names:
        raise ConfigError("no concept has enough positive positions: raise threats.positions or lower threats.min_positives")
    return store, idx, fens, scored, specs


def _check(tc, model, saes: list) -> None:
    if saes and len(model.spaces()) > 1:
        raise ConfigError(f"threats.saes with {model.name}: its networks have unrelated activation spaces and an SAE reads "
                          "one; use the model.rating=R the SAEs were trained on, or threats.sites for raw channels")
    for sae in saes:
        model.check_hook_name(sae.cfg.site)
    if tc.compare_to:
        for site in [s.cfg.site for s in saes] or list(tc.sites):
            if not detection_table(tc.compare_to, site).is_file():
                raise ConfigError(f"threats.compare_to: {detection_table(tc.compare_to, site)} not found "
                                  f"(expected a stage=threats run that scored {site})")


def _elo_profiles(model, store, idx, saes: list, tc) -> dict[str, list]:
    """Each feature's mean activation when the model plays at each Elo bucket, same positions (dashboards)."""
    profiles: dict[str, list] = {}
    if tc.dashboards:
        sub = idx[: tc.elo_profile_positions]
        for b in range(NUM_BUCKETS):
            for name, f in _features(model, store, sub, saes, tc, elo=b).items():
                profiles.setdefault(name, []).append(f.mean(0))
    return profiles


def _score(cfg, frame, ctx: dict, name: str, feats) -> tuple[dict, dict, list[str]]:
    """(results.json's entry, summary entries, results.md's lines) for one feature set."""
    tc, scored, site = cfg.threats, ctx["scored"], name.split(" ")[0]
    det = detect_concepts(feats, scored.labels, scored.names, heldout_fraction=tc.heldout_fraction,
                          top_k=tc.top_k, n_null=tc.n_null, n_boot=tc.n_boot, max_per_class=tc.max_per_class,
                          seed=cfg.seed)
    rows = det.rows()
    slug = site_slug(site)
    atomic_write_csv(detection_table(frame.dir, site), rows)
    detected = det.detected(tc.auc_threshold)
    fam = {s.name: s.family for s in ctx["specs"]}
    counts = {f: int(sum(d for d, n in zip(detected.tolist(), scored.names) if fam[n] == f))
              for f in dict.fromkeys(fam.values())}
    kinds = {k: int(sum(d for d, n in zip(detected.tolist(), scored.names) if n.startswith(k + "@")))
             for k in ("defensive", "offensive")}
    png = square_heatmaps(_threat_panels(rows), frame.dir / f"threat_auc_{slug}.png",
                          f"{name}: held-out AUC of the best feature per square")
    frame.tracker().log_image(f"threats/{slug}", png)
    best = sorted(rows, key=evidence_key)[:10]
    site_res = {"features": int(feats.shape[1]), "detected_per_family": counts, **{f"{k}_detected": v for k, v in kinds.items()},
                "threat_scored": int(sum(n.split("@")[0] in ("defensive", "offensive") for n in scored.names)),
                "best": best[:5]}
    summary = {f"{slug}:{k}_detected": v for k, v in kinds.items()}
    summary[f"{slug}:best_heldout_auc"] = best[0]["auc_heldout"] if best else float("nan")
    lines = _site_report(name, site_res, counts, kinds, png.name, best)
    if tc.compare_to:
        site_res["compared"] = compare_detections(rows, read_detection_table(detection_table(tc.compare_to, site)),
                                                  fam, tc.auc_threshold, seed=cfg.seed)
        summary.update({f"{slug}:{f}_auc_minus_compare_to": c["auc_difference"] for f, c in site_res["compared"].items()})
        lines += _comparison_report(site_res["compared"], tc.compare_to)
    if tc.dashboards:
        model, store, idx, saes = ctx["model"], ctx["store"], ctx["idx"], ctx["saes"]
        effects = (lambda fs: _logit_effects(model, store, idx, name, feats, fs, saes, tc)) if tc.logit_positions else None
        index = _dashboards(frame.dir / f"dashboards_{slug}", name, feats, ctx["fens"], rows, detected,
                            torch.stack(ctx["profiles"][name]), tc, effects)
        site_res["dashboards"] = str(index)
        lines += [f"Feature dashboards: [{index.parent.name}/index.html]({index.parent.name}/index.html)", ""]
    frame.tracker().log({f"threats/{slug}/{k}": v for k, v in kinds.items()})
    return site_res, summary, lines


def run(cfg, frame) -> dict:
    tc = cfg.threats
    check_families(tc.families)
    model = skill_model(cfg, "threats")
    saes = _load_saes(tc)
    _check(tc, model, saes)
    store, idx, fens, scored, specs = _concept_set(cfg, frame.dir)
    frame.tracker()
    results, summary = {"positions": len(idx), "concepts_scored": len(scored.names), "sites": {}}, {}
    lines = ["# Concept detection", "", f"model `{model.name}` (`{cfg.model.checkpoint}`), {len(idx)} `{tc.split}` positions "
             f"(half selection, half held-out), Elo conditioning `{tc.elo}`, {len(scored.names)} concepts scored; "
             f"detected = held-out AUC >= {tc.auc_threshold} and selection AUC above the 95% shuffled-label null.", ""]
    ctx = dict(model=model, store=store, idx=idx, fens=fens, scored=scored, specs=specs, saes=saes,
               profiles=_elo_profiles(model, store, idx, saes, tc))
    for name, feats in _features(model, store, idx, saes, tc).items():
        results["sites"][name], part, site_lines = _score(cfg, frame, ctx, name, feats)
        summary.update(part)
        lines += site_lines
    frame.report("\n".join(lines), results)
    return summary
