"""``dsq provider init``, ``dsq provider check`` and ``dsq provider doctor``: wiring of
:mod:`dsq_chain.executors.hardware`, :mod:`dsq_chain.services.onboarding` and :mod:`dsq_chain.services.doctor`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dsq_chain.cli.common import EXIT_INPUT, Settings, emit, errors, fmt_credits, out, parse_credits, settings, table
from dsq_chain.cli.provider import build_executor, provider_app
from dsq_chain.errors import InputError
from dsq_chain.executors.hardware import HardwareReport, detect_engine, self_check
from dsq_chain.money import Credits
from dsq_chain.sdk.client import ProviderClient
from dsq_chain.services.doctor import diagnose
from dsq_chain.services.onboarding import (
    create_keystore,
    import_keystore,
    plan_offer,
    propose_prices,
    settle_offer,
    sync_registration,
    write_service_files,
)
from dsq_chain.types import Prices, Resources
from dsq_chain.workloads.labels import parse_labels

LABEL = Annotated[list[str] | None, typer.Option("--label", help="extra label key=value (repeatable)")]
DEFAULT_DIR = Path(".dsq/provider")


def _provider_config(s: Settings) -> dict[str, Any]:
    section = s.config_file().get("provider", {})
    return section if isinstance(section, dict) else {}


def _engine(executor: str, slurm_conf: Path | None) -> tuple[str, str]:
    if executor == "auto":
        return detect_engine(slurm_conf)
    if executor not in ("local", "slurm"):
        raise InputError(f"--executor must be auto, local or slurm, got {executor!r}")
    return executor, "chosen with --executor"


def _report_rows(r: HardwareReport) -> list[list[object]]:
    b = r.benchmarks
    rows: list[list[object]] = [
        ["engine", r.engine],
        ["cpus", r.capacity.cpus],
        ["memory", f"{r.capacity.mem_mb} MB"],
        ["gpus", ", ".join(f"{g.vendor} {g.model} ({g.mem_mb} MB)" for g in r.gpus) or "none (no nvidia-smi GPU)"],
        ["cpu model", r.cpu_model],
        ["job folder", r.job_dir],
        ["free disk there", f"{r.disk_free_gb} GB"],
        ["sha256, one core", f"{b.cpu_sha256_mbps} MB/s"],
        ["memory copy", f"{b.mem_copy_mbps} MB/s"],
        ["disk write + fsync", f"{b.disk_write_mbps} MB/s"],
        ["benchmarks took", f"{b.seconds} s ({'on a compute node, srun' if b.where == 'srun' else 'on this machine'})"],
    ]
    rows += [[f"node {n.name}", f"{n.cpus} cpus, {n.mem_mb} MB, {n.gres or 'no gres'}, {n.state}"] for n in r.nodes]
    return rows


@provider_app.command("check")
def check(
    ctx: typer.Context,
    executor: Annotated[str, typer.Option(help="auto | local | slurm (auto: Slurm when scontrol lists nodes)")] = "",
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="the worker's state directory")] = None,
    slurm_conf: Annotated[Path | None, typer.Option("--slurm-conf")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Prints the hardware the self-check measures (what `provider init` would register) and its labels."""
    from dsq_chain.executors.hardware import standard_labels

    with errors():
        cfg = _provider_config(settings(ctx))
        conf = slurm_conf or (Path(cfg["slurm_conf"]) if cfg.get("slurm_conf") else None)
        name, why = _engine(executor or cfg.get("executor", "auto"), conf)
        sdir = state_dir or Path(cfg.get("state_dir", DEFAULT_DIR / "state"))
        ex = build_executor(name, sdir, slurm_conf=conf)
        report = self_check(ex, sdir / "executor")
        labels = standard_labels(report, cfg.get("region"))
        emit({**report.to_data(), "labels": labels, "engine_reason": why},
             lambda: table(f"self-check ({why})", ["what", "measured"],
                           _report_rows(report) + [[f"label {k}", v] for k, v in labels.items()]), as_json)


@provider_app.command("init")
def init(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Option("--dir", help="where the config, keystore, env file and unit go")] = (
        DEFAULT_DIR),
    keystore: Annotated[Path | None, typer.Option(
        "--keystore-file", help="keystore to use (created there when missing; default DIR/keystore.json)")] = None,
    import_key_file: Annotated[Path | None, typer.Option(
        "--import-key-file", help="file holding an existing private key (hex) to encrypt into the keystore")] = None,
    password_file: Annotated[Path | None, typer.Option(
        "--password-file", help="file holding the keystore password (else $DSQ_KEYSTORE_PASSWORD, else a prompt)"),
    ] = None,
    executor: Annotated[str, typer.Option(help="auto | local | slurm (auto: Slurm when scontrol lists nodes)"),
                        ] = "auto",
    slurm_conf: Annotated[Path | None, typer.Option("--slurm-conf")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="worker state (default DIR/state)")] = None,
    region: Annotated[str | None, typer.Option(help="the region label, e.g. eu-west")] = None,
    label: LABEL = None,
    price_cpu: Annotated[str | None, typer.Option("--price-cpu", help="credits per cpu-minute (default: proposed)"),
                         ] = None,
    price_gpu: Annotated[str | None, typer.Option("--price-gpu", help="credits per gpu-minute")] = None,
    price_gb: Annotated[str | None, typer.Option("--price-gb", help="credits per GB-minute of memory")] = None,
    cpus: Annotated[int | None, typer.Option(help="cpus to offer (default: all measured)")] = None,
    gpus: Annotated[int | None, typer.Option(help="gpus to offer (default: all measured)")] = None,
    mem_mb: Annotated[int | None, typer.Option("--mem-mb", help="memory to offer (default: all measured)")] = None,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="the worker's Prometheus port (0: off)")] = 9101,
    service_user: Annotated[str | None, typer.Option("--service-user", help="User= of the systemd unit")] = None,
    job_user: Annotated[str | None, typer.Option("--job-user", help="local executor: run jobs as this user")] = None,
    non_interactive: Annotated[bool, typer.Option("--non-interactive", help="never prompt: everything from flags")] = (
        False),
    remeasure: Annotated[bool, typer.Option(
        "--remeasure", help="publish this run's benchmark and free-disk figures even when they moved only by noise"),
    ] = False,
) -> None:
    """Onboards this machine as a provider: key, engine, self-check, prices, config, registration, systemd unit.

    Run it again at any time: it sends only what changed (hardware, prices, labels).
    """
    interactive = not non_interactive and sys.stdin.isatty()
    with errors():
        s = settings(ctx)
        directory = directory.resolve()
        ks = (keystore or directory / "keystore.json").resolve()
        # 1. the key
        creating = not ks.exists()
        password = _password(password_file, interactive, confirm=creating, what=str(ks))
        if creating:
            key_in = import_key_file.read_text().strip() if import_key_file else None
            address = create_keystore(ks, password, key_in)
            print(f"1. key: {'imported into' if key_in else 'new account in'} encrypted keystore {ks}: {address}")
        elif import_key_file:
            raise InputError(f"keystore {ks} already exists: drop --import-key-file, or choose another --keystore-file")
        address, private_key = import_keystore(ks, password)
        if not creating:
            print(f"1. key: keystore {ks} opened: {address}")
        # 2. the engine
        name, why = _engine(executor, slurm_conf)
        if interactive and executor == "auto":
            name = typer.prompt(f"2. engine ({why})", default=name)
            name, _ = _engine(name, slurm_conf)
        print(f"2. engine: {name} ({why})")
        if name == "slurm" and slurm_conf is None and os.environ.get("SLURM_CONF"):
            slurm_conf = Path(os.environ["SLURM_CONF"])  # the unit's environment must point at the same cluster
        sdir = (state_dir or directory / "state").resolve()
        ex = build_executor(name, sdir, slurm_conf=slurm_conf, job_user=job_user)
        # 3. the self-check
        report = self_check(ex, sdir / "executor")
        out.print(table("3. self-check", ["what", "measured"], _report_rows(report)))
        # 4. prices
        chain, dep = s.chain()
        client = ProviderClient(chain.wallet(private_key), dep)
        proposed = propose_prices(client.providers())
        prices = _prices(proposed, price_cpu, price_gpu, price_gb, interactive)
        print(f"4. prices: {fmt_credits(prices.per_cpu_minute)} per cpu-minute, "
                  f"{fmt_credits(prices.per_gpu_minute)} per gpu-minute, {fmt_credits(prices.per_gb_minute)} per "
                  f"GB-minute (proposed: the median of approved providers, "
                  f"{fmt_credits(proposed.per_cpu_minute)}/{fmt_credits(proposed.per_gpu_minute)}/"
                  f"{fmt_credits(proposed.per_gb_minute)})")
        if interactive and region is None:
            region = typer.prompt("   region label (empty: none)", default="", show_default=False) or None
        cap = report.capacity
        hw = Resources(cpus if cpus is not None else cap.cpus, gpus if gpus is not None else cap.gpus,
                       mem_mb if mem_mb is not None else cap.mem_mb)
        planned = plan_offer(report, prices, region=region, extra_labels=parse_labels(label or []), hardware=hw)
        offer, before = settle_offer(client, planned, remeasure=remeasure)
        # 5. the config, the environment file and the unit
        worker_args = ["--executor", name, "--state-dir", str(sdir), "--metrics-port", str(metrics_port)]
        env = {"DSQ_KEYSTORE_PASSWORD": password}
        if slurm_conf:
            worker_args += ["--slurm-conf", str(slurm_conf.resolve())]
            env["SLURM_CONF"] = str(slurm_conf.resolve())
        if job_user:
            worker_args += ["--job-user", job_user]
        config = {
            "rpc_url": chain.rpc_url, "deployment": str(s.deployment_path().resolve()), "keystore": str(ks),
            "provider": {"address": address, "executor": name, "state_dir": str(sdir), "region": region,
                         "slurm_conf": str(slurm_conf.resolve()) if slurm_conf else None,
                         "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None,
                         "hardware": {"cpus": hw.cpus, "gpus": hw.gpus, "mem_mb": hw.mem_mb},
                         "prices": {"cpu": prices.per_cpu_minute, "gpu": prices.per_gpu_minute,
                                    "gb": prices.per_gb_minute},
                         "labels": offer.labels},
        }
        env["DSQ_CONFIG"] = str(directory / "config.json")
        files = write_service_files(directory, address=address, config=config, env=env, worker_args=worker_args,
                                    state_dir=sdir, user=service_user)
        print(f"5. config {files.config}, environment file {files.env_file} (0600), unit {files.unit}")
        # 6. registration
        sent = sync_registration(client, offer, remeasure=remeasure)
        info = client.info()
        what = "already up to date"
        if sent:
            what = "registered" if sent == ["register"] else f"updated {', '.join(sent)}"
        hint = f" (the admin approves with `dsq admin approve {address}`)" if info.status.name == "PENDING" else ""
        print(f"6. on chain: {what}; status {info.status.name}{hint}")
        if "labels" in sent:
            for key in sorted(set(before) | set(offer.labels)):
                if before.get(key) != offer.labels.get(key):
                    print(f"   label {key}: {before.get(key, '(none)')} -> {offer.labels.get(key, '(removed)')}")
        print(f"next: sudo cp {files.unit} /etc/systemd/system/ && sudo systemctl enable --now dsq-worker; "
                  f"then `dsq --config {files.config} provider doctor`")


def _password(password_file: Path | None, interactive: bool, *, confirm: bool, what: str) -> str:
    if password_file is not None:
        text = password_file.read_text().rstrip("\n")
        if not text:
            raise InputError(f"password file {password_file} is empty")
        return text
    env = os.environ.get("DSQ_KEYSTORE_PASSWORD")
    if env:
        return env
    if not interactive:
        raise InputError("keystore password needed: pass --password-file or set DSQ_KEYSTORE_PASSWORD")
    return str(typer.prompt(f"password for {what}", hide_input=True, confirmation_prompt=confirm))


def _prices(proposed: Prices, cpu: str | None, gpu: str | None, gb: str | None, interactive: bool) -> Prices:
    def pick(given: str | None, default: Credits, flag: str, allow_zero: bool) -> Credits:
        if given is None and interactive:
            given = typer.prompt(f"   {flag.removeprefix('--')} (credits per minute)", default=fmt_credits(default))
        return default if given is None else parse_credits(given, flag, allow_zero=allow_zero)

    return Prices(pick(cpu, proposed.per_cpu_minute, "--price-cpu", False),
                  pick(gpu, proposed.per_gpu_minute, "--price-gpu", True),
                  pick(gb, proposed.per_gb_minute, "--price-gb", True))


@provider_app.command("doctor")
def doctor(
    ctx: typer.Context,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="the worker's state directory")] = None,
    executor: Annotated[str | None, typer.Option(help="local | slurm")] = None,
    slurm_conf: Annotated[Path | None, typer.Option("--slurm-conf")] = None,
    metrics_url: Annotated[str | None, typer.Option("--metrics-url", help="the worker's /metrics URL")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Checks a running provider end to end; each failing check says how to fix it (exit 2 when one fails)."""
    with errors():
        s = settings(ctx)
        cfg = _provider_config(s)
        sdir = state_dir or Path(cfg.get("state_dir", DEFAULT_DIR / "state"))
        name = executor or cfg.get("executor", "local")
        conf = slurm_conf or (Path(cfg["slurm_conf"]) if cfg.get("slurm_conf") else None)
        checks = diagnose(private_key=s.private_key, deployment=s.load_deployment, rpc_url=s.rpc,
                          executor=lambda: build_executor(name, sdir, slurm_conf=conf), state_dir=sdir,
                          metrics_url=metrics_url or cfg.get("metrics_url"))
        mark = {True: "ok", False: "FAIL", None: "skip"}
        emit([c.__dict__ for c in checks],
             lambda: "\n".join(f"{mark[c.ok]:4}  {c.name:12}  {c.detail}" + (f"\n      fix: {c.fix}" if c.fix else "")
                               for c in checks), as_json)
        if any(c.ok is False for c in checks):
            raise typer.Exit(EXIT_INPUT)

