"""Shared pieces of the provider-worker tests (local and Slurm executors), and a worker runner process.

* :func:`workflow` builds real canonical workflows; :func:`submit` submits them the way the CLI does.
* :class:`Rig` is one provider worker (the grid's ``cpu`` provider) on a real executor, driven tick by
  tick from the test, with helpers reading what the chain recorded (events, bills, timestamps).
* ``python -m tests.worker_scenarios ...`` runs a worker as its own process (what a provider runs),
  optionally killing itself with SIGKILL at a chosen point of a job's life (``--crash-at``), so the
  restart tests can prove the journal neither loses nor re-runs a job.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsq_chain.executors import Executor, make_executor
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import GridClient
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.services.worker import Action, ProviderWorker
from dsq_chain.types import Job, JobStatus, Prices, ReportAction
from dsq_chain.workloads import workflow as wfm

REPO = Path(__file__).resolve().parent.parent
#: Crash points of the runner (``--crash-at``): where it SIGKILLs itself.
CRASH_POINTS = ("claimed", "submitted", "started", "running", "before_final", "after_final")
MAX_RATE = 1_000_000


# ------------------------------------------------------------------------------------------ workflows
def workflow(command: str, *, cpus: int = 1, mem_per_cpu: int = 256, gpus: int = 0, name: str = "t",
             labels: Sequence[str] = ()) -> wfm.Workflow:
    """A one-step workflow running ``command`` (validated like a user's file)."""
    doc: dict[str, Any] = {
        "name": name,
        "resources": {"tasks": 1, "cpusPerTask": cpus, "memPerCpu": mem_per_cpu, "gpus": gpus},
        "steps": [{"name": "main", "run": {"command": command}}],
    }
    if labels:
        doc["labels"] = list(labels)
    return wfm.loads(json.dumps(doc))


def credits_for(seconds: int, rate: int) -> int:
    """The smallest escrow that buys ``seconds`` of run time at ``rate`` units per minute."""
    return -(-seconds * rate // 60)


def submit(user: GridClient, wf: wfm.Workflow, credits: int, *, count: int = 1, max_rate: int = MAX_RATE) -> list[int]:
    return list(user.submit(wf, credits=Credits(units=int(credits)), max_rate=Credits(units=int(max_rate)),
                            count=count, force=True))


# ------------------------------------------------------------------------------------------ chain reads
def events(client: GridClient, name: str, job_id: int) -> list[dict[str, Any]]:
    """``name`` events of one job, each as its args plus ``block`` and ``tx``."""
    logs = getattr(client.market.events, name)().get_logs(
        from_block=client.deployment.block, argument_filters={"jobId": job_id}
    )
    return [dict(lg["args"], block=lg["blockNumber"], tx=lg["transactionHash"].to_0x_hex()) for lg in logs]


def billed_end(client: GridClient, job_id: int, settled_tx: str, settled_time: int) -> int:
    """The time the chain billed a finished job up to: the end time its FINISH report carried (the engine saw the
    job end then), bounded by the report's block time; the block time when the report carried none."""
    tx = client.chain.call_rpc("eth_getTransactionByHash", [settled_tx])
    fn, args = client.market.decode_function_input(tx["input"])
    if fn.fn_name != "report":
        return settled_time
    for row in args["reports"]:
        values = list(row.values()) if isinstance(row, dict) else list(row)
        if int(values[0]) == job_id and len(values) > 3 and int(values[3]):
            return min(int(values[3]), settled_time)
    return settled_time


def settlement(client: GridClient, job_id: int) -> dict[str, Any]:
    """The job's one JobSettled event (asserts there is exactly one)."""
    settled = events(client, "JobSettled", job_id)
    assert len(settled) == 1, f"job {job_id}: {len(settled)} JobSettled events: {settled}"
    return settled[0]


def start_block(client: GridClient, job_id: int) -> int:
    """Block of the job's one RUNNING status change (asserts START was reported exactly once)."""
    started = [e for e in events(client, "JobStatusChanged", job_id) if e["status"] == JobStatus.RUNNING]
    assert len(started) == 1, f"job {job_id}: START reported {len(started)} times"
    return int(started[0]["block"])


def expected_bill(client: GridClient, job_id: int, rate: int, escrow: int) -> int:
    """What the contract bills a job that ran from its START block to its settlement block."""
    t0 = client.chain.timestamp(start_block(client, job_id))
    settled = settlement(client, job_id)
    t1 = billed_end(client, job_id, settled["tx"], client.chain.timestamp(int(settled["block"])))
    return min(escrow, rate * max(0, t1 - t0) // 60)


def wait(pred: Callable[[], bool], timeout: float, what: str, *, step: Callable[[], object] | None = None,
         interval: float = 0.1) -> None:
    """Calls ``step`` (e.g. a worker tick) until ``pred()`` holds; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if step is not None:
            step()
        if pred():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:g} s")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------ the rig
@dataclass
class Rig:
    """A worker for the grid's ``cpu`` provider, on its own RPC connection, driven from the test."""

    worker: ProviderWorker
    user: GridClient
    new_executor: Callable[[], Executor]
    actions: list[Action] = field(default_factory=list)

    @property
    def executor(self) -> Executor:
        return self.worker.executor

    def tick(self) -> list[Action]:
        done = self.worker.tick()
        self.actions.extend(done)
        return done

    def job(self, job_id: int) -> Job:
        return self.user.job(job_id)

    def status(self, job_id: int) -> JobStatus:
        return self.job(job_id).status

    def until(self, job_id: int, statuses: JobStatus | Sequence[JobStatus], timeout: float = 30.0) -> Job:
        """Ticks the worker until the job is in one of ``statuses`` on chain."""
        wanted = (statuses,) if isinstance(statuses, JobStatus) else tuple(statuses)
        wait(lambda: self.status(job_id) in wanted, timeout, f"job {job_id} in {[s.name for s in wanted]} "
             f"(now {self.status(job_id).name})", step=self.tick)
        return self.job(job_id)

    def reported(self, job_id: int, action: ReportAction) -> int:
        return sum(1 for a in self.actions if a.job_id == job_id and a.action is action)


def new_rig(rpc_url: str, key: str, deployment: Deployment, user: GridClient, new_executor: Callable[[], Executor],
            state_dir: Path) -> Rig:
    wallet = Chain(rpc_url).wallet(key)
    worker = ProviderWorker(wallet, deployment, new_executor(), state_dir, poll_interval=0.1)
    return Rig(worker, user, new_executor)


def phase_of(worker: ProviderWorker, job_id: int) -> object:
    """The job's journal phase (None without a row)."""
    entry = worker.journal.get(job_id)
    return entry.phase if entry else None


def job_ids_under(root: Path) -> list[int]:
    """Chain job ids that have a job folder under a Slurm executor's ``root``."""
    jobs = root / "jobs"
    return sorted({int(d.name.split("-")[0]) for d in jobs.iterdir() if d.name[0].isdigit()}) if jobs.exists() else []


def cancel_all(executor: Executor, job_ids: Sequence[int]) -> None:
    """Teardown: end every execution of these chain jobs (tests must not leave processes behind)."""
    for job_id in job_ids:
        for exec_id in executor.find(job_id):
            try:
                executor.cancel(exec_id)
            except Exception as e:  # best effort at teardown
                print(f"teardown: cancel {exec_id}: {e}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ the runner
def spawn_runner(*, rpc_url: str, key: str, deployment_file: Path, state_dir: Path, executor: str,
                 exec_root: Path, log_file: Path, crash_at: str | None = None, slurm_conf: Path | None = None,
                 poll: float = 0.1) -> subprocess.Popen[bytes]:
    """Starts ``python -m tests.worker_scenarios`` (a provider worker process) in its own session."""
    args = [sys.executable, "-m", "tests.worker_scenarios", "--rpc", rpc_url, "--deployment", str(deployment_file),
            "--state", str(state_dir), "--executor", executor, "--exec-root", str(exec_root), "--poll", str(poll)]
    if crash_at:
        args += ["--crash-at", crash_at]
    if slurm_conf:
        args += ["--slurm-conf", str(slurm_conf)]
    env = dict(os.environ, DSQ_WORKER_KEY=key, PYTHONPATH=str(REPO))
    with open(log_file, "ab") as log:
        return subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _die() -> None:
    logging.getLogger("dsq.runner").warning("crash point reached: SIGKILL")
    for h in logging.getLogger().handlers:
        h.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class CrashingWorker(ProviderWorker):
    """A real worker that SIGKILLs its own process at one point of a job's life."""

    crash_at: str | None = None

    def _send(self, actions: list[Action]) -> list[Action]:
        if self.crash_at == "before_final" and any(a.action in _FINAL for a in actions):
            _die()
        return super()._send(actions)

    def sent(self, actions: list[Action], t0: float, block: tuple[int, str] | None = None) -> None:
        # The transaction is mined; the journal does not know yet.
        kinds = {a.action for a in actions}
        if (self.crash_at == "claimed" and ReportAction.CLAIM in kinds) or (
            self.crash_at == "started" and ReportAction.START in kinds) or (
            self.crash_at == "after_final" and kinds & _FINAL
        ):
            _die()
        super().sent(actions, t0, block)


_FINAL = {ReportAction.FINISH, ReportAction.OUT_OF_CREDITS, ReportAction.PANIC}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a provider worker process for the restart tests")
    p.add_argument("--rpc", required=True)
    p.add_argument("--deployment", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--executor", default="local")
    p.add_argument("--exec-root", required=True)
    p.add_argument("--slurm-conf")
    p.add_argument("--crash-at", choices=CRASH_POINTS)
    p.add_argument("--poll", type=float, default=0.1)
    p.add_argument("--register", help="register first with these prices: CPU,GPU,GB per minute")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(message)s")
    kw: dict[str, Any] = {"root": args.exec_root}
    if args.executor == "local":
        kw["kill_grace_s"] = 1.0
    elif args.slurm_conf:
        kw["slurm_conf"] = args.slurm_conf
    executor = make_executor(args.executor, **kw)
    wallet = Chain(args.rpc).wallet(os.environ["DSQ_WORKER_KEY"])
    worker = CrashingWorker(wallet, Deployment.load(args.deployment), executor, args.state, poll_interval=args.poll)
    worker.crash_at = args.crash_at
    if args.crash_at == "submitted":
        real_submit = executor.submit_many

        def submit_then_die(specs: Any, parallelism: int = 8) -> list[str | Exception]:
            exec_ids = real_submit(specs, parallelism)  # the jobs run; the journal never hears of their ids
            _die()
            return exec_ids

        executor.submit_many = submit_then_die  # type: ignore[method-assign]
    if args.register:
        cpu, gpu, gb = (int(x) for x in args.register.split(","))
        worker.register(Prices.from_units(cpu, gpu, gb))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.getLogger("dsq.runner").info("worker %s up (crash at %s)", worker.address, args.crash_at)
    worker.run(stop)
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
