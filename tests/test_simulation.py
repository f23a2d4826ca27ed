"""The market simulator without a chain: scenarios, run folders, sweeps, traces, credit accounting.

(``tests/test_simulation_validation.py`` runs the same small scenario on the real grid and compares.)
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsq_chain import billing
from dsq_chain.simulation import ScenarioError, Simulation, generate, load, read_swf, simulate, sweep, validate
from dsq_chain.simulation.workload import TraceError
from dsq_chain.types import CREDIT_UNIT, JobStatus

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "examples" / "scenarios"
SMALL = SCENARIOS / "small.yaml"


def _doc() -> dict[str, Any]:
    return dict(yaml.safe_load(SMALL.read_text()))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ scenarios
@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("seed"), "seed: missing; expected an integer seed"),
    (lambda d: d.update(duration_s="soon"), "duration_s: expected seconds of simulated time"),
    (lambda d: d["protocol"].update(fee_bps=20_000), "protocol.fee_bps: expected protocol fee in basis points"),
    (lambda d: d["providers"][1]["pricing"].update(strategy="auction"),
     "providers[1].pricing.strategy: expected one of fixed, linear, random_band, target_utilisation, found 'auction'"),
    (lambda d: d["users"][0]["arrivals"].pop("rate_per_hour"),
     "users[0].arrivals.rate_per_hour: missing; expected jobs per hour"),
    (lambda d: d["users"][0]["jobs"].update(runtime_s={"dist": "lognormal", "median": 60}),
     "users[0].jobs.runtime_s.sigma: missing"),
    (lambda d: d["users"][1]["jobs"].update(labels=["zone = eu"]), "users[1].jobs.labels[0]: expected a label"),
    (lambda d: d.update(protocl={}), "protocl: unknown field; expected one of"),
    (lambda d: d["providers"].append(dict(d["providers"][0])), "population name 'eu' is used twice"),
])
def test_a_bad_scenario_names_the_field_and_the_expected_value(change: Any, message: str) -> None:
    doc = _doc()
    change(doc)
    with pytest.raises(ScenarioError) as info:
        validate(doc, "s.yaml")
    assert str(info.value).startswith("s.yaml: ") and message in str(info.value), str(info.value)


def test_cli_refuses_a_bad_scenario_and_writes_nothing(tmp_path: Path) -> None:
    doc = _doc()
    doc["providers"][0]["hardware"]["cpus"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dsq_chain", "simulate", str(bad), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"dsq: error: {bad}: providers[0].hardware.cpus: expected CPUs per provider (an integer >= 1), found 0"]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_every_example_scenario_is_valid() -> None:
    names = sorted(p.name for p in SCENARIOS.glob("*.yaml"))
    assert len(names) >= 3
    for path in SCENARIOS.glob("*.yaml"):
        load(path)


# ------------------------------------------------------------------------------------------ a run
def test_small_run_writes_its_folder_and_accounts_for_every_credit(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = simulate(load(SMALL), out)
    for name in ("timeseries.csv", "jobs.csv", "providers.csv", "users.csv", "summary.json", "report.md",
                 "utilisation.png", "queue.png", "waits.png", "outcomes.png", "prices.png", "providers.png",
                 "spend.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    report = (out / "report.md").read_text()
    assert "![utilisation](utilisation.png)" in report and "![spend](spend.png)" in report
    jobs = _rows(out / "jobs.csv")
    specs = list(generate(load(SMALL)))
    assert len(jobs) == summary["jobs"]["submitted"] == len(specs) >= 200
    assert summary["jobs"]["left_unsettled"] == 0
    statuses = {r["status"] for r in jobs}
    assert {"FINISHED", "FAILED", "CANCELED"} <= statuses
    assert summary["claim_timeouts"] > 0  # the provider that never claims
    # credits: what was minted is either billed or back in the owners' balances
    users = _rows(out / "users.csv")
    balances = sum(float(u["balance_credits"]) for u in users)
    assert balances + summary["credits"]["billed"] == pytest.approx(summary["credits"]["minted"], abs=1e-6)
    # each finished job's bill is the contract's rule applied to its own start and end
    by_seq = {s.seq: s for s in specs}
    for row in jobs:
        if row["status"] in ("FINISHED", "FAILED") and row["placements"] == "1":
            spec = by_seq[int(row["id"])]
            expected = billing.finish(int(row["rate"]), int(row["first_start"]), int(row["end"]), spec.escrow
                                      + sum(a for _, a in spec.top_ups if spec.arrival + _ < int(row["end"])))
            assert int(row["billed"]) == expected.billed, row


def test_same_seed_same_run_other_seed_other_run(tmp_path: Path) -> None:
    doc = load(SMALL)
    simulate(doc, tmp_path / "a")
    simulate(doc, tmp_path / "b")
    assert (tmp_path / "a" / "jobs.csv").read_text() == (tmp_path / "b" / "jobs.csv").read_text()
    doc["seed"] = 8
    simulate(doc, tmp_path / "c")
    assert (tmp_path / "a" / "jobs.csv").read_text() != (tmp_path / "c" / "jobs.csv").read_text()


def test_a_folder_that_is_not_a_run_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ScenarioError, match="not empty"):
        simulate(load(SMALL), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_sweep_runs_each_value_and_plots_them_side_by_side(tmp_path: Path) -> None:
    summaries = sweep(load(SMALL), "protocol.fee_bps", [0, 1000], tmp_path / "sweep")
    assert [s["credits"]["protocol_fees"] > 0 for s in summaries] == [False, True]
    fees = summaries[1]["credits"]
    assert fees["protocol_fees"] == pytest.approx(fees["billed"] * 0.1, rel=0.01)
    assert summaries[0]["jobs"] == summaries[1]["jobs"]  # the fee changes who earns, not what runs
    out = tmp_path / "sweep"
    assert (out / "sweep.png").stat().st_size > 0
    assert "| 1000 |" in (out / "sweep.md").read_text()
    assert (out / "protocol.fee_bps_1000" / "report.md").exists()
    with pytest.raises(ScenarioError, match=r"fee_bps=-5: protocol.fee_bps: expected"):
        sweep(load(SMALL), "protocol.fee_bps", [0, -5], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_pricing_strategies_and_churn_move_prices_and_providers() -> None:
    doc = _doc()
    doc["providers"][0]["pricing"] = {"strategy": "target_utilisation", "per_cpu_minute": 1000, "target": 0.9,
                                      "every_s": 600, "gain": 0.5}
    doc["providers"][1]["pricing"] = {"strategy": "random_band", "per_cpu_minute": 800, "low": 0.5, "high": 1.5}
    doc["providers"][1]["churn"] = {"leave_per_day": 24.0, "join_per_day": 48.0}
    sim = Simulation(validate(doc))
    sim.run()
    eu = [p for p in sim.providers.values() if p.population["name"] == "eu"]
    assert all(p.state.prices.per_cpu_minute < 1000 for p in eu)  # under target: the controller lowered prices
    band = {p.state.prices.per_cpu_minute for p in sim.providers.values() if p.population["name"] == "us"}
    assert len(band) > 1 and all(400 <= x <= 1200 for x in band)
    assert sim.counters.joins > 0 and sim.counters.leaves > 0


def test_out_of_credits_and_top_ups_when_low() -> None:
    doc = _doc()
    doc["users"][0]["jobs"]["escrow_factor"] = 0.5  # half the runtime paid: every job runs out...
    doc["users"][0]["top_up"] = {"prob": 0.5, "amount_factor": 2.0}  # ...unless topped up when low
    doc["users"][0].pop("cancel")
    sim = Simulation(validate(doc))
    sim.run()
    assert sim.counters.out_of_credits > 20 and sim.counters.top_ups > 20
    assert sim.counters.finished > sim.counters.top_ups // 2


# ------------------------------------------------------------------------------------------ traces
def test_trace_replay_reads_the_swf_and_runs(tmp_path: Path) -> None:
    doc = load(SCENARIOS / "trace.yaml")
    jobs = list(generate(doc))
    assert len(jobs) == 600 and jobs[0].arrival == 0
    assert [j.arrival for j in jobs] == sorted(j.arrival for j in jobs)
    assert any(j.exit_code for j in jobs) and any(j.cancel_after is not None for j in jobs)
    summary = simulate(doc, tmp_path / "trace")
    assert summary["jobs"]["submitted"] == 600 and summary["jobs"]["left_unsettled"] == 0


def test_a_bad_trace_line_is_named(tmp_path: Path) -> None:
    swf = tmp_path / "t.swf"
    swf.write_text("; comment\n1 0 -1 10 1 -1 -1 1 60 -1 1 1 1 -1 1 -1 -1 -1\n2 x -1 10 1 -1 -1 1 60 -1 1 1 1 -1 1\n")
    with pytest.raises(TraceError, match=r"t.swf:3: a field is not a number"):
        list(read_swf({"path": str(swf), "price_cap_per_cpu_minute": 10}))


# ------------------------------------------------------------------------------------------ benchmark
def test_benchmark_short_variant_prints_its_figures() -> None:
    proc = subprocess.run([sys.executable, "benchmarks/simulate.py", "--providers", "100", "--jobs", "2000"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "simulated jobs per wall second" in proc.stdout and "target < 600 s" in proc.stdout


def test_rejections_when_owners_run_out_of_credits() -> None:
    doc = _doc()
    doc["users"][0]["budget_credits"] = 0.05
    sim = Simulation(validate(doc))
    sim.run()
    assert sim.counters.no_credits > 0
    assert all(b >= 0 for b in sim.balances.values())
    assert JobStatus.FINISHED and CREDIT_UNIT  # the units the budget is minted in


def test_refusals_exclude_the_provider_and_the_job_moves_on(tmp_path: Path) -> None:
    doc = _doc()
    doc["providers"][0]["refuse_above_cpus"] = 1  # the eu providers refuse 2-CPU jobs
    summary = simulate(validate(doc), tmp_path / "run")
    assert summary["refusals"] > 0 and summary["jobs"]["left_unsettled"] == 0
    eu = {r["address"] for r in _rows(tmp_path / "run" / "providers.csv") if r["population"] == "eu"}
    placed_two_cpus = [r for r in _rows(tmp_path / "run" / "jobs.csv") if r["cpus"] == "2" and r["provider"]]
    assert placed_two_cpus and all(r["provider"] not in eu for r in placed_two_cpus if r["status"] == "FINISHED")
