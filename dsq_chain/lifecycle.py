"""The job lifecycle, once: statuses, the transitions between them, who may make each, and its event.

Every layer asks this table instead of re-encoding it: the follower's grid state, the index and the
job history (which status an event leaves a job in: :func:`status_after`, the one event-to-status
step, ``tests/test_event_status.py``), the worker's journal (which phase changes are legal), the CLI
and the demo (what is final), and the contract tests (``tests/test_contract_matrix.py`` derives every
expectation of the status x action x caller matrix from :data:`TRANSITIONS`, and
``tests/test_lifecycle.py`` checks the names here against the compiled contract).

``PENDING → META_SCHEDULED → SCHEDULED → RUNNING → FINISHED | FAILED | OUT_OF_CREDITS | CANCELED | PANICKED``
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from dsq_chain.types import JobStatus, ReportAction

S = JobStatus

#: Statuses a job never leaves.
FINAL: frozenset[JobStatus] = frozenset({S.FINISHED, S.FAILED, S.OUT_OF_CREDITS, S.CANCELED, S.PANICKED})
#: Statuses from which the job can still move.
ACTIVE: frozenset[JobStatus] = frozenset({S.PENDING, S.META_SCHEDULED, S.SCHEDULED, S.RUNNING})
#: Statuses in which the job reserves capacity on its provider.
HOLDS_CAPACITY: frozenset[JobStatus] = frozenset({S.META_SCHEDULED, S.SCHEDULED, S.RUNNING})
#: Statuses in which the job waits for a provider to be chosen.
WAITING: frozenset[JobStatus] = frozenset({S.PENDING})


class Caller(StrEnum):
    """Who makes a transition. ``PROVIDER`` is the provider the job is assigned to."""

    OWNER = "owner"
    PROVIDER = "provider"
    SCHEDULER = "scheduler"
    ADMIN = "admin"
    ANYONE = "anyone"


@dataclass(frozen=True)
class Transition:
    """One action of the market on a job: the contract function, its moves, callers and event.

    ``moves`` maps each status the action applies to onto the status after it (a top-up keeps the
    status). A caller outside ``callers`` gets ``wrong_caller`` whatever the status; a status outside
    ``moves`` gets ``InvalidStatus``. ``requires`` names the precondition beyond status and caller,
    with ``blocked`` the custom error when it does not hold.
    """

    name: str
    function: str
    moves: Mapping[JobStatus, JobStatus]
    callers: frozenset[Caller]
    event: str
    wrong_caller: str | None = None
    requires: str = ""
    blocked: str | None = None
    report: ReportAction | None = None
    note: str = field(default="", compare=False)

    def target(self, status: JobStatus) -> JobStatus | None:
        return self.moves.get(status)


_PROVIDER = frozenset({Caller.PROVIDER})
_ANYONE = frozenset({Caller.ANYONE})

# fmt: off
#: The lifecycle, one action per row (FINISH has a row per outcome: exit 0 and any other code).
TRANSITIONS: tuple[Transition, ...] = (
    Transition("submit", "submit", {S.NONE: S.PENDING}, _ANYONE, "JobSubmitted",
               note="locks the escrow; the workflow travels in calldata and the event"),
    Transition("assign", "assign", {S.PENDING: S.META_SCHEDULED}, frozenset({Caller.SCHEDULER}), "JobAssigned",
               "AccessControlUnauthorizedAccount",
               note="provider approved, active, fits, labels hold, rate within the cap; snapshots the rate"),
    Transition("claim", "claim", {S.META_SCHEDULED: S.SCHEDULED}, _PROVIDER, "JobStatusChanged",
               "NotAssignedProvider", report=ReportAction.CLAIM),
    Transition("refuse", "refuse", {S.META_SCHEDULED: S.PENDING, S.SCHEDULED: S.PENDING}, _PROVIDER, "JobReleased",
               "NotAssignedProvider", report=ReportAction.REFUSE,
               note="releases capacity; the matcher never picks that provider for the job again"),
    Transition("timeoutClaim", "timeoutClaim", {S.META_SCHEDULED: S.PENDING}, _ANYONE, "JobReleased",
               requires="the claim timeout has passed", blocked="ClaimNotExpired"),
    Transition("releaseFromBanned", "releaseFromBanned", {S.META_SCHEDULED: S.PENDING, S.SCHEDULED: S.PENDING},
               _ANYONE, "JobReleased", requires="the job's provider is banned", blocked="ProviderNotBanned",
               note="releases capacity; the meta-scheduler sends it for every such job"),
    Transition("start", "start", {S.SCHEDULED: S.RUNNING}, _PROVIDER, "JobStatusChanged",
               "NotAssignedProvider", report=ReportAction.START, note="billing starts (chain time)"),
    Transition("finish_exit0", "finish", {S.RUNNING: S.FINISHED}, _PROVIDER, "JobSettled",
               "NotAssignedProvider", report=ReportAction.FINISH, note="exit code 0"),
    Transition("finish_failed", "finish", {S.RUNNING: S.FAILED}, _PROVIDER, "JobSettled",
               "NotAssignedProvider", report=ReportAction.FINISH, note="any other exit code"),
    Transition("outOfCredits", "reportOutOfCredits", {S.RUNNING: S.OUT_OF_CREDITS}, _ANYONE, "JobSettled",
               requires="the escrow is used up on chain time", blocked="EscrowNotExhausted",
               report=ReportAction.OUT_OF_CREDITS),
    Transition("cancel", "cancel", dict.fromkeys(ACTIVE, S.CANCELED), frozenset({Caller.OWNER}), "JobSettled",
               "NotJobOwner", note="full refund before RUNNING; billed up to now while RUNNING"),
    Transition("panic", "panic", dict.fromkeys(ACTIVE, S.PANICKED),
               frozenset({Caller.SCHEDULER, Caller.ADMIN, Caller.PROVIDER}), "JobSettled", "NotAllowedToPanic",
               report=ReportAction.PANIC, note="the whole escrow back to the owner"),
    Transition("topUp", "topUp", {s: s for s in ACTIVE}, _ANYONE, "JobToppedUp",
               note="escrow grows; a running job's time limit grows with it"),
)
# fmt: on

BY_NAME: dict[str, Transition] = {t.name: t for t in TRANSITIONS}

#: The market's job events, in lifecycle order: each transition's event, once.
EVENTS: tuple[str, ...] = tuple(dict.fromkeys(t.event for t in TRANSITIONS))


def _targets(event: str) -> set[JobStatus]:
    return {dst for t in TRANSITIONS if t.event == event for dst in t.moves.values()}


#: Job events that leave the job's status as it was: every move of theirs stays (a top-up).
KEEPS_STATUS: frozenset[str] = frozenset(
    e for e in EVENTS if all(src is dst for t in TRANSITIONS if t.event == e for src, dst in t.moves.items()))

#: The status an event itself implies, for job events with one outcome (``JobAssigned``: META_SCHEDULED).
EVENT_STATUS: dict[str, JobStatus] = {
    e: next(iter(_targets(e))) for e in EVENTS if e not in KEEPS_STATUS and len(_targets(e)) == 1
}

#: Job events with several outcomes: they carry the job's new status in their ``status`` field
#: (``JobStatusChanged``, ``JobSettled``; ``tests/test_event_status.py`` checks it against the ABI).
CARRIES_STATUS: frozenset[str] = frozenset(EVENTS) - KEEPS_STATUS - EVENT_STATUS.keys()


def status_after(event: str, carried: JobStatus | None = None) -> JobStatus | None:
    """The status a job has after the market event named ``event``: the one event-to-status step.

    ``carried`` is the event's own ``status`` field, read for the events of :data:`CARRIES_STATUS`
    only. None for an event that keeps the status (a top-up) or is about no job's status (a provider's,
    an account's). Every consumer of events (the scheduler's grid state, the index, a job's history)
    takes this step through :func:`dsq_chain.sdk.events.job_status_after`.
    """
    if event in CARRIES_STATUS:
        if carried is None:
            raise ValueError(f"{event} carries the job's new status in its status field; none was given")
        return carried
    return EVENT_STATUS.get(event)


def is_final(status: JobStatus) -> bool:
    return status in FINAL


def can_move(source: JobStatus, target: JobStatus) -> bool:
    """True when some transition takes a job from ``source`` to ``target`` (a top-up's stay counts)."""
    return any(t.moves.get(source) is target for t in TRANSITIONS)


def transitions_from(status: JobStatus) -> list[Transition]:
    return [t for t in TRANSITIONS if status in t.moves]


def by_report(action: ReportAction) -> list[Transition]:
    """The transitions a provider's ``report`` row of ``action`` makes."""
    return [t for t in TRANSITIONS if t.report is action]


def after_report(action: ReportAction, exit_code: int = 0) -> JobStatus:
    """The status a job has once a provider's ``report`` row of ``action`` is applied."""
    rows = by_report(action)
    if action is ReportAction.FINISH:
        rows = [BY_NAME["finish_exit0" if exit_code == 0 else "finish_failed"]]
    (target,) = {t for row in rows for t in row.moves.values()}
    return target


def reachable(source: JobStatus, target: JobStatus) -> bool:
    """True when a job can get from ``source`` to ``target`` by zero or more transitions."""
    seen, todo = {source}, [source]
    while todo:
        here = todo.pop()
        if here is target:
            return True
        for t in transitions_from(here):
            nxt = t.moves[here]
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False
