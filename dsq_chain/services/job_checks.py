"""What a provider worker checks before it claims a job: can this machine run it?

* :class:`Workflows` — each job array's workflow, fetched once from its ``JobSubmitted`` event, checked
  against the on-chain hash and parsed once (a problem found is kept as its message);
* :func:`problem` — why the worker cannot run a job (None if it can), and whether that may pass;
* :class:`TickCache` — values the worker computes at most once per tick (engine capacity and features,
  chain time, the submit deadline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, cast

from eth_utils.crypto import keccak

from dsq_chain.executors import Executor, ExecutorError
from dsq_chain.sdk.client import ProviderClient
from dsq_chain.types import Job
from dsq_chain.workloads.workflow import Workflow, WorkflowError, from_canonical

T = TypeVar("T")


class TickCache:
    """``fn()`` once per tick, by key; :meth:`clear` starts a new tick."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def clear(self) -> None:
        self._values = {}

    def get(self, key: str, fn: Callable[[], T]) -> T:
        if key not in self._values:
            self._values[key] = fn()
        return cast(T, self._values[key])


class Workflows:
    """The workflow of each job array, from the submission event (one ``eth_getLogs`` per array)."""

    def __init__(self, client: ProviderClient, from_block: int) -> None:
        self.client = client
        self.from_block = from_block
        self.raw: dict[int, tuple[bytes, bytes]] = {}  # head id -> (workflow, hash from the event)
        self.parsed: dict[int, Workflow | str] = {}
        #: head id -> transaction hash of the submission (which one the id stands for, should a reorg reuse it).
        self.submissions: dict[int, str] = {}

    def forget(self) -> None:
        """A reorg: a job id may now stand for another submission, so nothing cached is trusted any more."""
        self.raw.clear()
        self.parsed.clear()
        self.submissions.clear()

    def submission(self, job: Job) -> str | None:
        """Transaction hash of the submission of the job's array (None if the node has no event for it)."""
        try:
            self._bytes(job)
        except LookupError:
            return None
        return self.submissions.get(job.head_id or job.id)

    def checked(self, job: Job) -> Workflow | str:
        """The job's workflow, checked against the on-chain hash and parsed (once per job array), or the problem."""
        head = job.head_id or job.id
        found = self.parsed.get(head)
        if found is not None:
            return found
        try:
            raw, workflow_hash = self._bytes(job)
        except LookupError as e:
            return f"workflow not found: {e}"  # not cached: the node may serve it later
        result: Workflow | str
        if keccak(raw) != workflow_hash:
            result = "workflow hash mismatch: the submitted bytes do not hash to the on-chain hash"
        else:
            try:
                result = from_canonical(raw)
            except WorkflowError as e:
                result = f"workflow does not parse: {e}"
        self.parsed[head] = result
        return result

    def _bytes(self, job: Job) -> tuple[bytes, bytes]:
        """The workflow of the job's array and its hash, both from the submission event."""
        head = job.head_id or job.id
        raw = self.raw.get(head)
        if raw is None:
            logs = self.client.market.events.JobSubmitted().get_logs(
                from_block=self.from_block, argument_filters={"firstJobId": head}
            )
            if not logs:
                raise LookupError(f"no JobSubmitted event for job {head}")
            args = logs[0]["args"]
            raw = self.raw[head] = (bytes(args["workflow"]), bytes(args["workflowHash"]))
            self.submissions[head] = logs[0]["transactionHash"].to_0x_hex()
        return raw


def problem(job: Job, workflows: Workflows, executor: Executor, cache: TickCache) -> tuple[str | None, bool]:
    """Why this worker cannot run the job (None if it can), and whether that is passing: an engine that does
    not answer, or shows no usable capacity (a Slurm controller restarting lists its nodes as unknown), is
    asked again next tick; only a definite, lasting mismatch refuses the job."""
    wf = workflows.checked(job)
    if isinstance(wf, str):
        return wf, False
    if wf.resources != job.resources and wf.resources != dataclasses.replace(job.resources, disk_gb=0):
        return f"resources mismatch: workflow asks {wf.resources}, chain request {job.resources}", False
    try:
        capacity = cache.get("capacity", executor.capacity)
        features = cache.get("features", executor.features) if wf.gpus else frozenset()
    except ExecutorError as e:
        return f"the {executor.name} engine does not answer ({e})", True
    if capacity.cpus <= 0:
        return f"the {executor.name} engine shows no usable capacity right now", True
    if not job.resources.fits_in(capacity):
        return f"resources: needs {job.resources}, this machine has {capacity}", False
    if wf.gpus and "gpus" not in features:
        return "unsupported feature: gpus", False
    return None, False
