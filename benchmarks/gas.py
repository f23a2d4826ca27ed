"""Gas of every step of a job's life, from real receipts on a local Anvil.

Prints each contract's deployed size, one line per call, then:
  lifecycle gas: N   submit with permit -> assign -> one report with CLAIM + START -> finish, + withdraw / 100
                     (the life the worker sends when its engine starts a job at once)
  (and the same with claim and start as two calls, and paid from the internal balance)
  batch assign per job: N   (100 jobs in one assignBatch)
  fully batched per job: N   (array submit of 100 + batch assign + one CLAIM+START report + one FINISH
                             report + withdraw; the three-report variant is printed too)

Targets (issue 17): lifecycle <= 250,000; batch assign <= 12,000 per job; fully batched <= 90,000 per
job; every contract < 75 % of EIP-170's 24,576 bytes. Measured in steady state: the accounts have used
the market before (as any real user after its first job). Prints figures and nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import dev_keys, start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient, SchedulerClient
from dsq_chain.sdk.deployment import CODE_SIZE_LIMIT, code_sizes, deploy
from dsq_chain.types import CREDIT_UNIT, Prices, ReportAction, Resources

WORKFLOW = json.dumps(
    {"resources": {"tasks": 1, "cpusPerTask": 2, "memPerCpu": 512, "gpus": 0},
     "steps": [{"name": "main", "run": {"command": "python3 train.py --epochs 3"}}]},
    separators=(",", ":"), sort_keys=True,
).encode()
RES = Resources(cpus=2, gpus=0, mem_mb=1024)
TARGETS = {"lifecycle": 250_000, "batch_assign": 12_000, "batched": 90_000}
#: Largest share of EIP-170's limit a deployed contract may take.
SIZE_SHARE = 0.75
NO_REF = b"\0" * 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=100, help="jobs in the batched measurements")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # library notices (deprecations, ...) are not figures
    n = args.jobs
    with start_anvil() as node:
        chain = Chain(node.rpc_url)
        keys = dev_keys(4)
        admin_w, sched_w, user_w, prov_w = (chain.wallet(k) for k in keys)
        dep = deploy(admin_w)
        sizes = code_sizes(chain, dep)
        admin, sched = AdminClient(admin_w, dep), SchedulerClient(sched_w, dep)
        user, prov = GridClient(user_w, dep), ProviderClient(prov_w, dep)
        admin.grant_scheduler(sched.address)
        admin.mint(user.address, Credits(1_000_000))
        prov.register(Resources(4096, 0, 4096 * 1024), Prices.from_units(1_000, 0, 100), {"zone": "eu"})
        admin.approve(prov.address)
        m = user.market.functions

        def gas(receipt: dict[str, int]) -> int:
            return int(receipt["gasUsed"])

        def one_job(credits: int, claim_and_start_together: bool = False) -> dict[str, int]:
            """One job through its whole life; the escrow is paid by permit (no internal balance)."""
            if user.credits():
                user.withdraw()
            req = (RES.cpus, RES.gpus, RES.mem_mb, 1_000_000, credits, 0, NO_REF)
            permit = user.sign_permit(credits)
            r: dict[str, int] = {}
            rec = user_w.transact(m.submitWithPermit(req, [], WORKFLOW, 1, permit))
            job_id = int(user.market.events.JobSubmitted().process_receipt(rec)[0]["args"]["firstJobId"])
            r["submitWithPermit"] = gas(rec)
            r["assign"] = gas(sched_w.transact(m.assign(job_id, prov.address, [])))
            if claim_and_start_together:
                r["report CLAIM+START"] = gas(prov.report([(job_id, ReportAction.CLAIM, 0),
                                                          (job_id, ReportAction.START, 0)]))
            else:
                r["claim"] = gas(prov_w.transact(m.claim(job_id)))
                r["start"] = gas(prov_w.transact(m.start(job_id)))
            chain.increase_time(60)
            r["finish"] = gas(prov_w.transact(m.finish(job_id, 0)))
            return r

        one_job(10 * CREDIT_UNIT)  # warm-up: first use of every account's slots
        steps = one_job(10 * CREDIT_UNIT)
        # The same life paid from the owner's internal balance (refunds of earlier jobs), no permit.
        rec = user_w.transact(m.submit((RES.cpus, RES.gpus, RES.mem_mb, 1_000_000, CREDIT_UNIT, 0, NO_REF), [],
                                       WORKFLOW, 1))
        from_balance = {"submit (from balance)": gas(rec)}
        bal_id = int(user.market.events.JobSubmitted().process_receipt(rec)[0]["args"]["firstJobId"])
        from_balance["assign"] = gas(sched_w.transact(m.assign(bal_id, prov.address, [])))
        from_balance["report CLAIM+START"] = gas(prov.report([(bal_id, ReportAction.CLAIM, 0),
                                                             (bal_id, ReportAction.START, 0)]))
        chain.increase_time(60)
        from_balance["finish"] = gas(prov_w.transact(m.finish(bal_id, 0)))
        # The same life as the worker sends it when its engine starts the job at once: claim and start
        # in one `report` transaction (two entries for the same job).
        worker_way = one_job(10 * CREDIT_UNIT, claim_and_start_together=True)
        steps["withdraw (provider)"] = gas(prov_w.transact(m.withdraw()))
        steps["withdraw (owner)"] = gas(user_w.transact(m.withdraw()))
        separate = sum(steps[k] for k in ("submitWithPermit", "assign", "claim", "start", "finish"))
        separate += steps["withdraw (provider)"] // 100
        lifecycle_balance = sum(from_balance.values()) + steps["withdraw (provider)"] // 100
        lifecycle = sum(worker_way.values()) + steps["withdraw (provider)"] // 100

        # -- fully batched path: n jobs -------------------------------------------------------
        credits = 10 * CREDIT_UNIT
        req = (RES.cpus, RES.gpus, RES.mem_mb, 1_000_000, credits, 0, NO_REF)

        def batched_path(claim_and_start_together: bool) -> dict[str, int]:
            rec = user_w.transact(m.submitWithPermit(req, [], WORKFLOW, n, user.sign_permit(credits * n)))
            first = int(user.market.events.JobSubmitted().process_receipt(rec)[0]["args"]["firstJobId"])
            ids = list(range(first, first + n))
            out = {"array submit": gas(rec)}
            out["assignBatch"] = gas(sched.assign_batch([(i, prov.address, []) for i in ids]))
            if claim_and_start_together:
                out["report CLAIM+START"] = gas(prov.report([(i, a, 0) for i in ids
                                                             for a in (ReportAction.CLAIM, ReportAction.START)]))
            else:
                out["report CLAIM"] = gas(prov.report([(i, ReportAction.CLAIM, 0) for i in ids]))
                out["report START"] = gas(prov.report([(i, ReportAction.START, 0) for i in ids]))
            chain.increase_time(60)
            out["report FINISH"] = gas(prov.report([(i, ReportAction.FINISH, 0) for i in ids]))
            out["withdraw (provider)"] = gas(prov_w.transact(m.withdraw()))
            return out

        three_reports = batched_path(False)
        batched = batched_path(True)
        per_job_batched = sum(batched.values()) // n
        per_job_three_reports = sum(three_reports.values()) // n
        batch_assign = batched["assignBatch"] // n

        # -- the same single calls with label constraints -------------------------------------
        from dsq_chain.workloads.labels import on_chain, parse_constraint

        labels = on_chain([parse_constraint("zone == eu")])
        rec = user_w.transact(m.submit(req, labels, WORKFLOW, 1))
        job_id = int(user.market.events.JobSubmitted().process_receipt(rec)[0]["args"]["firstJobId"])
        labelled = {"submit with 1 label (from balance)": gas(rec)}
        labelled["assign with 1 label"] = gas(sched_w.transact(m.assign(job_id, prov.address, labels)))

    print("deployed code size (EIP-170 limit 24,576 B; target < 75 %):")
    for name, size in sizes.items():
        print(f"  {name:<38} {size:>10,} B  ({100 * size / CODE_SIZE_LIMIT:.1f} %)")
    print("gas per call (steady state):")
    for k, v in {**steps, **labelled, "report CLAIM+START (one job)": worker_way["report CLAIM+START"]}.items():
        print(f"  {k:<38} {v:>10,}")
    print(f"batched path, {n} jobs:")
    for k, v in batched.items():
        print(f"  {k:<38} {v:>10,}  ({v // n:,} per job)")
    print()
    print(f"lifecycle gas: {lifecycle}  (target <= {TARGETS['lifecycle']:,})")
    print(f"lifecycle gas, claim and start as two calls: {separate}")
    print(f"lifecycle gas, escrow from internal balance (no permit), claim+start in one report: {lifecycle_balance}")
    print(f"batch assign per job: {batch_assign}  (target <= {TARGETS['batch_assign']:,})")
    print(f"fully batched per job: {per_job_batched}  (target <= {TARGETS['batched']:,})")
    print(f"fully batched per job, claim, start and finish as three reports: {per_job_three_reports}")
    sizes_ok = all(v < SIZE_SHARE * CODE_SIZE_LIMIT for v in sizes.values())
    ok = (lifecycle <= TARGETS["lifecycle"] and batch_assign <= TARGETS["batch_assign"]
          and per_job_batched <= TARGETS["batched"] and sizes_ok)
    print(f"targets (250,000 / 12,000 / 90,000 / sizes < 75 %): {'met' if ok else 'MISSED'}")
    if args.json:
        print(json.dumps({"lifecycle": lifecycle, "lifecycle_separate_claim_start": separate,
                          "lifecycle_from_balance": lifecycle_balance, "batch_assign_per_job": batch_assign,
                          "batched_per_job": per_job_batched, "batched_three_reports_per_job": per_job_three_reports,
                          "sizes": sizes, "steps": steps, "batched": batched}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
