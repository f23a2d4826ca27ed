"""Scenarios every executor must pass, run for real (no mocks) by test_executor_local/slurm.py.

A test module subclasses :class:`ExecutorContract`, sets :attr:`ExecutorContract.timing`
and provides a class-scoped ``new_executor`` fixture: a factory returning a *new*
executor instance on the same state each call (a new instance is how a restarted
worker sees the jobs).

The time-limit scenarios (timeout, extend) are the slow ones on Slurm (whole
minutes, a 30 s enforcement timer): they run in a background thread started
before the first test of the class, while the other scenarios run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from dsq_chain.executors import ExecSpec, ExecState, ExecStatus, Executor, JobNotFoundError, map_to_chain
from dsq_chain.types import JobStatus

NewExecutor = Callable[[], Executor]
_next_job_id = iter(range(1000 + os.getpid() % 1000 * 1000, 10**9))


def job_id() -> int:
    """A fresh chain job id for each submission."""
    return next(_next_job_id)


def spec(script: str, *, limit_s: int = 120, env: dict[str, str] | None = None, **kw: Any) -> ExecSpec:
    args: dict[str, Any] = {"tasks": 1, "cpus_per_task": 1, "mem_per_cpu_mb": 64, "gpus": 0}
    args.update(kw)
    return ExecSpec(job_id=job_id(), script=script, time_limit_s=limit_s, env=env or {}, **args)


def wait_until(ex: Executor, exec_id: str, pred: Callable[[ExecStatus], bool], timeout: float, what: str) -> ExecStatus:
    deadline = time.monotonic() + timeout
    st = ex.status(exec_id)
    while not pred(st):
        if time.monotonic() > deadline:
            raise AssertionError(f"job {exec_id}: not {what} after {timeout:g} s; last status {st}")
        time.sleep(0.2)
        st = ex.status(exec_id)
    return st


def wait_final(ex: Executor, exec_id: str, timeout: float) -> ExecStatus:
    return wait_until(ex, exec_id, lambda s: s.final, timeout, "final")


def wait_running(ex: Executor, exec_id: str, timeout: float) -> ExecStatus:
    return wait_until(ex, exec_id, lambda s: s.state is ExecState.RUNNING or s.final, timeout, "running")


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def wait_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} not written within {timeout:g} s")


@dataclass(frozen=True)
class Timing:
    """How long things take on an executor."""

    limit_s: int
    """Short time limit for the timeout and extend scenarios."""
    extended_s: int
    """The limit ``extend`` sets."""
    enforce_s: float
    """Upper bound of the delay between the limit and the job's end (timer granularity + kill grace)."""
    quick_s: float
    """Upper bound for a trivial job to run and be reported final."""


@dataclass
class LimitResults:
    """What the background time-limit scenario observed."""

    timeout_status: ExecStatus
    timeout_elapsed: float
    extend_status_at_timeout: ExecStatus
    extend_status: ExecStatus
    extend_elapsed: float
    extend_stdout: str


class ExecutorContract:
    """The shared scenarios; subclasses provide ``timing`` and a class-scoped ``new_executor`` fixture."""

    timing: ClassVar[Timing]

    @pytest.fixture
    def executor(self, new_executor: NewExecutor) -> Executor:
        return new_executor()

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def limit_scenario(
        cls, new_executor: NewExecutor, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Future[LimitResults]]:
        """Timeout and extend, started before the class's first test, run in the background.

        The extend job starts first, is extended right away, then blocks until released.
        The timeout job starts after it with the same short limit: once Slurm/the supervisor
        has killed the timeout job, the extend job would have been killed too (its original
        deadline was earlier) had the extension not worked. Then it is released and must
        complete normally.
        """
        t = cls.timing
        release = tmp_path_factory.mktemp("limits") / "release"
        future: Future[LimitResults] = Future()
        submitted: list[str] = []
        submitter, watcher = new_executor(), new_executor()  # two instances: extend "from another worker"

        def scenario() -> LimitResults:
            ext_spec = spec(
                f"echo started\nwhile [ ! -e {release} ]; do sleep 0.2; done\necho released\n", limit_s=t.limit_s
            )
            ext_id = submitter.submit(ext_spec)
            submitted.append(ext_id)
            t_ext = time.monotonic()
            assert wait_running(watcher, ext_id, t.quick_s).state is ExecState.RUNNING
            watcher.extend(ext_id, t.extended_s)
            to_id = submitter.submit(spec(f"echo started\nsleep {t.limit_s * 10}\n", limit_s=t.limit_s))
            submitted.append(to_id)
            t_to = time.monotonic()
            to_status = wait_final(watcher, to_id, t.limit_s + t.enforce_s + t.quick_s)
            to_elapsed = time.monotonic() - t_to
            ext_at_timeout = watcher.status(ext_id)
            release.write_text("go\n")
            ext_status = wait_final(watcher, ext_id, t.quick_s)
            out, _ = watcher.logs(ext_id)
            return LimitResults(
                to_status, to_elapsed, ext_at_timeout, ext_status, time.monotonic() - t_ext, out.read_text()
            )

        def run() -> None:
            try:
                future.set_result(scenario())
            except BaseException as exc:
                future.set_exception(exc)

        thread = threading.Thread(target=run, name="limit-scenario", daemon=True)
        thread.start()
        try:
            yield future
        finally:
            release.write_text("go\n")
            thread.join(timeout=t.limit_s + t.enforce_s + 2 * t.quick_s)
            cleaner = new_executor()
            for exec_id in submitted:
                cleaner.cancel(exec_id)

    # --- the scenarios --------------------------------------------------------------------

    def test_success_captures_output(self, executor: Executor) -> None:
        exec_id = executor.submit(spec("echo hello from $DSQ_JOB_ID\necho oops >&2\nexit 0\n"))
        st = wait_final(executor, exec_id, self.timing.quick_s)
        assert st.state is ExecState.COMPLETED, st
        assert st.exit_code == 0 and st.started
        assert map_to_chain(st.state) is JobStatus.FINISHED
        out, err = executor.logs(exec_id)
        assert out.read_text().startswith("hello from ")
        assert err.read_text() == "oops\n"
        executor.cancel(exec_id)  # ended: no error, no change
        assert executor.status(exec_id) == st

    def test_the_end_time_is_the_engines_not_when_it_was_looked_at(self, executor: Executor, tmp_path: Path) -> None:
        """``ended_at`` is when the engine saw the job end (Slurm's ``EndTime``, the supervisor's exit time),
        the same however late and however (one status, a batch) the worker asks."""
        mark = tmp_path / "ending"
        exec_id = executor.submit(spec(f"date +%s > {mark}\nexit 0\n"))
        st = wait_final(executor, exec_id, self.timing.quick_s)
        seen = time.time()
        time.sleep(2.5)
        later = executor.status(exec_id)
        batch = executor.status_many([exec_id, exec_id + "0"]).get(exec_id) or later
        assert st.ended_at is not None, st
        assert int(mark.read_text()) - 1 <= st.ended_at <= seen, (st.ended_at, mark.read_text(), seen)
        assert later.ended_at == batch.ended_at == st.ended_at, (later, batch, st)

    def test_failure_exit_code(self, executor: Executor) -> None:
        exec_id = executor.submit(spec("echo before\nexit 3\n"))
        st = wait_final(executor, exec_id, self.timing.quick_s)
        assert (st.state, st.exit_code, st.started) == (ExecState.FAILED, 3, True), st
        assert map_to_chain(st.state) is JobStatus.FAILED
        assert executor.logs(exec_id)[0].read_text() == "before\n"

    def test_env_vars(self, executor: Executor, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DSQ_TEST_WORKER_SECRET", "private-key")
        tricky = "a b 'c' \"d\" $HOME `x` \\ ;"
        s = spec("env\n", env={"DSQ_TEST_EXTRA": tricky}, tasks=2, cpus_per_task=1, mem_per_cpu_mb=100)
        exec_id = executor.submit(s)
        st = wait_final(executor, exec_id, self.timing.quick_s)
        assert st.state is ExecState.COMPLETED, st
        env = dict(line.split("=", 1) for line in executor.logs(exec_id)[0].read_text().splitlines() if "=" in line)
        assert env["DSQ_JOB_ID"] == str(s.job_id)
        assert env["DSQ_TASKS"] == "2"
        assert env["DSQ_CPUS_PER_TASK"] == "1"
        assert env["DSQ_MEM_PER_CPU"] == "100"
        assert env["DSQ_GPUS"] == "0"
        assert env["DSQ_TEST_EXTRA"] == tricky
        assert "DSQ_TEST_WORKER_SECRET" not in env, "the worker's environment leaked into the job"
        assert "CUDA_VISIBLE_DEVICES" not in env or env["CUDA_VISIBLE_DEVICES"] == ""

    def test_cancel_running_kills_everything(self, new_executor: NewExecutor, tmp_path: Path) -> None:
        pids = tmp_path / "pids"
        submitter = new_executor()
        exec_id = submitter.submit(spec(f"sleep 300 &\necho $$ $! > {pids}\nwait\n"))
        main_pid, child_pid = map(int, wait_file(pids, self.timing.quick_s).split())
        assert pid_alive(main_pid) and pid_alive(child_pid)
        other = new_executor()  # a restarted worker cancels a job it did not start
        other.cancel(exec_id)
        st = wait_final(other, exec_id, self.timing.quick_s)
        assert st.state is ExecState.CANCELLED and st.started, st
        assert map_to_chain(st.state) is JobStatus.CANCELED
        deadline = time.monotonic() + 10
        while (pid_alive(main_pid) or pid_alive(child_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(main_pid), "the script survived cancel"
        assert not pid_alive(child_pid), "the script's background child survived cancel"
        other.cancel(exec_id)  # again: no error

    def test_new_instance_finds_running_job(self, new_executor: NewExecutor) -> None:
        first = new_executor()
        s = spec("sleep 3\necho finished\n")
        exec_id = first.submit(s)
        del first  # the worker "dies"
        restarted = new_executor()
        assert restarted.find(s.job_id) == [exec_id]
        st = restarted.status(exec_id)
        assert st.state in (ExecState.PENDING, ExecState.RUNNING), st
        st = wait_final(restarted, exec_id, self.timing.quick_s + 3)
        assert st.state is ExecState.COMPLETED, st
        assert restarted.logs(exec_id)[0].read_text() == "finished\n"

    def test_unknown_ids(self, executor: Executor) -> None:
        for bad in ("", "../../etc", "999999999-deadbeef", "424242424"):
            with pytest.raises(JobNotFoundError):
                executor.status(bad)
            executor.cancel(bad)  # no error
        assert executor.find(987654321) == []

    def test_each_submit_is_a_new_execution(self, executor: Executor) -> None:
        s = spec("true\n")
        a, b = executor.submit(s), executor.submit(s)
        assert a != b
        assert executor.find(s.job_id) == [a, b]
        for exec_id in (a, b):
            assert wait_final(executor, exec_id, self.timing.quick_s).state is ExecState.COMPLETED

    def test_submit_many_runs_each_job_once_and_status_many_agrees(self, executor: Executor) -> None:
        """A batch: each spec gets its own execution, in order, each runs exactly once; one spec the executor
        refuses takes its error in its place without stopping the others. ``status_many`` tells what
        ``status`` tells, for all of them at once."""
        specs = [spec(f"echo ran-{i} >> runs\n") for i in range(4)]
        specs.insert(2, spec("true\n", gpus=64))  # more GPUs than any test machine has
        results = executor.submit_many(specs)
        assert len(results) == 5
        bad = results.pop(2)
        if isinstance(bad, str):  # an engine that queues it anyway (Slurm): it never starts; no harm done
            executor.cancel(bad)
        else:
            assert isinstance(bad, Exception)
        ids = [r for r in results if isinstance(r, str)]
        assert len(ids) == 4 and len(set(ids)) == 4
        good = [s for i, s in enumerate(specs) if i != 2]
        assert [executor.find(s.job_id) for s in good] == [[i] for i in ids]
        finals = {i: wait_final(executor, i, self.timing.quick_s) for i in ids}
        assert all(st.state is ExecState.COMPLETED for st in finals.values()), finals
        assert executor.status_many([*ids, "not-an-id"]) == {i: executor.status(i) for i in ids}
        for n, i in enumerate(ids):  # ran once, in its own working directory
            assert (executor.logs(i)[0].parent / "work" / "runs").read_text() == f"ran-{n}\n"

    def test_capacity_and_features(self, executor: Executor) -> None:
        cap = executor.capacity()
        assert 1 <= cap.cpus <= (os.cpu_count() or 1)
        assert 0 < cap.mem_mb <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        assert cap.gpus >= 0
        assert ("gpus" in executor.features()) == (cap.gpus > 0)

    def test_timeout(self, limit_scenario: Future[LimitResults]) -> None:
        r = limit_scenario.result(timeout=self.timing.limit_s + self.timing.enforce_s + 3 * self.timing.quick_s)
        st = r.timeout_status
        assert st.state is ExecState.TIMEOUT and st.started, st
        assert map_to_chain(st.state) is JobStatus.OUT_OF_CREDITS
        assert self.timing.limit_s - 1 <= r.timeout_elapsed <= self.timing.limit_s + self.timing.enforce_s + 5

    def test_extend(self, limit_scenario: Future[LimitResults]) -> None:
        r = limit_scenario.result(timeout=self.timing.limit_s + self.timing.enforce_s + 3 * self.timing.quick_s)
        assert r.extend_status_at_timeout.state is ExecState.RUNNING, (
            f"the extended job did not outlive its original limit: {r.extend_status_at_timeout}"
        )
        assert r.extend_status.state is ExecState.COMPLETED, r.extend_status
        assert r.extend_elapsed > self.timing.limit_s
        assert r.extend_stdout == "started\nreleased\n"
