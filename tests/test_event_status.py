"""The one event-to-status step (``lifecycle.status_after``, typed as ``sdk.events.job_status_after``)
against the compiled contract's events, and every consumer of events against the step.

Each transition of the lifecycle table, from each status it applies to, is played as the events the
market emits (the shortest way from submission to that status, then the transition's own event) into
the scheduler's :class:`GridState`, the index's :class:`Applier` (on SQLite) and the job history's
line: after every event each one must hold the status the step gives, and the step the status the
table's row leads to. A consumer that maps an event to a status on its own and drifts fails here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dsq_chain import artifacts, lifecycle
from dsq_chain.lifecycle import TRANSITIONS, Transition
from dsq_chain.matching.model import SETTLED_STAT, ProviderStats
from dsq_chain.sdk.events import (
    EVENT_TYPES,
    ChainEvent,
    JobAssigned,
    JobReleased,
    JobRequest,
    JobSettled,
    JobStatusChanged,
    JobSubmitted,
    JobToppedUp,
    ProviderRegistered,
    ProviderStatusChanged,
    job_status_after,
    job_status_set_by,
)
from dsq_chain.sdk.history import describe_event
from dsq_chain.sdk.job_events import JOB_EVENTS
from dsq_chain.services.gridstate import GridState
from dsq_chain.services.index import schema as s
from dsq_chain.services.index.apply import Applier
from dsq_chain.services.index.service import make_engine
from dsq_chain.services.index.store import Store
from dsq_chain.types import JobStatus, Prices, ProviderStatus, ReleaseReason, Resources

ABI_EVENTS = {i["name"]: i["inputs"] for i in artifacts.abi("JobMarket") if i["type"] == "event"}
#: Events that name a job but are no step of its lifecycle, with why.
NOT_A_STEP = {"EntrySkipped": "a batch entry the chain skipped: the job stays as it was"}

OWNER = "0x" + "11" * 20
PROVIDER = "0x" + "22" * 20
ZERO = "0x" + "00" * 20
JOB = 7


def test_job_events_are_the_contracts_and_the_carried_status_is_its_field() -> None:
    assert set(lifecycle.EVENTS) <= ABI_EVENTS.keys()
    assert set(lifecycle.EVENTS) <= EVENT_TYPES.keys()
    assert JOB_EVENTS == lifecycle.EVENTS  # a job's history reads the lifecycle's events, no list of its own
    with_status = {name for name, inputs in ABI_EVENTS.items()
                   if any(i.get("internalType") == "enum JobStatus" for i in inputs)}
    assert with_status == lifecycle.CARRIES_STATUS
    for name in lifecycle.CARRIES_STATUS:
        assert [i["name"] for i in ABI_EVENTS[name] if i.get("internalType") == "enum JobStatus"] == ["status"]
    naming_a_job = {name for name, inputs in ABI_EVENTS.items()
                    if {"jobId", "firstJobId"} & {i["name"] for i in inputs}}
    assert naming_a_job - NOT_A_STEP.keys() == set(lifecycle.EVENTS), "a job event the lifecycle table does not know"
    assert lifecycle.KEEPS_STATUS | lifecycle.CARRIES_STATUS | lifecycle.EVENT_STATUS.keys() == set(lifecycle.EVENTS)


def test_events_about_no_job_status_take_no_step() -> None:
    for name in ABI_EVENTS.keys() - lifecycle.EVENTS:
        assert lifecycle.status_after(name) is None, name
    for name in lifecycle.KEEPS_STATUS:
        assert lifecycle.status_after(name) is None, name
    provider = ProviderStatusChanged(**_where(1), provider=PROVIDER, status=ProviderStatus.APPROVED)
    assert job_status_after(provider) is None  # a status field, but a provider's
    topped = JobToppedUp(**_where(1), job_id=JOB, provider=ZERO, payer=OWNER, amount=5, escrow=10)
    assert job_status_after(topped) is None
    with pytest.raises(ValueError, match="JobToppedUp sets no job status"):
        job_status_set_by(topped)


def test_an_event_that_carries_the_status_needs_it() -> None:
    for name in lifecycle.CARRIES_STATUS:
        with pytest.raises(ValueError, match=f"{name} carries the job's new status"):
            lifecycle.status_after(name)
        assert lifecycle.status_after(name, JobStatus.RUNNING) is JobStatus.RUNNING


# ------------------------------------------------------------------------------ every consumer, every step

Step = tuple[Transition, JobStatus, JobStatus]
CASES: list[Step] = [(t, src, dst) for t in TRANSITIONS for src, dst in t.moves.items()]


def _path_to(status: JobStatus) -> list[Step]:
    """The shortest run of transitions from NONE (before submission) to ``status``."""
    paths: dict[JobStatus, list[Step]] = {JobStatus.NONE: []}
    todo = [JobStatus.NONE]
    while todo:
        here = todo.pop(0)
        for t in lifecycle.transitions_from(here):
            nxt = t.moves[here]
            if nxt not in paths:
                paths[nxt] = [*paths[here], (t, here, nxt)]
                todo.append(nxt)
    return paths[status]


def _where(block: int) -> dict[str, Any]:
    return {"block_number": block, "block_hash": "0x" + f"{block:064x}", "tx_hash": "0x" + "ab" * 32, "log_index": 0}


def _event(step: Step, block: int) -> ChainEvent:
    """The event the market emits for ``step`` (as the contract fills its fields)."""
    t, src, dst = step
    provider = PROVIDER if src.holds_capacity else ZERO
    where = _where(block)
    builders: dict[str, Callable[[], ChainEvent]] = {
        "JobSubmitted": lambda: JobSubmitted(
            **where, first_job_id=JOB, owner=OWNER, count=1, labels=(), workflow_hash=bytes(32), workflow=b"{}",
            request=JobRequest(cpus=2, gpus=0, mem_mb=2048, max_rate=10_000, credits=1_000_000)),
        "JobAssigned": lambda: JobAssigned(**where, job_id=JOB, provider=PROVIDER, rate=2_000),
        "JobStatusChanged": lambda: JobStatusChanged(**where, job_id=JOB, provider=PROVIDER, status=dst),
        "JobReleased": lambda: JobReleased(**where, job_id=JOB, provider=PROVIDER, reason=(
            ReleaseReason.REFUSED if t.report is not None else ReleaseReason.CLAIM_TIMEOUT)),
        "JobSettled": lambda: JobSettled(**where, job_id=JOB, owner=OWNER, provider=provider, status=dst,
                                         exit_code=0 if t.name == "finish_exit0" else 1, billed=0, refunded=1_000_000),
        "JobToppedUp": lambda: JobToppedUp(**where, job_id=JOB, provider=provider, payer=OWNER, amount=5,
                                           escrow=1_000_005),
    }
    assert t.event in builders, f"a new job event {t.event}: say here how the market fills it"
    return builders[t.event]()


@pytest.fixture
def applier(tmp_path: Path) -> Iterator[Applier]:
    engine = make_engine(f"sqlite:///{tmp_path / 'index.sqlite'}")
    s.migrate(engine)
    with engine.begin() as conn:
        yield Applier(Store(conn), lambda block: 1_700_000_000 + 12 * block)
    engine.dispose()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].name}:{c[1].name}->{c[2].name}")
def test_every_consumer_takes_the_one_step(case: Step, applier: Applier) -> None:
    registered = ProviderRegistered(**_where(1), provider=PROVIDER, id=1, hardware=Resources(8, 0, 16_384),
                                    prices=Prices.from_units(1_000))
    state = GridState()
    state.apply(registered)
    applier.apply(registered, 1)
    status = JobStatus.NONE
    for block, step in enumerate([*_path_to(case[1]), case], start=2):
        ev = _event(step, block)
        step_says = job_status_after(ev)
        assert (step_says if step_says is not None else status) is step[2], \
            f"{ev.name}: the step gives {step_says!r}, the lifecycle's {step[0].name} row {step[2].name}"
        status = step[2]
        state.apply(ev)
        assert applier.apply(ev, block)
        assert state.errors == 0 and applier.errors == 0, f"{ev.name} was not applied"
        assert state.jobs[JOB].status is status, f"GridState after {ev.name}"
        job = applier.store.get(s.jobs, JOB)
        assert job is not None and job["status"] == status, f"the index after {ev.name}"
        change = applier.store.appended[s.status_changes.name][-1]
        assert change["status"] == step_says, f"the index's change row for {ev.name}"
        assert describe_event(ev)[0] is step_says, f"the job history's line for {ev.name}"
        t = step[0]
        if t.report is not None:  # the worker's journal asks after_report: the status the event then shows
            assert lifecycle.after_report(t.report, 0 if t.name == "finish_exit0" else 1) is status
    applier.store.flush()
    row = applier.store.conn.execute(select(s.jobs.c.status).where(s.jobs.c.id == JOB)).scalar_one()
    assert row == status


def test_provider_statistics_count_by_one_table() -> None:
    """A settlement counts in the provider's record by its final status (the owner's OUT_OF_CREDITS and
    CANCELED do not), a release by its reason: the scheduler's state, the index and the simulator all count
    with :data:`SETTLED_STAT` and :func:`released_stat`."""
    stats = ProviderStats()
    for status in JobStatus:
        stats.count_settled(status)
    assert (stats.finished, stats.failed, stats.panicked, stats.refused, stats.timed_out) == (1, 1, 1, 0, 0)
    for reason in ReleaseReason:
        stats.count_released(reason)
    assert (stats.refused, stats.timed_out) == (1, 2)
    assert set(SETTLED_STAT) <= lifecycle.FINAL and JobStatus.OUT_OF_CREDITS not in SETTLED_STAT
