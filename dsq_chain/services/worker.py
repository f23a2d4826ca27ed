"""The provider worker (the "supervisor"): turns on-chain assignments into running work and reports
every change back on chain.

It follows only its own provider's assignments (indexed topics) into a SQLite journal, and each tick
*reconciles* every active job: it reads the job's on-chain record (one JSON-RPC batch for all of
them) and the executor's state, and decides what to do from both — claim or refuse, submit, report
RUNNING, extend after a top-up, cancel after a chain-side cancel, report the outcome. The reports of
one tick go in one ``report`` transaction; jobs claimed in a tick are handed to the executor (in
parallel) and reported RUNNING in a second transaction of the same tick, and a job that already
ended when its start is reported gets its outcome in that same transaction. Because every decision is
made from the chain and the executor, not from memory, a worker killed at any point and restarted
neither runs a job twice (the executor is asked for the job by its chain id before submitting) nor
loses one, and reports what happened while it was down. While the RPC node is unreachable, jobs keep
running under the executor's own time limits and their outcomes are reported once it is back.

Time limits: the executor enforces the limit the escrow buys (computed when the job is submitted,
raised after a top-up). The chain bills from the block of the start report, so chain time may not
agree yet when the executor's limit fires: OUT_OF_CREDITS is retried until it does. The other way
round (Slurm's limits are whole minutes, checked every 30 s), the worker reports OUT_OF_CREDITS
itself :data:`ENFORCE_GRACE_S` after chain time says the escrow is used up, then stops the job.

Reorgs: the follower tells the worker (``on_reorg``), which re-reads its nonce; the rest follows from
reconciling with the surviving chain. A job found PENDING again while it runs here (its assignment was
on the dropped fork) is held for :data:`REORG_HOLD_S`: adopted if assigned here again, cancelled if
assigned elsewhere.

Faults: an execution the executor lost, or that ended without starting, or that an operator cancelled,
is reported PANICKED (a provider-side fault: the owner is refunded). An error with one job is logged
and does not hold up the others; an unexpected error in a tick is logged and the loop goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from eth_abi.abi import decode as abi_decode
from eth_utils.crypto import keccak

from dsq_chain import artifacts
from dsq_chain.errors import ContractError, DsqError, InputError, TransactionFailed
from dsq_chain.executors import ExecSpec, ExecState, ExecStatus, Executor, ExecutorError, JobNotFoundError
from dsq_chain.sdk.chain import Chain, Wallet, node_errors
from dsq_chain.sdk.client import ProviderClient, job_from_view
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import ChainEvent, JobAssigned
from dsq_chain.services.decisions import (
    OUT_OF_CREDITS_GRACE_S,
    REORG_HOLD_S,
    Action,
    Facts,
    Plan,
    decide,
    journal_after,
)
from dsq_chain.services.decisions import start as start_reports
from dsq_chain.services.follower import EventFollower
from dsq_chain.services.heartbeat import write_heartbeat
from dsq_chain.services.journal import Entry, Journal, Phase
from dsq_chain.services.metrics import WorkerMetrics
from dsq_chain.services.reports import CHAIN_DOWN, ReportSender
from dsq_chain.types import Job, JobStatus, Prices, ReportAction, Resources
from dsq_chain.workloads.workflow import Workflow, WorkflowError, from_canonical, render_script

log = logging.getLogger("dsq.worker")

#: A report that keeps reverting alone is given up after this many tries (the reason is journaled).
MAX_FAILURES = 5
#: Seconds after chain time says a running job's escrow is used up before the worker ends it itself
#: (the executor's own limit normally ends it first; Slurm's may fire up to ~30 s late).
ENFORCE_GRACE_S = 2.0
#: The running loop rewrites ``state_dir/heartbeat.json`` this often (``dsq provider doctor`` reads it).
HEARTBEAT_EVERY_S = 5.0
#: Executor submissions of one tick run in parallel, this many at once (where the executor submits one by one).
SUBMIT_PARALLELISM = 8
#: Jobs handed to the executor in one ``submit_many`` call (the local executor starts them with one launch and
#: waits for them together: a whole round of the scheduler's assignments fits).
SUBMIT_CHUNK = 256
#: A tick stops handing new jobs to the executor after this many seconds (the rest wait for the next tick), so
#: that the jobs it started are reported RUNNING - and billed - soon after they really started.
SUBMIT_BUDGET_S = 2.0


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
        submit_parallelism: int = SUBMIT_PARALLELISM,
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
        self.submit_parallelism = max(1, submit_parallelism)
        self.follower = EventFollower(
            wallet.chain, deployment, self.state_dir / "worker.sqlite", name=f"worker-{self.address}",
            filters=None, handlers=[self],
        )
        # Only its own assignments: every other change (claims, starts, top-ups, cancels, releases) is seen in
        # the per-tick read of the active jobs, so decoding those events too would be wasted work.
        self.follower.filters = [[[self.follower.decoder.topics["JobAssigned"]], None, _topic(self.address)]]
        self.journal = Journal(self.follower.db)
        self.sender = ReportSender(self.client, self)
        self.reader = JobReader(wallet.chain, deployment.market)
        self._workflows: dict[int, tuple[bytes, bytes]] = {}  # head id -> (workflow, hash from the event)
        self._parsed: dict[int, Workflow | str] = {}
        self._ooc_since: dict[int, float] = {}
        # Chain time a finished job was first seen ended: billed up to it even if the report lands later.
        self._ended_at: dict[int, int] = {}
        self._chain_clock: tuple[int, float] | None = None  # last chain time read, and time.monotonic() then
        self._tick_cache: dict[str, Any] = {}
        #: Claimed jobs this process knows the executor does not have (looked up once, or claimed by us).
        self._absent: set[int] = set()
        #: Jobs released by a reorg while their execution runs: job id -> when first seen so.
        self._orphaned: dict[int, float] = {}
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
        if not isinstance(event, JobAssigned) or event.provider != self.address:
            return
        if self.journal.add(event.job_id):
            log.info("job %d assigned to us at %d units/min", event.job_id, event.rate)

    def on_reorg(self, block: int) -> None:
        """Blocks after ``block`` are gone, maybe with some of our reports: the nonce is read again."""
        log.warning("reorg back to block %d: re-reading the nonce; jobs are reconciled with the surviving chain",
                    block)
        self.wallet.reset_nonce()
        self.journal.rewound()

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Ticks until ``stop`` is set; an unexpected error is logged and the loop goes on (backing off)."""
        backoff = self.poll_interval
        last_beat = 0.0
        while not stop.is_set():
            try:
                self.tick()
                backoff = self.poll_interval
                if time.monotonic() - last_beat >= HEARTBEAT_EVERY_S:
                    write_heartbeat(self.state_dir, self.address, self.chain_up)
                    last_beat = time.monotonic()
            except Exception as e:  # the daemon must outlive any one bad tick
                log.exception("tick failed: %s; retrying in %.1f s", e, backoff)
                self._count_error(e)
                self.wallet.reset_nonce()
                backoff = min(10.0, max(backoff, 0.1) * 2)
            stop.wait(backoff)

    def tick(self) -> list[Action]:
        """Follows events, reconciles every active job, sends this tick's reports; returns them."""
        self._tick_cache = {}
        try:
            self.follower.poll()
            self.chain_up = True
        except CHAIN_DOWN as e:
            if self.chain_up:
                log.warning("chain unreachable (%s): jobs keep running, reports wait", e)
            self.chain_up = False
            self._count_error(e)
        entries = self.journal.active()
        if not entries:
            self._gauge()
            return []
        self._tick_cache["executions"] = self.executor.status_many([e.exec_id for e in entries if e.exec_id])
        jobs: dict[int, Job] = {}
        if self.chain_up:
            try:
                jobs = self.reader.read(e.job_id for e in entries)
            except CHAIN_DOWN as e:
                self.chain_up = False
                self._count_error(e)
        actions: list[Action] = []
        to_run: list[tuple[Entry, Job]] = []
        for entry in entries:
            try:
                actions += self._reconcile(entry, jobs.get(entry.job_id), to_run)
            except (DsqError, ExecutorError, OSError) as e:
                log.error("job %d: %s", entry.job_id, e)
                self._count_error(e)
            except Exception as e:  # a bug with one job must not hold up the reports of all the others
                log.exception("job %d: unexpected error: %s", entry.job_id, e)
                self._count_error(e)
        actions += self._run_jobs(to_run)
        if not (actions and self.chain_up):
            self._gauge()
            return actions
        sent = self._send(actions)
        # Jobs claimed just now: hand them to the executor and report them RUNNING in this tick. One that already
        # has an execution (started before a reorg dropped our claim, and assigned to us again) is adopted.
        more: list[Action] = []
        fresh: list[tuple[Entry, Job]] = []
        for a in sent:
            row = self.journal.get(a.job_id) if a.action is ReportAction.CLAIM else None
            if row is None:
                continue
            job = dataclasses.replace(jobs[a.job_id], status=JobStatus.SCHEDULED)
            status = self._exec_status(row)
            if status is not None:
                more += self._start(job, status)
            else:
                fresh.append((row, job))
                self._absent.add(job.id)  # this process journals every submission: no id, no execution
        more += self._run_jobs(fresh)
        if more and self.chain_up:
            self._send(more)
        self._gauge()
        return actions + more

    # -- decisions (made by services/decisions.py; carried out here) --------------------------------
    def _reconcile(self, entry: Entry, job: Job | None, to_run: list[tuple[Entry, Job]]) -> list[Action]:
        """Gathers the facts about one job, asks :func:`decide`, carries the plan out; returns its reports.
        Jobs to hand to the executor go to ``to_run``."""
        facts = self._facts(entry, job)
        plan = decide(facts)
        while plan.need is not None and job is not None:
            if plan.need == "validate":
                problem, passing = self._validate(job)
                facts = dataclasses.replace(facts, problem=problem, passing=passing, validated=True)
            else:  # look the execution up: submitted by a process that died before journaling it?
                found = self._adopt(entry)
                if found is None and job.status is JobStatus.SCHEDULED:
                    self._absent.add(job.id)
                entry = self.journal.get(entry.job_id) or entry
                facts = dataclasses.replace(facts, phase=entry.phase, execution=found, looked_up=True,
                                            journaled=entry.exec_id is not None)
            plan = decide(facts)
        return self._carry_out(entry, job, facts, plan, to_run)

    def _facts(self, entry: Entry, job: Job | None) -> Facts:
        held = self._orphaned.get(entry.job_id)
        ooc = self._ooc_since.get(entry.job_id)
        now = time.monotonic()
        running = job is not None and job.status is JobStatus.RUNNING and job.provider == self.address
        return Facts(
            job_id=entry.job_id, me=self.address, phase=entry.phase, job=job,
            execution=self._exec_status(entry), journaled=entry.exec_id is not None,
            absent=entry.job_id in self._absent,
            held_s=None if held is None else now - held,
            escrow_used_up=running and job is not None and self._escrow_used_up(job),
            ooc_waited_s=None if ooc is None else now - ooc,
        )

    def _carry_out(self, entry: Entry, job: Job | None, facts: Facts, plan: Plan,
                   to_run: list[tuple[Entry, Job]]) -> list[Action]:
        if job is None:
            return []
        if plan.hold:
            if job.id not in self._orphaned:
                self._orphaned[job.id] = time.monotonic()
                log.warning("job %d is PENDING again on chain (a reorg?) while it runs here: holding it %.0f s "
                            "in case it comes back to us", job.id, REORG_HOLD_S)
            return []
        if plan.drop is not None:
            self._drop(entry, facts.execution, plan.drop)
            return []
        self._orphaned.pop(job.id, None)
        if plan.wait is not None:
            log.warning("job %d waits: %s; asking again next tick", job.id, plan.wait)
        if plan.enter is not None:
            self.journal.transition(job.id, plan.enter, chain_status=job.status.name)
        if plan.extend:
            self._extend_if_topped_up(entry, job)
        self._note_outcome(job.id, plan)
        for a in plan.reports:
            if a.action is ReportAction.REFUSE:
                log.warning("job %d refused: %s", job.id, a.reason)
                if self.metrics:
                    self.metrics.refused.labels(reason=a.reason.split(":")[0]).inc()
            elif a.action is ReportAction.OUT_OF_CREDITS and a.reason:
                log.info("job %d: %s; ending it", job.id, a.reason)
        if plan.run:
            to_run.append((entry, job))
        return list(plan.reports)

    def _start(self, job: Job, status: ExecStatus) -> list[Action]:
        """The reports of a SCHEDULED job the executor has (see :func:`decisions.start`)."""
        ooc = self._ooc_since.get(job.id)
        plan = start_reports(job, status, None if ooc is None else time.monotonic() - ooc)
        self._note_outcome(job.id, plan)
        return list(plan.reports)

    def _note_outcome(self, job_id: int, plan: Plan) -> None:
        if plan.exit_code is not None:
            self.journal.update(job_id, exit_code=plan.exit_code)
        if plan.ooc_started:
            self._ooc_since.setdefault(job_id, time.monotonic())

    def _validate(self, job: Job) -> tuple[str | None, bool]:
        """Why this worker cannot run the job (None if it can), and whether that is passing: an engine that does
        not answer, or shows no usable capacity (a Slurm controller restarting lists its nodes as unknown), is
        asked again next tick; only a definite, lasting mismatch refuses the job."""
        wf = self._checked_workflow(job)
        if isinstance(wf, str):
            return wf, False
        if wf.resources != job.resources and wf.resources != dataclasses.replace(job.resources, disk_gb=0):
            return f"resources mismatch: workflow asks {wf.resources}, chain request {job.resources}", False
        try:
            capacity = self._cached("capacity", self.executor.capacity)
            features = self._cached("features", self.executor.features) if wf.gpus else frozenset()
        except ExecutorError as e:
            return f"the {self.executor.name} engine does not answer ({e})", True
        if capacity.cpus <= 0:
            return f"the {self.executor.name} engine shows no usable capacity right now", True
        if not job.resources.fits_in(capacity):
            return f"resources: needs {job.resources}, this machine has {capacity}", False
        if wf.gpus and "gpus" not in features:
            return "unsupported feature: gpus", False
        return None, False

    def _checked_workflow(self, job: Job) -> Workflow | str:
        """The job's workflow, checked against the on-chain hash and parsed (once per job array), or the problem."""
        head = job.head_id or job.id
        key = head
        found = self._parsed.get(key)
        if found is not None:
            return found
        try:
            raw, workflow_hash = self._workflow_bytes(job)
        except LookupError as e:
            return f"workflow not found: {e}"  # not cached: the node may serve it later
        result: Workflow | str
        if keccak(raw) != workflow_hash:
            result = "workflow hash mismatch: the submitted bytes do not hash to the on-chain hash"
        else:
            try:
                result = from_canonical(raw)
            except WorkflowError as e:
                result = f"workflow does not parse: {e}"
        self._parsed[key] = result
        return result

    def _workflow_bytes(self, job: Job) -> tuple[bytes, bytes]:
        """The workflow of the job's array and its hash, both from the submission event."""
        head = job.head_id or job.id
        raw = self._workflows.get(head)
        if raw is None:
            logs = self.client.market.events.JobSubmitted().get_logs(
                from_block=self.deployment.block, argument_filters={"firstJobId": head}
            )
            if not logs:
                raise LookupError(f"no JobSubmitted event for job {head}")
            args = logs[0]["args"]
            raw = self._workflows[head] = (bytes(args["workflow"]), bytes(args["workflowHash"]))
        return raw

    def _run_jobs(self, pairs: Sequence[tuple[Entry, Job]]) -> list[Action]:
        """Hands SCHEDULED jobs the executor does not have to it, in parallel and oldest first, for at most
        :data:`SUBMIT_BUDGET_S` per tick; returns their START reports."""
        deadline = self._cached("submit_deadline", lambda: time.monotonic() + SUBMIT_BUDGET_S)
        actions: list[Action] = []
        todo = list(pairs)
        started_any = False
        while todo and (not started_any or time.monotonic() < deadline):
            chunk, todo = todo[:SUBMIT_CHUNK], todo[SUBMIT_CHUNK:]
            actions += self._submit_chunk([job for _, job in chunk])
            started_any = True
        if todo:
            log.info("%d claimed job(s) wait for the next tick to be submitted", len(todo))
        return actions

    def _submit_chunk(self, jobs: Sequence[Job]) -> list[Action]:
        todo: list[tuple[Job, ExecSpec]] = []
        for job in jobs:
            wf = self._checked_workflow(job)
            if isinstance(wf, str):  # it was checked before the claim: only a lost cache gets here
                log.error("job %d: cannot run: %s", job.id, wf)
                continue
            try:
                limit = time_limit_s(job.escrow, job.rate)
                todo.append((job, ExecSpec(job_id=job.id, script=render_script(wf, job.id), tasks=wf.tasks,
                                           cpus_per_task=wf.cpus_per_task, mem_per_cpu_mb=wf.mem_per_cpu,
                                           gpus=wf.gpus, time_limit_s=limit)))
            except ValueError as e:
                log.error("job %d: cannot run: %s", job.id, e)
        results = self.executor.submit_many([spec for _, spec in todo], self.submit_parallelism) if todo else []
        started = self.executor.status_many([r for r in results if isinstance(r, str)])
        actions: list[Action] = []
        for (job, spec), exec_id in zip(todo, results, strict=True):
            self._absent.discard(job.id)  # submitted, or failed somewhere in submit: look it up next time
            if isinstance(exec_id, Exception):  # retried next tick (found with find() first)
                log.error("job %d: submitting to %s failed: %s", job.id, self.executor.name, exec_id)
                self._count_error(exec_id)
                continue
            self.journal.transition(job.id, Phase.SUBMITTED, exec_id=exec_id, time_limit_s=spec.time_limit_s)
            log.info("job %d submitted to %s as %s (limit %d s)", job.id, self.executor.name, exec_id,
                     spec.time_limit_s)
            try:
                actions += self._start(job, started.get(exec_id) or self.executor.status(exec_id))
            except ExecutorError as e:
                log.error("job %d: %s", job.id, e)
        return actions

    def _adopt(self, entry: Entry) -> ExecStatus | None:
        found = self.executor.find(entry.job_id)
        if not found:
            return None
        exec_id = found[-1]
        self.journal.transition(entry.job_id, Phase.SUBMITTED if entry.phase in (Phase.NEW, Phase.CLAIMED)
                                else entry.phase, exec_id=exec_id)
        return self.executor.status(exec_id)

    def _exec_status(self, entry: Entry) -> ExecStatus | None:
        if entry.exec_id is None:
            return None
        read: ExecStatus | None = self._tick_cache.get("executions", {}).get(entry.exec_id)
        if read is not None:  # read for every active job at the start of the tick
            return read
        try:
            return self.executor.status(entry.exec_id)
        except JobNotFoundError as e:  # journaled, then lost by the executor: a provider-side fault
            return ExecStatus(ExecState.NODE_FAIL, None, False, f"the executor lost it: {e}")

    def _extend_if_topped_up(self, entry: Entry, job: Job) -> None:
        limit = time_limit_s(job.escrow, job.rate)
        if entry.exec_id and limit > entry.time_limit_s:
            self.executor.extend(entry.exec_id, limit)
            self.journal.update(job.id, time_limit_s=limit)
            log.info("job %d topped up: limit %d s -> %d s", job.id, entry.time_limit_s, limit)

    def _escrow_used_up(self, job: Job) -> bool:
        """True once chain time is :data:`ENFORCE_GRACE_S` past what the escrow pays for."""
        now = self._cached("now", self._chain_now)
        if now is None or job.rate <= 0:
            return False
        return job.rate * max(0, int(now - ENFORCE_GRACE_S) - job.since) // 60 >= job.escrow

    def _chain_now(self) -> int | None:
        """Timestamp of the block being built (the one a report would land in)."""
        try:
            now = self.wallet.chain.timestamp("pending")
        except CHAIN_DOWN:
            return None
        self._chain_clock = (now, time.monotonic())
        return now

    def _end_time(self, job_id: int) -> int:
        """Chain time the job was first seen ended: now while the chain answers; during an outage, the
        last chain time read plus the time since (0 if none was read: the report's block time)."""
        if job_id not in self._ended_at:
            now = self._cached("now", self._chain_now)
            clock = self._chain_clock
            if now is None and clock is not None:
                now = clock[0] + int(time.monotonic() - clock[1])
            self._ended_at[job_id] = now or 0
        return self._ended_at[job_id]

    def _cached(self, key: str, fn: Any) -> Any:
        """``fn()`` once per tick."""
        if key not in self._tick_cache:
            self._tick_cache[key] = fn()
        return self._tick_cache[key]

    def _drop(self, entry: Entry, status: ExecStatus | None, reason: str) -> None:
        if entry.exec_id and status is not None and not status.state.is_final:
            self.executor.cancel(entry.exec_id)
            log.info("job %d: %s; cancelled %s", entry.job_id, reason, entry.exec_id)
        self.journal.transition(entry.job_id, Phase.DONE, reason=reason)
        self._ooc_since.pop(entry.job_id, None)
        self._absent.discard(entry.job_id)
        self._orphaned.pop(entry.job_id, None)

    # -- sending ---------------------------------------------------------------------------------
    def _send(self, actions: list[Action]) -> list[Action]:
        """Sends the reports (:class:`ReportSender`); returns those that went through. A FINISH carries the
        chain time the job was first seen ended, so a report delayed by an outage bills no more."""
        actions = [dataclasses.replace(a, end_time=self._end_time(a.job_id))
                   if a.action is ReportAction.FINISH and not a.end_time else a for a in actions]
        return self.sender.send(actions)

    # -- what the sender tells (ReportListener) --------------------------------------------------------
    def down(self, e: BaseException) -> None:
        """The node went away while sending: reports wait, the nonce is read again."""
        self.chain_up = False
        self.wallet.reset_nonce()
        self._count_error(e)

    def sent(self, actions: list[Action], t0: float) -> None:
        """Reports mined: the journal follows (and an execution that must end is stopped)."""
        elapsed = time.monotonic() - t0
        for a in actions:
            phase, chain_status = journal_after(a)
            if phase is Phase.DONE and a.action in (ReportAction.OUT_OF_CREDITS, ReportAction.PANIC):
                self._stop_execution(a.job_id)
            if phase is Phase.DONE:
                self.journal.transition(a.job_id, phase, chain_status=chain_status, reason=a.reason)
                self._ooc_since.pop(a.job_id, None)
                self._ended_at.pop(a.job_id, None)
            else:
                self.journal.transition(a.job_id, phase, chain_status=chain_status)
            if self.metrics and a.action is ReportAction.CLAIM:
                entry = self.journal.get(a.job_id)
                if entry:
                    self.metrics.claim_latency.observe(max(0.0, time.time() - entry.seen_at))
            elif self.metrics:
                self.metrics.report_latency.observe(elapsed)
            log.info("job %d: reported %s%s", a.job_id, a.action.name,
                     f" (exit {a.exit_code})" if a.action is ReportAction.FINISH else "")

    def _stop_execution(self, job_id: int) -> None:
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

    def failed(self, actions: list[Action], error: ContractError) -> None:
        """One job's reports revert alone: counted; given up after :data:`MAX_FAILURES` tries."""
        if type(error).__name__ == "EscrowNotExhausted":
            return  # chain time has not caught up with the executor's limit yet: retry next tick
        action = actions[0]
        entry = self.journal.get(action.job_id)
        failures = (entry.failures if entry else 0) + 1
        log.warning("job %d: %s failed: %s", action.job_id, "+".join(a.action.name for a in actions), error)
        self._count_error(error)
        if failures >= MAX_FAILURES:
            self.journal.transition(action.job_id, Phase.DONE, failures=failures,
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

    def _count_error(self, e: BaseException) -> None:
        if self.metrics:
            self.metrics.chain_errors.labels(kind=type(e).__name__).inc()

    def close(self) -> None:
        self.follower.close()


class JobReader:
    """Reads many jobs' on-chain records in one JSON-RPC batch of raw ``eth_call`` s.

    web3's contract-call machinery costs ~10 ms of Python per call; encoding ``getJob(id)`` by hand and
    decoding with eth_abi costs microseconds, which matters when a worker re-reads hundreds of jobs a tick.
    """

    CHUNK = 500

    def __init__(self, chain: Chain, market: str) -> None:
        self.chain = chain
        self.market = market
        abi = next(i for i in artifacts.abi("JobMarket") if i.get("type") == "function" and i["name"] == "getJob")
        self.selector = keccak(text=f"getJob({','.join(_abi_type(i) for i in abi['inputs'])})")[:4]
        self.output_types = [_abi_type(o) for o in abi["outputs"]]
        # JobView holds static fields only: each is one 32-byte word, sliced directly (eth_abi's generic decoder
        # costs ~0.6 ms a job).
        fields = abi["outputs"][0].get("components", []) if len(abi["outputs"]) == 1 else []
        self._words: list[str] | None = [str(f["type"]) for f in fields] or None
        if self._words and not all(_static_word(t) for t in self._words):
            self._words = None

    def read(self, job_ids: Iterable[int]) -> dict[int, Job]:
        """The jobs by id; raises :class:`ChainUnavailable` / :class:`TransactionFailed`."""
        ids = list(job_ids)
        out: dict[int, Job] = {}
        for start in range(0, len(ids), self.CHUNK):
            chunk = ids[start:start + self.CHUNK]
            payload = [("eth_call", [{"to": self.market, "data": "0x" + (self.selector + i.to_bytes(32, "big")).hex()},
                                     "latest"]) for i in chunk]
            with node_errors(self.chain.rpc_url):
                responses: Any = cast(Any, self.chain.w3.provider).make_batch_request(payload)
            if not isinstance(responses, list):
                raise TransactionFailed(f"batch of getJob calls refused: {responses.get('error')}")
            for job_id, resp in zip(chunk, responses, strict=True):
                if "error" in resp or resp.get("result") is None:
                    raise TransactionFailed(f"getJob({job_id}): {resp.get('error')}")
                data = bytes.fromhex(str(resp["result"])[2:])
                if self._words is not None and len(data) == 32 * len(self._words):
                    view = tuple(_word(t, data[32 * k:32 * k + 32]) for k, t in enumerate(self._words))
                else:
                    (view,) = abi_decode(self.output_types, data)
                out[job_id] = job_from_view(view)
        return out


def _abi_type(param: dict[str, Any]) -> str:
    t = str(param["type"])
    if t.startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in param["components"]) + ")" + t[len("tuple"):]
    return t


def _static_word(t: str) -> bool:
    return t in ("address", "bool", "bytes32") or (t.startswith(("uint", "int")) and t.lstrip("uint").isdigit())


def _word(t: str, w: bytes) -> Any:
    """One static ABI word as eth_abi decodes it."""
    if t == "address":
        return "0x" + w[12:].hex()
    if t == "bytes32":
        return w
    if t == "bool":
        return w[-1] == 1
    return int.from_bytes(w, "big", signed=t.startswith("int"))


def _topic(address: str) -> str:
    """An address as an indexed event topic."""
    return "0x" + "0" * 24 + address[2:].lower()


def time_limit_s(escrow: int, rate: int) -> int:
    """Seconds of run time the escrow buys at ``rate`` credit units per minute (at least 1)."""
    if rate <= 0:
        raise InputError(f"rate must be positive, got {rate}")
    return max(1, escrow * 60 // rate)


__all__ = ["OUT_OF_CREDITS_GRACE_S", "REORG_HOLD_S", "Action", "ExecState", "JobReader", "ProviderWorker",
           "time_limit_s"]
