"""Move-prediction accuracy and the skill matrix of any skill-conditioned model (stage=evaluate).

Every position is run under all 11 conditioning buckets (each distinct behaviour once: 11 passes for
Maia-2, 9 networks for the Maia-1 family), giving `hits` [N, 11]: was the played move the model's
legal top-1 when conditioned on bucket c? From it:

- `top1`: accuracy with each player scored at their own bucket (the model conditioned as the data
  says), over all positions; `top1_bucket_<k>`: the same on the positions whose player to move is
  in bucket k; `top1_macro`: the mean of the 11 per-bucket accuracies (buckets without positions
  left out).
- the skill matrix M[r, c]: accuracy on the positions of player bucket r with the model conditioned
  on bucket c (the opponent bucket is the real opponent's, or c with oppo="same").
- `skill_gap_low` = M[0, 0] - M[0, 10]: how much better the weakest players are predicted by the
  model's weakest setting than by its strongest; `skill_gap_high` = M[10, 10] - M[10, 0]. Positive
  gaps mean the model adapts to skill the right way round.

Every 95% interval is a percentile interval from one bootstrap over games (positions of one game
are not independent): the same resampled games for every statistic, so the gap intervals are paired
(both columns of a gap see the same positions in every resample).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..encoding import BUCKET_NAMES, NUM_BUCKETS
from ..errors import DataError
from ..io import atomic_write_csv, atomic_write_json, atomic_write_text
from ..model.inference import BucketTop1, top_move

SPLITS = ("train", "val", "test", "all")


def sample_positions(store, split: str, positions: int | None, seed: int = 0) -> np.ndarray:
    """Sorted store indices: `positions` drawn uniformly without replacement from `split` (all: the
    whole store), only rows with a played move. None: every such row."""
    if split not in SPLITS:
        raise DataError(f"evaluate.split '{split}': expected one of {', '.join(SPLITS)}")
    idx = np.arange(len(store)) if split == "all" else store.split_indices(split)
    idx = idx[np.asarray(store.column("move")[idx]) >= 0]
    if len(idx) == 0:
        raise DataError(f"no positions with a played move in split '{split}' of {store.path} (empty position set)")
    if positions is not None and positions < len(idx):
        idx = np.random.default_rng(seed).choice(idx, size=positions, replace=False)
    return np.sort(idx)


@torch.inference_mode()
def skill_hits(model, store, indices, batch_size: int = 512, oppo: str = "data") -> dict[str, np.ndarray]:
    """hits [N, 11] (top-1 correct under each conditioning bucket), bucket [N] (player's), game [N]."""
    idx = np.asarray(indices, dtype=np.int64)
    hits = np.zeros((len(idx), NUM_BUCKETS), dtype=bool)
    conditions = model.conditions()
    bar = tqdm(total=len(idx), desc=f"evaluate {getattr(model, 'name', '')}".strip(), unit=" pos", dynamic_ncols=True,
               disable=len(idx) < 20 * batch_size)  # a quick evaluation (e.g. inside training) stays quiet
    for s in range(0, len(idx), batch_size):
        inputs = model.inputs(store, idx[s : s + batch_size])
        legal = inputs["legal"].to(model.device)
        move = inputs["move"].to(model.device)
        pairs = [(rep, inputs["elo_oppo"] if oppo == "data" else rep) for rep, _ in conditions]
        for (rep, group), logits in zip(conditions, model.policy_logits_by_condition(inputs, pairs)):
            pred = top_move(logits, legal)
            hits[s : s + len(move), group] = (pred == move).cpu().numpy()[:, None]
        bar.update(len(move))
    bar.close()
    return {
        "hits": hits,
        "bucket": np.asarray(store.column("elo_self")[idx]).astype(np.int64),
        "game": np.asarray(store.column("game_id")[idx]).astype(np.int64),
    }


@torch.no_grad()
def own_bucket_accuracy(model, store, indices, batch_size: int = 512) -> dict:
    """Top-1 accuracy on the played move with each position conditioned on its players' own buckets
    (for the Maia-1 family: each row through its band's network), overall and per player bucket."""
    from ..model.skill import as_skill_model

    model = as_skill_model(model)
    idx = np.asarray(indices, dtype=np.int64)
    top1 = BucketTop1()
    for s in range(0, len(idx), batch_size):
        inputs = model.inputs(store, idx[s : s + batch_size])
        logits = model.policy_logits(inputs, inputs["elo_self"], inputs["elo_oppo"]).float().cpu()
        top1.add(top_move(logits, inputs["legal"]), inputs["move"], inputs["elo_self"])
    acc = top1.results()
    return {"accuracy": acc.pop("accuracy"), "positions": int(top1.count.sum()), **acc}


def _ci(boot: np.ndarray) -> list[float] | None:
    boot = boot[np.isfinite(boot)]
    if len(boot) == 0:
        return None
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return [float(lo), float(hi)]


def _ratio(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def skill_metrics(hits, bucket, game, n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracies, the skill matrix and the two gaps, with game-bootstrap 95% intervals (see module doc).

    Returns the summary keys (`top1`, `top1_ci95`, `top1_macro`, `top1_bucket_<k>`, `count_bucket_<k>`,
    `skill_gap_low`, `skill_gap_high`, each value with its `_ci95`; NaN where undefined) plus
    `matrix` [11, 11] and `counts` [11]."""
    hits = np.asarray(hits, dtype=np.float64)
    bucket = np.asarray(bucket, dtype=np.int64)
    n = len(bucket)
    if n == 0:
        raise DataError("no positions to evaluate (empty position set)")
    own = hits[np.arange(n), bucket]
    games, g = np.unique(np.asarray(game), return_inverse=True)
    # per-game sums: every statistic is a ratio of sums over games, so a resample of games is a
    # weighted sum, W [B, G] @ per-game sums
    per_game = np.zeros((len(games), 2 * NUM_BUCKETS + 4))
    np.add.at(per_game, (g, bucket), own)
    np.add.at(per_game, (g, NUM_BUCKETS + bucket), 1.0)
    low, high = bucket == 0, bucket == NUM_BUCKETS - 1
    np.add.at(per_game[:, -4], g[low], hits[low, 0] - hits[low, -1])
    np.add.at(per_game[:, -3], g[low], 1.0)
    np.add.at(per_game[:, -2], g[high], hits[high, -1] - hits[high, 0])
    np.add.at(per_game[:, -1], g[high], 1.0)

    def stats(sums):  # sums [..., 2*11+4] -> dict of statistic arrays [...]
        corr, cnt = sums[..., :NUM_BUCKETS], sums[..., NUM_BUCKETS : 2 * NUM_BUCKETS]
        acc = _ratio(corr, cnt)
        with np.errstate(invalid="ignore"):
            macro = np.nanmean(np.where(cnt > 0, acc, np.nan), axis=-1) if np.any(cnt > 0) else np.nan
        out = {"top1": _ratio(corr.sum(-1), cnt.sum(-1)), "top1_macro": macro,
               "skill_gap_low": _ratio(sums[..., -4], sums[..., -3]),
               "skill_gap_high": _ratio(sums[..., -2], sums[..., -1])}
        for k in range(NUM_BUCKETS):
            out[f"top1_bucket_{k}"] = acc[..., k]
        return out

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of a resample that lost a bucket
        point = stats(per_game.sum(0))
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(len(games), np.full(len(games), 1.0 / len(games)), size=n_boot).astype(np.float64)
        boot = stats(weights @ per_game)
    out: dict = {}
    for key in ("top1", "top1_macro", *(f"top1_bucket_{k}" for k in range(NUM_BUCKETS)), "skill_gap_low", "skill_gap_high"):
        out[key] = float(point[key])
        out[f"{key}_ci95"] = _ci(np.asarray(boot[key])) if math.isfinite(out[key]) else None
    counts = np.bincount(bucket, minlength=NUM_BUCKETS)
    for k in range(NUM_BUCKETS):
        out[f"count_bucket_{k}"] = int(counts[k])
    out["positions"] = int(n)
    out["games"] = int(len(games))
    matrix = np.full((NUM_BUCKETS, NUM_BUCKETS), np.nan)
    for r in range(NUM_BUCKETS):
        if counts[r]:
            matrix[r] = hits[bucket == r].mean(0)
    out["matrix"] = matrix
    out["counts"] = counts
    return out


def json_safe(obj):
    """NaN/inf -> None (strict JSON), numpy scalars/arrays -> Python values, recursively."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def evaluate_skill_model(model, store, indices, batch_size: int = 512, oppo: str = "data", n_boot: int = 1000,
                         seed: int = 0) -> dict:
    """skill_hits + skill_metrics, plus the model's conditioning columns (label, buckets) for the matrix."""
    h = skill_hits(model, store, indices, batch_size=batch_size, oppo=oppo)
    res = skill_metrics(h["hits"], h["bucket"], h["game"], n_boot=n_boot, seed=seed)
    res["columns"] = [(model.label(rep), group) for rep, group in model.conditions()]
    res["model"] = model.name
    return res


def _fmt(v, ci=None, pct=True) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    return f(v) + (f" [{f(ci[0])}, {f(ci[1])}]" if ci else "")


def write_evaluation(run_dir, res: dict, title: str, prefix: str = "") -> dict:
    """skill_matrix.csv / .png and results.md into run_dir; returns the strict-JSON summary entries."""
    from ..reporting.plots import skill_matrix_heatmap

    run_dir = Path(run_dir)
    cols = res["columns"]
    # one column per distinct behaviour (the family's shared networks shown once)
    m = np.stack([res["matrix"][:, group[0]] for _, group in cols], axis=1)
    labels = [label for label, _ in cols]
    rows = [{"player_bucket": BUCKET_NAMES[r], "positions": int(res["counts"][r]),
             **{labels[j]: (None if not np.isfinite(m[r, j]) else round(float(m[r, j]), 6)) for j in range(len(cols))}}
            for r in range(NUM_BUCKETS)]
    atomic_write_csv(run_dir / f"{prefix}skill_matrix.csv", rows)
    skill_matrix_heatmap(m, labels, res["counts"], run_dir / f"{prefix}skill_matrix.png", title)
    summary = {k: v for k, v in res.items() if k not in ("matrix", "counts", "columns")}
    summary = json_safe(summary)
    lines = [
        f"# {title}", "",
        f"{res['positions']:,} positions from {res['games']:,} games. Accuracy in %, 95% intervals from a "
        "bootstrap over games (paired for the gaps).", "",
        f"- top-1 (each player at their own bucket): **{_fmt(res['top1'], summary['top1_ci95'])}**",
        f"- macro over the 11 buckets: **{_fmt(res['top1_macro'], summary['top1_macro_ci95'])}**",
        f"- skill_gap_low (players <1100: own setting - the >=2000 setting): "
        f"**{_fmt(res['skill_gap_low'], summary['skill_gap_low_ci95'])}** points",
        f"- skill_gap_high (players >=2000: the >=2000 setting - the <1100 setting): "
        f"**{_fmt(res['skill_gap_high'], summary['skill_gap_high_ci95'])}** points", "",
        "| player bucket | positions | top-1 [95% CI] |", "|---|---|---|",
        *(f"| {BUCKET_NAMES[k]} | {res['counts'][k]:,} | {_fmt(res[f'top1_bucket_{k}'], summary[f'top1_bucket_{k}_ci95'])} |"
          for k in range(NUM_BUCKETS)),
        "", f"Skill matrix (rows: player's bucket; columns: conditioning {'network' if labels[0].startswith('maia') else 'bucket'}),"
        f" top-1 in %: `{prefix}skill_matrix.csv`, `{prefix}skill_matrix.png`", "",
        "| player \\ model | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|",
        *(f"| {BUCKET_NAMES[r]} | " + " | ".join(_fmt(float(m[r, j])) for j in range(len(labels))) + " |"
          for r in range(NUM_BUCKETS)),
    ]
    atomic_write_text(run_dir / f"{prefix}results.md", "\n".join(lines) + "\n")
    return summary


def evaluate_run(model, store, ev_cfg, run_dir, title: str, seed: int = 0, indices=None, prefix: str = "") -> dict:
    """What stage=evaluate and the end of stage=train do: sample, evaluate, write; the summary dict."""
    if indices is None:
        indices = sample_positions(store, ev_cfg.split, ev_cfg.positions, seed=seed)
    res = evaluate_skill_model(model, store, indices, batch_size=ev_cfg.batch_size, oppo=ev_cfg.oppo,
                               n_boot=ev_cfg.n_boot, seed=seed)
    summary = write_evaluation(run_dir, res, title, prefix=prefix)
    atomic_write_json(Path(run_dir) / f"{prefix}evaluation.json", summary)
    return summary
