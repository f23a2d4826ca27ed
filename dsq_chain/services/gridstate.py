"""The grid as the meta-scheduler sees it, built from the market's events alone.

:class:`GridState` applies :class:`~dsq_chain.sdk.events.ChainEvent` records in chain order and keeps
providers (hardware, free capacity, prices, labels, status, history), every job's status and
pending jobs with what the matcher needs (resources, price cap, full label expressions parsed from
the workflow, providers excluded after a refusal or a claim timeout).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from dsq_chain.matching import FairShare, PendingJob, ProviderState, ProviderStats
from dsq_chain.sdk.client import placement_labels, placement_of
from dsq_chain.sdk.events import (
    ChainEvent,
    ChainLabel,
    JobAssigned,
    JobReleased,
    JobSettled,
    JobStatusChanged,
    JobSubmitted,
    ProviderHardwareUpdated,
    ProviderLabelsSet,
    ProviderPaused,
    ProviderPricesUpdated,
    ProviderRegistered,
    ProviderStatusChanged,
    Undecodable,
    job_status_set_by,
)
from dsq_chain.types import JobStatus, LabelConstraint, LabelOp, ProviderStatus, Resources
from dsq_chain.workloads.labels import decode_value, is_label_key, on_chain
from dsq_chain.workloads.workflow import WorkflowError, from_canonical

log = logging.getLogger("dsq.state")

ZERO = "0x0000000000000000000000000000000000000000"
#: Events after which a matching round may place something new.
TRIGGERS = frozenset(
    {"JobSubmitted", "JobReleased", "JobSettled", "ProviderStatusChanged", "ProviderPaused",
     "ProviderHardwareUpdated", "ProviderPricesUpdated", "ProviderLabelsSet", "ProviderRegistered"}
)


@dataclass(slots=True)
class JobRecord:
    """One job as followed from events."""

    id: int
    owner: str
    status: JobStatus
    resources: Resources
    max_rate: int
    labels: tuple[LabelConstraint, ...]
    chain_labels: tuple[ChainLabel, ...]
    block: int
    provider: str | None = None
    rate: int = 0
    #: Why the job can never be placed (its workflow does not parse, ...); None when it can.
    problem: str | None = None
    excluded: set[str] = field(default_factory=set)
    history: list[tuple[int, JobStatus]] = field(default_factory=list)
    #: Direct placement from the submission: the only providers allowed (empty: any).
    allowed: frozenset[str] = frozenset()

    def as_pending(self) -> PendingJob:
        return PendingJob(self.id, self.owner, self.resources, self.max_rate, self.labels,
                          float(self.block), self.excluded, self.allowed)


@dataclass(slots=True)
class _Provider:
    state: ProviderState
    status: ProviderStatus = ProviderStatus.PENDING
    paused: bool = False

    def refresh(self) -> None:
        self.state.active = self.status is ProviderStatus.APPROVED and not self.paused


class GridState:
    """Providers and jobs from events; see the module docstring."""

    def __init__(self, fairshare: FairShare | None = None, clock: Callable[[ChainEvent], float] | None = None) -> None:
        self._providers: dict[str, _Provider] = {}
        self.jobs: dict[int, JobRecord] = {}
        self.pending: dict[int, JobRecord] = {}
        self.fairshare = fairshare
        self.clock = clock
        #: Events that could not be applied (undecodable ones included), and undecodable ones alone.
        self.errors = 0
        self.undecodable = 0

    @property
    def providers(self) -> dict[str, ProviderState]:
        return {a: p.state for a, p in self._providers.items()}

    def provider_status(self, address: str) -> tuple[ProviderStatus, bool] | None:
        p = self._providers.get(address)
        return (p.status, p.paused) if p else None

    def apply(self, ev: ChainEvent) -> bool:
        """Applies one event; True when it may let a matching round place something.

        Nothing an event holds stops the state: an event that cannot be applied (undecodable, about a
        provider or job this state never saw, ...) is logged, counted in :attr:`errors` and skipped.
        """
        handler = getattr(self, "_on_" + ev.name, None)
        if handler is None:
            return False
        try:
            handler(ev)
        except Exception as e:  # an event we cannot make sense of must not stop the service
            self.errors += 1
            log.error("cannot apply %s at block %d: %s: %s", ev.name, ev.block_number, type(e).__name__, e)
            return False
        return ev.name in TRIGGERS

    def _on_Undecodable(self, ev: Undecodable) -> None:
        self.errors += 1
        self.undecodable += 1
        log.error("skipping an undecodable %s log at block %d (tx %s): %s",
                  ev.event or "unknown", ev.block_number, ev.tx_hash, ev.reason)

    # -- providers -----------------------------------------------------------------------------
    def _on_ProviderRegistered(self, ev: ProviderRegistered) -> None:
        old = self._providers.get(ev.provider)
        stats = old.state.stats if old else ProviderStats()
        state = ProviderState(ev.provider, ev.hardware, ev.hardware, ev.prices, {}, False, stats)
        self._providers[ev.provider] = _Provider(state)

    def _on_ProviderHardwareUpdated(self, ev: ProviderHardwareUpdated) -> None:
        p = self._providers[ev.provider].state
        used = p.total - p.free
        p.total = ev.hardware
        p.free = p.total - used

    def _on_ProviderPricesUpdated(self, ev: ProviderPricesUpdated) -> None:
        self._providers[ev.provider].state.prices = ev.prices

    def _on_ProviderLabelsSet(self, ev: ProviderLabelsSet) -> None:
        labels = self._providers[ev.provider].state.labels
        bad: list[str] = []
        for key, value in zip(ev.keys, ev.values, strict=True):
            if not is_label_key(key):
                # Not text, or not a key any job can name: no constraint can ever refer to it.
                bad.append(repr(key))
                continue
            if value == b"\0" * 32:
                labels.pop(key, None)
                continue
            try:
                labels[key] = decode_value(value)
            except ValueError:
                # The contract stores any word: one no label value encodes to can never equal a job's
                # required value, so the key counts as absent. The other keys of the event still apply.
                labels.pop(key, None)
                bad.append(key)
        if bad:  # counted and logged here, so that the event still triggers a round for the keys that did apply
            self.errors += 1
            log.error("%s at block %d: label(s) %s are not valid label keys or values; treated as absent",
                      ev.name, ev.block_number, ", ".join(bad))

    def _on_ProviderStatusChanged(self, ev: ProviderStatusChanged) -> None:
        p = self._providers[ev.provider]
        p.status = ev.status
        p.refresh()

    def _on_ProviderPaused(self, ev: ProviderPaused) -> None:
        p = self._providers[ev.provider]
        p.paused = ev.paused
        p.refresh()

    # -- jobs ------------------------------------------------------------------------------------
    def _on_JobSubmitted(self, ev: JobSubmitted) -> None:
        req = ev.request
        resources = req.resources
        chain_labels = tuple(ev.labels)
        allowed, excluded = placement_of([(c.key, int(c.op), c.value) for c in chain_labels])
        labels, problem = _workflow_labels(ev.workflow, chain_labels, resources)
        for job_id in ev.job_ids:
            rec = JobRecord(job_id, ev.owner, JobStatus.NONE, resources, req.max_rate,
                            labels, chain_labels, ev.block_number, problem=problem, excluded=set(excluded),
                            allowed=allowed)
            self._set(rec, ev)
            self.jobs[job_id] = rec
            self.pending[job_id] = rec

    def _on_JobAssigned(self, ev: JobAssigned) -> None:
        job = self.jobs[ev.job_id]
        self._set(job, ev)
        job.provider, job.rate = ev.provider, ev.rate
        self.pending.pop(job.id, None)
        p = self._providers[ev.provider].state  # an unknown provider raises only after the job's own state
        p.free = p.free - job.resources

    def _on_JobStatusChanged(self, ev: JobStatusChanged) -> None:
        self._set(self.jobs[ev.job_id], ev)

    def _on_JobReleased(self, ev: JobReleased) -> None:
        job = self.jobs[ev.job_id]
        # The job's own state first: a provider this state does not know must not strand the job.
        job.excluded.add(ev.provider)
        job.provider, job.rate = None, 0
        self._set(job, ev)
        self.pending[job.id] = job
        self._release(job, ev.provider)
        self._providers[ev.provider].state.stats.count_released(ev.reason)

    def _on_JobSettled(self, ev: JobSettled) -> None:
        job = self.jobs[ev.job_id]
        held = job.status.holds_capacity and ev.provider != ZERO
        # The job's own state first: a provider this state does not know must not leave the job open.
        status = self._set(job, ev)
        self.pending.pop(job.id, None)
        if ev.billed and self.fairshare is not None and self.clock is not None:
            self.fairshare.record(job.owner, float(ev.billed), self.clock(ev))
        if held:
            self._release(job, ev.provider)
            self._providers[ev.provider].state.stats.count_settled(status)

    def _release(self, job: JobRecord, provider: str) -> None:
        p = self._providers[provider].state
        p.free = p.free + job.resources

    @staticmethod
    def _set(job: JobRecord, ev: ChainEvent) -> JobStatus:
        """Moves ``job`` to the status ``ev`` sets (the one step, :func:`job_status_set_by`)."""
        status = job_status_set_by(ev)
        job.status = status
        job.history.append((ev.block_number, status))
        return status


def _workflow_labels(
    workflow: bytes, chain_labels: tuple[ChainLabel, ...], resources: Resources
) -> tuple[tuple[LabelConstraint, ...], str | None]:
    """The workflow's full label expressions, or a reason why the job can never be placed."""
    try:
        wf = from_canonical(workflow)
    except WorkflowError as e:
        return (), f"workflow does not parse: {e}"
    except (RecursionError, MemoryError, ValueError, TypeError) as e:  # whatever bytes anyone submits
        return (), f"workflow does not parse: {type(e).__name__}"
    if wf.resources != resources and wf.resources != dataclasses.replace(resources, disk_gb=0):
        return wf.labels, f"the workflow asks for {wf.resources} but the job was submitted with {resources}"
    expected = tuple(ChainLabel(k, LabelOp(o), v) for k, o, v in on_chain(wf.labels))
    placement = placement_labels(*(sorted(a) for a in placement_of([(c.key, int(c.op), c.value)
                                                                     for c in chain_labels])))
    shown = {(bytes(k), int(o), bytes(v)) for k, o, v in placement}
    if expected != tuple(c for c in chain_labels if (c.key, int(c.op), c.value) not in shown):
        return wf.labels, "the label constraints submitted on chain differ from the workflow's labels"
    return wf.labels, None
