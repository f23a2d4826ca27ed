"""``dsq simulate``: runs a market scenario (or a sweep of it) with :mod:`dsq_chain.simulation`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from dsq_chain.cli.common import errors, out


def register(app: typer.Typer) -> None:
    @app.command()
    def simulate(
        scenario: Annotated[Path, typer.Argument(help="scenario YAML (see dsq_chain/schemas/scenario.schema.json)")],
        out_dir: Annotated[Path | None, typer.Option("--out", help="run folder (default runs/<scenario name>)")] = None,
        sweep: Annotated[str | None, typer.Option(
            "--sweep", help="PARAM=a,b,c: one run per value of a dotted scenario field, plotted side by side")] = None,
        quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    ) -> None:
        """Simulates the market of SCENARIO with the grid's own matcher and billing rules."""
        from dsq_chain.simulation import load, parse_sweep
        from dsq_chain.simulation import simulate as run_one
        from dsq_chain.simulation import sweep as run_sweep

        with errors():
            param, values = parse_sweep(sweep) if sweep else (None, [])
            doc = load(scenario)  # validated before anything is written
            folder = out_dir or Path("runs") / doc["name"]
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,} jobs settled"),
                          TimeElapsedColumn(), disable=quiet, transient=True) as bar:
                tasks: dict[str, TaskID] = {}

                def progress(label: str, settled: int) -> None:
                    if label not in tasks:
                        tasks[label] = bar.add_task(label, total=None)
                    bar.update(tasks[label], completed=settled)

                if param is None:
                    summary = run_one(doc, folder, progress)
                    out.print(f"{summary['jobs']['settled']:,} jobs settled in {summary['wall_s']:.1f} s "
                        f"({summary['jobs_per_wall_s']:,} jobs per wall second); "
                        f"wait p95 {summary['wait_s']['p95'] / 60:.1f} min; report: {folder / 'report.md'}")
                else:
                    summaries = run_sweep(doc, param, values, folder, progress)
                    for value, s in zip(values, summaries, strict=True):
                        out.print(f"{param}={value}: wait p95 {s['wait_s']['p95'] / 60:.1f} min, utilisation "
                            f"{100 * s['utilisation_mean']:.0f} %, provider revenue "
                            f"{s['credits']['provider_revenue']:,.2f} credits")
                    out.print(f"sweep report: {folder / 'sweep.md'}")
