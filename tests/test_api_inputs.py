"""The Python API on inputs a user gets wrong or hits at the edges: empty batches, rows without a
legal move, mismatched or missing arguments. Each is a working result or one clear MaiaAdaptError."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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
    # what would otherwise be truncated to a bucket: True is not bucket 1, 10.9 not bucket 10, "1500" not a rating
    (dict(elo_self=True), r"predict: elo_self: True is a bool, not a number"),
    (dict(elo_self=np.bool_(False)), r"predict: elo_self: False is a bool"),
    (dict(elo_oppo=[1500, True]), r"predict: elo_oppo: True is a bool"),
    (dict(elo_self=10.9), r"predict: elo_self: 10.9 is not a whole number"),
    (dict(elo_self=float("nan")), r"predict: elo_self: nan is not a whole number"),
    (dict(elo_self="1500"), r"predict: elo_self: '1500' is a str, not a number"),
    (dict(elo_self=torch.tensor(True)), r"predict: elo_self: True is a bool"),
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


@settings(max_examples=30, deadline=None)
@given(value=st.one_of(st.integers(0, 4000), st.floats(-10, 4100)))
def test_predict_takes_an_elo_that_is_a_whole_number_in_range_and_refuses_the_rest(value):
    """A float that is a whole number is the integer (1500.0 from a float column); any other float is
    refused rather than truncated, and so is a value outside buckets 0..10 and ratings 1..4000."""
    from maia_adapt.encoding import as_bucket

    whole = isinstance(value, int) or value.is_integer()
    in_range = whole and 0 <= int(value) <= 4000
    if in_range:
        b = as_bucket(int(value))
        assert as_bucket(value) == as_bucket(np.float32(value) if value < 2**24 else value) == b
        assert as_bucket(np.int64(int(value))) == as_bucket(torch.tensor(int(value))) == b
        return
    with pytest.raises(ValueError, match="not a whole number" if not whole else "out of range"):
        as_bucket(value)
    with pytest.raises(MaiaAdaptError, match=r"predict: elo_self: .*expected a rating"):
        predict(Maia2(SMALL).eval(), FENS, value, 5)
