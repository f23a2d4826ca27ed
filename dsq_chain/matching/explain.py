"""Why a job is (not) placed: per-provider verdicts and readable renderings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dsq_chain.matching.constraints import Rejection
from dsq_chain.matching.model import PendingJob
from dsq_chain.matching.scoring import ScoreBreakdown
from dsq_chain.money import Credits


@dataclass(frozen=True, slots=True)
class ProviderVerdict:
    """One provider's verdict for a job: a rejection, or a score and a rank (1 = best)."""

    address: str
    rejection: Rejection | None = None
    score: ScoreBreakdown | None = None
    rank: int | None = None
    rate: int | None = None

    @property
    def placeable(self) -> bool:
        return self.rejection is None

    def __str__(self) -> str:
        if self.rejection is not None:
            return f"{self.address}: {self.rejection.reason}"
        rate = "-" if self.rate is None else Credits(units=self.rate)
        return f"{self.address}: #{self.rank} rate {rate} credits/min, {self.score}"


@dataclass(frozen=True, slots=True)
class Explanation:
    """Every provider's verdict for one job, against the provider states as given.

    ``verdicts`` lists the placeable providers by rank, then the others by
    address. ``error`` is set when the job itself cannot be matched (the
    matcher skips it and records the same reason in ``Matcher.last_errors``).
    """

    job: PendingJob
    verdicts: tuple[ProviderVerdict, ...]
    error: str | None = None

    @property
    def placeable(self) -> tuple[ProviderVerdict, ...]:
        """The providers that pass every hard constraint, best first."""
        return tuple(v for v in self.verdicts if v.placeable)

    @property
    def best(self) -> ProviderVerdict | None:
        """The provider the matcher would choose for this job alone, if any."""
        return None if self.error is not None else next(iter(self.placeable), None)

    def verdict(self, address: str) -> ProviderVerdict:
        """The verdict for ``address`` (case-insensitive). Raises KeyError."""
        for v in self.verdicts:
            if v.address.lower() == address.lower():
                return v
        raise KeyError(address)

    def headline(self) -> str:
        """The job summary line and the ``placeable on N of M providers`` line."""
        job = self.job
        res = job.resources
        labels = ", ".join(str(c) for c in job.labels) or "none"
        lines = [
            f"job {job.id} of {job.owner}: {res.cpus} cpus, {res.gpus} gpus, {res.mem_mb} MB; "
            f"cap {Credits(units=job.max_rate)} credits/min; labels: {labels}; excluded providers: {len(job.excluded)}"
        ]
        if self.error is not None:
            lines.append(f"not matchable: {self.error}")
        lines.append(f"placeable on {len(self.placeable):,} of {len(self.verdicts):,} providers")
        return "\n".join(lines)

    def __str__(self) -> str:
        return "\n".join([self.headline(), *(f"  {v}" for v in self.verdicts)])

    def summary(self, top: int = 3) -> str:
        """A short rendering for thousands of providers: the ``top`` best, then rejections grouped by reason.

        e.g. ``9,996 providers: gpus: needs 2, has 0 free (max free 0)`` — the
        group's closest provider's reason, with the best value in the group.
        """
        lines = [self.headline()]
        lines.extend(f"  {v}" for v in self.placeable[:top])
        hidden = len(self.placeable) - top
        if hidden > 0:
            lines.append(f"  ... and {hidden:,} more placeable providers")
        lines.extend(f"  {line}" for line in _grouped(v.rejection for v in self.verdicts if v.rejection))
        return "\n".join(lines)


def _group_key(r: Rejection) -> tuple[str, str]:
    """Rejections with the same key are summarised together."""
    if r.kind in ("cpus", "gpus", "memory", "price"):
        return r.kind, str(r.need)
    return r.kind, r.reason


def _closer(r: Rejection, other: Rejection) -> bool:
    """Whether ``r`` is closer to passing than ``other`` (more free, or a lower rate)."""
    if r.have is None or other.have is None:
        return False
    return r.have < other.have if r.kind == "price" else r.have > other.have


def _grouped(rejections: Iterator[Rejection | None]) -> list[str]:
    groups: dict[tuple[str, str], tuple[int, Rejection]] = {}
    for r in rejections:
        if r is None:
            continue
        key = _group_key(r)
        count, closest = groups.get(key, (0, r))
        groups[key] = (count + 1, r if _closer(r, closest) else closest)
    ordered = sorted(groups.values(), key=lambda item: (-item[0], item[1].reason))
    return [f"{count:,} provider{'s' if count != 1 else ''}: {r.reason}{_extreme(r)}" for count, r in ordered]


def _extreme(r: Rejection) -> str:
    if r.kind == "memory":
        return f" (max free {r.have} MB)"
    if r.kind in ("cpus", "gpus"):
        return f" (max free {r.have})"
    if r.kind == "price":
        return f" (lowest rate {r.have})"
    return ""
