"""Per-owner recent usage with exponential decay (fair share)."""

from __future__ import annotations

import math
from collections.abc import Iterable

#: Usage below this (after decay) is forgotten, so the table does not grow forever.
_NEGLIGIBLE = 1e-9


class FairShare:
    """Usage per owner that halves every ``half_life_s`` seconds.

    The unit of usage is the caller's choice but must be consistent; the
    meta-scheduler records what each owner was billed, in credit units. Times
    are in seconds (chain timestamps). Records may arrive out of order: one
    older than the owner's last record is decayed back to it instead of
    inflating the usage.
    """

    __slots__ = ("_half_life_s", "_usage")

    def __init__(self, half_life_s: float) -> None:
        if not (math.isfinite(half_life_s) and half_life_s > 0):
            raise ValueError(f"half_life_s must be a positive number of seconds, got {half_life_s!r}")
        self._half_life_s = float(half_life_s)
        # owner -> (usage at reference time, reference time)
        self._usage: dict[str, tuple[float, float]] = {}

    @property
    def half_life_s(self) -> float:
        return self._half_life_s

    def _decay(self, dt: float) -> float:
        return 0.5 ** (dt / self._half_life_s) if dt > 0 else 1.0

    def record(self, owner: str, usage: float, now: float) -> None:
        """Add ``usage`` (>= 0) for ``owner`` at time ``now``."""
        if not (math.isfinite(usage) and usage >= 0):
            raise ValueError(f"usage must be a non-negative number, got {usage!r}")
        amount, since = self._usage.get(owner, (0.0, now))
        if now >= since:
            self._usage[owner] = (amount * self._decay(now - since) + usage, now)
        else:
            self._usage[owner] = (amount + usage * self._decay(since - now), since)

    def usage(self, owner: str, now: float) -> float:
        """``owner``'s usage decayed to ``now`` (0.0 for an unknown owner)."""
        entry = self._usage.get(owner)
        if entry is None:
            return 0.0
        amount, since = entry
        return amount * self._decay(now - since)

    def total(self, now: float) -> float:
        """Sum of every owner's decayed usage at ``now``."""
        return math.fsum(self.usage(owner, now) for owner in self._usage)

    def share(self, owner: str, now: float, total: float | None = None) -> float:
        """``owner``'s fraction of the total recent usage, in [0, 1] (0 when nobody used anything).

        Pass ``total`` (from :meth:`total` at the same ``now``) when asking for many owners.
        """
        if total is None:
            total = self.total(now)
        return min(1.0, self.usage(owner, now) / total) if total > 0 else 0.0

    def shares(self, owners: Iterable[str], now: float) -> dict[str, float]:
        """:meth:`share` of each of ``owners``."""
        total = self.total(now)
        return {owner: self.share(owner, now, total) for owner in owners}

    def forget_negligible(self, now: float) -> None:
        """Drop owners whose usage decayed to (almost) nothing."""
        stale = [owner for owner in self._usage if self.usage(owner, now) < _NEGLIGIBLE]
        for owner in stale:
            del self._usage[owner]
