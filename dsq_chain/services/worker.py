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

Time limits: the executor enforces what the escrow buys (:mod:`~dsq_chain.services.executions`); chain
time decides when it is used up (:mod:`~dsq_chain.services.chain_clock`).

Reorgs: the follower tells the worker (``on_reorg``), which re-reads its nonce; the rest follows from
reconciling with the surviving chain. A job found PENDING again while it runs here (its assignment was
on the dropped fork) is held for :data:`REORG_HOLD_S`: adopted if assigned here again, cancelled if
assigned elsewhere. A report whose block vanished before the follower reached it, and a job id a reorg
gave to another submission, are :mod:`~dsq_chain.services.worker_reorgs`' to find.

Faults: an execution the executor lost, or that ended without starting, or that an operator cancelled,
is reported PANICKED (a provider-side fault: the owner is refunded). An error with one job is logged
and does not hold up the others; an unexpected error in a tick is logged and the loop goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from dsq_chain.errors import ContractError, DsqError
from dsq_chain.executors import ExecState, ExecStatus, Executor, ExecutorError
from dsq_chain.executors.hardware import offerable
from dsq_chain.sdk.chain import Wallet
from dsq_chain.sdk.client import ProviderClient
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import ChainEvent, JobAssigned
from dsq_chain.sdk.job_reader import JobReader
from dsq_chain.services.chain_clock import ENFORCE_GRACE_S, ChainClock
from dsq_chain.services.decisions import (
    OUT_OF_CREDITS_GRACE_S,
    REORG_HOLD_S,
    REPORTED_OUT_OF_CREDITS,
    Action,
    Facts,
    Plan,
    decide,
    journal_after,
)
from dsq_chain.services.decisions import start as start_reports
from dsq_chain.services.executions import SUBMIT_BUDGET_S, SUBMIT_PARALLELISM, Executions, time_limit_s
from dsq_chain.services.follower import EventFollower
from dsq_chain.services.heads import HeadWatcher
from dsq_chain.services.heartbeat import write_heartbeat
from dsq_chain.services.job_checks import TickCache, Workflows, problem
from dsq_chain.services.journal import Entry, Journal, Phase
from dsq_chain.services.metrics import WorkerMetrics
from dsq_chain.services.reports import CHAIN_DOWN, ReportSender
from dsq_chain.services.worker_reorgs import ReorgGuard
from dsq_chain.types import Job, JobStatus, Prices, ReportAction, Resources

log = logging.getLogger("dsq.worker")

#: A report that keeps reverting alone is given up after this many tries (the reason is journaled).
MAX_FAILURES = 5
#: The running loop rewrites ``state_dir/heartbeat.json`` this often (``dsq provider doctor`` reads it).
HEARTBEAT_EVERY_S = 5.0


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
        self.executions = Executions(executor, self.journal)
        self.sender = ReportSender(self.client, self)
        self.reader = JobReader(wallet.chain, deployment.market)
        self.workflows = Workflows(self.client, deployment.block)
        self._tick = TickCache()
        self.clock = ChainClock(wallet.chain, self._tick)
        self._ooc_since: dict[int, float] = {}
        #: Jobs released by a reorg while their execution runs: job id -> when first seen so.
        self._orphaned: dict[int, float] = {}
        self.chain_up = True
        self.reorgs = ReorgGuard(self)

    # -- registration --------------------------------------------------------------------------
    def register(self, prices: Prices, labels: dict[str, str] | None = None,
                 hardware: Resources | None = None) -> Resources:
        """Registers this provider with the detected hardware (or less); refuses to claim more."""
        hw = offerable(self.executor, hardware)
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
        self.reorgs.rewind(block)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Ticks until ``stop`` is set; an unexpected error is logged and the loop goes on (backing off).
        Between ticks it waits for the node's next block (``newHeads``, :class:`HeadWatcher`: an assignment
        is acted on as soon as it is mined) or ``poll_interval``, whichever comes first."""
        backoff = self.poll_interval
        last_beat = 0.0
        heads = HeadWatcher(self.wallet.chain.rpc_url)
        heads.start(wait_s=0)
        seen = heads.seq
        try:
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
                if backoff > self.poll_interval:
                    stop.wait(backoff)
                else:
                    seen = heads.wait(seen, backoff)
        finally:
            heads.close()

    def tick(self) -> list[Action]:
        """Follows events, reconciles every active job, sends this tick's reports; returns them."""
        self._tick.clear()
        self.clock.begin_tick()
        self._follow()
        entries = self.journal.active()
        actions: list[Action] = []
        more: list[Action] = []
        self.executions.read(entries)
        if entries:
            jobs = self._read(entries)
            entries = self.reorgs.check_submissions(entries, jobs)
            actions = self._reconcile_all(entries, jobs)
            if actions and self.chain_up:
                more = self._start_claimed(self._send(actions), jobs)
        self._gauge()
        return actions + more

    def _follow(self) -> None:
        """New assignments into the journal; notes whether the node answers."""
        try:
            self.follower.poll()
            self.reorgs.check_reports()
            self.chain_up = True
        except CHAIN_DOWN as e:
            if self.chain_up:
                log.warning("chain unreachable (%s): jobs keep running, reports wait", e)
            self.chain_up = False
            self._count_error(e)

    def _read(self, entries: Sequence[Entry]) -> dict[int, Job]:
        """The active jobs' on-chain records (none while the node is down)."""
        if self.chain_up:
            try:
                return self.reader.read(e.job_id for e in entries)
            except CHAIN_DOWN as e:
                self.chain_up = False
                self._count_error(e)
        return {}

    def _reconcile_all(self, entries: Sequence[Entry], jobs: dict[int, Job]) -> list[Action]:
        """Reconciles each job (an error with one is logged, the others go on), then submits those to run."""
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
        return actions + self._run_jobs(to_run)

    def _start_claimed(self, sent: list[Action], jobs: dict[int, Job]) -> list[Action]:
        """Jobs claimed just now: hands them to the executor and reports them RUNNING in this tick. One that
        already has an execution (started before a reorg dropped our claim, and assigned to us again) is adopted."""
        more: list[Action] = []
        fresh: list[tuple[Entry, Job]] = []
        for a in sent:
            row = self.journal.get(a.job_id) if a.action is ReportAction.CLAIM else None
            if row is None:
                continue
            job = dataclasses.replace(jobs[a.job_id], status=JobStatus.SCHEDULED)
            status = self.executions.status(row)
            if status is not None:
                more += self._start(job, status)
            else:
                fresh.append((row, job))
                self.executions.absent.add(job.id)  # this process journals every submission: no id, no execution
        more += self._run_jobs(fresh)
        if more and self.chain_up:
            self._send(more)
        return more

    # -- decisions (made by services/decisions.py; carried out here) --------------------------------
    def _reconcile(self, entry: Entry, job: Job | None, to_run: list[tuple[Entry, Job]]) -> list[Action]:
        """Gathers the facts about one job, asks :func:`decide`, carries the plan out; returns its reports.
        Jobs to hand to the executor go to ``to_run``."""
        facts = self._facts(entry, job)
        plan = decide(facts)
        while plan.need is not None and job is not None:
            if plan.need == "validate":
                why, passing = problem(job, self.workflows, self.executor, self._tick)
                self.reorgs.note_submission(entry, job)
                facts = dataclasses.replace(facts, problem=why, passing=passing, validated=True)
            else:  # look the execution up: submitted by a process that died before journaling it?
                found = self.executions.adopt(entry)
                if found is None and job.status is JobStatus.SCHEDULED:
                    self.executions.absent.add(job.id)
                entry = self.journal.get(entry.job_id) or entry
                facts = dataclasses.replace(facts, phase=entry.phase, execution=found, looked_up=True,
                                            journaled=entry.exec_id is not None)
            plan = decide(facts)
        if facts.execution is not None:  # a FINISH bills up to the end seen here
            self.clock.observe(entry.job_id, facts.execution, reachable=self.chain_up)
        return self._carry_out(entry, job, facts, plan, to_run)

    def _facts(self, entry: Entry, job: Job | None) -> Facts:
        held = self._orphaned.get(entry.job_id)
        ooc = self._ooc_since.get(entry.job_id)
        now = time.monotonic()
        running = job is not None and job.status is JobStatus.RUNNING and job.provider == self.address
        return Facts(
            job_id=entry.job_id, me=self.address, phase=entry.phase, job=job,
            execution=self.executions.status(entry), journaled=entry.exec_id is not None,
            absent=entry.job_id in self.executions.absent,
            held_s=None if held is None else now - held,
            escrow_used_up=running and job is not None and self.clock.escrow_used_up(job),
            ooc_waited_s=None if ooc is None else now - ooc,
            stopped_out_of_credits=_out_of_credits_vanished(entry),
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
            self.executions.extend_if_topped_up(entry, job)
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
        self.clock.observe(job.id, status)
        plan = start_reports(job, status, None if ooc is None else time.monotonic() - ooc,
                             stopped_out_of_credits=_out_of_credits_vanished(self.journal.get(job.id)))
        self._note_outcome(job.id, plan)
        return list(plan.reports)

    def _note_outcome(self, job_id: int, plan: Plan) -> None:
        if plan.exit_code is not None:
            self.journal.update(job_id, exit_code=plan.exit_code)
        if plan.ooc_started:
            self._ooc_since.setdefault(job_id, time.monotonic())

    def _run_jobs(self, pairs: Sequence[tuple[Entry, Job]]) -> list[Action]:
        """Hands SCHEDULED jobs the executor does not have to it (:meth:`Executions.submit`, paced by a
        deadline per tick); returns their START reports."""
        deadline = self._tick.get("submit_deadline", lambda: time.monotonic() + SUBMIT_BUDGET_S)
        started = self.executions.submit([job for _, job in pairs], self.workflows, self._count_error,
                                         deadline=deadline, parallelism=self.submit_parallelism)
        return [a for job, status in started for a in self._start(job, status)]

    def _drop(self, entry: Entry, status: ExecStatus | None, reason: str) -> None:
        self.executions.cancel(entry, status, reason)
        self.journal.transition(entry.job_id, Phase.DONE, reason=reason)
        self._ooc_since.pop(entry.job_id, None)
        self._orphaned.pop(entry.job_id, None)

    # -- sending ---------------------------------------------------------------------------------
    def _send(self, actions: list[Action]) -> list[Action]:
        """Sends the reports (:class:`ReportSender`); returns those that went through. A FINISH carries the
        chain time the job was first seen ended, so a report delayed by an outage bills no more."""
        actions = [dataclasses.replace(a, end_time=self.clock.end_time(a.job_id))
                   if a.action is ReportAction.FINISH and not a.end_time else a for a in actions]
        return self.sender.send(actions)

    # -- what the sender tells (ReportListener) --------------------------------------------------------
    def down(self, e: BaseException) -> None:
        """The node went away while sending: reports wait, the nonce is read again."""
        self.chain_up = False
        self.wallet.reset_nonce()
        self._count_error(e)

    def sent(self, actions: list[Action], t0: float, block: tuple[int, str] | None = None) -> None:
        """Reports mined (in ``block``: number, hash): the journal follows (and an execution that must end is
        stopped). The end time a FINISH carried is kept until the follower has passed its block."""
        elapsed = time.monotonic() - t0
        where = {} if block is None else {"landed_block": block[0], "landed_hash": block[1]}
        for a in actions:
            phase, chain_status = journal_after(a)
            if phase is Phase.DONE and a.action in (ReportAction.OUT_OF_CREDITS, ReportAction.PANIC):
                self.executions.stop(a.job_id)
            if phase is Phase.DONE:
                self.journal.transition(a.job_id, phase, chain_status=chain_status, reason=a.reason, **where)
                self._ooc_since.pop(a.job_id, None)
            else:
                self.journal.transition(a.job_id, phase, chain_status=chain_status, **where)
            if self.metrics:
                self.metrics.reported(a.action, self.journal.get(a.job_id), elapsed)
            log.info("job %d: reported %s%s", a.job_id, a.action.name,
                     f" (exit {a.exit_code})" if a.action is ReportAction.FINISH else "")

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
        return self.executions.logs(job_id, self.state_dir)

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.journal_counts(self.journal.counts())

    def _count_error(self, e: BaseException) -> None:
        if self.metrics:
            self.metrics.chain_errors.labels(kind=type(e).__name__).inc()

    def close(self) -> None:
        self.follower.close()


def _topic(address: str) -> str:
    """An address as an indexed event topic."""
    return "0x" + "0" * 24 + address[2:].lower()


def _out_of_credits_vanished(entry: Entry | None) -> bool:
    """A reorg removed the job's mined OUT_OF_CREDITS (the row was revived: see :mod:`worker_reorgs`)."""
    return entry is not None and entry.reason == REPORTED_OUT_OF_CREDITS


__all__ = ["ENFORCE_GRACE_S", "OUT_OF_CREDITS_GRACE_S", "REORG_HOLD_S", "Action", "ExecState", "JobReader",
           "ProviderWorker", "time_limit_s"]
