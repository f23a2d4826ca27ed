"""The matcher's state model: providers, pending jobs and assignments.

These records are mutable (the meta-scheduler updates them from chain events);
the matcher itself only reads them and works on private copies of the free
capacities.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from dsq_chain.types import JobStatus, LabelConstraint, Prices, ReleaseReason, Resources

#: The :class:`ProviderStats` field a job settled on its provider counts in, by its final status. The other
#: final statuses (OUT_OF_CREDITS, CANCELED) are the owner's doing, not the provider's record. Every layer
#: that keeps provider statistics (the scheduler's state, the index, the simulator) counts with this table.
SETTLED_STAT: Mapping[JobStatus, str] = MappingProxyType(
    {JobStatus.FINISHED: "finished", JobStatus.FAILED: "failed", JobStatus.PANICKED: "panicked"})


def released_stat(reason: ReleaseReason) -> str:
    """The :class:`ProviderStats` field a job its provider let go counts in: ``refused``, else ``timed_out``
    (a claim timeout, or the provider's ban)."""
    return "refused" if reason is ReleaseReason.REFUSED else "timed_out"


@dataclass(slots=True)
class ProviderStats:
    """What a provider did with the jobs it was given, counted from events.

    ``failed`` counts jobs that ended FAILED (non-zero exit code): that is the
    workflow's outcome, so it does not count against the provider. Refusals,
    claim timeouts and panics (provider-side faults) do.
    """

    finished: int = 0
    failed: int = 0
    refused: int = 0
    timed_out: int = 0
    panicked: int = 0

    def count_settled(self, status: JobStatus) -> None:
        """Counts a job that settled on this provider with ``status`` (see :data:`SETTLED_STAT`)."""
        name = SETTLED_STAT.get(status)
        if name is not None:
            setattr(self, name, getattr(self, name) + 1)

    def count_released(self, reason: ReleaseReason) -> None:
        """Counts a job this provider let go for ``reason`` (see :func:`released_stat`)."""
        name = released_stat(reason)
        setattr(self, name, getattr(self, name) + 1)

    @property
    def completed(self) -> int:
        """Jobs the provider ran to an end (finished or failed by the workflow)."""
        return self.finished + self.failed

    @property
    def faults(self) -> int:
        """Jobs the provider let down: refused, left unclaimed, or panicked."""
        return self.refused + self.timed_out + self.panicked

    @property
    def reliability(self) -> float:
        """Laplace-smoothed success ratio ``(completed + 1) / (completed + faults + 2)``.

        A provider without history scores 0.5; the ratio tends to the observed
        one as evidence accumulates, and is always strictly between 0 and 1.
        """
        completed = self.completed
        return (completed + 1) / (completed + self.faults + 2)


@dataclass(slots=True)
class ProviderState:
    """A provider as the matcher sees it: capacity, prices, labels and history.

    ``active`` is False while the provider is paused or not approved.
    """

    address: str
    total: Resources
    free: Resources
    prices: Prices
    labels: dict[str, str] = field(default_factory=dict)
    active: bool = True
    stats: ProviderStats = field(default_factory=ProviderStats)


@dataclass(slots=True)
class PendingJob:
    """A PENDING job waiting for a provider.

    ``max_rate`` is the price cap in credit units per minute; ``excluded``
    holds the providers that refused the job or let its claim time out: the
    matcher never places the job there again.
    """

    id: int
    owner: str
    resources: Resources
    max_rate: int
    labels: tuple[LabelConstraint, ...] = ()
    submitted_at: float = 0.0
    excluded: set[str] = field(default_factory=set)
    #: Direct placement: when not empty, the only providers allowed to run the job (the chain enforces it).
    allowed: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Assignment:
    """Place job ``job_id`` on ``provider`` at ``rate`` credit units per minute."""

    job_id: int
    provider: str
    rate: int
