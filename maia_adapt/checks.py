"""Value ranges the schema's types cannot express, one rule per key, checked before a stage starts.

A section's owner (a stage module, or config.py for the shared model/data/logger) lists its keys'
rules in RULES and its words in CHOICES; `check_section` applies them, and every failure is one line
naming the key (`sae.dim=0: expected a positive integer`).
"""
from __future__ import annotations

import math

from omegaconf import OmegaConf

from .errors import ConfigError


def bad(key: str, value, expected: str):
    raise ConfigError(f"{key}={value!r}: expected {expected}")


def _rule(test, expected: str):
    def check(key, v):
        if v is not None and not test(v):
            bad(key, v, expected)
    return check


POSITIVE_INT = _rule(lambda v: v >= 1, "a positive integer")
NON_NEGATIVE_INT = _rule(lambda v: v >= 0, "0 or more")
POSITIVE = _rule(lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = _rule(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
FRACTION = _rule(lambda v: math.isfinite(v) and 0 <= v <= 1, "a fraction between 0 and 1")


def is_bucket(v) -> bool:
    return str(v).strip().isdigit() and 0 <= int(v) < 11


def elo(*words: str):
    """An Elo setting: a bucket 0..10 or one of `words`; a list value is checked item by item."""
    def check(key, values):
        for v in values if OmegaConf.is_list(values) else [values]:
            if v is not None and v not in words and not is_bucket(v):
                bad(key, v, "an Elo bucket 0..10" + "".join(f" or '{w}'" for w in words))
    return check


def set_by_stage(source: str):
    """A key the stage sets itself (it exists in the saved cfg.json only): a value here is an error."""
    def check(key, v):
        if v is not None:
            raise ConfigError(f"{key}={v!r}: the stage sets it from {source}, so a value here would do nothing; remove it")
    return check


def check_section(cfg, section: str, rules: dict | None = None, choices: dict | None = None) -> None:
    """Apply a section's rules ({key: rule}) and word lists ({key: words}) to cfg.<section>."""
    for key, rule in (rules or {}).items():
        rule(f"{section}.{key}", OmegaConf.select(cfg, f"{section}.{key}"))
    for key, words in (choices or {}).items():
        v = OmegaConf.select(cfg, f"{section}.{key}")
        if v not in words:
            bad(f"{section}.{key}", v, "one of " + ", ".join(words))
