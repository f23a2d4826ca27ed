"""Benchmark of the matcher: pending jobs placed per second on a realistic market.

Run ``python benchmarks/matcher.py`` for the headline (100,000 jobs over
10,000 providers) and two scaling tables; ``--quick`` for a small smoke run;
``--python`` to measure the Python search instead of the compiled one.
Everything is seeded, so runs are comparable, and every run's placements are
checked against those recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy  # noqa: F401  # the index build imports it on first use: a one-off per process, not a batch's cost

from dsq_chain.matching import FairShare, Matcher, PendingJob, ProviderState, ProviderStats
from dsq_chain.matching import compiled as compiled_search
from dsq_chain.types import LabelConstraint, LabelOp, Prices, Resources

ZONES = ("eu-west", "eu-north", "us-east", "us-west", "ap-south")
GPU_MODELS = {"A100": (80, 60_000), "H100": (80, 90_000), "L40S": (48, 35_000), "RTX4090": (24, 20_000)}
HOUR = 3600.0


def make_providers(n: int, rng: random.Random) -> dict[str, ProviderState]:
    """``n`` providers: 80 % CPU hosts, 20 % GPU boxes, partly busy, 3 % paused, with some history."""
    providers: dict[str, ProviderState] = {}
    for k in range(n):
        address = f"0x{rng.getrandbits(160):040x}"
        labels = {"zone": rng.choice(ZONES), "arch": "arm64" if rng.random() < 0.1 else "x86_64"}
        if rng.random() < 0.2:
            model = rng.choice(list(GPU_MODELS))
            gpu_mem, gpu_price = GPU_MODELS[model]
            labels |= {"gpu.model": model, "gpu.mem": str(gpu_mem)}
            cpus = rng.choice((32, 64, 128))
            total = Resources(cpus, rng.choice((1, 2, 4, 8)), cpus * rng.choice((4, 8)) * 1024)
            prices = Prices.from_units(rng.randint(600, 2_000), int(gpu_price * rng.uniform(0.7, 1.5)),
                                       rng.randint(50, 200))
        else:
            cpus = rng.choice((16, 32, 64, 128, 256))
            total = Resources(cpus, 0, cpus * rng.choice((2, 4, 8)) * 1024)
            prices = Prices.from_units(rng.randint(500, 2_000), 0, rng.randint(50, 200))
        busy = rng.uniform(0.0, 0.7)
        used = Resources(int(total.cpus * busy), int(total.gpus * busy), int(total.mem_mb * busy))
        stats = ProviderStats(
            finished=rng.randint(0, 300), failed=rng.randint(0, 20), refused=rng.randint(0, 10),
            timed_out=rng.randint(0, 5), panicked=rng.randint(0, 3),
        )  # fmt: skip
        providers[address] = ProviderState(
            address, total, total - used, prices, labels, active=rng.random() > 0.03 or k == 0, stats=stats
        )
    return providers


def make_jobs(n: int, rng: random.Random, providers: dict[str, ProviderState]) -> list[PendingJob]:
    """``n`` jobs from 500 owners (a few heavy ones), 15 % needing GPUs, a third with label needs."""
    owners = [f"0x{rng.getrandbits(160):040x}" for _ in range(500)]
    owner_weights = [1.0 / (rank + 1) for rank in range(len(owners))]
    addresses = list(providers)
    jobs: list[PendingJob] = []
    for job_id in range(1, n + 1):
        labels: list[LabelConstraint] = []
        if rng.random() < 0.15:
            gpus = rng.choice((1, 1, 2, 4, 8))
            cpus = gpus * rng.choice((4, 8))
            mem = cpus * rng.choice((2, 4)) * 1024
            roll = rng.random()
            if roll < 0.3:
                labels.append(LabelConstraint("gpu.model", LabelOp.EQ, rng.choice(list(GPU_MODELS))))
            elif roll < 0.5:
                labels.append(LabelConstraint("gpu.model", LabelOp.IN, "A100,H100"))
            elif roll < 0.6:
                labels.append(LabelConstraint("gpu.mem", LabelOp.GE, "48"))
            rate = cpus * 1_200 + gpus * 50_000 + mem * 120 // 1024
        else:
            gpus = 0
            cpus = rng.choice((1, 2, 4, 8, 16, 32))
            mem = cpus * rng.choice((1, 2, 4)) * 1024
            rate = cpus * 1_200 + mem * 120 // 1024
        if rng.random() < 0.2:
            labels.append(LabelConstraint("zone", LabelOp.EQ, rng.choice(ZONES)))
        if rng.random() < 0.05:
            labels.append(LabelConstraint("arch", LabelOp.EQ, "arm64"))
        excluded = {rng.choice(addresses)} if rng.random() < 0.02 else set()
        jobs.append(
            PendingJob(
                job_id,
                rng.choices(owners, owner_weights)[0],
                Resources(cpus, gpus, mem),
                int(rate * rng.uniform(0.6, 3.0)),
                tuple(labels),
                submitted_at=rng.uniform(0.0, HOUR),
                excluded=excluded,
            )
        )
    return jobs


def make_fairshare(jobs: list[PendingJob], rng: random.Random) -> FairShare:
    fairshare = FairShare(half_life_s=24 * HOUR)
    for owner in sorted({job.owner for job in jobs}):
        fairshare.record(owner, rng.uniform(0, 1e9), rng.uniform(0, HOUR))
    return fairshare


#: Digests of the placements (job, provider, rate, in order) of seeded runs, recorded when the matcher's
#: policy last changed: a faster matcher must place exactly the same.
DIGESTS = {
    (2_000, 500): "fbc2c882c6aab1e0",
    (5_000, 1_000): "f9426cd81133cabc",
    (10_000, 20_000): "5e235509b9618129",
    (100_000, 10_000): "0e4c9c7bd99cc612",
}
digest_checks: list[str] = []
#: The matcher's ``compiled`` setting for the runs: None uses the compiled search when it is built.
COMPILED: bool | None = None


def _search_used() -> str:
    if COMPILED is False:
        return "Python search (--python)"
    return compiled_search.describe() + ("; --python for the Python search" if compiled_search.AVAILABLE else "")


def run(n_jobs: int, n_providers: int, seed: int = 1) -> tuple[float, float, int]:
    """Wall and CPU seconds of one batch of ``n_jobs`` over ``n_providers`` (index build included), jobs placed.

    Checks the placements against :data:`DIGESTS` when one is recorded for the run (seed 1)."""
    rng = random.Random(seed)
    providers = make_providers(n_providers, rng)
    jobs = make_jobs(n_jobs, rng, providers)
    matcher = Matcher(fairshare=make_fairshare(jobs, rng), compiled=COMPILED)
    wall, cpu = time.perf_counter(), time.process_time()
    assignments = matcher.match(jobs, providers, now=HOUR)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    expected = DIGESTS.get((n_jobs, n_providers)) if seed == 1 else None
    if expected is not None:
        digest = hashlib.sha256(repr([(a.job_id, a.provider, a.rate) for a in assignments]).encode()).hexdigest()
        verdict = "same as recorded" if digest[:16] == expected else f"DIFFERENT from recorded {expected}"
        digest_checks.append(f"placements of {n_jobs:,} jobs over {n_providers:,} providers: {digest[:16]}, "
                             f"{verdict}")
    return wall, cpu, len(assignments)


HEADER = f"{'jobs':>9} {'providers':>10} {'placed':>9} {'wall':>9} {'cpu':>9} {'jobs/s':>9} {'cpu/10k':>9}"


def _row(n_jobs: int, n_providers: int) -> str:
    wall, cpu, placed = run(n_jobs, n_providers)
    return (
        f"{n_jobs:>9,} {n_providers:>10,} {placed:>9,} {wall:>7.2f} s {cpu:>7.2f} s {n_jobs / wall:>9,.0f} "
        f"{cpu / n_jobs * 10_000:>7.2f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (a few seconds)")
    parser.add_argument("--python", action="store_true", help="use the matcher's Python search, not the compiled one")
    args = parser.parse_args(argv)
    global COMPILED
    COMPILED = False if args.python else None
    print(f"search: {_search_used()}")
    print("jobs/s is wall-clock; cpu is this process's CPU time (steadier on a busy machine)")
    if args.quick:
        print(HEADER)
        for n_jobs, n_providers in ((2_000, 500), (5_000, 1_000)):
            print(_row(n_jobs, n_providers))
        print("\n".join(digest_checks))
        return 0 if all("same as recorded" in c for c in digest_checks) else 1
    load_before = os.getloadavg()[0]
    wall, cpu, placed = run(100_000, 10_000)
    print(f"headline: 100,000 jobs over 10,000 providers: {wall:.2f} s wall ({100_000 / wall:,.0f} jobs/s), "
          f"{cpu:.2f} s cpu ({100_000 / cpu:,.0f} jobs/s), {placed:,} placed (target < 3 s cpu)")  # fmt: skip
    wall, cpu, placed = run(10_000, 20_000)
    print(f"per-job growth: 10,000 jobs over 20,000 providers: {cpu:.2f} s cpu, {placed:,} placed "
          "(target < 0.5 s cpu)")
    print(f"load average (1 min) before / after these two runs: {load_before:.1f} / {os.getloadavg()[0]:.1f}")
    print("\nscaling in jobs (10,000 providers)")
    print(HEADER)
    for n_jobs in (10_000, 25_000, 50_000, 100_000):
        print(_row(n_jobs, 10_000))
    print("\nscaling in providers (10,000 jobs)")
    print(HEADER)
    for n_providers in (1_000, 5_000, 10_000, 20_000):
        print(_row(10_000, n_providers))
    print("\n" + "\n".join(digest_checks))
    return 0 if all("same as recorded" in c for c in digest_checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
