"""``make demo``: the whole grid on one machine, end to end, checked.

Starts a local Anvil, deploys, registers and approves three providers with different hardware,
prices and labels (one with a GPU slot), starts the meta-scheduler and one worker per provider as
real ``dsq`` processes, and submits workflows that exercise the interesting paths: a job only the
GPU provider can take, a failing job, a job cancelled while running, a job that runs out of
credits, one saved by a top-up, and one no provider can take (with its ``explain``). It also runs
``dsq index run`` and ``dsq dashboard`` (the workers serve their jobs' logs to their owners) and prints
the dashboard's URL; the dashboard must show every job's final status. It prints progress as it goes,
then a table of every job (provider, status, exit code, billed, refunded),
reconciles every credit to the unit, stops everything it started, and exits 0 only when all of it
went as expected. With ``--keep`` it keeps the chain, the services and the dashboard up (and the work
directory) until interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import AnvilNode, dev_keys, free_port, start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.sdk.history import job_history
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import CREDIT_UNIT, JobStatus, Prices, Resources
from dsq_chain.workloads import workflow as wfmod

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "demo"
TIMEOUT_S = 100.0


@dataclass
class ProviderSpec:
    name: str
    key_index: int
    hardware: Resources
    prices: Prices
    labels: dict[str, str]
    fake_gpus: int = 0


@dataclass
class DemoJob:
    name: str
    workflow: str
    owner: int  # index into the users
    expect: JobStatus
    escrow_seconds: float | None = None  # escrow sized to buy this many seconds on the eu provider
    provider: str | None = None  # expected provider name
    exit_code: int | None = None
    job_id: int = 0
    credits: int = 0
    done_actions: set[str] = field(default_factory=set)


PROVIDERS = [
    ProviderSpec("eu", 3, Resources(2, 0, 4096), Prices(Credits(1), Credits(0), Credits("0.1")), {"zone": "eu"}),
    ProviderSpec("us", 4, Resources(2, 0, 4096), Prices(Credits(2), Credits(0), Credits("0.1")), {"zone": "us"}),
    ProviderSpec("gpu", 5, Resources(2, 1, 8192), Prices(Credits(4), Credits(10), Credits("0.1")),
                 {"zone": "eu-west", "gpu.model": "A100", "cuda.version": "12"}, fake_gpus=1),
]
JOBS = [
    DemoJob("hello", "hello.yaml", 0, JobStatus.FINISHED, exit_code=0),
    DemoJob("gpu only", "gpu.yaml", 1, JobStatus.FINISHED, provider="gpu", exit_code=0),
    DemoJob("fails", "fail.yaml", 0, JobStatus.FAILED, exit_code=3),
    DemoJob("out of credits", "long.yaml", 1, JobStatus.OUT_OF_CREDITS, escrow_seconds=3, provider="eu"),
    DemoJob("saved by top-up", "long.yaml", 0, JobStatus.FINISHED, escrow_seconds=4, provider="eu", exit_code=0),
    DemoJob("cancelled running", "long.yaml", 1, JobStatus.CANCELED, provider="eu"),
    DemoJob("impossible", "impossible.yaml", 0, JobStatus.CANCELED),
]
MINT = 1_000 * CREDIT_UNIT


class Demo:
    def __init__(self, workdir: Path, keep: bool, dashboard_port: int = 0) -> None:
        self.dir = workdir
        self.keep = keep
        self.dashboard_port = dashboard_port or free_port()
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.node: AnvilNode | None = None
        self.t0 = time.monotonic()
        self.failures: list[str] = []

    # -- helpers ---------------------------------------------------------------------------------
    def step(self, text: str) -> None:
        console.print(f"[dim]{time.monotonic() - self.t0:6.1f}s[/] {text}")

    def check(self, ok: bool, text: str) -> None:
        console.print(f"  {'[green]ok[/]  ' if ok else '[red]FAIL[/]'} {text}")
        if not ok:
            self.failures.append(text)

    def dsq(self, key: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "dsq_chain", "--deployment", str(self.dir / "deployment.json"), *args]

    def env(self, key: str) -> dict[str, str]:
        return {**os.environ, "DSQ_PRIVATE_KEY": key, "PYTHONUNBUFFERED": "1"}

    def spawn(self, name: str, key: str, *args: str) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(self.dsq(key, *args), env=self.env(key), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> int:
        keys = dev_keys(10)
        self.node = start_anvil(mixed_mining=True, log_path=self.dir / "anvil.log")
        chain = Chain(self.node.rpc_url)
        self.step(f"local chain (Anvil) at {self.node.rpc_url}")
        dep = deploy(chain.wallet(keys[0]), claim_timeout=60)
        dep.save(self.dir / "deployment.json")
        admin = AdminClient(chain.wallet(keys[0]), dep)
        self.step(f"deployed CreditToken {dep.token} and JobMarket {dep.market}")
        admin.grant_scheduler(chain.wallet(keys[1]).address)
        users = [GridClient(chain.wallet(keys[i]), dep) for i in (6, 7)]
        for u in users:
            admin.mint(u.address, Credits(units=MINT))
        self.step(f"minted {MINT // CREDIT_UNIT} credits to each of 2 users")

        providers: dict[str, ProviderClient] = {}
        for p in PROVIDERS:
            state = self.dir / f"worker-{p.name}"
            args = ["provider", "register", "--state-dir", str(state), "--cpus", str(p.hardware.cpus),
                    "--gpus", str(p.hardware.gpus), "--mem-mb", str(p.hardware.mem_mb),
                    "--price-cpu", _credits(p.prices.per_cpu_minute), "--price-gpu", _credits(p.prices.per_gpu_minute),
                    "--price-gb", _credits(p.prices.per_gb_minute), "--fake-gpus", str(p.fake_gpus)]
            for k, v in p.labels.items():
                args += ["--label", f"{k}={v}"]
            subprocess.run(self.dsq(keys[p.key_index], *args), env=self.env(keys[p.key_index]), check=True,
                           capture_output=True)
            client = ProviderClient(chain.wallet(keys[p.key_index]), dep)
            admin.approve(client.address)
            providers[p.name] = client
            self.step(f"provider [bold]{p.name}[/] {client.address}: {p.hardware.cpus} cpus, {p.hardware.gpus} gpus, "
                      f"{p.hardware.mem_mb} MB, {_credits(p.prices.per_cpu_minute)} credits/cpu-min, labels "
                      f"{', '.join(f'{k}={v}' for k, v in p.labels.items())} — registered with `dsq provider register`"
                      ", approved")
        names = {c.address: n for n, c in providers.items()}

        self.spawn("scheduler", keys[1], "scheduler", "run")
        log_servers: list[str] = []
        for p in PROVIDERS:
            extra = ["--fake-gpus", str(p.fake_gpus)] if p.fake_gpus else []
            logs_port = free_port()
            log_servers += ["--log-server", f"{providers[p.name].address}=http://127.0.0.1:{logs_port}"]
            self.spawn(f"worker-{p.name}", keys[p.key_index], "worker", "run", "--state-dir",
                       str(self.dir / f"worker-{p.name}"), "--poll", "0.1", "--logs-port", str(logs_port), *extra)
        self.step("started `dsq scheduler run` and one `dsq worker run --logs-port` per provider (local executor)")
        db = f"sqlite:///{self.dir / 'index.sqlite'}"
        self.spawn("index", keys[9], "index", "run", "--db", db)
        self.spawn("dashboard", keys[9], "dashboard", "--port", str(self.dashboard_port), "--db", db, *log_servers)
        self.step(f"started `dsq index run` and `dsq dashboard`: [bold]{self.dashboard_url}/[/]")

        eu_rate = PROVIDERS[0].prices.rate_for(Resources(1, 0, 256))
        for job in JOBS:
            wf = wfmod.load(EXAMPLES / job.workflow)
            job.credits = int(eu_rate * job.escrow_seconds / 60) if job.escrow_seconds else 5 * CREDIT_UNIT
            owner = users[job.owner]
            job.job_id = owner.submit(wf, credits=Credits(units=job.credits), max_rate=Credits(100), force=True)[0]
            self.step(f"submitted job {job.job_id} [bold]{job.name}[/] ({job.workflow}, escrow "
                      f"{_credits(job.credits)} credits)")
        self.follow(users, names, chain, dep, keys)
        self.check_dashboard()
        return self.report(users, providers, names, chain, dep)

    def check_dashboard(self) -> None:
        """The dashboard's API shows every job with its final status (the index caught up)."""
        import requests

        deadline = time.monotonic() + 30
        shown: dict[int, str] = {}
        while time.monotonic() < deadline:
            try:
                rows = requests.get(f"{self.dashboard_url}/api/v1/jobs?limit=100", timeout=5).json()["jobs"]
                shown = {int(r["id"]): str(r["status"]) for r in rows}
            except (requests.RequestException, ValueError, KeyError):
                shown = {}
            if all(shown.get(j.job_id) == j.expect.name for j in JOBS):
                break
            time.sleep(0.5)
        self.check(all(shown.get(j.job_id) == j.expect.name for j in JOBS),
                   f"the dashboard ({self.dashboard_url}) shows every job's final status")

    def follow(self, users: list[GridClient], names: dict[str, str], chain: Chain, dep: Deployment,
               keys: list[str]) -> None:
        by_id = {j.job_id: j for j in JOBS}
        last: dict[int, JobStatus] = {}
        running_since: dict[int, float] = {}
        deadline = time.monotonic() + TIMEOUT_S
        reader = users[0]
        while time.monotonic() < deadline:
            jobs = reader.jobs(by_id)
            for j in jobs:
                demo = by_id[j.id]
                if last.get(j.id) is not j.status:
                    where = f" on {names.get(j.provider or '', j.provider)}" if j.provider else ""
                    self.step(f"job {j.id} {demo.name}: [bold]{j.status.name}[/]{where}")
                    last[j.id] = j.status
                    if j.status is JobStatus.RUNNING:
                        running_since[j.id] = time.monotonic()
                ran = time.monotonic() - running_since.get(j.id, time.monotonic())
                owner = users[demo.owner]
                if demo.name == "saved by top-up" and j.status is JobStatus.RUNNING and ran > 1 and \
                        "top-up" not in demo.done_actions:
                    amount = 5 * CREDIT_UNIT
                    owner.top_up(j.id, Credits(units=amount))
                    demo.done_actions.add("top-up")
                    self.step(f"job {j.id}: owner tops up {_credits(amount)} credits while it runs (`dsq top-up`)")
                if demo.name == "cancelled running" and j.status is JobStatus.RUNNING and ran > 1.5 and \
                        "cancel" not in demo.done_actions:
                    owner.cancel(j.id)
                    demo.done_actions.add("cancel")
                    self.step(f"job {j.id}: owner cancels it while it runs (`dsq cancel`)")
                if demo.name == "impossible" and j.status is JobStatus.PENDING and \
                        time.monotonic() - self.t0 > 2 and "explain" not in demo.done_actions and \
                        all(s.is_final or s is JobStatus.RUNNING or by_id[i].name == "impossible"
                            for i, s in last.items() if by_id[i].name in ("hello", "gpu only")):
                    explanation = MetaScheduler(chain.wallet(keys[9]), dep).explain(j.id)
                    demo.done_actions.add("explain")
                    self.step(f"job {j.id} waits; `dsq explain {j.id}` says:")
                    text = str(explanation)
                    for addr, n in names.items():
                        text = text.replace(addr, f"{n} ({addr[:10]}…)")
                    console.print("    " + text.replace("\n", "\n    "), highlight=False)
                    owner.cancel(j.id)
                    self.step(f"job {j.id}: owner cancels it (full refund)")
            if all(j.status.is_final for j in jobs):
                return
            time.sleep(0.25)
        self.failures.append(f"not every job was final after {TIMEOUT_S:.0f} s")

    def report(self, users: list[GridClient], providers: dict[str, ProviderClient], names: dict[str, str],
               chain: Chain, dep: Deployment) -> int:
        reader = users[0]
        t = Table(title="jobs")
        for c in ("job", "name", "provider", "status", "exit", "escrow+top-ups", "billed", "refunded"):
            t.add_column(c)
        billed_by_provider: dict[str, int] = {}
        billed_by_owner: dict[str, int] = {}
        rows_ok = True
        for demo in JOBS:
            job = reader.job(demo.job_id)
            hist = job_history(reader, demo.job_id)
            funded = demo.credits + hist.topped_up
            prov_name = names.get(job.provider or "", "-")
            t.add_row(str(job.id), demo.name, prov_name, job.status.name,
                      "-" if hist.exit_code is None or (job.status is not JobStatus.FAILED and hist.exit_code == 0
                      and job.status is not JobStatus.FINISHED) else str(hist.exit_code),
                      _credits(funded), _credits(hist.billed or 0), _credits(hist.refunded or 0))
            billed = hist.billed or 0
            if job.provider:
                billed_by_provider[job.provider] = billed_by_provider.get(job.provider, 0) + billed
            billed_by_owner[job.owner] = billed_by_owner.get(job.owner, 0) + billed
            ok = job.status is demo.expect and (demo.provider is None or prov_name == demo.provider)
            ok = ok and (demo.exit_code is None or hist.exit_code == demo.exit_code)
            ok = ok and (hist.billed or 0) + (hist.refunded or 0) == funded
            if demo.expect is JobStatus.OUT_OF_CREDITS:
                ok = ok and hist.refunded == 0 and hist.billed == funded
            if demo.name == "cancelled running":
                ok = ok and 0 < (hist.billed or 0) < funded
            if demo.name == "impossible":
                ok = ok and hist.billed == 0
            rows_ok = rows_ok and ok
            if not ok:
                self.failures.append(f"job {job.id} {demo.name}: {job.status.name} on {prov_name}, exit "
                                     f"{hist.exit_code}, billed {hist.billed}, refunded {hist.refunded}")
        console.print(t)
        console.print("[bold]reconciliation[/] (credit units, 6 decimals):")
        self.check(rows_ok, "every job: final status, provider and exit code as expected; billed + refunded == "
                            "escrow + top-ups")
        market_tokens = reader.token_balance(dep.market)
        internal = {a: reader.credits(a) for a in [*names, *(u.address for u in users)]}
        escrows = sum(reader.job(d.job_id).escrow for d in JOBS)
        self.check(market_tokens == escrows + sum(internal.values()),
                   f"market holds {market_tokens} = escrows {escrows} + internal balances {sum(internal.values())}")
        for addr, n in names.items():
            self.check(internal[addr] == billed_by_provider.get(addr, 0),
                       f"provider {n}: earned {internal[addr]} = billed for its jobs {billed_by_provider.get(addr, 0)}")
        for u in users:
            have = reader.token_balance(u.address) + internal[u.address]
            spent = billed_by_owner.get(u.address, 0)
            self.check(have == MINT - spent, f"user {u.address[:10]}…: tokens + refunds {have} = minted {MINT} - "
                                             f"billed {spent}")
        for name, p in providers.items():
            if internal[p.address]:
                amount = p.withdraw().amount
                self.check(p.token_balance() == amount, f"provider {name} withdrew {amount} as tokens (pull payment)")
        return 0 if not self.failures else 1

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.failures.append(f"{name} did not stop on SIGTERM")
        if self.node:
            self.node.stop()

    def dump_logs(self) -> None:
        for name, _ in self.procs:
            path = self.dir / f"{name}.log"
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-25:]
                console.print(f"[bold]--- last lines of {name}.log[/]")
                console.print("\n".join(lines), markup=False)


def _credits(units: int) -> str:
    whole, frac = divmod(int(units), CREDIT_UNIT)
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else str(whole)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsq demo", description="The whole grid on one machine, checked.")
    parser.add_argument("--keep", action="store_true",
                        help="keep the chain, services and dashboard up until interrupted, and the work directory")
    parser.add_argument("--dashboard-port", type=int, default=0, help="the dashboard's port (default: a free one)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dsq-demo-"))
    demo = Demo(workdir, args.keep, args.dashboard_port)
    console.rule("[bold]dsq-chain demo")
    code = 1
    try:
        code = demo.run()
        if args.keep and not demo.failures:
            console.print(f"[bold]kept up:[/] dashboard at [bold]{demo.dashboard_url}/[/], chain at "
                          f"{demo.node.rpc_url if demo.node else '-'}, deployment {workdir / 'deployment.json'}; "
                          "Ctrl-C stops everything")
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
    except Exception as e:
        demo.failures.append(f"{type(e).__name__}: {e}")
    finally:
        demo.stop()
    elapsed = time.monotonic() - demo.t0
    if demo.failures:
        demo.dump_logs()
        console.print(f"[red bold]demo FAILED[/] after {elapsed:.1f} s:")
        for f in demo.failures:
            console.print(f"  - {f}", markup=False)
        console.print(f"work directory kept: {workdir}")
        return 1
    console.print(f"[green bold]demo OK[/] in {elapsed:.1f} s: every job ended as expected and every credit "
                  "is accounted for")
    if args.keep:
        console.print(f"work directory: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
