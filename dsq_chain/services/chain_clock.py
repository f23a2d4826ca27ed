"""Chain time as a provider worker needs it: when a running job's escrow is used up, and when a job ended.

The chain bills from block timestamps, so the worker asks the node (the pending block's timestamp: the
one a report would land in). During an outage it counts on from the last chain time it read, so a
FINISH reported late still bills only up to when the job ended: the time it was first seen ended, less
how long ago the engine says it ended (so a worker restarted after the outage bills no more either).

Time limits: the executor enforces the limit the escrow buys (computed when the job is submitted,
raised after a top-up). The chain bills from the block of the start report, so chain time may not
agree yet when the executor's limit fires: OUT_OF_CREDITS is retried until it does. The other way
round (Slurm's limits are whole minutes, checked every 30 s), the worker reports OUT_OF_CREDITS
itself :data:`ENFORCE_GRACE_S` after chain time says the escrow is used up, then stops the job.
"""

from __future__ import annotations

import time

from dsq_chain.executors import ExecStatus
from dsq_chain.sdk.chain import Chain
from dsq_chain.services.job_checks import TickCache
from dsq_chain.services.reports import CHAIN_DOWN
from dsq_chain.types import Job

#: Seconds after chain time says a running job's escrow is used up before the worker ends it itself
#: (the executor's own limit normally ends it first; Slurm's may fire up to ~30 s late).
ENFORCE_GRACE_S = 2.0


class ChainClock:
    """The chain's time, read at most once per tick for the escrow checks; remembers when jobs ended."""

    def __init__(self, chain: Chain, tick: TickCache) -> None:
        self.chain = chain
        self.tick = tick
        #: Chain time a finished job was first seen ended: billed up to it even if the report lands later.
        self.ended_at: dict[int, int] = {}
        self.last: tuple[int, float] | None = None  # last chain time read, and time.monotonic() then
        self._running_now: set[int] = set()  # jobs this tick read as not ended
        self._running_before: set[int] = set()  # jobs the previous tick read as not ended

    def begin_tick(self) -> None:
        """Called as each tick begins. A job the previous tick read as still running and this one reads as
        ended is seen at the first chance: it is billed to the chain time of this tick (no wall-clock
        arithmetic, so exact where the chain's clock does not follow the wall's). A job read as ended that
        the previous tick did not read as running went unseen (worker down, a tick that failed before it
        read the engine, a restart), so its end is worked back from how long ago the engine saw it end.

        What the previous tick *read* decides, not when the engine says the job ended: an engine records
        the end a little after it happens (the local supervisor writes its state file, Slurm its
        accounting), so a tick may begin after the end and still read the job running."""
        self._running_before, self._running_now = self._running_now, set()

    def observe(self, job_id: int, ex: ExecStatus, *, reachable: bool = True) -> None:
        """Notes one execution state read this tick: a running job, or (worked out at once) a job's end."""
        if ex.state.is_final:
            self.end_time(job_id, ex, reachable=reachable)
        else:
            self._running_now.add(job_id)

    def now(self) -> int | None:
        """Timestamp of the block being built (the one a report would land in); None while the node is down."""
        try:
            now = self.chain.timestamp("pending")
        except CHAIN_DOWN:
            return None
        self.last = (now, time.monotonic())
        return now

    def escrow_used_up(self, job: Job) -> bool:
        """True once chain time is :data:`ENFORCE_GRACE_S` past what the escrow pays for."""
        now = self.tick.get("now", self.now)
        if now is None or job.rate <= 0:
            return False
        return job.rate * max(0, int(now - ENFORCE_GRACE_S) - job.since) // 60 >= job.escrow

    def end_time(self, job_id: int, ex: ExecStatus | None = None, *, reachable: bool = True) -> int:
        """Chain time the job ended, worked out when first seen ended: chain time now (asked only while the
        node is ``reachable``; else the last chain time read plus the time since), less how long ago the
        engine saw it end when ``ex`` says so and the end went unseen by the previous tick (see
        :meth:`begin_tick`);
        0 if no chain time was ever read (the report's block time)."""
        if job_id not in self.ended_at:
            if reachable:
                self.tick.get("now", self.now)  # read once a tick (not once a job), counted on from there
            clock = self.last
            now = None if clock is None else clock[0] + int(time.monotonic() - clock[1])
            if now and ex is not None and ex.ended_at is not None and job_id not in self._running_before:
                now -= round(max(0.0, time.time() - ex.ended_at))
            self.ended_at[job_id] = now or 0
        return self.ended_at[job_id]

    def forget(self, job_id: int) -> None:
        """The job's outcome is on chain: its end time is no longer needed."""
        self.ended_at.pop(job_id, None)
