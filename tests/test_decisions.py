"""The worker's decisions without a chain or an executor: every row of the table in
``dsq_chain/services/decisions.py``, from facts to plan."""

from __future__ import annotations

import dataclasses

import pytest

from dsq_chain.executors import ExecState, ExecStatus
from dsq_chain.services.decisions import (
    OUT_OF_CREDITS_GRACE_S,
    REORG_HOLD_S,
    Action,
    Facts,
    Plan,
    decide,
    journal_after,
    outcome,
    start,
)
from dsq_chain.services.journal import Phase
from dsq_chain.types import Job, JobStatus, ReportAction, Resources

ME, OTHER = "0x" + "11" * 20, "0x" + "22" * 20


def job(status: JobStatus, provider: str | None = ME) -> Job:
    return Job(7, "0x" + "33" * 20, status, Resources(1, 0, 512), 1_000, 10_000, provider, 100, 0, b"\0" * 32)


def facts(status: JobStatus | None, ex: ExecStatus | None = None, **kw: object) -> Facts:
    base = Facts(job_id=7, me=ME, phase=Phase.NEW, job=None if status is None else job(status), execution=ex,
                 journaled=ex is not None)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


RUNNING = ExecStatus(ExecState.RUNNING, None, True)
QUEUED = ExecStatus(ExecState.PENDING, None, False)
DONE_OK = ExecStatus(ExecState.COMPLETED, 0, True)
DONE_BAD = ExecStatus(ExecState.FAILED, 3, True)
TIMED_OUT = ExecStatus(ExecState.TIMEOUT, None, True)
NEVER_STARTED = ExecStatus(ExecState.FAILED, 1, False, "bad node")


def reports(plan: Plan) -> list[tuple[ReportAction, int]]:
    return [(a.action, a.exit_code) for a in plan.reports]


def test_nothing_while_the_chain_is_unknown() -> None:
    assert decide(facts(None, RUNNING)) == Plan()


@pytest.mark.parametrize("status", [s for s in JobStatus if s.is_final])
def test_final_on_chain_is_dropped(status: JobStatus) -> None:
    assert decide(facts(status, RUNNING)).drop == f"final on chain: {status.name}"


def test_assigned_to_another_provider_is_dropped() -> None:
    f = dataclasses.replace(facts(JobStatus.SCHEDULED, RUNNING), job=job(JobStatus.SCHEDULED, OTHER))
    assert decide(f).drop is not None


def test_released_while_running_here_is_held_then_dropped() -> None:
    f = dataclasses.replace(facts(JobStatus.PENDING, RUNNING), job=job(JobStatus.PENDING, None))
    assert decide(f).hold
    assert decide(dataclasses.replace(f, held_s=REORG_HOLD_S - 1)).hold
    assert decide(dataclasses.replace(f, held_s=REORG_HOLD_S + 1)).drop is not None
    assert decide(dataclasses.replace(f, execution=DONE_OK)).drop is not None  # nothing runs: nothing to hold


def test_assigned_is_validated_then_claimed_or_refused() -> None:
    f = facts(JobStatus.META_SCHEDULED)
    assert decide(f).need == "validate"
    assert reports(decide(dataclasses.replace(f, validated=True))) == [(ReportAction.CLAIM, 0)]
    refused = decide(dataclasses.replace(f, validated=True, problem="resources: needs 8 cpus"))
    assert refused.reports == (Action(7, ReportAction.REFUSE, reason="resources: needs 8 cpus"),)


def test_a_passing_engine_problem_holds_the_job_instead_of_refusing_it() -> None:
    f = facts(JobStatus.META_SCHEDULED, validated=True, problem="the slurm engine does not answer", passing=True)
    plan = decide(f)
    assert plan.reports == () and plan.wait == "the slurm engine does not answer"


def test_claimed_is_looked_up_once_then_run() -> None:
    f = facts(JobStatus.SCHEDULED)
    assert decide(f).need == "lookup"
    assert decide(dataclasses.replace(f, absent=True)) == Plan(enter=Phase.CLAIMED, run=True)
    assert decide(dataclasses.replace(f, looked_up=True, phase=Phase.CLAIMED)) == Plan(run=True)


def test_claimed_and_found_running_is_started() -> None:
    plan = decide(facts(JobStatus.SCHEDULED, RUNNING, phase=Phase.SUBMITTED))
    assert reports(plan) == [(ReportAction.START, 0)] and plan.enter is None and not plan.run


def test_claimed_and_still_queued_waits() -> None:
    assert decide(facts(JobStatus.SCHEDULED, QUEUED, phase=Phase.SUBMITTED)) == Plan()


def test_claimed_and_already_ended_reports_start_and_outcome_together() -> None:
    assert reports(decide(facts(JobStatus.SCHEDULED, DONE_BAD, phase=Phase.SUBMITTED))) == [
        (ReportAction.START, 0), (ReportAction.FINISH, 3)]


def test_ended_before_it_started_is_a_provider_fault() -> None:
    plan = start(job(JobStatus.SCHEDULED), NEVER_STARTED)
    assert reports(plan) == [(ReportAction.PANIC, 0)] and "ended before it started" in plan.reports[0].reason


def test_a_timeout_at_start_waits_for_chain_time_to_agree() -> None:
    plan = start(job(JobStatus.SCHEDULED), TIMED_OUT)
    assert reports(plan) == [(ReportAction.START, 0)] and plan.ooc_started


def test_running_with_no_execution_is_looked_up_then_panicked() -> None:
    f = facts(JobStatus.RUNNING, phase=Phase.RUNNING)
    assert decide(f).need == "lookup"
    plan = decide(dataclasses.replace(f, looked_up=True))
    assert reports(plan) == [(ReportAction.PANIC, 0)] and "no trace" in plan.reports[0].reason


def test_running_is_extended_and_ended_when_chain_time_used_the_escrow() -> None:
    f = facts(JobStatus.RUNNING, RUNNING, phase=Phase.SUBMITTED)
    plan = decide(f)
    assert plan == Plan(enter=Phase.RUNNING, extend=True)
    plan = decide(dataclasses.replace(f, phase=Phase.RUNNING, escrow_used_up=True))
    assert reports(plan) == [(ReportAction.OUT_OF_CREDITS, 0)] and plan.enter is None


def test_an_execution_stopped_for_out_of_credits_whose_report_vanished_is_reported_out_of_credits_again() -> None:
    cancelled = ExecStatus(ExecState.CANCELLED, None, True)
    f = facts(JobStatus.RUNNING, cancelled, phase=Phase.RUNNING)
    assert reports(decide(f)) == [(ReportAction.PANIC, 0)]  # cancelled by someone else: a provider fault
    stopped = dataclasses.replace(f, stopped_out_of_credits=True)  # by this worker, for the escrow
    assert reports(decide(stopped)) == []  # chain time does not say the escrow is used up: wait
    plan = decide(dataclasses.replace(stopped, escrow_used_up=True))
    assert reports(plan) == [(ReportAction.OUT_OF_CREDITS, 0)] and "reorg" in plan.reports[0].reason


def test_an_out_of_credits_job_whose_start_vanished_too_starts_again_then_ends_out_of_credits() -> None:
    """The reorg took the START as well: the job is SCHEDULED on chain, its execution ended (stopped for its
    escrow). START again, then (RUNNING) OUT_OF_CREDITS once chain time uses the escrow up: not PANIC, which
    would refund the owner in full for work that ran."""
    cancelled = ExecStatus(ExecState.CANCELLED, None, True)
    f = facts(JobStatus.SCHEDULED, cancelled, phase=Phase.RUNNING)
    assert reports(decide(f)) == [(ReportAction.START, 0), (ReportAction.PANIC, 0)]  # not ours: a provider fault
    assert reports(decide(dataclasses.replace(f, stopped_out_of_credits=True))) == [(ReportAction.START, 0)]
    timeout = ExecStatus(ExecState.TIMEOUT, None, True)  # stopped by the engine at its limit: the same
    g = facts(JobStatus.SCHEDULED, timeout, phase=Phase.RUNNING, stopped_out_of_credits=True)
    assert reports(decide(g)) == [(ReportAction.START, 0)]
    running = dataclasses.replace(g, job=dataclasses.replace(g.job, status=JobStatus.RUNNING), ooc_waited_s=60.0)
    assert reports(decide(running)) == []  # no FINISH after the grace: it ends OUT_OF_CREDITS
    assert reports(decide(dataclasses.replace(running, escrow_used_up=True))) == [(ReportAction.OUT_OF_CREDITS, 0)]


@pytest.mark.parametrize(("ex", "expected"), [
    (DONE_OK, (ReportAction.FINISH, 0)),
    (DONE_BAD, (ReportAction.FINISH, 3)),
    (ExecStatus(ExecState.FAILED, 0, True), (ReportAction.FINISH, 1)),  # failed without a code: never success
    (ExecStatus(ExecState.OUT_OF_MEMORY, None, True), (ReportAction.FINISH, 1)),
    (ExecStatus(ExecState.CANCELLED, None, True), (ReportAction.PANIC, 0)),
    (ExecStatus(ExecState.NODE_FAIL, None, True, "lost"), (ReportAction.PANIC, 0)),
])
def test_an_ended_execution_is_reported_by_its_outcome(ex: ExecStatus, expected: tuple[ReportAction, int]) -> None:
    plan = decide(facts(JobStatus.RUNNING, ex, phase=Phase.RUNNING))
    assert reports(plan) == [expected]


def test_out_of_credits_is_retried_then_finished_after_the_grace() -> None:
    first, code, started = outcome(7, TIMED_OUT, None)
    assert code == 1  # no exit status recorded: the journal keeps 1
    assert first.action is ReportAction.OUT_OF_CREDITS and started
    again, _, started = outcome(7, TIMED_OUT, OUT_OF_CREDITS_GRACE_S - 1)
    assert again.action is ReportAction.OUT_OF_CREDITS and not started
    late, _, _ = outcome(7, TIMED_OUT, OUT_OF_CREDITS_GRACE_S + 1)
    assert (late.action, late.exit_code, late.reason) == (ReportAction.FINISH, 1, "killed at its limit")


@pytest.mark.parametrize(("action", "phase", "name"), [
    (Action(7, ReportAction.CLAIM), Phase.CLAIMED, "SCHEDULED"),
    (Action(7, ReportAction.START), Phase.RUNNING, "RUNNING"),
    (Action(7, ReportAction.REFUSE), Phase.DONE, "REFUSED"),
    (Action(7, ReportAction.FINISH, 0), Phase.DONE, "FINISHED"),
    (Action(7, ReportAction.FINISH, 2), Phase.DONE, "FAILED"),
    (Action(7, ReportAction.OUT_OF_CREDITS), Phase.DONE, "OUT_OF_CREDITS"),
    (Action(7, ReportAction.PANIC), Phase.DONE, "PANICKED"),
])
def test_what_the_journal_records_once_a_report_is_mined(action: Action, phase: Phase, name: str) -> None:
    assert journal_after(action) == (phase, name)
