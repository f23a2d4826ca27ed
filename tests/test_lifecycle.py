"""The one lifecycle table (``dsq_chain.lifecycle``) against the compiled contract, and its users.

``tests/test_contract_matrix.py`` derives every expectation of the status x action x caller matrix
from the same table and runs it on Anvil; this file checks the names the table uses (functions,
events, custom errors, enums) exist in the compiled contract, and that the journal obeys it.
"""

from __future__ import annotations

import sqlite3

import pytest

from dsq_chain import artifacts, lifecycle
from dsq_chain.lifecycle import FINAL, TRANSITIONS, Caller
from dsq_chain.services.journal import Journal, JournalError, Phase, can_enter
from dsq_chain.types import JobStatus, ReportAction

ABI = artifacts.abi("JobMarket")
FUNCTIONS = {i["name"] for i in ABI if i["type"] == "function" and i["stateMutability"] not in ("view", "pure")}
EVENTS = {i["name"] for i in ABI if i["type"] == "event"}
ERRORS = {i["name"] for i in ABI if i["type"] == "error"}


@pytest.mark.parametrize("t", TRANSITIONS, ids=lambda t: t.name)
def test_every_transition_names_what_the_contract_has(t: lifecycle.Transition) -> None:
    assert t.function in FUNCTIONS, f"{t.name}: no state-changing function {t.function} in JobMarket"
    assert t.event in EVENTS, f"{t.name}: no event {t.event} in JobMarket"
    for error in (t.wrong_caller, t.blocked):
        assert error is None or error in ERRORS, f"{t.name}: no custom error {error} in JobMarket"
    assert (t.blocked is None) == (not t.requires), f"{t.name}: a precondition and its error go together"
    if t.report is not None:
        assert "report" in FUNCTIONS


def test_statuses_match_the_contracts_enum() -> None:
    names = artifacts.load()["enums"]["JobStatus"]
    assert names == [s.name for s in JobStatus]


def test_final_statuses_have_no_way_out_and_active_ones_do() -> None:
    for status in JobStatus:
        out = lifecycle.transitions_from(status)
        if status in FINAL:
            assert not out, f"{status.name} is final but {[t.name for t in out]} leave it"
        elif status is not JobStatus.NONE:
            assert any(t.target(status) is not status for t in out), f"{status.name} is a dead end"
    assert all(s.is_final == (s in FINAL) for s in JobStatus)


def test_every_final_status_is_reachable_from_submission() -> None:
    for status in FINAL:
        assert lifecycle.reachable(JobStatus.NONE, status)


def test_every_report_action_maps_to_one_status() -> None:
    expected = {ReportAction.CLAIM: JobStatus.SCHEDULED, ReportAction.REFUSE: JobStatus.PENDING,
                ReportAction.START: JobStatus.RUNNING, ReportAction.OUT_OF_CREDITS: JobStatus.OUT_OF_CREDITS,
                ReportAction.PANIC: JobStatus.PANICKED}
    for action, status in expected.items():
        assert lifecycle.after_report(action) is status
    assert lifecycle.after_report(ReportAction.FINISH, 0) is JobStatus.FINISHED
    assert lifecycle.after_report(ReportAction.FINISH, 3) is JobStatus.FAILED


def test_callers_are_named_once() -> None:
    assert {c for t in TRANSITIONS for c in t.callers} <= set(Caller)


# ------------------------------------------------------------------------------------ the worker's journal


@pytest.mark.parametrize(("old", "new", "ok"), [
    (Phase.NEW, Phase.CLAIMED, True), (Phase.NEW, Phase.SUBMITTED, True), (Phase.NEW, Phase.RUNNING, True),
    (Phase.CLAIMED, Phase.SUBMITTED, True), (Phase.SUBMITTED, Phase.RUNNING, True),
    (Phase.RUNNING, Phase.DONE, True), (Phase.NEW, Phase.DONE, True),
    (Phase.RUNNING, Phase.CLAIMED, False), (Phase.RUNNING, Phase.SUBMITTED, False),
    (Phase.DONE, Phase.RUNNING, False), (Phase.DONE, Phase.CLAIMED, False),
])
def test_journal_phase_changes_follow_the_lifecycle(old: Phase, new: Phase, ok: bool) -> None:
    assert can_enter(old, new) is ok


def test_the_journal_refuses_a_move_back() -> None:
    journal = Journal(sqlite3.connect(":memory:"))
    journal.add(7)
    journal.transition(7, Phase.RUNNING, chain_status="RUNNING")
    with pytest.raises(JournalError, match="RUNNING -> CLAIMED"):
        journal.transition(7, Phase.CLAIMED)
    with pytest.raises(JournalError, match="transition"):
        journal.update(7, phase=Phase.DONE)
    journal.transition(7, Phase.DONE, reason="finished")
    entry = journal.get(7)
    assert entry is not None and entry.phase is Phase.DONE and entry.reason == "finished"


def test_after_a_reorg_a_job_may_go_back_once() -> None:
    journal = Journal(sqlite3.connect(":memory:"))
    journal.add(3)
    journal.transition(3, Phase.RUNNING)
    journal.rewound()  # the running job's claim and start were on a fork that is gone
    journal.transition(3, Phase.CLAIMED)  # claimed again on the surviving chain
    journal.transition(3, Phase.RUNNING)
    with pytest.raises(JournalError):
        journal.transition(3, Phase.CLAIMED)  # only once per reorg


def test_a_job_whose_final_report_vanished_is_active_again_and_may_go_back_once() -> None:
    journal = Journal(sqlite3.connect(":memory:"))
    journal.add(4)
    journal.transition(4, Phase.RUNNING, exec_id="4-ab")
    journal.transition(4, Phase.DONE, landed_block=12, landed_hash="0xaa")
    assert journal.landed_after(11) == [(4, 12, "0xaa")] and journal.landed_after(12) == []
    journal.revive(4, Phase.RUNNING)  # block 12 is gone: the chain has the job as it was before
    assert [e.job_id for e in journal.active()] == [4] and journal.landed_after(0) == []
    journal.transition(4, Phase.CLAIMED)  # the start vanished too: back once
    journal.transition(4, Phase.RUNNING)
    with pytest.raises(JournalError):
        journal.transition(4, Phase.CLAIMED)


def test_a_reused_id_starts_again_and_remembers_the_old_execution_as_stale() -> None:
    journal = Journal(sqlite3.connect(":memory:"))
    journal.add(5)
    journal.transition(5, Phase.RUNNING, exec_id="5-old")
    journal.update(5, submission="0x01")
    journal.renew(5)  # a reorg gave id 5 to another submission
    entry = journal.get(5)
    assert entry is not None and (entry.phase, entry.exec_id, entry.stale_exec, entry.submission) == (
        Phase.NEW, None, "5-old", None)
    journal.transition(5, Phase.DONE)
    assert journal.add(5)  # assigned again after a release: the row starts again, still not adopting 5-old
    entry = journal.get(5)
    assert entry is not None and entry.stale_exec == "5-old"


def test_a_journal_written_before_the_reorg_columns_opens_with_them_empty() -> None:
    db = sqlite3.connect(":memory:")
    db.executescript("""CREATE TABLE worker_jobs (job_id INTEGER PRIMARY KEY, phase TEXT NOT NULL, exec_id TEXT,
        time_limit_s INTEGER NOT NULL DEFAULT 0, chain_status TEXT, exit_code INTEGER, reason TEXT NOT NULL
        DEFAULT '', failures INTEGER NOT NULL DEFAULT 0, seen_at REAL NOT NULL, updated_at REAL NOT NULL);
        INSERT INTO worker_jobs(job_id, phase, exec_id, seen_at, updated_at) VALUES (9, 'RUNNING', '9-x', 1, 1);""")
    entry = Journal(db).get(9)
    assert entry is not None and (entry.phase, entry.exec_id, entry.submission, entry.stale_exec) == (
        Phase.RUNNING, "9-x", None, None)
