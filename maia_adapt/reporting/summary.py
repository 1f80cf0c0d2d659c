"""A run's summary for people: summary.md and the few lines printed when a run ends.

Numbers are shown to the precision they have: a value with a 95% interval (`<key>_ci95` or `<key>_ci`
beside `<key>`) is rounded where the interval's half-width has its second significant digit, other
floats to 4 significant digits; a missing value (None, NaN) is "-". summary.json keeps every digit.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

CI_SUFFIXES = ("_ci95", "_ci")
# a per-bucket breakdown (accuracy_bucket_3): left to summary.md and the CSV, out of the short tables
BUCKET_KEY = re.compile(r"_bucket_\d+$")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _decimals(half_width: float) -> int:
    """Decimals that keep two significant digits of an interval's half-width."""
    return max(0, 1 - math.floor(math.log10(half_width)))


def format_number(v, decimals: int | None = None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if not _is_number(v):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if decimals is not None:
        return f"{v:.{decimals}f}"
    return f"{v:.4g}"


def interval(summary: dict, key: str):
    """The 95% interval stored beside `key` (`<key>_ci95` or `<key>_ci`), or None."""
    return next((summary[key + s] for s in CI_SUFFIXES if key + s in summary), None)


def _is_interval(ci) -> bool:
    return isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_number(c) or c is None for c in ci)


def format_value(v, ci=None) -> str:
    """`v` for a reader, with its interval `ci` = [lo, hi] when it has one (lists element by element)."""
    if isinstance(v, (list, tuple)):
        cis = ci if isinstance(ci, (list, tuple)) and len(ci) == len(v) else [None] * len(v)
        return "[" + ", ".join(format_value(x, c) for x, c in zip(v, cis)) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {format_value(x)}" for k, x in v.items()) + "}"
    if _is_number(v) and _is_interval(ci) and None not in ci:
        lo, hi = (float(c) for c in ci)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return format_number(v)
        half = (hi - lo) / 2
        d = _decimals(half) if half > 0 else None
        if isinstance(v, int) and (d is None or d == 0):
            return f"{v} (95% CI {format_number(lo, 0)} to {format_number(hi, 0)})"
        return f"{format_number(float(v), d)} (95% CI {format_number(lo, d)} to {format_number(hi, d)})"
    return format_number(v)


def rows(summary: dict) -> list[tuple[str, str]]:
    """(key, shown value) for every entry, an interval folded into its value's row."""
    out = []
    for k, v in summary.items():
        base = next((k[: -len(s)] for s in CI_SUFFIXES if k.endswith(s) and k[: -len(s)] in summary), None)
        if base is not None:
            continue  # shown with its value
        out.append((k, format_value(v, interval(summary, k))))
    return out


def summary_markdown(title: str, summary: dict) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in rows(summary)]
    return "\n".join(lines) + "\n"


# files a reader opens first, when the stage wrote them
_MAIN_FILES = ("results.md", "summary.md", "model.safetensors", "run.log")


def end_of_run_text(title: str, summary: dict, run_dir: Path | str, max_rows: int = 12) -> str:
    """One screen: the key numbers (per-bucket breakdowns left to summary.md) and where the files are."""
    run_dir = Path(run_dir)
    every = rows(summary)
    shown = [(k, v) for k, v in every if not BUCKET_KEY.search(k)][:max_rows]
    width = max((len(k) for k, _ in shown), default=0)
    lines = [f"== {title} =="]
    lines += [f"  {k:<{width}}  {v if len(v) <= 100 else v[:97] + '...'}" for k, v in shown]
    if len(every) > len(shown):
        lines.append(f"  ... {len(every) - len(shown)} more in summary.md")
    lines.append(f"run directory: {run_dir}")
    files = [f for f in _MAIN_FILES if (run_dir / f).exists()]
    if files:
        lines.append("  " + ", ".join(files) + "  (summary.json: every number)")
    return "\n".join(lines)
