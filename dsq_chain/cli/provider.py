"""Provider and admin commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from eth_utils.address import to_checksum_address

from dsq_chain.cli.common import emit, errors, fmt_credits, out, parse_credits, settings, table
from dsq_chain.cli.jobs import provider_rows
from dsq_chain.errors import InputError
from dsq_chain.executors import Executor, make_executor
from dsq_chain.executors.hardware import MEASURED_LABELS, offerable, self_check, verify_offer
from dsq_chain.sdk.client import AdminClient, ProviderClient
from dsq_chain.types import Prices, Resources
from dsq_chain.workloads.labels import parse_labels

provider_app = typer.Typer(no_args_is_help=True, help="Provider registration and payouts.")
admin_app = typer.Typer(no_args_is_help=True, help="Deployment admin: approve, ban, mint.")

LABEL = Annotated[list[str] | None, typer.Option("--label", help="label key=value (repeatable)")]


def _provider(ctx: typer.Context) -> ProviderClient:
    s = settings(ctx)
    chain, dep = s.chain()
    return ProviderClient(s.wallet(chain), dep)


def _admin(ctx: typer.Context) -> AdminClient:
    s = settings(ctx)
    chain, dep = s.chain()
    return AdminClient(s.wallet(chain), dep)


def _prices(cpu: str, gpu: str, gb: str) -> Prices:
    return Prices(parse_credits(cpu, "--price-cpu"), parse_credits(gpu, "--price-gpu", allow_zero=True),
                  parse_credits(gb, "--price-gb", allow_zero=True))


@provider_app.command("register")
def register(
    ctx: typer.Context,
    price_cpu: Annotated[str, typer.Option("--price-cpu", help="credits per cpu-minute")],
    price_gpu: Annotated[str, typer.Option("--price-gpu", help="credits per gpu-minute")] = "0",
    price_gb: Annotated[str, typer.Option("--price-gb", help="credits per GB-minute of memory")] = "0",
    cpus: Annotated[int | None, typer.Option(help="cpus to offer (default: all detected)")] = None,
    gpus: Annotated[int | None, typer.Option(help="gpus to offer (default: all detected)")] = None,
    mem_mb: Annotated[int | None, typer.Option("--mem-mb", help="memory to offer in MB (default: detected)")] = None,
    label: LABEL = None,
    executor: Annotated[str, typer.Option(help="local | slurm: where hardware is detected")] = "local",
    state_dir: Annotated[Path, typer.Option("--state-dir", help="the worker's state directory")] = Path(".dsq/worker"),
    fake_gpus: Annotated[int, typer.Option("--fake-gpus", help="local executor: GPU slots to simulate (demos)")] = 0,
    slurm_conf: Annotated[Path | None, typer.Option("--slurm-conf")] = None,
) -> None:
    """Registers your account as a provider with hardware this machine really has (admin approval follows)."""
    with errors():
        prices = _prices(price_cpu, price_gpu, price_gb)
        labels = parse_labels(label or [])
        ex = build_executor(executor, state_dir, fake_gpus, slurm_conf)
        detected = ex.capacity()
        hw = Resources(cpus if cpus is not None else detected.cpus, gpus if gpus is not None else detected.gpus,
                       mem_mb if mem_mb is not None else detected.mem_mb)
        offerable(ex, hw)
        # labels the self-check measures must match it (simulated GPUs carry whatever model the demo gives them)
        measured = {k: v for k, v in labels.items()
                    if k in MEASURED_LABELS and not (fake_gpus and k.startswith("gpu."))}
        if measured:
            problems = verify_offer(hw, measured, self_check(ex, state_dir / "executor"))
            if problems:
                raise InputError("refusing to register more than the self-check measured: " + "; ".join(problems))
        p = _provider(ctx)
        p.register(hw, prices, labels)
        out.print(f"registered {p.address}: {hw.cpus} cpus, {hw.gpus} gpus, {hw.mem_mb} MB; awaiting approval")


@provider_app.command("update")
def update(
    ctx: typer.Context,
    price_cpu: Annotated[str | None, typer.Option("--price-cpu")] = None,
    price_gpu: Annotated[str, typer.Option("--price-gpu")] = "0",
    price_gb: Annotated[str, typer.Option("--price-gb")] = "0",
    cpus: Annotated[int | None, typer.Option()] = None,
    gpus: Annotated[int | None, typer.Option()] = None,
    mem_mb: Annotated[int | None, typer.Option("--mem-mb")] = None,
    label: LABEL = None,
    remove_label: Annotated[list[str] | None, typer.Option("--remove-label")] = None,
) -> None:
    """Updates prices, hardware or labels (new assignments only)."""
    with errors():
        p = _provider(ctx)
        info = p.info()
        changed = []
        if price_cpu is not None:
            p.update_prices(_prices(price_cpu, price_gpu, price_gb))
            changed.append("prices")
        if cpus is not None or gpus is not None or mem_mb is not None:
            t = info.total
            p.update_hardware(Resources(cpus if cpus is not None else t.cpus, gpus if gpus is not None else t.gpus,
                                        mem_mb if mem_mb is not None else t.mem_mb))
            changed.append("hardware")
        if label or remove_label:
            p.set_labels(parse_labels(label or []), remove_label or [])
            changed.append("labels")
        if not changed:
            raise InputError("nothing to update: pass --price-cpu, --cpus/--gpus/--mem-mb, --label or --remove-label")
        out.print(f"updated {', '.join(changed)} of {p.address}")


@provider_app.command("pause")
def pause(ctx: typer.Context) -> None:
    """Stops new assignments (running jobs go on)."""
    with errors():
        p = _provider(ctx)
        p.pause()
        out.print(f"{p.address} paused")


@provider_app.command("resume")
def resume(ctx: typer.Context) -> None:
    """Takes new assignments again."""
    with errors():
        p = _provider(ctx)
        p.resume()
        out.print(f"{p.address} resumed")


@provider_app.command("list")
def list_providers(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every registered provider with free/total capacity and prices."""
    with errors():
        s = settings(ctx)
        chain, dep = s.chain()
        provs = ProviderClient(s.read_only_wallet(chain), dep).providers()
        emit([{"address": p.address, "status": p.status.name, "paused": p.paused,
               "total": list(_res(p.total)),
               "free": list(_res(p.free)), "prices": [p.prices.per_cpu_minute, p.prices.per_gpu_minute,
                                                     p.prices.per_gb_minute]} for p in provs],
             lambda: table(None, ["provider", "status", "cpus free/total", "gpus", "MB", "cpu/min", "gpu/min",
                                  "GB/min"], provider_rows(provs)), as_json)


@provider_app.command("withdraw")
def withdraw(ctx: typer.Context) -> None:
    """Withdraws your earnings as tokens."""
    with errors():
        p = _provider(ctx)
        amount = p.withdraw().amount
        out.print(f"withdrew {fmt_credits(amount)} credits to {p.address}")


@admin_app.command("approve")
def approve(ctx: typer.Context, provider: str) -> None:
    """Approves a registered provider."""
    with errors():
        _admin(ctx).approve(_addr(provider))
        out.print(f"approved {provider}")


@admin_app.command("ban")
def ban(ctx: typer.Context, provider: str) -> None:
    """Bans a provider: no new assignments or claims."""
    with errors():
        _admin(ctx).ban(_addr(provider))
        out.print(f"banned {provider}")


@admin_app.command("mint")
def mint(ctx: typer.Context, account: str, amount: Annotated[str, typer.Argument(help="credits")]) -> None:
    """Mints credits to an account."""
    with errors():
        units = parse_credits(amount, "amount")
        _admin(ctx).mint(_addr(account), units)
        out.print(f"minted {fmt_credits(units)} credits to {account}")


@admin_app.command("grant-scheduler")
def grant_scheduler(ctx: typer.Context, account: str) -> None:
    """Gives an account the scheduler role."""
    with errors():
        _admin(ctx).grant_scheduler(_addr(account))
        out.print(f"{account} may now assign jobs")


def build_executor(name: str, state_dir: Path, fake_gpus: int = 0, slurm_conf: Path | None = None,
                   job_user: str | None = None) -> Executor:
    """The executor a worker with ``state_dir`` uses (``state_dir/executor`` holds its files)."""
    root = state_dir / "executor"
    if name == "local":
        return make_executor("local", root=root, gpu_ids=list(range(fake_gpus)) if fake_gpus else None,
                             job_user=job_user)
    if job_user:
        raise InputError("--job-user is for the local executor (Slurm runs each job as its submitting user)")
    if name == "slurm":
        kw: dict[str, object] = {"root": root}
        if slurm_conf is not None:
            kw["slurm_conf"] = slurm_conf
        return make_executor("slurm", **kw)
    raise InputError(f"unknown executor {name!r}: use local or slurm")


def _addr(a: str) -> str:
    try:
        return to_checksum_address(a)
    except ValueError:
        raise InputError(f"{a!r} is not an address (0x followed by 40 hex digits)") from None


def _res(r: Resources) -> tuple[int, int, int]:
    return (r.cpus, r.gpus, r.mem_mb)
