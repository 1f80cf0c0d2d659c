"""Concepts and the batched ROC-AUC."""
import chess
import numpy as np
import pytest
import torch

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
