"""A job's history from the chain: every event about it with block timestamps, and its bill."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsq_chain.money import Credits
from dsq_chain.sdk.client_base import _Client
from dsq_chain.sdk.events import (
    ChainEvent,
    JobAssigned,
    JobReleased,
    JobSettled,
    JobStatusChanged,
    JobSubmitted,
    JobToppedUp,
    Undecodable,
    job_status_after,
)
from dsq_chain.sdk.job_events import job_events
from dsq_chain.types import JobStatus, ReleaseReason


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    timestamp: int
    block: int
    event: str
    status: JobStatus | None
    detail: str


@dataclass
class JobHistory:
    job_id: int
    entries: list[HistoryEntry] = field(default_factory=list)
    billed: int | None = None
    refunded: int | None = None
    exit_code: int | None = None
    topped_up: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "billed": self.billed,
            "refunded": self.refunded,
            "exit_code": self.exit_code,
            "topped_up": self.topped_up,
            "history": [
                {"timestamp": e.timestamp, "block": e.block, "event": e.event,
                 "status": e.status.name if e.status else None, "detail": e.detail}
                for e in self.entries
            ],
        }


def job_history(client: _Client, job_id: int) -> JobHistory:
    """Every event of ``job_id`` (its array's submission included), oldest first."""
    job = client.job(job_id)  # raises JobNotFound for unknown ids
    times: dict[int, int] = {}
    hist = JobHistory(job_id)
    for ev in job_events(client.chain, client.deployment, job_id, job.head_id):
        if ev.block_number not in times:
            times[ev.block_number] = client.chain.timestamp(ev.block_number)
        status, detail = describe_event(ev)
        if isinstance(ev, JobSettled):
            hist.billed, hist.refunded, hist.exit_code = ev.billed, ev.refunded, ev.exit_code
        elif isinstance(ev, JobToppedUp):
            hist.topped_up += ev.amount
        hist.entries.append(HistoryEntry(times[ev.block_number], ev.block_number, ev.name, status, detail))
    return hist


def describe_event(ev: ChainEvent) -> tuple[JobStatus | None, str]:
    """The status ``ev`` leaves its job in (the one step, :func:`job_status_after`) and a line about it."""
    return job_status_after(ev), _detail(ev)


def _detail(ev: ChainEvent) -> str:
    match ev:
        case JobSubmitted():
            return f"by {ev.owner}, escrow {Credits(units=ev.request.credits)} credits"
        case JobAssigned():
            return f"to {ev.provider} at {Credits(units=ev.rate)} credits/min"
        case JobStatusChanged():
            return f"by {ev.provider}"
        case JobReleased():
            reason = "refused" if ev.reason is ReleaseReason.REFUSED else "claim timed out"
            return f"{reason} by {ev.provider}"
        case JobSettled():
            return f"exit {ev.exit_code}, billed {ev.billed}, refunded {ev.refunded}"
        case JobToppedUp():
            return f"+{ev.amount} units by {ev.payer} (escrow {ev.escrow})"
        case Undecodable():
            return f"undecodable log ({ev.reason})"
    return ""
