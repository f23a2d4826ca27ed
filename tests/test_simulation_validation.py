"""The simulator against the real grid: the same scenario, simulated and run for real on Anvil, agrees.

``examples/scenarios/small.yaml`` (200+ jobs, 6 providers, one of which never claims, failures,
cancels while pending and running, top-ups) runs twice:

* in :class:`dsq_chain.simulation.Simulation`;
* through the real :class:`MetaScheduler` and five real :class:`ProviderWorker` processes' objects with
  the local executor on a fresh Anvil, in lockstep: every transaction of step ``k`` is mined at chain
  time ``T0 + 60 k`` (``evm_setNextBlockTimestamp`` before each one), and each job is a shell loop that
  exits once a clock file (advanced by the driver each step) has moved its runtime past its start.

Every placement (job, provider, chain time, re-placements after claim timeouts included), every final
status, bill and refund, and every start and settlement time agree exactly. Timing: in lockstep the
difference is zero by construction (same seconds); free-running, a real grid lags the simulation by
at most one scheduler poll plus one worker poll per transition (see docs/simulation.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hexbytes import HexBytes

from dsq_chain.executors import LocalExecutor
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import dev_keys, start_anvil
from dsq_chain.sdk.chain import Chain, Wallet
from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient
from dsq_chain.sdk.deployment import deploy
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.services.worker import ProviderWorker
from dsq_chain.simulation import JobSpec, Recorder, SimJob, Simulation, generate, load
from dsq_chain.simulation.pricing import base_prices
from dsq_chain.types import JobStatus, Resources
from tests.worker_scenarios import submit, workflow

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
SCENARIO = Path(__file__).resolve().parents[1] / "examples" / "scenarios" / "small.yaml"
S = JobStatus


class PinnedWallet(Wallet):
    """A wallet whose every transaction is mined at the driver's current chain time."""

    def __init__(self, chain: Chain, key: str, clock: Callable[[], int]) -> None:
        super().__init__(chain, key)
        self.clock = clock

    def _send_raw(self, raws: list[HexBytes]) -> list[HexBytes]:
        out: list[HexBytes] = []
        for raw in raws:  # automine: one block per transaction, each pinned
            self.chain.call_rpc("evm_setNextBlockTimestamp", [self.clock()])
            out += super()._send_raw([raw])
        return out


class Collect(Recorder):
    def __init__(self) -> None:
        self.jobs: dict[int, SimJob] = {}

    def job_done(self, job: SimJob, fee: int) -> None:
        self.jobs[job.id] = job


class Lockstep:
    """Drives the real grid one step (one round interval of chain time) at a time."""

    def __init__(self, rpc: str, tmp: Path, scenario: dict[str, Any], specs: list[JobSpec]) -> None:
        self.step_s = int(scenario["round_interval_s"])
        self.clock_file = tmp / "clock"
        providers = [pop for pop in scenario["providers"] for _ in range(pop["count"])]
        owners = sorted({s.owner for s in specs})
        keys = dev_keys(3 + len(providers) + len(owners))
        chain = Chain(rpc)
        admin_w = chain.wallet(keys[0])
        self.deployment = deploy(admin_w, claim_timeout=int(scenario["protocol"]["claim_timeout_s"]))
        admin = AdminClient(admin_w, self.deployment)
        self.chain = chain
        self.now = chain.timestamp() + 100
        #: Simulated second 0 is chain time t0 (a whole number of steps, as the simulation's rounds are).
        self.t0 = self.now - self.now % self.step_s + self.step_s
        self.specs = [replace(s, arrival=s.arrival + self.t0) for s in specs]
        pinned = lambda key: PinnedWallet(Chain(rpc), key, lambda: self.now)  # noqa: E731
        sched_key, pkeys, okeys = keys[1], keys[3:3 + len(providers)], keys[3 + len(providers):]
        admin.grant_scheduler(chain.wallet(sched_key).address)
        self.provider_addresses: list[str] = []
        self.workers: list[ProviderWorker] = []
        for i, (pop, key) in enumerate(zip(providers, pkeys, strict=True)):
            client = ProviderClient(chain.wallet(key), self.deployment)
            hw = pop["hardware"]
            client.register(Resources(hw["cpus"], hw.get("gpus", 0), hw["mem_mb"]), base_prices(pop["pricing"]),
                            {k: str(v) for k, v in pop.get("labels", {}).items()})
            admin.approve(client.address)
            self.provider_addresses.append(client.address)
            if pop.get("no_claim_prob", 0) < 1:  # a provider that never claims runs no worker at all
                self.workers.append(ProviderWorker(pinned(key), self.deployment,
                                                   LocalExecutor(tmp / f"exec{i}", kill_grace_s=1.0),
                                                   tmp / f"worker{i}", poll_interval=0.1))
        self.users: dict[str, GridClient] = {}
        for owner, key in zip(owners, okeys, strict=True):
            admin.mint(chain.wallet(key).address, Credits(1_000))
            self.users[owner] = GridClient(pinned(key), self.deployment)
        self.owner_addresses = {o: u.address for o, u in self.users.items()}
        self.reader = GridClient(chain.wallet(keys[2]), self.deployment)
        self.batch_limit = int(scenario["protocol"]["batch_limit"])
        self.scheduler = MetaScheduler(pinned(sched_key), self.deployment, batch_limit=self.batch_limit)
        self.ids: dict[int, int] = {}  # spec.seq -> chain job id
        self.runtime: dict[int, int] = {}  # chain job id -> runtime
        self.live = {w.address for w in self.workers}
        self.open: set[int] = set()

    def set_time(self, t: int) -> None:
        self.now = t
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(str(t))
        os.replace(tmp, self.clock_file)
        self.chain.call_rpc("evm_setNextBlockTimestamp", [t])
        self.chain.mine()

    def _tick_until(self, done: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for w in self.workers:
                w.tick()
            if done():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"step at {self.now}: {what} not done after {timeout} s")
            time.sleep(0.02)

    def _open_jobs(self) -> list[Any]:
        jobs = self.reader.jobs(sorted(self.open))
        self.open = {j.id for j in jobs if not j.status.is_final}
        return jobs

    def step(self, t: int) -> None:
        self.set_time(t)
        # 0. providers report the ends due by now
        def ended() -> bool:
            return not any(j.status is S.RUNNING and j.since + self.runtime[j.id] <= t for j in self._open_jobs())
        self._tick_until(ended, "reporting the ends")
        # 1. owners act: submissions, then cancels, then top-ups (the order the simulation takes them)
        for spec in self.specs:
            if spec.arrival == t:
                clock = self.clock_file
                cmd = (f't0=$(cat {clock}); while [ "$(cat {clock})" -lt $((t0 + {spec.runtime})) ]; do sleep 0.1;'
                       f' done; exit {spec.exit_code}')
                wf = workflow(cmd, cpus=spec.cpus, mem_per_cpu=spec.mem_mb // spec.cpus, name=f"j{spec.seq}",
                              labels=[str(c) for c in spec.labels])
                [job_id] = submit(self.users[spec.owner], wf, spec.escrow, max_rate=spec.max_rate)
                self.ids[spec.seq], self.runtime[job_id] = job_id, spec.runtime
                self.open.add(job_id)
        status = {j.id: j.status for j in self._open_jobs()}
        for spec in self.specs:
            job_id = self.ids.get(spec.seq, 0)
            if spec.cancel_after is not None and spec.arrival + spec.cancel_after == t and job_id in status:
                self.users[spec.owner].cancel(job_id)
                status.pop(job_id)
        for spec in self.specs:
            job_id = self.ids.get(spec.seq, 0)
            for offset, amount in spec.top_ups:
                if spec.arrival + offset == t and job_id in status:
                    self.users[spec.owner].top_up(job_id, Credits(units=amount))
        # 2.-3. the scheduler: claim timeouts, then rounds (another at once after a full batch)
        self.scheduler.sweep_claim_timeouts()
        while len(self.scheduler.round().assigned) >= self.batch_limit:
            pass
        # 4. assigned providers with a worker claim and start
        def started() -> bool:
            return not any(j.status in (S.META_SCHEDULED, S.SCHEDULED) and j.provider in self.live
                           for j in self._open_jobs())
        self._tick_until(started, "claiming and starting")

    def run(self) -> None:
        last = max(s.arrival for s in self.specs)
        for k in range(2_000):
            t = self.t0 + k * self.step_s
            self.step(t)
            if t >= last and not self.open:
                return
        raise AssertionError("the lockstep run does not end")

    def close(self) -> None:
        for w in self.workers:
            w.close()


def _events(client: GridClient, name: str) -> list[dict[str, Any]]:
    logs = getattr(client.market.events, name)().get_logs(from_block=client.deployment.block)
    return [dict(lg["args"], block=lg["blockNumber"]) for lg in logs]


@pytest.fixture
def rpc() -> Iterator[str]:
    node = start_anvil(accounts=20)
    try:
        yield node.rpc_url
    finally:
        node.stop()


def test_simulator_matches_the_real_grid(rpc: str, tmp_path: Path) -> None:
    scenario = load(SCENARIO)
    specs = list(generate(scenario))
    assert len(specs) >= 200 and sum(pop["count"] for pop in scenario["providers"]) >= 5
    grid = Lockstep(rpc, tmp_path, scenario, specs)
    try:
        grid.run()
    finally:
        grid.close()
    # the same scenario in the simulator, on the same addresses, its jobs shifted to the chain's first step
    collect = Collect()
    sim = Simulation(scenario, recorder=collect, provider_addresses=grid.provider_addresses,
                     owner_addresses=grid.owner_addresses, jobs=iter(grid.specs))
    sim.run()
    chain_jobs = _chain_outcomes(grid.reader)
    sim_jobs = {j: (sj.status, sj.billed, sj.refunded, [(t, p) for t, p in sj.placements], sj.start, sj.end)
                for j, sj in collect.jobs.items()}
    assert set(sim_jobs) == set(chain_jobs) == set(range(1, len(specs) + 1))
    diffs = [(j, sim_jobs[j], chain_jobs[j]) for j in sorted(sim_jobs) if sim_jobs[j] != chain_jobs[j]]
    assert not diffs, f"{len(diffs)} jobs differ (job, simulated, on chain); first: {diffs[:3]}"
    # the scenario really exercised every path it claims to
    statuses = [v[0] for v in chain_jobs.values()]
    assert statuses.count(S.FAILED) >= 5 and statuses.count(S.CANCELED) >= 5
    assert sim.counters.timed_out >= 3 and sim.counters.top_ups >= 3
    assert any(v[0] is S.CANCELED and v[1] > 0 for v in chain_jobs.values()), "no job was cancelled while running"
    assert sum(v[1] for v in chain_jobs.values()) == sim.counters.billed > 0


def _chain_outcomes(client: GridClient) -> dict[int, tuple[Any, ...]]:
    ts: dict[int, int] = {}

    def at(block: int) -> int:
        if block not in ts:
            ts[block] = client.chain.timestamp(block)
        return ts[block]

    placements: dict[int, list[tuple[int, str]]] = {}
    for e in _events(client, "JobAssigned"):
        placements.setdefault(int(e["jobId"]), []).append((at(e["block"]), e["provider"]))
    starts = {int(e["jobId"]): at(e["block"]) for e in _events(client, "JobStatusChanged")
              if e["status"] == S.RUNNING}
    out: dict[int, tuple[Any, ...]] = {}
    for e in _events(client, "JobSettled"):
        j = int(e["jobId"])
        out[j] = (S(e["status"]), int(e["billed"]), int(e["refunded"]), placements.get(j, []), starts.get(j),
                  at(e["block"]))
    return out
