"""Meta-scheduler on a local Anvil: submit-to-assignment latency, and sustained assignments per second.

1. Latency: ``--single`` jobs (default 200) submitted one at a time while the scheduler runs in a
   thread. Each is timed from the moment its submit receipt returns (wall clock: block timestamps are
   whole seconds) to the moment the receipt of the ``assignBatch`` carrying its JobAssigned event
   returns. Median, p95 and max. (The minimum can be below zero: the scheduler hears of the block by
   subscription and may have its assignment mined before the submitter's own receipt poll returns.)
2. Throughput: ``--bulk`` jobs (default 1,000), first as that many single-job submissions pre-signed
   and sent in one JSON-RPC batch, then as one job array; timed until every one is assigned, with the
   number of assignBatch transactions and their gas per job.

The scheduler runs with the service's defaults (poll every 0.1 s, batches of up to 200) unless told
otherwise. Run ``python benchmarks/scheduler_latency.py`` (about a minute); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import loadavg
from hexbytes import HexBytes

from dsq_chain.matching import Assignment
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import dev_keys, start_anvil
from dsq_chain.sdk.chain import Call, Chain
from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.sdk.events import EventDecoder
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import CREDIT_UNIT, Prices, Resources
from dsq_chain.workloads import workflow

WF = workflow.loads(json.dumps({
    "name": "bench",
    "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 512},
    "steps": [{"name": "main", "run": {"command": "true"}}],
}))
CREDITS = CREDIT_UNIT
MAX_RATE = 10**6
PROVIDERS = 10
PROVIDER_HW = Resources(4_000, 0, 4_000 * 1024)
#: Fee cap of the pre-signed submissions (the base fee is pinned at 0 anyway: see main()).
MAX_FEE = 10**12
#: Jobs per array: ~46 k gas each, so 1,000 (the client's limit) would need ~46 M gas, over a 30 M block.
ARRAY = 500


class TimedScheduler(MetaScheduler):
    """The service as is, noting when each assignment's receipt came back."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.assigned_at: dict[int, float] = {}
        self.cond = threading.Condition()

    def _commit(self, assignments: list[Assignment]) -> list[Assignment]:
        landed = super()._commit(assignments)
        now = time.perf_counter()
        with self.cond:
            for a in landed:
                self.assigned_at[a.job_id] = now
            self.cond.notify_all()
        return landed

    def wait_for(self, job_ids: list[int], timeout: float) -> float:
        """Waits until every job is assigned; returns the time the last one was."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(j in self.assigned_at for j in job_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sum(j not in self.assigned_at for j in job_ids)
                    raise TimeoutError(f"{missing} of {len(job_ids)} jobs not assigned within {timeout:.0f} s")
                self.cond.wait(min(left, 0.5))
            return max(self.assigned_at[j] for j in job_ids)


@dataclass
class Setup:
    chain: Chain
    deployment: Deployment
    scheduler_key: str
    users: list[GridClient]


def setup(chain: Chain) -> Setup:
    keys = dev_keys(20)
    admin_w = chain.wallet(keys[0])
    dep = deploy(admin_w, claim_timeout=3600)
    admin = AdminClient(admin_w, dep)
    admin.grant_scheduler(chain.wallet(keys[1]).address)
    users = [GridClient(chain.wallet(k), dep) for k in keys[2:5]]
    for u in users:
        admin.mint(u.address, Credits(1_000_000))
        u.wallet.transact(u.token.functions.approve(dep.market, 2**255))  # plain submits, no permit each time
    for k in keys[5 : 5 + PROVIDERS]:
        p = ProviderClient(chain.wallet(k), dep)
        p.register(PROVIDER_HW, Prices.from_units(1_000, 0, 100), {"zone": "eu"})
        admin.approve(p.address)
    return Setup(chain, dep, keys[1], users)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def latency(s: Setup, sched: TimedScheduler, n: int) -> dict[str, float]:
    user = s.users[0]
    lat: list[float] = []
    for _ in range(n):
        job = user.submit(WF, credits=Credits(units=CREDITS), max_rate=Credits(units=MAX_RATE), force=True)[0]
        t0 = time.perf_counter()
        lat.append(sched.wait_for([job], 30) - t0)
    ms = [x * 1000 for x in lat]
    return {"jobs": n, "median_ms": statistics.median(ms), "p95_ms": percentile(ms, 0.95), "max_ms": max(ms),
            "min_ms": min(ms), "load": loadavg()}



def assign_gas(s: Setup, job_ids: list[int]) -> tuple[int, float, list[int]]:
    """(assignBatch transactions, gas per assigned job, jobs per transaction) for these jobs."""
    dec = EventDecoder()
    wanted = set(job_ids)
    logs = s.chain.call_rpc("eth_getLogs", [{"address": s.deployment.market, "fromBlock": hex(s.deployment.block),
                                             "toBlock": "latest", "topics": dec.filter_for(["JobAssigned"])}])
    per_tx: dict[str, int] = {}
    for lg in logs:
        if int(lg["topics"][1], 16) in wanted:
            per_tx[lg["transactionHash"]] = per_tx.get(lg["transactionHash"], 0) + 1
    gas = 0
    for tx in per_tx:
        gas += int(s.chain.call_rpc("eth_getTransactionReceipt", [tx])["gasUsed"], 16)
    return len(per_tx), gas / max(1, len(wanted)), sorted(per_tx.values())


def flush_pool(chain: Chain, stop: threading.Event) -> None:
    """Mines a block whenever transactions wait in the pool.

    An automining Anvil mines when a transaction arrives; a burst larger than a block leaves the rest in
    the pool until the next arrival, and a transaction that arrives then (the scheduler's) may itself be
    left behind a full block: it would wait for ever.
    """
    while not stop.wait(0.05):
        status = chain.call_rpc("txpool_status", [])
        if int(status["pending"], 16):
            chain.mine()


def bulk_singles(s: Setup, sched: TimedScheduler, n: int) -> dict[str, Any]:
    """``n`` single-job submissions, signed beforehand with explicit nonces and sent in one JSON-RPC batch."""
    chain, users = s.chain, s.users
    market = users[0].market
    request = (WF.resources.cpus, WF.resources.gpus, WF.resources.mem_mb, MAX_RATE, CREDITS, 0, b"\0" * 32)
    data = market.encode_abi("submit", args=[request, [], WF.canonical(), 1])
    gas = users[0].wallet.estimate(Call(market.functions.submit(request, [], WF.canonical(), 1)))
    tip = int(chain.call_rpc("eth_maxPriorityFeePerGas", []), 16)
    raws: list[str] = []
    first_nonce = [int(chain.call_rpc("eth_getTransactionCount", [u.address, "pending"]), 16) for u in users]
    for i in range(n):
        w = users[i % len(users)].wallet
        nonce = first_nonce[i % len(users)] + i // len(users)
        tx = {"to": market.address, "data": data, "value": 0, "nonce": nonce, "gas": gas, "chainId": chain.chain_id,
              "maxFeePerGas": MAX_FEE, "maxPriorityFeePerGas": tip, "type": 2}
        raws.append(w.account.sign_transaction(tx).raw_transaction.to_0x_hex())
    first_id = users[0].job_count() + 1
    flushing = threading.Event()
    flusher = threading.Thread(target=flush_pool, args=(chain, flushing), daemon=True)
    flusher.start()
    t_send = time.perf_counter()
    batch = [("eth_sendRawTransaction", [r]) for r in raws]
    answers = chain.w3.provider.make_batch_request(batch)  # type: ignore[attr-defined]
    hashes = [HexBytes(a["result"]) for a in cast(list[dict[str, Any]], answers)]
    users[0].wallet.wait_receipts(hashes)
    t_submitted = time.perf_counter()
    for u in users:
        u.wallet.reset_nonce()
    ids = list(range(first_id, first_id + n))
    try:
        t_done = sched.wait_for(ids, 120)
    finally:
        flushing.set()
        flusher.join()
    txs, gas_per_job, sizes = assign_gas(s, ids)
    return {"jobs": n, "submit_s": t_submitted - t_send, "all_assigned_after_first_send_s": t_done - t_send,
            "all_assigned_after_last_receipt_s": t_done - t_submitted, "assignments_per_s": n / (t_done - t_send),
            "assign_txs": txs, "batch_sizes": sizes, "assign_gas_per_job": gas_per_job}


def bulk_array(s: Setup, sched: TimedScheduler, n: int) -> dict[str, Any]:
    """``n`` jobs as job arrays of up to :data:`ARRAY` (a larger array does not fit a 30 M gas block)."""
    user = s.users[1]
    ids: list[int] = []
    t_send = time.perf_counter()
    for start in range(0, n, ARRAY):
        ids += user.submit(WF, credits=Credits(units=CREDITS), max_rate=Credits(units=MAX_RATE),
                           count=min(ARRAY, n - start), force=True)
    t_submitted = time.perf_counter()
    t_done = sched.wait_for(ids, 120)
    txs, gas_per_job, sizes = assign_gas(s, ids)
    return {"jobs": n, "submit_s": t_submitted - t_send, "all_assigned_after_receipt_s": t_done - t_submitted,
            "assignments_per_s": n / (t_done - t_submitted), "assign_txs": txs, "batch_sizes": sizes,
            "assign_gas_per_job": gas_per_job}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--single", type=int, default=200, help="jobs in the latency measurement")
    parser.add_argument("--bulk", type=int, default=1000, help="jobs in each throughput measurement")
    parser.add_argument("--poll", type=float, default=0.1, help="scheduler poll interval, seconds")
    parser.add_argument("--batch-limit", type=int, default=200, help="assignments per assignBatch")
    parser.add_argument("--quick", action="store_true", help="20 single jobs, 100 bulk")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    if args.quick:
        args.single, args.bulk = 20, 100
    started = time.perf_counter()
    # The base fee is pinned at 0: a burst of 1,000 submissions fills ~80 blocks and, with the usual 1/8 rise
    # per full block, multiplies the base fee by ~10,000; the scheduler's assignBatch, priced at twice the
    # base fee when sent, would then be outbid for the rest of the burst.
    with start_anvil(extra_args=["--base-fee", "0"]) as node:
        chain = Chain(node.rpc_url)
        s = setup(chain)
        sched = TimedScheduler(chain.wallet(s.scheduler_key), s.deployment, poll_interval=args.poll,
                               batch_limit=args.batch_limit)
        stop = threading.Event()
        thread = threading.Thread(target=sched.run, args=(stop,), daemon=True)
        thread.start()
        try:
            stage = time.perf_counter()
            lat = latency(s, sched, args.single)
            print(f"latency stage: {time.perf_counter() - stage:.1f} s", file=sys.stderr)
            stage = time.perf_counter()
            singles = bulk_singles(s, sched, args.bulk)
            print(f"single submissions stage: {time.perf_counter() - stage:.1f} s", file=sys.stderr)
            stage = time.perf_counter()
            array = bulk_array(s, sched, args.bulk)
            print(f"job array stage: {time.perf_counter() - stage:.1f} s", file=sys.stderr)
        finally:
            stop.set()
            thread.join(10)
    print(f"meta-scheduler on Anvil (poll {args.poll} s, batches of up to {args.batch_limit}, "
          f"{PROVIDERS} providers)")
    print(f"  latency, submit receipt -> assignment receipt, {lat['jobs']} single submissions:")
    print(f"    median {lat['median_ms']:.0f} ms   p95 {lat['p95_ms']:.0f} ms   "
          f"min {lat['min_ms']:.0f} ms   max {lat['max_ms']:.0f} ms "
          f"(target median < 50 ms, p95 < 100 ms; load average {lat['load']})")
    print(f"  throughput, {singles['jobs']} single-job submissions (pre-signed, sent in one JSON-RPC batch):")
    print(f"    sent and mined in {singles['submit_s']:.2f} s; all assigned "
          f"{singles['all_assigned_after_first_send_s']:.2f} s after the send "
          f"({singles['all_assigned_after_last_receipt_s']:.2f} s after the last submit receipt): "
          f"{singles['assignments_per_s']:.0f} assignments/s end to end")
    print(f"    {singles['assign_txs']} assignBatch txs (sizes {singles['batch_sizes']}), "
          f"{singles['assign_gas_per_job']:,.0f} gas per job")
    print(f"  throughput, {array['jobs']} jobs in job arrays of up to {ARRAY}:")
    print(f"    all assigned {array['all_assigned_after_receipt_s']:.2f} s after the submit receipt: "
          f"{array['assignments_per_s']:.0f} assignments/s; {array['assign_txs']} assignBatch txs "
          f"(sizes {array['batch_sizes']}), {array['assign_gas_per_job']:,.0f} gas per job")
    print(f"  (benchmark ran {time.perf_counter() - started:.0f} s)")
    if args.json:
        print(json.dumps({"latency": lat, "singles": singles, "array": array}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
