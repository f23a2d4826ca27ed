"""The worker's batched ``getJob`` reader against the compiled ABI and the chain.

``job_from_view`` unpacks ``JobView`` by position and ``JobReader`` slices its words by hand: a field
added, removed or moved in the contract must fail here, field by field and by name, not shift values
quietly into the wrong ``Job`` attribute.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from dsq_chain import artifacts
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import job_from_view
from dsq_chain.sdk.job_reader import JobReader
from dsq_chain.types import Job, JobStatus
from tests.grid import Grid

GET_JOB = next(i for i in artifacts.abi("JobMarket") if i.get("type") == "function" and i["name"] == "getJob")
FIELDS = GET_JOB["outputs"][0]["components"]

#: One distinct value per JobView field, by the ABI's name.
VALUES: dict[str, Any] = {
    "id": 7, "owner": "0x" + "11" * 20, "status": int(JobStatus.RUNNING), "provider": "0x" + "22" * 20,
    "escrow": 1_000_003, "rate": 13, "since": 1_234_567, "maxRate": 21, "cpus": 4, "gpus": 2, "memMB": 512,
    "diskGB": 9, "labelsHash": b"\x07" * 32, "headId": 5,
}


def _as_job(job: Job) -> dict[str, Any]:
    """What ``job`` holds for each JobView field, by the ABI's name."""
    return {
        "id": job.id, "owner": job.owner.lower(), "status": int(job.status),
        "provider": (job.provider or "").lower(), "escrow": int(job.escrow), "rate": int(job.rate),
        "since": job.since, "maxRate": int(job.max_rate), "cpus": job.resources.cpus, "gpus": job.resources.gpus,
        "memMB": job.resources.mem_mb, "diskGB": job.resources.disk_gb, "labelsHash": job.labels_hash,
        "headId": job.head_id,
    }


def _reader() -> JobReader:
    return JobReader(cast(Chain, None), "0x" + "00" * 20)  # decoding only: no node is asked


def _encoded() -> bytes:
    return abi_encode([str(f["type"]) for f in FIELDS], [VALUES[f["name"]] for f in FIELDS])


def test_the_tests_values_name_every_jobview_field() -> None:
    assert [f["name"] for f in FIELDS] == list(VALUES)


def test_selector_is_getjobs_from_the_abi() -> None:
    assert _reader().selector == keccak(text="getJob(uint256)")[:4]


@pytest.mark.parametrize("by_words", [True, False], ids=["words", "eth_abi"])
def test_both_decodings_give_every_field_to_its_job_attribute(by_words: bool) -> None:
    reader = _reader()
    assert reader._words is not None  # JobView is static: the fast path is the one the worker takes
    if not by_words:
        reader._words = None
    view = reader.view(_encoded())
    (generic,) = abi_decode([f"({','.join(str(f['type']) for f in FIELDS)})"], _encoded())  # a static tuple
    assert [str(v).lower() for v in view] == [str(v).lower() for v in generic]
    assert _as_job(job_from_view(view)) == VALUES


def test_reads_what_the_client_reads(grid: Grid) -> None:
    running = grid.job_in(JobStatus.RUNNING)
    pending = grid.job_in(JobStatus.PENDING)
    reader = JobReader(grid.chain, grid.deployment.market)
    got = reader.read([running, pending])
    for job in grid.user.jobs([running, pending]):
        assert _as_job(got[job.id]) == _as_job(job)
    # A job the contract does not have (its submission vanished in a reorg) is left out, not an error for all.
    assert set(reader.read([running, 999_999])) == {running}
