"""How each market event changes the index: the one module that reads events' fields.

:class:`Applier` writes through a :class:`~dsq_chain.services.index.store.Store` (the caller flushes and
commits it). Every handler reads and checks first and writes last, so an event it cannot make sense of
(an unknown job, a malformed field) raises before anything is written; :meth:`Applier.apply` then logs
and counts it and the index goes on. Rows of ``jobs`` and ``providers`` updated in place have their old
values saved in ``undo`` first (see :meth:`dsq_chain.services.index.IndexService.on_reorg`).

The rules for capacity, exclusions and provider statistics are the meta-scheduler's
(:class:`~dsq_chain.services.gridstate.GridState`): an index-based ``explain`` must give its answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table

from dsq_chain.matching.model import SETTLED_STAT, released_stat
from dsq_chain.sdk.events import (
    ChainEvent,
    JobAssigned,
    JobReleased,
    JobSettled,
    JobStatusChanged,
    JobSubmitted,
    JobToppedUp,
    ProviderHardwareUpdated,
    ProviderLabelsSet,
    ProviderPaused,
    ProviderPricesUpdated,
    ProviderRegistered,
    ProviderStatusChanged,
    Undecodable,
    job_status_set_by,
)
from dsq_chain.sdk.history import describe_event
from dsq_chain.services.gridstate import _workflow_labels as workflow_labels
from dsq_chain.services.index import schema as s
from dsq_chain.services.index.store import Store
from dsq_chain.types import JobStatus, Prices, ProviderStatus, Resources
from dsq_chain.workloads.labels import decode_value, is_label_key
from dsq_chain.workloads.lease import parse_lease_ref
from dsq_chain.workloads.workflow import from_canonical

log = logging.getLogger("dsq.index")

ZERO = "0x0000000000000000000000000000000000000000"


class Applier:
    """Applies decoded market events to the index tables through a :class:`Store`."""

    def __init__(self, store: Store, block_time: Callable[[int], int]) -> None:
        self.store = store
        self.block_time = block_time
        self.version = 0
        self.errors = 0

    def apply(self, ev: ChainEvent, version: int) -> bool:
        """Applies one event as change number ``version``; False when it was skipped as malformed."""
        handler = getattr(self, "_on_" + ev.name, None)
        if handler is None:
            return True
        self.version = version
        try:
            handler(ev, self.block_time(ev.block_number))
        except Exception as e:  # hostile input never stops the index
            self.errors += 1
            log.error("index: cannot apply %s at block %d (log %d): %r", ev.name, ev.block_number, ev.log_index, e)
            return False
        return True

    # -- rows --------------------------------------------------------------------------------------
    def _row(self, table: Table, key: Any) -> dict[str, Any]:
        row = self.store.get(table, key)
        if row is None:
            raise KeyError(f"{table.name}: no row {key!r}")
        return row

    def _update(self, table: Table, old: dict[str, Any], block: int, **values: Any) -> None:
        """Updates one row, saving its old values for a reorg first."""
        self.store.update(table, old, block, version=self.version, **values)

    def _change(self, ev: ChainEvent, t: int, job_ids: list[int], provider: str | None) -> None:
        """Records what ``ev`` did to ``job_ids``: the status it leaves them in (None: unchanged)."""
        status, detail = describe_event(ev)  # the status from the one step (job_status_after)
        self.store.extend(s.status_changes, [
            {"job_id": j, "block": ev.block_number, "log_index": ev.log_index, "time": t, "event": ev.name,
             "status": None if status is None else int(status), "provider": provider, "detail": detail}
            for j in job_ids])

    # -- providers ---------------------------------------------------------------------------------
    def _provider(self, address: str) -> dict[str, Any]:
        return self._row(s.providers, address)

    def _on_Undecodable(self, ev: Undecodable, t: int) -> None:
        self.errors += 1
        log.error("index: skipping an undecodable %s log at block %d (tx %s): %s",
                  ev.event or "unknown", ev.block_number, ev.tx_hash, ev.reason)

    def _on_ProviderRegistered(self, ev: ProviderRegistered, t: int) -> None:
        # As the scheduler's state: a (re-)registration starts with all capacity free and PENDING, history kept.
        values = {**_hardware(ev.hardware), **_prices(ev.prices), "provider_id": ev.id,
                  "status": int(ProviderStatus.PENDING), "paused": False, "used_cpus": 0, "used_gpus": 0,
                  "used_mem_mb": 0}
        old = self.store.get(s.providers, ev.provider)
        if old is not None:
            self._update(s.providers, old, ev.block_number, **values)
            return
        self.store.insert(s.providers, dict(
            address=ev.provider, labels="{}", finished=0, failed=0, refused=0, timed_out=0, panicked=0, canceled=0,
            earnings=0, registered_block=ev.block_number, registered_time=t, last_report_time=None,
            version=self.version, **values))

    def _on_ProviderHardwareUpdated(self, ev: ProviderHardwareUpdated, t: int) -> None:
        p = self._provider(ev.provider)
        self._update(s.providers, p, ev.block_number, **_hardware(ev.hardware))

    def _on_ProviderPricesUpdated(self, ev: ProviderPricesUpdated, t: int) -> None:
        p = self._provider(ev.provider)
        self._update(s.providers, p, ev.block_number, **_prices(ev.prices))

    def _on_ProviderLabelsSet(self, ev: ProviderLabelsSet, t: int) -> None:
        p = self._provider(ev.provider)
        labels: dict[str, str] = json.loads(p["labels"])
        for key, value in zip(ev.keys, ev.values, strict=True):
            if not is_label_key(key):
                continue  # not a key any job can name (as for the scheduler)
            try:
                if value == bytes(32):
                    raise ValueError("removed")
                labels[key] = decode_value(value)
            except ValueError:  # removed, or a word no label value encodes to: absent (as for the scheduler)
                labels.pop(key, None)
        self._update(s.providers, p, ev.block_number, labels=json.dumps(labels, sort_keys=True))

    def _on_ProviderStatusChanged(self, ev: ProviderStatusChanged, t: int) -> None:
        p = self._provider(ev.provider)
        self._update(s.providers, p, ev.block_number, status=int(ev.status))

    def _on_ProviderPaused(self, ev: ProviderPaused, t: int) -> None:
        p = self._provider(ev.provider)
        self._update(s.providers, p, ev.block_number, paused=bool(ev.paused))

    def _use(self, provider: str, job: dict[str, Any], block: int, sign: int, t: int | None = None,
             **stats: int) -> None:
        """Reserves (sign 1) or releases (-1) ``job``'s resources on ``provider``, adding to its statistics."""
        p = self._provider(provider)
        values: dict[str, Any] = {
            "used_cpus": p["used_cpus"] + sign * job["cpus"], "used_gpus": p["used_gpus"] + sign * job["gpus"],
            "used_mem_mb": p["used_mem_mb"] + sign * job["mem_mb"],
        }
        values.update({k: p[k] + v for k, v in stats.items()})
        if t is not None:
            values["last_report_time"] = t
        self._update(s.providers, p, block, **values)

    # -- jobs --------------------------------------------------------------------------------------
    def _job(self, job_id: int) -> dict[str, Any]:
        return self._row(s.jobs, int(job_id))

    def _on_JobSubmitted(self, ev: JobSubmitted, t: int) -> None:
        req = ev.request
        res = req.resources
        labels, problem = workflow_labels(ev.workflow, tuple(ev.labels), res)
        try:
            name = from_canonical(ev.workflow).name or ""
        except Exception:  # whatever bytes anyone submits (the reason is in ``problem``)
            name = ""
        first, count = ev.first_job_id, ev.count
        if not 0 < count <= 100_000:
            raise ValueError(f"JobSubmitted count {count} out of range")
        lease = parse_lease_ref(bytes(req.external_ref))  # (akash1 owner, dseq), or None without a lease
        row = {
            "head_id": first, "owner": ev.owner, "name": name[:200], "status": int(job_status_set_by(ev)),
            "provider": None, "cpus": res.cpus, "gpus": res.gpus, "mem_mb": res.mem_mb,
            "max_rate": req.max_rate, "rate": 0, "rate_cpu": 0, "rate_gpu": 0, "rate_mem": 0,
            "credits": req.credits, "escrow": req.credits, "topped_up": 0,
            "labels": json.dumps([[c.key, c.op.symbol, c.value] for c in labels]), "problem": problem,
            "excluded": "[]", "workflow_hash": "0x" + bytes(ev.workflow_hash).hex(),
            "submitted_block": ev.block_number, "submitted_time": t,
            "lease_owner": lease[0] if lease else None,
            "lease_dseq": str(lease[1]) if lease else None,
            "version": self.version,
        }
        ids = list(ev.job_ids)
        if any(self.store.get(s.jobs, j) is not None for j in (first, first + count - 1)):
            raise ValueError(f"jobs {first}..{first + count - 1} are already in the index")
        for j in ids:
            self.store.insert(s.jobs, {**row, "id": j, "assigned_time": None, "started_time": None,
                                       "ended_time": None, "billed": None, "refunded": None, "exit_code": None})
        self._change(ev, t, ids, None)

    def _on_JobAssigned(self, ev: JobAssigned, t: int) -> None:
        job = self._job(ev.job_id)
        p = self._provider(ev.provider)
        # The contract snapshots the rate from the provider's prices at this block: its parts by resource.
        cpu = job["cpus"] * p["per_cpu_minute"]
        gpu = job["gpus"] * p["per_gpu_minute"]
        mem = job["mem_mb"] * p["per_gb_minute"] // 1024
        if cpu + gpu + mem != ev.rate:  # prices unknown to the index: the whole rate counts as cpu
            cpu, gpu, mem = ev.rate, 0, 0
        self._update(s.jobs, job, ev.block_number, status=int(job_status_set_by(ev)), provider=ev.provider,
                     rate=ev.rate, rate_cpu=cpu, rate_gpu=gpu, rate_mem=mem, assigned_time=t)
        self._use(ev.provider, job, ev.block_number, 1)
        self.store.append(s.assignments, {"job_id": job["id"], "block": ev.block_number, "log_index": ev.log_index,
                                          "time": t, "provider": ev.provider, "rate": ev.rate})
        self._change(ev, t, [job["id"]], ev.provider)

    def _on_JobStatusChanged(self, ev: JobStatusChanged, t: int) -> None:
        job = self._job(ev.job_id)
        status = job_status_set_by(ev)
        values: dict[str, Any] = {"status": int(status)}
        if status is JobStatus.RUNNING:
            values["started_time"] = t
        self._update(s.jobs, job, ev.block_number, **values)
        if ev.provider != ZERO and job["provider"] == ev.provider:
            self._use(ev.provider, job, ev.block_number, 0, t)
        self._change(ev, t, [job["id"]], ev.provider)

    def _on_JobReleased(self, ev: JobReleased, t: int) -> None:
        job = self._job(ev.job_id)
        excluded = sorted({*json.loads(job["excluded"]), ev.provider})
        # The job's own state first: a provider this index does not know must not strand the job.
        self._update(s.jobs, job, ev.block_number, status=int(job_status_set_by(ev)), provider=None, rate=0,
                     rate_cpu=0, rate_gpu=0, rate_mem=0, excluded=json.dumps(excluded))
        self.store.append(s.releases, {"job_id": job["id"], "block": ev.block_number, "time": t,
                                       "provider": ev.provider, "reason": ev.reason.name.lower()})
        self._change(ev, t, [job["id"]], ev.provider)
        stat = released_stat(ev.reason)
        self._use(ev.provider, job, ev.block_number, -1, t if stat == "refused" else None, **{stat: 1})

    def _on_JobSettled(self, ev: JobSettled, t: int) -> None:
        job = self._job(ev.job_id)
        status = job_status_set_by(ev)
        provider = ev.provider if ev.provider != ZERO else None
        held = JobStatus(job["status"]).holds_capacity and provider is not None
        self._update(s.jobs, job, ev.block_number, status=int(status), billed=ev.billed, refunded=ev.refunded,
                     exit_code=ev.exit_code, ended_time=t)
        rate = job["rate"]
        cpu = ev.billed * job["rate_cpu"] // rate if rate else 0
        gpu = ev.billed * job["rate_gpu"] // rate if rate else 0
        self.store.append(s.bills, {
            "job_id": job["id"], "block": ev.block_number, "time": t, "owner": job["owner"], "provider": provider,
            "status": int(status), "exit_code": ev.exit_code, "billed": ev.billed, "refunded": ev.refunded,
            "cpu": cpu, "gpu": gpu, "mem": ev.billed - cpu - gpu})
        self._change(ev, t, [job["id"]], provider)
        if held and provider is not None:
            reported = status in SETTLED_STAT  # the provider reported it (FINISH or PANIC)
            stat = "canceled" if status is JobStatus.CANCELED else SETTLED_STAT.get(status)  # the index counts both
            self._use(provider, job, ev.block_number, -1, t if reported else None, earnings=ev.billed,
                      **({stat: 1} if stat else {}))

    def _on_JobToppedUp(self, ev: JobToppedUp, t: int) -> None:
        job = self._job(ev.job_id)
        self._update(s.jobs, job, ev.block_number, escrow=job["escrow"] + ev.amount,
                     topped_up=job["topped_up"] + ev.amount)
        self.store.append(s.topups, {"job_id": job["id"], "block": ev.block_number, "log_index": ev.log_index,
                                     "time": t, "payer": ev.payer, "amount": ev.amount, "escrow": ev.escrow})
        self._change(ev, t, [job["id"]], None)


def _hardware(hw: Resources) -> dict[str, int]:
    return {"cpus": hw.cpus, "gpus": hw.gpus, "mem_mb": hw.mem_mb}


def _prices(p: Prices) -> dict[str, int]:
    cpu, gpu, gb = p.units
    return {"per_cpu_minute": cpu, "per_gpu_minute": gpu, "per_gb_minute": gb}
