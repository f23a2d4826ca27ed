"""A provider worker's executions: what the executor runs for a job, and which execution runs which job.

* :func:`time_limit_s` / :func:`run_specs` — the run spec of a claimed job (its script, resources, and the
  time limit its escrow buys);
* :func:`submit_all` — a tick's executor submissions, in parallel;
* :class:`Executions` — the executor seen through the journal (an entry's ``exec_id``): submitting and
  journaling, an execution's state, looked up by chain id when the journal lacks it, extended after a
  top-up, stopped, its logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dsq_chain.billing import paid_seconds
from dsq_chain.errors import InputError
from dsq_chain.executors import ExecSpec, ExecState, ExecStatus, Executor, ExecutorError, JobNotFoundError
from dsq_chain.services.job_checks import Workflows
from dsq_chain.services.journal import Entry, Journal, Phase
from dsq_chain.types import Job
from dsq_chain.workloads.workflow import render_script

log = logging.getLogger("dsq.worker")

#: Executor submissions of one tick run in parallel, this many at once.
SUBMIT_PARALLELISM = 8
#: A tick stops handing new jobs to the executor after this many seconds (the rest wait for the next tick), so
#: that the jobs it started are reported RUNNING - and billed - soon after they really started.
SUBMIT_BUDGET_S = 2.0


def time_limit_s(escrow: int, rate: int) -> int:
    """Seconds of run time the escrow buys at ``rate`` credit units per minute (at least 1)."""
    if rate <= 0:
        raise InputError(f"rate must be positive, got {rate}")
    return max(1, paid_seconds(escrow, rate))


def run_specs(jobs: Sequence[Job], workflows: Workflows) -> list[tuple[Job, ExecSpec]]:
    """What the executor runs for each job; a job that cannot run is logged and left out."""
    out: list[tuple[Job, ExecSpec]] = []
    for job in jobs:
        wf = workflows.checked(job)
        if isinstance(wf, str):  # it was checked before the claim: only a lost cache gets here
            log.error("job %d: cannot run: %s", job.id, wf)
            continue
        try:
            limit = time_limit_s(job.escrow, job.rate)
            out.append((job, ExecSpec(job_id=job.id, script=render_script(wf, job.id), tasks=wf.tasks,
                                      cpus_per_task=wf.cpus_per_task, mem_per_cpu_mb=wf.mem_per_cpu,
                                      gpus=wf.gpus, time_limit_s=limit)))
        except ValueError as e:
            log.error("job %d: cannot run: %s", job.id, e)
    return out


def submit_all(executor: Executor, specs: Sequence[ExecSpec]) -> list[Future[str]]:
    """Submits every spec, in parallel when there are several; each future holds an execution id or the error."""
    if len(specs) <= 1:
        return [_run_now(executor.submit, spec) for spec in specs]
    with ThreadPoolExecutor(len(specs), thread_name_prefix="dsq-submit") as pool:
        return [pool.submit(executor.submit, spec) for spec in specs]


def _run_now(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    try:
        fut.set_result(fn(*args))
    except Exception as e:  # delivered through the future
        fut.set_exception(e)
    return fut


class Executions:
    """The executor's side of the journaled jobs (see the module docstring)."""

    def __init__(self, executor: Executor, journal: Journal) -> None:
        self.executor = executor
        self.journal = journal
        #: Claimed jobs this process knows the executor does not have (looked up once, or claimed by us).
        self.absent: set[int] = set()

    def submit(self, jobs: Sequence[Job], workflows: Workflows, on_error: Callable[[BaseException], None], *,
               deadline: float, parallelism: int = SUBMIT_PARALLELISM) -> list[tuple[Job, ExecStatus]]:
        """Hands the jobs to the executor, ``parallelism`` at once and oldest first, starting no new batch after
        ``deadline`` (``time.monotonic()``; the rest wait for the next tick); returns the state of each one
        submitted."""
        started: list[tuple[Job, ExecStatus]] = []
        todo = list(jobs)
        started_any = False
        while todo and (not started_any or time.monotonic() < deadline):
            chunk, todo = todo[:parallelism], todo[parallelism:]
            started += self._submit_chunk(chunk, workflows, on_error)
            started_any = True
        if todo:
            log.info("%d claimed job(s) wait for the next tick to be submitted", len(todo))
        return started

    def _submit_chunk(self, jobs: Sequence[Job], workflows: Workflows,
                      on_error: Callable[[BaseException], None]) -> list[tuple[Job, ExecStatus]]:
        """Submits the jobs in parallel and journals each execution (with its time limit). A failed submission
        is logged, told to ``on_error`` and retried next tick (the executor is asked for the job first)."""
        todo = run_specs(jobs, workflows)
        futures = submit_all(self.executor, [spec for _, spec in todo])
        started: list[tuple[Job, ExecStatus]] = []
        for (job, spec), fut in zip(todo, futures, strict=True):
            self.absent.discard(job.id)  # submitted, or failed somewhere in submit: look it up next time
            try:
                exec_id = fut.result()
            except Exception as e:  # retried next tick (found with find() first)
                log.error("job %d: submitting to %s failed: %s", job.id, self.executor.name, e)
                on_error(e)
                continue
            self.journal.transition(job.id, Phase.SUBMITTED, exec_id=exec_id, time_limit_s=spec.time_limit_s)
            log.info("job %d submitted to %s as %s (limit %d s)", job.id, self.executor.name, exec_id,
                     spec.time_limit_s)
            try:
                started.append((job, self.executor.status(exec_id)))
            except ExecutorError as e:
                log.error("job %d: %s", job.id, e)
        return started

    def status(self, entry: Entry) -> ExecStatus | None:
        """The state of the entry's journaled execution (None if none is journaled)."""
        if entry.exec_id is None:
            return None
        try:
            return self.executor.status(entry.exec_id)
        except JobNotFoundError as e:  # journaled, then lost by the executor: a provider-side fault
            return ExecStatus(ExecState.NODE_FAIL, None, False, f"the executor lost it: {e}")

    def adopt(self, entry: Entry) -> ExecStatus | None:
        """Asks the executor for the job by its chain id (submitted by a process that died before journaling
        it?); journals the execution found and returns its state."""
        found = [e for e in self.executor.find(entry.job_id) if e != entry.stale_exec]
        if not found:  # (an execution of an earlier assignment of the id is never adopted)
            return None
        exec_id = found[-1]
        self.journal.transition(entry.job_id, Phase.SUBMITTED if entry.phase in (Phase.NEW, Phase.CLAIMED)
                                else entry.phase, exec_id=exec_id)
        return self.executor.status(exec_id)

    def extend_if_topped_up(self, entry: Entry, job: Job) -> None:
        """Raises the execution's time limit to what the job's (topped-up) escrow buys now."""
        limit = time_limit_s(job.escrow, job.rate)
        if entry.exec_id and limit > entry.time_limit_s:
            self.executor.extend(entry.exec_id, limit)
            self.journal.update(job.id, time_limit_s=limit)
            log.info("job %d topped up: limit %d s -> %d s", job.id, entry.time_limit_s, limit)

    def cancel(self, entry: Entry, status: ExecStatus | None, reason: str) -> None:
        """Cancels the entry's execution if it still runs (``status``: its state, as last read); forgets the job."""
        if entry.exec_id and status is not None and not status.state.is_final:
            self.executor.cancel(entry.exec_id)
            log.info("job %d: %s; cancelled %s", entry.job_id, reason, entry.exec_id)
        self.absent.discard(entry.job_id)

    def stop(self, job_id: int) -> None:
        """Ends the execution of a job that is final on chain (out of credits, panicked) if it still runs."""
        entry = self.journal.get(job_id)
        if entry is None or entry.exec_id is None:
            return
        try:
            if not self.executor.status(entry.exec_id).state.is_final:
                self.executor.cancel(entry.exec_id)
                log.info("job %d: stopped %s", job_id, entry.exec_id)
        except ExecutorError as e:
            log.error("job %d: could not stop %s: %s", job_id, entry.exec_id, e)

    def logs(self, job_id: int, state_dir: Path) -> tuple[Path, Path]:
        """stdout and stderr files of a job this worker ran."""
        entry = self.journal.get(job_id)
        exec_id = entry.exec_id if entry else None
        if exec_id is None:
            found = self.executor.find(job_id)
            if not found:
                raise InputError(f"job {job_id} never ran on this worker (state dir {state_dir})")
            exec_id = found[-1]
        return self.executor.logs(exec_id)
