"""stage=transitional: the transitional-position dataset of a position set.

Writes transitional.csv (one row per position: FEN, split, per-bucket predictions and probabilities,
correct move(s), transition point, monotone and blunder flags, active threat concepts), plots of the
transition-point histogram and the per-bucket accuracy, results.md and summary numbers.

`model=maia1` runs the Maia-1 family: bucket b is the network of its band (0,1 -> maia-1100,
9,10 -> maia-1900; each network runs once), so a transition point k >= 2 reads "right from
maia-(1000+100k) up" and 1 and 10 cannot occur. Store positions get their game history; the seed
set is FEN-only, so there Maia-1 sees lc0's bare-FEN input.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from ..data.preprocess import open_or_build_store
from ..data.store import store_from_fens
from ..encoding import NUM_BUCKETS
from ..errors import ConfigError
from ..io import atomic_write_csv
from ..layout import ALL_POSITIONS_CSV, TRANSITIONAL_CSV
from ..reporting.plots import bar_by_bucket, transition_histogram
from ..analysis.transitional import (ACCEPT, BLUNDER_RULES, NEVER, REQUIRE, EngineOracle, build_transitional,
                                     find_engine, flat_rows, load_seed_positions, required, seed_terms, skill_stats)
from ..checks import POSITIVE_INT, bad, check_section, elo
from .common import bucket_label, skill_model


@dataclass
class TransitionalConfig:
    """stage=transitional: per-bucket predictions, correct moves and transition points of a position set."""

    device: str = "auto"  # where the model runs: auto (CUDA when there is one) | cpu | cuda | cuda:N
    position_set: str = "store"  # store: positions of the data; seed: the seed study's 264 positions
    seed_path: str = "${paths.data_root}/transitional/seed_transitional_positions.json"
    positions: Optional[int] = 2000  # store positions per split of `splits`; null: all
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test"])
    # auto: the seed set's accepted moves, else Stockfish when installed, else the model's top-bucket
    # move; engine | accepted (seed only) | model force one
    oracle: str = "auto"
    engine_path: Optional[str] = None  # null: stockfish on PATH or /usr/games/stockfish
    depth: Optional[int] = 8
    seconds: Optional[float] = None  # a time limit per search instead of (or besides) the depth
    nodes: Optional[int] = None  # a node budget per search instead of (or besides) the depth
    engine_workers: int = 1  # engines searching positions side by side (one thread each)
    # every engine answer is kept here by engine, limit and position (null: none kept); a search starts
    # from a cleared engine, so an answer depends on those alone, and reruns and other models reuse it
    engine_cache: Optional[str] = "${paths.cache_dir}/engine/answers.jsonl"
    # answer files (.jsonl or .jsonl.zst) read as part of the cache, never written: with them and no
    # engine installed, oracle auto/engine answers from them alone (a position they lack is left out
    # and counted). The quick study ships its positions' answers (maia_adapt/assets)
    engine_answers: list[str] = field(default_factory=list)
    # the correct moves of a position (engine oracle): best = the engine's best move (ours); multipv =
    # every line's first move within accept_cp of the best (the seed's 30 cp over its database's lines)
    accept: str = "best"
    accept_cp: int = 30
    multipv: int = 1  # lines per search (the seed's database holds up to 5; accept=multipv needs >= 2)
    blunder_cp: int = 150  # the bucket-0 move loses at least this many centipawns: a blunder
    # loss: the bucket-0 move loses >= blunder_cp against the best (ours); seed: the seed's test
    # |eval before - eval after| > blunder_cp with each eval for its own side to move (a sign bug)
    blunder_rule: str = "loss"
    # which rows the dataset keeps: none = every position (ours); monotone = the seed's transitional
    # rows (wrong below one bucket, right from it up); monotone_blunder = of those, a blundering bucket 0
    require: str = "none"
    oppo_bucket: Optional[int] = None  # null: opponent bucket = own bucket (the study's)
    batch_size: int = 512


SCHEMA = TransitionalConfig  # cfg.transitional
RULES = {**{k: POSITIVE_INT for k in ("accept_cp", "multipv", "engine_workers", "nodes", "depth")},
         "oppo_bucket": elo()}
CHOICES = {"position_set": ("store", "seed"), "oracle": ("auto", "engine", "accepted", "model"), "accept": ACCEPT,
           "require": REQUIRE, "blunder_rule": BLUNDER_RULES}


def check(cfg) -> None:
    check_section(cfg, "transitional", RULES, CHOICES)
    tc = cfg.transitional
    if tc.accept == "multipv" and tc.multipv < 2:
        bad("transitional.multipv", tc.multipv, "2 or more with transitional.accept=multipv (one line "
            "is the best move only; the seed's database held up to 5)")


def _position_set(cfg, run_dir: Path):
    """(store, indices, accepted moves or None, seed transition points or None)."""
    tc = cfg.transitional
    if tc.position_set == "seed":
        seed = load_seed_positions(tc.seed_path)
        store = store_from_fens(seed["fens"], run_dir / "positions", 5, 5)
        return store, np.arange(len(seed["fens"])), seed["all_best_moves"], seed["transition_points"]
    if tc.position_set != "store":
        raise ConfigError(f"transitional.position_set '{tc.position_set}': expected store or seed")
    store = open_or_build_store(cfg.data, cfg.paths.cache_dir)
    rng = np.random.default_rng(cfg.seed)
    # up to `positions` from each split: val and test are a few percent of the games, and a
    # calibration run needs enough of them to choose and to judge its checkpoint
    parts = [rng.permutation(store.split_indices(s))[: tc.positions or None] for s in tc.splits]
    idx = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    if len(idx) == 0:
        raise ConfigError(f"transitional.splits {list(tc.splits)}: no positions in the store")
    return store, idx, None, None


def _ci_line(s: dict) -> str:
    ci = lambda k, f: f"{s[k]:{f}} [{s[k + '_ci95'][0]:{f}}, {s[k + '_ci95'][1]:{f}}]"
    return (f"With 95% intervals from a bootstrap over games: skill gain (correct at the top bucket minus the bottom "
            f"one) {ci('skill_gain', '+.3f')}; transitional share {ci('transitional_share', '.3f')}, their mean transition "
            f"point {ci('mean_transition_point_of_transitional', '.2f')}; non-monotone share {ci('non_monotone_share', '.3f')}.")


_BLUNDER_WORDS = {"loss": "bucket-0 move loses >= {cp} cp",
                  "seed": "the seed's test: |eval before - eval after, each for its own side to move| > {cp} cp"}


def _rule_lines(tc, oracle: str, summary: dict) -> list[str]:
    """results.md: which rules made the dataset, and the positions searched in the seed's terms."""
    if oracle != "engine":
        return []
    accept = ("the engine's best move" if tc.accept == "best" else
              f"every first move of the engine's {tc.multipv} lines within {tc.accept_cp} cp of the best")
    limit = ", ".join(f"{k} {v}" for k, v in (("depth", tc.depth), ("seconds", tc.seconds), ("nodes", tc.nodes)) if v)
    t = {k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith("seed_terms/")}
    lines = [f"Correct: {accept} (Stockfish, {limit} per search). Rows kept: `{tc.require}` "
             f"({summary['positions']} of {summary['positions_searched']} positions searched).", "",
             "In the seed's terms, of all positions searched (the seed's official Maia-2 on the lichess evaluation "
             "database: 31.5% right at every bucket, 10.1% transitional): "
             f"{t['share_all_correct']:.1%} right at every bucket, {t['share_never_correct']:.1%} never right, "
             f"{t['share_transitional']:.1%} transitional (one wrong-to-right step), {t['share_non_monotone']:.1%} "
             f"non-monotone; transitional with a blundering bucket 0: {t['share_transitional_blunder_loss']:.1%} by the "
             f"centipawn loss, {t['share_transitional_blunder_seed']:.1%} by the seed's rule; "
             f"{t['mean_correct_moves']:.2f} correct moves per position.", ""]
    return lines


def _search(cfg, model, store, idx, accepted) -> tuple[list[dict], str, dict]:
    """(every position with its per-bucket evidence, the oracle that judged it, the engine's name and
    the positions it had no answer for)."""
    tc = cfg.transitional
    oracle = tc.oracle
    if oracle == "auto":
        oracle = "accepted" if accepted is not None else \
            ("engine" if find_engine(tc.engine_path) or tc.engine_answers else "model")
    if oracle == "accepted" and accepted is None:
        raise ConfigError("transitional.oracle=accepted needs a position set with accepted moves (position_set=seed)")
    bar = tqdm(total=len(idx), desc="positions", dynamic_ncols=True)
    kw = dict(accepted=accepted, accept=tc.accept, accept_cp=tc.accept_cp, multipv=tc.multipv, blunder_cp=tc.blunder_cp,
              blunder_rule=tc.blunder_rule, oppo_bucket=tc.oppo_bucket, batch_size=tc.batch_size, progress=bar.update)
    if oracle == "engine":
        path = find_engine(tc.engine_path)
        if path is None and not tc.engine_answers:
            raise ConfigError("transitional.oracle=engine needs Stockfish (apt-get install stockfish, or set "
                              "transitional.engine_path) or transitional.engine_answers; or use transitional.oracle=model")
        with EngineOracle(path, depth=tc.depth, seconds=tc.seconds, nodes=tc.nodes, workers=tc.engine_workers,
                          cache=tc.engine_cache, shipped=tuple(tc.engine_answers)) as engine:
            everything = build_transitional(model, store, idx, oracle="engine", engine=engine, **kw)
            info = {"engine": engine.name, "positions_without_engine_answer": len(idx) - len(everything)}
    else:
        if tc.accept != "best" or tc.blunder_rule != "loss" or tc.require == "monotone_blunder":
            raise ConfigError(f"transitional.accept, blunder_rule and require=monotone_blunder read the engine's lines: "
                              f"they need transitional.oracle=engine (this run's oracle is {oracle})")
        everything, info = build_transitional(model, store, idx, oracle=oracle, **kw), {}
    bar.close()
    return everything, oracle, info


def _with_seed_points(everything: list[dict], rows: list[dict], seed_tp):
    """The seed study's transition points, on every position and as a list over `rows` (None without)."""
    if seed_tp is None:
        return None
    # the seed data writes "never" as 10 (so a transition exactly at the top bucket reads as never)
    for r, t in zip(everything, seed_tp):
        r["seed_transition_point"] = NEVER if int(t) >= NUM_BUCKETS - 1 else int(t)
    return [r["seed_transition_point"] for r in rows]


def _summary(cfg, model, rows, everything, oracle, tps, correct, engine_info: dict) -> dict:
    tc = cfg.transitional
    trans = np.array([r["transitional"] for r in rows])
    stats = skill_stats(correct, [r["game_id"] for r in rows], seed=cfg.seed)
    summary = {"model": model.name, "positions": len(rows), "oracle": oracle, **engine_info,
               "transitional": int(trans.sum()),
               "never": int((tps == NEVER).sum()), "always": int((tps == 0).sum()),
               "non_monotone": int(sum(not r["monotone"] for r in rows)),
               "blunders": int(sum(r["blunder"] for r in rows)), "require": tc.require, "positions_searched": len(everything),
               **{f"seed_terms/{k}": v for k, v in seed_terms(everything, tc.blunder_cp).items()}, **stats}
    for s in ("train", "val", "test"):
        summary[f"transitional_{s}"] = int(sum(r["transitional"] and r["split"] == s for r in rows))
    return summary


def _report(model, tc, oracle, summary, rows, acc, tps) -> str:
    lines = [f"# Transitional positions ({model.name})", "", f"{len(rows)} positions, oracle `{oracle}`: {summary['transitional']} "
             f"transitional (wrong at low skill, right from a bucket up), {summary['always']} right at every bucket, "
             f"{summary['never']} never right, {summary['non_monotone']} non-monotone, {summary['blunders']} blunders "
             f"({_BLUNDER_WORDS[tc.blunder_rule].format(cp=tc.blunder_cp)}).", "", *_rule_lines(tc, oracle, summary),
             "![transition points](transition_points.png)", "",
             "![accuracy](accuracy_by_bucket.png)", "", _ci_line(summary), "",
             "| Elo bucket | correct [95% CI over games] | transition points here |", "|---|---|---|"]
    for k in range(NUM_BUCKETS):
        lo, hi = summary[f"accuracy_bucket_{k}_ci95"]
        lines.append(f"| {bucket_label(model, k)} | {acc[k]:.3f} [{lo:.3f}, {hi:.3f}] | {int((tps == k).sum())} |")
    return "\n".join(lines) + "\n"


def run(cfg, frame) -> dict:
    run_dir, tc = frame.dir, cfg.transitional
    model = skill_model(cfg, "transitional")
    store, idx, accepted, seed_tp = _position_set(cfg, run_dir)
    everything, oracle, engine_info = _search(cfg, model, store, idx, accepted)
    rows = required(everything, tc.require)
    if not rows:
        raise ConfigError(f"transitional.require={tc.require}: none of the {len(everything)} positions qualifies "
                          "(more positions, or another rule)")
    seed_tp = _with_seed_points(everything, rows, seed_tp)
    atomic_write_csv(run_dir / TRANSITIONAL_CSV, flat_rows(rows))
    if tc.require != "none":  # every position with its evidence, for the dataset's statistics and other rules
        atomic_write_csv(run_dir / ALL_POSITIONS_CSV, flat_rows(everything))
    tps = np.array([r["transition_point"] for r in rows])
    correct = np.stack([r["accuracy_by_bucket"] for r in rows])
    acc = correct.mean(0)
    summary = _summary(cfg, model, rows, everything, oracle, tps, correct, engine_info)
    series = {"this model": tps.tolist()}
    if seed_tp is not None:
        series["seed study (official Maia-2)"] = seed_tp
        summary["agreement_with_seed_transition_point"] = float(np.mean(tps == np.array(seed_tp)))
    hist = transition_histogram(series, run_dir / "transition_points.png", f"transition points ({len(rows)} positions, oracle {oracle})")
    curve = bar_by_bucket({"correct move": acc.tolist()}, run_dir / "accuracy_by_bucket.png",
                          "fraction of positions where the model plays the correct move", ylabel="accuracy")
    tracker = frame.tracker()
    tracker.log_image("transitional/transition_points", hist)
    tracker.log_image("transitional/accuracy_by_bucket", curve)
    frame.report(_report(model, tc, oracle, summary, rows, acc, tps), summary)
    return summary
