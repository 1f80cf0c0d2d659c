"""Offline HTML feature dashboards: concept squares, page contents, and a headless-browser render."""
import html
import re
import shutil
import subprocess

import chess
import numpy as np
import pytest
import torch

from maia_adapt.encoding import BUCKET_NAMES
from _games import random_playouts
from maia_adapt.concepts.squares import concept_square
from maia_adapt.reporting.dashboard import HIGHLIGHT, write_dashboards

WHITE_FEN = "rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR w KQkq - 0 1"
BLACK_FEN = "rnbqkbnr/pppppppp/8/8/4P3/8/PPPP1PPP/RNBQKBNR b KQkq - 0 1"
TOP_N = 12


def _random_fens(n=40, seed=0):
    """Positions from random legal play, both sides to move, some in check."""
    return [b.fen() for b in random_playouts(n, seed, (1, 40), finished=False)]


def test_concept_square_mirrors_black_to_move():
    assert concept_square("defensive@e1", WHITE_FEN) == chess.E1
    assert concept_square("defensive@e1", BLACK_FEN) == chess.E8
    assert concept_square("own_knight@f3", BLACK_FEN) == chess.F6
    assert concept_square("capture_possible@d5", WHITE_FEN) == chess.D5
    assert concept_square("in_check", BLACK_FEN) is None


@pytest.fixture
def dashboards(tmp_path):
    fens = _random_fens()
    n, f = len(fens), 6
    g = torch.Generator().manual_seed(0)
    feats = torch.relu(torch.randn(n, f, generator=g))
    feats[:, 2] = torch.tensor([float(chess.Board(x).is_check()) + 0.01 * i for i, x in enumerate(fens)])
    concepts = {
        0: [{"concept": "defensive@e4", "auc_selection": 0.91, "auc_heldout": 0.88},
            {"concept": "own_knight@f3", "auc_selection": 0.95, "auc_heldout": 0.93}],  # best by held-out AUC
        2: [{"concept": "in_check", "auc_selection": 0.99, "auc_heldout": 0.98}],
        5: [{"concept": "capture_possible@d5", "auc_selection": 0.8, "auc_heldout": 0.75}],
    }
    elo = torch.rand(len(BUCKET_NAMES), f, generator=g)
    index = write_dashboards(tmp_path / "dash", feats, fens, concepts, elo_profile=elo, top_n=TOP_N)
    return index, feats.numpy(), fens, concepts


def _square_is_filled(svg: str, square: int) -> bool:
    """python-chess draws a fill as a second rect over the square's rect, in the fill colour."""
    m = re.search(rf'<rect x="(\d+)" y="(\d+)"[^>]*class="square [a-z]+ {chess.square_name(square)}"', svg)
    overlay = rf'<rect x="{m.group(1)}" y="{m.group(2)}" [^>]*fill="{HIGHLIGHT[:7]}"'
    return bool(re.search(overlay, svg))


def _section(page: str, start: str) -> str:
    """The page from `start` up to the next <h2>."""
    rest = page[page.index(start):]
    return rest[: rest.find("<h2>", len(start)) if "<h2>" in rest[len(start):] else None]


def test_dashboards_content(dashboards):
    index, feats, fens, concepts = dashboards
    index_html = index.read_text()
    assert not list(index.parent.glob(".*tmp*")), "temporary files left behind"
    for fid in concepts:
        assert f'href="feature_{fid}.html"' in index_html
        page = (index.parent / f"feature_{fid}.html").read_text()
        top_section = _section(page, 'id="top"')
        assert top_section.count("<svg") == min(TOP_N, len(fens))
        assert page.count('src="data:image/png;base64,') == 2  # histogram + Elo profile
        assert "http://" not in page.replace('xmlns="http://www.w3.org', "").replace(
            'xmlns:xlink="http://www.w3.org', "")  # nothing fetched from the network
        values = [float(v) for v in re.findall(r'data-activation="([^"]+)"', top_section)]
        assert values == sorted(values, reverse=True)
        assert np.allclose(values, np.sort(feats[:, fid])[::-1][:TOP_N])
        svgs = re.findall(r"<svg.*?</svg>", top_section, flags=re.S)
        best = max(concepts[fid], key=lambda c: c["auc_heldout"])["concept"]
        top = np.argsort(-feats[:, fid], kind="stable")[:TOP_N]
        for svg, i in zip(svgs, top):
            square = concept_square(best, fens[i])
            if square is None:
                assert f'fill="{HIGHLIGHT[:7]}"' not in svg
            else:
                assert _square_is_filled(svg, square), (fid, fens[i], best)
    # both orientations occur among the top positions, so the mirroring is exercised
    page0 = (index.parent / "feature_0.html").read_text()
    assert "White to move" in page0 and "Black to move" in page0


def test_dashboard_rejects_bad_shapes(tmp_path):
    fens = _random_fens(5)
    with pytest.raises(ValueError):
        write_dashboards(tmp_path, np.zeros((4, 3)), fens, {0: []})
    with pytest.raises(ValueError):
        write_dashboards(tmp_path, np.zeros((5, 3)), fens, {7: []})


def test_dashboard_renders_in_headless_chromium(dashboards, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    index, _, fens, _ = dashboards
    page = index.parent / "feature_0.html"
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _section(dom.stdout, 'id="top"').count("<svg") == min(TOP_N, len(fens))
    assert "Feature 0" in dom.stdout
    shot = tmp_path / "shot.png"
    run = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def labelled():
    """Random-play positions with their board-state concepts (the stage's own labelling)."""
    from maia_adapt.concepts import position_concepts, select_families

    fens = _random_fens(160, seed=3)
    concepts, _ = select_families(position_concepts(fens, ["board-state"]), ["board-state"])
    return fens, concepts.keep(15)


def _stage_dashboards(out, feats, fens, concepts, heldout_fraction, **tc):
    """The stage's own path: detect_concepts rows -> threats._dashboards -> pages."""
    from types import SimpleNamespace

    from maia_adapt.concepts.detection import detect_concepts
    from maia_adapt.stages.threats import _dashboards

    det = detect_concepts(feats, concepts.labels, concepts.names, heldout_fraction=heldout_fraction, top_k=2,
                          n_null=2, n_boot=20, seed=0)
    tc = SimpleNamespace(**{"dashboards": 4, "dashboard_top_n": 6, **tc})
    index = _dashboards(out, "test", feats, fens, det.rows(), det.detected(0.7), None, tc)
    return index, det.rows()


def test_headline_is_the_best_evidence_without_a_heldout_half(labelled, tmp_path):
    # the seed's NeurIPS protocol has no held-out half: every held-out AUC is NaN, and a sort on it kept
    # the concept list's order, so an earlier concept headed a feature that a later one explains better
    fens, concepts = labelled
    first, later = 0, len(concepts.names) - 1
    y = concepts.labels.float()
    g = torch.Generator().manual_seed(1)
    feats = 0.05 * torch.rand(len(fens), 8, generator=g)
    feats[:, 0] += y[:, later] + 0.3 * y[:, first]
    index, rows = _stage_dashboards(tmp_path / "dash", feats, fens, concepts, 0.0)
    mine = {r["concept"]: r for r in rows if r["feature"] == 0}
    assert {concepts.names[first], concepts.names[later]} <= set(mine)
    assert all(np.isnan(r["auc_heldout"]) for r in rows)
    assert mine[concepts.names[later]]["auc_selection"] > mine[concepts.names[first]]["auc_selection"]
    page = (index.parent / "feature_0.html").read_text()
    assert re.search(r'<h1>Feature 0: ([^<]+)</h1>', page).group(1) == html.escape(concepts.names[later])


def test_square_heatmap_writes_one_as_1_00(tmp_path):
    import matplotlib

    from maia_adapt.reporting.plots import square_heatmaps

    values = np.full(64, np.nan)
    values[[0, 1, 2]] = [1.0, 0.954, 0.5]
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text kept as text in the SVG
        svg = square_heatmaps({"defensive": values}, tmp_path / "auc.svg", "t").read_text()
    cells = re.findall(r">([0-9.]+)</text>", svg)
    assert {"1.00", ".95", ".50"} <= set(cells) and ".00" not in cells
