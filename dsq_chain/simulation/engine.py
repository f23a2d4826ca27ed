"""The market simulator's event loop: users, providers and the meta-scheduler over simulated chain time.

One heap of events ordered by (time, phase, sequence). At equal times the phases run in the order a
lockstep run of the real grid takes them (``tests/test_simulation_validation.py``):

0. providers report ends (FINISHED / FAILED, OUT_OF_CREDITS, PANICKED);
1. owners act (submissions, cancels, top-ups);
2. claim timeouts are swept, prices and the provider population change;
3. the meta-scheduler runs a matching round: :class:`dsq_chain.matching.Matcher`, the same object
   the real scheduler calls, on the same inputs (pending jobs with their exclusions, provider states
   with reliability counted the same way, fair share fed with what each owner was billed);
4. assigned providers claim (or refuse) and start;
5. the time series is sampled.

Rounds happen on multiples of ``round_interval_s`` after anything that may let one place a job (like
the real scheduler, which matches when an event makes it dirty); a round that fills its batch limit is
followed by another at once. Every bill and refund comes from :mod:`dsq_chain.billing`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dsq_chain import billing
from dsq_chain.matching import FairShare, Matcher, PendingJob, ProviderState, Weights
from dsq_chain.matching.model import SETTLED_STAT
from dsq_chain.simulation.distributions import chance, sample_int
from dsq_chain.simulation.pricing import adjusted_factor, base_prices, initial_factor, scaled
from dsq_chain.simulation.workload import JobSpec, generate
from dsq_chain.types import JobStatus, Prices, Resources

S = JobStatus
# Phases at equal times (see the module docstring).
END, USER, HOUSEKEEPING, ROUND, CLAIM, SAMPLE = range(6)
# Event kinds.
(_ARRIVE, _CANCEL, _TOPUP, _LOW, _TIMEOUT, _ROUND, _CLAIM, _CHECK, _PANIC, _PRICE, _LEAVE, _JOIN, _SAMPLE,
 _AUDIT) = range(14)
#: Seconds between the checks of providers' earnings (``churn.min_earnings_per_cpu_day``).
DAY = 86_400
#: Reasons a job never reached the chain (an owner without credits, or priced out).
REJECTIONS = ("no_credits", "priced_out")


@dataclass(slots=True)
class SimProvider:
    """A provider: its matcher state plus what the simulation needs (behaviour, prices, earnings)."""

    state: ProviderState
    population: dict[str, Any]
    base: Prices
    factor: float
    joined: int
    left: int | None = None
    revenue: int = 0
    revenue_mark: int = 0
    jobs: int = 0
    rng: random.Random = field(default_factory=random.Random)


@dataclass(slots=True)
class SimJob:
    """A submitted job's life."""

    id: int
    spec: JobSpec
    pending: PendingJob
    status: JobStatus = S.PENDING
    escrow: int = 0
    provider: str | None = None
    rate: int = 0
    assigned_at: int = 0
    start: int | None = None
    first_start: int | None = None
    end: int | None = None
    billed: int = 0
    refunded: int = 0
    version: int = 0
    placements: list[tuple[int, str]] = field(default_factory=list)


@dataclass(slots=True)
class Counters:
    """Running totals, sampled into the time series."""

    submitted: int = 0
    placements: int = 0
    finished: int = 0
    failed: int = 0
    out_of_credits: int = 0
    canceled: int = 0
    panicked: int = 0
    refused: int = 0
    timed_out: int = 0
    no_credits: int = 0
    priced_out: int = 0
    billed: int = 0
    refunded: int = 0
    fees: int = 0
    minted: int = 0
    top_ups: int = 0
    joins: int = 0
    leaves: int = 0
    rounds: int = 0


@dataclass
class Recorder:
    """Where the simulation reports: override any method (the run folder writer does)."""

    def job_done(self, job: SimJob, fee: int) -> None:
        """A job reached a final status."""

    def sample(self, sim: Simulation) -> None:
        """The time series is due for a row (every ``sample_interval_s``)."""


class Simulation:
    """One run of a validated scenario (see :func:`dsq_chain.simulation.scenario.load`)."""

    def __init__(
        self,
        scenario: dict[str, Any],
        *,
        recorder: Recorder | None = None,
        provider_addresses: list[str] | None = None,
        owner_addresses: dict[str, str] | None = None,
        jobs: Iterator[JobSpec] | None = None,
    ) -> None:
        self.scenario = scenario
        proto = scenario.get("protocol", {})
        self.round_interval = int(scenario.get("round_interval_s", 60))
        self.claim_timeout = int(proto.get("claim_timeout_s", 300))
        self.fee_bps = int(proto.get("fee_bps", 0))
        self.batch_limit = int(proto.get("batch_limit", 200))
        self.sample_interval = int(scenario.get("sample_interval_s", 600))
        self.max_time = int(scenario.get("max_time_s", scenario["duration_s"] * 4))
        self.fairshare = FairShare(float(proto.get("fairshare_half_life_s", 7 * 24 * 3600)))
        self.matcher = Matcher(Weights(**proto.get("weights", {})), self.fairshare)
        self.recorder = recorder or Recorder()
        self.rng = random.Random(scenario["seed"])
        self.now = 0
        #: Simulated time of the first arrival (the run's start).
        self.start = 0
        self.counters = Counters()
        self.providers: dict[str, SimProvider] = {}
        self.states: dict[str, ProviderState] = {}
        self.jobs: dict[int, SimJob] = {}  # live (non-final) jobs
        self.pending: dict[int, PendingJob] = {}
        self.waits: list[int] = []  # submission -> first start, per started job
        self.window_waits: list[int] = []
        self.balances: dict[str, int] = {}  # owner -> credits not locked in escrow
        self.spend: dict[str, int] = {}
        self.refunds: dict[str, int] = {}
        self._heap: list[tuple[int, int, int, int, Any]] = []
        self._seq = 0
        self._next_id = 1
        self._round_at: int | None = None
        self._last_round: int | None = None
        self._addresses = list(provider_addresses or [])
        self._owner_addresses = owner_addresses or {}
        self._jobs_source = jobs if jobs is not None else generate(scenario)
        self._income = {p["name"]: p for p in scenario.get("users", [])}
        self._budget = scenario.get("budget", {})
        self._median: float | None = None
        self.finished_arrivals = False
        self._build_providers()

    # ------------------------------------------------------------------ set-up
    def _build_providers(self) -> None:
        for pop in self.scenario["providers"]:
            for _ in range(pop["count"]):
                self._add_provider(pop, 0)

    def _start_dynamics(self) -> None:
        """Churn and price-controller events, from the first arrival on."""
        for pop in self.scenario["providers"]:
            churn = pop.get("churn", {})
            if churn.get("join_per_day", 0) > 0:
                self._push(self._exp(churn["join_per_day"]), HOUSEKEEPING, _JOIN, pop)
            if churn.get("min_earnings_per_cpu_day") is not None:
                self._push(self.now + DAY, HOUSEKEEPING, _AUDIT, pop)
            if churn.get("leave_per_day", 0) > 0:
                self._push(self._exp(churn["leave_per_day"] * pop["count"]), HOUSEKEEPING, _LEAVE, pop)
            if pop["pricing"]["strategy"] == "target_utilisation":
                every = int(pop["pricing"].get("every_s", 3600))
                self._push(self.now + every, HOUSEKEEPING, _PRICE, (pop, every))

    def _exp(self, per_day: float) -> int:
        return self.now + max(1, round(self.rng.expovariate(per_day / 86400.0)))

    def _add_provider(self, pop: dict[str, Any], now: int) -> SimProvider:
        i = len(self.providers)
        address = self._addresses[i] if i < len(self._addresses) else f"0x{i + 1:040x}"
        hw = pop["hardware"]
        total = Resources(int(hw["cpus"]), int(hw.get("gpus", 0)), int(hw["mem_mb"]))
        rng = random.Random(self.scenario["seed"] * 104729 + i)
        base = base_prices(pop["pricing"])
        factor = initial_factor(pop["pricing"], rng)
        labels = {str(k): str(v) for k, v in pop.get("labels", {}).items()}
        state = ProviderState(address, total, total, scaled(base, factor), labels)
        prov = SimProvider(state, pop, base, factor, now, rng=rng)
        self.providers[address] = prov
        self.states[address] = state
        return prov

    # ------------------------------------------------------------------ the loop
    def _push(self, t: int, phase: int, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, phase, self._seq, kind, payload))

    def _want_round(self) -> None:
        """A round at the next round boundary this one has not run yet."""
        step = self.round_interval
        t = -(-self.now // step) * step
        if self._last_round is not None and t <= self._last_round:
            t = self._last_round + step
        if self._round_at is None or t < self._round_at:
            self._round_at = t
            self._push(t, ROUND, _ROUND, t)

    def _pull_arrival(self) -> None:
        spec = next(self._jobs_source, None)
        if spec is None:
            self.finished_arrivals = True
            return
        self._push(max(spec.arrival, self.now), USER, _ARRIVE, spec)

    def run(self, progress: Callable[[int], None] | None = None) -> Counters:
        """Runs until every job is final (or ``max_time_s``); ``progress(jobs settled)`` is called as it goes."""
        self._pull_arrival()
        if self._heap:  # simulated time starts with the first arrival
            self.now = self.start = self._heap[0][0]
            for p in self.providers.values():
                p.joined = self.now
        self.max_time += self.now
        self._start_dynamics()
        self._push(self.now, SAMPLE, _SAMPLE, None)
        handlers: dict[int, Callable[[Any], None]] = {
            _ARRIVE: self._arrive, _CANCEL: self._cancel, _TOPUP: self._top_up, _LOW: self._top_up_low,
            _TIMEOUT: self._timeout, _ROUND: self._round, _CLAIM: self._claim, _CHECK: self._check,
            _PANIC: self._panic, _PRICE: self._price, _LEAVE: self._leave, _JOIN: self._join, _SAMPLE: self._sample,
            _AUDIT: self._audit,
        }
        done = 0
        heap = self._heap
        while heap:
            t, _phase, _seq, kind, payload = heapq.heappop(heap)
            if t > self.max_time:
                break
            self.now = t
            handlers[kind](payload)
            if progress is not None and kind == _CHECK:
                settled = self.counters.finished + self.counters.failed + self.counters.out_of_credits
                if settled - done >= 1000:
                    done = settled
                    progress(done)
            if self.finished_arrivals and not self.jobs and kind != _SAMPLE:
                break
        self._sample(None, last=True)
        return self.counters

    # ------------------------------------------------------------------ owners
    def owner_address(self, owner: str) -> str:
        return self._owner_addresses.get(owner, owner)

    def _balance(self, owner: str, population: str) -> int:
        """The owner's credits, minting its budget on first use and its income since the last look."""
        if owner not in self.balances:
            pop = self._income.get(population, {})
            budget = int(pop.get("budget_credits", self._budget.get("credits", 10**9)) * 10**6)
            self.balances[owner] = budget
            self.counters.minted += budget
            self.spend[owner] = self.refunds[owner] = 0
        return self.balances[owner]

    def _arrive(self, spec: JobSpec) -> None:
        self._pull_arrival()
        pop = self._income.get(spec.population, {})
        elasticity = pop.get("price_elasticity", 0.0)
        if elasticity > 0:
            ref = pop["reference_cpu_price"]
            median = self._median_cpu_price()
            if median > ref and chance(1.0 - (ref / median) ** elasticity, self.rng):
                self.counters.priced_out += 1
                return
        if self._balance(spec.owner, spec.population) < spec.escrow:
            self.counters.no_credits += 1
            return
        self.balances[spec.owner] -= spec.escrow
        job_id = self._next_id
        self._next_id += 1
        owner = self.owner_address(spec.owner)
        pending = PendingJob(job_id, owner, Resources(spec.cpus, spec.gpus, spec.mem_mb), spec.max_rate, spec.labels,
                             float(self.now))
        job = SimJob(job_id, spec, pending, escrow=spec.escrow)
        self.jobs[job_id] = job
        self.pending[job_id] = pending
        self.counters.submitted += 1
        if spec.cancel_after is not None:
            self._push(self.now + spec.cancel_after, USER, _CANCEL, job)
        for offset, amount in spec.top_ups:
            self._push(self.now + offset, USER, _TOPUP, (job, amount))
        self._want_round()

    def _median_cpu_price(self) -> float:
        """The median CPU-minute price of the active providers (cached until prices or providers change)."""
        if self._median is None:
            self._median = self._compute_median()
        return self._median

    def _compute_median(self) -> float:
        prices = sorted(p.state.prices.units[0] for p in self.providers.values() if p.state.active)
        return float(prices[len(prices) // 2]) if prices else 0.0

    def _cancel(self, job: SimJob) -> None:
        if job.status.is_final:
            return
        if job.status is S.RUNNING:
            assert job.start is not None
            result = billing.cancel(job.status, job.escrow, job.rate, job.start, self.now)
        else:
            result = billing.cancel(job.status, job.escrow)
        self._settle(job, result)

    def _top_up(self, arg: tuple[SimJob, int]) -> None:
        job, amount = arg
        if job.status.is_final:
            return
        owner = job.spec.owner
        if self._balance(owner, job.spec.population) < amount:
            return
        self.balances[owner] -= amount
        job.escrow = billing.top_up(job.status, job.escrow, amount)
        self.counters.top_ups += 1
        if job.status is S.RUNNING:
            self._schedule_end(job)

    def _top_up_low(self, arg: tuple[SimJob, int]) -> None:
        job, version = arg
        if job.version == version and job.status is S.RUNNING:
            self._top_up((job, job.spec.top_up_when_low))

    # ------------------------------------------------------------------ scheduler
    def _round(self, t: int) -> None:
        if self._round_at != t:
            return
        self._round_at = None
        self._last_round = t
        self.counters.rounds += 1
        if not self.pending:
            return
        assignments = self.matcher.match(self.pending.values(), self.states, float(self.now), limit=self.batch_limit)
        for a in assignments:
            job = self.jobs[a.job_id]
            prov = self.providers[a.provider]
            del self.pending[a.job_id]
            self._reserve(prov, job, -1)
            job.status, job.provider, job.rate, job.assigned_at = S.META_SCHEDULED, a.provider, a.rate, self.now
            job.placements.append((self.now, a.provider))
            self.counters.placements += 1
            pop = prov.population
            if chance(pop.get("no_claim_prob", 0.0), prov.rng):
                t_out = self.now + self.claim_timeout
                step = self.round_interval
                self._push(-(-t_out // step) * step, HOUSEKEEPING, _TIMEOUT, (job, self.now))
            else:
                delay = sample_int(pop.get("claim_delay_s", 0), prov.rng, 0)
                self._push(self.now + delay, CLAIM, _CLAIM, (job, self.now))
        if len(assignments) >= self.batch_limit:
            self._round_at = self.now  # the real scheduler runs the next round at once
            self._push(self.now, ROUND, _ROUND, self.now)

    def _reserve(self, prov: SimProvider, job: SimJob, sign: int) -> None:
        s, r = prov.state, job.pending.resources
        s.free = Resources(s.free.cpus + sign * r.cpus, s.free.gpus + sign * r.gpus, s.free.mem_mb + sign * r.mem_mb)

    def _release(self, job: SimJob, stat: str | None) -> SimProvider:
        assert job.provider is not None
        prov = self.providers[job.provider]
        self._reserve(prov, job, +1)
        if stat is not None:
            setattr(prov.state.stats, stat, getattr(prov.state.stats, stat) + 1)
        return prov

    def _back_to_pending(self, job: SimJob, stat: str) -> None:
        self._release(job, stat)
        assert job.provider is not None
        job.pending.excluded.add(job.provider)
        job.status, job.provider, job.rate = S.PENDING, None, 0
        self.pending[job.id] = job.pending
        self._want_round()

    def _timeout(self, arg: tuple[SimJob, int]) -> None:
        job, assigned_at = arg
        if job.status is S.META_SCHEDULED and job.assigned_at == assigned_at:
            self.counters.timed_out += 1
            self._back_to_pending(job, "timed_out")

    # ------------------------------------------------------------------ providers
    def _claim(self, arg: tuple[SimJob, int]) -> None:
        job, assigned_at = arg
        if job.status is not S.META_SCHEDULED or job.assigned_at != assigned_at:
            return
        assert job.provider is not None
        prov = self.providers[job.provider]
        pop = prov.population
        refuse_above = pop.get("refuse_above_cpus")
        if refuse_above is not None and job.spec.cpus > refuse_above:
            self.counters.refused += 1
            self._back_to_pending(job, "refused")
            return
        job.status = S.RUNNING  # claimed and started in one report, as the worker does when its engine starts at once
        job.start = self.now
        if job.first_start is None:
            job.first_start = self.now
            wait = self.now - job.spec.arrival
            self.waits.append(wait)
            self.window_waits.append(wait)
        prov.jobs += 1
        if chance(pop.get("panic_prob", 0.0), prov.rng):
            self._push(self.now + prov.rng.randrange(max(1, job.spec.runtime)), END, _PANIC, (job, job.start))
        self._schedule_end(job)

    def _schedule_end(self, job: SimJob) -> None:
        """The job's next end check: the end of its run or the exhaustion of its escrow, whichever is first."""
        assert job.start is not None
        job.version += 1
        end = job.start + job.spec.runtime
        exhausted = billing.exhausted_at(job.rate, job.start, job.escrow) if job.rate > 0 else end + 1
        self._push(min(end, exhausted), END, _CHECK, (job, job.version))
        if job.spec.top_up_when_low and exhausted < end:
            lead = max(1, (exhausted - job.start) // 10)
            self._push(max(self.now, exhausted - lead), USER, _LOW, (job, job.version))

    def _check(self, arg: tuple[SimJob, int]) -> None:
        job, version = arg
        if job.version != version or job.status is not S.RUNNING:
            return
        assert job.start is not None
        if self.now >= job.start + job.spec.runtime:
            self._settle(job, billing.finish(job.rate, job.start, self.now, job.escrow, job.spec.exit_code))
        else:
            self._settle(job, billing.out_of_credits(job.rate, job.start, self.now, job.escrow))

    def _panic(self, arg: tuple[SimJob, int]) -> None:
        job, start = arg
        if job.status is S.RUNNING and job.start == start:
            self._settle(job, billing.panic(job.status, job.escrow))

    # ------------------------------------------------------------------ settling
    def _settle(self, job: SimJob, result: billing.Settlement) -> None:
        held = job.status.holds_capacity
        job.status, job.billed, job.refunded, job.end = result.status, result.billed, result.refunded, self.now
        job.version += 1
        self.jobs.pop(job.id, None)
        self.pending.pop(job.id, None)
        owner = job.spec.owner
        self.balances[owner] += result.refunded
        self.spend[owner] += result.billed
        self.refunds[owner] += result.refunded
        fee = result.billed * self.fee_bps // 10_000
        c = self.counters
        c.billed += result.billed
        c.refunded += result.refunded
        c.fees += fee
        if result.billed:
            self.fairshare.record(job.pending.owner, float(result.billed), float(self.now))
        if held:
            stat = SETTLED_STAT.get(result.status)
            prov = self._release(job, stat)
            prov.revenue += result.billed - fee
        name = {S.FINISHED: "finished", S.FAILED: "failed", S.OUT_OF_CREDITS: "out_of_credits",
                S.CANCELED: "canceled", S.PANICKED: "panicked"}[result.status]
        setattr(c, name, getattr(c, name) + 1)
        self.recorder.job_done(job, fee)
        self._want_round()

    # ------------------------------------------------------------------ population dynamics
    def utilisation(self, providers: list[SimProvider] | None = None) -> float:
        """CPUs reserved over CPUs offered (by ``providers``, default all that are active or still hold jobs)."""
        chosen = providers if providers is not None else [
            p for p in self.providers.values() if p.state.active or p.state.free.cpus < p.state.total.cpus]
        total = sum(p.state.total.cpus for p in chosen)
        used = sum(p.state.total.cpus - p.state.free.cpus for p in chosen)
        return used / total if total else 0.0

    def _price(self, arg: tuple[dict[str, Any], int]) -> None:
        self._median = None
        pop, every = arg
        for prov in self.providers.values():
            if prov.population is pop and prov.state.active:
                util = self.utilisation([prov])
                prov.factor = adjusted_factor(pop["pricing"], prov.factor, util)
                prov.state.prices = scaled(prov.base, prov.factor)
        self._want_round()
        if not (self.finished_arrivals and not self.jobs):
            self._push(self.now + every, HOUSEKEEPING, _PRICE, arg)

    def _leave(self, pop: dict[str, Any]) -> None:
        self._median = None
        active = [p for p in self.providers.values() if p.population is pop and p.state.active]
        if active:
            prov = active[self.rng.randrange(len(active))]
            prov.state.active = False  # paused: keeps its jobs, takes no new ones
            prov.left = self.now
            self.counters.leaves += 1
        if not (self.finished_arrivals and not self.jobs):
            rate = pop["churn"]["leave_per_day"] * max(1, len(active) - 1)
            self._push(self._exp(rate), HOUSEKEEPING, _LEAVE, pop)

    def _audit(self, pop: dict[str, Any]) -> None:
        """Providers that earned less than ``min_earnings_per_cpu_day`` over the last day leave (after a day)."""
        floor = pop["churn"]["min_earnings_per_cpu_day"] * 1_000_000
        self._median = None
        for prov in self.providers.values():
            if prov.population is pop and prov.state.active and self.now - prov.joined >= DAY:
                earned = prov.revenue - prov.revenue_mark
                if earned < floor * prov.state.total.cpus:
                    prov.state.active = False
                    prov.left = self.now
                    self.counters.leaves += 1
            prov.revenue_mark = prov.revenue
        if not (self.finished_arrivals and not self.jobs):
            self._push(self.now + DAY, HOUSEKEEPING, _AUDIT, pop)

    def _join(self, pop: dict[str, Any]) -> None:
        self._median = None
        self._add_provider(pop, self.now)
        self.counters.joins += 1
        self._want_round()
        if not (self.finished_arrivals and not self.jobs):
            self._push(self._exp(pop["churn"]["join_per_day"]), HOUSEKEEPING, _JOIN, pop)

    def _sample(self, _: Any, last: bool = False) -> None:
        self.recorder.sample(self)
        self.window_waits = []
        if not last and not (self.finished_arrivals and not self.jobs):
            self._push(self.now + self.sample_interval, SAMPLE, _SAMPLE, None)


def percentile(values: list[int] | list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    s = sorted(values)
    return float(s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))])
