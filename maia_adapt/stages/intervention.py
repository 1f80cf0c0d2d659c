"""stage=intervention: push the concept into the model and see which skill levels start acting on it.

Positions of a transitional dataset holding the chosen concept (e.g. a defensive threat) are split by
game. On the train rows a grid over strength (and, for SAE features, top-n per concept) is scored by
the mean correct-move accuracy over the Elo buckets; the chosen setting is then judged on the test
rows against no intervention and against a control of the same size (random features of matched
firing frequency, or a random direction of the same norm), with bootstrap intervals for the effect
minus the control, transition points before and after, and the human-move accuracy on ordinary
held-out games.

`model=maia1` runs the Maia-1 family. Its nine networks have unrelated activation spaces, so steering
vectors and probe directions are fitted per network (each from its own activations, or the probe of
its own band from a stage=probe model=maia1 run) and each network is steered with its own; the SAE
kind needs one dictionary per network and takes the family only with `model.rating` (one network).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..activations import collect_activations
from ..concepts import threat_concepts
from ..data.preprocess import open_or_build_store
from ..dictionaries import find_saes, load_sae
from ..encoding import NUM_BUCKETS, decode_move
from ..errors import ConfigError, MaiaAdaptError
from ..finetune import MoveSet, concept_rows
from ..interventions import (BucketReport, add_direction, bootstrap_diff, evaluate_under, matched_random_features, sae_amplify,
                             steering_vector)
from ..io import atomic_write_json, atomic_write_text
from ..layout import detection_table, probe_file
from ..probes import load_probe
from ..reporting.plots import bar_by_bucket, transition_histogram
from ..tracking import Tracker
from ..transitional import NEVER, read_transitional, transition_points
from .common import bucket_label, skill_model
from .finetune import split_rows


def _concepts_of(row: dict, concept: str) -> list[str]:
    return [t for t in row["threats"] if t == concept or t.startswith(concept + "@")]


def _pooled_acts(model, moves: MoveSet, site: str, batch_size: int, elo="data") -> torch.Tensor:
    idx = np.arange(len(moves.rows))
    return collect_activations(model, moves.store, idx, [site], batch_size=batch_size, elo=elo)[site]


class SAEIntervention:
    """Per-row masks of the top-n SAE features of the row's concepts (from a stage=threats table)."""

    def __init__(self, ic, model, train: MoveSet, seed: int):
        if len(model.spaces()) > 1:
            raise ConfigError(f"intervention.kind=sae on {model.name}: its networks have unrelated activation spaces and an "
                              "SAE reads one; use intervention.kind=steering or probe (fitted per network), or model.rating=R")
        saes = [load_sae(p) for p in find_saes(ic.saes)] if ic.saes else []
        match = [s for s in saes if s.cfg.site == ic.site]
        if not match:
            raise ConfigError(f"intervention.saes has no SAE reading {ic.site} (found: {[s.cfg.site for s in saes]})")
        self.sae = match[0]
        if not ic.threats:
            raise ConfigError("intervention.kind=sae needs intervention.threats (a stage=threats run ranking the features)")
        table = detection_table(ic.threats, ic.site)
        if not table.is_file():
            raise ConfigError(f"{table} not found: run stage=threats with the same SAEs")
        with open(table, newline="") as f:
            self.top = {r["concept"]: [int(x) for x in r["top_features"].split()] for r in csv.DictReader(f)}
        with torch.no_grad():
            self.freq = (self.sae.encode(_pooled_acts(model, train, ic.site, ic.batch_size)) > 0).float().mean(0)
        self.ic, self.seed = ic, seed

    def settings(self):
        return [(s, n) for s in self.ic.strengths for n in self.ic.top_n]

    def make(self, rows: list[dict], setting, control: bool):
        strength, n = setting
        rng = np.random.default_rng(self.seed)
        mask = torch.zeros(len(rows), self.sae.cfg.dim)
        for i, r in enumerate(rows):
            feats = sorted({f for c in _concepts_of(r, self.ic.concept) for f in self.top.get(c, [])[:n]})
            if control and feats:
                feats = matched_random_features(self.freq, feats, rng)
            mask[i, feats] = 1.0
        return lambda pos, bucket: sae_amplify(self.sae, mask[pos], strength, self.ic.keep_error)


def _probe_path(ic, buckets: list[int]) -> Path:
    """The probe a space uses: intervention.probe_bucket's for one space, else the first of the
    space's own buckets that the probe run saved (a Maia-1 network's band)."""
    for b in buckets:
        if probe_file(ic.probes, ic.site, b).is_file():
            return probe_file(ic.probes, ic.site, b)
    return probe_file(ic.probes, ic.site, buckets[0])  # load_probe names the missing file


class DirectionIntervention:
    """Per-row sums of concept directions: steering vectors, or probe directions scaled to their norm.
    One set per activation space (`SkillModel.spaces`: the Maia-1 family has one per network)."""

    def __init__(self, ic, model, train: MoveSet, seed: int):
        if ic.kind == "probe" and not ic.probes:
            raise ConfigError("intervention.kind=probe needs intervention.probes (a stage=probe run)")
        spaces = model.spaces()
        self.space_of = {b: rep for rep, bs in spaces for b in bs}
        names = sorted({c for r in train.rows for c in _concepts_of(r, ic.concept)})
        self.vectors: dict[int, dict[str, torch.Tensor]] = {}
        for rep, buckets in spaces:
            # one space: the players' own buckets, as the study; several: this network's activations
            acts = _pooled_acts(model, train, ic.site, ic.batch_size, elo="data" if len(spaces) == 1 else rep)
            vectors = {}
            for c in names:
                lab = torch.tensor([c in r["threats"] for r in train.rows])
                if lab.any() and not lab.all():
                    vectors[c] = steering_vector(acts, lab)
            if ic.kind == "probe":
                probe = load_probe(_probe_path(ic, [ic.probe_bucket] if len(spaces) == 1 else buckets))
                probed = {}
                for c, v in vectors.items():
                    if c in probe.names:
                        try:
                            probed[c] = probe.direction(c) * v.norm()
                        except MaiaAdaptError:  # a probe that never saw the concept has no direction
                            continue
                vectors = probed
            if not vectors:
                raise ConfigError(f"no direction for any '{ic.concept}' concept on the train rows"
                                  + (f" ({model.label(rep)})" if len(spaces) > 1 else ""))
            self.vectors[rep] = vectors
            self.dim = acts.shape[1]
        self.ic, self.seed = ic, seed

    def settings(self):
        return [(s, None) for s in self.ic.strengths]

    def _directions(self, rows: list[dict], vectors: dict, control: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        d = torch.zeros(len(rows), self.dim)
        for i, r in enumerate(rows):
            for c in _concepts_of(r, self.ic.concept):
                if c in vectors:
                    v = vectors[c]
                    if control:  # a random direction of the same norm
                        rnd = torch.randn(self.dim, generator=gen)
                        v = rnd / rnd.norm() * v.norm()
                    d[i] += v
        return d

    def make(self, rows: list[dict], setting, control: bool):
        strength, _ = setting
        d = {rep: self._directions(rows, vectors, control) for rep, vectors in self.vectors.items()}
        return lambda pos, bucket: add_direction(d[self.space_of[int(bucket)]][pos], strength)


def assemble(reports: list) -> "BucketReport":
    """Bucket k's column from reports[k]: per-bucket settings evaluated as one intervention."""
    correct = np.stack([r.correct[:, k] for k, r in enumerate(reports)], axis=1)
    return BucketReport(correct.mean(0), correct, transition_points(correct)[0])


def _heldout(cfg, ic, run_dir: Path) -> MoveSet | None:
    """Ordinary test positions of the data with the played move as the 'correct' one."""
    if not ic.heldout_positions:
        return None
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    idx = np.sort(np.random.default_rng(cfg.seed).permutation(store.split_indices("test"))[: ic.heldout_positions])
    if not len(idx):
        return None
    fens, moves = store.fens(idx), store.batch(idx)["move"].tolist()
    th = threat_concepts(fens)
    rows = [{"fen": f, "correct": [decode_move(m, f.split()[1] == "w")],
             "threats": [n for n, v in zip(th.names, th.labels[i].tolist()) if v]} for i, (f, m) in enumerate(zip(fens, moves))]
    return MoveSet.build(rows, run_dir / "positions_heldout")


def run(cfg, run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    ic = cfg.intervention
    kinds = {"sae": SAEIntervention, "probe": DirectionIntervention, "steering": DirectionIntervention}
    if ic.kind not in kinds:
        raise ConfigError(f"intervention.kind '{ic.kind}': expected one of {', '.join(kinds)}")
    if not ic.transitional:
        raise ConfigError("stage=intervention needs intervention.transitional (a stage=transitional run or CSV)")
    model = skill_model(cfg, "intervention")
    model.check_hook_name(ic.site)
    rows = concept_rows(read_transitional(ic.transitional), ic.concept)
    split = split_rows(rows)
    train = MoveSet.build(split["train"] + split["val"], run_dir / "positions_train")
    test = MoveSet.build(split["test"], run_dir / "positions_test")
    method = kinds[ic.kind](ic, model, train, cfg.seed)
    ev = lambda moves, hook=None: evaluate_under(model, moves.store, moves.rows, ic.site, hook, ic.batch_size)

    base_train = ev(train).accuracy
    grid = [{"strength": None, "top_n": None, "train_accuracy": float(base_train.mean()),
             "train_accuracy_by_bucket": base_train.tolist()}]  # no intervention
    for setting in method.settings():
        acc = ev(train, method.make(train.rows, setting, control=False)).accuracy
        grid.append({"strength": setting[0], "top_n": setting[1], "train_accuracy": float(acc.mean()),
                     "train_accuracy_by_bucket": acc.tolist()})
    best = max(grid[1:], key=lambda g: g["train_accuracy"])
    setting = (best["strength"], best["top_n"])
    # the study's protocol: each Elo bucket gets the setting that serves it best on the train rows
    per_bucket = [max(grid[1:], key=lambda g: g["train_accuracy_by_bucket"][k]) for k in range(NUM_BUCKETS)]
    per_bucket = [(g["strength"], g["top_n"]) for g in per_bucket] if ic.per_bucket else [setting] * NUM_BUCKETS
    base = ev(test)
    evals = {st: (ev(test, method.make(test.rows, st, False)), ev(test, method.make(test.rows, st, True)))
             for st in dict.fromkeys(per_bucket)}
    eff, ctrl = (assemble([evals[st][i] for st in per_bucket]) for i in (0, 1))

    per_pos = lambda r: r.correct.mean(1)
    effect = bootstrap_diff(per_pos(eff), per_pos(base), ic.n_boot, cfg.seed)
    vs_control = bootstrap_diff(per_pos(eff), per_pos(ctrl), ic.n_boot, cfg.seed)
    summary = {
        "kind": ic.kind, "concept": ic.concept, "site": ic.site, "train_positions": len(train.rows),
        "test_positions": len(test.rows), "strength": setting[0], "top_n": setting[1],
        "per_bucket_settings": [list(st) for st in per_bucket],
        "accuracy_base": float(base.accuracy.mean()), "accuracy_intervened": float(eff.accuracy.mean()),
        "accuracy_control": float(ctrl.accuracy.mean()),
        "effect": effect[0], "effect_ci": [effect[1], effect[2]],
        "effect_minus_control": vs_control[0], "effect_minus_control_ci": [vs_control[1], vs_control[2]],
        "mean_transition_point_base": float(base.transition_points.mean()),
        "mean_transition_point_intervened": float(eff.transition_points.mean()),
        "mean_transition_point_control": float(ctrl.transition_points.mean()),
        "fixed": int((~base.correct & eff.correct).sum()), "broken": int((base.correct & ~eff.correct).sum()),
    }
    held = _heldout(cfg, ic, run_dir)
    if held is not None:
        hb = ev(held)
        he = assemble([ev(held, method.make(held.rows, st, False)) for st in per_bucket])
        summary.update({"heldout_human_accuracy_base": float(hb.accuracy.mean()),
                        "heldout_human_accuracy_intervened": float(he.accuracy.mean())})

    tracker = Tracker(cfg, run_dir, job_type="intervention")
    try:
        acc = bar_by_bucket({"no intervention": base.accuracy.tolist(), "intervened": eff.accuracy.tolist(),
                             "control": ctrl.accuracy.tolist()}, run_dir / "accuracy_by_bucket.png",
                            f"{ic.kind} intervention on '{ic.concept}' at {ic.site}: correct move", ylabel="accuracy")
        hist = transition_histogram({"no intervention": base.transition_points.tolist(),
                                     "intervened": eff.transition_points.tolist(), "control": ctrl.transition_points.tolist()},
                                    run_dir / "transition_points.png", f"transition points of {len(test.rows)} test positions")
        for name, png in (("accuracy_by_bucket", acc), ("transition_points", hist)):
            tracker.log_image(f"intervention/{name}", png)
        tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    finally:
        tracker.finish()
    chose = ("a setting per Elo bucket (see the table)" if ic.per_bucket else f"strength {setting[0]}"
             + (f", top-{setting[1]} features per concept" if setting[1] else ""))
    lines = ["# Intervention", "", f"model `{model.name}`; `{ic.kind}` on `{ic.concept}` concepts at `{ic.site}`; {len(train.rows)} train "
             f"positions chose {chose}; judged on {len(test.rows)} test positions.", "",
             f"Correct-move accuracy over all buckets: {summary['accuracy_base']:.3f} -> {summary['accuracy_intervened']:.3f} "
             f"(control {summary['accuracy_control']:.3f}); effect {effect[0]:+.3f} [{effect[1]:+.3f}, {effect[2]:+.3f}], "
             f"minus control {vs_control[0]:+.3f} [{vs_control[1]:+.3f}, {vs_control[2]:+.3f}] (95% bootstrap). "
             f"Position-buckets fixed {summary['fixed']}, broken {summary['broken']}. Mean transition point "
             f"{summary['mean_transition_point_base']:.2f} -> {summary['mean_transition_point_intervened']:.2f} "
             f"(control {summary['mean_transition_point_control']:.2f}; {NEVER} = never).", ""]
    if held is not None:
        lines += [f"Ordinary held-out games, human move predicted: {summary['heldout_human_accuracy_base']:.3f} -> "
                  f"{summary['heldout_human_accuracy_intervened']:.3f}.", ""]
    lines += ["![accuracy](accuracy_by_bucket.png)", "", "![transition points](transition_points.png)", "",
              "| Elo bucket | none | intervened | control | setting (strength, top-n) |", "|---|---|---|---|---|"]
    lines += [f"| {bucket_label(model, k)} | {base.accuracy[k]:.3f} | {eff.accuracy[k]:.3f} | {ctrl.accuracy[k]:.3f} | "
              f"{per_bucket[k][0]}, {per_bucket[k][1] or '-'} |" for k in range(NUM_BUCKETS)]
    lines += ["", "Grid on the train positions:", "", "| strength | top-n | mean accuracy |", "|---|---|---|"]
    lines += [f"| {g['strength'] or 'none'} | {g['top_n'] or '-'} | {g['train_accuracy']:.3f} |" for g in grid]
    atomic_write_text(run_dir / "results.md", "\n".join(lines) + "\n")
    atomic_write_json(run_dir / "results.json", {**summary, "grid": grid, "accuracy_by_bucket": {
        "base": base.accuracy.tolist(), "intervened": eff.accuracy.tolist(), "control": ctrl.accuracy.tolist()}})
    return summary
