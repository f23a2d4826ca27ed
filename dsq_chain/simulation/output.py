"""A run's folder: CSV time series, per-job / per-provider / per-user tables, summary.json, plots, report.md.

Files: ``timeseries.csv`` (one row per ``sample_interval_s``), ``jobs.csv`` (one row per submitted job,
written as each settles), ``providers.csv``, ``users.csv``, ``summary.json``, ``*.png`` and ``report.md``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dsq_chain.simulation.engine import Recorder, SimJob, Simulation, percentile
from dsq_chain.types import CREDIT_UNIT

JOB_FIELDS = ["id", "owner", "population", "arrival", "cpus", "gpus", "mem_mb", "runtime", "max_rate", "status",
              "provider", "rate", "placements", "first_start", "end", "wait", "billed", "refunded", "fee"]
SERIES_FIELDS = ["time", "utilisation", "queue", "running", "active_providers", "wait_p50", "wait_p95",
                 "price_median", "price_min", "price_max", "submitted", "placements", "finished", "failed",
                 "out_of_credits", "canceled", "panicked", "refused", "timed_out", "no_credits", "priced_out",
                 "spend", "refunds", "fees", "joins", "leaves"]
#: Providers whose price path is drawn (the first ones created).
TRACKED_PRICES = 8


class RunWriter(Recorder):
    """Writes ``jobs.csv`` while the simulation runs and keeps the time series for :meth:`finish`."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self._jobs_file: IO[str] = (out / "jobs.csv").open("w", newline="")
        self._jobs = csv.writer(self._jobs_file)
        self._jobs.writerow(JOB_FIELDS)
        self.series: list[dict[str, float]] = []
        self.prices: list[list[float]] = []

    def job_done(self, job: SimJob, fee: int) -> None:
        s = job.spec
        wait = "" if job.first_start is None else job.first_start - s.arrival
        self._jobs.writerow([job.id, job.pending.owner, s.population, s.arrival, s.cpus, s.gpus, s.mem_mb, s.runtime,
                             s.max_rate, job.status.name, job.placements[-1][1] if job.placements else "", job.rate,
                             len(job.placements), "" if job.first_start is None else job.first_start, job.end,
                             wait, job.billed, job.refunded, fee])

    def sample(self, sim: Simulation) -> None:
        c = sim.counters
        active = [p for p in sim.providers.values() if p.state.active]
        prices = sorted(p.state.prices.units[0] for p in active)
        running = sum(1 for j in sim.jobs.values() if j.status.holds_capacity)
        self.series.append({
            "time": sim.now, "utilisation": sim.utilisation(), "queue": len(sim.pending), "running": running,
            "active_providers": len(active), "wait_p50": percentile(sim.window_waits, 50),
            "wait_p95": percentile(sim.window_waits, 95),
            "price_median": prices[len(prices) // 2] if prices else math.nan,
            "price_min": prices[0] if prices else math.nan, "price_max": prices[-1] if prices else math.nan,
            "submitted": c.submitted, "placements": c.placements, "finished": c.finished, "failed": c.failed,
            "out_of_credits": c.out_of_credits, "canceled": c.canceled, "panicked": c.panicked, "refused": c.refused,
            "timed_out": c.timed_out, "no_credits": c.no_credits, "priced_out": c.priced_out,
            "spend": c.billed / CREDIT_UNIT, "refunds": c.refunded / CREDIT_UNIT, "fees": c.fees / CREDIT_UNIT,
            "joins": c.joins, "leaves": c.leaves,
        })
        tracked = list(sim.providers.values())[:TRACKED_PRICES]
        self.prices.append([sim.now, *(p.state.prices.units[0] for p in tracked)])

    def finish(self, sim: Simulation, wall_s: float) -> dict[str, Any]:
        """Writes every file but jobs.csv's rows (already there) and returns the summary."""
        self._jobs_file.close()
        with (self.out / "timeseries.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, SERIES_FIELDS)
            w.writeheader()
            w.writerows(self.series)
        with (self.out / "providers.csv").open("w", newline="") as f:
            w2 = csv.writer(f)
            w2.writerow(["address", "population", "cpus", "gpus", "per_cpu_minute", "jobs", "revenue_credits",
                         "joined", "left", "finished", "failed", "refused", "timed_out", "panicked"])
            for p in sim.providers.values():
                st = p.state.stats
                w2.writerow([p.state.address, p.population["name"], p.state.total.cpus, p.state.total.gpus,
                             p.state.prices.units[0], p.jobs, p.revenue / CREDIT_UNIT, p.joined,
                             "" if p.left is None else p.left, st.finished, st.failed, st.refused, st.timed_out,
                             st.panicked])
        with (self.out / "users.csv").open("w", newline="") as f:
            w3 = csv.writer(f)
            w3.writerow(["owner", "spend_credits", "refunds_credits", "balance_credits"])
            for owner in sorted(sim.spend):
                w3.writerow([owner, sim.spend[owner] / CREDIT_UNIT, sim.refunds[owner] / CREDIT_UNIT,
                             sim.balances[owner] / CREDIT_UNIT])
        summary = summarise(sim, self.series, wall_s)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        from dsq_chain.simulation.plots import plot_run, write_report

        pictures = plot_run(self.out, self.series, self.prices, sim)
        write_report(self.out, summary, pictures)
        return summary


def summarise(sim: Simulation, series: list[dict[str, float]], wall_s: float) -> dict[str, Any]:
    """The run's headline figures (summary.json)."""
    c = sim.counters
    revenues = sorted(p.revenue / CREDIT_UNIT for p in sim.providers.values())
    busy = [row["utilisation"] for row in series if row["running"] or row["queue"]]
    settled = c.finished + c.failed + c.out_of_credits + c.canceled + c.panicked
    return {
        "scenario": sim.scenario["name"],
        "simulated_s": sim.now - sim.start,
        "wall_s": round(wall_s, 3),
        "jobs_per_wall_s": round(settled / wall_s, 1) if wall_s > 0 else None,
        "jobs": {"submitted": c.submitted, "settled": settled, "finished": c.finished, "failed": c.failed,
                 "out_of_credits": c.out_of_credits, "canceled": c.canceled, "panicked": c.panicked,
                 "left_unsettled": len(sim.jobs), "rejected_no_credits": c.no_credits,
                 "rejected_priced_out": c.priced_out, "topped_up": c.top_ups},
        "placements": c.placements, "refusals": c.refused, "claim_timeouts": c.timed_out, "rounds": c.rounds,
        "wait_s": {"p50": percentile(sim.waits, 50), "p95": percentile(sim.waits, 95),
                   "max": max(sim.waits) if sim.waits else None},
        "utilisation_mean": sum(busy) / len(busy) if busy else 0.0,
        "credits": {"minted": c.minted / CREDIT_UNIT, "billed": c.billed / CREDIT_UNIT,
                    "refunded": c.refunded / CREDIT_UNIT, "protocol_fees": c.fees / CREDIT_UNIT,
                    "provider_revenue": (c.billed - c.fees) / CREDIT_UNIT},
        "providers": {"total": len(sim.providers), "joined": c.joins, "left": c.leaves,
                      "revenue_p50": percentile(revenues, 50), "revenue_p95": percentile(revenues, 95),
                      "revenue_zero": sum(1 for r in revenues if r == 0)},
    }


def run_scenario(scenario: dict[str, Any], out: Path, progress: Callable[[int], None] | None = None,
                 **kw: Any) -> dict[str, Any]:
    """Runs ``scenario`` writing its folder ``out``; returns the summary."""
    import time

    writer = RunWriter(out)
    sim = Simulation(scenario, recorder=writer, **kw)
    t0 = time.perf_counter()
    sim.run(progress)
    return writer.finish(sim, time.perf_counter() - t0)
