"""Index and dashboard benchmark: an index of N jobs built from a fresh Anvil, then the console API's latency
on it, for SQLite and PostgreSQL, and how soon a status change shows on an open page.

    .venv/bin/python benchmarks/index.py [--jobs 100000] [--lifecycle 20000] [--requests 200] [--samples 20]
                                         [--backends sqlite,postgresql] [--pg URL]

The chain is filled fast: job arrays of 500 per submission, assignments 200 per ``assignBatch``, provider
reports 400 rows per ``report``, each group of transactions pre-signed and sent in one JSON-RPC batch. All N
jobs are submitted; ``--assigned`` of them (default all) are assigned and ``--lifecycle`` claimed, started and
finished (a job's PENDING, META_SCHEDULED, SCHEDULED, RUNNING, FINISHED each make an event).

Figures, each beside its target:
- index build: events indexed per second (from an empty database to the chain's head);
- API latency p50/p95 of the job list (``/api/v1/jobs``, also filtered by owner and status), a job
  (``/api/v1/jobs/{id}``) and the job page (``/jobs/{id}``, HTML) — target p95 < 100 ms;
- live: from the moment a status change's block is mined to the moment it arrives on the job's event
  stream (what an open job page shows) — target < 1 s.

PostgreSQL: ``--pg postgresql://...`` (an empty database), else one is started like the tests do (Debian's
``postgresql`` as root, on its own port and folder).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import dev_keys, start_anvil
from dsq_chain.sdk.chain import Call, Chain, Wallet
from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient, SchedulerClient
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.services.index import IndexReader, IndexService
from dsq_chain.types import CREDIT_UNIT, Prices, ReportAction, Resources
from dsq_chain.web.app import create_app
from dsq_chain.web.server import DashboardServer
from dsq_chain.workloads import workflow as wfm

WORKFLOW = ("name: bench\nresources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64}\n"
            "steps: [{name: a, run: {command: 'true'}}]\n")
ARRAY, ASSIGN_BATCH, REPORT_ROWS, TXS_PER_BATCH = 500, 200, 400, 10  # big batches: the node refuses the request
P95_TARGET_MS, LIVE_TARGET_S = 100.0, 1.0


def send_all(wallet: Wallet, calls: list[Call]) -> None:
    for i in range(0, len(calls), TXS_PER_BATCH):
        wallet.transact_many(calls[i:i + TXS_PER_BATCH], timeout=600)


def fill(chain: Chain, keys: list[str], jobs: int, lifecycle: int,
         assigned: int) -> tuple[Deployment, list[int], ProviderClient]:
    """Deploys, registers two providers, submits ``jobs`` jobs (4 owners), assigns ``assigned``, runs ``lifecycle``."""
    admin_w = chain.wallet(keys[0])
    dep = deploy(admin_w, claim_timeout=10**6)
    admin = AdminClient(admin_w, dep)
    sched = SchedulerClient(chain.wallet(keys[1]), dep)
    admin.grant_scheduler(sched.address)
    provs = [ProviderClient(chain.wallet(k), dep) for k in keys[2:4]]
    for p in provs:
        p.register(Resources(jobs, 0, 64 * jobs), Prices.from_units(1_000, 0, 10), {"zone": "bench"})
        admin.approve(p.address)
    owners = [GridClient(chain.wallet(k), dep) for k in keys[4:8]]
    wf = wfm.loads(WORKFLOW)
    credits = CREDIT_UNIT
    for o in owners:
        admin.mint(o.address, Credits(units=credits * jobs))
        o.wallet.transact(o.token.functions.approve(dep.market, credits * jobs))
    from dsq_chain.sdk.client import _job_request

    request = _job_request(wf.resources, 10**6, credits)
    t0 = time.monotonic()
    per_owner: dict[int, list[Call]] = {i: [] for i in range(len(owners))}
    n = 0
    while n < jobs:
        count = min(ARRAY, jobs - n)
        i = (n // ARRAY) % len(owners)
        fn = owners[i].market.functions.submit(request, [], wf.canonical(), count)
        per_owner[i].append(Call(fn, gas=25_000_000))
        n += count
    threads = [threading.Thread(target=send_all, args=(owners[i].wallet, calls)) for i, calls in per_owner.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"submitted {jobs:,} jobs in {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    ids = list(range(1, jobs + 1))
    calls = []
    for k in range(0, assigned, ASSIGN_BATCH):
        batch = ids[k:min(k + ASSIGN_BATCH, assigned)]
        prov = provs[(k // ASSIGN_BATCH) % 2].address
        calls.append(Call(sched.market.functions.assignBatch(batch, [prov] * len(batch), [[] for _ in batch]),
                          gas=25_000_000))
    send_all(sched.wallet, calls)
    print(f"assigned {assigned:,} jobs in {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    for pi, p in enumerate(provs):
        mine = [j for k in range(0, lifecycle, ASSIGN_BATCH) if (k // ASSIGN_BATCH) % 2 == pi
                for j in ids[k:min(k + ASSIGN_BATCH, lifecycle)]]
        rows = [(j, int(a), 0, 0) for j in mine for a in (ReportAction.CLAIM, ReportAction.START, ReportAction.FINISH)]
        calls = [Call(p.market.functions.report(rows[r:r + REPORT_ROWS]), gas=25_000_000)
                 for r in range(0, len(rows), REPORT_ROWS)]
        send_all(p.wallet, calls)
    print(f"ran {lifecycle:,} jobs to FINISHED in {time.monotonic() - t0:.1f} s")
    return dep, ids, provs[0]


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def latency(base: str, path: str, n: int) -> tuple[float, float]:
    session = requests.Session()
    session.get(base + path, timeout=30).raise_for_status()  # warm
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.get(base + path, timeout=30).raise_for_status()
        times.append((time.perf_counter() - t0) * 1000)
    return pct(times, 50), pct(times, 95)


def live_latency(chain: Chain, dep: Deployment, url: str, provider: ProviderClient, job_ids: list[int],
                 samples: int) -> list[float]:
    """Seconds from a status change's block being mined to the change arriving on the job's event stream."""
    index = IndexService(chain, dep, url)
    stop = threading.Event()
    runner = threading.Thread(target=index.run, args=(stop,), kwargs={"interval": 0.1}, daemon=True)
    runner.start()
    server = DashboardServer(create_app(IndexReader(url))).start()
    out: list[float] = []
    try:
        for job in job_ids[:samples]:
            got = threading.Event()

            def watch(job_id: int = job, got: threading.Event = got) -> None:
                with requests.get(f"{server.url}/api/v1/jobs/{job_id}/events", stream=True, timeout=30) as resp:
                    buf = ""
                    while "SCHEDULED" not in buf.split("event: job", 1)[-1] or "event: job" not in buf:
                        buf += resp.raw.read1(65536).decode()
                    got.set()

            w = threading.Thread(target=watch, daemon=True)
            w.start()
            time.sleep(0.3)  # the stream is open (an open page)
            provider.claim(job)  # returns once its block is mined
            mined = time.perf_counter()
            if not got.wait(10):
                raise RuntimeError(f"job {job}'s change never reached the stream")
            out.append(time.perf_counter() - mined)
    finally:
        stop.set()
        runner.join(10)
        server.stop()
        index.close()
    return out


@contextlib.contextmanager
def database(backend: str, tmp: Path, pg: str | None) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'index.sqlite'}"
        return
    if pg:
        yield pg
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' PostgreSQL starter
    from tests.postgres import create_database, running_postgres

    with running_postgres() as server:
        yield create_database(server)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--assigned", type=int, default=None, help="jobs assigned (default: all)")
    ap.add_argument("--lifecycle", type=int, default=20_000, help="jobs run to FINISHED (the rest stay assigned)")
    ap.add_argument("--requests", type=int, default=200, help="requests per latency figure")
    ap.add_argument("--samples", type=int, default=20, help="status changes timed on an open event stream")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--pg", help="an empty PostgreSQL database URL (default: start one)")
    args = ap.parse_args(argv)
    assigned = args.jobs if args.assigned is None else min(args.assigned, args.jobs)
    lifecycle = min(args.lifecycle, assigned)
    keys = dev_keys(10)
    # A high block gas limit: each pre-signed batch of big transactions fits in few blocks (Anvil mines as they come).
    node = start_anvil(extra_args=["--gas-limit", "2000000000", "--prune-history", "64"])
    results: list[tuple[str, str, str, str]] = []
    try:
        chain = Chain(node.rpc_url)
        dep, ids, provider = fill(chain, keys, args.jobs, lifecycle, assigned)
        rng = random.Random(7)
        owner = GridClient(chain.wallet(keys[4]), dep).address
        for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
            with tempfile.TemporaryDirectory() as tmp, database(backend, Path(tmp), args.pg) as url:
                index = IndexService(chain, dep, url)
                t0 = time.monotonic()
                events = 0
                while True:
                    n = index.poll()
                    events += n
                    if n == 0:
                        break
                took = time.monotonic() - t0
                jobs_indexed = index.count()
                index.close()
                assert jobs_indexed == args.jobs, f"{backend}: {jobs_indexed} jobs indexed, expected {args.jobs}"
                results.append((backend, "index build", f"{events / took:,.0f} events/s",
                                f"{events:,} events, {jobs_indexed:,} jobs in {took:.1f} s"))
                server = DashboardServer(create_app(IndexReader(url))).start()
                try:
                    picks = [rng.choice(ids) for _ in range(5)]
                    for name, path in [("job list", "/api/v1/jobs?limit=50"),
                                       ("job list by owner+status", f"/api/v1/jobs?owner={owner}&status=FINISHED"),
                                       ("job (API)", f"/api/v1/jobs/{picks[0]}"),
                                       ("job page (HTML)", f"/jobs/{picks[1]}")]:
                        p50, p95 = latency(server.url, path, args.requests)
                        verdict = "ok" if p95 < P95_TARGET_MS else "MISSED"
                        results.append((backend, f"{name} p50/p95", f"{p50:.1f} / {p95:.1f} ms",
                                        f"target p95 < {P95_TARGET_MS:.0f} ms: {verdict}"))
                finally:
                    server.stop()
                unclaimed = [j for j in ids[lifecycle:assigned] if (j - 1) // ASSIGN_BATCH % 2 == 0]
                live = live_latency(chain, dep, url, provider, unclaimed[(0 if backend == "sqlite" else 100):],
                                    args.samples)
                verdict = "ok" if pct(live, 95) < LIVE_TARGET_S else "MISSED"
                results.append((backend, "block -> open page p50/p95", f"{pct(live, 50):.2f} / {pct(live, 95):.2f} s",
                                f"target < {LIVE_TARGET_S:.0f} s: {verdict}"))
    finally:
        node.stop()
    print()
    w = max(len(r[1]) for r in results)
    for backend, name, value, note in results:
        print(f"{backend:<11} {name:<{w}}  {value:<22} {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
