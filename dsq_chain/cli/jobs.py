"""Job owners' commands: submit, jobs, job, watch, cancel, top-up, explain, preview, withdraw, balance."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from eth_utils.address import to_checksum_address

from dsq_chain.cli.common import EXIT_JOB_FAILED, emit, errors, fmt_credits, out, parse_credits, settings, table
from dsq_chain.errors import InputError
from dsq_chain.sdk.client import GridClient, ProviderClient
from dsq_chain.sdk.history import job_history
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import Job, JobStatus, Provider, ProviderStatus
from dsq_chain.workloads import workflow as wfmod

JSON = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _grid(ctx: typer.Context, *, read_only: bool = False) -> GridClient:
    s = settings(ctx)
    chain, dep = s.chain()
    wallet = s.read_only_wallet(chain) if read_only else s.wallet(chain)
    return GridClient(wallet, dep)


def job_dict(j: Job) -> dict[str, Any]:
    return {
        "id": j.id, "owner": j.owner, "status": j.status.name, "provider": j.provider,
        "cpus": j.resources.cpus, "gpus": j.resources.gpus, "mem_mb": j.resources.mem_mb,
        "escrow": j.escrow, "rate": j.rate, "max_rate": j.max_rate, "since": j.since,
        "disk_gb": j.resources.disk_gb, "head_id": j.head_id or j.id,
    }


def _job_rows(jobs: list[Job]) -> list[list[Any]]:
    return [[j.id, j.status.name, j.provider or "-", f"{j.resources.cpus}/{j.resources.gpus}/{j.resources.mem_mb}",
             fmt_credits(j.escrow), fmt_credits(j.rate) + "/min" if j.rate else "-"] for j in jobs]


def register(app: typer.Typer) -> None:
    @app.command()
    def submit(
        ctx: typer.Context,
        workflow: Annotated[Path, typer.Argument(help="workflow file (YAML or JSON)")],
        credits: Annotated[str, typer.Option("--credits", help="escrow per job, in credits")],
        max_rate: Annotated[str, typer.Option("--max-rate", help="price cap in credits per minute")] = "1000",
        count: Annotated[int, typer.Option("--count", help="job array: this many identical jobs")] = 1,
        force: Annotated[bool, typer.Option(
            "--force", help="submit even if no approved provider could run it (resources, labels, price cap)")] = False,
        provider: Annotated[list[str] | None, typer.Option(
            "--provider", help="direct placement: only this provider may run it (repeat for several)")] = None,
        exclude: Annotated[list[str] | None, typer.Option(
            "--exclude", help="this provider may not run it (repeat for several)")] = None,
        as_json: JSON = False,
    ) -> None:
        """Submits a workflow, locking its escrow (one transaction, paid by permit if needed)."""
        with errors():
            units = parse_credits(credits)
            rate = parse_credits(max_rate, "--max-rate")
            if count < 1:
                raise InputError(f"--count must be >= 1, got {count}")
            wf = wfmod.load(workflow)  # validated fully before anything touches the chain
            for warning in wf.warnings:  # retired fields that still work, with the hint
                typer.echo(f"warning: {warning}", err=True)
            grid = _grid(ctx)
            ids = list(grid.submit(wf, credits=units, max_rate=rate, count=count, force=force,
                                   providers=provider or (), exclude=exclude or ()))
            emit({"job_ids": ids, "workflow_hash": "0x" + wf.hash().hex()},
                 lambda: f"submitted job{'s' if len(ids) > 1 else ''} {_ids(ids)} "
                         f"({wf.resources.cpus} cpus, {wf.resources.gpus} gpus, {wf.resources.mem_mb} MB; "
                         f"escrow {fmt_credits(units)} credits each)", as_json)

    @app.command("jobs")
    def list_jobs(
        ctx: typer.Context,
        mine: Annotated[bool, typer.Option("--mine", help="only jobs of the key's account")] = False,
        provider: Annotated[str | None, typer.Option("--provider", help="only jobs on this provider")] = None,
        status: Annotated[str | None, typer.Option("--status", help="only jobs in this status")] = None,
        limit: Annotated[int, typer.Option("--limit", help="at most this many (newest first)")] = 50,
        as_json: JSON = False,
    ) -> None:
        """Lists jobs."""
        with errors():
            wanted = _status(status) if status else None
            grid = _grid(ctx, read_only=not mine)
            if mine:
                jobs = grid.jobs_of()
            else:
                n = grid.job_count()
                jobs = grid.jobs(range(max(1, n - 5 * limit + 1) if (provider or wanted) else max(1, n - limit + 1),
                                       n + 1))
            if provider:
                p = to_checksum_address(provider)
                jobs = [j for j in jobs if j.provider == p]
            if wanted is not None:
                jobs = [j for j in jobs if j.status is wanted]
            jobs = sorted(jobs, key=lambda j: -j.id)[:limit]
            emit([job_dict(j) for j in jobs],
                 lambda: table(None, ["job", "status", "provider", "cpus/gpus/MB", "escrow", "rate"], _job_rows(jobs)),
                 as_json)

    @app.command("job")
    def show_job(ctx: typer.Context, job_id: int, as_json: JSON = False) -> None:
        """A job's status history with timestamps, its provider and its bill."""
        with errors():
            grid = _grid(ctx, read_only=True)
            job = grid.job(job_id)
            hist = job_history(grid, job_id)

            def render() -> Any:
                rows = [[_ts(e.timestamp), e.status.name if e.status else "", e.event, e.detail] for e in hist.entries]
                t = table(f"job {job_id}: {job.status.name}", ["time (UTC)", "status", "event", "detail"], rows)
                out.print(t)
                return (f"owner {job.owner}  provider {job.provider or '-'}  escrow {fmt_credits(job.escrow)}  "
                        f"billed {fmt_credits(hist.billed)}  refunded {fmt_credits(hist.refunded)}"
                        + (f"  exit {hist.exit_code}" if hist.exit_code is not None else ""))

            emit({**job_dict(job), **hist.as_dict()}, render, as_json)

    @app.command()
    def watch(
        ctx: typer.Context,
        job_id: int,
        timeout: Annotated[float, typer.Option(help="give up after this many seconds (0: never)")] = 0,
    ) -> None:
        """Shows the job's status live until it is final; exits 0 if it FINISHED, 1 otherwise."""
        with errors():
            grid = _grid(ctx, read_only=True)
            deadline = time.monotonic() + timeout if timeout else None
            last: JobStatus | None = None
            while True:
                job = grid.job(job_id)
                if job.status is not last:
                    out.print(f"{_ts(int(time.time()))}  job {job_id}  {job.status.name}"
                              + (f"  on {job.provider}" if job.provider else ""))
                    last = job.status
                if job.status.is_final:
                    raise typer.Exit(0 if job.status is JobStatus.FINISHED else EXIT_JOB_FAILED)
                if deadline and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job.status.name} after {timeout:.0f} s")
                time.sleep(0.5)

    @app.command()
    def cancel(ctx: typer.Context, job_id: int) -> None:
        """Cancels your job: full refund before it runs, billed up to now while RUNNING."""
        with errors():
            grid = _grid(ctx)
            grid.cancel(job_id)
            out.print(f"job {job_id} canceled")

    @app.command("top-up", context_settings={"ignore_unknown_options": True})
    def top_up(ctx: typer.Context, job_id: int, amount: Annotated[str, typer.Argument(help="credits to add")]) -> None:
        """Adds escrow to a job, extending how long it may run."""
        with errors():
            units = parse_credits(amount, "amount")
            grid = _grid(ctx)
            grid.top_up(job_id, units)
            out.print(f"job {job_id}: +{fmt_credits(units)} credits, escrow now {fmt_credits(grid.job(job_id).escrow)}")

    @app.command()
    def explain(ctx: typer.Context, job_id: int, as_json: JSON = False) -> None:
        """Why a job waits: provider by provider, the constraint that failed, with the numbers."""
        with errors():
            s = settings(ctx)
            chain, dep = s.chain()
            result = MetaScheduler(s.read_only_wallet(chain), dep).explain(job_id)
            if isinstance(result, str):
                emit({"job_id": job_id, "explanation": result}, lambda: result, as_json)
            else:
                data = {"job_id": job_id, "headline": result.headline(),
                        "providers": [{"provider": v.address, "placeable": v.placeable, "verdict": str(v)}
                                      for v in result.verdicts]}
                emit(data, lambda: str(result), as_json)

    @app.command()
    def preview(
        ctx: typer.Context,
        workflow: Path,
        credits: Annotated[str, typer.Option("--credits", help="escrow in credits")],
        as_json: JSON = False,
    ) -> None:
        """Cost preview: for each approved provider, the rate and how long the credits let the job run."""
        with errors():
            units = parse_credits(credits)
            wf = wfmod.load(workflow)
            grid = _grid(ctx, read_only=True)
            provs = [p for p in grid.providers() if p.status is ProviderStatus.APPROVED]
            rows: list[dict[str, Any]] = []
            for p in provs:
                pv = wfmod.cost_preview(wf, units, p.prices)
                rows.append({"provider": p.address, "fits": wf.resources.fits_in(p.total),
                             "rate_per_minute": pv.rate_per_minute, "max_runtime_seconds": pv.max_runtime_seconds})
            emit(rows, lambda: table(f"{wf.name or workflow.name}: {fmt_credits(units)} credits", [
                "provider", "fits", "rate/min", "runs at most"], [
                [r["provider"], "yes" if r["fits"] else "no", fmt_credits(r["rate_per_minute"]),
                 _duration(r["max_runtime_seconds"])] for r in rows]), as_json)

    @app.command()
    def withdraw(ctx: typer.Context) -> None:
        """Withdraws your internal balance (refunds, earnings) as tokens."""
        with errors():
            grid = _grid(ctx)
            amount = grid.withdraw().amount
            out.print(f"withdrew {fmt_credits(amount)} credits to {grid.address}")

    @app.command()
    def balance(ctx: typer.Context, account: Annotated[str | None, typer.Argument()] = None,
                as_json: JSON = False) -> None:
        """Token balance and internal (withdrawable) balance of an account (default: your key's)."""
        with errors():
            grid = _grid(ctx, read_only=account is not None)
            addr = to_checksum_address(account) if account else grid.address
            tokens, internal = grid.token_balance(addr), grid.credits(addr)
            emit({"account": addr, "tokens": tokens, "internal": internal},
                 lambda: f"{addr}: {fmt_credits(tokens)} credits in tokens, {fmt_credits(internal)} withdrawable",
                 as_json)


def provider_rows(provs: list[Provider]) -> list[list[Any]]:
    return [[p.address, p.status.name + (" (paused)" if p.paused else ""),
             f"{p.free.cpus}/{p.total.cpus}", f"{p.free.gpus}/{p.total.gpus}", f"{p.free.mem_mb}/{p.total.mem_mb}",
             fmt_credits(p.prices.per_cpu_minute), fmt_credits(p.prices.per_gpu_minute),
             fmt_credits(p.prices.per_gb_minute)] for p in provs]


def _status(name: str) -> JobStatus:
    try:
        return JobStatus[name.upper().replace("-", "_")]
    except KeyError:
        raise InputError(f"unknown status {name!r}; one of {', '.join(s.name for s in JobStatus if s)}") from None


def _ids(ids: list[int]) -> str:
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]}..{ids[-1]}"


def _ts(t: int) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(s: int) -> str:
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


__all__ = ["ProviderClient", "job_dict", "provider_rows", "register"]
