"""Market simulator speed: N providers and M jobs through the real Matcher and billing rules.

    .venv/bin/python benchmarks/simulate.py [--providers 10000] [--jobs 1000000] [--round-interval 300] [--out DIR]

The market is loaded to ~80 % of its CPUs (Poisson arrivals, 1-8 CPUs, lognormal runtimes with a
median of 20 min, 5 % failures, 3 % cancels, some label needs, mixed fixed / target-utilisation /
random-band prices). Rounds every 300 s with a batch limit of 20,000 (the real scheduler's 200 per
0.1 s poll places up to 2,000 a second; a round here must place all the arrivals of its interval).
Each round costs the real Matcher a pass over all 10,000 providers (validation, index), so the round
interval sets most of the run time: ``--round-interval 60`` is ~5x the rounds.
Prints simulated jobs per wall second and the whole run's time beside the target (< 10 minutes for
10,000 providers and 1,000,000 jobs on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dsq_chain.simulation import simulate, validate

TARGET_S = 600.0


def scenario(providers: int, jobs: int, round_interval: int = 300) -> dict[str, Any]:
    cpus_per_provider = 32
    mean_job_cpu_s = 4.5 * 1800 * 1.1  # mean CPUs x mean runtime (lognormal median 1200 s, sigma 0.9)
    rate_per_hour = 0.8 * providers * cpus_per_provider / mean_job_cpu_s * 3600
    duration = int(jobs / rate_per_hour * 3600) + 1
    third = providers // 3
    return validate({
        "name": f"bench-{providers}p-{jobs}j",
        "seed": 1,
        "duration_s": duration,
        "round_interval_s": round_interval,
        "sample_interval_s": max(600, duration // 200),
        "protocol": {"fee_bps": 100, "batch_limit": 20_000, "claim_timeout_s": 300},
        "providers": [
            {"name": "fixed", "count": third, "hardware": {"cpus": 32, "mem_mb": 131072}, "labels": {"zone": "eu"},
             "pricing": {"strategy": "fixed", "per_cpu_minute": 1000}, "no_claim_prob": 0.002},
            {"name": "controller", "count": third, "hardware": {"cpus": 32, "mem_mb": 131072},
             "labels": {"zone": "us"},
             "pricing": {"strategy": "target_utilisation", "per_cpu_minute": 1000, "target": 0.8,
                         "every_s": 3600}, "panic_prob": 0.002},
            {"name": "band", "count": providers - 2 * third, "hardware": {"cpus": 32, "mem_mb": 131072},
             "labels": {"zone": "asia"},
             "pricing": {"strategy": "random_band", "per_cpu_minute": 1000, "low": 0.7, "high": 1.3}},
        ],
        "users": [
            {"name": "batch", "count": 200, "arrivals": {"process": "poisson", "rate_per_hour": rate_per_hour * 0.9,
                                                        "max_jobs": int(jobs * 0.9)},
             "jobs": {"cpus": {"dist": "choice", "values": [1, 2, 4, 8]}, "mem_mb_per_cpu": 2048,
                      "runtime_s": {"dist": "lognormal", "median": 1200, "sigma": 0.9},
                      "price_cap_per_cpu_minute": 2000, "escrow_factor": 2, "fail_prob": 0.05},
             "cancel": {"prob": 0.03, "after_s": {"dist": "exponential", "mean": 900}}},
            {"name": "eu-only", "count": 20, "arrivals": {"process": "poisson", "rate_per_hour": rate_per_hour * 0.1,
                                                         "max_jobs": jobs - int(jobs * 0.9)},
             "jobs": {"cpus": {"dist": "choice", "values": [1, 2, 4, 8]}, "mem_mb_per_cpu": 2048,
                      "runtime_s": {"dist": "lognormal", "median": 1200, "sigma": 0.9},
                      "price_cap_per_cpu_minute": 1500, "escrow_factor": 2, "labels": ["zone == eu"]}},
        ],
    }, "benchmark scenario")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--providers", type=int, default=10_000)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--round-interval", type=int, default=300, help="seconds between matching rounds")
    p.add_argument("--out", type=Path, help="run folder (default: a temporary one)")
    args = p.parse_args(argv)
    doc = scenario(args.providers, args.jobs, args.round_interval)
    out = args.out or Path(tempfile.mkdtemp(prefix="dsq-bench-sim-")) / "run"
    print(f"{args.providers:,} providers, {args.jobs:,} jobs over {doc['duration_s'] / 3600:.1f} simulated hours, "
          f"rounds every {args.round_interval} s", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    summary = simulate(doc, out)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    settled = summary["jobs"]["settled"]
    scale = (1_000_000 / args.jobs) if args.jobs else 1.0
    print(f"simulated: {settled:,} jobs settled ({summary['jobs']['submitted']:,} submitted), "
          f"{summary['placements']:,} placements in {summary['rounds']:,} rounds; "
          f"utilisation {100 * summary['utilisation_mean']:.0f} %, wait p95 {summary['wait_s']['p95'] / 60:.1f} min")
    print(f"CPU time of this process: {cpu:.1f} s for {wall:.1f} s of wall time "
          f"({100 * cpu / wall:.0f} % of one core: the rest went to other work on the machine)")
    print(f"speed: {settled / wall:,.0f} simulated jobs per wall second, {settled / cpu:,.0f} per CPU second "
          f"(target: 1,000,000 jobs in < {TARGET_S:.0f} s = {1_000_000 / TARGET_S:,.0f} jobs/s)")
    verdict = "met" if wall * scale < TARGET_S else "MISSED"
    print(f"whole run (incl. writing {out}): {wall:.1f} s; scaled to 1,000,000 jobs: {wall * scale:.0f} s "
          f"(target < {TARGET_S:.0f} s: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
