"""train.sampling=elo_balanced: every Elo bucket of the player to move drawn equally often."""
import numpy as np

from maia_adapt.model.training import _batch_indices, elo_groups


class _Store:
    def __init__(self, buckets):
        self.buckets = np.asarray(buckets, dtype=np.uint8)

    def column(self, name):
        assert name == "elo_self"
        return self.buckets


def test_elo_balanced_batches_draw_each_bucket_equally_and_only_training_rows():
    rng = np.random.default_rng(0)
    # skewed like the lichess data: bucket 5 is 50x more common than bucket 0, bucket 3 is absent
    buckets = rng.choice([0, 1, 5, 10], size=20_000, p=[0.01, 0.09, 0.5, 0.4])
    store = _Store(buckets)
    train_idx = np.sort(rng.permutation(20_000)[:15_000])
    groups = elo_groups(store, train_idx)
    drawn = np.concatenate([_batch_indices(train_idx, 0, step, 512, groups) for step in range(40)])
    assert np.isin(drawn, train_idx).all()
    share = np.bincount(buckets[drawn], minlength=11)[[0, 1, 5, 10]] / len(drawn)
    assert np.allclose(share, 0.25, atol=0.02), share
    uniform = np.concatenate([_batch_indices(train_idx, 0, step, 512) for step in range(40)])
    assert np.bincount(buckets[uniform], minlength=11)[0] / len(uniform) < 0.02
    # a function of (seed, step) alone, so resumed runs and DataLoader workers see the same batches
    assert np.array_equal(_batch_indices(train_idx, 3, 7, 64, groups), _batch_indices(train_idx, 3, 7, 64, groups))
