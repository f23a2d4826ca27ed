"""The provider worker's decisions, as pure functions of what it observed about one job.

:func:`decide` takes the :class:`Facts` the worker gathered in a tick (the job's on-chain record, its
journal phase, the executor's status, a few timers) and returns a :class:`Plan`: the reports to send,
the journal phase to enter, and what to do with the execution. It reads no chain, no executor and no
clock, so every rule is tested without either (``tests/test_decisions.py``); the worker
(:mod:`dsq_chain.services.worker`) gathers the facts, carries plans out and sends the reports.

When a rule needs a fact that costs something to learn, the plan asks for it (``need``): ``lookup``
(ask the executor whether it already runs the job: a worker that died between submitting and
journaling must not run it twice) or ``validate`` (fetch the workflow, check its hash, parse it, fit it).
The worker learns it and calls :func:`decide` again.

The rules, by the job's on-chain status:

=================  ==========================================================================
on chain           the plan
=================  ==========================================================================
unknown            nothing (the node is unreachable: the execution keeps running)
not ours / PENDING drop it (cancel a live execution); but a job found PENDING with no provider
                   while its execution runs here (only a reorg does that) is held
                   :data:`REORG_HOLD_S` first, in case it is assigned here again
final              drop it (cancel a live execution)
META_SCHEDULED     validate, then CLAIM, or REFUSE with a lasting problem; a passing one (the engine
                   does not answer, or shows no usable capacity while its controller restarts)
                   holds the job and validates it again next tick
SCHEDULED          journal CLAIMED; look the execution up once; none → run it; else :func:`start`
                   (START again when a reorg removed the START and OUT_OF_CREDITS of an execution
                   the worker stopped for its escrow)
RUNNING            journal RUNNING; none after a look-up → PANIC (lost); running → extend after
                   a top-up, OUT_OF_CREDITS once chain time used the escrow up; ended →
                   :func:`outcome` (OUT_OF_CREDITS again if the worker stopped it for that and a
                   reorg removed the report, once chain time says the escrow is used up)
=================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dsq_chain import lifecycle
from dsq_chain.executors import ExecState, ExecStatus, map_to_chain
from dsq_chain.services.journal import Phase
from dsq_chain.types import Job, JobStatus, ReportAction

#: A job found PENDING again while its execution still runs (only a reorg does that: the worker runs nothing
#: before its claim is mined) keeps running this long, so that it is adopted, not run twice, if it is assigned to
#: this provider again; it is cancelled at once if assigned to another one.
REORG_HOLD_S = 60.0
#: After this many seconds of EscrowNotExhausted following an executor timeout, finish instead.
OUT_OF_CREDITS_GRACE_S = 30.0
#: The journal reason of a row whose mined OUT_OF_CREDITS a reorg removed (see :attr:`Facts.stopped_out_of_credits`).
REPORTED_OUT_OF_CREDITS = "reported OUT_OF_CREDITS; a reorg removed it"


@dataclass(frozen=True, slots=True)
class Action:
    """One row of a provider's ``report``."""

    job_id: int
    action: ReportAction
    exit_code: int = 0
    reason: str = ""
    #: FINISH: chain time the job was seen to end (0: the report's block time); the worker sets it.
    end_time: int = 0


@dataclass(frozen=True, slots=True)
class Facts:
    """What the worker knows about one job in this tick."""

    job_id: int
    me: str
    phase: Phase
    #: The job's on-chain record; None when the node could not be read.
    job: Job | None
    #: The executor's status of the journaled execution (or of one found by a look-up); None: none known.
    execution: ExecStatus | None
    #: The journal holds an execution id for the job.
    journaled: bool = False
    #: The executor was asked for the job (this tick, or earlier in this process) and has none.
    absent: bool = False
    #: It was asked this tick (a second look-up would learn nothing new).
    looked_up: bool = False
    #: Seconds since the job was first seen released while its execution runs here; None if not.
    held_s: float | None = None
    #: Why this worker cannot run the job (after validation); None when it can.
    problem: str | None = None
    validated: bool = False
    #: The problem is passing (the engine did not answer, or reports no usable capacity right now): the job
    #: is held and validated again next tick, never refused for it.
    passing: bool = False
    #: Chain time says the escrow of the running job is used up (with the grace).
    escrow_used_up: bool = False
    #: Seconds since OUT_OF_CREDITS was first tried for the job; None if never.
    ooc_waited_s: float | None = None
    #: The worker's OUT_OF_CREDITS was mined (the worker or the engine stopped the execution for its escrow),
    #: and a reorg then removed that report's block: the execution's end is no fault, and the job ends
    #: OUT_OF_CREDITS again once chain time agrees (after a START sent again if the reorg took that too).
    stopped_out_of_credits: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do for one job; everything the worker carries out."""

    reports: tuple[Action, ...] = ()
    #: Journal phase to enter (with the chain status name); None: stay.
    enter: Phase | None = None
    #: A fact to learn before deciding (then :func:`decide` again).
    need: Literal["lookup", "validate"] | None = None
    #: Hand the job to the executor.
    run: bool = False
    #: Journal the job DONE with this reason, cancelling a live execution.
    drop: str | None = None
    #: Keep the execution running although the job is released (reorg hold): start or continue the timer.
    hold: bool = False
    #: Raise the execution's time limit to what the escrow now buys.
    extend: bool = False
    #: Exit code to journal (the one the outcome reports).
    exit_code: int | None = None
    #: Start the OUT_OF_CREDITS grace timer.
    ooc_started: bool = False
    #: Why the job waits this tick (logged).
    wait: str | None = None


def decide(f: Facts) -> Plan:
    """The plan for one job (see the module's table)."""
    job, ex = f.job, f.execution
    if job is None:
        return Plan()
    if job.provider != f.me or job.status is JobStatus.PENDING:
        if job.provider is None and ex is not None and not ex.state.is_final and (
                f.held_s is None or f.held_s < REORG_HOLD_S):
            return Plan(hold=True)
        return Plan(drop="assignment released (refused or claim timed out)")
    if job.status.is_final:
        return Plan(drop=f"final on chain: {job.status.name}")
    if job.status is JobStatus.META_SCHEDULED:
        if not f.validated:
            return Plan(need="validate")
        if f.problem and f.passing:
            return Plan(wait=f.problem)
        if f.problem:
            return Plan(reports=(Action(job.id, ReportAction.REFUSE, reason=f.problem),))
        return Plan(reports=(Action(job.id, ReportAction.CLAIM),))
    if job.status is JobStatus.SCHEDULED:
        enter = Phase.CLAIMED if f.phase is Phase.NEW else None
        if ex is None and not f.journaled and not f.absent and not f.looked_up:
            return Plan(need="lookup")
        if ex is None:
            return Plan(enter=enter, run=True)
        plan = start(job, ex, f.ooc_waited_s, stopped_out_of_credits=f.stopped_out_of_credits)
        return Plan(reports=plan.reports, enter=enter, exit_code=plan.exit_code, ooc_started=plan.ooc_started)
    # RUNNING on chain
    if ex is None:
        if not f.looked_up:
            return Plan(need="lookup")
        return Plan(reports=(Action(job.id, ReportAction.PANIC, reason="the executor has no trace of this job"),))
    enter = Phase.RUNNING if f.phase is not Phase.RUNNING else None
    if not ex.state.is_final:
        if f.escrow_used_up:
            return Plan(enter=enter, extend=True, reports=(
                Action(job.id, ReportAction.OUT_OF_CREDITS, reason="escrow used up (chain time)"),))
        return Plan(enter=enter, extend=True)
    if f.stopped_out_of_credits:
        if not f.escrow_used_up:  # its START was sent again: chain time must use the escrow up again first
            return Plan(enter=enter)
        return Plan(enter=enter, reports=(
            Action(job.id, ReportAction.OUT_OF_CREDITS, reason="escrow used up (sent again: a reorg removed it)"),))
    act, code, ooc = outcome(job.id, ex, f.ooc_waited_s)
    return Plan(reports=(act,), enter=enter, exit_code=code, ooc_started=ooc)


def start(job: Job, ex: ExecStatus, ooc_waited_s: float | None = None, *, stopped_out_of_credits: bool = False
          ) -> Plan:
    """Reports of a SCHEDULED job the executor has: START once the work began (with its outcome in the same
    transaction if it already ended); PANIC if it ended without ever starting.

    ``stopped_out_of_credits`` (see :class:`Facts`): a reorg removed the START and the OUT_OF_CREDITS of an
    execution stopped for its escrow: START alone, and OUT_OF_CREDITS once chain time agrees (see :func:`decide`).
    """
    if ex.started and ex.state.is_final and stopped_out_of_credits:
        return Plan(reports=(Action(job.id, ReportAction.START),))
    if not ex.started:
        if ex.state.is_final:
            return Plan(reports=(Action(job.id, ReportAction.PANIC,
                                        reason=f"ended before it started: {ex.state} {ex.reason}".strip()),))
        return Plan()
    if not ex.state.is_final:
        return Plan(reports=(Action(job.id, ReportAction.START),))
    act, code, ooc = outcome(job.id, ex, ooc_waited_s)
    if act.action is ReportAction.OUT_OF_CREDITS:  # the chain needs time to agree: the next ticks send it
        return Plan(reports=(Action(job.id, ReportAction.START),), exit_code=code, ooc_started=ooc)
    return Plan(reports=(Action(job.id, ReportAction.START), act), exit_code=code, ooc_started=ooc)


def outcome(job_id: int, ex: ExecStatus, ooc_waited_s: float | None) -> tuple[Action, int, bool]:
    """The report of an ended execution, the exit code to journal, and whether the OUT_OF_CREDITS grace
    timer starts now."""
    status = map_to_chain(ex.state)
    code = ex.exit_code if ex.exit_code is not None else 1
    if status is JobStatus.FINISHED:
        code = 0
    elif status is JobStatus.FAILED and code == 0:
        code = 1  # failed without an exit status (e.g. out of memory): never report success
    if status in (JobStatus.FINISHED, JobStatus.FAILED):
        return Action(job_id, ReportAction.FINISH, code), code, False
    if status is JobStatus.OUT_OF_CREDITS:
        if ooc_waited_s is not None and ooc_waited_s > OUT_OF_CREDITS_GRACE_S:
            # The chain says the escrow still pays (a top-up came too late): bill the time used.
            return Action(job_id, ReportAction.FINISH, code or 124, reason="killed at its limit"), code, False
        return Action(job_id, ReportAction.OUT_OF_CREDITS), code, ooc_waited_s is None
    if status is JobStatus.CANCELED:
        # Only the owner cancels on chain; an executor-side cancel we did not ask for is our fault.
        return Action(job_id, ReportAction.PANIC, reason="cancelled on the executor side"), code, False
    return Action(job_id, ReportAction.PANIC, reason=f"executor state {ex.state}: {ex.reason}"), code, False


def journal_after(action: Action) -> tuple[Phase, str]:
    """The journal phase and chain status name once ``action`` was mined."""
    after = lifecycle.after_report(action.action, action.exit_code)
    if action.action is ReportAction.CLAIM:
        return Phase.CLAIMED, after.name
    if action.action is ReportAction.START:
        return Phase.RUNNING, after.name
    return Phase.DONE, "REFUSED" if action.action is ReportAction.REFUSE else after.name


__all__ = ["OUT_OF_CREDITS_GRACE_S", "REORG_HOLD_S", "REPORTED_OUT_OF_CREDITS", "Action", "ExecState", "Facts",
           "Plan", "decide", "journal_after", "outcome", "start"]
