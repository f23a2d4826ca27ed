"""A job's history from the chain: every event about it with block timestamps, and its bill."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dsq_chain.sdk.client import _Client
from dsq_chain.sdk.events import ChainEvent
from dsq_chain.sdk.job_events import job_events
from dsq_chain.types import JobStatus


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
        status, detail = _describe(ev)
        if ev.name == "JobSettled":
            hist.billed, hist.refunded = int(ev.args["billed"]), int(ev.args["refunded"])
            hist.exit_code = int(ev.args["exitCode"])
        elif ev.name == "JobToppedUp":
            hist.topped_up += int(ev.args["amount"])
        hist.entries.append(HistoryEntry(times[ev.block_number], ev.block_number, ev.name, status, detail))
    return hist


def _describe(ev: ChainEvent) -> tuple[JobStatus | None, str]:
    a = ev.args
    if ev.name == "JobSubmitted":
        return JobStatus.PENDING, f"by {a['owner']}, escrow {a['request']['credits']} units"
    if ev.name == "JobAssigned":
        return JobStatus.META_SCHEDULED, f"to {a['provider']} at {a['rate']} units/min"
    if ev.name == "JobStatusChanged":
        return JobStatus(a["status"]), f"by {a['provider']}"
    if ev.name == "JobReleased":
        reason = "refused" if a["reason"] == 0 else "claim timed out"
        return JobStatus.PENDING, f"{reason} by {a['provider']}"
    if ev.name == "JobSettled":
        return JobStatus(a["status"]), f"exit {a['exitCode']}, billed {a['billed']}, refunded {a['refunded']}"
    if ev.name == "JobToppedUp":
        return None, f"+{a['amount']} units by {a['payer']} (escrow {a['escrow']})"
    return None, ""
