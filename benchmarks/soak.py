"""Soak: the whole grid under a steady job stream while faults are injected; then every job is checked.

A local Anvil, the meta-scheduler and ``--workers`` provider workers (local executor) run as ``dsq`` processes,
as deployed; the services reach the node through a TCP proxy this script controls. For ``--seconds`` a job is
submitted every ``--every`` seconds while, every few seconds, one fault is injected at random:

* ``kill -9`` a worker, restarted at once from its state directory;
* ``kill -9`` the scheduler, restarted at once;
* the RPC cut for 2-5 s (the proxy drops every connection and refuses new ones);
* the node stopped (it dumps its state) and started again from that state on the same port;
* blocks reverted: ``evm_snapshot`` at a random moment, ``evm_revert`` to it 2-8 blocks later (a reorg the
  follower of every service must follow: assignments, claims, reports and submissions in those blocks are
  gone, the nonces go back);
* hostile events: an unapproved provider sets label keys that are not UTF-8, empty or overlong, and values no
  label encodes to; another account submits jobs no provider can take (cancelled at the end).

A service that exits by itself is restarted, as systemd's ``Restart=always`` would (one restarted during an RPC
cut exits at its start-up checks: node unreachable, exit code 3); any other exit code is a violation. Each fault
is noted on stderr with its time.

Then the stream stops, the grid drains, and the checks run on the surviving chain. A violation is any of: a job
not final, a job settled more than once (or final without a settlement), a job started more than once on chain
or run more than once by a worker, credits not reconciling to the unit (market balance == escrows + internal
balances). A submission a revert took away no longer exists: it is counted as dropped (not resubmitted: the
stream goes on) and its id, which the next submission reuses, is checked as that new job. A job whose
submission or assignment was in reverted blocks may have run on the dropped fork before the worker learnt it
(work started on a dropped fork has started): such a second run is counted and printed, not a violation.
Prints jobs completed, submissions dropped, service exits, faults injected by kind, second runs after a revert
and violations (target 0); exit code 1 on any violation.

    .venv/bin/python benchmarks/soak.py --seconds 600
    .venv/bin/python benchmarks/soak.py --seconds 30     # the short variant the suite runs (tests/test_soak.py)
    .venv/bin/python benchmarks/soak.py --seconds 30 --faults "revert blocks,kill worker"   # chosen kinds only
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eth_abi.abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from dsq_chain.cli.common import EXIT_CHAIN
from dsq_chain.errors import ChainUnavailable
from dsq_chain.executors import LocalExecutor
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import dev_keys, start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.sdk.events import EventDecoder, JobSettled, JobStatusChanged, JobSubmitted, job_status_after
from dsq_chain.services.follower import EventFollower
from dsq_chain.types import JobStatus, Prices, Resources
from dsq_chain.workloads import workflow as wfm

DSQ = shutil.which("dsq", path=str(Path(sys.executable).parent)) or "dsq"
WORKFLOW = wfm.loads("name: soak\nresources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64}\n"
                     "steps: [{name: main, run: {command: 'sleep 1'}}]\n")
PRICES = Prices.from_units(per_cpu_minute=1_000, per_gpu_minute=0, per_gb_minute=10)
FAULTS = ("kill worker", "kill scheduler", "cut rpc", "restart node", "hostile events", "revert blocks")


class CuttableProxy:
    """A loopback TCP proxy to ``port``; :meth:`cut` drops every connection and refuses new ones for a while."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._down_until = 0.0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self, seconds: float) -> None:
        self._down_until = time.monotonic() + seconds
        with self._lock:
            for c in self._conns:
                with _quiet():
                    c.close()
            self._conns.clear()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            if time.monotonic() < self._down_until:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with _quiet():
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with _quiet():
                s.close()


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


class Service:
    """One ``dsq`` service process, restartable."""

    def __init__(self, args: list[str], key: str, log: Path) -> None:
        self.args, self.key, self.log = args, key, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSQ_")} | {"DSQ_PRIVATE_KEY": self.key}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([DSQ, *self.args], env=env, stdout=out, stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def supervise(self) -> int | None:
        """Restarts the service if it exited by itself (as systemd's ``Restart=always`` would); returns the exit
        code it had, or None if it runs. A service exits only at start (the run loops catch everything), e.g.
        when its start-up checks meet an RPC cut: ``dsq`` then exits with EXIT_CHAIN."""
        code = None if self.proc is None else self.proc.poll()
        if code is not None:
            self.start()
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclasses.dataclass
class Outcome:
    """What a soak run found."""

    statuses: Counter[str]
    faults: Counter[str]
    violations: list[str]
    dropped: int = 0  # submissions a revert took away
    exits: int = 0  # services that exited by themselves (and were restarted)
    fork_runs: int = 0  # jobs run again after a revert dropped the run's submission or assignment


@dataclasses.dataclass
class PendingRevert:
    """A snapshot to revert to once the head reaches ``at``."""

    snapshot: str
    block: int
    at: int


def soak(seconds: float, every: float, n_workers: int, seed: int, tmp: Path, kinds: Sequence[str] = FAULTS
         ) -> Outcome:
    """Runs the soak; returns the jobs' final statuses, the faults injected and the violations found."""
    rng = random.Random(seed)
    keys = dev_keys(10)
    faults: Counter[str] = Counter()
    forked: set[int] = set()  # job ids submitted or touched in reverted blocks
    violations: list[str] = []
    dropped = exits = 0
    pending_revert: PendingRevert | None = None
    state = tmp / "anvil-state.json"
    node = start_anvil(dump_state=state)
    try:
        chain = Chain(node.rpc_url)
        admin_w = chain.wallet(keys[0])
        dep = deploy(admin_w, claim_timeout=60)
        admin = AdminClient(admin_w, dep)
        admin.grant_scheduler(chain.wallet(keys[1]).address)
        user = GridClient(chain.wallet(keys[2]), dep)
        spammer = GridClient(chain.wallet(keys[8]), dep)
        for u in (user, spammer):
            admin.mint(u.address, Credits(10**6))
        hostile = ProviderClient(chain.wallet(keys[9]), dep)
        hostile.register(Resources(2**16 - 1, 255, 2**32 - 1), Prices.from_units(1, 0, 0))  # never approved
        for i in range(n_workers):
            p = ProviderClient(chain.wallet(keys[3 + i]), dep)
            p.register(Resources(4, 0, 4 * 1024), PRICES)
            admin.approve(p.address)
        proxy = CuttableProxy(node.port)
        deployment = tmp / "deployment.json"
        dataclasses.replace(dep, rpc_url=proxy.url).save(deployment)
        common = ["--deployment", str(deployment)]
        scheduler = Service([*common, "scheduler", "run"], keys[1], tmp / "scheduler.log")
        workers = [Service([*common, "worker", "run", "--state-dir", str(tmp / f"w{i}"), "--poll", "0.1"],
                           keys[3 + i], tmp / f"worker{i}.log") for i in range(n_workers)]
        services = [scheduler, *workers]
        for s in services:
            s.start()
        ids: list[int] = []
        spam: list[int] = []
        clients = (user, spammer, admin, hostile)
        try:
            end = time.monotonic() + seconds
            next_fault = time.monotonic() + rng.uniform(2, 5)
            while time.monotonic() < end:
                exits += supervise(services, violations)
                try:
                    ids += user.submit(WORKFLOW, credits=Credits(1), max_rate=Credits(1))
                    if pending_revert is not None and chain.block_number() >= pending_revert.at:
                        forked |= revert(chain, dep, pending_revert)
                        note(f"revert blocks: back to block {pending_revert.block}")
                        pending_revert = None
                        faults["revert blocks"] += 1
                        for c in clients:
                            c.wallet.reset_nonce()
                        count = user.job_count()  # ids above it are gone (and will be given again)
                        dropped += sum(1 for i in ids if i > count)
                        ids = [i for i in ids if i <= count]
                        spam = [i for i in spam if i <= count]
                except ChainUnavailable:
                    time.sleep(0.2)  # the node is restarting
                    continue
                if time.monotonic() >= next_fault:
                    kind = rng.choice(kinds)
                    if kind != "revert blocks":
                        faults[kind] += 1
                        note(kind)
                    if kind == "kill worker":
                        w = rng.choice(workers)
                        w.kill9()
                        w.start()
                    elif kind == "kill scheduler":
                        scheduler.kill9()
                        scheduler.start()
                    elif kind == "cut rpc":
                        proxy.cut(rng.uniform(2, 5))
                    elif kind == "restart node":
                        port, before = node.port, chain.block_number()
                        node.stop()  # SIGTERM: Anvil dumps its state
                        node = start_anvil(port, dump_state=state, load_state=state)
                        pending_revert = None  # snapshots do not survive a restart
                        note(f"node back at block {chain.block_number()} (it was at {before})")
                        for c in clients:
                            c.wallet.reset_nonce()
                    elif kind == "revert blocks":  # counted once reverted
                        if pending_revert is None:
                            head = chain.block_number()
                            pending_revert = PendingRevert(chain.snapshot(), head, head + rng.randint(2, 8))
                            note(f"snapshot at block {head}, to revert at block {pending_revert.at}")
                    else:
                        hostile_events(chain, dep, hostile.address)
                        spam += spammer.submit(WORKFLOW, credits=Credits(1), max_rate=Credits(units=1),
                                               count=20, force=True)
                    next_fault = time.monotonic() + rng.uniform(2, 5)
                time.sleep(every)
            deadline = time.monotonic() + 120 + seconds
            while time.monotonic() < deadline:
                exits += supervise(services, violations)
                if all(j.status.is_final for j in user.jobs(ids)):
                    break
                time.sleep(1)
        finally:
            for s in services:
                s.stop()
        found, fork_runs = check(chain, dep, user, ids, [tmp / f"w{i}" / "executor" for i in range(n_workers)],
                                      forked)
        violations += found
        for job in spammer.jobs(spam):
            if job.status is not JobStatus.PENDING:
                violations.append(f"spam job {job.id} (cap 1: no provider fits) is {job.status.name}")
            else:
                spammer.cancel(job.id)
        violations += reconcile(user, [spammer.address])
        outcomes = Counter(j.status.name for j in user.jobs(ids))
    finally:
        node.stop()
    return Outcome(outcomes, faults, violations, dropped, exits, fork_runs)


def supervise(services: list[Service], violations: list[str]) -> int:
    """Restarts the services that exited; an exit for another reason than an unreachable node is a violation."""
    exits = 0
    for service in services:
        code = service.supervise()
        if code is not None:
            exits += 1
            note(f"{service.args[2]} exited with code {code}: restarted")
            if code != EXIT_CHAIN:
                violations.append(f"`dsq {' '.join(service.args[2:4])}` exited with code {code} (see its log)")
    return exits


def note(what: str) -> None:
    """One line per fault on stderr (the suite shows it when the short soak fails)."""
    print(f"{time.strftime('%H:%M:%S')} fault: {what}", file=sys.stderr, flush=True)


def revert(chain: Chain, dep: Deployment, pending: PendingRevert) -> set[int]:
    """Reverts to the snapshot; returns the ids of the jobs submitted or changed in the blocks it removed."""
    logs = chain.w3.eth.get_logs({"address": to_checksum_address(dep.market), "fromBlock": pending.block + 1,
                                  "toBlock": "latest"})
    decoder = EventDecoder()
    touched: set[int] = set()
    for raw in logs:
        ev = decoder.decode(raw)  # never raises: an event it does not know is Undecodable, not a job's
        if isinstance(ev, JobSubmitted):
            touched.update(range(ev.first_job_id, ev.first_job_id + ev.count))
        elif isinstance(job_id := getattr(ev, "job_id", None), int):
            touched.add(job_id)
    chain.revert(pending.snapshot)
    return touched


def hostile_events(chain: Chain, dep: Deployment, sender: str) -> None:
    """Label keys that are not UTF-8, empty or overlong, and values no label encodes to (raw calldata)."""
    keys = [b"\xff\xfe\xfd", b"", b"k" * 300, b"zone\x00", b"gpu.model"]
    values = [b"\x80" * 32, b"\x01" + b"\0" * 31, b"\xff" * 32, b"\x01" + b"\0" * 31, b"\x7f" * 32]
    data = keccak(text="setLabels(string[],bytes32[])")[:4] + encode(["bytes[]", "bytes32[]"], [keys, values])
    chain.call_rpc("eth_sendTransaction", [{"from": sender, "to": dep.market, "data": "0x" + data.hex(),
                                            "gas": hex(3_000_000)}])


def check(chain: Chain, dep: Deployment, user: GridClient, ids: list[int], roots: list[Path], forked: set[int]
          ) -> tuple[list[str], int]:
    """The violations on the surviving chain, and how many jobs ran again after a revert dropped a run."""
    violations: list[str] = []
    settled: Counter[int] = Counter()
    started: Counter[int] = Counter()
    follower = EventFollower(chain, dep, filters=[EventDecoder().filter_for(["JobSettled", "JobStatusChanged"])])

    def on(ev: object) -> None:
        if isinstance(ev, JobSettled):
            settled[ev.job_id] += 1
        elif isinstance(ev, JobStatusChanged) and job_status_after(ev) is JobStatus.RUNNING:
            started[ev.job_id] += 1

    follower.add_handler(on)
    follower.poll()
    for job in user.jobs(ids):
        if job.owner != user.address:
            violations.append(f"job {job.id} is {job.owner}'s: the soak lost track of its submissions")
        if not job.status.is_final:
            violations.append(f"job {job.id} is {job.status.name}, not final")
        elif settled[job.id] != 1:
            violations.append(f"job {job.id} {job.status.name} settled {settled[job.id]} times")
        if started[job.id] > 1:
            violations.append(f"job {job.id} started {started[job.id]} times on chain")
    executors = [LocalExecutor(r) for r in roots if r.exists()]
    fork_runs = 0
    for job_id in ids:
        runs = sum(len(ex.find(job_id)) for ex in executors)
        if runs > 1 and job_id in forked:
            fork_runs += 1
        elif runs > 1:
            violations.append(f"job {job_id} run {runs} times by the workers")
    return violations, fork_runs


def reconcile(user: GridClient, others: list[str]) -> list[str]:
    """Credits reconcile to the unit: the market's token balance == every escrow + every internal balance."""
    held = user.token_balance(user.market.address)
    escrows = sum(j.escrow for j in user.jobs(range(1, user.job_count() + 1)))
    accounts = {user.address, *others, *(p.address for p in user.providers())}
    balances = sum(user.credits(a) for a in accounts)
    if held != escrows + balances:
        return [f"credits do not reconcile: market holds {held}, escrows + balances {escrows + balances}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=600, help="how long jobs stream in and faults happen")
    parser.add_argument("--every", type=float, default=0.5, help="seconds between submissions")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated kinds among: {', '.join(FAULTS)}")
    parser.add_argument("--keep", type=Path, help="keep the run's folder (service logs, chain state) here")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    if not kinds or any(k not in FAULTS for k in kinds):
        parser.error(f"--faults: expected kinds among {', '.join(FAULTS)}, got {args.faults!r}")
    if args.keep is not None:
        if args.keep.exists() and any(args.keep.iterdir()):
            parser.error(f"--keep: {args.keep} is not empty (a run counts the executions it finds there)")
        args.keep.mkdir(parents=True, exist_ok=True)
    with nullcontext(str(args.keep)) if args.keep is not None else TemporaryDirectory(prefix="dsq-soak-") as tmp:
        out = soak(args.seconds, args.every, args.workers, args.seed, Path(tmp), kinds)
    if args.keep is not None:
        print(f"run folder (service logs, chain state): {args.keep}")
    outcomes, faults, violations = out.statuses, out.faults, out.violations
    print(f"soak {args.seconds:.0f} s (seed {args.seed}): {outcomes['FINISHED']} jobs completed of "
          f"{sum(outcomes.values())} on the final chain "
          f"({', '.join(f'{k} {n}' for k, n in sorted(outcomes.items()))}), "
          f"{out.dropped} submissions dropped by reverts (not resubmitted), "
          f"{out.exits} service exits (restarted), "
          f"{sum(faults.values())} faults injected ({', '.join(f'{k} {n}' for k, n in sorted(faults.items()))}), "
          f"{out.fork_runs} jobs run again after a revert dropped their first run, "
          f"{len(violations)} violations (target 0)")
    for v in violations[:20]:
        print(f"  violation: {v}")
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
