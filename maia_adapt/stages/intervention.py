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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..concepts import threat_concepts
from ..data.preprocess import open_or_build_store
from ..encoding import NUM_BUCKETS, decode_move
from ..errors import ConfigError
from ..analysis.calibration import MoveSet, split_rows
from ..analysis.interventions import (CONTROLS, CORRECT, ERROR_MODES, INTERVENTIONS, POSITIONS, SELECT, assemble,
                                      choose_settings, evaluate_under, grid_search, intervention_rows, judge)
from ..reporting.plots import bar_by_bucket, transition_histogram
from ..analysis.transitional import NEVER, read_transitional
from ..checks import bad, check_section, elo
from .common import bucket_label, skill_model


@dataclass
class InterventionConfig:
    """stage=intervention: amplify concept features / add directions and measure transition-point shifts."""

    device: str = "auto"  # where the model runs: auto (CUDA when there is one) | cpu | cuda | cuda:N
    # sae (amplify the concept's top SAE features) | probe (probe direction) | steering (mean difference) |
    # elo_heads (a Maia-2's skill heads given bucket elo_to's Elo at site blocks.<b>.hook_elo_q: a reference)
    kind: str = "sae"
    transitional: Optional[str] = None  # stage=transitional run (or CSV): train rows choose, test rows judge
    concept: str = "defensive"  # each position is intervened on for its active concepts of this kind (or one concept)
    site: str = "blocks.${layer}.hook_resid_post"
    saes: Optional[str] = None  # kind=sae: the stage=sae run (or SAE folder) whose SAE reads `site`
    threats: Optional[str] = None  # kind=sae: the stage=threats run whose detection table ranks the features
    probes: Optional[str] = None  # kind=probe: the stage=probe run
    probe_bucket: int = 10  # kind=probe: which bucket's probe gives the direction
    # sae: feature multiplier; probe/steering: x steering norm; elo_heads: how far toward elo_to's Elo term (1: replaced)
    strengths: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
    top_n: list[int] = field(default_factory=lambda: [1, 3, 5])  # grid; kind=sae: features per concept; elo_heads: heads
    elo_to: int = 10  # kind=elo_heads: the bucket whose Elo the heads are given
    # kind=sae, how the edited codes are written back: keep (the reconstruction error kept: strength 1
    # changes nothing), drop (the error of the token mean dropped), replace (the seed's: every token
    # replaced by the edited reconstruction of the mean)
    error: str = "keep"
    threshold: bool = True  # kind=sae: encode with the SAE's own activation (false: a plain ReLU, the NeurIPS seed's)
    # which setting of the grid each test row uses, chosen on the train rows: global (one for all),
    # bucket (one per Elo bucket), cell (one per (concept, Elo bucket): the seed's per (square, Elo))
    select: str = "bucket"
    # the rows: concept (each row with concepts of the kind, once) | resolves_square (the seed's: one row
    # per (position, square) whose correct move resolves that square's threat)
    positions: str = "concept"
    # the correct move: dataset (the transitional dataset's) | top_bucket (the seed's: the unedited model's
    # own bucket-10 move)
    correct: str = "dataset"
    control: str = "matched"  # matched (features of matched firing frequency / a random direction) | random (uniform) | none
    keep_error: Optional[bool] = None  # renamed: intervention.error (validate says so)
    per_bucket: Optional[bool] = None  # renamed: intervention.select (validate says so)
    n_boot: int = 1000
    heldout_positions: int = 1000  # ordinary test positions of `data`: is the played (human) move still predicted?
    batch_size: int = 256


SCHEMA = InterventionConfig  # cfg.intervention
RULES = {"probe_bucket": elo(), "elo_to": elo()}
CHOICES = {"kind": tuple(INTERVENTIONS), "error": ERROR_MODES, "select": SELECT, "positions": POSITIONS,
           "correct": CORRECT, "control": CONTROLS}


def check(cfg) -> None:
    check_section(cfg, "intervention", RULES, CHOICES)
    for old, new in (("keep_error", "intervention.error=keep|drop|replace (keep_error=false was drop)"),
                     ("per_bucket", "intervention.select=global|bucket|cell (per_bucket=false was global)")):
        if cfg.intervention[old] is not None:
            bad(f"intervention.{old}", cfg.intervention[old], f"nothing: it is now {new}")


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


def _ci(summary: dict, key: str) -> str:
    lo, hi = summary[f"{key}_ci"]
    return f"{summary[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _report(model, ic, method, summary: dict, grid: list, choice, base, eff, ctrl, heldout: bool) -> list[str]:
    """results.md's lines."""
    per_bucket = choice.by_bucket()
    chose = {"bucket": "a setting per Elo bucket (see the table)",
             "cell": f"a setting per (concept, Elo bucket) cell ({len({c for c, _ in choice.per_cell})} concepts; a cell "
                     "without train rows takes its bucket's, in the table)",
             "global": f"strength {summary['strength']}" + (f", top-{summary['top_n']} {method.unit}" if summary['top_n'] else "")}
    rows = "rows" if ic.positions == "concept" else "(position, square) rows whose correct move resolves the square's threat"
    target = "the dataset's correct moves" if ic.correct == "dataset" else "the unedited model's own bucket-10 move"
    lines = ["# Intervention", "", f"model `{model.name}`; {method.what()}; {summary['train_positions']} train {rows} chose "
             f"{chose[ic.select]}; judged on {summary['test_positions']} test rows against {target}"
             + ("" if ic.kind != "sae" else f"; codes written back: `{ic.error}`, encoded {'with' if ic.threshold else 'without'} "
                "the SAE's threshold") + ".", ""]
    control = (f" (control {summary['accuracy_control']:.3f}); effect {_ci(summary, 'effect')}, minus control "
               f"{_ci(summary, 'effect_minus_control')} (95% bootstrap)" if ctrl is not None
               else f"; effect {_ci(summary, 'effect')} (95% bootstrap; no control: intervention.control=none)")
    lines += [f"Correct-move accuracy over all buckets: {summary['accuracy_base']:.3f} -> {summary['accuracy_intervened']:.3f}"
              f"{control}. Position-buckets fixed {summary['fixed']}, broken {summary['broken']}. Mean transition point "
              f"{summary['mean_transition_point_base']:.2f} -> {summary['mean_transition_point_intervened']:.2f}, shift "
              f"{_ci(summary, 'transition_point_shift')} ({NEVER} = never). The seed's own number, the mean transition "
              f"point over buckets 0-9 of the rows each arm keeps (unpaired): {summary['seed_mean_tp_base']:.2f} "
              f"({summary['seed_tp_rows_base']} rows) -> {summary['seed_mean_tp_intervened']:.2f} "
              f"({summary['seed_tp_rows_intervened']} rows).", "",
              f"Skill trend ({bucket_label(model, NUM_BUCKETS - 1)} minus {bucket_label(model, 0)}): "
              f"{_ci(summary, 'skill_trend_base')} without intervention, {_ci(summary, 'skill_trend_intervened')} "
              f"intervened (change {_ci(summary, 'skill_trend_change')})"
              + (f", {_ci(summary, 'skill_trend_control')} under the control; change against the control "
                 f"{_ci(summary, 'skill_trend_change_minus_control')}" if ctrl is not None else "")
              + " (negative: the weak end gained more).", ""]
    if heldout:
        lines += [f"Ordinary held-out games, human move predicted: {summary['heldout_human_accuracy_base']:.3f} -> "
                  f"{summary['heldout_human_accuracy_intervened']:.3f}.", ""]
    lines += method.notes()
    lines += ["![accuracy](accuracy_by_bucket.png)", "", "![transition points](transition_points.png)", ""]
    if ctrl is not None:
        d, ci, head = summary["minus_control_by_bucket"], summary["minus_control_by_bucket_ci"], "intervened minus control"
    else:
        d, ci, head = summary["effect_by_bucket"], summary["effect_by_bucket_ci"], "intervened minus none"
    lines += [f"| Elo bucket | none | intervened | control | {head} [95% CI] | setting (strength, top-n) |", "|---|---|---|---|---|---|"]
    lines += [f"| {bucket_label(model, k)} | {base.accuracy[k]:.3f} | {eff.accuracy[k]:.3f} | "
              f"{f'{ctrl.accuracy[k]:.3f}' if ctrl is not None else '-'} | "
              f"{d[k]:+.3f} [{ci[k][0]:+.3f}, {ci[k][1]:+.3f}] | {per_bucket[k][0]}, {per_bucket[k][1] or '-'} |"
              for k in range(NUM_BUCKETS)]
    lines += ["", "Grid on the train rows:", "", "| strength | top-n | mean accuracy |", "|---|---|---|"]
    lines += [f"| {g['strength'] or 'none'} | {g['top_n'] or '-'} | {g['train_accuracy']:.3f} |" for g in grid]
    return lines


def _summary(ic, train, test, choice, j, method) -> dict:
    strength, top_n = choice.settings[choice.best]
    return {"kind": ic.kind, "concept": ic.concept, "site": ic.site, "train_positions": len(train.rows),
            "test_positions": len(test.rows), "strength": strength, "top_n": top_n, "select": ic.select,
            "positions": ic.positions, "correct": ic.correct, "control": ic.control, "error": ic.error,
            "threshold": ic.threshold, "per_bucket_settings": [list(st) for st in choice.by_bucket()],
            **j["summary"], **method.describe()}


def _figures(frame, ic, arms: dict, n_test: int) -> None:
    acc = bar_by_bucket({k: r.accuracy.tolist() for k, r in arms.items()}, frame.dir / "accuracy_by_bucket.png",
                        f"{ic.kind} intervention on '{ic.concept}' at {ic.site}: correct move", ylabel="accuracy")
    hist = transition_histogram({k: r.transition_points.tolist() for k, r in arms.items()},
                                frame.dir / "transition_points.png", f"transition points of {n_test} test rows")
    for name, png in (("accuracy_by_bucket", acc), ("transition_points", hist)):
        frame.tracker().log_image(f"intervention/{name}", png)


def run(cfg, frame) -> dict:
    run_dir, ic = frame.dir, cfg.intervention
    if ic.kind not in INTERVENTIONS:
        raise ConfigError(f"intervention.kind '{ic.kind}': expected one of {', '.join(INTERVENTIONS)}")
    if not ic.transitional:
        raise ConfigError("stage=intervention needs intervention.transitional (a stage=transitional run or CSV)")
    model = skill_model(cfg, "intervention")
    model.check_hook_name(ic.site)
    rows = intervention_rows(read_transitional(ic.transitional), ic.concept, ic.positions, ic.correct)
    split = split_rows(rows)
    train = MoveSet.build(split["train"] + split["val"], run_dir / "positions_train")
    test = MoveSet.build(split["test"], run_dir / "positions_test")
    method = INTERVENTIONS[ic.kind](ic, model, train, cfg.seed)
    ev = lambda moves, hook=None: evaluate_under(model, moves.store, moves.rows, ic.site, hook, ic.batch_size)

    grid, reports = grid_search(method, ev, train)
    choice = choose_settings(grid, reports, train.rows, ic.select, ic.concept)
    j = judge(method, ev, test, choice, ic.n_boot, cfg.seed, control=ic.control != "none")
    base, eff, ctrl = j["base"], j["intervened"], j["control"]
    summary = _summary(ic, train, test, choice, j, method)
    held = _heldout(cfg, ic, run_dir)
    if held is not None:  # a held-out position holds several concepts: each bucket's setting (select=cell too)
        hb = ev(held)
        per_bucket = choice.by_bucket()  # each distinct setting evaluated once (all 11 buckets are in each pass)
        once = {st: ev(held, method.make(held.rows, st, False)) for st in dict.fromkeys(per_bucket)}
        he = assemble([once[st] for st in per_bucket])
        summary.update({"heldout_human_accuracy_base": float(hb.accuracy.mean()),
                        "heldout_human_accuracy_intervened": float(he.accuracy.mean())})
    _figures(frame, ic, {"no intervention": base, "intervened": eff, **({"control": ctrl} if ctrl is not None else {})},
             len(test.rows))
    lines = _report(model, ic, method, summary, grid, choice, base, eff, ctrl, held is not None)
    frame.report("\n".join(lines) + "\n", {**summary, "grid": grid, "accuracy_by_bucket": {
        k: r.accuracy.tolist() for k, r in (("base", base), ("intervened", eff), ("control", ctrl)) if r is not None}})
    return summary
