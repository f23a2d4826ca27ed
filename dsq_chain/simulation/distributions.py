"""Random draws described in a scenario: a number, or ``{dist: NAME, ...}`` (see the scenario schema)."""

from __future__ import annotations

import math
import random
from typing import Any


def sample(spec: Any, rng: random.Random) -> float:
    """One draw from ``spec``: a plain number is a constant; else constant, uniform, exponential, lognormal, choice."""
    if isinstance(spec, int | float):
        return float(spec)
    kind = spec["dist"]
    if kind == "constant":
        return float(spec["value"])
    if kind == "uniform":
        return rng.uniform(spec["low"], spec["high"])
    if kind == "exponential":
        return rng.expovariate(1.0 / spec["mean"])
    if kind == "lognormal":  # given by its median and the sigma of the underlying normal
        return float(spec["median"]) * math.exp(rng.gauss(0.0, spec["sigma"]))
    if kind == "choice":
        weights = spec.get("weights")
        return float(rng.choices(spec["values"], weights=weights)[0])
    raise ValueError(f"unknown distribution {kind!r}")  # the schema rejects it first


def sample_int(spec: Any, rng: random.Random, low: int = 0, high: int | None = None) -> int:
    """:func:`sample` rounded to an integer and clamped to ``[low, high]``."""
    value = max(low, round(sample(spec, rng)))
    return value if high is None else min(high, value)


def chance(p: float, rng: random.Random) -> bool:
    """True with probability ``p`` (no draw is taken when ``p`` is 0, so adding a rule keeps other draws)."""
    return p > 0 and rng.random() < p
