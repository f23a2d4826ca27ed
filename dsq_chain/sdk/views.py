"""The contract's view tuples as typed records: ``getJob``'s JobView as a :class:`~dsq_chain.types.Job`
(with its bill once known), ``getProvider``'s ProviderView as a :class:`~dsq_chain.types.Provider`.

The sync and async clients and the raw job reader decode with these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_utils.address import to_checksum_address

from dsq_chain.money import Credits
from dsq_chain.sdk.events import JobSettled
from dsq_chain.sdk.signers import ZERO_ADDRESS
from dsq_chain.types import Job, JobStatus, Prices, Provider, ProviderStatus, Resources


def job_from_view(v: Sequence[Any]) -> Job:
    """A ``JobView`` tuple from the contract as a :class:`Job`."""
    (jid, owner, status, provider, escrow, rate, since, max_rate, cpus, gpus, mem, disk, labels_hash, head) = v
    return Job(
        id=int(jid),
        owner=to_checksum_address(owner),
        status=JobStatus(status),
        resources=Resources(int(cpus), int(gpus), int(mem), int(disk)),
        max_rate=Credits(units=int(max_rate)),
        escrow=Credits(units=int(escrow)),
        provider=None if provider == ZERO_ADDRESS else to_checksum_address(provider),
        rate=Credits(units=int(rate)),
        since=int(since),
        labels_hash=bytes(labels_hash),
        head_id=int(head),
    )


def provider_from_view(v: Sequence[Any]) -> Provider:
    addr, pid, status, paused, total, free, prices = v
    return Provider(
        address=to_checksum_address(addr),
        id=int(pid),
        status=ProviderStatus(status),
        paused=bool(paused),
        total=Resources(*map(int, total)),
        free=Resources(*map(int, free)),
        prices=Prices.from_units(*map(int, prices)),
        persistent_gb=int(total[4]),
    )


def bill_of(job: Job, settled: JobSettled | None, so_far: int | None) -> Job:
    """``job`` with ``billed``/``refunded`` from its ``JobSettled`` event, or the bill so far."""
    from dataclasses import replace

    if settled is not None:
        return replace(job, billed=Credits(units=settled.billed), refunded=Credits(units=settled.refunded))
    if so_far is not None:
        return replace(job, billed=Credits(units=so_far))
    return job
