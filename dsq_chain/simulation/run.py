"""Running a scenario into a folder, or a sweep of its variants side by side."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsq_chain.simulation.output import run_scenario
from dsq_chain.simulation.plots import plot_sweep, variant_dir
from dsq_chain.simulation.scenario import ScenarioError, override, validate

#: ``progress(label, jobs settled)`` during a run.
Progress = Callable[[str, int], None]


def _fresh(out: Path) -> Path:
    """``out`` ready to receive a run: refused if it holds something that is not a previous run."""
    if out.exists() and any(out.iterdir()) and not (out / "summary.json").exists() \
            and not (out / "sweep.md").exists():
        raise ScenarioError(f"{out}: the folder is not empty and holds no previous run; expected a new or run folder")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


def simulate(scenario: dict[str, Any], out: str | Path, progress: Progress | None = None) -> dict[str, Any]:
    """Runs a validated ``scenario`` into the folder ``out``; returns its summary."""
    folder = _fresh(Path(out))
    label = scenario["name"]
    return run_scenario(scenario, folder, _labelled(progress, label))


def _labelled(progress: Progress | None, label: str) -> Callable[[int], None] | None:
    if progress is None:
        return None
    return lambda n: progress(label, n)


def sweep(scenario: dict[str, Any], param: str, values: list[Any], out: str | Path,
          progress: Progress | None = None) -> list[dict[str, Any]]:
    """Runs one variant of ``scenario`` per value of ``param`` (each validated before any runs)."""
    base = {k: v for k, v in scenario.items() if k != "base_dir"}
    variants = [validate(override(base, param, v), f"{scenario['name']} with {param}={v}") for v in values]
    folder = _fresh(Path(out))
    runs = []
    summaries = []
    for value, variant in zip(values, variants, strict=True):
        variant["base_dir"] = scenario.get("base_dir")
        sub = folder / variant_dir(param, value)
        label = f"{param}={value}"
        summary = run_scenario(variant, sub, _labelled(progress, label))
        with (sub / "timeseries.csv").open() as f:
            series = [{k: float(v) if v not in ("", "nan") else float("nan") for k, v in row.items()}
                      for row in csv.DictReader(f)]
        runs.append((value, summary, series))
        summaries.append(summary)
    plot_sweep(folder, param, runs)
    return summaries
