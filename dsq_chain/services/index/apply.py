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
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Table

from dsq_chain.sdk.events import ChainEvent
from dsq_chain.sdk.history import _describe as describe_event
from dsq_chain.services.gridstate import _workflow_labels as workflow_labels
from dsq_chain.services.index import schema as s
from dsq_chain.services.index.store import Store
from dsq_chain.types import JobStatus, ProviderStatus, ReleaseReason, Resources

log = logging.getLogger("dsq.index")

ZERO = "0x0000000000000000000000000000000000000000"
#: Names under which the submission event may carry an external lease reference (Akash owner + dseq).
LEASE_OWNER_FIELDS = ("leaseOwner", "externalOwner", "lease_owner")
LEASE_DSEQ_FIELDS = ("dseq", "leaseDseq", "externalId", "lease_dseq")


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
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # hostile input never stops the index
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

    def _change(self, ev: ChainEvent, t: int, job_ids: list[int], status: JobStatus | None,
                provider: str | None) -> None:
        _, detail = describe_event(ev)
        self.store.extend(s.status_changes, [
            {"job_id": j, "block": ev.block_number, "log_index": ev.log_index, "time": t, "event": ev.name,
             "status": None if status is None else int(status), "provider": provider, "detail": detail}
            for j in job_ids])

    # -- providers ---------------------------------------------------------------------------------
    def _provider(self, address: str) -> dict[str, Any]:
        return self._row(s.providers, address)

    def _on_ProviderRegistered(self, ev: ChainEvent, t: int) -> None:
        a = ev.args
        hw, prices = _hardware(a["hardware"]), _prices(a["prices"])
        addr = str(a["provider"])
        # As the scheduler's state: a (re-)registration starts with all capacity free and PENDING, history kept.
        values = {**hw, **prices, "provider_id": int(a["id"]), "status": int(ProviderStatus.PENDING),
                  "paused": False, "used_cpus": 0, "used_gpus": 0, "used_mem_mb": 0}
        old = self.store.get(s.providers, addr)
        if old is not None:
            self._update(s.providers, old, ev.block_number, **values)
            return
        self.store.insert(s.providers, dict(
            address=addr, labels="{}", finished=0, failed=0, refused=0, timed_out=0, panicked=0, canceled=0,
            earnings=0, registered_block=ev.block_number, registered_time=t, last_report_time=None,
            version=self.version, **values))

    def _on_ProviderHardwareUpdated(self, ev: ChainEvent, t: int) -> None:
        p = self._provider(ev.args["provider"])
        self._update(s.providers, p, ev.block_number, **_hardware(ev.args["hardware"]))

    def _on_ProviderPricesUpdated(self, ev: ChainEvent, t: int) -> None:
        p = self._provider(ev.args["provider"])
        self._update(s.providers, p, ev.block_number, **_prices(ev.args["prices"]))

    def _on_ProviderLabelsSet(self, ev: ChainEvent, t: int) -> None:
        from dsq_chain.workloads.labels import decode_value

        p = self._provider(ev.args["provider"])
        labels: dict[str, str] = json.loads(p["labels"])
        for key, value in zip(ev.args["keys"], ev.args["values"], strict=True):
            try:
                if bytes(value) == bytes(32):
                    raise ValueError("removed")
                labels[str(key)] = decode_value(bytes(value))
            except ValueError:  # removed, or a word no label value encodes to: absent (as for the scheduler)
                labels.pop(str(key), None)
        self._update(s.providers, p, ev.block_number, labels=json.dumps(labels, sort_keys=True))

    def _on_ProviderStatusChanged(self, ev: ChainEvent, t: int) -> None:
        p = self._provider(ev.args["provider"])
        self._update(s.providers, p, ev.block_number, status=int(ProviderStatus(ev.args["status"])))

    def _on_ProviderPaused(self, ev: ChainEvent, t: int) -> None:
        p = self._provider(ev.args["provider"])
        self._update(s.providers, p, ev.block_number, paused=bool(ev.args["paused"]))

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
    def _job(self, job_id: Any) -> dict[str, Any]:
        return self._row(s.jobs, int(job_id))

    def _on_JobSubmitted(self, ev: ChainEvent, t: int) -> None:
        from dsq_chain.workloads.workflow import WorkflowError, from_canonical

        a = ev.args
        req = a["request"]
        res = Resources(int(req["cpus"]), int(req["gpus"]), int(req["memMB"]))
        workflow = bytes(a["workflow"])
        chain_labels = tuple((bytes(c["key"]), int(c["op"]), bytes(c["value"])) for c in a["labels"])
        labels, problem = workflow_labels(workflow, chain_labels, res)
        try:
            name = from_canonical(workflow).name or ""
        except WorkflowError:
            name = ""
        first, count = int(a["firstJobId"]), int(a["count"])
        if not 0 < count <= 100_000:
            raise ValueError(f"JobSubmitted count {count} out of range")
        lease_owner = _field(a, LEASE_OWNER_FIELDS)
        lease_dseq = _field(a, LEASE_DSEQ_FIELDS)
        row = {
            "head_id": first, "owner": str(a["owner"]), "name": name[:200], "status": int(JobStatus.PENDING),
            "provider": None, "cpus": res.cpus, "gpus": res.gpus, "mem_mb": res.mem_mb,
            "max_rate": int(req["maxRate"]), "rate": 0, "rate_cpu": 0, "rate_gpu": 0, "rate_mem": 0,
            "credits": int(req["credits"]), "escrow": int(req["credits"]), "topped_up": 0,
            "labels": json.dumps([[c.key, c.op.symbol, c.value] for c in labels]), "problem": problem,
            "excluded": "[]", "workflow_hash": "0x" + bytes(a["workflowHash"]).hex(),
            "submitted_block": ev.block_number, "submitted_time": t,
            "lease_owner": None if lease_owner is None or int(lease_owner, 16) == 0 else str(lease_owner),
            "lease_dseq": None if lease_dseq in (None, 0, "0") else str(int(lease_dseq)),
            "version": self.version,
        }
        ids = list(range(first, first + count))
        if any(self.store.get(s.jobs, j) is not None for j in (first, first + count - 1)):
            raise ValueError(f"jobs {first}..{first + count - 1} are already in the index")
        for j in ids:
            self.store.insert(s.jobs, {**row, "id": j, "assigned_time": None, "started_time": None,
                                       "ended_time": None, "billed": None, "refunded": None, "exit_code": None})
        self._change(ev, t, ids, JobStatus.PENDING, None)

    def _on_JobAssigned(self, ev: ChainEvent, t: int) -> None:
        job = self._job(ev.args["jobId"])
        provider = str(ev.args["provider"])
        p = self._provider(provider)
        rate = int(ev.args["rate"])
        # The contract snapshots the rate from the provider's prices at this block: its parts by resource.
        cpu = job["cpus"] * p["per_cpu_minute"]
        gpu = job["gpus"] * p["per_gpu_minute"]
        mem = job["mem_mb"] * p["per_gb_minute"] // 1024
        if cpu + gpu + mem != rate:  # prices unknown to the index: the whole rate counts as cpu
            cpu, gpu, mem = rate, 0, 0
        self._update(s.jobs, job, ev.block_number, status=int(JobStatus.META_SCHEDULED), provider=provider,
                     rate=rate, rate_cpu=cpu, rate_gpu=gpu, rate_mem=mem, assigned_time=t)
        self._use(provider, job, ev.block_number, 1)
        self.store.append(s.assignments, {"job_id": job["id"], "block": ev.block_number, "log_index": ev.log_index,
                                          "time": t, "provider": provider, "rate": rate})
        self._change(ev, t, [job["id"]], JobStatus.META_SCHEDULED, provider)

    def _on_JobStatusChanged(self, ev: ChainEvent, t: int) -> None:
        job = self._job(ev.args["jobId"])
        status = JobStatus(ev.args["status"])
        provider = str(ev.args["provider"])
        values: dict[str, Any] = {"status": int(status)}
        if status is JobStatus.RUNNING:
            values["started_time"] = t
        self._update(s.jobs, job, ev.block_number, **values)
        if provider != ZERO and job["provider"] == provider:
            self._use(provider, job, ev.block_number, 0, t)
        self._change(ev, t, [job["id"]], status, provider)

    def _on_JobReleased(self, ev: ChainEvent, t: int) -> None:
        job = self._job(ev.args["jobId"])
        provider = str(ev.args["provider"])
        reason = ReleaseReason(ev.args["reason"])
        excluded = sorted({*json.loads(job["excluded"]), provider})
        self._update(s.jobs, job, ev.block_number, status=int(JobStatus.PENDING), provider=None, rate=0,
                     rate_cpu=0, rate_gpu=0, rate_mem=0, excluded=json.dumps(excluded))
        if reason is ReleaseReason.REFUSED:
            self._use(provider, job, ev.block_number, -1, t, refused=1)
        else:
            self._use(provider, job, ev.block_number, -1, timed_out=1)
        self.store.append(s.releases, {"job_id": job["id"], "block": ev.block_number, "time": t,
                                       "provider": provider, "reason": reason.name.lower()})
        self._change(ev, t, [job["id"]], JobStatus.PENDING, provider)

    def _on_JobSettled(self, ev: ChainEvent, t: int) -> None:
        a = ev.args
        job = self._job(a["jobId"])
        status = JobStatus(a["status"])
        provider = str(a["provider"])
        billed, refunded, exit_code = int(a["billed"]), int(a["refunded"]), int(a["exitCode"])
        held = JobStatus(job["status"]).holds_capacity and provider != ZERO
        self._update(s.jobs, job, ev.block_number, status=int(status), billed=billed, refunded=refunded,
                     exit_code=exit_code, ended_time=t)
        if held:
            stat = {JobStatus.FINISHED: "finished", JobStatus.FAILED: "failed", JobStatus.PANICKED: "panicked",
                    JobStatus.CANCELED: "canceled"}.get(status)
            reported = status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.PANICKED)
            self._use(provider, job, ev.block_number, -1, t if reported else None, earnings=billed,
                      **({stat: 1} if stat else {}))
        rate = job["rate"]
        cpu = billed * job["rate_cpu"] // rate if rate else 0
        gpu = billed * job["rate_gpu"] // rate if rate else 0
        self.store.append(s.bills, {
            "job_id": job["id"], "block": ev.block_number, "time": t, "owner": job["owner"],
            "provider": provider if provider != ZERO else None, "status": int(status), "exit_code": exit_code,
            "billed": billed, "refunded": refunded, "cpu": cpu, "gpu": gpu, "mem": billed - cpu - gpu})
        self._change(ev, t, [job["id"]], status, provider if provider != ZERO else None)

    def _on_JobToppedUp(self, ev: ChainEvent, t: int) -> None:
        a = ev.args
        job = self._job(a["jobId"])
        amount = int(a["amount"])
        self._update(s.jobs, job, ev.block_number, escrow=job["escrow"] + amount,
                     topped_up=job["topped_up"] + amount)
        self.store.append(s.topups, {"job_id": job["id"], "block": ev.block_number, "log_index": ev.log_index,
                                     "time": t, "payer": str(a["payer"]), "amount": amount, "escrow": int(a["escrow"])})
        self._change(ev, t, [job["id"]], None, None)


def _hardware(hw: Mapping[str, Any]) -> dict[str, int]:
    return {"cpus": int(hw["cpus"]), "gpus": int(hw["gpus"]), "mem_mb": int(hw["memMB"])}


def _prices(p: Mapping[str, Any]) -> dict[str, int]:
    return {"per_cpu_minute": int(p["perCpuMinute"]), "per_gpu_minute": int(p["perGpuMinute"]),
            "per_gb_minute": int(p["perGbMinute"])}


def _field(args: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    """The first of ``names`` the event carries (also inside a ``lease`` struct), else None."""
    lease = args.get("lease")
    sources: list[Mapping[str, Any]] = [args, lease] if isinstance(lease, Mapping) else [args]
    for source in sources:
        for n in names:
            if n in source:
                return source[n]
    return None
