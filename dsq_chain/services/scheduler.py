"""The meta-scheduler service: follows events, matches pending jobs, commits assignments in batches.

Rounds are driven by events: a new job, a refusal, a timeout, a settlement or a provider change
triggers a round as soon as the node announces the block that holds it (``newHeads`` subscription over
WebSocket where the node serves one) or at the next poll (every ``poll_interval``, 0.1 s by default).
Each round commits every assignment it found in one ``assignBatch`` transaction. A race lost
on chain (capacity taken, job cancelled meanwhile) is handled by re-reading events and matching
again; entries that still fail alone are skipped with their reason, never crash the service.

Rounds are incremental (:class:`~dsq_chain.matching.backlog.Backlog`): a round examines the jobs that
are new or back in PENDING, and the parked jobs that a provider change may let fit; a job that fit
nowhere is not examined again until then, so thousands of unplaceable jobs do not slow the round for a
placeable one. At most ``per_owner`` jobs of each owner are examined per round.

Several active schedulers given each other as ``peers`` share the jobs (:mod:`dsq_chain.services.shares`):
each takes its own share at once and another's only after ``takeover_s``, so they never race for a job.

The state is rebuilt from events at each start (an in-memory follower replays from the deployment
block), so a restart neither assigns a job twice (the chain says it is assigned) nor forgets one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from hexbytes import HexBytes

from dsq_chain.errors import ContractError, DsqError
from dsq_chain.matching import Assignment, Explanation, FairShare, Matcher, PendingJob, Weights
from dsq_chain.matching.backlog import Backlog
from dsq_chain.matching.matcher import DEFAULT_HALF_LIFE_S
from dsq_chain.sdk.chain import CHAIN_DOWN, Chain, Wallet
from dsq_chain.sdk.client import SchedulerClient, skipped_entries
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import ChainEvent, ClaimTimeoutChanged, JobReleased, JobSubmitted, JobToppedUp
from dsq_chain.services.follower import EventFollower, block_is
from dsq_chain.services.gridstate import GridState, JobRecord
from dsq_chain.services.heads import HeadWatcher
from dsq_chain.services.metrics import SchedulerMetrics
from dsq_chain.services.shares import DEFAULT_TAKEOVER_S, Shares
from dsq_chain.types import JobStatus, ProviderStatus

log = logging.getLogger("dsq.scheduler")

#: Errors after which a round is retried: the chain is down, or a call was refused for now.
SCHEDULER_RETRY: tuple[type[BaseException], ...] = (DsqError, *CHAIN_DOWN)


@dataclass
class RoundResult:
    """What one matching round did."""

    assigned: list[Assignment] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    unplaced: list[int] = field(default_factory=list)
    seconds: float = 0.0


class MetaScheduler:
    """Matches jobs to providers and commits the assignments on chain; a library object first."""

    def __init__(
        self,
        wallet: Wallet,
        deployment: Deployment,
        *,
        weights: Weights | None = None,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        batch_limit: int = 200,
        confirmations: int = 0,
        poll_interval: float = 0.1,
        timeout_sweep_s: float = 2.0,
        per_owner: int | None = None,
        standby_s: float = 0.0,
        peers: Sequence[str] = (),
        takeover_s: float = DEFAULT_TAKEOVER_S,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.wallet = wallet
        self.chain: Chain = wallet.chain
        self.deployment = deployment
        self.client = SchedulerClient(wallet, deployment)
        self.fairshare = FairShare(half_life_s)
        self.matcher = Matcher(weights, self.fairshare)
        self.batch_limit = batch_limit
        self.poll_interval = poll_interval
        self.timeout_sweep_s = timeout_sweep_s
        self.metrics = metrics
        self._block_times: dict[int, float] = {}
        self.state = GridState(self.fairshare, self._event_time)
        self.follower = EventFollower(
            self.chain, deployment, ":memory:", name="scheduler", confirmations=confirmations, handlers=[self]
        )
        self.claim_timeout = int(self.client.market.functions.claimTimeout().call())
        #: Jobs to examine and jobs parked until a provider change could let them fit.
        self.backlog = Backlog(per_owner if per_owner is not None else batch_limit)
        #: A standby leaves a job to the active scheduler until it has waited this long in PENDING (chain time).
        self.standby_s = standby_s
        #: Other active schedulers' shares wait ``takeover_s`` here (see services/shares.py).
        role = bytes(self.client.market.functions.SCHEDULER_ROLE().call()) if peers else b""
        self.shares = Shares(wallet.address, peers, takeover_s, role=role)
        self._touched: set[str] = set()
        self._pending_since: dict[int, float] = {}  # job id -> when it became examinable (monotonic, as seen here)
        self._held: dict[int, float] = {}  # jobs left to another scheduler for now -> when this one takes them
        self._parked_late: set[int] = set()  # jobs taken after a delay that fit nowhere: woken, they wait again
        #: Pending jobs that can never be placed (see JobRecord.problem): job id -> why.
        self.never: dict[int, str] = {}
        self._dirty = True
        self._last_sweep = 0.0
        #: Jobs seen assigned to a banned provider: monotonic time first seen (see :meth:`sweep_banned`).
        self._banned_seen: dict[int, float] = {}
        #: Jobs whose last on-chain attempt failed alone: job id -> reason (shown by explain).
        self.failures: dict[int, str] = {}
        #: Assignments mined but not yet seen as events: job id -> (block, block hash) of the receipt.
        self._inflight: dict[int, tuple[int, str]] = {}

    # -- follower handler ------------------------------------------------------------------------
    def on_event(self, event: ChainEvent) -> None:
        if self.state.apply(event):
            self._dirty = True
        self.shares.on_event(event)
        self._track(event)
        if isinstance(event, JobSubmitted) and self.metrics:
            self.metrics.submitted.inc(event.count)
        elif isinstance(event, ClaimTimeoutChanged):  # applies to every job from now on, not only new ones
            self.claim_timeout = event.claim_timeout

    def _track(self, event: ChainEvent) -> None:
        """Keeps the backlog in step: jobs (back) in PENDING are fresh, others leave; providers touched."""
        provider = getattr(event, "provider", None)
        if isinstance(provider, str):
            self._touched.add(provider)
        if isinstance(event, JobSubmitted):
            ids = range(event.first_job_id, event.first_job_id + event.count)
        else:
            job_id = getattr(event, "job_id", None)
            ids = range(job_id, job_id + 1) if isinstance(job_id, int) else range(0)
        for job_id in ids:
            job = self.state.pending.get(job_id)
            if job is None:
                self.backlog.remove(job_id)
                self.never.pop(job_id, None)
                self._pending_since.pop(job_id, None)
                self._held.pop(job_id, None)
                self._parked_late.discard(job_id)
                continue
            if isinstance(event, JobSubmitted | JobReleased):
                self._pending_since[job_id] = time.monotonic()
            if job.problem is not None:
                self.never[job_id] = job.problem
            elif not isinstance(event, JobToppedUp) or not self.backlog.is_parked(job_id):
                self.backlog.add(job.as_pending())

    def on_reorg(self, block: int) -> None:
        """Events after ``block`` are gone: rebuild the whole state by replaying from the start."""
        log.warning("reorg back to block %d: rebuilding the grid state from events", block)
        self.fairshare = FairShare(self.fairshare.half_life_s)
        self.matcher.fairshare = self.fairshare
        self.state = GridState(self.fairshare, self._event_time)
        self.follower.db.execute("DELETE FROM follower_checkpoint WHERE name=?", (self.follower.name,))
        self._block_times.clear()  # timestamps of blocks that are gone
        self.failures.clear()
        self.backlog.clear()  # the replay adds every pending job again
        self.never.clear()
        self._pending_since.clear()
        self._held.clear()
        self._parked_late.clear()
        self.shares.clear()
        self._touched.clear()
        self._inflight.clear()
        # Our own transactions on the lost fork may be gone too: take the next nonce from the node again.
        self.wallet.reset_nonce()
        self._dirty = True

    def _now(self) -> float:
        """Chain time: fair-share usage is recorded and decayed in chain time. The timestamp of the newest
        block the follower went through (cached, no call on the critical path), else the node's newest."""
        cp = self.follower.checkpoint
        return self._block_time(cp.block) if cp is not None else float(self.chain.timestamp())

    def _event_time(self, ev: ChainEvent) -> float:
        return self._block_time(ev.block_number)

    def _block_time(self, block: int) -> float:
        t = self._block_times.get(block)
        if t is None:
            if len(self._block_times) > 100_000:
                self._block_times.clear()
            t = self._block_times[block] = float(self.chain.timestamp(block))
        return t

    # -- rounds ----------------------------------------------------------------------------------
    def sync(self) -> int:
        """Applies new events; returns how many."""
        n = self.follower.poll()
        self._recheck_inflight()
        if self.metrics:
            self.metrics.pending.set(len(self.state.pending))
        if self._held:
            self._release_held()
        if self.backlog.fresh or self._touched:
            self._dirty = True
        return n

    def _release_held(self) -> None:
        """Jobs left to another scheduler whose delay has passed go back to the backlog."""
        now, pending = time.monotonic(), self.state.pending
        for job_id, at in list(self._held.items()):
            if at <= now:
                del self._held[job_id]
                if job_id in pending:
                    self.backlog.add(pending[job_id].as_pending())

    def _recheck_inflight(self) -> None:
        """Returns to the backlog the jobs whose assignment was mined in a block that is gone.

        The backlog drops a job once its assignment is mined; the follower then delivers the JobAssigned
        event. A reorg that removes that block *before* the follower reached it is invisible to the
        follower (its checkpoint is older and unchanged), so without this the job would stay PENDING on
        chain and out of every round."""
        if not self._inflight:
            return
        pending = self.state.pending
        cp = self.follower.checkpoint
        by_block: dict[tuple[int, str], list[int]] = {}
        for job_id, where in list(self._inflight.items()):
            if job_id not in pending:
                del self._inflight[job_id]  # its event arrived: the state follows the chain from here
            else:
                by_block.setdefault(where, []).append(job_id)
        for (number, block_hash), ids in by_block.items():
            if block_is(self.chain, number, block_hash):
                if cp is not None and cp.block >= number:
                    for job_id in ids:  # delivered and still pending: released since, _track re-added it
                        del self._inflight[job_id]
                continue
            log.warning("the assignment of job(s) %s in block %d is gone (reorg): examining them again",
                        ids, number)
            self.wallet.reset_nonce()
            for job_id in ids:
                del self._inflight[job_id]
                self.backlog.add(pending[job_id].as_pending())
            self._dirty = True

    def round(self, *, max_attempts: int = 3, synced: bool = False) -> RoundResult:
        """One matching round: sync (unless the caller just did), match, commit in one batch; re-match after
        a lost race."""
        started = time.monotonic()
        result = RoundResult()
        self._dirty = False
        taken: list[PendingJob] = []
        for attempt in range(max_attempts):
            if attempt or not synced:
                self.sync()
            self.backlog.restore(taken)
            self._wake()
            result.skipped.update(self.never)
            taken = self._take()
            if not taken:
                break
            assignments = self.matcher.match(taken, self.state.providers, self._now(), limit=self.batch_limit)
            result.skipped.update(self.matcher.last_errors)
            result.unplaced = list(self.matcher.last_unplaced)
            if not assignments:
                self._settle(taken, (), [*result.unplaced, *self.matcher.last_errors])
                taken = []
                break
            try:
                landed = self._commit(assignments)
            except ContractError as e:
                log.info("batch of %d lost a race (%s); re-matching", len(assignments), e)
                if self.metrics:
                    self.metrics.errors.labels(kind=type(e).__name__).inc()
                continue
            result.assigned = landed
            for a in assignments:
                if a.job_id in self.failures and a not in landed:
                    result.skipped[a.job_id] = self.failures[a.job_id]
            self._settle(taken, landed, [*result.unplaced, *self.matcher.last_errors])
            taken = []
            if self.backlog.fresh:
                self._dirty = True  # more to examine: the next loop runs another round at once
            break
        else:
            self.backlog.restore(taken)
            taken = []
            result.assigned = self._commit_one_by_one(result)
        self.backlog.restore(taken)
        self.sync()
        result.seconds = time.monotonic() - started
        if result.assigned:
            log.info("assigned %d job(s) in %.3f s", len(result.assigned), result.seconds)
        return result

    def _take(self) -> list[PendingJob]:
        """The backlog's next jobs, as the grid state holds them now, but for those left to another scheduler
        for now (a standby: every job; several active schedulers: the others' shares), which are held until
        they have waited long enough."""
        jobs = self.state.pending
        taken = [jobs[j.id].as_pending() for j in self.backlog.take() if j.id in jobs]
        if self.standby_s <= 0 and len(self.shares.active) == 1:
            return taken
        # Wall clock from when this scheduler saw the job become examinable: chain time runs ahead in bursts
        # (one block per transaction, each a second later) and stands still on a chain that mines on demand.
        now = time.monotonic()
        due: list[PendingJob] = []
        for j in taken:
            delay = max(self.standby_s, self.shares.delay(j.id))
            if delay > 0 and j.id in self._parked_late:  # woken by a provider change: the other one wakes it too
                self._parked_late.discard(j.id)
                self._pending_since[j.id] = now
            at = self._pending_since.get(j.id, 0.0) + delay
            if at <= now:
                due.append(j)
            else:
                self._held[j.id] = at
        return due

    def _settle(self, taken: list[PendingJob], placed: Sequence[Assignment], unplaced: list[int]) -> None:
        """The backlog learns the round's outcome; a late job that fit nowhere is noted (see :meth:`_take`)."""
        self.backlog.settle(taken, (a.job_id for a in placed), unplaced)
        if self.standby_s > 0 or len(self.shares.active) > 1:
            self._parked_late.update(j for j in unplaced if max(self.standby_s, self.shares.delay(j)) > 0)

    def _wake(self) -> None:
        """Parked jobs that a touched provider could take now are examined again."""
        if not self._touched:
            return
        providers = self.state.providers
        for address in self._touched:
            state = providers.get(address)
            if state is not None:
                self.backlog.touch(state)
        self._touched.clear()

    def _commit(self, assignments: list[Assignment]) -> list[Assignment]:
        """Sends the assignments in one batch; returns those that landed. An entry the chain skipped (a
        cancel, pause or ban landed first) is recorded as a failure with the error the chain named."""
        t0 = time.monotonic()
        rows = [(a.job_id, a.provider, self.state.jobs[a.job_id].chain_labels) for a in assignments]
        receipt = self.client.assign_batch(rows, gas=batch_gas(rows))
        skipped = skipped_entries(self.client.market, receipt)
        landed = [a for a in assignments if a.job_id not in skipped]
        where = (receipt.block_number, HexBytes(receipt.raw["blockHash"]).to_0x_hex())
        for a in landed:
            self._inflight[a.job_id] = where
        if self.metrics:
            self.metrics.commit_latency.observe(time.monotonic() - t0)
            self.metrics.matches.inc(len(landed))
        for a in assignments:
            if a.job_id in skipped:
                self.failures[a.job_id] = f"assignment to {a.provider} skipped: {skipped[a.job_id]}"
                log.info("job %d: %s", a.job_id, self.failures[a.job_id])
                if self.metrics:
                    self.metrics.errors.labels(kind=type(skipped[a.job_id]).__name__).inc()
            else:
                self.failures.pop(a.job_id, None)
        return landed

    def _commit_one_by_one(self, result: RoundResult) -> list[Assignment]:
        """Last resort after repeated lost races: each assignment alone; failures are recorded, not raised."""
        self.sync()
        taken = self._take()
        assignments = self.matcher.match(taken, self.state.providers, self._now(), limit=self.batch_limit)
        self.backlog.restore(taken)  # examined again next round: the chain's events say what landed
        done: list[Assignment] = []
        for a in assignments:
            try:
                done += self._commit([a])
            except ContractError as e:
                self.failures[a.job_id] = f"assignment to {a.provider} reverted: {e}"
                result.skipped[a.job_id] = self.failures[a.job_id]
        return done

    def sweep_claim_timeouts(self) -> list[int]:
        """Sends back to PENDING every META_SCHEDULED job whose claim window passed."""
        waiting = [j for j in self.state.jobs.values() if j.status is JobStatus.META_SCHEDULED]
        if not waiting:
            return []
        now = self.chain.timestamp()
        # The chain's ``since`` is the assignment block's timestamp: only the jobs due by that are read back
        # from the chain (reading every waiting job every sweep stalled the service once thousands waited).
        # Another active scheduler's share is left to it for ``takeover_s`` more (both sending one would revert).
        due = [j.id for j in waiting
               if self._block_time(_assigned_block(j)) + self.claim_timeout + self.shares.delay(j.id) <= now]
        if not due:
            return []
        expired = [j.id for j in self.client.jobs(due)
                   if j.status is JobStatus.META_SCHEDULED and now >= j.since + self.claim_timeout]
        return self._release(expired, self.client.timeout_claim, "timeoutClaim")

    def _release(self, job_ids: list[int], send: Callable[[int], object], name: str) -> list[int]:
        """Sends ``send`` (the contract call ``name``) for each of ``job_ids``; returns those it applied to.
        One that reverts (another scheduler was first, the job moved) is logged and skipped."""
        released = []
        for job_id in job_ids:
            try:
                send(job_id)
                released.append(job_id)
            except ContractError as e:
                log.info("%s(%d) not applied: %s", name, job_id, e)
        if released:
            self._dirty = True
        return released

    def sweep_banned(self) -> list[int]:
        """Sends back to PENDING every META_SCHEDULED or SCHEDULED job whose provider is banned.

        A banned provider may no longer claim or start, so without this a job it had claimed would wait
        SCHEDULED for good (the claim timeout covers META_SCHEDULED only). Each job goes back to the matcher
        (which never picks that provider for it again). Another active scheduler's share waits ``takeover_s``."""
        now = time.monotonic()
        due = []
        for j in self.state.jobs.values():
            if j.status in (JobStatus.META_SCHEDULED, JobStatus.SCHEDULED) and j.provider is not None:
                known = self.state.provider_status(j.provider)
                if known is not None and known[0] is ProviderStatus.BANNED:
                    if now - self._banned_seen.setdefault(j.id, now) >= self.shares.delay(j.id):
                        due.append(j.id)
                    continue
            if self._banned_seen:
                self._banned_seen.pop(j.id, None)  # released, ended, or its provider's ban lifted
        released = self._release(due, self.client.release_from_banned, "releaseFromBanned")
        if released:
            log.warning("released %d job(s) of banned providers back to PENDING: %s", len(released), released)
        return released

    def run(self, stop: threading.Event) -> None:
        """Runs rounds until ``stop`` is set; survives node outages, bad events and a failing round (logged,
        counted, retried with back-off: the state is rebuilt from events, so nothing is lost).

        Between rounds it waits for the node's next block (``newHeads`` subscription, see
        :class:`~dsq_chain.services.heads.HeadWatcher`) or ``poll_interval``, whichever comes first."""
        backoff = self.poll_interval
        heads = HeadWatcher(self.chain.rpc_url)
        heads.start()
        seen = heads.seq
        try:
            while not stop.is_set():
                try:
                    self.sync()
                    if self._dirty:
                        self.round(synced=True)
                    if time.monotonic() - self._last_sweep > self.timeout_sweep_s:
                        self._last_sweep = time.monotonic()
                        self.sweep_claim_timeouts()
                        self.sweep_banned()
                    backoff = self.poll_interval
                    if not self._dirty:
                        seen = heads.wait(seen, self.poll_interval)
                except Exception as e:  # node gone mid-call, or a bug with one round: back off, go on
                    if isinstance(e, SCHEDULER_RETRY):
                        log.warning("scheduler: %s; retrying in %.1f s", e, backoff)
                    else:
                        log.exception("scheduler round failed: %s; retrying in %.1f s", e, backoff)
                    if self.metrics:
                        self.metrics.errors.labels(kind=type(e).__name__).inc()
                    self.wallet.reset_nonce()
                    stop.wait(backoff)
                    backoff = min(5.0, backoff * 2)
        finally:
            heads.close()

    # -- explain -----------------------------------------------------------------------------------
    def explain(self, job_id: int) -> Explanation | str:
        """Why a job waits (provider by provider), or what became of it."""
        self.sync()
        return explain_from_state(self.state, self.matcher, job_id, self._now(), self.failures)

    def explain_pending(self, job: PendingJob) -> Explanation:
        """Each provider's verdict on a job that is not submitted yet (what it would meet now)."""
        self.sync()
        return self.matcher.explain(job, self.state.providers, self._now())


#: Gas bounds of an assignBatch, each several times what the contract uses (measured: ~37 k for one job alone,
#: ~12 k per job in a batch of 100, ~4 k per label checked), so the limit is set without an estimation round
#: trip: EIP-1559 charges the gas used, not the limit. Above BATCH_GAS_CAP the node's estimate is asked.
BATCH_GAS_BASE, BATCH_GAS_PER_JOB, BATCH_GAS_PER_LABEL, BATCH_GAS_CAP = 80_000, 45_000, 12_000, 12_000_000


def batch_gas(rows: Sequence[tuple[int, str, Sequence[object]]]) -> int | None:
    """A safe gas limit for ``assignBatch(rows)``, or None (estimate) when it would exceed BATCH_GAS_CAP."""
    gas = BATCH_GAS_BASE + sum(BATCH_GAS_PER_JOB + BATCH_GAS_PER_LABEL * len(labels) for _, _, labels in rows)
    return gas if gas <= BATCH_GAS_CAP else None


def _assigned_block(job: JobRecord) -> int:
    """The block of the job's latest assignment (its history ends with it while META_SCHEDULED)."""
    return next((b for b, st in reversed(job.history) if st is JobStatus.META_SCHEDULED), 0)


def explain_from_state(
    state: GridState, matcher: Matcher, job_id: int, now: float, failures: dict[int, str] | None = None
) -> Explanation | str:
    """Why ``job_id`` waits at chain time ``now``, or what became of it."""
    job: JobRecord | None = state.jobs.get(job_id)
    if job is None:
        return f"job {job_id} does not exist (no JobSubmitted event for it)"
    if job.status is not JobStatus.PENDING:
        where = f" on {job.provider}" if job.provider else ""
        return f"job {job_id} is {job.status.name}{where}: it is not waiting for a provider"
    if job.problem is not None:
        return f"job {job_id} can never be placed: {job.problem}"
    explanation = matcher.explain(job.as_pending(), state.providers, now)
    if failures and job_id in failures:
        return f"{explanation}\nlast attempt: {failures[job_id]}"
    return explanation


def explain(
    wallet: Wallet, deployment: Deployment, job_id: int, *, weights: Weights | None = None
) -> Explanation | str:
    """SDK entry: rebuilds the grid state from events and explains ``job_id`` (no scheduler needed)."""
    sched = MetaScheduler(wallet, deployment, weights=weights)
    return sched.explain(job_id)

