"""Reading the index: what the dashboard and the console API show.

Every answer is plain JSON-ready data (ints in credit units, statuses by name, times in Unix seconds).
``explain`` builds the matcher's view of the grid from the index and asks the project's matcher, so
it gives the answer ``dsq explain`` gives from the chain.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine, RowMapping, and_, func, select

from dsq_chain.matching import DEFAULT_HALF_LIFE_S, Explanation, FairShare, Matcher, ProviderState, ProviderStats
from dsq_chain.services.gridstate import GridState, JobRecord
from dsq_chain.services.index import schema as s
from dsq_chain.services.index.service import make_engine
from dsq_chain.services.scheduler import explain_from_state
from dsq_chain.types import JobStatus, LabelConstraint, LabelOp, Prices, ProviderStatus, Resources

#: Most rows one list call returns.
MAX_LIMIT = 500


@dataclass
class _Grid:
    """The two things ``explain_from_state`` reads of a :class:`GridState`, built from the index."""

    jobs: dict[int, JobRecord]
    providers: dict[str, ProviderState]


class IndexReader:
    """Read-only queries on an index (built by :class:`~dsq_chain.services.index.IndexService`)."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        self.engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine

    # -- head ------------------------------------------------------------------------------------
    def head(self) -> dict[str, Any]:
        """Where the index stands: last indexed block and its time, change counter, reorg epoch."""
        with self.engine.connect() as conn:
            rows = dict(conn.execute(select(s.meta.c.key, s.meta.c.value)).all())
        cp = json.loads(rows["checkpoint"]) if "checkpoint" in rows else None
        return {
            "market": rows.get("market"), "chain_id": _int(rows.get("chain_id")),
            "block": _int(rows.get("chain_head")) if cp else None,
            "block_time": _int(rows.get("chain_head_time")),
            "version": int(rows.get("version", 0)), "epoch": int(rows.get("epoch", 0)),
        }

    def now(self, head: dict[str, Any] | None = None) -> int:
        """Chain time as the index knows it: wall-clock time, or the newest block's time if later."""
        bt = (head or self.head())["block_time"] or 0
        return max(int(time.time()), int(bt))

    # -- jobs --------------------------------------------------------------------------------------
    def jobs(
        self,
        *,
        owner: str | None = None,
        provider: str | None = None,
        status: JobStatus | None = None,
        lease_owner: str | None = None,
        lease_dseq: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs newest first, filtered; ``before`` pages on (jobs with a smaller id)."""
        j = s.jobs.c
        conds = []
        if owner:
            conds.append(func.lower(j.owner) == owner.lower())
        if provider:
            conds.append(func.lower(j.provider) == provider.lower())
        if status is not None:
            conds.append(j.status == int(status))
        if lease_owner:
            conds.append(func.lower(j.lease_owner) == lease_owner.lower())
        if lease_dseq is not None:
            conds.append(j.lease_dseq == str(lease_dseq))
        if before is not None:
            conds.append(j.id < before)
        q = select(s.jobs).where(*conds).order_by(j.id.desc()).limit(max(1, min(limit, MAX_LIMIT)))
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        now = self.now()
        return [job_view(r, now) for r in rows]

    def job(self, job_id: int, now: int | None = None) -> dict[str, Any] | None:
        """One job with its timeline (every status with block and time), top-ups, assignments and bill."""
        with self.engine.connect() as conn:
            row = conn.execute(select(s.jobs).where(s.jobs.c.id == job_id)).mappings().first()
            if row is None:
                return None
            sc = s.status_changes.c
            timeline = conn.execute(select(s.status_changes).where(sc.job_id == job_id)
                                    .order_by(sc.block, sc.log_index)).mappings().all()
            topups = conn.execute(select(s.topups).where(s.topups.c.job_id == job_id)
                                  .order_by(s.topups.c.block, s.topups.c.log_index)).mappings().all()
            bill = conn.execute(select(s.bills).where(s.bills.c.job_id == job_id)).mappings().first()
        now = self.now() if now is None else now
        view = job_view(row, now)
        view["timeline"] = [{"block": t["block"], "log_index": t["log_index"], "time": t["time"], "event": t["event"],
                             "status": None if t["status"] is None else JobStatus(t["status"]).name,
                             "provider": t["provider"], "detail": t["detail"]} for t in timeline]
        view["topups"] = [{"block": t["block"], "time": t["time"], "payer": t["payer"], "amount": t["amount"],
                           "escrow": t["escrow"]} for t in topups]
        view["bill"] = bill_view(row, bill, now)
        return view

    def changes(self, since: int, limit: int = 200) -> list[dict[str, Any]]:
        """Jobs changed after change number ``since``, oldest change first."""
        q = select(s.jobs).where(s.jobs.c.version > since).order_by(s.jobs.c.version).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        now = self.now()
        return [job_view(r, now) for r in rows]

    # -- providers ---------------------------------------------------------------------------------
    def providers(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(s.providers).order_by(s.providers.c.provider_id)).mappings().all()
        now = self.now()
        return [provider_view(r, now) for r in rows]

    def provider(self, address: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(s.providers).where(func.lower(s.providers.c.address) == address.lower())
                               ).mappings().first()
        return None if row is None else provider_view(row, self.now())

    # -- explain -----------------------------------------------------------------------------------
    def explain(self, job_id: int) -> Explanation | str:
        """Why ``job_id`` waits, provider by provider: the matcher's answer on the index's grid."""
        with self.engine.connect() as conn:
            row = conn.execute(select(s.jobs).where(s.jobs.c.id == job_id)).mappings().first()
            if row is None:
                return f"job {job_id} does not exist (no JobSubmitted event for it)"
            provs = conn.execute(select(s.providers)).mappings().all()
            fairshare = FairShare(DEFAULT_HALF_LIFE_S)
            if row["status"] == JobStatus.PENDING:
                b = s.bills.c
                for owner, t, billed in conn.execute(select(b.owner, b.time, b.billed).where(b.billed > 0)
                                                     .order_by(b.block)):
                    fairshare.record(owner, float(billed), float(t))
        grid = _Grid({job_id: job_record(row)}, {p["address"]: provider_state(p) for p in provs})
        return explain_from_state(cast(GridState, grid), Matcher(None, fairshare), job_id, float(self.now()))

    def explain_view(self, job_id: int) -> dict[str, Any]:
        """:meth:`explain` as data: the summary line and each provider's verdict."""
        result = self.explain(job_id)
        if isinstance(result, str):
            return {"job_id": job_id, "waiting": False, "explanation": result, "providers": []}
        return {"job_id": job_id, "waiting": True, "explanation": str(result), "headline": result.headline(),
                "error": result.error,
                "providers": [{"provider": v.address, "placeable": v.placeable, "rank": v.rank, "rate": v.rate,
                               "reason": v.rejection.reason if v.rejection else None, "verdict": str(v)}
                              for v in result.verdicts]}

    # -- market ----------------------------------------------------------------------------------------
    def market(self, hours: int = 24) -> dict[str, Any]:
        """Per hour over the last ``hours``: jobs submitted, utilisation, wait p50/p95; failures by reason."""
        now = self.now()
        start = (now // 3600 - hours + 1) * 3600
        j = s.jobs.c
        with self.engine.connect() as conn:
            submitted: dict[int, int] = dict(conn.execute(
                select((j.submitted_time // 3600).label("h"), func.count()).where(j.submitted_time >= start)
                .group_by("h")).all())
            started = conn.execute(select(j.submitted_time, j.started_time).where(j.started_time >= start)).all()
            running = conn.execute(select(j.cpus, j.started_time, j.ended_time).where(
                and_(j.started_time.is_not(None), (j.ended_time.is_(None)) | (j.ended_time >= start)))).all()
            capacity = conn.execute(select(func.coalesce(func.sum(s.providers.c.cpus), 0)).where(
                s.providers.c.status == int(ProviderStatus.APPROVED))).scalar_one()
            releases = conn.execute(select(s.releases.c.reason, func.count()).where(s.releases.c.time >= start)
                                    .group_by(s.releases.c.reason)).all()
            never = conn.execute(select(func.count()).select_from(s.jobs).where(
                and_(j.problem.is_not(None), j.status == int(JobStatus.PENDING)))).scalar_one()
            by_status: dict[int, int] = dict(conn.execute(select(j.status, func.count()).group_by(j.status)).all())
        hour_keys = [start // 3600 + i for i in range(hours)]
        waits: dict[int, list[int]] = {h: [] for h in hour_keys}
        for sub, st in started:
            h = int(st) // 3600
            if h in waits:
                waits[h].append(int(st) - int(sub))
        busy: Counter[int] = Counter()
        for cpus, st, end in running:
            a, b = max(int(st), start), min(int(end) if end is not None else now, now)
            while a < b:
                h = a // 3600
                nxt = min(b, (h + 1) * 3600)
                busy[h] += int(cpus) * (nxt - a)
                a = nxt
        failures = {str(r): int(n) for r, n in releases}
        if never:
            failures["cannot be placed"] = int(never)
        return {
            "hours": [h * 3600 for h in hour_keys],
            "jobs_per_hour": [int(submitted.get(h, 0)) for h in hour_keys],
            "utilisation": [round(busy[h] / (int(capacity) * 3600), 4) if capacity else 0.0 for h in hour_keys],
            "wait_p50": [_pct(waits[h], 50) for h in hour_keys],
            "wait_p95": [_pct(waits[h], 95) for h in hour_keys],
            "placement_failures": failures,
            "jobs_by_status": {JobStatus(k).name: int(v) for k, v in by_status.items()},
        }


# -- views ---------------------------------------------------------------------------------------------
def job_view(r: RowMapping, now: int) -> dict[str, Any]:
    """One job as the API shows it (cost so far and time left computed at chain time ``now``)."""
    status = JobStatus(r["status"])
    elapsed = max(0, now - r["started_time"]) if r["started_time"] is not None else 0
    left: int | None
    if status.is_final:
        cost, left = r["billed"] or 0, 0
    elif status is JobStatus.RUNNING and r["rate"]:
        cost = min(r["escrow"], r["rate"] * elapsed // 60)
        left = max(0, r["escrow"] * 60 // r["rate"] - elapsed)
    else:
        cost, left = 0, (r["escrow"] * 60 // r["rate"] if r["rate"] else None)
    return {
        "id": r["id"], "name": r["name"], "owner": r["owner"], "status": status.name, "provider": r["provider"],
        "resources": {"cpus": r["cpus"], "gpus": r["gpus"], "mem_mb": r["mem_mb"]},
        "labels": [" ".join(c) for c in json.loads(r["labels"])],
        "max_rate": r["max_rate"], "rate": r["rate"], "escrow": r["escrow"], "credits": r["credits"],
        "topped_up": r["topped_up"], "cost_so_far": cost, "time_left_s": left,
        "submitted": {"block": r["submitted_block"], "time": r["submitted_time"]},
        "started_time": r["started_time"], "ended_time": r["ended_time"],
        "billed": r["billed"], "refunded": r["refunded"], "exit_code": r["exit_code"],
        "problem": r["problem"], "workflow_hash": r["workflow_hash"],
        "lease": {"owner": r["lease_owner"], "dseq": r["lease_dseq"]} if r["lease_dseq"] is not None else None,
        "version": r["version"],
    }


def bill_view(job: RowMapping, bill: RowMapping | None, now: int) -> dict[str, Any]:
    """The bill by resource: final once settled, else what the running time costs so far."""
    if bill is not None:
        return {"final": True, "billed": bill["billed"], "refunded": bill["refunded"], "exit_code": bill["exit_code"],
                "by_resource": {"cpu": bill["cpu"], "gpu": bill["gpu"], "memory": bill["mem"]},
                "rate": {"cpu": job["rate_cpu"], "gpu": job["rate_gpu"], "memory": job["rate_mem"]}}
    view = job_view(job, now)
    cost = view["cost_so_far"]
    rate = job["rate"]
    cpu = cost * job["rate_cpu"] // rate if rate else 0
    gpu = cost * job["rate_gpu"] // rate if rate else 0
    return {"final": False, "billed": cost, "refunded": None, "exit_code": None,
            "by_resource": {"cpu": cpu, "gpu": gpu, "memory": cost - cpu - gpu},
            "rate": {"cpu": job["rate_cpu"], "gpu": job["rate_gpu"], "memory": job["rate_mem"]}}


def provider_view(r: RowMapping, now: int) -> dict[str, Any]:
    status = ProviderStatus(r["status"])
    return {
        "address": r["address"], "id": r["provider_id"], "status": status.name, "paused": bool(r["paused"]),
        "active": status is ProviderStatus.APPROVED and not r["paused"],
        "labels": json.loads(r["labels"]),
        "prices": {"per_cpu_minute": r["per_cpu_minute"], "per_gpu_minute": r["per_gpu_minute"],
                   "per_gb_minute": r["per_gb_minute"]},
        "capacity": {"total": {"cpus": r["cpus"], "gpus": r["gpus"], "mem_mb": r["mem_mb"]},
                     "used": {"cpus": r["used_cpus"], "gpus": r["used_gpus"], "mem_mb": r["used_mem_mb"]}},
        "jobs": {"finished": r["finished"], "failed": r["failed"], "panicked": r["panicked"],
                 "canceled": r["canceled"], "refused": r["refused"], "timed_out": r["timed_out"]},
        "jobs_run": r["finished"] + r["failed"], "earnings": r["earnings"],
        "registered_time": r["registered_time"], "last_report_time": r["last_report_time"],
        "since_last_report_s": None if r["last_report_time"] is None else max(0, now - r["last_report_time"]),
    }


def provider_state(r: RowMapping) -> ProviderState:
    """A provider row as the matcher's state."""
    total = Resources(r["cpus"], r["gpus"], r["mem_mb"])
    used = Resources(r["used_cpus"], r["used_gpus"], r["used_mem_mb"])
    stats = ProviderStats(r["finished"], r["failed"], r["refused"], r["timed_out"], r["panicked"])
    return ProviderState(r["address"], total, total - used, Prices.from_units(r["per_cpu_minute"], r["per_gpu_minute"],
                         r["per_gb_minute"]), json.loads(r["labels"]),
                         ProviderStatus(r["status"]) is ProviderStatus.APPROVED and not r["paused"], stats)


def job_record(r: RowMapping) -> JobRecord:
    """A job row as the scheduler's record."""
    labels = tuple(LabelConstraint(k, LabelOp.from_symbol(op), v) for k, op, v in json.loads(r["labels"]))
    return JobRecord(r["id"], r["owner"], JobStatus(r["status"]), Resources(r["cpus"], r["gpus"], r["mem_mb"]),
                     r["max_rate"], labels, (), r["submitted_block"], r["provider"], r["rate"], r["problem"],
                     set(json.loads(r["excluded"])))


def _pct(values: list[int], p: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[p - 1])


def _int(v: str | None) -> int | None:
    return None if v is None else int(v)
