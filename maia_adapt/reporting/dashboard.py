"""Offline HTML dashboards for sparse-autoencoder features that detect chess concepts.

One page per feature (top activating positions as boards, concept AUCs, activation histogram, optional
Elo profile) plus an index by concept. Everything is inline (SVG boards, base64 PNG plots, CSS), so
the folder can be zipped, mailed and opened without a network.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import chess
import chess.svg
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..encoding import BUCKET_NAMES  # noqa: E402
# temp file in the same folder + os.replace: a reader never sees a half-written page
from ..concepts.detection import evidence_key  # noqa: E402
from ..concepts.squares import concept_square  # noqa: E402
from ..io import atomic_write_text  # noqa: E402

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
"""


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _histogram(values: np.ndarray, fid: int) -> str:
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.hist(values, bins=50, color="#4472c4")
    # SAE features are zero on most positions; a log count axis keeps the active tail visible
    ax.set_yscale("log")
    ax.set_xlabel("activation")
    ax.set_ylabel("positions")
    ax.set_title(f"feature {fid}: active on {np.mean(values > 0):.1%} of {len(values)} positions", fontsize=9)
    fig.tight_layout()
    return _png_b64(fig)


def _elo_plot(profile: np.ndarray, fid: int) -> str:
    fig, ax = plt.subplots(figsize=(5, 2.8))
    ax.plot(range(len(profile)), profile, marker="o", color="#c0504d")
    ax.set_xticks(range(len(BUCKET_NAMES)), BUCKET_NAMES, rotation=35, fontsize=7)
    ax.set_xlabel("Elo bucket")
    ax.set_ylabel("mean activation")
    ax.set_title(f"feature {fid} by Elo conditioning", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png_b64(fig)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def _concept_table(concepts: list[dict]) -> str:
    rows = "".join(f"<tr><td>{html.escape(c['concept'])}</td><td>{c['auc_selection']:.3f}</td>"
                   f"<td>{c['auc_heldout']:.3f}</td></tr>" for c in concepts)
    return f"<table><tr><th>concept</th><th>AUC</th><th>held-out AUC</th></tr>{rows}</table>"


def _feature_page(fid, acts, fens, concepts, elo_col, top_n, title) -> str:
    best = concepts[0]["concept"] if concepts else None
    # stable sort so ties keep dataset order and the page is reproducible
    top = np.argsort(-acts, kind="stable")[:top_n]
    cards = []
    for i in top:
        board = chess.Board(fens[i])
        square = concept_square(best, fens[i]) if best else None
        fill = {square: HIGHLIGHT} if square is not None else {}
        svg = chess.svg.board(board, size=BOARD_SIZE, fill=fill, orientation=board.turn)
        side = "White" if board.turn == chess.WHITE else "Black"
        where = f" &middot; {html.escape(best)} = {chess.square_name(square)}" if square is not None else ""
        cards.append(f'<div class="pos">{svg}<div class="act" data-activation="{float(acts[i])!r}">'
                     f"{float(acts[i]):.4f}</div><div>{side} to move{where}</div>"
                     f'<div class="fen">{html.escape(fens[i])}</div></div>')
    parts = [f'<p><a href="index.html">&larr; {html.escape(title)}</a></p>',
             f"<h1>Feature {fid}: {html.escape(best)}</h1>" if best else f"<h1>Feature {fid}</h1>",
             f"<p>Boards are shown from the side to move; the red square is the one named by "
             f"<b>{html.escape(best or 'no concept')}</b>.</p>",
             "<h2>Concepts</h2>", _concept_table(concepts),
             f"<h2>Top {len(top)} activating positions</h2>", f'<div class="boards">{"".join(cards)}</div>',
             "<h2>Activation distribution</h2>", f'<img alt="activation histogram" src="{_histogram(acts, fid)}">']
    if elo_col is not None:
        parts += ["<h2>Elo profile</h2>", f'<img alt="activation by Elo bucket" src="{_elo_plot(elo_col, fid)}">']
    return _page(f"Feature {fid}", "\n".join(parts))


def _index_page(feature_concepts: dict, title: str) -> str:
    by_concept: dict[str, list[tuple[int, dict]]] = {}
    for fid, concepts in feature_concepts.items():
        for c in concepts:
            by_concept.setdefault(c["concept"], []).append((fid, c))
    rows = []
    for concept in sorted(by_concept):
        for fid, c in sorted(by_concept[concept], key=lambda fc: evidence_key(fc[1])):
            rows.append(f"<tr><td>{html.escape(concept)}</td><td><a href=\"feature_{fid}.html\">feature {fid}</a>"
                        f"</td><td>{c['auc_selection']:.3f}</td><td>{c['auc_heldout']:.3f}</td></tr>")
    links = " ".join(f'<a href="feature_{fid}.html">{fid}</a>' for fid in sorted(feature_concepts))
    body = (f"<h1>{html.escape(title)}</h1><p>{len(feature_concepts)} features: {links}</p>"
            f"<table><tr><th>concept</th><th>feature</th><th>AUC</th><th>held-out AUC</th></tr>"
            f"{''.join(rows)}</table>")
    return _page(title, body)


def write_dashboards(out_dir, features, fens, feature_concepts, elo_profile=None, top_n=12,
                     title="Feature dashboards") -> Path:
    """Write index.html and feature_<id>.html for each feature in feature_concepts; return the index.

    feature_concepts: {feature: [{"concept", "auc_selection", "auc_heldout"} (the keys of a
    detection row), ...]}; optional keys "positives", "ci_low", "ci_high" are shown when present.
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
    for fid, concepts in ranked.items():
        page = _feature_page(fid, acts[:, fid], fens, concepts, None if elo is None else elo[:, fid], top_n, title)
        atomic_write_text(out / f"feature_{fid}.html", page)
    index = out / "index.html"
    atomic_write_text(index, _index_page(ranked, title))
    return index
