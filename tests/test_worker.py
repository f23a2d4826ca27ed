"""The provider worker with the local executor, for real: Anvil, the contracts, local processes.

The scheduler's role is played by hand (``grid.scheduler.assign``) for determinism, except in the
first test, where the real meta-scheduler and the worker run side by side in threads. The restart
tests run the worker as its own process and SIGKILL it at each point of a job's life.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_utils.crypto import keccak

from dsq_chain.errors import InputError
from dsq_chain.executors import ExecState, ExecutorError, LocalExecutor
from dsq_chain.executors import _supervise as sv
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import AnvilNode, start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.services.journal import Journal, Phase
from dsq_chain.services.metrics import WorkerMetrics
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.services.worker import Action, ProviderWorker, time_limit_s
from dsq_chain.types import CREDIT_UNIT, JobStatus, Prices, ProviderStatus, ReleaseReason, ReportAction, Resources
from tests.grid import CPU_PRICES, Grid, build_grid, conservation_gap, submit_unchecked
from tests.worker_scenarios import (
    CRASH_POINTS,
    Rig,
    credits_for,
    events,
    expected_bill,
    new_rig,
    phase_of,
    settlement,
    spawn_runner,
    start_block,
    submit,
    wait,
    workflow,
)

CPU_KEY = 5  # the grid's ``cpu`` provider (8 cpus, 16 GB on chain, label zone=eu)
BIG = 10 * CREDIT_UNIT


def new_local(root: Path) -> LocalExecutor:
    return LocalExecutor(root, kill_grace_s=1.0)


@pytest.fixture
def rig(grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path) -> Iterator[Rig]:
    root = tmp_path / "exec"
    r = new_rig(anvil.rpc_url, keys[CPU_KEY], grid.deployment, grid.user, lambda: new_local(root), tmp_path / "worker")
    try:
        yield r
    finally:
        r.worker.close()
        ex = new_local(root)
        for d in ex.jobs.iterdir():
            if not d.name.startswith("."):
                ex.cancel(d.name)


def assign(grid: Grid, job_id: int, provider: str | None = None) -> None:
    grid.scheduler.assign(job_id, provider or grid.cpu.address)


def exec_status(rig: Rig, job_id: int) -> tuple[str, ExecState, int | None]:
    [exec_id] = rig.executor.find(job_id)
    st = rig.executor.status(exec_id)
    return exec_id, st.state, st.exit_code


def job_pid(ex: object, exec_id: str) -> int:
    assert isinstance(ex, LocalExecutor)
    doc = sv.read_json(ex.job_dir(exec_id) / sv.JOB)
    assert doc is not None, f"{exec_id} never started"
    return int(doc["pid"])


def nonce(chain: Chain, address: str) -> int:
    return int(chain.call_rpc("eth_getTransactionCount", [address, "latest"]), 16)


# ------------------------------------------------------------------------------------------ outcomes
def test_success_through_scheduler_and_worker(grid: Grid, rig: Rig, anvil: AnvilNode, keys: list[str]) -> None:
    """The whole chain: submit → meta-scheduler assigns → worker claims, runs, reports FINISHED."""
    wf = workflow('echo "hello from $DSQ_JOB_ID"; echo to-stderr >&2', labels=["zone == eu"])
    sched = MetaScheduler(Chain(anvil.rpc_url).wallet(keys[1]), grid.deployment, poll_interval=0.05)
    stop = threading.Event()
    threads = [threading.Thread(target=sched.run, args=(stop,), daemon=True),
               threading.Thread(target=rig.worker.run, args=(stop,), daemon=True)]
    for t in threads:
        t.start()
    try:
        [job_id] = submit(grid.user, wf, BIG)
        job = grid.user.wait_for(job_id, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert job.status is JobStatus.FINISHED and job.provider == grid.cpu.address
    s = settlement(grid.user, job_id)
    assert (s["status"], s["exitCode"], s["provider"]) == (JobStatus.FINISHED, 0, grid.cpu.address)
    rate = CPU_PRICES.rate_for(wf.resources)
    assert s["billed"] == expected_bill(grid.user, job_id, rate, BIG) and s["billed"] + s["refunded"] == BIG
    out, err = rig.worker.logs(job_id)
    assert out.read_text() == f"hello from {job_id}\n" and err.read_text() == "to-stderr\n"
    entry = rig.worker.journal.get(job_id)
    assert entry is not None and (entry.phase, entry.chain_status, entry.exit_code) == (Phase.DONE, "FINISHED", 0)


def test_failure_reports_exit_code(grid: Grid, rig: Rig) -> None:
    wf = workflow("echo about to fail >&2; exit 3")
    [job_id] = submit(grid.user, wf, BIG)
    assign(grid, job_id)
    job = rig.until(job_id, JobStatus.FAILED)
    assert job.escrow == 0
    s = settlement(grid.user, job_id)
    assert (s["status"], s["exitCode"]) == (JobStatus.FAILED, 3)
    assert exec_status(rig, job_id)[1:] == (ExecState.FAILED, 3)
    assert rig.worker.logs(job_id)[1].read_text() == "about to fail\n"
    assert rig.reported(job_id, ReportAction.START) == 1 and rig.reported(job_id, ReportAction.FINISH) == 1


def test_metrics_follow_the_journal_and_the_reports(grid: Grid, rig: Rig) -> None:
    metrics = rig.worker.metrics = WorkerMetrics()
    [job_id] = submit(grid.user, workflow("exit 3"), BIG)
    assign(grid, job_id)
    rig.until(job_id, JobStatus.FAILED)
    rig.tick()
    value = metrics.registry.get_sample_value
    assert value("dsq_worker_jobs", {"status": "DONE"}) == 1 and value("dsq_worker_jobs", {"status": "NEW"}) == 0
    assert value("dsq_worker_claim_latency_seconds_count") == 1
    assert value("dsq_worker_report_latency_seconds_count") == 2  # START and FINISH


def test_timeout_reports_out_of_credits(grid: Grid, rig: Rig) -> None:
    """The escrow buys ~3 s: the executor kills the job at its limit and the worker reports OUT_OF_CREDITS as soon
    as chain time agrees (the contract refuses earlier), billing the whole escrow."""
    wf = workflow("echo started; sleep 60; echo never")
    rate = CPU_PRICES.rate_for(wf.resources)
    credits = credits_for(3, rate)
    assert time_limit_s(credits, rate) == 3
    [job_id] = submit(grid.user, wf, credits)
    assign(grid, job_id)
    rig.until(job_id, JobStatus.RUNNING)
    t0 = time.monotonic()
    rig.until(job_id, JobStatus.OUT_OF_CREDITS, timeout=20)
    assert 2.5 < time.monotonic() - t0 < 10
    s = settlement(grid.user, job_id)
    assert (s["billed"], s["refunded"]) == (credits, 0)
    exec_id, state, _ = exec_status(rig, job_id)
    assert state is ExecState.TIMEOUT  # killed by the executor at the limit the escrow bought
    assert sv.session_members(job_pid(rig.executor, exec_id)) == []
    assert rig.worker.logs(job_id)[0].read_text() == "started\n"
    entry = rig.worker.journal.get(job_id)
    assert entry is not None and (entry.phase, entry.chain_status, entry.time_limit_s) == (Phase.DONE,
                                                                                          "OUT_OF_CREDITS", 3)


def test_cancel_while_running_kills_the_process_group(grid: Grid, rig: Rig) -> None:
    wf = workflow("sleep 100 & sleep 100; wait")  # a child in the background too: the whole group must go
    [job_id] = submit(grid.user, wf, BIG)
    assign(grid, job_id)
    rig.until(job_id, JobStatus.RUNNING)
    exec_id, state, _ = exec_status(rig, job_id)
    pid = job_pid(rig.executor, exec_id)
    assert state is ExecState.RUNNING and len(sv.session_members(pid)) >= 3
    time.sleep(2.0)
    grid.user.cancel(job_id)
    entry = rig.worker.journal.get(job_id)
    wait(lambda: phase_of(rig.worker, job_id) is Phase.DONE, 20, "dropped", step=rig.tick)
    assert sv.session_members(pid) == []
    assert exec_status(rig, job_id)[1] is ExecState.CANCELLED
    s = settlement(grid.user, job_id)
    rate = CPU_PRICES.rate_for(wf.resources)
    assert s["status"] == JobStatus.CANCELED and s["billed"] > 0  # billed up to the cancel
    assert s["billed"] == expected_bill(grid.user, job_id, rate, BIG) and s["billed"] + s["refunded"] == BIG
    entry = rig.worker.journal.get(job_id)
    assert entry is not None and "CANCELED" in entry.reason
    # Nothing reported after the owner's cancel: no FINISH, no PANIC.
    assert {a.action for a in rig.actions if a.job_id == job_id} == {ReportAction.CLAIM, ReportAction.START}


def test_top_up_while_running_extends_the_limit(grid: Grid, rig: Rig) -> None:
    """~4 s of escrow for an 8 s job: the owner tops up after 1 s and the job finishes."""
    wf = workflow("sleep 8; echo done")
    rate = CPU_PRICES.rate_for(wf.resources)
    credits = credits_for(4, rate)
    [job_id] = submit(grid.user, wf, credits)
    assign(grid, job_id)
    rig.until(job_id, JobStatus.RUNNING)
    t0 = time.monotonic()
    time.sleep(1.0)
    extra = credits_for(60, rate)
    grid.user.top_up(job_id, Credits(units=extra))
    rig.until(job_id, JobStatus.FINISHED, timeout=30)
    assert time.monotonic() - t0 > 7.5
    assert exec_status(rig, job_id)[1:] == (ExecState.COMPLETED, 0)
    assert rig.worker.logs(job_id)[0].read_text() == "done\n"
    entry = rig.worker.journal.get(job_id)
    assert entry is not None and entry.time_limit_s == time_limit_s(credits + extra, rate) > 8
    s = settlement(grid.user, job_id)
    assert s["billed"] == expected_bill(grid.user, job_id, rate, credits + extra) > credits


# ------------------------------------------------------------------------------------------ restarts
def journal_entry(state_dir: Path, job_id: int) -> object:
    db = sqlite3.connect(str(state_dir / "worker.sqlite"))
    try:
        return Journal(db).get(job_id)
    finally:
        db.close()


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_killed_and_restarted_runs_once_reports_once(grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path,
                                                     crash_at: str) -> None:
    """A worker process SIGKILLed at ``crash_at`` and restarted on the same state: the job runs once, START is
    reported once, it settles once as FINISHED and is billed once."""
    runs = tmp_path / "runs.txt"
    wf = workflow(f'echo "$DSQ_JOB_ID" >> {runs}; sleep 2; echo done')
    rate = CPU_PRICES.rate_for(wf.resources)
    dep_file, state, root = tmp_path / "deployment.json", tmp_path / "worker", tmp_path / "exec"
    log = tmp_path / "worker.log"
    grid.deployment.save(dep_file)
    ex = new_local(root)
    balance0 = grid.user.credits(grid.cpu.address)
    [job_id] = submit(grid.user, wf, BIG)
    assign(grid, job_id)

    def runner(crash: str | None) -> subprocess.Popen[bytes]:
        return spawn_runner(rpc_url=anvil.rpc_url, key=keys[CPU_KEY], deployment_file=dep_file, state_dir=state,
                            executor="local", exec_root=root, log_file=log, crash_at=crash)

    first = runner(None if crash_at == "running" else crash_at)
    try:
        if crash_at == "running":
            wait(lambda: grid.user.job(job_id).status is JobStatus.RUNNING, 30, "running")
            first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL, log.read_text()
        status = grid.user.job(job_id).status
        runs_so_far = len(ex.find(job_id))
        expected = {"claimed": (JobStatus.SCHEDULED, 0), "submitted": (JobStatus.SCHEDULED, 1),
                    "started": (JobStatus.RUNNING, 1), "running": (JobStatus.RUNNING, 1),
                    "before_final": (JobStatus.RUNNING, 1), "after_final": (JobStatus.FINISHED, 1)}[crash_at]
        assert (status, runs_so_far) == expected, log.read_text()
        if crash_at == "before_final":
            assert ex.status(ex.find(job_id)[0]).final
        second = runner(None)
        try:
            grid.user.wait_for(job_id, timeout=30)
            wait(lambda: getattr(journal_entry(state, job_id), "phase", None) is Phase.DONE, 15, "journaled DONE")
        finally:
            second.terminate()
            second.wait(15)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    text = log.read_text()
    job = grid.user.job(job_id)
    assert job.status is JobStatus.FINISHED, text
    s = settlement(grid.user, job_id)  # settled exactly once
    assert s["exitCode"] == 0
    start_block(grid.user, job_id)  # START reported exactly once
    assert runs.read_text() == f"{job_id}\n", text  # the work ran once
    assert len(ex.find(job_id)) == 1
    assert s["billed"] == expected_bill(grid.user, job_id, rate, BIG)
    assert grid.user.credits(grid.cpu.address) - balance0 == s["billed"]  # billed once
    assert "crash point reached" in text or crash_at == "running"


# ------------------------------------------------------------------------------------------ RPC outage
def test_rpc_outage_job_finishes_meanwhile_reported_after(keys: list[str], tmp_path: Path) -> None:
    """The node goes down while a job runs; the job ends during the outage; the node comes back (same state, same
    port) and the worker, never restarted, reports the outcome on its own."""
    dump = tmp_path / "anvil-state.json"
    node = start_anvil(dump_state=dump)
    port = node.port
    try:
        chain = Chain(node.rpc_url)
        g = build_grid(chain, keys)
        root = tmp_path / "exec"
        worker = ProviderWorker(Chain(node.rpc_url).wallet(keys[CPU_KEY]), g.deployment, new_local(root),
                                tmp_path / "worker", poll_interval=0.1)
        wf = workflow("sleep 3; echo survived")
        [job_id] = submit(g.user, wf, BIG)
        g.scheduler.assign(job_id, g.cpu.address)
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
        thread.start()
        try:
            g.user.wait_for(job_id, [JobStatus.RUNNING], timeout=20)
            node.stop()  # SIGTERM: anvil dumps its state
            assert not chain.is_up()
            [exec_id] = worker.executor.find(job_id)
            wait(lambda: worker.executor.status(exec_id).final, 20, "ended during the outage")
            time.sleep(1.0)  # a few ticks against a dead node
            assert thread.is_alive() and not worker.chain_up
            entry = worker.journal.get(job_id)
            assert entry is not None and entry.phase is not Phase.DONE
            node = start_anvil(port, load_state=dump)
            job = g.user.wait_for(job_id, timeout=30)
            wait(lambda: phase_of(worker, job_id) is Phase.DONE, 10, "journaled")
            out = worker.logs(job_id)[0].read_text()
        finally:
            stop.set()
            thread.join(10)
            worker.close()
        assert not thread.is_alive()
        assert job.status is JobStatus.FINISHED
        s = settlement(g.user, job_id)
        assert s["exitCode"] == 0 and s["billed"] + s["refunded"] == BIG
        assert out == "survived\n"
        assert conservation_gap(g) == 0
    finally:
        node.stop()


# ------------------------------------------------------------------------------------------ bad input
BAD_INPUTS = {
    # name: (workflow bytes, resources of the request, reason fragment); None: built in the test
    "not-json": (b"#!/bin/sh\nrm -rf /\n", Resources(1, 0, 256), "workflow does not parse"),
    "malformed": (b'{"steps":[{"name":"main","run":{"command":"true"}}]}', Resources(1, 0, 256),
                  "workflow does not parse"),
    "not-canonical": (workflow("true").canonical().replace(b",", b", ", 1), Resources(1, 0, 256),
                      "workflow does not parse"),
    "resources-differ": (workflow("true").canonical(), Resources(2, 0, 512), "resources mismatch"),
    "bigger-than-machine": (None, None, "resources: needs"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_refuses_bad_workflow(grid: Grid, rig: Rig, caplog: pytest.LogCaptureFixture, case: str) -> None:
    """Refused at once with the reason logged; nothing runs; the job is back in the queue."""
    raw, resources, reason = BAD_INPUTS[case]
    if raw is None:  # more cpus than this machine has, on a provider that advertises enough (stale registration)
        cpus = rig.executor.capacity().cpus + 1
        wf = workflow("true", cpus=cpus, mem_per_cpu=64)
        raw, resources = wf.canonical(), wf.resources
        grid.cpu.update_hardware(Resources(max(8, cpus), 0, 16_384))
    assert resources is not None
    caplog.set_level(logging.INFO, logger="dsq.worker")
    [job_id] = submit_unchecked(grid.user, raw, resources, credits=BIG, max_rate=10**9)
    assign(grid, job_id)
    rig.tick()
    assert [a.action for a in rig.actions] == [ReportAction.REFUSE]
    assert reason in rig.actions[0].reason
    job = grid.user.job(job_id)
    assert job.status is JobStatus.PENDING and job.provider is None
    [released] = events(grid.user, "JobReleased", job_id)
    assert released["reason"] == ReleaseReason.REFUSED
    assert rig.executor.find(job_id) == []  # nothing ran
    assert any(f"job {job_id} refused: {reason}" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records), caplog.text
    entry = rig.worker.journal.get(job_id)
    assert entry is not None and entry.phase is Phase.DONE
    rig.tick()  # refused once, not again
    assert len(rig.actions) == 1


def test_refuses_workflow_whose_bytes_do_not_match_the_hash(grid: Grid, rig: Rig,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """The contract hashes the calldata itself, so the mismatch is produced in the worker's workflow cache
    (what a lying RPC node or a corrupted cache would hand it)."""
    caplog.set_level(logging.INFO, logger="dsq.worker")
    [job_id] = submit(grid.user, workflow("echo real"), BIG)
    assign(grid, job_id)
    real = workflow("echo real").canonical()
    rig.worker.workflows.raw[job_id] = (workflow("echo substituted").canonical(), keccak(real))  # hash: the event's
    rig.tick()
    assert [a.action for a in rig.actions] == [ReportAction.REFUSE]
    assert "workflow hash mismatch" in caplog.text
    assert grid.user.job(job_id).status is JobStatus.PENDING
    assert rig.executor.find(job_id) == []


def test_ignores_jobs_of_other_providers(grid: Grid, rig: Rig) -> None:
    [job_id] = submit(grid.user, workflow("echo not yours"), BIG)
    assign(grid, job_id, grid.spare.address)
    before = nonce(grid.chain, grid.cpu.address)
    for _ in range(3):
        rig.tick()
    assert rig.worker.journal.get(job_id) is None  # the provider filter never delivered it
    # A journal row for someone else's job (a stale or hand-made row) is dropped without touching the job.
    rig.worker.journal.add(job_id)
    rig.tick()
    entry = rig.worker.journal.get(job_id)
    assert entry is not None and entry.phase is Phase.DONE and "released" in entry.reason
    assert rig.actions == [] and nonce(grid.chain, grid.cpu.address) == before
    assert rig.executor.find(job_id) == []
    job = grid.user.job(job_id)
    assert job.status is JobStatus.META_SCHEDULED and job.provider == grid.spare.address


def test_logs_of_a_job_never_run_here(rig: Rig) -> None:
    with pytest.raises(InputError, match="never ran on this worker"):
        rig.worker.logs(424242)


# ------------------------------------------------------------------------------------------ registration
def test_registers_detected_hardware_and_refuses_more(grid: Grid, anvil: AnvilNode, keys: list[str],
                                                      tmp_path: Path) -> None:
    ex = new_local(tmp_path / "exec")
    worker = ProviderWorker(Chain(anvil.rpc_url).wallet(keys[11]), grid.deployment, ex, tmp_path / "w")
    try:
        cap = ex.capacity()
        prices = Prices.from_units(1_000, 0, 10)
        for too_much in (Resources(cap.cpus + 1, 0, cap.mem_mb), Resources(cap.cpus, cap.gpus + 1, cap.mem_mb),
                         Resources(cap.cpus, 0, cap.mem_mb + 1)):
            with pytest.raises(InputError, match="refusing to register"):
                worker.register(prices, hardware=too_much)
        assert grid.user.provider(worker.address).status is ProviderStatus.NONE  # nothing sent
        assert worker.register(prices) == cap
        p = grid.user.provider(worker.address)
        assert (p.status, p.total, p.prices) == (ProviderStatus.PENDING, cap, prices)
    finally:
        worker.close()


def test_registers_less_than_detected(grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path) -> None:
    ex = new_local(tmp_path / "exec")
    worker = ProviderWorker(Chain(anvil.rpc_url).wallet(keys[12]), grid.deployment, ex, tmp_path / "w")
    try:
        registered = worker.register(Prices.from_units(1_000), {"zone": "eu"}, hardware=Resources(1, 0, 512))
        assert registered == Resources(1, 0, 512)
        assert grid.user.provider(worker.address).total == Resources(1, 0, 512)
    finally:
        worker.close()


# ------------------------------------------------------------------------------------------ batching
def test_reports_of_one_tick_share_one_transaction(grid: Grid, rig: Rig) -> None:
    """Five jobs assigned at once: one transaction claims them all; they are submitted in the same tick and
    one more transaction reports them all RUNNING; once they ended, one transaction settles them all."""
    wf = workflow('sleep 1; echo "$DSQ_JOB_ID"')
    ids = submit(grid.user, wf, BIG, count=5)
    grid.scheduler.assign_batch([(i, grid.cpu.address, ()) for i in ids])
    addr = grid.cpu.address

    def tick_counting() -> tuple[dict[ReportAction, int], int]:
        n0 = nonce(grid.chain, addr)
        counts: dict[ReportAction, int] = {}
        for a in rig.tick():
            counts[a.action] = counts.get(a.action, 0) + 1
        return counts, nonce(grid.chain, addr) - n0

    assert tick_counting() == ({ReportAction.CLAIM: 5, ReportAction.START: 5}, 2)
    assert all(grid.user.job(i).status is JobStatus.RUNNING for i in ids)
    wait(lambda: all(rig.executor.status(rig.executor.find(i)[0]).final for i in ids), 20, "all ended")
    assert tick_counting() == ({ReportAction.FINISH: 5}, 1)
    assert all(grid.user.job(i).status is JobStatus.FINISHED for i in ids)
    for i in ids:
        assert rig.worker.logs(i)[0].read_text() == f"{i}\n"
    assert tick_counting() == ({}, 0)  # nothing left: no transaction


def test_a_batch_with_one_bad_report_still_costs_one_transaction(grid: Grid, rig: Rig,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Four assignments, one of them cancelled by its owner between the worker's read and its claim: the batch
    of claims lands in one transaction, the chain skips the cancelled job's claim (EntrySkipped) and the
    worker counts it as that job's failure."""
    ids = submit(grid.user, workflow("sleep 1"), BIG, count=4)
    grid.scheduler.assign_batch([(i, grid.cpu.address, ()) for i in ids])
    rig.worker.follower.poll()
    jobs = rig.worker.reader.read(ids)  # what the worker read
    grid.user.cancel(ids[1])  # ... and what changed right after
    claims = [Action(i, ReportAction.CLAIM) for i in ids if jobs[i].status is JobStatus.META_SCHEDULED]
    n0 = nonce(grid.chain, grid.cpu.address)
    caplog.set_level(logging.INFO, logger="dsq.worker")
    sent = rig.worker._send(claims)
    assert [a.job_id for a in sent] == [ids[0], ids[2], ids[3]]
    assert nonce(grid.chain, grid.cpu.address) - n0 == 1
    assert f"job {ids[1]}: CLAIM failed: InvalidStatus" in caplog.text
    assert [grid.user.job(i).status for i in ids] == [JobStatus.SCHEDULED, JobStatus.CANCELED, JobStatus.SCHEDULED,
                                                      JobStatus.SCHEDULED]
    rig.until(ids[3], JobStatus.FINISHED)
    rig.until(ids[0], JobStatus.FINISHED)


# ------------------------------------------------------------------------------------------ provider-side faults
def test_job_cancelled_on_the_executor_side_is_panicked(grid: Grid, rig: Rig) -> None:
    """An operator kills the job behind the worker's back: a provider-side fault, the owner is refunded in full."""
    [job_id] = submit(grid.user, workflow("sleep 60"), BIG)
    assign(grid, job_id)
    rig.until(job_id, JobStatus.RUNNING)
    [exec_id] = rig.executor.find(job_id)
    rig.new_executor().cancel(exec_id)
    rig.until(job_id, JobStatus.PANICKED)
    s = settlement(grid.user, job_id)
    assert (s["billed"], s["refunded"]) == (0, BIG)
    entry = rig.worker.journal.get(job_id)
    assert entry is not None and entry.phase is Phase.DONE and "cancelled on the executor side" in entry.reason


def test_job_lost_by_the_executor_is_panicked_and_the_worker_goes_on(grid: Grid, rig: Rig) -> None:
    """The executor's record of a running job disappears (state dir wiped): the worker panics that job (refund)
    instead of crashing, and keeps running the others."""
    lost, other = submit(grid.user, workflow("sleep 60"), BIG, count=2)
    grid.scheduler.assign_batch([(lost, grid.cpu.address, ()), (other, grid.cpu.address, ())])
    rig.until(lost, JobStatus.RUNNING)
    [exec_id] = rig.executor.find(lost)
    assert isinstance(rig.executor, LocalExecutor)
    rig.executor.cancel(exec_id)
    shutil.rmtree(rig.executor.job_dir(exec_id))
    rig.until(lost, JobStatus.PANICKED)
    assert settlement(grid.user, lost)["refunded"] == BIG
    assert "lost" in rig.actions[-1].reason
    assert grid.user.job(other).status is JobStatus.RUNNING
    grid.user.cancel(other)
    wait(lambda: phase_of(rig.worker, other) is Phase.DONE, 20, "dropped", step=rig.tick)


def test_worker_ends_a_job_whose_escrow_ran_out_when_the_engine_is_late(grid: Grid, rig: Rig) -> None:
    """Engines may enforce limits late (Slurm: whole minutes, a 30 s timer). Here the executor's limit is pushed
    far out by hand: the worker itself reports OUT_OF_CREDITS once chain time says the escrow is used up, then
    stops the job."""
    wf = workflow("sleep 60")
    rate = CPU_PRICES.rate_for(wf.resources)
    credits = credits_for(2, rate)
    [job_id] = submit(grid.user, wf, credits)
    assign(grid, job_id)
    rig.until(job_id, JobStatus.RUNNING)
    [exec_id] = rig.executor.find(job_id)
    rig.executor.extend(exec_id, 600)  # the engine would let it run 10 minutes
    t0 = time.monotonic()
    rig.until(job_id, JobStatus.OUT_OF_CREDITS, timeout=20)
    assert time.monotonic() - t0 < 10
    assert settlement(grid.user, job_id)["billed"] == credits
    assert rig.executor.status(exec_id).state is ExecState.CANCELLED  # stopped by the worker
    assert [a.reason for a in rig.actions if a.action is ReportAction.OUT_OF_CREDITS] == ["escrow used up (chain time)"]


def test_refuses_gpu_job_on_a_machine_without_gpus(grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The gpu provider advertises 2 GPUs on chain, but this machine has none: the job goes back to the queue."""
    caplog.set_level(logging.INFO, logger="dsq.worker")
    root = tmp_path / "exec"
    gpu = new_rig(anvil.rpc_url, keys[6], grid.deployment, grid.user, lambda: new_local(root), tmp_path / "w")
    try:
        if gpu.executor.capacity().gpus:
            pytest.skip("this machine has GPUs")
        wf = workflow("nvidia-smi", gpus=1)
        [job_id] = submit(grid.user, wf, BIG)
        grid.scheduler.assign(job_id, grid.gpu.address)
        gpu.tick()
        assert [a.action for a in gpu.actions] == [ReportAction.REFUSE]
        assert "this machine has" in gpu.actions[0].reason and "refused" in caplog.text
        assert grid.user.job(job_id).status is JobStatus.PENDING and gpu.executor.find(job_id) == []
    finally:
        gpu.worker.close()


def test_reports_are_split_to_stay_far_below_the_block_gas_limit(grid: Grid, rig: Rig,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """After an outage hundreds of outcomes may be due at once: a report carries at most MAX_REPORT_ROWS rows (here
    set to 3), a job's START and FINISH never split."""
    from dsq_chain.services import reports as reports_module

    monkeypatch.setattr(reports_module, "MAX_REPORT_ROWS", 3)
    ids = submit(grid.user, workflow("sleep 1"), BIG, count=5)
    grid.scheduler.assign_batch([(i, grid.cpu.address, ()) for i in ids])
    n0 = nonce(grid.chain, grid.cpu.address)
    rig.tick()
    assert nonce(grid.chain, grid.cpu.address) - n0 == 4  # 5 claims in 2 transactions, 5 starts in 2
    assert all(grid.user.job(i).status is JobStatus.RUNNING for i in ids)
    wait(lambda: all(rig.executor.status(rig.executor.find(i)[0]).final for i in ids), 20, "all ended")
    rig.tick()
    assert all(grid.user.job(i).status is JobStatus.FINISHED for i in ids)
    assert nonce(grid.chain, grid.cpu.address) - n0 == 6  # 5 finishes in 2 transactions


# ------------------------------------------------------------------------------------------ reorgs
def _run_on_a_dropped_fork(grid: Grid, rig: Rig, command: str) -> tuple[int, str]:
    """A job assigned, claimed, started on a fork that is then dropped (evm_revert): on the surviving chain it
    is PENDING again, while its execution runs here."""
    [job_id] = submit(grid.user, workflow(command), BIG)
    snap = grid.chain.snapshot()
    assign(grid, job_id)
    rig.until(job_id, JobStatus.RUNNING)
    [exec_id] = rig.executor.find(job_id)
    grid.chain.revert(snap)
    grid.reset_nonces()  # the test's own wallets (the worker's notices the reorg itself)
    assert grid.user.job(job_id).status is JobStatus.PENDING
    return job_id, exec_id


def test_reorg_job_running_here_and_assigned_here_again_runs_once(grid: Grid, rig: Rig, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dsq.worker")
    runs = tmp_path / "runs.txt"
    job_id, exec_id = _run_on_a_dropped_fork(grid, rig, f'echo "$DSQ_JOB_ID" >> {runs}; sleep 3')
    for _ in range(5):
        rig.tick()
    assert "reorg back to block" in caplog.text and "PENDING again on chain" in caplog.text
    assert rig.executor.status(exec_id).state is ExecState.RUNNING  # held, not cancelled
    assign(grid, job_id)  # the scheduler assigns it again, to us
    rig.until(job_id, JobStatus.FINISHED, timeout=30)
    assert rig.executor.find(job_id) == [exec_id]  # adopted: not run again
    assert runs.read_text() == f"{job_id}\n"
    start_block(grid.user, job_id)
    assert settlement(grid.user, job_id)["exitCode"] == 0


def test_reorg_job_running_here_but_assigned_elsewhere_is_cancelled(grid: Grid, rig: Rig) -> None:
    job_id, exec_id = _run_on_a_dropped_fork(grid, rig, "sleep 60")
    rig.tick()
    assert rig.executor.status(exec_id).state is ExecState.RUNNING
    assign(grid, job_id, grid.spare.address)
    wait(lambda: rig.executor.status(exec_id).final, 20, "cancelled", step=rig.tick)
    assert rig.executor.status(exec_id).state is ExecState.CANCELLED
    entry = rig.worker.journal.get(job_id)
    assert entry is not None and entry.phase is Phase.DONE
    assert grid.user.job(job_id).status is JobStatus.META_SCHEDULED  # untouched: the spare provider's now


def test_an_engine_briefly_down_or_empty_holds_the_job_instead_of_refusing_it(
        grid: Grid, rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    """A Slurm controller restarting answers nothing, then lists its nodes as unknown (no capacity) for a few
    seconds: the worker holds the assignment and claims it once the engine is back, never refuses it."""
    caplog.set_level(logging.INFO, logger="dsq.worker")
    real = rig.worker.executor.capacity
    answers: list[object] = [ExecutorError("sinfo: Unable to contact slurm controller"), Resources(0, 0, 0)]

    def flaky() -> Resources:
        answer = answers.pop(0) if answers else real()
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, Resources)
        return answer

    rig.worker.executor.capacity = flaky  # type: ignore[method-assign]
    [job_id] = submit(grid.user, workflow("echo back"), BIG)
    assign(grid, job_id)
    rig.tick()
    rig.tick()
    assert rig.actions == [] and grid.user.job(job_id).status is JobStatus.META_SCHEDULED
    assert "does not answer" in caplog.text and "no usable capacity" in caplog.text
    rig.until(job_id, JobStatus.FINISHED)
    assert ReportAction.REFUSE not in {a.action for a in rig.actions}


def test_reorg_that_gives_a_dropped_jobs_id_to_another_submission_runs_the_new_one(
        grid: Grid, rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A reorg drops a submission whose job runs here, and the surviving chain gives its id to another submission
    (other workflow, other resources), assigned here: the worker forgets what it cached for the dropped one (the
    workflow bytes, the checks), stops its process, and runs the new job (issue 18)."""
    caplog.set_level(logging.INFO, logger="dsq.worker")
    runs = tmp_path / "runs.txt"
    snap = grid.chain.snapshot()
    [old] = submit(grid.user, workflow(f'echo "old $DSQ_JOB_ID" >> {runs}; sleep 60'), BIG)
    assign(grid, old)
    rig.until(old, JobStatus.RUNNING)
    [old_exec] = rig.executor.find(old)
    wait(runs.exists, 10, "the old job's script running")
    grid.chain.revert(snap)  # the submission is gone: job `old` does not exist on the surviving chain
    grid.reset_nonces()
    for _ in range(3):  # the worker goes on meanwhile (the node refuses getJob for an id that does not exist)
        rig.tick()
    [new] = submit(grid.user, workflow(f'echo "new $DSQ_JOB_ID" >> {runs}', cpus=2), BIG)
    assert new == old
    assign(grid, new)
    rig.until(new, JobStatus.FINISHED, timeout=30)
    assert rig.executor.status(old_exec).state is ExecState.CANCELLED
    assert runs.read_text() == f"old {old}\nnew {new}\n"
    assert settlement(grid.user, new)["exitCode"] == 0
    assert rig.reported(new, ReportAction.REFUSE) == 0
    start_block(grid.user, new)
    [new_exec] = [e for e in rig.executor.find(new) if e != old_exec]
    assert rig.executor.status(new_exec).state is ExecState.COMPLETED
    entry = rig.worker.journal.get(new)
    assert entry is not None and (entry.phase, entry.exec_id) == (Phase.DONE, new_exec)
    assert "submission" in caplog.text


@pytest.mark.parametrize("vanishes", ["claim and start", "finish"])
def test_a_report_whose_block_vanished_before_the_follower_saw_it_is_sent_again(
        grid: Grid, rig: Rig, tmp_path: Path, vanishes: str) -> None:
    """The worker's transaction is mined in a block that a reorg removes before the worker's follower reached it
    (here: the follower waits for one confirmation). The follower sees no reorg (its checkpoint is older and
    intact), so the worker must notice on its own that the receipt's block is gone and report again, with the
    end time it first saw: else a job whose FINISH vanished stays RUNNING on chain while the journal says DONE."""
    rig.worker.follower.confirmations = 1
    runs = tmp_path / "runs.txt"
    wf = workflow(f'echo "$DSQ_JOB_ID" >> {runs}; sleep 1')
    [job] = submit(grid.user, wf, BIG)
    assign(grid, job)
    grid.chain.mine()  # the assignment confirmed: the follower delivers it
    snap = grid.chain.snapshot() if vanishes == "claim and start" else None
    rig.until(job, JobStatus.RUNNING)
    if snap is None:
        [exec_id] = rig.executor.find(job)
        wait(lambda: rig.executor.status(exec_id).final, 10, "ended")
        snap = grid.chain.snapshot()
        rig.until(job, JobStatus.FINISHED)
        assert phase_of(rig.worker, job) is Phase.DONE
    cp = rig.worker.follower.checkpoint
    assert cp is not None and cp.block < grid.chain.block_number()  # the report's block not yet followed
    grid.chain.revert(snap)
    grid.reset_nonces()
    gone_to = grid.user.job(job).status
    assert gone_to is (JobStatus.META_SCHEDULED if vanishes == "claim and start" else JobStatus.RUNNING)
    rig.until(job, JobStatus.FINISHED, timeout=30)
    assert rig.worker.follower.reorgs == 0  # the worker's own check, not the follower's
    assert runs.read_text() == f"{job}\n"  # run once
    start_block(grid.user, job)
    s = settlement(grid.user, job)
    assert s["exitCode"] == 0
    assert s["billed"] == expected_bill(grid.user, job, CPU_PRICES.rate_for(wf.resources), BIG)
    assert phase_of(rig.worker, job) is Phase.DONE


def _two_second_job_assigned(grid: Grid, rig: Rig) -> tuple[int, int]:
    """A 60 s job whose escrow buys 2 s, assigned to the rig's worker (whose follower waits one confirmation);
    returns its id and escrow."""
    rig.worker.follower.confirmations = 1
    wf = workflow("sleep 60")
    credits = credits_for(2, CPU_PRICES.rate_for(wf.resources))
    [job] = submit(grid.user, wf, credits)
    assign(grid, job)
    grid.chain.mine()
    return job, credits


def test_an_out_of_credits_report_whose_block_vanished_is_sent_again_not_turned_into_a_panic(
        grid: Grid, rig: Rig) -> None:
    """The worker stops a job whose escrow chain time used up (the engine's limit is late) and reports
    OUT_OF_CREDITS; that report's block vanishes before the follower reached it. The execution it cancelled
    itself is then no provider fault: OUT_OF_CREDITS is sent again (the provider is paid the escrow), not PANIC."""
    job, credits = _two_second_job_assigned(grid, rig)
    rig.until(job, JobStatus.RUNNING)
    [exec_id] = rig.executor.find(job)
    rig.executor.extend(exec_id, 600)  # the engine would let it run 10 minutes
    time.sleep(5.0)  # chain time uses the escrow up (2 s) and the grace (2 s)
    snap = grid.chain.snapshot()
    rig.tick()
    assert grid.user.job(job).status is JobStatus.OUT_OF_CREDITS
    assert rig.executor.status(exec_id).state is ExecState.CANCELLED  # stopped by the worker
    grid.chain.revert(snap)
    grid.reset_nonces()
    assert grid.user.job(job).status is JobStatus.RUNNING
    rig.until(job, JobStatus.OUT_OF_CREDITS, timeout=20)
    # (sent once chain time agrees again: Anvil's clock restarts from the snapshot's after a revert)
    assert rig.reported(job, ReportAction.PANIC) == 0 and rig.reported(job, ReportAction.OUT_OF_CREDITS) == 2
    assert settlement(grid.user, job)["billed"] == credits
    assert phase_of(rig.worker, job) is Phase.DONE


def test_an_out_of_credits_job_whose_start_vanished_too_is_started_again_and_paid(grid: Grid, rig: Rig) -> None:
    """As above, but the reorg also takes the claim and the START: the job is back to META_SCHEDULED with its
    execution stopped. The worker claims and STARTs it again, waits for chain time to use the escrow up again,
    and reports OUT_OF_CREDITS: the provider is paid the escrow the job used, no PANIC refunds the owner (before:
    PANIC, the owner refunded in full for work that ran)."""
    job, credits = _two_second_job_assigned(grid, rig)
    snap = grid.chain.snapshot()  # before the claim and the START
    rig.until(job, JobStatus.RUNNING)
    [exec_id] = rig.executor.find(job)
    rig.executor.extend(exec_id, 600)
    time.sleep(5.0)
    rig.tick()
    assert grid.user.job(job).status is JobStatus.OUT_OF_CREDITS
    assert rig.executor.status(exec_id).state is ExecState.CANCELLED
    grid.chain.revert(snap)
    grid.reset_nonces()
    assert grid.user.job(job).status is JobStatus.META_SCHEDULED
    rig.until(job, JobStatus.OUT_OF_CREDITS, timeout=30)
    assert rig.reported(job, ReportAction.PANIC) == 0 and rig.reported(job, ReportAction.START) == 2
    assert rig.executor.find(job) == [exec_id]  # never run again
    assert settlement(grid.user, job)["billed"] == credits
    assert phase_of(rig.worker, job) is Phase.DONE
