"""Provider pricing strategies: what a provider asks, per resource, over time.

* ``fixed``: one posted price per CPU-minute (GPUs and memory free unless given), never changed;
* ``linear``: posted prices per CPU-minute, GPU-minute and GB-minute (the contract's rate formula is
  linear in the resources), never changed;
* ``random_band``: the posted prices times a factor drawn once per provider in ``[low, high]``;
* ``target_utilisation``: a controller; every ``every_s`` seconds the factor becomes
  ``factor x (1 + gain x (utilisation - target))``, kept within ``[min_factor, max_factor]``.
"""

from __future__ import annotations

import random
from typing import Any

from dsq_chain.types import Prices


def base_prices(pricing: dict[str, Any]) -> Prices:
    """The posted prices of a population's pricing section."""
    gpu = pricing.get("per_gpu_minute", 0)
    gb = pricing.get("per_gb_minute", 0)
    if pricing["strategy"] == "fixed" and "per_gpu_minute" not in pricing and "per_gb_minute" not in pricing:
        gpu = gb = 0
    return Prices.from_units(int(pricing["per_cpu_minute"]), int(gpu), int(gb))


def initial_factor(pricing: dict[str, Any], rng: random.Random) -> float:
    """The factor a new provider starts with (drawn for ``random_band``, else 1)."""
    if pricing["strategy"] == "random_band":
        return rng.uniform(pricing["low"], pricing["high"])
    return 1.0


def scaled(base: Prices, factor: float) -> Prices:
    """``base`` times ``factor``, in whole credit units (a positive price stays at least 1)."""

    def one(p: int) -> int:
        return max(1, round(p * factor)) if p > 0 else 0

    return Prices.from_units(*map(one, base.units))


def adjusted_factor(pricing: dict[str, Any], factor: float, utilisation: float) -> float:
    """The controller's next factor (``target_utilisation`` only; other strategies keep theirs)."""
    if pricing["strategy"] != "target_utilisation":
        return factor
    new = factor * (1.0 + pricing.get("gain", 0.2) * (utilisation - pricing["target"]))
    return float(min(pricing.get("max_factor", 4.0), max(pricing.get("min_factor", 0.25), new)))
