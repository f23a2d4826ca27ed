"""The matcher's state model: providers, pending jobs and assignments.

These records are mutable (the meta-scheduler updates them from chain events);
the matcher itself only reads them and works on private copies of the free
capacities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dsq_chain.types import LabelConstraint, Prices, Resources


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
