"""Every event about one job, in chain order, whether it was submitted alone or inside an array.

A job of an array has no ``JobSubmitted`` event under its own id: the array's event carries the
first id (``headId``) and the count. :func:`job_events` finds it from the job record, so callers
never need to know about array heads.
"""

from __future__ import annotations

from typing import Any

from dsq_chain import lifecycle
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import ChainEvent, EventDecoder, JobSettled, normalise_log, sort_events

#: The market's events of a job's lifecycle (the lifecycle table's, in its order).
JOB_EVENTS = lifecycle.EVENTS


def _topic(n: int) -> str:
    return "0x" + n.to_bytes(32, "big").hex()


def job_events(
    chain: Chain, deployment: Deployment, job_id: int, head_id: int = 0, *, names: tuple[str, ...] = JOB_EVENTS
) -> list[ChainEvent]:
    """The ``names`` events of ``job_id`` (its array's submission, found through ``head_id``, included),
    oldest first. Two ``eth_getLogs`` calls."""
    decoder = EventDecoder()
    common = {"address": deployment.market, "fromBlock": hex(deployment.block), "toBlock": "latest"}
    params: list[dict[str, Any]] = []
    own = [decoder.topics[n] for n in names if n != "JobSubmitted"]
    if own:
        params.append({**common, "topics": [own, _topic(job_id)]})
    if "JobSubmitted" in names:
        params.append({**common, "topics": [decoder.topics["JobSubmitted"], _topic(head_id or job_id)]})
    events = [decoder.decode(normalise_log(raw)) for p in params for raw in chain.call_rpc("eth_getLogs", [p]) or []]
    return sort_events(events)


def settlements(chain: Chain, deployment: Deployment, job_ids: list[int]) -> dict[int, JobSettled]:
    """The ``JobSettled`` event of each settled job of ``job_ids`` (one ``eth_getLogs`` per 500 ids)."""
    decoder = EventDecoder()
    out: dict[int, JobSettled] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start:start + 500]
        p = {"address": deployment.market, "fromBlock": hex(deployment.block), "toBlock": "latest",
             "topics": [decoder.topics["JobSettled"], [_topic(i) for i in chunk]]}
        for raw in chain.call_rpc("eth_getLogs", [p]) or []:
            ev = decoder.decode(normalise_log(raw))
            if isinstance(ev, JobSettled):
                out[ev.job_id] = ev
    return out


__all__ = ["JOB_EVENTS", "job_events", "settlements"]
