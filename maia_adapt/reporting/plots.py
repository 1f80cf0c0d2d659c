"""Matplotlib figures shared by the stages (headless backend, written as PNG)."""
from __future__ import annotations

import warnings
from pathlib import Path


from ..encoding import BUCKET_NAMES



def pyplot():
    """matplotlib.pyplot on the Agg backend, imported at the first plot: every stage module imports this
    one, and the app's start-up (a config error, --help) should not pay for matplotlib (~0.7 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

def _save(fig, path, dpi: int = 120) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def grouped_bars(series: dict[str, list[float]], labels: list[str], path, title: str, xlabel: str, ylabel: str) -> Path:
    """One group of bars per label, one bar per named series (e.g. before / after)."""
    fig, ax = pyplot().subplots(figsize=(9, 3.6))
    n = len(series)
    width = 0.8 / max(n, 1)
    for j, (name, values) in enumerate(series.items()):
        xs = [i + (j - (n - 1) / 2) * width for i in range(len(values))]
        ax.bar(xs, values, width=width, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if n > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def bar_by_bucket(series: dict[str, list[float]], path, title: str, ylabel: str = "top-1 accuracy") -> Path:
    """One group of bars per Elo bucket, one bar per named series."""
    return grouped_bars(series, list(BUCKET_NAMES), path, title, "Elo bucket (self)", ylabel)


def feature_density(freq, path, title: str) -> Path:
    """Histogram of log10 feature firing frequency; features that never fire are counted apart."""
    import numpy as np

    freq = np.asarray(freq, dtype=float)
    live = freq[freq > 0]
    fig, ax = pyplot().subplots(figsize=(6, 3.4))
    if len(live):
        ax.hist(np.log10(live), bins=50, color="tab:blue")
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("features")
    ax.set_title(f"{title}\n{int((freq == 0).sum())} of {len(freq)} never fire", fontsize=9)
    return _save(fig, path)


def square_heatmaps(panels: dict[str, object], path, title: str, vmin: float = 0.5, vmax: float = 1.0,
                    label: str = "held-out AUC") -> Path:
    """One 8x8 board heatmap per panel (values indexed by square a1=0 .. h8=63, rank 8 at the top)."""
    import numpy as np

    fig, axes = pyplot().subplots(1, len(panels), figsize=(3.6 * len(panels) + 0.8, 3.8), squeeze=False)
    im = None
    for ax, (name, values) in zip(axes[0], panels.items()):
        grid = np.asarray(values, dtype=float).reshape(8, 8)[::-1]
        im = ax.imshow(grid, vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(8), list("abcdefgh"))
        ax.set_yticks(range(8), [str(r) for r in range(8, 0, -1)])
        ax.set_title(name, fontsize=10)
        for r in range(8):
            for c in range(8):
                v = grid[r, c]
                # drop only a leading zero to fit the cell: 0.95 -> .95, but 1.00 stays 1.00
                ax.text(c, r, "" if np.isnan(v) else f"{v:.2f}".removeprefix("0"), ha="center", va="center", fontsize=6,
                        color="white" if v < (vmin + vmax) / 2 else "black")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=label)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def transition_histogram(series: dict[str, list[int]], path, title: str) -> Path:
    """Bars of how many positions have each transition point (0..10, and 'never'), one bar per series."""
    import numpy as np

    labels = [*BUCKET_NAMES, "never"]
    counts = {name: np.bincount(np.asarray(tps, dtype=int), minlength=len(labels))[: len(labels)].tolist()
              for name, tps in series.items()}
    return grouped_bars(counts, labels, path, title,
                        "transition point (first Elo bucket of the final run of correct moves)", "positions")


def bucket_heatmap(values, rows: list[str], path, title: str, vmin: float = 0.5, vmax: float = 1.0,
                   label: str = "test AUC") -> Path:
    """Heatmap of values [len(rows), 11]: one row per concept (or lens), one column per Elo bucket."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    fig, ax = pyplot().subplots(figsize=(8, 1.2 + 0.22 * len(rows)))
    im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), BUCKET_NAMES[: values.shape[1]], rotation=30, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("Elo bucket the model is conditioned on")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def elo_grid_heatmap(values, path, title: str, label: str = "top-1 agreement") -> Path:
    """An 11 x 11 heatmap over (self, opponent) Elo buckets with the values written in."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    fig, ax = pyplot().subplots(figsize=(7.5, 6.2))
    im = ax.imshow(values, cmap="viridis", vmin=min(0.5, float(values.min())), vmax=1.0)
    ax.set_xticks(range(len(BUCKET_NAMES)), BUCKET_NAMES, rotation=45, fontsize=7)
    ax.set_yticks(range(len(BUCKET_NAMES)), BUCKET_NAMES, fontsize=7)
    ax.set_xlabel("opponent Elo bucket")
    ax.set_ylabel("own Elo bucket")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=5.5, color="white")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def qq_plot(a, b, path, title: str, xlabel: str, ylabel: str) -> Path:
    """Quantiles of b against quantiles of a, with the diagonal."""
    import numpy as np

    q = np.linspace(0, 1, 101)
    qa, qb = np.quantile(np.asarray(a), q), np.quantile(np.asarray(b), q)
    fig, ax = pyplot().subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1)
    ax.plot(qa, qb, ".", ms=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def skill_matrix_heatmap(values, col_labels: list[str], counts, path, title: str, dpi: int = 120) -> Path:
    """The skill matrix [11, C] (rows: player's Elo bucket, columns: conditioning bucket or network),
    as accuracy and as accuracy minus the row's mean: the second panel shows which setting predicts
    each skill level best, free of how predictable that level is overall."""
    import numpy as np

    values = np.asarray(values, dtype=float) * 100
    # a skill level with no test position (a row of NaN) stays NaN; nanmean warns on it through the
    # warnings module, which np.errstate does not silence
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centred = values - np.nanmean(values, axis=1, keepdims=True) if values.shape[1] > 1 else values * 0
    rows = [f"{name} ({int(n):,})" for name, n in zip(BUCKET_NAMES, counts)]
    width = 2.6 + 0.42 * len(col_labels)
    fig, axes = pyplot().subplots(1, 2, figsize=(2 * width, 4.6))
    span = np.nanmax(np.abs(centred)) if np.isfinite(centred).any() and np.nanmax(np.abs(centred)) > 0 else 1.0
    for ax, grid, cmap, lim, label in ((axes[0], values, "viridis", None, "top-1 accuracy (%)"),
                                        (axes[1], centred, "RdBu_r", span, "minus the row's mean (points)")):
        im = ax.imshow(grid, cmap=cmap, aspect="auto", **({"vmin": -lim, "vmax": lim} if lim else {}))
        ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xlabel("model conditioned on (bucket or network)")
        ax.set_ylabel("player to move: Elo bucket (positions)")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=5.5,
                            color="black" if cmap == "RdBu_r" else "white")
        fig.colorbar(im, ax=ax, label=label, shrink=0.85)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi)


def ladder_plot(rows: list[dict], path, title: str) -> Path:
    """Each rung's intervention headline, skill-trend change and fine-tune shift with their 95% intervals,
    the seed's protocol at the top and ours at the bottom."""
    panels = (("intervention_effect", "intervention: headline effect\n(minus control where there is one)"),
              ("skill_trend_change", "intervention: skill-trend change"), ("finetune_shift", "fine-tune: transition-point shift"))
    fig, axes = pyplot().subplots(1, len(panels), figsize=(12, 0.45 * len(rows) + 1.6), sharey=True)
    ys = list(range(len(rows)))[::-1]
    for ax, (key, label) in zip(axes, panels):
        for y, r in zip(ys, rows):
            v, ci = r.get(key), r.get(f"{key}_ci")
            if v is None:
                continue
            err = [[v - ci[0]], [ci[1] - v]] if ci else None
            ax.errorbar([v], [y], xerr=err, fmt="o", color="C0" if r.get("headline") != "effect" or key == "finetune_shift" else "C1")
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, [r["rung"] for r in rows], fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def metric_curves(metrics_path, path, title: str, max_panels: int = 12) -> Path | None:
    """One panel per metric of a run's metrics.jsonl against its step (the losses and evaluation
    numbers a training stage logged), or None when no metric has two steps to draw a line through."""
    import json
    import math

    series: dict[str, tuple[list, list]] = {}
    for line in Path(metrics_path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a killed run
            continue
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, (int, float)):
            continue
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                xs, ys = series.setdefault(k, ([], []))
                xs.append(step)
                ys.append(v)
    keys = [k for k, (xs, _) in series.items() if len(set(xs)) >= 2][:max_panels]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False)
    for ax, k in zip(axes.ravel(), keys):
        xs, ys = series[k]
        ax.plot(xs, ys, lw=1.2)
        ax.set_title(k, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
