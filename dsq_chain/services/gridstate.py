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
from dsq_chain.sdk.events import ChainEvent
from dsq_chain.types import JobStatus, LabelConstraint, Prices, ProviderStatus, ReleaseReason, Resources

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
    chain_labels: tuple[tuple[bytes, int, bytes], ...]
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
        self.errors = 0

    @property
    def providers(self) -> dict[str, ProviderState]:
        return {a: p.state for a, p in self._providers.items()}

    def provider_status(self, address: str) -> tuple[ProviderStatus, bool] | None:
        p = self._providers.get(address)
        return (p.status, p.paused) if p else None

    def apply(self, ev: ChainEvent) -> bool:
        """Applies one event; True when it may let a matching round place something."""
        handler = getattr(self, "_on_" + ev.name, None)
        if handler is None:
            return False
        try:
            handler(ev)
        except (KeyError, ValueError, TypeError) as e:  # an event we cannot make sense of must not stop the service
            self.errors += 1
            log.error("cannot apply %s at block %d: %s", ev.name, ev.block_number, e)
            return False
        return ev.name in TRIGGERS

    # -- providers -----------------------------------------------------------------------------
    def _on_ProviderRegistered(self, ev: ChainEvent) -> None:
        hw = _hardware(ev.args["hardware"])
        addr = ev.args["provider"]
        old = self._providers.get(addr)
        stats = old.state.stats if old else ProviderStats()
        state = ProviderState(addr, hw, hw, _prices(ev.args["prices"]), {}, False, stats)
        self._providers[addr] = _Provider(state)

    def _on_ProviderHardwareUpdated(self, ev: ChainEvent) -> None:
        p = self._providers[ev.args["provider"]].state
        used = p.total - p.free
        p.total = _hardware(ev.args["hardware"])
        p.free = p.total - used

    def _on_ProviderPricesUpdated(self, ev: ChainEvent) -> None:
        self._providers[ev.args["provider"]].state.prices = _prices(ev.args["prices"])

    def _on_ProviderLabelsSet(self, ev: ChainEvent) -> None:
        from dsq_chain.workloads.labels import decode_value

        labels = self._providers[ev.args["provider"]].state.labels
        bad: list[str] = []
        for key, value in zip(ev.args["keys"], ev.args["values"], strict=True):
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
            log.error("%s at block %d: label value(s) of %s decode to no label value; treated as absent",
                      ev.name, ev.block_number, ", ".join(bad))

    def _on_ProviderStatusChanged(self, ev: ChainEvent) -> None:
        p = self._providers[ev.args["provider"]]
        p.status = ProviderStatus(ev.args["status"])
        p.refresh()

    def _on_ProviderPaused(self, ev: ChainEvent) -> None:
        p = self._providers[ev.args["provider"]]
        p.paused = bool(ev.args["paused"])
        p.refresh()

    # -- jobs ------------------------------------------------------------------------------------
    def _on_JobSubmitted(self, ev: ChainEvent) -> None:
        req = ev.args["request"]
        res = Resources(int(req["cpus"]), int(req["gpus"]), int(req["memMB"]), int(req.get("diskGB", 0)))
        max_rate = int(req["maxRate"])
        chain_labels = tuple((bytes(c["key"]), int(c["op"]), bytes(c["value"])) for c in ev.args["labels"])
        allowed, excluded = placement_of(chain_labels)
        labels, problem = _workflow_labels(ev.args["workflow"], chain_labels, res)
        first = int(ev.args["firstJobId"])
        for job_id in range(first, first + int(ev.args["count"])):
            rec = JobRecord(job_id, ev.args["owner"], JobStatus.PENDING, res, max_rate,
                            labels, chain_labels, ev.block_number, problem=problem, excluded=set(excluded),
                            allowed=allowed)
            rec.history.append((ev.block_number, JobStatus.PENDING))
            self.jobs[job_id] = rec
            self.pending[job_id] = rec

    def _on_JobAssigned(self, ev: ChainEvent) -> None:
        job = self.jobs[int(ev.args["jobId"])]
        provider = ev.args["provider"]
        self._set(job, JobStatus.META_SCHEDULED, ev)
        job.provider, job.rate = provider, int(ev.args["rate"])
        self.pending.pop(job.id, None)
        p = self._providers[provider].state  # an unknown provider raises only after the job's own state
        p.free = p.free - job.resources

    def _on_JobStatusChanged(self, ev: ChainEvent) -> None:
        self._set(self.jobs[int(ev.args["jobId"])], JobStatus(ev.args["status"]), ev)

    def _on_JobReleased(self, ev: ChainEvent) -> None:
        job = self.jobs[int(ev.args["jobId"])]
        provider = ev.args["provider"]
        reason = ReleaseReason(ev.args["reason"])
        # The job's own state first: a provider this state does not know must not strand the job.
        job.excluded.add(provider)
        job.provider, job.rate = None, 0
        self._set(job, JobStatus.PENDING, ev)
        self.pending[job.id] = job
        self._release(job, provider)
        stats = self._providers[provider].state.stats
        if reason is ReleaseReason.REFUSED:
            stats.refused += 1
        else:
            stats.timed_out += 1

    def _on_JobSettled(self, ev: ChainEvent) -> None:
        job = self.jobs[int(ev.args["jobId"])]
        status = JobStatus(ev.args["status"])
        provider = ev.args["provider"]
        held = job.status.holds_capacity and provider != ZERO
        # The job's own state first: a provider this state does not know must not leave the job open.
        self._set(job, status, ev)
        self.pending.pop(job.id, None)
        billed = int(ev.args["billed"])
        if billed and self.fairshare is not None and self.clock is not None:
            self.fairshare.record(job.owner, float(billed), self.clock(ev))
        if held:
            self._release(job, provider)
            stats = self._providers[provider].state.stats
            if status is JobStatus.FINISHED:
                stats.finished += 1
            elif status is JobStatus.FAILED:
                stats.failed += 1
            elif status is JobStatus.PANICKED:
                stats.panicked += 1

    def _release(self, job: JobRecord, provider: str) -> None:
        p = self._providers[provider].state
        p.free = p.free + job.resources

    @staticmethod
    def _set(job: JobRecord, status: JobStatus, ev: ChainEvent) -> None:
        job.status = status
        job.history.append((ev.block_number, status))


def _hardware(hw: dict[str, int]) -> Resources:
    return Resources(int(hw["cpus"]), int(hw["gpus"]), int(hw["memMB"]), int(hw.get("diskGB", 0)))


def _prices(p: dict[str, int]) -> Prices:
    return Prices(int(p["perCpuMinute"]), int(p["perGpuMinute"]), int(p["perGbMinute"]))


def _workflow_labels(
    workflow: bytes, chain_labels: tuple[tuple[bytes, int, bytes], ...], resources: Resources
) -> tuple[tuple[LabelConstraint, ...], str | None]:
    """The workflow's full label expressions, or a reason why the job can never be placed."""
    from dsq_chain.workloads.labels import on_chain
    from dsq_chain.workloads.workflow import WorkflowError, from_canonical

    try:
        wf = from_canonical(workflow)
    except WorkflowError as e:
        return (), f"workflow does not parse: {e}"
    if wf.resources != resources and wf.resources != dataclasses.replace(resources, disk_gb=0):
        return wf.labels, f"the workflow asks for {wf.resources} but the job was submitted with {resources}"
    expected = tuple(on_chain(wf.labels))
    allowed, excluded = placement_of(chain_labels)
    placement = set(placement_labels(sorted(allowed), sorted(excluded)))
    if expected != tuple(c for c in chain_labels if c not in placement):
        return wf.labels, "the label constraints submitted on chain differ from the workflow's labels"
    return wf.labels, None
