"""The local process executor, for real: the shared scenarios plus worker/supervisor deaths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsq_chain.executors import (
    ExecSpec,
    ExecState,
    ExecStatus,
    ExecutorError,
    LocalExecutor,
    SlurmExecutor,
    available_executors,
    make_executor,
    map_to_chain,
    register_executor,
)
from dsq_chain.types import JobStatus, Resources
from tests.executor_contract import (
    ExecutorContract,
    NewExecutor,
    Timing,
    pid_alive,
    spec,
    wait_file,
    wait_final,
    wait_running,
)

GRACE_S = 1.0


class TestLocalExecutor(ExecutorContract):
    timing = Timing(limit_s=2, extended_s=6, enforce_s=GRACE_S + 2, quick_s=15)

    @pytest.fixture(scope="class")
    @classmethod
    def new_executor(cls, tmp_path_factory: pytest.TempPathFactory) -> NewExecutor:
        root = tmp_path_factory.mktemp("local-exec")
        return lambda: LocalExecutor(root, kill_grace_s=GRACE_S)


@pytest.fixture
def ex(tmp_path: Path) -> LocalExecutor:
    return LocalExecutor(tmp_path / "state", kill_grace_s=GRACE_S)


def test_job_survives_worker_kill_9(tmp_path: Path) -> None:
    """A worker process submits a job and is killed with SIGKILL; a new executor sees the job finish."""
    root = tmp_path / "state"
    code = (
        "import os, signal, sys\n"
        "from dsq_chain.executors import LocalExecutor, ExecSpec\n"
        f"ex = LocalExecutor({str(root)!r})\n"
        "eid = ex.submit(ExecSpec(7, 'sleep 2; echo survived', 1, 1, 64, 0, 60))\n"
        "print(eid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    exec_id = proc.stdout.strip()
    ex = LocalExecutor(root)
    assert ex.find(7) == [exec_id]
    assert ex.status(exec_id).state is ExecState.RUNNING
    st = wait_final(ex, exec_id, 15)
    assert st.state is ExecState.COMPLETED, st
    assert ex.logs(exec_id)[0].read_text() == "survived\n"


def test_supervisor_death_is_node_fail(ex: LocalExecutor, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    exec_id = ex.submit(spec(f"sleep 300 &\necho $$ $! > {pids}\nwait\n"))
    main_pid, child_pid = map(int, wait_file(pids, 10).split())
    sup = json.loads((ex.job_dir(exec_id) / "supervisor").read_text())
    os.kill(sup["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(sup["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    st = ex.status(exec_id)
    assert st.state is ExecState.NODE_FAIL and st.started, st
    assert "supervisor" in st.reason
    assert map_to_chain(st.state) is JobStatus.PANICKED
    deadline = time.monotonic() + 5
    while (pid_alive(main_pid) or pid_alive(child_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(main_pid) and not pid_alive(child_pid), "orphaned job processes were not killed"
    assert ex.status(exec_id) == st  # recorded: stable from now on


def test_supervisor_sigterm_is_node_fail(ex: LocalExecutor) -> None:
    exec_id = ex.submit(spec("sleep 300\n"))
    wait_running(ex, exec_id, 10)
    sup = json.loads((ex.job_dir(exec_id) / "supervisor").read_text())
    os.kill(sup["pid"], signal.SIGTERM)
    st = wait_final(ex, exec_id, 10)
    assert st.state is ExecState.NODE_FAIL and "SIGTERM" in st.reason, st


def test_timeout_escalates_to_sigkill(ex: LocalExecutor) -> None:
    exec_id = ex.submit(spec("trap '' TERM\nsleep 30\n", limit_s=1))
    t0 = time.monotonic()
    st = wait_final(ex, exec_id, 15)
    elapsed = time.monotonic() - t0
    assert st.state is ExecState.TIMEOUT, st
    assert st.exit_code == 128 + signal.SIGKILL
    assert 1 + GRACE_S - 0.5 <= elapsed <= 1 + GRACE_S + 3


def test_leftover_background_processes_are_killed(ex: LocalExecutor, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg"
    exec_id = ex.submit(spec(f"sleep 300 &\necho $! > {pidfile}\nexit 0\n"))
    st = wait_final(ex, exec_id, 10)
    assert st.state is ExecState.COMPLETED, st
    bg = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while pid_alive(bg) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(bg)


def test_killed_by_signal_is_failed(ex: LocalExecutor) -> None:
    st = wait_final(ex, ex.submit(spec("kill -SEGV $$\n")), 10)
    assert (st.state, st.exit_code) == (ExecState.FAILED, 128 + signal.SIGSEGV), st
    assert "SIGSEGV" in st.reason


def test_extend_after_end_is_noop_and_limit_is_validated(ex: LocalExecutor) -> None:
    exec_id = ex.submit(spec("true\n"))
    st = wait_final(ex, exec_id, 10)
    ex.extend(exec_id, 100)
    assert ex.status(exec_id) == st
    with pytest.raises(ValueError):
        ex.extend(exec_id, 0)


def test_gpus_are_allocated_and_refused(tmp_path: Path) -> None:
    none = LocalExecutor(tmp_path / "a", gpu_ids=[])
    assert none.capacity().gpus == 0 and "gpus" not in none.features()
    with pytest.raises(ExecutorError, match="needs 1 GPU"):
        none.submit(spec("true\n", gpus=1))
    two = LocalExecutor(tmp_path / "b", gpu_ids=[0, 1], kill_grace_s=GRACE_S)
    assert two.capacity().gpus == 2 and "gpus" in two.features()
    a = two.submit(spec("echo $CUDA_VISIBLE_DEVICES; sleep 300\n", gpus=1))
    b = two.submit(spec("echo $CUDA_VISIBLE_DEVICES; sleep 300\n", gpus=1))
    with pytest.raises(ExecutorError, match="0 of 2 free"):
        two.submit(spec("true\n", gpus=1))
    wait_file(two.logs(a)[0], 10)
    wait_file(two.logs(b)[0], 10)
    assert {two.logs(a)[0].read_text(), two.logs(b)[0].read_text()} == {"0\n", "1\n"}
    two.cancel(a)
    c = two.submit(spec("echo $CUDA_VISIBLE_DEVICES\n", gpus=1))
    assert wait_final(two, c, 10).state is ExecState.COMPLETED
    assert two.logs(c)[0].read_text() == two.logs(a)[0].read_text()
    two.cancel(b)


def test_remove(ex: LocalExecutor) -> None:
    exec_id = ex.submit(spec("sleep 300\n"))
    with pytest.raises(ExecutorError, match="has not ended"):
        ex.remove(exec_id)
    ex.cancel(exec_id)
    ex.remove(exec_id)
    assert ex.find(int(exec_id.split("-")[0])) == []


def test_capacity_matches_machine(ex: LocalExecutor) -> None:
    cap = ex.capacity()
    assert cap.cpus <= len(os.sched_getaffinity(0))
    with open("/proc/meminfo") as fh:
        total_mb = int(fh.readline().split()[1]) // 1024
    assert 0 < cap.mem_mb <= total_mb


# --- interface-level checks (no processes) -----------------------------------------------------


def test_make_executor(tmp_path: Path) -> None:
    assert isinstance(make_executor("local", root=tmp_path / "l"), LocalExecutor)
    assert isinstance(make_executor("slurm", root=tmp_path / "s"), SlurmExecutor)
    with pytest.raises(ExecutorError, match=r"unknown executor 'k8s'.*local, slurm"):
        make_executor("k8s")
    with pytest.raises(ValueError, match="already registered"):
        register_executor("local", LocalExecutor)
    assert {"local", "slurm"} <= set(available_executors())


def test_map_to_chain_table() -> None:
    expected = {
        ExecState.PENDING: None,
        ExecState.RUNNING: None,
        ExecState.UNKNOWN: None,
        ExecState.COMPLETED: JobStatus.FINISHED,
        ExecState.FAILED: JobStatus.FAILED,
        ExecState.OUT_OF_MEMORY: JobStatus.FAILED,
        ExecState.TIMEOUT: JobStatus.OUT_OF_CREDITS,
        ExecState.CANCELLED: JobStatus.CANCELED,
        ExecState.NODE_FAIL: JobStatus.PANICKED,
        ExecState.BOOT_FAIL: JobStatus.PANICKED,
        ExecState.PREEMPTED: JobStatus.PANICKED,
    }
    assert set(expected) == set(ExecState)
    for state, outcome in expected.items():
        assert map_to_chain(state) is outcome
        assert state.is_final == (outcome is not None)
        assert ExecStatus(state, None, False).chain_status is outcome


@pytest.mark.parametrize(
    ("field", "value"),
    [("time_limit_s", 0), ("tasks", 0), ("cpus_per_task", 0), ("gpus", -1), ("mem_per_cpu_mb", -1), ("job_id", -1)],
)
def test_spec_validation(field: str, value: int) -> None:
    kw = {"job_id": 1, "script": "true", "tasks": 1, "cpus_per_task": 1, "mem_per_cpu_mb": 1, "gpus": 0}
    kw["time_limit_s"] = 1
    kw[field] = value
    with pytest.raises(ValueError, match=field):
        ExecSpec(**kw)  # type: ignore[arg-type]


def test_spec_env_is_checked_and_frozen() -> None:
    with pytest.raises(ValueError, match="invalid environment variable name"):
        ExecSpec(1, "true", 1, 1, 1, 0, 1, env={"BAD-NAME": "x"})
    src = {"A": "1"}
    s = ExecSpec(1, "true", 2, 3, 100, 1, 1, env=src)
    src["A"] = "2"
    assert s.env["A"] == "1"
    with pytest.raises(TypeError):
        s.env["A"] = "3"  # type: ignore[index]
    assert s.resources == Resources(cpus=6, gpus=1, mem_mb=600)
    assert s.job_env()["DSQ_JOB_ID"] == "1" and s.job_env()["A"] == "1"
    hash(s)
