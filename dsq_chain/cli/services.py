"""Long-running services and local chain: ``dsq scheduler run``, ``dsq worker run``, ``dsq logs``, ``dsq devnet``."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Protocol

import typer

from dsq_chain.cli.common import DEFAULT_DIR, Settings, errors, out, settings, table
from dsq_chain.cli.provider import build_executor
from dsq_chain.errors import InputError
from dsq_chain.matching import Weights
from dsq_chain.matching import compiled as compiled_search
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import AnvilError, dev_keys, start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import AdminClient
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.services import preflight
from dsq_chain.services.hardening import forbid_inspection
from dsq_chain.services.journal import Journal
from dsq_chain.services.logserver import LogServer
from dsq_chain.services.metrics import SchedulerMetrics, WorkerMetrics
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.services.shares import DEFAULT_TAKEOVER_S
from dsq_chain.services.worker import ProviderWorker

scheduler_app = typer.Typer(no_args_is_help=True, help="The meta-scheduler service.")
worker_app = typer.Typer(no_args_is_help=True, help="The provider worker service.")
devnet_app = typer.Typer(no_args_is_help=True, help="A local Anvil chain with the contracts deployed.")

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@scheduler_app.command("run")
def scheduler_run(
    ctx: typer.Context,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Prometheus port (0: off)")] = 0,
    batch_limit: Annotated[int, typer.Option("--batch-limit", help="most assignments per transaction")] = 200,
    weights: Annotated[str, typer.Option(help="score weights, e.g. price=1,load=0.5,reliability=1,fairshare=1")] = "",
    confirmations: Annotated[int, typer.Option(help="blocks an event must be deep before it is used")] = 0,
    standby: Annotated[float, typer.Option(
        "--standby", help="seconds a job waits in PENDING before this (standby) scheduler takes it; 0: active")] = 0.0,
    peer: Annotated[list[str] | None, typer.Option(
        "--peer", metavar="ADDRESS",
        help="address of another active scheduler (repeatable): the jobs are shared, none raced")] = None,
    takeover: Annotated[float, typer.Option(
        "--takeover", help="seconds a --peer's job waits before this scheduler takes it")] = DEFAULT_TAKEOVER_S,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Follows the chain and commits assignments until interrupted (SIGINT/SIGTERM)."""
    with errors():
        s, chain, dep = _service_setup(ctx, verbose)
        wallet = s.wallet(chain)
        preflight.check_contracts(chain, dep)
        preflight.check_scheduler(wallet, dep)
        metrics = SchedulerMetrics()
        sched = MetaScheduler(wallet, dep, weights=_weights(weights), batch_limit=batch_limit,
                              confirmations=confirmations, standby_s=standby, peers=peer or (),
                              takeover_s=takeover, metrics=metrics)
        _serve_and_run(sched, metrics, metrics_port, "dsq.scheduler",
                       f"scheduler {sched.wallet.address} on {chain.rpc_url} (market {dep.market}); "
                       f"matcher: {compiled_search.describe()}")


@worker_app.command("run")
def worker_run(
    ctx: typer.Context,
    executor: Annotated[str, typer.Option(help="local | slurm")] = "local",
    state_dir: Annotated[Path, typer.Option("--state-dir", help="journal, checkpoint and job files")] = Path(
        ".dsq/worker"),
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Prometheus port (0: off)")] = 0,
    fake_gpus: Annotated[int, typer.Option("--fake-gpus", help="local executor: GPU slots to simulate")] = 0,
    slurm_conf: Annotated[Path | None, typer.Option("--slurm-conf")] = None,
    poll: Annotated[float, typer.Option(help="seconds between ticks")] = 0.2,
    job_user: Annotated[str | None, typer.Option(
        "--job-user", help="local executor, worker run as root: run jobs as this user, out of its reach")] = None,
    logs_port: Annotated[int, typer.Option(
        "--logs-port", help="serve each job's logs to its owner (signed requests) on this port (0: off)")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Runs this provider's jobs until interrupted; restart it any time, it resumes from its journal."""
    with errors():
        s, chain, dep = _service_setup(ctx, verbose)
        wallet = s.wallet(chain)
        preflight.check_contracts(chain, dep)
        preflight.check_provider(wallet, dep)
        if executor == "slurm":
            slurm_conf = preflight.check_slurm(slurm_conf)
        metrics = WorkerMetrics()
        engine = build_executor(executor, state_dir, fake_gpus, slurm_conf, job_user)
        if executor == "local" and job_user is None and os.geteuid() == 0:
            logging.getLogger("dsq.worker").warning(
                "jobs run as root, like this worker: they could reach it and its key. Pass --job-user")
        worker = ProviderWorker(wallet, dep, engine,
                                state_dir, poll_interval=poll, metrics=metrics)
        if logs_port:
            LogServer(worker.client.job, worker.logs, worker.address, chain.chain_id, dep.market,
                      state_dir / "log-nonces.sqlite", port=logs_port).start()
        _serve_and_run(worker, metrics, metrics_port, "dsq.worker",
                       f"worker {worker.address} ({executor} executor, state in {state_dir})")


def _service_setup(ctx: typer.Context, verbose: bool) -> tuple[Settings, Chain, Deployment]:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    if not forbid_inspection():  # before the key is read: jobs of the same user must not read it from /proc
        logging.getLogger("dsq").warning("could not make the process non-dumpable: same-user processes can read "
                                         "its environment")
    s = settings(ctx)
    chain, dep = s.chain()
    return s, chain, dep


class _Service(Protocol):
    def run(self, stop: threading.Event) -> None: ...


def _serve_and_run(service: _Service, metrics: SchedulerMetrics | WorkerMetrics, port: int, logger: str,
                   message: str) -> None:
    """Serves the metrics (port 0: not at all), logs what runs, and runs until SIGINT/SIGTERM."""
    if port:
        metrics.serve(port)
    logging.getLogger(logger).info("%s", message)
    service.run(_stop_on_signals())


def register_logs(app: typer.Typer) -> None:
    @app.command()
    def logs(
        ctx: typer.Context,
        job_id: int,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
        server: Annotated[str | None, typer.Option(
            "--server", envvar="DSQ_LOG_SERVER", help="the provider's log server, http://host:port; signs the "
                                                      "request with your key (DSQ_PRIVATE_KEY or --keystore)")] = None,
        state_dir: Annotated[Path, typer.Option("--state-dir", help="without --server: the worker's state directory "
                                                "(run on the provider)")] = Path(".dsq/worker"),
        executor: Annotated[str, typer.Option(help="local | slurm")] = "local",
        stderr: Annotated[bool, typer.Option("--stderr", help="show stderr instead of stdout")] = False,
    ) -> None:
        """A job's stdout (or stderr): from its provider's log server as the job's owner, or on the provider itself."""
        import sqlite3
        import sys

        with errors():
            if server:
                from dsq_chain.sdk.client import GridClient
                from dsq_chain.sdk.logaccess import LogClient

                s = settings(ctx)
                chain, dep = s.chain()
                key = s.private_key()
                job = GridClient(s.read_only_wallet(chain), dep).job(job_id)
                if job.provider is None:
                    raise InputError(f"job {job_id} is {job.status.name} and on no provider: it has no logs yet")
                client = LogClient(server, key, chain.chain_id, dep.market, job.provider)
                for chunk in client.read(job_id, "stderr" if stderr else "stdout", follow=follow):
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
                return
            if follow:
                raise InputError("--follow needs --server (the provider's log server)")
            db_path = state_dir / "worker.sqlite"
            if not db_path.exists():
                raise InputError(f"no worker journal in {state_dir}: pass --state-dir of the worker that ran the job, "
                                 "or --server to ask its log server")
            entry = Journal(sqlite3.connect(db_path)).get(job_id)
            ex = build_executor(executor, state_dir)
            exec_id = entry.exec_id if entry and entry.exec_id else next(iter(ex.find(job_id)[-1:]), None)
            if exec_id is None:
                raise InputError(f"job {job_id} never ran on this worker ({state_dir})")
            path = ex.logs(exec_id)[1 if stderr else 0]
            print(path.read_text(errors="replace") if path.exists() else "", end="")


@devnet_app.command("up")
def devnet_up(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="RPC port")] = 8545,
    directory: Annotated[Path, typer.Option("--dir", help="where the deployment and devnet files go")] = DEFAULT_DIR,
    credits: Annotated[int, typer.Option(help="credits minted to each test account")] = 10_000,
) -> None:
    """Starts a local Anvil, deploys the contracts, funds test accounts, writes the deployment file."""
    with errors():
        directory.mkdir(parents=True, exist_ok=True)
        state = directory / "devnet.json"
        if state.exists() and _alive(json.loads(state.read_text()).get("pid", 0)):
            raise InputError(f"a devnet is already running ({state}); `dsq devnet down` first")
        try:
            node = start_anvil(port, mixed_mining=True, log_path=directory / "anvil.log")
        except AnvilError as e:
            raise InputError(str(e)) from None
        keys = dev_keys(10)
        chain = Chain(node.rpc_url)
        dep = deploy(chain.wallet(keys[0]))
        dep.save(directory / "deployment.json")
        admin = AdminClient(chain.wallet(keys[0]), dep)
        admin.grant_scheduler(chain.wallet(keys[1]).address)
        accounts = [chain.wallet(k).address for k in keys]
        for a in accounts[2:]:
            admin.mint(a, Credits(credits))
        state.write_text(json.dumps({"pid": node.pid, "port": port, "rpc_url": node.rpc_url}) + "\n")
        roles = ["admin", "scheduler"] + ["user / provider"] * 8
        out.print(table(f"devnet at {node.rpc_url} (pid {node.pid}); deployment in {directory / 'deployment.json'}",
                        ["#", "account", "role", "credits"],
                        [[i, a, roles[i], credits if i >= 2 else 0] for i, a in enumerate(accounts)]))
        out.print("These are Anvil's public test accounts. Use one with: "
                  "export DSQ_PRIVATE_KEY=$(dsq devnet key N)")


@devnet_app.command("key")
def devnet_key(n: int) -> None:
    """Prints test account N's private key (Anvil's public test mnemonic: never use it elsewhere)."""
    if not 0 <= n < 10:
        raise typer.BadParameter("N must be 0..9")
    print(dev_keys(n + 1)[n])


@devnet_app.command("down")
def devnet_down(directory: Annotated[Path, typer.Option("--dir")] = DEFAULT_DIR) -> None:
    """Stops the devnet started by `dsq devnet up`."""
    with errors():
        state = directory / "devnet.json"
        if not state.exists():
            raise InputError(f"no devnet recorded in {state}")
        pid = int(json.loads(state.read_text())["pid"])
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not _alive(pid):
                    break
                time.sleep(0.1)
        state.unlink()
        out.print(f"devnet (pid {pid}) stopped")


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def _weights(text: str) -> Weights | None:
    if not text:
        return None
    values: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in ("price", "load", "reliability", "fairshare"):
            raise InputError(f"unknown weight {name!r}: use price, load, reliability, fairshare")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"weight {name} must be a number, got {value!r}") from None
    return Weights(**values)
