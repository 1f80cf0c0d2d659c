"""Concepts and the batched ROC-AUC."""
import chess
import numpy as np
import pytest
import torch

from _app import error_line, run_app
from maia_adapt.concepts import best_auc_per_concept, piece_square_concepts, roc_auc_matrix
from maia_adapt.model.inference import encode_fens


def _pairwise_auc(s, y):
    pos, neg = s[y], s[~y]
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return (gt + 0.5 * eq) / (len(pos) * len(neg))


def test_auc_matrix_equals_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    n, f, c = 300, 7, 5
    # sparse, heavily tied scores like SAE features
    s = np.where(rng.random((n, f)) < 0.7, 0.0, rng.integers(1, 4, (n, f)).astype(float))
    y = rng.random((n, c)) < 0.3
    y[:, 0] = s[:, 0] > 0  # a concept the first feature detects perfectly
    auc = roc_auc_matrix(torch.tensor(s), torch.tensor(y)).numpy()
    for i in range(f):
        for j in range(c):
            assert auc[i, j] == pytest.approx(_pairwise_auc(s[:, i], y[:, j]), abs=1e-6)
    assert auc[0, 0] == pytest.approx(1.0)


def test_undefined_concepts_are_nan_and_best_feature_found():
    s = torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([[True, True], [True, True], [False, True], [False, True]])
    auc = roc_auc_matrix(s, y)
    assert torch.isnan(auc[:, 1]).all()
    best, idx = best_auc_per_concept(auc)
    assert best[0] == 1.0 and idx[0] == 1 and torch.isnan(best[1])
    best2, idx2 = best_auc_per_concept(auc, two_sided=True)
    assert best2[0] == 1.0


def test_piece_square_concepts_follow_the_side_to_move():
    # Black to move: the model sees the board mirrored, so Black's king on e8 is "own_king@e1"
    fens = [chess.STARTING_FEN, "4k3/8/8/8/8/8/4P3/4K3 b - - 0 1"]
    boards, _ = encode_fens(fens)[:2]
    c = piece_square_concepts(boards)
    lab = dict(zip(c.names, c.labels[1].tolist()))
    assert lab["own_king@e1"] and lab["opp_king@e8"] and lab["opp_pawn@e7"]
    assert sum(lab.values()) == 3
    assert c.labels[0].sum() == 32
    kept = c.keep(1)
    # own king on e1 in both positions: no negative sample, so no AUC
    assert "own_pawn@e2" in kept.names and "own_king@e1" not in kept.names and "own_queen@h8" not in kept.names


def test_auc_matrix_matches_scikit_learn_on_sae_like_features():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(3)
    n, f, c = 3000, 40, 6  # n > 2048 exercises the float64 path
    z = torch.relu(torch.randn(n, f, generator=g) - 1.5).round(decimals=1)  # exact zeros and ties
    y = torch.rand(n, c, generator=g) < torch.linspace(0.02, 0.5, c)
    y[:, 0] |= z[:, 0] > 0.5
    auc = roc_auc_matrix(z, y)
    ref = np.array([[roc_auc_score(y[:, j].numpy(), z[:, i].numpy()) for j in range(c)] for i in range(f)])
    np.testing.assert_allclose(auc.numpy(), ref, atol=1e-6)
    auc_small = roc_auc_matrix(z[:2000], y[:2000])
    ref_small = np.array([[roc_auc_score(y[:2000, j].numpy(), z[:2000, i].numpy()) for j in range(c)] for i in range(f)])
    np.testing.assert_allclose(auc_small.numpy(), ref_small, atol=1e-6)


def test_detection_finds_planted_features_and_rejects_noise():
    from maia_adapt.concepts.detection import detect_concepts, paired_auc

    g = torch.Generator().manual_seed(5)
    n, f = 2000, 300
    y = torch.rand(n, 3, generator=g) < torch.tensor([0.2, 0.3, 0.1])
    z = torch.relu(torch.randn(n, f, generator=g) - 1.0)
    z[:, 17] = torch.where(y[:, 0], 1.0 + torch.rand(n, generator=g), (torch.rand(n, generator=g) < 0.1).float())
    z[:, 42] = torch.where(y[:, 1], 0.0, 1.0)  # fires exactly when concept 1 is absent
    det = detect_concepts(z, y, ["a", "b", "noise"], top_k=3, n_null=10, n_boot=50, seed=1)
    assert det.top_features[0, 0] == 17 and det.best_heldout_auc[0] > 0.9
    assert det.ci_low[0] <= det.best_heldout_auc[0] <= det.ci_high[0] and det.ci_high[0] - det.ci_low[0] < 0.1
    assert det.absence_feature[1] == 42 and det.absence_auc[1] == pytest.approx(1.0)
    # the noise concept's best feature wins on the selection half by chance only
    assert det.best_heldout_auc[2] < 0.6 and det.top_auc[2, 0] > det.best_heldout_auc[2]
    assert 0.5 < det.null_max95[2] < 0.75
    assert det.detected(0.7).tolist() == [True, False, False]
    assert [r["feature"] for r in det.rows()][0] == 17
    # paired AUC is the diagonal of the full matrix
    full = roc_auc_matrix(z[:, :3], y)
    np.testing.assert_allclose(paired_auc(z[:, :3], y).numpy(), full.diagonal().numpy(), atol=1e-6)
    # balanced sampling per concept finds the same feature
    bal = detect_concepts(z, y, ["a", "b", "noise"], n_null=0, n_boot=0, max_per_class=100, seed=1)
    assert bal.top_features[0, 0] == 17


def test_compare_detections_pairs_concepts_and_finds_the_better_dictionary():
    """Two feature sets on the same positions: one holds a clean detector for every concept, the other
    a noisy one; paired over concepts the first is better with an interval above zero, and a run
    compared with itself differs by exactly zero."""
    from maia_adapt.concepts.detection import compare_detections, detect_concepts

    g = torch.Generator().manual_seed(3)
    n, c = 3000, 12
    y = torch.rand(n, c, generator=g) < 0.2
    noise = torch.relu(torch.randn(n, 64, generator=g) - 1.0)
    clean = torch.cat([y.float() + 0.3 * torch.rand(n, c, generator=g), noise], 1)
    noisy = torch.cat([y.float() + 1.5 * torch.randn(n, c, generator=g), noise], 1)
    names = [f"defensive@{sq}" for sq in ("a1", "b1", "c1", "d1", "e1", "f1")] + [f"b{i}" for i in range(6)]
    fam = {nm: ("threat" if "@" in nm else "board-state") for nm in names}
    a = detect_concepts(clean, y, names, n_null=5, n_boot=0, seed=0).rows()
    b = detect_concepts(noisy, y, names, n_null=5, n_boot=0, seed=0).rows()
    out = compare_detections(a, b, fam, seed=0)
    assert set(out) == {"threat", "board-state"} and all(v["concepts"] == 6 for v in out.values())
    for v in out.values():
        lo, hi = v["auc_difference_ci95"]
        assert 0 < lo <= v["auc_difference"] <= hi
        assert v["auc_difference"] == pytest.approx(v["mean_auc"] - v["mean_auc_other"])
        assert v["detected"] == 6 and v["detected"] >= v["detected_other"]
    same = compare_detections(a, a, fam)["threat"]
    assert same["auc_difference"] == 0 and same["auc_difference_ci95"] == [0, 0]
    # a concept only one run scored is left out of the pairs
    assert compare_detections(a, b[1:], fam)["threat"]["concepts"] == 5


@pytest.mark.slow
def test_stage_threats_on_model_units_finds_board_state(shared_data, tmp_path):
    import csv
    import json

    r = run_app(["stage=threats", "data=lichess", "data.max_games=60", f"data.store_dir={tmp_path}/store",
                 "threats.sites=[blocks.1.hook_resid_post]", "threats.positions=800", "threats.n_boot=20",
                 "threats.n_null=5", "threats.families=[threat,board-state]"], run_dir=tmp_path / "run", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    res = json.loads((run / "results.json").read_text())["sites"]["blocks.1.hook_resid_post (units)"]
    # the residual stream of a trained Maia-2 encodes where pieces stand
    assert res["detected_per_family"]["board-state"] >= 10
    table = list(csv.DictReader(open(run / "concepts.csv")))
    assert len(table) == 128 + 768 and {t["family"] for t in table} == {"threat", "board-state"}
    assert all(0 <= float(t["positive_rate"]) <= 1 for t in table)
    rows = list(csv.DictReader(open(run / "detection_blocks_1_hook_resid_post.csv")))
    assert rows and all(float(r["ci_low"]) <= float(r["auc_heldout"]) + 1e-6 for r in rows if r["ci_low"] != "nan")
    # the same units with the model conditioned on the weakest bucket, compared with the run above
    r = run_app(["stage=threats", "data=lichess", "data.max_games=60", f"data.store_dir={tmp_path}/store",
                 "threats.sites=[blocks.1.hook_resid_post]", "threats.positions=800", "threats.n_boot=20",
                 "threats.n_null=5", "threats.families=[threat,board-state]", "threats.elo=0", "threats.dashboards=0",
                 f"threats.compare_to={run}"], run_dir=tmp_path / "elo0", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cmp = json.loads((tmp_path / "elo0" / "results.json").read_text())["sites"]["blocks.1.hook_resid_post (units)"]["compared"]
    board = cmp["board-state"]
    assert board["concepts"] >= 10 and board["auc_difference_ci95"][0] <= board["auc_difference"] <= board["auc_difference_ci95"][1]
    # same positions and split, so the pairs are every board-state concept the first run scored
    first = [float(x["auc_heldout"]) for x in rows if not x["concept"].startswith(("defensive@", "offensive@"))]
    first = [a for a in first if np.isfinite(a)]
    assert board["concepts"] == len(first) and board["mean_auc_other"] == pytest.approx(float(np.mean(first)))
    assert "Paired over concepts, this run minus" in (tmp_path / "elo0" / "results.md").read_text()


def test_stage_threats_rejects_unknown_family(shared_data, tmp_path):
    r = run_app(["stage=threats", "data=lichess", "data.max_games=20", f"data.store_dir={tmp_path}/store",
                 "threats.sites=[blocks.1.hook_resid_post]", "threats.families=[threats]"], run_dir=tmp_path / "run",
                timeout=600)
    assert r.returncode == 1
    assert error_line(r).startswith("error: threats.families: unknown family 'threats'")


@pytest.mark.slow
def test_stage_threats_on_puzzles_scores_their_themes(shared_data, tmp_path):
    import json

    r = run_app(["stage=threats", "threats.position_set=puzzles", "threats.sites=[blocks.1.hook_resid_post]",
                 "threats.positions=1500", "threats.n_boot=10", "threats.n_null=3", "threats.dashboards=0",
                 "threats.families=[threat]"], run_dir=tmp_path / "run", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["positions"] == 1500
    counts = res["sites"]["blocks.1.hook_resid_post (units)"]["detected_per_family"]
    assert set(counts) == {"threat", "puzzle theme"}
    table = (tmp_path / "run" / "concepts.csv").read_text()
    assert "puzzle:fork,puzzle theme" in table and "puzzle:mateIn1,puzzle theme" in table
