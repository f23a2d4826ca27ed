"""The provider worker (the "supervisor"): turns on-chain assignments into running work and reports
every change back on chain.

It follows only its own provider's events (indexed topics) into a SQLite journal, and each tick
*reconciles* every active job: it reads the job's on-chain record (one batched call for all of
them) and the executor's state, and decides what to do from both — claim or refuse, submit, report
RUNNING, extend after a top-up, cancel after a chain-side cancel, report the outcome. All the
reports of one tick go in one ``report`` transaction. Because every decision is made from the
chain and the executor, not from memory, a worker killed at any point and restarted neither runs
a job twice (the executor is asked for the job by its chain id before submitting) nor loses one,
and reports what happened while it was down. While the RPC node is unreachable, jobs keep running
under the executor's own time limits and their outcomes are reported once it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from eth_utils.crypto import keccak

from .chain import Wallet
from .client import ProviderClient
from .deployment import Deployment
from .errors import ChainUnavailable, ContractError, DsqError, InputError, TransactionFailed
from .events import ChainEvent
from .executors import ExecSpec, ExecState, ExecStatus, Executor, map_to_chain
from .follower import EventFollower
from .journal import Entry, Journal, Phase
from .metrics import WorkerMetrics
from .types import Job, JobStatus, Prices, ReportAction, Resources
from .workflow import Workflow, WorkflowError, from_canonical, render_script

log = logging.getLogger("dsq.worker")

#: After this many seconds of EscrowNotExhausted following an executor timeout, finish instead.
OUT_OF_CREDITS_GRACE_S = 30.0
#: A report that keeps reverting alone is given up after this many tries (the reason is journaled).
MAX_FAILURES = 5


@dataclass(frozen=True, slots=True)
class Action:
    job_id: int
    action: ReportAction
    exit_code: int = 0
    reason: str = ""


class ProviderWorker:
    """Runs a provider's jobs on an :class:`~dsq_chain.executors.Executor`; a library object first."""

    def __init__(
        self,
        wallet: Wallet,
        deployment: Deployment,
        executor: Executor,
        state_dir: str | Path,
        *,
        poll_interval: float = 0.2,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.wallet = wallet
        self.deployment = deployment
        self.executor = executor
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.client = ProviderClient(wallet, deployment)
        self.address = wallet.address
        self.poll_interval = poll_interval
        self.metrics = metrics
        self.follower = EventFollower(
            wallet.chain, deployment, self.state_dir / "worker.sqlite", name=f"worker-{self.address}",
            filters=None, handlers=[self],
        )
        self.follower.filters = self.follower.decoder.provider_filters(self.address)
        self.journal = Journal(self.follower.db)
        self._workflows: dict[int, bytes] = {}
        self._ooc_since: dict[int, float] = {}
        self.chain_up = True

    # -- registration --------------------------------------------------------------------------
    def register(self, prices: Prices, labels: dict[str, str] | None = None,
                 hardware: Resources | None = None) -> Resources:
        """Registers this provider with the detected hardware (or less); refuses to claim more."""
        detected = self.executor.capacity()
        hw = hardware or detected
        if not hw.fits_in(detected):
            raise InputError(
                f"refusing to register {hw.cpus} cpus, {hw.gpus} gpus, {hw.mem_mb} MB: the {self.executor.name} "
                f"executor detects {detected.cpus} cpus, {detected.gpus} gpus, {detected.mem_mb} MB"
            )
        self.client.register(hw, prices, labels)
        return hw

    # -- events ----------------------------------------------------------------------------------
    def on_event(self, event: ChainEvent) -> None:
        if event.name == "JobAssigned" and event.args["provider"] == self.address:
            job_id = int(event.args["jobId"])
            if self.journal.add(job_id):
                log.info("job %d assigned to us at %d units/min", job_id, event.args["rate"])

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Ticks until ``stop`` is set."""
        while not stop.is_set():
            self.tick()
            stop.wait(self.poll_interval)

    def tick(self) -> list[Action]:
        """Follows events, reconciles every active job, sends this tick's reports in one transaction."""
        try:
            self.follower.poll()
            self.chain_up = True
        except (ChainUnavailable, TransactionFailed) as e:
            if self.chain_up:
                log.warning("chain unreachable (%s): jobs keep running, reports wait", e)
            self.chain_up = False
            self._count_error(e)
        entries = self.journal.active()
        if not entries:
            self._gauge()
            return []
        jobs: dict[int, Job] = {}
        if self.chain_up:
            try:
                jobs = {j.id: j for j in self.client.jobs(e.job_id for e in entries)}
            except (ChainUnavailable, TransactionFailed, OSError) as e:
                self.chain_up = False
                self._count_error(e)
        actions: list[Action] = []
        for entry in entries:
            try:
                action = self._reconcile(entry, jobs.get(entry.job_id))
            except DsqError as e:
                log.error("job %d: %s", entry.job_id, e)
                continue
            if action is not None:
                actions.append(action)
        if actions and self.chain_up:
            self._send(actions)
        self._gauge()
        return actions

    # -- decisions -------------------------------------------------------------------------------
    def _reconcile(self, entry: Entry, job: Job | None) -> Action | None:
        status = self._exec_status(entry)
        if job is None:  # chain unknown right now: only keep the executor's side moving
            return None
        if job.provider != self.address or job.status is JobStatus.PENDING:
            self._drop(entry, status, "assignment released (refused or claim timed out)")
            return None
        if job.status.is_final:
            self._drop(entry, status, f"final on chain: {job.status.name}")
            return None
        if job.status is JobStatus.META_SCHEDULED:
            problem = self._validate(job)
            if problem:
                log.warning("job %d refused: %s", job.id, problem)
                if self.metrics:
                    self.metrics.refused.labels(reason=problem.split(":")[0]).inc()
                return Action(job.id, ReportAction.REFUSE, reason=problem)
            return Action(job.id, ReportAction.CLAIM)
        if job.status is JobStatus.SCHEDULED:
            if entry.phase is Phase.NEW:
                self.journal.update(job.id, phase=Phase.CLAIMED, chain_status=job.status.name)
            status = status or self._submit(entry, job)
            if status is not None and status.started:
                return Action(job.id, ReportAction.START)
            return None
        # RUNNING on chain
        if status is None:
            status = self._adopt(entry)
            if status is None:
                return Action(job.id, ReportAction.PANIC, reason="the executor has no trace of this job")
        if entry.phase is not Phase.RUNNING:
            self.journal.update(job.id, phase=Phase.RUNNING, chain_status=job.status.name)
        if not status.state.is_final:
            self._extend_if_topped_up(entry, job)
            return None
        return self._outcome(job, status)

    def _outcome(self, job: Job, status: ExecStatus) -> Action:
        outcome = map_to_chain(status.state)
        code = status.exit_code if status.exit_code is not None else 1
        if outcome is JobStatus.FINISHED:
            code = 0
        elif outcome is JobStatus.FAILED and code == 0:
            code = 1  # failed without an exit status (e.g. out of memory): never report success
        self.journal.update(job.id, exit_code=code)
        if outcome in (JobStatus.FINISHED, JobStatus.FAILED):
            return Action(job.id, ReportAction.FINISH, code)
        if outcome is JobStatus.OUT_OF_CREDITS:
            first = self._ooc_since.setdefault(job.id, time.monotonic())
            if time.monotonic() - first > OUT_OF_CREDITS_GRACE_S:
                # The chain says the escrow still pays (a top-up came too late): bill the time used.
                return Action(job.id, ReportAction.FINISH, code or 124, reason="killed at its limit")
            return Action(job.id, ReportAction.OUT_OF_CREDITS)
        if outcome is JobStatus.CANCELED:
            # Only the owner cancels on chain; an executor-side cancel we did not ask for is our fault.
            return Action(job.id, ReportAction.PANIC, reason="cancelled on the executor side")
        return Action(job.id, ReportAction.PANIC, reason=f"executor state {status.state}")

    def _validate(self, job: Job) -> str | None:
        """Why this worker cannot run the job, or None."""
        try:
            raw = self._workflow_bytes(job)
        except LookupError as e:
            return f"workflow not found: {e}"
        if keccak(raw) != job.workflow_hash:
            return "workflow hash mismatch: the submitted bytes do not hash to the on-chain hash"
        try:
            wf = from_canonical(raw)
        except WorkflowError as e:
            return f"workflow does not parse: {e}"
        if wf.resources != job.resources:
            return f"resources mismatch: workflow asks {wf.resources}, chain request {job.resources}"
        capacity = self.executor.capacity()
        if not job.resources.fits_in(capacity):
            return f"resources: needs {job.resources}, this machine has {capacity}"
        if wf.gpus and "gpus" not in self.executor.features():
            return "unsupported feature: gpus"
        return None

    def _workflow_bytes(self, job: Job) -> bytes:
        head = job.head_id or job.id
        raw = self._workflows.get(head)
        if raw is None:
            logs = self.client.market.events.JobSubmitted().get_logs(
                from_block=self.deployment.block, argument_filters={"firstJobId": head}
            )
            if not logs:
                raise LookupError(f"no JobSubmitted event for job {head}")
            raw = self._workflows[head] = bytes(logs[0]["args"]["workflow"])
        return raw

    def _workflow(self, job: Job) -> Workflow:
        return from_canonical(self._workflow_bytes(job))

    def _submit(self, entry: Entry, job: Job) -> ExecStatus | None:
        """Hands the job to the executor, unless it already has it (a restart after submit)."""
        adopted = self._adopt(entry)
        if adopted is not None:
            return adopted
        wf = self._workflow(job)
        limit = time_limit_s(job.escrow, job.rate)
        spec = ExecSpec(job_id=job.id, script=render_script(wf, job.id), tasks=wf.tasks,
                        cpus_per_task=wf.cpus_per_task, mem_per_cpu_mb=wf.mem_per_cpu, gpus=wf.gpus,
                        time_limit_s=limit)
        exec_id = self.executor.submit(spec)
        self.journal.update(job.id, phase=Phase.SUBMITTED, exec_id=exec_id, time_limit_s=limit)
        log.info("job %d submitted to %s as %s (limit %d s)", job.id, self.executor.name, exec_id, limit)
        return self.executor.status(exec_id)

    def _adopt(self, entry: Entry) -> ExecStatus | None:
        found = self.executor.find(entry.job_id)
        if not found:
            return None
        exec_id = found[-1]
        self.journal.update(entry.job_id, exec_id=exec_id, phase=Phase.SUBMITTED if entry.phase in
                            (Phase.NEW, Phase.CLAIMED) else entry.phase)
        return self.executor.status(exec_id)

    def _exec_status(self, entry: Entry) -> ExecStatus | None:
        if entry.exec_id is None:
            return None
        return self.executor.status(entry.exec_id)

    def _extend_if_topped_up(self, entry: Entry, job: Job) -> None:
        limit = time_limit_s(job.escrow, job.rate)
        if entry.exec_id and limit > entry.time_limit_s:
            self.executor.extend(entry.exec_id, limit)
            self.journal.update(job.id, time_limit_s=limit)
            log.info("job %d topped up: limit %d s -> %d s", job.id, entry.time_limit_s, limit)

    def _drop(self, entry: Entry, status: ExecStatus | None, reason: str) -> None:
        if entry.exec_id and status is not None and not status.state.is_final:
            self.executor.cancel(entry.exec_id)
            log.info("job %d: %s; cancelled %s", entry.job_id, reason, entry.exec_id)
        self.journal.update(entry.job_id, phase=Phase.DONE, reason=reason)
        self._ooc_since.pop(entry.job_id, None)

    # -- sending ---------------------------------------------------------------------------------
    def _send(self, actions: list[Action]) -> None:
        rows = [(a.job_id, a.action, a.exit_code) for a in actions]
        t0 = time.monotonic()
        try:
            self.client.report(rows)
            self._sent(actions, t0)
            return
        except ContractError as e:
            if len(actions) == 1:
                self._failed(actions[0], e)
                return
            log.info("batched report of %d reverted (%s); sending one by one", len(actions), e)
        except (ChainUnavailable, TransactionFailed) as e:
            self.chain_up = False
            self.wallet.reset_nonce()
            self._count_error(e)
            return
        for a in actions:
            try:
                self.client.report([(a.job_id, a.action, a.exit_code)])
                self._sent([a], t0)
            except ContractError as e:
                self._failed(a, e)
            except (ChainUnavailable, TransactionFailed) as e:
                self.wallet.reset_nonce()
                self._count_error(e)
                return

    def _sent(self, actions: list[Action], t0: float) -> None:
        elapsed = time.monotonic() - t0
        for a in actions:
            if a.action is ReportAction.CLAIM:
                self.journal.update(a.job_id, phase=Phase.CLAIMED, chain_status=JobStatus.SCHEDULED.name)
                if self.metrics:
                    entry = self.journal.get(a.job_id)
                    if entry:
                        self.metrics.claim_latency.observe(max(0.0, time.time() - entry.seen_at))
            elif a.action is ReportAction.START:
                self.journal.update(a.job_id, phase=Phase.RUNNING, chain_status=JobStatus.RUNNING.name)
            else:
                final = {ReportAction.REFUSE: "REFUSED", ReportAction.OUT_OF_CREDITS: "OUT_OF_CREDITS",
                         ReportAction.PANIC: "PANICKED"}.get(a.action)
                if a.action is ReportAction.FINISH:
                    final = "FINISHED" if a.exit_code == 0 else "FAILED"
                self.journal.update(a.job_id, phase=Phase.DONE, chain_status=final, reason=a.reason)
                self._ooc_since.pop(a.job_id, None)
            if self.metrics and a.action is not ReportAction.CLAIM:
                self.metrics.report_latency.observe(elapsed)
            log.info("job %d: reported %s%s", a.job_id, a.action.name,
                     f" (exit {a.exit_code})" if a.action is ReportAction.FINISH else "")

    def _failed(self, action: Action, error: ContractError) -> None:
        if type(error).__name__ == "EscrowNotExhausted":
            return  # chain time has not caught up with the executor's limit yet: retry next tick
        entry = self.journal.get(action.job_id)
        failures = (entry.failures if entry else 0) + 1
        log.warning("job %d: %s failed: %s", action.job_id, action.action.name, error)
        self._count_error(error)
        if failures >= MAX_FAILURES:
            self.journal.update(action.job_id, phase=Phase.DONE, failures=failures,
                                reason=f"gave up {action.action.name}: {error}")
        else:
            self.journal.update(action.job_id, failures=failures)

    # -- misc ------------------------------------------------------------------------------------
    def logs(self, job_id: int) -> tuple[Path, Path]:
        """stdout and stderr files of a job this worker ran."""
        entry = self.journal.get(job_id)
        exec_id = entry.exec_id if entry else None
        if exec_id is None:
            found = self.executor.find(job_id)
            if not found:
                raise InputError(f"job {job_id} never ran on this worker (state dir {self.state_dir})")
            exec_id = found[-1]
        return self.executor.logs(exec_id)

    def _gauge(self) -> None:
        if self.metrics:
            for phase in Phase:
                self.metrics.jobs.labels(status=phase.value).set(0)
            for phase_name, n in self.journal.counts().items():
                self.metrics.jobs.labels(status=phase_name).set(n)

    def _count_error(self, e: Exception) -> None:
        if self.metrics:
            self.metrics.chain_errors.labels(kind=type(e).__name__).inc()

    def close(self) -> None:
        self.follower.close()


def time_limit_s(escrow: int, rate: int) -> int:
    """Seconds of run time the escrow buys at ``rate`` credit units per minute (at least 1)."""
    if rate <= 0:
        raise InputError(f"rate must be positive, got {rate}")
    return max(1, escrow * 60 // rate)


__all__ = ["Action", "ExecState", "ProviderWorker", "time_limit_s"]
