"""The provider worker on a real Slurm (the ``slurm_cluster`` fixture installs and starts one): the local
executor's scenarios, through sbatch / scontrol / scancel / sacct.

Slurm's limits are whole minutes, enforced by a 30 s timer: the escrow here buys a few seconds (a 1 minute
Slurm limit) and the worker itself ends the job once chain time says the escrow is used up (then scancel);
a top-up raises the Slurm limit with ``scontrol update TimeLimit``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsq_chain.executors import ExecState, SlurmExecutor
from dsq_chain.executors.slurm import slurm_minutes
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import AnvilNode
from dsq_chain.services.journal import Phase
from dsq_chain.services.worker import time_limit_s
from dsq_chain.types import CREDIT_UNIT, JobStatus, ReportAction
from tests.grid import CPU_PRICES, Grid
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)
from tests.worker_scenarios import (
    Rig,
    cancel_all,
    credits_for,
    expected_bill,
    job_ids_under,
    new_rig,
    phase_of,
    settlement,
    spawn_runner,
    start_block,
    submit,
    wait,
    workflow,
)

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

CPU_KEY = 5
BIG = 10 * CREDIT_UNIT


@pytest.fixture
def srig(grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path,
         slurm_cluster: SlurmCluster) -> Iterator[Rig]:  # noqa: F811
    root = tmp_path / "slurm"

    def new_executor() -> SlurmExecutor:
        return SlurmExecutor(root, slurm_conf=slurm_cluster.conf, command_timeout_s=5)

    r = new_rig(anvil.rpc_url, keys[CPU_KEY], grid.deployment, grid.user, new_executor, tmp_path / "worker")
    try:
        yield r
    finally:
        r.worker.close()
        cancel_all(new_executor(), job_ids_under(root))


def slurm_job(cluster: SlurmCluster, exec_id: str) -> str:
    return cluster.command("scontrol", "show", "job", "-o", exec_id).stdout


def test_success_and_failure(grid: Grid, srig: Rig, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    ok_wf = workflow('echo "hello from $DSQ_JOB_ID on $SLURM_JOB_ID"')
    [ok] = submit(grid.user, ok_wf, BIG)
    [bad] = submit(grid.user, workflow("echo about to fail >&2; exit 3"), BIG)
    grid.scheduler.assign_batch([(ok, grid.cpu.address, ()), (bad, grid.cpu.address, ())])
    srig.until(ok, JobStatus.FINISHED)
    srig.until(bad, JobStatus.FAILED)
    [ok_exec] = srig.executor.find(ok)
    assert srig.worker.logs(ok)[0].read_text() == f"hello from {ok} on {ok_exec}\n"
    # Each step is an srun step: srun adds its own line about the failing task, in any order.
    err_lines = srig.worker.logs(bad)[1].read_text().splitlines()
    assert [ln for ln in err_lines if not ln.startswith("srun: ")] == ["about to fail"]
    assert "srun: error: " in "\n".join(err_lines) and "Exited with exit code 3" in "\n".join(err_lines)
    assert settlement(grid.user, ok)["exitCode"] == 0
    assert settlement(grid.user, bad)["exitCode"] == 3
    info = slurm_job(slurm_cluster, ok_exec)
    limit = time_limit_s(BIG, CPU_PRICES.rate_for(ok_wf.resources))
    assert f"JobName=dsq-{ok} " in info and "JobState=COMPLETED" in info
    assert f"TimeLimit={_slurm_time(slurm_minutes(limit))}" in info
    rate = CPU_PRICES.rate_for(ok_wf.resources)
    assert settlement(grid.user, ok)["billed"] == expected_bill(grid.user, ok, rate, BIG)


def test_escrow_used_up_out_of_credits_then_scancel(grid: Grid, srig: Rig,
                                                    slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    wf = workflow("echo started; sleep 300")
    rate = CPU_PRICES.rate_for(wf.resources)
    credits = credits_for(4, rate)
    [job_id] = submit(grid.user, wf, credits)
    grid.scheduler.assign(job_id, grid.cpu.address)
    srig.until(job_id, JobStatus.RUNNING)
    [exec_id] = srig.executor.find(job_id)
    assert "TimeLimit=00:01:00" in slurm_job(slurm_cluster, exec_id)  # Slurm would let it run 60-90 s
    t0 = time.monotonic()
    srig.until(job_id, JobStatus.OUT_OF_CREDITS, timeout=30)
    assert time.monotonic() - t0 < 15
    s = settlement(grid.user, job_id)
    assert (s["billed"], s["refunded"]) == (credits, 0)
    wait(lambda: srig.executor.status(exec_id).final, 20, "scancelled")
    assert srig.executor.status(exec_id).state is ExecState.CANCELLED
    assert srig.worker.logs(job_id)[0].read_text() == "started\n"


def test_owner_cancel_scancels(grid: Grid, srig: Rig, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    wf = workflow("sleep 300")
    [job_id] = submit(grid.user, wf, BIG)
    grid.scheduler.assign(job_id, grid.cpu.address)
    srig.until(job_id, JobStatus.RUNNING)
    [exec_id] = srig.executor.find(job_id)
    time.sleep(1.5)
    grid.user.cancel(job_id)
    wait(lambda: phase_of(srig.worker, job_id) is Phase.DONE, 30, "dropped", step=srig.tick)
    wait(lambda: srig.executor.status(exec_id).final, 20, "scancelled")
    assert srig.executor.status(exec_id).state is ExecState.CANCELLED
    assert "JobState=CANCELLED" in slurm_job(slurm_cluster, exec_id)
    s = settlement(grid.user, job_id)
    assert s["status"] == JobStatus.CANCELED
    assert s["billed"] == expected_bill(grid.user, job_id, CPU_PRICES.rate_for(wf.resources), BIG)


def test_top_up_extends_the_slurm_limit(grid: Grid, srig: Rig, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    """~5 s of escrow for a 12 s job: without the top-up the worker would end it at ~7 s."""
    wf = workflow("sleep 12; echo done")
    rate = CPU_PRICES.rate_for(wf.resources)
    credits = credits_for(5, rate)
    [job_id] = submit(grid.user, wf, credits)
    grid.scheduler.assign(job_id, grid.cpu.address)
    srig.until(job_id, JobStatus.RUNNING)
    [exec_id] = srig.executor.find(job_id)
    assert "TimeLimit=00:01:00" in slurm_job(slurm_cluster, exec_id)
    time.sleep(1.0)
    extra = credits_for(150, rate)
    grid.user.top_up(job_id, Credits(units=extra))
    new_limit = time_limit_s(credits + extra, rate)
    wait(lambda: f"TimeLimit={_slurm_time(slurm_minutes(new_limit))}" in slurm_job(slurm_cluster, exec_id), 10,
         "extended", step=srig.tick)
    srig.until(job_id, JobStatus.FINISHED, timeout=40)
    assert srig.worker.logs(job_id)[0].read_text() == "done\n"
    assert settlement(grid.user, job_id)["billed"] > credits


def test_operator_scancel_of_a_queued_job_panics(grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path,
                                                 slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    """A job held in Slurm's queue (never started) is cancelled by an operator: it cannot start any more, so the
    worker panics it (owner refunded) rather than leaving it SCHEDULED forever."""
    root = tmp_path / "slurm"
    r = new_rig(anvil.rpc_url, keys[CPU_KEY], grid.deployment, grid.user,
                lambda: SlurmExecutor(root, slurm_conf=slurm_cluster.conf, extra_args=["--hold"]), tmp_path / "w")
    try:
        [job_id] = submit(grid.user, workflow("echo never"), BIG)
        grid.scheduler.assign(job_id, grid.cpu.address)
        for _ in range(5):
            r.tick()
        [exec_id] = r.executor.find(job_id)
        assert r.executor.status(exec_id).state is ExecState.PENDING
        assert grid.user.job(job_id).status is JobStatus.SCHEDULED  # not reported RUNNING: it has not started
        slurm_cluster.command("scancel", exec_id)
        r.until(job_id, JobStatus.PANICKED, timeout=20)
        assert settlement(grid.user, job_id)["refunded"] == BIG
        assert "ended before it started" in r.actions[-1].reason
    finally:
        r.worker.close()
        cancel_all(SlurmExecutor(root, slurm_conf=slurm_cluster.conf), job_ids_under(root))


def test_slurmctld_unresponsive_then_back(grid: Grid, srig: Rig, slurm_cluster: SlurmCluster,  # noqa: F811
                                          caplog: pytest.LogCaptureFixture) -> None:
    """slurmctld stops answering while a job runs (SIGSTOP): Slurm commands time out, the worker logs it and keeps
    ticking; once slurmctld is back (SIGCONT) the job's outcome is reported."""
    [job_id] = submit(grid.user, workflow("sleep 4; echo ok"), BIG)
    grid.scheduler.assign(job_id, grid.cpu.address)
    srig.until(job_id, JobStatus.RUNNING)
    ctld = slurm_cluster.procs["slurmctld"]
    os.kill(ctld.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 8:
            srig.tick()  # must not raise
        assert grid.user.job(job_id).status is JobStatus.RUNNING
        assert f"job {job_id}: `" in caplog.text and "timed out" in caplog.text  # the scontrol call, logged
    finally:
        os.kill(ctld.pid, signal.SIGCONT)
    # slurmd retries the completion it could not deliver on its own schedule: up to a minute or more on a
    # loaded 2-core machine before slurmctld leaves RUNNING (seen once in CI at 60 s).
    srig.until(job_id, JobStatus.FINISHED, timeout=150)
    assert srig.worker.logs(job_id)[0].read_text() == "ok\n"


@pytest.mark.parametrize("crash_at", ["submitted", "running"])
def test_killed_and_restarted_on_slurm(grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path,
                                       slurm_cluster: SlurmCluster, crash_at: str) -> None:  # noqa: F811
    """The worker process is SIGKILLed right after sbatch (before journaling the Slurm id), or while the job runs;
    restarted on the same state it adopts the Slurm job: it runs once, settles once."""
    runs = tmp_path / "runs.txt"
    wf = workflow(f'echo "$DSQ_JOB_ID" >> {runs}; sleep 3; echo done')
    dep_file, state, root, log = tmp_path / "dep.json", tmp_path / "worker", tmp_path / "slurm", tmp_path / "w.log"
    grid.deployment.save(dep_file)
    [job_id] = submit(grid.user, wf, BIG)
    grid.scheduler.assign(job_id, grid.cpu.address)

    def runner(crash: str | None) -> subprocess.Popen[bytes]:
        return spawn_runner(rpc_url=anvil.rpc_url, key=keys[CPU_KEY], deployment_file=dep_file, state_dir=state,
                            executor="slurm", exec_root=root, log_file=log, crash_at=crash,
                            slurm_conf=slurm_cluster.conf)

    first = runner("submitted" if crash_at == "submitted" else None)
    second = None
    try:
        if crash_at == "running":
            wait(lambda: grid.user.job(job_id).status is JobStatus.RUNNING, 30, "running")
            first.send_signal(signal.SIGKILL)
        assert first.wait(30) == -signal.SIGKILL, log.read_text()
        second = runner(None)
        grid.user.wait_for(job_id, timeout=60)
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(15)
        cancel_all(SlurmExecutor(root, slurm_conf=slurm_cluster.conf), [job_id])
    text = log.read_text()
    assert grid.user.job(job_id).status is JobStatus.FINISHED, text
    assert settlement(grid.user, job_id)["exitCode"] == 0
    start_block(grid.user, job_id)
    assert runs.read_text() == f"{job_id}\n", text
    assert len(SlurmExecutor(root, slurm_conf=slurm_cluster.conf).find(job_id)) == 1
    assert ReportAction.PANIC.name not in text, text


def _slurm_time(minutes: int) -> str:
    """Slurm's display of a limit: ``00:01:00``, ``1-00:00:00``..."""
    days, rem = divmod(minutes, 24 * 60)
    hours, mins = divmod(rem, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"
