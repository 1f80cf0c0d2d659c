"""Offline HTML dashboards for sparse-autoencoder features that detect chess concepts.

One page per feature (the concept with the best evidence as its heading, concept AUCs with their
positives, top activating positions and examples from across the activation range as boards, the
moves the feature pushes up and down, activation histogram, optional Elo profile) plus an index by
concept that sorts and filters in the browser. Everything is inline (SVG boards, base64 PNG plots,
CSS, a few lines of JavaScript), so the folder can be zipped, mailed and opened without a network.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import chess
import chess.svg
import numpy as np

from ..encoding import BUCKET_NAMES
# temp file in the same folder + os.replace: a reader never sees a half-written page
from ..concepts.detection import evidence_key
from ..concepts.squares import concept_square
from ..io import atomic_write_text
from .plots import pyplot

HIGHLIGHT = "#cc000088"
BOARD_SIZE = 240

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; } th { background: #eee; }
.boards { display: flex; flex-wrap: wrap; gap: 12px; }
.pos { background: #fff; border: 1px solid #ddd; padding: 6px; width: 240px; font-size: 0.75em; }
.fen { font-family: monospace; word-break: break-all; color: #555; }
.act { font-weight: bold; font-size: 1.1em; }
img { max-width: 100%; }
.flag { background: #fde2c2; color: #7a3e00; border-radius: 3px; padding: 0 4px; font-size: 0.85em; white-space: nowrap; }
th[data-sort] { cursor: pointer; } th[aria-sort="descending"]::after { content: " \\25BC"; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
.moves td:nth-child(2) { font-family: monospace; }
"""

# Sort on header click (again: the other way), filter rows on every keystroke; #sort=<column>[:asc]
# and #filter=<text> in the address set both on load, so a view can be linked to. No library: the
# page has to work from a mailed zip.
_TABLE_JS = """
(function () {
  var table = document.getElementById("concepts"), input = document.getElementById("filter");
  var heads = table.tHead.rows[0].cells, body = table.tBodies[0];
  function key(row, col) {
    var v = row.cells[col].getAttribute("data-value");
    return v === null ? row.cells[col].textContent.toLowerCase() : (v === "" ? NaN : parseFloat(v));
  }
  function sortBy(col, asc) {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a, col), y = key(b, col);
      if (typeof x === "number" && isNaN(x)) return isNaN(y) ? 0 : 1;  // no value: last either way
      if (typeof y === "number" && isNaN(y)) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < heads.length; i++) heads[i].removeAttribute("aria-sort");
    heads[col].setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  function filter(text) {
    text = text.toLowerCase();
    Array.prototype.forEach.call(body.rows, function (r) {
      r.hidden = text !== "" && r.textContent.toLowerCase().indexOf(text) < 0;
    });
  }
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () { sortBy(col, th.getAttribute("aria-sort") === "descending"); });
  });
  input.addEventListener("input", function () { filter(input.value); });
  var state = {};
  location.hash.slice(1).split("&").forEach(function (kv) {
    var i = kv.indexOf("="); if (i > 0) state[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1));
  });
  var sort = (state.sort || table.getAttribute("data-default-sort")).split(":");
  for (var c = 0; c < heads.length; c++) if (heads[c].getAttribute("data-sort") === sort[0]) sortBy(c, sort[1] === "asc");
  if (state.filter) { input.value = state.filter; filter(state.filter); }
})();
"""


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _histogram(values: np.ndarray, fid: int) -> str:
    fig, ax = pyplot().subplots(figsize=(5, 2.8))
    ax.hist(values, bins=50, color="#4472c4")
    # SAE features are zero on most positions; a log count axis keeps the active tail visible
    ax.set_yscale("log")
    ax.set_xlabel("activation")
    ax.set_ylabel("positions")
    ax.set_title(f"feature {fid}: active on {np.mean(values > 0):.1%} of {len(values)} positions", fontsize=9)
    fig.tight_layout()
    return _png_b64(fig)


def _elo_plot(profile: np.ndarray, fid: int) -> str:
    fig, ax = pyplot().subplots(figsize=(5, 2.8))
    ax.plot(range(len(profile)), profile, marker="o", color="#c0504d")
    ax.set_xticks(range(len(BUCKET_NAMES)), BUCKET_NAMES, rotation=35, fontsize=7)
    ax.set_xlabel("Elo bucket")
    ax.set_ylabel("mean activation")
    ax.set_title(f"feature {fid} by Elo conditioning", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png_b64(fig)


def _page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n{js}</body></html>\n")


def _num(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(float(v), fmt)


def _sample_note(c: dict, small_sample: int) -> str:
    """'n+ = 14 · small sample' beside an AUC: with few positives an AUC of 1.0 is a handful of boards."""
    n = c.get("positives")
    if n is None:
        return ""
    flag = f' <span class="flag" title="fewer than {small_sample} positive positions">small sample</span>' \
        if n < small_sample else ""
    return f"n+ = {int(n)}{flag}"


def _ci(c: dict) -> str:
    lo, hi = c.get("ci_low"), c.get("ci_high")
    return f"[{_num(lo)}, {_num(hi)}]" if lo is not None and np.isfinite(lo) and np.isfinite(hi) else "n/a"


def _concept_table(concepts: list[dict], small_sample: int) -> str:
    rows = "".join(f"<tr><td>{html.escape(c['concept'])}</td><td>{_num(c['auc_selection'])}</td>"
                   f"<td>{_num(c['auc_heldout'])}</td><td>{_ci(c)}</td><td>{_sample_note(c, small_sample)}</td></tr>"
                   for c in concepts)
    return ("<table><tr><th>concept</th><th>AUC selection</th><th>AUC held-out</th><th>held-out 95% CI</th>"
            f"<th>positives</th></tr>{rows}</table>")


def _dense(freq: float, heads: int, dense_frequency: float | None, many_concepts: int) -> str:
    """Why a feature is flagged dense, or '': a feature active on many positions, or the best detector
    of many concepts, detects none of them in particular (its AUCs come from firing almost everywhere)."""
    why = []
    if dense_frequency is not None and freq > dense_frequency:
        why.append(f"active on {freq:.0%} of positions (> {dense_frequency:.0%})")
    if heads >= many_concepts:
        why.append(f"best feature of {heads} concepts (>= {many_concepts})")
    return "; ".join(why)


def _board_card(fen: str, act: float, concept: str | None, extra: str = "") -> str:
    board = chess.Board(fen)
    square = concept_square(concept, fen) if concept else None
    fill = {square: HIGHLIGHT} if square is not None else {}
    svg = chess.svg.board(board, size=BOARD_SIZE, fill=fill, orientation=board.turn)
    side = "White" if board.turn == chess.WHITE else "Black"
    where = f" &middot; {html.escape(concept)} = {chess.square_name(square)}" if square is not None else ""
    return (f'<div class="pos"{extra}>{svg}<div class="act" data-activation="{float(act)!r}">'
            f"{float(act):.4f}</div><div>{side} to move{where}</div>"
            f'<div class="fen">{html.escape(fen)}</div></div>')


def quantile_examples(acts: np.ndarray, bins: int = 4, per_bin: int = 3) -> list[tuple[float, float, list[int]]]:
    """(low, high, positions) for `bins` equal-count intervals of the feature's active (> 0) values,
    lowest first, with `per_bin` positions spread evenly through each: what the feature does at a
    middling activation, not only at its peak (Neuronpedia's activation-quantile examples)."""
    active = np.flatnonzero(acts > 0)
    order = active[np.argsort(acts[active], kind="stable")]
    out = []
    for part in np.array_split(order, bins):
        if len(part):
            pick = part[np.unique(np.linspace(0, len(part) - 1, min(per_bin, len(part))).round().astype(int))]
            out.append((float(acts[part[0]]), float(acts[part[-1]]), [int(i) for i in pick]))
    return out


def _moves_table(effects: dict) -> str:
    def rows(pairs):
        return "".join(f"<tr><td>{i}</td><td>{html.escape(m)}</td><td data-logit=\"{d!r}\">{d:+.3f}</td></tr>"
                       for i, (m, d) in enumerate(pairs, 1))

    head = "<tr><th>#</th><th>move</th><th>&Delta; log p</th></tr>"
    return (f'<div class="boards"><div><h3>pushed up</h3><table class="moves" id="logits-up">{head}{rows(effects["up"])}'
            f'</table></div><div><h3>pushed down</h3><table class="moves" id="logits-down">{head}'
            f'{rows(effects["down"])}</table></div></div>')


def _feature_page(fid, acts, fens, concepts, elo_col, top_n, title, dense: str, small_sample: int,
                  effects: dict | None, quantiles: tuple[int, int]) -> str:
    best = concepts[0]["concept"] if concepts else None
    # stable sort so ties keep dataset order and the page is reproducible
    top = np.argsort(-acts, kind="stable")[:top_n]
    cards = [_board_card(fens[i], acts[i], best) for i in top]
    flag = f' <span class="flag" id="dense" title="{html.escape(dense)}">dense</span>' if dense else ""
    head = concepts[0] if concepts else {}
    parts = [f'<p><a href="index.html">&larr; {html.escape(title)}</a></p>',
             f"<h1>Feature {fid}: {html.escape(best)}</h1>" if best else f"<h1>Feature {fid}</h1>",
             f"<p>{flag} {html.escape(dense)}</p>" if dense else "",
             (f"<p>Heading concept: the best held-out AUC (the selection AUC where there is no held-out half): "
              f"<b>{html.escape(best)}</b>, AUC selection {_num(head['auc_selection'])}, held-out "
              f"{_num(head['auc_heldout'])} {_ci(head)} {_sample_note(head, small_sample)}.</p>") if best else "",
             f"<p>Boards are shown from the side to move; the red square is the one named by "
             f"<b>{html.escape(best or 'no concept')}</b>.</p>",
             "<h2>Concepts</h2>", _concept_table(concepts, small_sample),
             f"<h2>Top {len(top)} activating positions</h2>", f'<div class="boards" id="top">{"".join(cards)}</div>']
    bins = quantile_examples(acts, *quantiles)
    if bins:
        parts.append("<h2>Examples across the activation range</h2><p>The active positions split into "
                     f"{len(bins)} equal-count intervals of activation, lowest first, examples spread through each.</p>")
        for q, (lo, hi, pick) in enumerate(bins, 1):
            cards = "".join(_board_card(fens[i], acts[i], best) for i in pick)
            parts.append(f'<h3>interval {q}: {lo:.4f} to {hi:.4f}</h3>'
                         f'<div class="boards quantile" data-low="{lo!r}" data-high="{hi!r}">{cards}</div>')
    if effects:
        parts += ["<h2>Logit effects</h2>",
                  f"<p>The feature's decoder direction, times {effects['scale']:.3g} (its mean activation over its "
                  f"top positions), added at its site on {effects['positions']} positions and run through the rest "
                  "of the model: the mean change in each move's log-probability among the legal moves. Moves in "
                  "the side-to-move frame (Black-to-move boards mirrored).</p>", _moves_table(effects)]
    parts += ["<h2>Activation distribution</h2>", f'<img alt="activation histogram" src="{_histogram(acts, fid)}">']
    if elo_col is not None:
        parts += ["<h2>Elo profile</h2>", f'<img alt="activation by Elo bucket" src="{_elo_plot(elo_col, fid)}">']
    return _page(f"Feature {fid}", "\n".join(p for p in parts if p))


def _index_page(feature_concepts: dict, dense: dict[int, str], small_sample: int, title: str) -> str:
    rows = []
    for fid, concepts in feature_concepts.items():
        for c in concepts:
            n = c.get("positives")
            flags = []
            if dense[fid]:
                flags.append(f'<span class="flag" title="{html.escape(dense[fid])}">dense</span>')
            if n is not None and n < small_sample:
                flags.append(f'<span class="flag" title="fewer than {small_sample} positives">small sample</span>')
            val = (lambda v: "" if v is None or not np.isfinite(v) else repr(float(v)))
            rows.append((c["auc_selection"], f'<tr><td>{html.escape(c["concept"])}</td>'
                         f'<td data-value="{fid}"><a href="feature_{fid}.html">feature {fid}</a></td>'
                         f'<td data-value="{val(c["auc_selection"])}">{_num(c["auc_selection"])}</td>'
                         f'<td data-value="{val(c["auc_heldout"])}">{_num(c["auc_heldout"])} {_ci(c)}</td>'
                         f'<td data-value="{"" if n is None else int(n)}">{"n/a" if n is None else int(n)}</td>'
                         f'<td>{" ".join(flags)}</td></tr>'))
    # the same order the script sets, so the page reads right with scripts off
    rows.sort(key=lambda r: -r[0] if np.isfinite(r[0]) else np.inf)
    links = " ".join(f'<a href="feature_{fid}.html">{fid}</a>' for fid in sorted(feature_concepts))
    cols = [("concept", "concept"), ("feature", "feature"), ("auc_selection", "AUC selection"),
            ("auc_heldout", "AUC held-out [95% CI]"), ("positives", "positives"), ("flags", "flags")]
    heads = "".join(f'<th data-sort="{k}">{label}</th>' for k, label in cols)
    body = (f"<h1>{html.escape(title)}</h1><p>{len(feature_concepts)} features: {links}</p>"
            f"<p>Click a column to sort (again: the other way); the box keeps the rows that contain its text. "
            f"<i>dense</i>: a feature active on many positions or best for many concepts; <i>small sample</i>: "
            f"fewer than {small_sample} positives, where an AUC of 1.0 is a handful of boards.</p>"
            f'<p><input id="filter" type="search" placeholder="filter: concept, feature, flag" size="40"></p>'
            f'<table id="concepts" data-default-sort="auc_selection"><thead><tr>{heads}</tr></thead>'
            f"<tbody>{''.join(r for _, r in rows)}</tbody></table>")
    return _page(title, body, _TABLE_JS)


def write_dashboards(out_dir, features, fens, feature_concepts, elo_profile=None, top_n=12,
                     title="Feature dashboards", logit_effects=None, dense_frequency: float | None = 0.1,
                     many_concepts: int = 10, small_sample: int = 30, quantiles: tuple[int, int] = (4, 3)) -> Path:
    """Write index.html and feature_<id>.html for each feature in feature_concepts; return the index.

    feature_concepts: {feature: [{"concept", "auc_selection", "auc_heldout"} (the keys of a
    detection row), ...]}; optional keys "positives", "ci_low", "ci_high" are shown when present.
    logit_effects: {feature: analysis.logit_effects' entry}, shown where given. A feature is flagged
    dense when active on more than `dense_frequency` of the positions or the best of at least
    `many_concepts` concepts (dense_frequency None: by the second rule only, for raw units, whose
    'active' (> 0) is no sparsity); an AUC with fewer than `small_sample` positives is flagged. quantiles:
    (intervals, examples per interval) of the activation-range examples.
    """
    acts = features.detach().cpu().float().numpy() if hasattr(features, "detach") else np.asarray(features, float)
    if acts.ndim != 2 or acts.shape[0] != len(fens):
        raise ValueError(f"features must be [N={len(fens)}, F], got {tuple(acts.shape)}")
    elo = None
    if elo_profile is not None:
        elo = elo_profile.detach().cpu().float().numpy() if hasattr(elo_profile, "detach") else np.asarray(elo_profile, float)
        if elo.shape != (len(BUCKET_NAMES), acts.shape[1]):
            raise ValueError(f"elo_profile must be [{len(BUCKET_NAMES)}, {acts.shape[1]}], got {tuple(elo.shape)}")
    bad = [f for f in feature_concepts if not 0 <= int(f) < acts.shape[1]]
    if bad:
        raise ValueError(f"feature ids out of range [0, {acts.shape[1]}): {bad}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # best evidence first: that concept heads the page and picks the highlighted square (stable for ties)
    ranked = {int(f): sorted(cs, key=evidence_key) for f, cs in feature_concepts.items()}
    dense = {f: _dense(float(np.mean(acts[:, f] > 0)), len(cs), dense_frequency, many_concepts) for f, cs in ranked.items()}
    for fid, concepts in ranked.items():
        page = _feature_page(fid, acts[:, fid], fens, concepts, None if elo is None else elo[:, fid], top_n, title,
                             dense[fid], small_sample, (logit_effects or {}).get(fid), quantiles)
        atomic_write_text(out / f"feature_{fid}.html", page)
    index = out / "index.html"
    atomic_write_text(index, _index_page(ranked, dense, small_sample, title))
    return index
