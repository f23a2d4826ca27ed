"""PNG plots of a run (and of a sweep's variants side by side) and the one-page Markdown report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dsq_chain.types import CREDIT_UNIT

if TYPE_CHECKING:
    from dsq_chain.simulation.engine import Simulation

OUTCOMES = ["finished", "failed", "out_of_credits", "canceled", "panicked", "refused", "timed_out", "no_credits",
            "priced_out"]


def _hours(series: list[dict[str, float]]) -> list[float]:
    return [row["time"] / 3600 for row in series]


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def plot_run(out: Path, series: list[dict[str, float]], prices: list[list[float]], sim: Simulation) -> list[str]:
    """Writes the run's PNGs; returns their file names."""
    t = _hours(series)
    names: list[str] = []

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(t, [100 * r["utilisation"] for r in series])
    ax.set(xlabel="hours", ylabel="CPU utilisation (%)", title="Utilisation", ylim=(0, 105))
    names.append(_save(fig, out / "utilisation.png"))

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(t, [r["queue"] for r in series], label="pending")
    ax.plot(t, [r["running"] for r in series], label="assigned or running")
    ax.set(xlabel="hours", ylabel="jobs", title="Queue length")
    ax.legend()
    names.append(_save(fig, out / "queue.png"))

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(t, [r["wait_p50"] / 60 for r in series], label="p50")
    ax.plot(t, [r["wait_p95"] / 60 for r in series], label="p95")
    ax.set(xlabel="hours", ylabel="minutes", title="Wait, submission to start (jobs started in each interval)")
    ax.legend()
    names.append(_save(fig, out / "waits.png"))

    last = series[-1] if series else {}
    fig, ax = plt.subplots(figsize=(7, 3.2))
    counts = [last.get(k, 0) for k in OUTCOMES]
    ax.bar(["placements", *OUTCOMES], [last.get("placements", 0), *counts],
           color=["tab:blue", "tab:green", "tab:orange", "tab:red", "tab:gray", "tab:purple", "tab:brown",
                  "tab:pink", "tab:olive", "tab:cyan"])
    ax.set(ylabel="jobs", title="Placements and outcomes by reason")
    ax.tick_params(axis="x", rotation=40)
    names.append(_save(fig, out / "outcomes.png"))

    fig, ax = plt.subplots(figsize=(7, 3.2))
    if prices:
        th = [row[0] / 3600 for row in prices]
        for i in range(1, max(len(r) for r in prices)):
            ax.plot(th, [row[i] if i < len(row) else math.nan for row in prices], lw=0.8, alpha=0.6)
    ax.plot(t, [r["price_median"] for r in series], color="black", lw=2, label="median of active providers")
    ax.set(xlabel="hours", ylabel="credit units / CPU-minute", title="Price paths")
    ax.legend()
    names.append(_save(fig, out / "prices.png"))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    revenue = [p.revenue / CREDIT_UNIT for p in sim.providers.values()]
    ax1.hist(revenue, bins=30)
    ax1.set(xlabel="credits earned", ylabel="providers", title="Provider revenue")
    ax2.plot(t, [r["active_providers"] for r in series], label="active")
    ax2.plot(t, [r["joins"] for r in series], label="joined (cum.)")
    ax2.plot(t, [r["leaves"] for r in series], label="left (cum.)")
    ax2.set(xlabel="hours", title="Provider churn")
    ax2.legend()
    names.append(_save(fig, out / "providers.png"))

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(t, [r["spend"] for r in series], label="billed (user spend)")
    ax.plot(t, [r["refunds"] for r in series], label="refunded")
    ax.plot(t, [r["fees"] for r in series], label="protocol fees")
    ax.set(xlabel="hours", ylabel="credits (cumulative)", title="User spend and refunds")
    ax.legend()
    names.append(_save(fig, out / "spend.png"))
    return names


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:,.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def write_report(out: Path, summary: dict[str, Any], pictures: list[str]) -> Path:
    """The one-page report.md embedding the plots."""
    jobs, credits, waits = summary["jobs"], summary["credits"], summary["wait_s"]
    lines = [
        f"# Simulation: {summary['scenario']}", "",
        f"{_fmt(summary['simulated_s'] / 3600)} simulated hours in {_fmt(summary['wall_s'])} s of wall time "
        f"({_fmt(summary['jobs_per_wall_s'])} jobs per wall second).", "",
        "| figure | value |", "|---|---|",
        *(f"| jobs {k.replace('_', ' ')} | {_fmt(v)} |" for k, v in jobs.items()),
        f"| placements (incl. re-placements) | {_fmt(summary['placements'])} |",
        f"| refusals / claim timeouts | {_fmt(summary['refusals'])} / {_fmt(summary['claim_timeouts'])} |",
        f"| wait p50 / p95 / max (min) | {_fmt(waits['p50'] / 60)} / {_fmt(waits['p95'] / 60)} / "
        f"{_fmt((waits['max'] or 0) / 60)} |",
        f"| mean utilisation while busy | {_fmt(100 * summary['utilisation_mean'])} % |",
        *(f"| credits {k.replace('_', ' ')} | {_fmt(v)} |" for k, v in credits.items()),
        *(f"| providers {k.replace('_', ' ')} | {_fmt(v)} |" for k, v in summary["providers"].items()),
        "",
        *(f"![{p.removesuffix('.png')}]({p})\n" for p in pictures),
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_sweep(out: Path, param: str, runs: list[tuple[Any, dict[str, Any], list[dict[str, float]]]]) -> Path:
    """Variants side by side: time series overlaid, headline figures as bars; writes sweep.png and sweep.md."""
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    (a_util, a_queue, a_wait), (a_p95, a_rev, a_fee) = axes
    labels = [str(v) for v, _, _ in runs]
    for (value, _, series) in runs:
        t = _hours(series)
        a_util.plot(t, [100 * r["utilisation"] for r in series], label=f"{param}={value}")
        a_queue.plot(t, [r["queue"] for r in series])
        a_wait.plot(t, [r["wait_p95"] / 60 for r in series])
    a_util.set(title="CPU utilisation (%)", xlabel="hours")
    a_util.legend(fontsize=7)
    a_queue.set(title="Pending jobs", xlabel="hours")
    a_wait.set(title="Wait p95 per interval (min)", xlabel="hours")
    a_p95.bar(labels, [(s["wait_s"]["p95"] or 0) / 60 for _, s, _ in runs])
    a_p95.axhline(10, color="red", ls="--", lw=1)
    a_p95.set(title="Wait p95 over the run (min)", xlabel=param)
    a_rev.bar(labels, [s["credits"]["provider_revenue"] for _, s, _ in runs])
    a_rev.set(title="Provider revenue (credits)", xlabel=param)
    a_fee.bar(labels, [100 * s["utilisation_mean"] for _, s, _ in runs])
    a_fee.set(title="Mean utilisation while busy (%)", xlabel=param)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=90)
    plt.close(fig)
    lines = [f"# Sweep of {param}", "", "![sweep](sweep.png)", "",
             "| value | wait p50 (min) | wait p95 (min) | utilisation | provider revenue | protocol fees | "
             "finished | left unsettled | report |", "|---|---|---|---|---|---|---|---|---|"]
    for (value, s, _), label in zip(runs, labels, strict=True):
        w = s["wait_s"]
        lines.append(f"| {label} | {_fmt(w['p50'] / 60)} | {_fmt(w['p95'] / 60)} | "
                     f"{_fmt(100 * s['utilisation_mean'])} % | {_fmt(s['credits']['provider_revenue'])} | "
                     f"{_fmt(s['credits']['protocol_fees'])} | {_fmt(s['jobs']['finished'])} | "
                     f"{_fmt(s['jobs']['left_unsettled'])} | [{label}]({variant_dir(param, value)}/report.md) |")
    path = out / "sweep.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def variant_dir(param: str, value: Any) -> str:
    """The sub-folder of one sweep variant."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in f"{param}={value}")
    return safe
