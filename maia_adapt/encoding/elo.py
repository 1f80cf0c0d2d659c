"""Maia-2's 11 Elo buckets: 0 = <1100, 1 = 1100-1199, ..., 9 = 1900-1999, 10 = >=2000."""
from __future__ import annotations

import math

import numpy as np

NUM_BUCKETS = 11
# the ratings a player can have: the PGN reader skips games outside it, predict() rejects others.
# Stored as int16; real ratings (lichess, FIDE) lie well inside.
ELO_RANGE = (1, 4000)
BUCKET_NAMES = ("<1100",) + tuple(f"{lo}-{lo + 99}" for lo in range(1100, 2000, 100)) + (">=2000",)


def elo_to_bucket(elo):
    """Bucket of a rating (int, array or tensor-like of ints); vectorised."""
    arr = np.asarray(elo)
    out = np.clip((arr.astype(np.int64) - 1000) // 100, 0, NUM_BUCKETS - 1)
    return int(out) if out.ndim == 0 else out


def bucket_midpoint(bucket: int) -> int:
    """A representative rating for a bucket (used where a rating is needed, e.g. self-play headers)."""
    if not 0 <= bucket < NUM_BUCKETS:
        raise ValueError(f"Elo bucket {bucket} out of range: expected 0..{NUM_BUCKETS - 1}")
    return 1000 + 100 * bucket + 50 if 0 < bucket < NUM_BUCKETS - 1 else (1000 if bucket == 0 else 2100)


def as_bucket(value, *, is_bucket: bool | None = None) -> int:
    """Accept either a bucket (0..10) or a rating (1..4000) and return the bucket.

    Values 0..10 are taken as buckets unless is_bucket=False; anything else as a rating. An integer
    (numpy's and 0-d tensors too) or a float that is a whole number (1500.0 from a float column) is
    taken; a bool, a string, 10.9 or NaN is refused (TypeError/ValueError) instead of truncated.
    """
    if hasattr(value, "item") and not isinstance(value, (int, float)):  # numpy scalars, 0-d tensors
        value = value.item()
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is a bool, not a number")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise ValueError(f"{value!r} is not a whole number")
        value = int(value)
    if not isinstance(value, int):
        raise TypeError(f"{value!r} is a {type(value).__name__}, not a number")
    v = value
    if is_bucket is None:
        is_bucket = 0 <= v < NUM_BUCKETS
    if is_bucket:
        if not 0 <= v < NUM_BUCKETS:
            raise ValueError(f"Elo bucket {v} out of range: expected 0..{NUM_BUCKETS - 1}")
        return v
    if not ELO_RANGE[0] <= v <= ELO_RANGE[1]:
        raise ValueError(f"Elo rating {v} out of range: expected {ELO_RANGE[0]}..{ELO_RANGE[1]} (or a bucket 0..10)")
    return elo_to_bucket(v)
