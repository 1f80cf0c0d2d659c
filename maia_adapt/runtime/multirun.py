"""multirun_summary.md and .csv: one row per job of a multirun (`-m`), from each job's summary.json.

A sweep leaves one folder per job; comparing them meant opening every summary.json. When the sweep
ends, MultirunSummaryCallback (registered in conf/config.yaml) writes in the sweep directory a table
of the overrides that differ between the jobs and each job's numbers: the CSV with every scalar of the
summaries, unrounded, the Markdown with the first few, rounded as summary.md rounds them.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

from ..io import atomic_write_text
from ..reporting.summary import BUCKET_KEY, CI_SUFFIXES, format_value, interval

MD_METRICS = 8  # columns of numbers in the Markdown table (the CSV has them all)


def _jobs(sweep_dir: Path) -> list[Path]:
    return sorted((d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))


def _overrides(job: Path) -> dict[str, str]:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    items = yaml.safe_load(path.read_text()) or []
    return dict(o.split("=", 1) for o in items if "=" in o and not o.startswith("hydra"))


def _summary(job: Path) -> dict | None:
    try:
        return json.loads((job / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _scalar(v) -> bool:
    return v is None or isinstance(v, (int, float, str, bool))


def multirun_table(sweep_dir) -> tuple[list[str], list[str], list[dict]]:
    """(varying override keys, metric keys, one row per job: {job, overrides, summary or None})."""
    sweep_dir = Path(sweep_dir)
    rows = [{"job": j.name, "overrides": _overrides(j), "summary": _summary(j)} for j in _jobs(sweep_dir)]
    keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
    varying = [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]
    metrics = list(dict.fromkeys(k for r in rows if r["summary"] for k, v in r["summary"].items()
                                 if _scalar(v) and not k.endswith(CI_SUFFIXES)))
    return varying, metrics, rows


def write_multirun_summary(sweep_dir) -> tuple[Path, Path] | None:
    """Write multirun_summary.csv and .md in `sweep_dir`; None when it holds no job folder."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return None
    varying, metrics, rows = multirun_table(sweep_dir)
    if not rows:
        return None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cis = [m for m in metrics if any(r["summary"] and interval(r["summary"], m) is not None for r in rows)]
    w.writerow(["job", "status", *varying, *metrics, *(f"{m}_ci95_{e}" for m in cis for e in ("lo", "hi"))])
    for r in rows:
        s = r["summary"] or {}
        bounds = [(interval(s, m) or [None, None]) for m in cis]
        w.writerow([r["job"], "done" if r["summary"] is not None else "no summary",
                    *(r["overrides"].get(k, "") for k in varying), *("" if s.get(m) is None else s.get(m) for m in metrics),
                    *("" if b[i] is None else b[i] for b in bounds for i in (0, 1))])
    csv_path = sweep_dir / "multirun_summary.csv"
    atomic_write_text(csv_path, buf.getvalue())

    shown = [m for m in metrics if not BUCKET_KEY.search(m)
             and any(isinstance((r["summary"] or {}).get(m), (int, float)) for r in rows)][:MD_METRICS]
    head = ["job", *varying, *shown]
    lines = [f"# multirun: {len(rows)} jobs ({sweep_dir})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["summary"]
        cells = [format_value(s.get(m), interval(s, m)) if s else "-" for m in shown]
        lines.append("| " + " | ".join([r["job"], *(r["overrides"].get(k, "") for k in varying), *cells]) + " |")
    left = len(metrics) - len(shown)
    lines += ["", f"Every job's folder is its number; multirun_summary.csv has all {len(metrics)} columns"
              + (f" ({left} more than shown)" if left > 0 else "") + ", unrounded."]
    md_path = sweep_dir / "multirun_summary.md"
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return md_path, csv_path


class MultirunSummaryCallback(Callback):
    """Writes multirun_summary.md / .csv in the sweep directory when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from .rundir import _select

        out = write_multirun_summary(_select(config, "hydra.sweep.dir"))
        if out is not None:
            print(f"multirun summary: {out[0]}")
