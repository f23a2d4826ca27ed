"""A submission checked before anything is sent: the amounts, the workflow (a Workflow, its file, its
text or canonical bytes), the contract's limits and the ``JobRequest`` tuple; :func:`external_ref`
encodes an Akash deployment as a submission's external reference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_utils.address import to_checksum_address

from dsq_chain import artifacts
from dsq_chain.errors import InputError
from dsq_chain.money import Credits
from dsq_chain.sdk.placement import ChainLabel, placement_labels
from dsq_chain.types import LabelConstraint, Resources

if TYPE_CHECKING:
    from dsq_chain.workloads.workflow import Workflow

MAX_WORKFLOW_BYTES = artifacts.constant("MAX_WORKFLOW_BYTES")
MAX_JOB_LABELS = artifacts.constant("MAX_JOB_LABELS")
MAX_ARRAY_JOBS = artifacts.constant("MAX_ARRAY_JOBS")
UINT56_MAX = 2**56 - 1
UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class PreparedSubmission:
    """A submission checked before sending: the workflow, amounts and the contract call's arguments."""

    workflow: Workflow
    escrow: Credits
    max_rate: Credits
    count: int
    args: tuple[Any, ...]  # (request, labels, workflow bytes, count) of submit / submitWithPermit

    @property
    def total(self) -> Credits:
        """The escrow of every job of the array together."""
        return Credits(units=self.escrow * self.count)


def prepare_submission(
    workflow: Workflow | bytes | str | os.PathLike[str],
    credits: Credits | str,
    max_rate: Credits | str,
    count: int = 1,
    resources: Resources | None = None,
    labels: Sequence[LabelConstraint] | None = None,
    *,
    providers: Sequence[str] = (),
    exclude: Sequence[str] = (),
    external_ref: bytes = b"",
) -> PreparedSubmission:
    """Everything :meth:`GridClient.submit` checks without the chain: amounts, the workflow (and that
    ``resources``/``labels``, when given, agree with it), limits. Raises InputError, WorkflowError."""
    from dsq_chain.workloads.labels import on_chain  # the label encoding lives with the label parser

    escrow = Credits.of(credits, "credits")
    cap = Credits.of(max_rate, "max_rate")
    wf = workflow_of(workflow)
    if resources is not None and resources != wf.resources:
        raise InputError(f"resources={resources} disagree with the workflow's, which asks for {wf.resources}: "
                         "pass the Workflow alone and its resources are used")
    if labels is not None and tuple(labels) != wf.labels:
        raise InputError(f"labels={[str(c) for c in labels]} disagree with the workflow's "
                         f"{[str(c) for c in wf.labels]}: pass the Workflow alone and its labels are used")
    raw = wf.canonical()
    chain_labels = on_chain(wf.labels) + placement_labels(providers, exclude)
    request = _job_request(wf.resources, cap, escrow, external_ref)
    _check_submission(raw, chain_labels, count)
    return PreparedSubmission(wf, escrow, cap, count, (request, chain_labels, raw, count))


def workflow_of(workflow: Workflow | bytes | str | os.PathLike[str]) -> Workflow:
    """A Workflow from itself, a file path, YAML/JSON text or canonical bytes (which must parse)."""
    from dsq_chain.workloads import workflow as wfmod

    if isinstance(workflow, wfmod.Workflow):
        return workflow
    if isinstance(workflow, (bytes, bytearray, memoryview)):
        try:
            return wfmod.from_canonical(bytes(workflow))
        except wfmod.WorkflowError as e:
            raise InputError(f"workflow bytes are not a canonical workflow (Workflow.canonical()): {e}; "
                             "pass the Workflow, its file or its text instead") from None
    if isinstance(workflow, os.PathLike):
        return wfmod.load(workflow)
    if isinstance(workflow, str):
        one_line = "\n" not in workflow and len(workflow) < 4096
        if one_line and Path(workflow).is_file():
            return wfmod.load(workflow)
        if one_line and workflow.strip().endswith((".yaml", ".yml", ".json")):
            raise InputError(f"workflow file {workflow} not found")
        return wfmod.loads(workflow)
    raise InputError(f"workflow must be a Workflow, a path, YAML/JSON text or canonical bytes, got "
                     f"{type(workflow).__name__}")


def top_up_units(amount: Credits | str) -> Credits:
    """A top-up's ``amount``, checked: positive and within a job's escrow (uint64). Raises InputError."""
    units = Credits.of(amount, "amount")
    if not 0 < units <= UINT64_MAX:
        raise InputError(f"top-up amount must be positive and at most {Credits(units=UINT64_MAX)}, got {units}")
    return units


def _job_request(
    res: Resources, max_rate: int, credits: int, external_ref: bytes = b""
) -> tuple[int, int, int, int, int, int, bytes]:
    if not 1 <= res.cpus < 2**16:
        raise InputError(f"cpus must be 1..65535, got {res.cpus}")
    if not 0 <= res.gpus < 2**8:
        raise InputError(f"gpus must be 0..255, got {res.gpus}")
    if not 1 <= res.mem_mb < 2**32:
        raise InputError(f"memory must be 1..{2**32 - 1} MB, got {res.mem_mb}")
    if not 0 < max_rate <= UINT56_MAX:
        raise InputError(f"price cap (max_rate) must be positive and at most {Credits(units=UINT56_MAX)} per "
                         f"minute, got {Credits(units=max_rate)}")
    if not 0 < credits <= UINT64_MAX:
        raise InputError(f"credits must be positive and at most {Credits(units=UINT64_MAX)}, "
                         f"got {Credits(units=credits)}")
    if not 0 <= res.disk_gb < 2**16:
        raise InputError(f"scratch disk must be 0..65535 GB per job, got {res.disk_gb}")
    if len(external_ref) > 32:
        raise InputError(f"an external reference is at most 32 bytes, got {len(external_ref)}")
    return (res.cpus, res.gpus, res.mem_mb, int(max_rate), int(credits), res.disk_gb, external_ref.rjust(32, b"\0"))


def _check_submission(workflow: bytes, labels: Sequence[ChainLabel], count: int) -> None:
    if not workflow:
        raise InputError("the workflow is empty")
    if len(workflow) > MAX_WORKFLOW_BYTES:
        raise InputError(f"the workflow is {len(workflow)} bytes; the limit is {MAX_WORKFLOW_BYTES}")
    if len(labels) > MAX_JOB_LABELS:
        raise InputError(f"{len(labels)} label constraints; the limit is {MAX_JOB_LABELS}")
    if not 1 <= count <= MAX_ARRAY_JOBS:
        raise InputError(f"a job array holds 1..{MAX_ARRAY_JOBS} jobs, got {count}")


def external_ref(owner: str, dseq: int) -> bytes:
    """A 32-byte external reference for an Akash deployment: the owner's address then the dseq (uint64)."""
    if not 0 <= dseq < 2**64:
        raise InputError(f"dseq must be 0..2**64-1, got {dseq}")
    return bytes.fromhex(to_checksum_address(owner)[2:]) + dseq.to_bytes(8, "big") + b"\0" * 4
