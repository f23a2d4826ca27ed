"""Server-sent events from the index: every job change as it is indexed, per filter or per job.

The index counts its changes (``version``) and rows carry the number of the change that last touched
them, so a stream asks "what changed after N?" every :data:`POLL_S` seconds: a status change shows on
an open page within that plus the indexer's own poll. A reorg bumps the index's ``epoch``; streams then
send ``reload`` (the page re-reads the list without reloading itself). Idle streams send a comment every
:data:`KEEPALIVE_S` seconds so that proxies keep them open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from dsq_chain.services.index import IndexReader

POLL_S = 0.2
KEEPALIVE_S = 15.0


def message(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def job_changes(
    request: Request,
    reader: IndexReader,
    wanted: Callable[[dict[str, Any]], bool],
    detail: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> AsyncIterator[str]:
    """Each changed job that ``wanted`` accepts, as ``event: job`` (``detail`` may replace it by a fuller view)."""
    head = await run_in_threadpool(reader.head)
    last, epoch = head["version"], head["epoch"]
    yield "retry: 1000\n" + message("head", head)
    quiet_since = time.monotonic()
    while not await request.is_disconnected():
        await asyncio.sleep(POLL_S)
        head = await run_in_threadpool(reader.head)
        if head["epoch"] != epoch:
            epoch, last = head["epoch"], head["version"]
            yield message("reload", head)
            quiet_since = time.monotonic()
            continue
        while head["version"] > last:
            changed = await run_in_threadpool(reader.changes, last)
            if not changed:
                last = head["version"]
                break
            for job in changed:
                last = max(last, job["version"])
                if wanted(job):
                    view = job if detail is None else await run_in_threadpool(detail, job)
                    if view is not None:
                        yield message("job", view)
                        quiet_since = time.monotonic()
            yield message("head", head)
        if time.monotonic() - quiet_since > KEEPALIVE_S:
            yield ": keepalive\n\n"
            quiet_since = time.monotonic()
