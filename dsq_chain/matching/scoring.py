"""How the matcher ranks the providers that pass every hard constraint.

The score is a cost: **lower is better**. For job ``j`` on provider ``p``::

    total = w.price * price + w.load * load + w.reliability * (1 - rel) + w.fairshare * share * rel

* ``price``: the job's rate on ``p`` divided by its rate at the market's median
  prices (so 1.0 is a median provider, 0.5 half as expensive); the price cap is
  a hard constraint, not a normaliser, so a generous cap does not make price
  irrelevant.
* ``load``: the fraction of ``p``'s capacity in use after placing ``j``, on its
  tightest resource (cpus, memory, gpus): spreads work and keeps providers'
  last free slots for the jobs that need them.
* ``1 - rel``: unreliability, from :attr:`ProviderStats.reliability`.
* ``share * rel``: ``share`` is the owner's fraction of all recent usage
  (:class:`FairShare`), rounded to eighths (:func:`share_level`, so that jobs
  of owners with similar shares share search state). Heavy users pay for
  reliable providers, which are kept for light users; an owner with less than
  1/16 of the recent usage is unaffected. (Fair share also
  orders the jobs: see :class:`~dsq_chain.matching.Matcher`.)

Ties are broken by provider address (lowest first), so results are deterministic.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, fields

from dsq_chain.matching.model import ProviderState
from dsq_chain.types import Resources


@dataclass(frozen=True, slots=True)
class Weights:
    """Weights of the score's terms; non-negative, finite and not all zero."""

    price: float = 1.0
    load: float = 0.5
    reliability: float = 1.0
    fairshare: float = 0.5

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in values.items():
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"weight {name} must be a finite number >= 0, got {value!r}")
        if not any(values.values()):
            raise ValueError("at least one weight must be > 0")


@dataclass(frozen=True, slots=True)
class MarketReference:
    """Median prices of the active providers, used to normalise a job's cost."""

    per_cpu_minute: float = 0.0
    per_gpu_minute: float = 0.0
    per_gb_minute: float = 0.0

    @classmethod
    def of(cls, providers: Iterable[ProviderState]) -> MarketReference:
        """Medians over active providers (GPU price over those that have GPUs)."""
        cpu: list[int] = []
        gpu: list[int] = []
        mem: list[int] = []
        for p in providers:
            if not p.active:
                continue
            cpu.append(p.prices.per_cpu_minute)
            mem.append(p.prices.per_gb_minute)
            if p.total.gpus > 0:
                gpu.append(p.prices.per_gpu_minute)
        return cls(_median(cpu), _median(gpu), _median(mem))

    def rate_for(self, res: Resources) -> float:
        """The job's rate at median prices, at least 1 (credit units per minute)."""
        rate = res.cpus * self.per_cpu_minute + res.gpus * self.per_gpu_minute + res.mem_mb * self.per_gb_minute / 1024
        return max(rate, 1.0)


def _median(values: list[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


@dataclass(frozen=True, slots=True)
class ScoreBreakdown:
    """The unweighted terms of a score and the weighted total (lower is better)."""

    price: float
    load: float
    unreliability: float
    fairshare: float
    total: float

    def __str__(self) -> str:
        return (
            f"score {self.total:.4f} (price {self.price:.3f}, load {self.load:.3f}, "
            f"unreliability {self.unreliability:.3f}, fairshare {self.fairshare:.3f})"
        )


def inverse(total: int) -> float:
    """``1 / total``, or 0.0 for a resource the provider does not have."""
    return 1.0 / total if total > 0 else 0.0


def load_after(need: Resources, total: Resources, free: Resources) -> float:
    """Fraction of capacity in use on the tightest resource after placing ``need``.

    The matcher's index evaluates the very same expression, so scores agree bit for bit.
    """
    return max(
        (total.cpus - free.cpus + need.cpus) * inverse(total.cpus),
        (total.mem_mb - free.mem_mb + need.mem_mb) * inverse(total.mem_mb),
        (total.gpus - free.gpus + need.gpus) * inverse(total.gpus),
    )


#: The fair-share term uses the owner's share rounded to 1/SHARE_LEVELS.
SHARE_LEVELS = 8


def share_level(share: float) -> float:
    """``share`` rounded to the nearest 1/:data:`SHARE_LEVELS` (0.0 .. 1.0)."""
    return round(min(max(share, 0.0), 1.0) * SHARE_LEVELS) / SHARE_LEVELS


def score(
    weights: Weights, need: Resources, rate: int, ref_rate: float, provider: ProviderState, share: float
) -> ScoreBreakdown:
    """Score ``provider`` for a job needing ``need`` at ``rate`` whose owner has ``share`` of recent usage."""
    rel = provider.stats.reliability
    share = share_level(share)
    price = int(rate) * (1.0 / ref_rate)  # int(): a Credits rate is its base units here
    load = load_after(need, provider.total, provider.free)
    static = weights.reliability * (1.0 - rel) + (weights.fairshare * share) * rel
    total = weights.price * price + weights.load * load + static
    return ScoreBreakdown(price, load, 1.0 - rel, share * rel, total)
