"""The Python API on inputs a user gets wrong or hits at the edges: empty batches, rows without a
legal move, mismatched or missing arguments. Each is a working result or one clear MaiaAdaptError."""
import pytest
import torch

from maia_adapt.errors import MaiaAdaptError
from maia_adapt.model import Maia2, Maia2Config, masked_probs, predict

SMALL = Maia2Config(dim_cnn=16, num_blocks_cnn=2, dim_vit=64, elo_dim=8, heads=4, dim_head=16)
FENS = ["r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3",
        "rnbqkbnr/ppp1pppp/8/3pP3/8/8/PPPP1PPP/RNBQKBNR b KQkq - 0 2"]


@pytest.mark.parametrize("training", [False, True])
def test_empty_batch_gives_empty_outputs_and_cache(training):
    torch.manual_seed(0)
    model = Maia2(SMALL).train(training)
    bn = model.chess_cnn.bn1.running_mean.clone()
    no_elo = torch.zeros(0, dtype=torch.long)
    logits, side, value = model(torch.zeros(0, 18, 8, 8), no_elo, no_elo)
    assert logits.shape == (0, 1880) and side.shape == (0, 2021) and value.shape == (0,)
    (logits2, _, _), cache = model.run_with_cache(torch.zeros(0, 18, 8, 8), no_elo, no_elo)
    assert logits2.shape == (0, 1880) and set(cache) == set(model.hook_names)
    assert cache["blocks.1.hook_attn_heads"].shape == (0, SMALL.vit_length, SMALL.heads, SMALL.dim_head)
    assert cache["hook_final"].shape == (0, SMALL.dim_vit)
    assert torch.equal(model.chess_cnn.bn1.running_mean, bn)  # an empty batch teaches BatchNorm nothing
    # and a non-empty batch gives the same outputs as before the change (rows are independent)
    model.eval()
    x, e = torch.randn(3, 18, 8, 8), torch.tensor([1, 5, 10])
    full = model(x, e, e)[0]
    assert torch.allclose(full[:2], model(x[:2], e[:2], e[:2])[0], atol=1e-5)


def test_masked_probs_row_without_legal_move_is_named():
    logits = torch.randn(3, 1880)
    legal = torch.zeros(3, 1880, dtype=torch.bool)
    legal[0, 5] = legal[2, 7] = legal[2, 9] = True
    with pytest.raises(MaiaAdaptError, match=r"row 1 of the legal-move mask has no legal move \(1 such rows\)"):
        masked_probs(logits, legal)
    legal[1, 3] = True
    p = masked_probs(logits, legal)
    assert torch.isfinite(p).all() and torch.allclose(p.sum(-1), torch.ones(3))
    assert masked_probs(logits[:0], legal[:0]).shape == (0, 1880)


@pytest.mark.parametrize("kwargs, match", [
    (dict(elo_self=[1500, 1600, 1700]), r"predict: elo_self has 3 values for 2 FENs"),
    (dict(elo_oppo=[1, 2, 3]), r"predict: elo_oppo has 3 values for 2 FENs"),
    (dict(elo_self=None), r"predict: elo_self is None: expected a rating"),
    (dict(elo_oppo="strong"), r"predict: elo_oppo: .*'strong'.*expected a rating"),
    (dict(batch_size=0), r"predict: batch_size=0: expected a positive integer"),
    (dict(batch_size=-4), r"predict: batch_size=-4"),
    (dict(batch_size=2.5), r"predict: batch_size=2.5"),
])
def test_predict_argument_errors_name_the_argument(kwargs, match):
    model = Maia2(SMALL).eval()
    args = dict(elo_self=1500, elo_oppo=1500, batch_size=512) | kwargs
    with pytest.raises(MaiaAdaptError, match=match):
        predict(model, FENS, **args)


def test_predict_accepts_one_or_one_per_fen_and_any_batch_size():
    torch.manual_seed(0)
    model = Maia2(SMALL).eval()
    per_fen = predict(model, FENS, [1500, 1500], 5, batch_size=1)
    for a, b in zip(per_fen, predict(model, FENS, 1500, 5)):  # batches of 1 and of 2: same up to float error
        assert a.move_probs.keys() == b.move_probs.keys()
        assert all(abs(a.move_probs[m] - b.move_probs[m]) < 1e-5 for m in a.move_probs)
