"""``dsq akash``: an Akash SDL file becomes grid jobs (translate, explain, submit). Wiring only."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from dsq_chain import akash
from dsq_chain.cli.common import emit, errors, fmt_credits, parse_credits, settings
from dsq_chain.errors import InputError
from dsq_chain.sdk.client import GridClient
from dsq_chain.workloads.sdl import AKASH_SECONDS_PER_BLOCK, Conversion, SdlError, Translation

akash_app = typer.Typer(no_args_is_help=True, help="Akash SDL deployments as grid jobs.")

JSON = Annotated[bool, typer.Option("--json", help="machine-readable output")]
RATE = Annotated[list[str] | None, typer.Option(
    "--rate", help="credit units per unit of a denomination, DENOM=N (default: uakt=1, uact=1, usdc=1)")]
BLOCK = Annotated[str, typer.Option("--seconds-per-block", help="Akash block time used to turn prices per block "
                                    "into prices per minute")]
STRICT = Annotated[bool, typer.Option("--strict", help="refuse what would otherwise be dropped (signedBy)")]


def _conversion(rates: list[str] | None, seconds_per_block: str) -> Conversion:
    table_: dict[str, Decimal] = dict(Conversion().units_per_denom)
    try:
        for item in rates or []:
            denom, sep, value = item.partition("=")
            if not sep or not denom:
                raise InputError(f"--rate {item!r}: expected DENOM=N, e.g. uakt=2")
            table_[denom] = Decimal(value)
        block = Decimal(seconds_per_block)
    except InvalidOperation:
        raise InputError("--rate and --seconds-per-block take numbers") from None
    if block <= 0 or any(v <= 0 for v in table_.values()):
        raise InputError("--rate and --seconds-per-block must be positive")
    return Conversion(table_, block)


def _translate(path: Path, rates: list[str] | None, seconds_per_block: str, strict: bool) -> Translation:
    try:
        return akash.translate_file(path, _conversion(rates, seconds_per_block), strict=strict)
    except SdlError as e:
        raise InputError(str(e)) from None


def _as_data(tr: Translation) -> dict[str, Any]:
    return {
        "source": tr.source, "version": tr.version, "conversion": tr.conversion.describe(),
        "jobs": [{"service": j.service, "placement": j.placement, "count": j.count, "max_rate": j.max_rate,
                  "workflow": j.workflow} for j in tr.jobs],
        "refused": tr.refused,
        "table": [{"sdl": m.path, "became": m.became, "note": m.note} for m in tr.table],
    }


@akash_app.command()
def translate(
    ctx: typer.Context,
    sdl: Annotated[Path, typer.Argument(help="an Akash SDL file (version 2.0 or 2.1)")],
    explain: Annotated[bool, typer.Option("--explain", help="also ask the grid which provider could run each job "
                                          "and why the others could not")] = False,
    rate: RATE = None,
    seconds_per_block: BLOCK = str(AKASH_SECONDS_PER_BLOCK),
    strict: STRICT = False,
    as_json: JSON = False,
) -> None:
    """Prints the grid workflow(s) an SDL becomes and a table of what mapped and what did not."""
    with errors():
        tr = _translate(sdl, rate, seconds_per_block, strict)
        data = _as_data(tr)
        verdicts: dict[str, Any] = {}
        if explain and tr.jobs:
            s = settings(ctx)
            chain, dep = s.chain()
            verdicts = akash.explain(s.read_only_wallet(chain), dep, tr)
            data["explain"] = {svc: {"headline": e.headline(), "providers": [
                {"provider": v.address, "placeable": v.placeable, "verdict": str(v)} for v in e.verdicts]}
                for svc, e in verdicts.items()}

        def render() -> str:
            lines: list[str] = []
            for job in tr.jobs:
                lines.append(f"# service {job.service} (placement {job.placement}): {job.count} job(s), "
                             f"price cap {fmt_credits(job.max_rate)} credits/min")
                lines.append(yaml.safe_dump(job.workflow, sort_keys=False).rstrip())
            lines.append(f"# {tr.source} (SDL {tr.version}); prices: {tr.conversion.describe()}")
            for m in tr.table:
                became = m.became or "-"
                lines.append(f"{m.path}: {became}" + (f" ({m.note})" if m.note else ""))
            for svc, e in verdicts.items():
                lines.append(f"# why {svc} would or would not be placed:\n{e}")
            if tr.refused:
                lines.append(f"refused: {len(tr.refused)} part(s); `dsq akash submit` will not submit this SDL")
            return "\n".join(lines)

        emit(data, render, as_json)
        if tr.refused:
            raise typer.Exit(2)


@akash_app.command()
def submit(
    ctx: typer.Context,
    sdl: Annotated[Path, typer.Argument(help="an Akash SDL file (version 2.0 or 2.1)")],
    credits: Annotated[str, typer.Option("--credits", help="escrow per job, in credits")],
    rate: RATE = None,
    seconds_per_block: BLOCK = str(AKASH_SECONDS_PER_BLOCK),
    strict: STRICT = False,
    force: Annotated[bool, typer.Option("--force", help="submit even if no provider could run it now")] = False,
    as_json: JSON = False,
) -> None:
    """Submits the jobs an SDL becomes; nothing at all (no credit locked) when any part is refused."""
    with errors():
        units = parse_credits(credits)
        tr = _translate(sdl, rate, seconds_per_block, strict)
        s = settings(ctx)
        chain, dep = s.chain()
        done = akash.submit(GridClient(s.wallet(chain), dep), tr, units, force=force)
        emit([{"service": d.service, "job_ids": d.job_ids, "workflow_hash": "0x" + d.workflow_hash.hex()}
              for d in done],
             lambda: "\n".join(f"{d.service}: submitted job(s) {', '.join(map(str, d.job_ids))}" for d in done),
             as_json)
