"""End-to-end benchmark: N trivial jobs (``true``) from submission to FINISHED through the meta-scheduler and
provider workers with the local executor, on a fresh Anvil.

    .venv/bin/python benchmarks/e2e.py [--jobs 1000] [--providers 1] [--cpus 200] [--array 250] [--probe 20]

Phase 1 (throughput): every job is submitted at once in job arrays; prints jobs/s from the first submission
to the last settlement, and the submission→RUNNING latency of those jobs (it includes queueing: jobs wait for
free capacity). Phase 2 (latency): ``--probe`` single jobs, submitted one at a time on the idle grid; prints
their submission→RUNNING and submission→FINISHED latency.

Latencies come from event blocks; a block's time is the wall-clock time a poller (every 10 ms) first saw it
mined (Anvil's block timestamps have 1 s resolution).

Capacity: a provider's chain capacity bounds how many jobs it holds at once (each job reserves >= 1 cpu until
it settles). ``--cpus 0`` registers the detected hardware through ``ProviderWorker.register`` (2 cpus here: 2
jobs in flight per provider, so the figure is one job's round trip, not the pipeline's throughput). The
default advertises 200 cpus per provider (the scheduler commits up to 200 assignments a round), registered
with the ProviderClient since the worker refuses to advertise more than it detects: ``true`` uses no CPU, so
this measures the pipeline, not the machine.

The scheduler and each worker run in their own processes, as deployed (in one process they would fight over
the GIL). ``--profile FILE`` writes a cProfile of the first worker.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dsq_chain.executors import make_executor
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import dev_keys, start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.services.worker import ProviderWorker
from dsq_chain.types import JobStatus, Prices, Resources
from dsq_chain.workloads import workflow as wfm

WORKFLOW = """
name: trivial
resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64}
steps:
  - name: main
    run: {command: "true"}
"""
PRICES = Prices.from_units(per_cpu_minute=1_000, per_gpu_minute=0, per_gb_minute=10)


class BlockClock:
    """Wall-clock time at which each block was first seen (polled every ``interval`` seconds)."""

    def __init__(self, rpc_url: str, interval: float = 0.01) -> None:
        self.chain = Chain(rpc_url)
        self.interval = interval
        self.seen: dict[int, float] = {}
        self._last = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._poll()
        self._thread.start()

    def _poll(self) -> None:
        n = self.chain.block_number()
        now = time.time()
        for b in range(self._last + 1, n + 1):
            self.seen.setdefault(b, now)
        self._last = max(self._last, n)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()

    def at(self, block: int) -> float:
        return self.seen[block]


def events(user: GridClient, name: str, from_block: int) -> list[dict[str, Any]]:
    """All ``name`` events of the market since ``from_block`` (paged)."""
    out = []
    head = user.chain.block_number()
    ev = getattr(user.market.events, name)()
    for start in range(from_block, head + 1, 2000):
        for lg in ev.get_logs(from_block=start, to_block=min(head, start + 1999)):
            out.append(dict(lg["args"], block=lg["blockNumber"]))
    return out


def latencies(user: GridClient, clock: BlockClock, from_block: int, ids: set[int]) -> dict[str, list[float]]:
    submitted: dict[int, float] = {}
    for e in events(user, "JobSubmitted", from_block):
        for i in range(e["firstJobId"], e["firstJobId"] + e["count"]):
            submitted[i] = clock.at(e["block"])
    running = {e["jobId"]: clock.at(e["block"]) for e in events(user, "JobStatusChanged", from_block)
               if e["status"] == JobStatus.RUNNING}
    settled = {e["jobId"]: clock.at(e["block"]) for e in events(user, "JobSettled", from_block)}
    return {
        "running": [running[i] - submitted[i] for i in ids if i in running],
        "finished": [settled[i] - submitted[i] for i in ids if i in settled],
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process ``pid`` has used so far (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_usage(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def loadavg() -> str:
    """The 1-minute load average (the machine is shared: wall-clock figures are upper bounds)."""
    return Path("/proc/loadavg").read_text().split()[0]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def summary(name: str, values: list[float]) -> str:
    return (f"{name}: median {statistics.median(values) * 1000:.0f} ms, p95 {pct(values, 95) * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms (n={len(values)})")


def wait_all_final(user: GridClient, ids: list[int], timeout: float) -> list[JobStatus]:
    deadline = time.monotonic() + timeout
    pending = list(ids)
    statuses: dict[int, JobStatus] = {}
    while pending:
        for start in range(0, len(pending), 500):
            for j in user.jobs(pending[start:start + 500]):
                if j.status.is_final:
                    statuses[j.id] = j.status
        pending = [i for i in pending if i not in statuses]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(ids)} jobs not final after {timeout:.0f} s")
        time.sleep(0.25)
    return [statuses[i] for i in ids]


class GridRig:
    """A fresh Anvil with the contracts, a funded user, and the scheduler and ``providers`` workers in their own
    processes (as deployed), each worker on ``make_executor(executor, **exec_kw)`` with ``root`` under ``tmp``.

    ``cpus``: what each provider advertises on chain (0: the hardware its executor detects)."""

    def __init__(self, tmp: Path, *, providers: int = 1, cpus: int = 200, executor: str = "local",
                 exec_kw: dict[str, Any] | None = None, poll: float = 0.1, verbose: bool = False,
                 profile: str | None = None) -> None:
        self.tmp, self.providers, self.cpus, self.poll = tmp, providers, cpus, poll
        self.executor = executor
        self.exec_kw = dict(exec_kw or ({"kill_grace_s": 1.0} if executor == "local" else {}))
        self.level = logging.INFO if verbose else logging.WARNING
        self.profile = profile
        self.keys = dev_keys(4 + providers)
        self.procs: list[Any] = []
        self.advertised: list[Resources] = []
        self.workers: list[str] = []

    def __enter__(self) -> GridRig:
        self._node = start_anvil(accounts=max(20, 4 + self.providers))
        self.node = self._node.__enter__()
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        keys, node = self.keys, self.node
        self.chain = Chain(node.rpc_url)
        admin_w = self.chain.wallet(keys[0])
        dep = self.deployment = deploy(admin_w)
        admin = AdminClient(admin_w, dep)
        self.user = GridClient(Chain(node.rpc_url).wallet(keys[1]), dep)
        sched_w = Chain(node.rpc_url).wallet(keys[2])
        admin.mint(self.user.address, Credits(10**6))
        admin.grant_scheduler(sched_w.address)
        for i in range(self.providers):
            ex = make_executor(self.executor, root=self.tmp / f"exec{i}", **self.exec_kw)
            w = ProviderWorker(Chain(node.rpc_url).wallet(keys[4 + i]), dep, ex, self.tmp / f"worker{i}",
                               poll_interval=self.poll)
            if self.cpus:
                cap = ex.capacity()
                ProviderClient(w.wallet, dep).register(
                    Resources(self.cpus, 0, max(cap.mem_mb, self.cpus * 64)), PRICES)
            else:
                w.register(PRICES)
            admin.approve(w.address)
            self.advertised.append(w.client.info().total)
            self.workers.append(w.address)
            w.close()
        self.clock = BlockClock(node.rpc_url)
        self.clock.start()
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.procs = [ctx.Process(target=run_scheduler, name="scheduler",
                                  args=(node.rpc_url, keys[2], dep, self.poll, self.stop, self.level))]
        for i in range(self.providers):
            self.procs.append(ctx.Process(target=run_worker, name=f"worker{i}", args=(
                node.rpc_url, keys[4 + i], dep, self.executor, {"root": self.tmp / f"exec{i}", **self.exec_kw},
                self.tmp / f"worker{i}", self.poll, self.stop, self.level, self.profile if i == 0 else None)))
        for proc in self.procs:
            proc.start()

    def pids(self) -> dict[str, int]:
        """The processes whose CPU time counts: the node, the scheduler and each worker."""
        return {"anvil": self.node.pid, **{str(proc.name): int(proc.pid or 0) for proc in self.procs}}

    def worker_transactions(self) -> int:
        return sum(int(self.chain.call_rpc("eth_getTransactionCount", [a, "latest"]), 16) for a in self.workers)

    def __exit__(self, *exc: object) -> None:
        if self.procs:
            self.stop.set()
            for proc in self.procs:
                if proc.pid is None:
                    continue  # never started
                proc.join(60)
                if proc.is_alive():
                    proc.terminate()
            self.clock.stop()
        self._node.__exit__(None, None, None)


def submit_all(user: GridClient, wf: wfm.Workflow, jobs: int, array: int) -> list[int]:
    """``jobs`` jobs of ``wf`` in job arrays of ``array``; their ids."""
    ids: list[int] = []
    left = jobs
    while left > 0:
        n = min(array, left)
        ids += user.submit(wf, credits=Credits(1), max_rate=Credits(1), count=n)
        left -= n
    return ids


def grid_options(p: argparse.ArgumentParser, *, timeout: float) -> None:
    """The options of a run through the grid: jobs, advertised cpus, job array size, time-out."""
    p.add_argument("--jobs", type=int, default=1000, help="jobs to run (default 1000)")
    p.add_argument("--cpus", type=int, default=200,
                   help="cpus each provider advertises on chain; 0 = the detected hardware (default 200)")
    p.add_argument("--array", type=int, default=250, help="jobs per submission (job array size, default 250)")
    p.add_argument("--timeout", type=float, default=timeout, help="give up after this many seconds")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grid_options(p, timeout=600)
    p.add_argument("--providers", type=int, default=1, help="provider workers (default 1)")
    p.add_argument("--probe", type=int, default=20, help="single jobs in the latency phase (default 20)")
    p.add_argument("--poll", type=float, default=0.1, help="worker/scheduler poll interval in s (default 0.1)")
    p.add_argument("--profile", help="write a cProfile of the first worker to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(relativeCreated)7d %(threadName)s %(name)s %(message)s")

    tmp = Path(tempfile.mkdtemp(prefix="dsq-bench-e2e-"))
    wf = wfm.loads(WORKFLOW)
    bad: list[JobStatus] = []
    with GridRig(tmp, providers=args.providers, cpus=args.cpus, poll=args.poll, verbose=args.verbose,
                 profile=args.profile) as rig:
        user, clock = rig.user, rig.clock
        print(f"{args.jobs} jobs `true`, {args.providers} provider(s) advertising {rig.advertised[0].cpus} cpus "
              f"each, arrays of {args.array}, poll {args.poll} s", flush=True)
        # ---- phase 1: throughput
        first_block = rig.chain.block_number() + 1
        pids = rig.pids()
        cpu0 = cpu_usage(pids)
        t0 = time.monotonic()
        ids = submit_all(user, wf, args.jobs, args.array)
        t_submitted = time.monotonic() - t0
        statuses = wait_all_final(user, ids, args.timeout)
        elapsed = time.monotonic() - t0
        bad = [s for s in statuses if s is not JobStatus.FINISHED]
        cpu = {name: used - cpu0[name] for name, used in cpu_usage(pids).items()}
        print(f"throughput: {len(ids)} jobs FINISHED in {elapsed:.1f} s = {len(ids) / elapsed:.1f} jobs/s "
              f"(first submission to last settlement; target >= 50 jobs/s; load average {loadavg()}; "
              f"submission took {t_submitted:.1f} s){f'; NOT FINISHED: {len(bad)}' if bad else ''}", flush=True)
        print("  CPU time over that window: " + ", ".join(f"{name} {used:.1f} s" for name, used in cpu.items())
              + f" ({sum(cpu.values()) / len(ids) * 1000:.1f} ms per job; job supervisors not counted)", flush=True)
        lat = latencies(user, clock, first_block, set(ids))
        print("  " + summary("submission->RUNNING (incl. queueing)", lat["running"]))
        print("  " + summary("submission->FINISHED (incl. queueing)", lat["finished"]))
        # ---- phase 2: latency on an idle grid
        if args.probe:
            probe_block = rig.chain.block_number() + 1
            probe_ids = []
            for _ in range(args.probe):
                [j] = user.submit(wf, credits=Credits(1), max_rate=Credits(1))
                probe_ids.append(j)
                wait_all_final(user, [j], 60)
            lat = latencies(user, clock, probe_block, set(probe_ids))
            print(f"latency, one job at a time on an idle grid (load average {loadavg()}):")
            print("  " + summary("submission->RUNNING", lat["running"]))
            print("  " + summary("submission->FINISHED", lat["finished"]))
        txs = rig.worker_transactions()
    total = args.jobs + args.probe
    print(f"worker transactions: {txs} for {total} jobs ({txs / total:.2f} per job; includes registration)")
    return 1 if bad else 0


def run_scheduler(rpc_url: str, key: str, dep: Deployment, poll: float, stop: threading.Event, level: int) -> None:
    """The meta-scheduler in its own process (as deployed)."""
    logging.basicConfig(level=level, format="%(relativeCreated)7d scheduler %(name)s %(message)s")
    MetaScheduler(Chain(rpc_url).wallet(key), dep, poll_interval=poll).run(stop)


def run_worker(rpc_url: str, key: str, dep: Deployment, executor: str, exec_kw: dict[str, Any], state: Path,
               poll: float, stop: threading.Event, level: int, profile: str | None) -> None:
    """A provider worker in its own process (as deployed), optionally under cProfile."""
    logging.basicConfig(level=level, format="%(relativeCreated)7d worker %(name)s %(message)s")
    worker = ProviderWorker(Chain(rpc_url).wallet(key), dep, make_executor(executor, **exec_kw), state,
                            poll_interval=poll)
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    try:
        worker.run(stop)
    finally:
        if profile:
            prof.disable()
            prof.dump_stats(profile)
        worker.close()


if __name__ == "__main__":
    sys.exit(main())
