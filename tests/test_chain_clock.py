"""The end time a worker's FINISH report carries (:class:`dsq_chain.services.chain_clock.ChainClock`), on Anvil.

A job first read as ended by the tick after one that read it running is billed to the chain time of that
tick, even when the engine recorded its end before that earlier tick began (an engine writes its state a
little after the end: the local supervisor's state file, Slurm's accounting). A job whose end no tick saw
coming (a restarted worker) is worked back from how long ago the engine says it ended.
"""

from __future__ import annotations

import time

from dsq_chain.executors import ExecState
from dsq_chain.executors.base import ExecStatus
from dsq_chain.sdk.chain import Chain
from dsq_chain.services.chain_clock import ChainClock
from dsq_chain.services.job_checks import TickCache

RUNNING = ExecStatus(ExecState.RUNNING, None, True)


def _ended(seconds_ago: float) -> ExecStatus:
    return ExecStatus(ExecState.COMPLETED, 0, True, ended_at=time.time() - seconds_ago)


class Ticks:
    """A worker's ticks as the clock sees them."""

    def __init__(self, chain: Chain) -> None:
        self.cache = TickCache()
        self.clock = ChainClock(chain, self.cache)

    def tick(self) -> None:
        self.cache.clear()
        self.clock.begin_tick()

    def chain_now(self) -> int:
        assert self.clock.last is not None
        return self.clock.last[0]


def test_an_end_read_by_the_tick_after_one_that_read_the_job_running_bills_to_that_tick(chain: Chain) -> None:
    t = Ticks(chain)
    t.tick()
    t.clock.observe(7, RUNNING)
    t.tick()
    late = _ended(20.0)  # the engine says the job ended 20 s ago, but the previous tick still read it running
    t.clock.observe(7, late)
    end = t.clock.end_time(7)
    assert t.chain_now() <= end <= t.chain_now() + 1, (end, t.chain_now())
    assert t.clock.end_time(7, _ended(100.0)) == end, "an end once worked out is kept"


def test_an_end_no_tick_saw_coming_is_worked_back_from_the_engines_end(chain: Chain) -> None:
    t = Ticks(chain)  # a restarted worker: no tick has read the job
    t.tick()
    t.clock.observe(8, _ended(20.0))
    end = t.clock.end_time(8)
    assert t.chain_now() - 21 <= end <= t.chain_now() - 19, (end, t.chain_now())


def test_a_tick_that_did_not_read_the_job_makes_its_end_unseen(chain: Chain) -> None:
    t = Ticks(chain)
    t.tick()
    t.clock.observe(9, RUNNING)
    t.tick()  # this tick never read the engine (it failed before, the node was down)
    t.tick()
    t.clock.observe(9, _ended(20.0))
    end = t.clock.end_time(9)
    assert t.chain_now() - 21 <= end <= t.chain_now() - 19, (end, t.chain_now())
    t.clock.forget(9)
    t.tick()
    t.clock.observe(9, RUNNING)  # the id again (a later assignment): a fresh end
    t.tick()
    t.clock.observe(9, _ended(20.0))
    assert t.chain_now() <= t.clock.end_time(9) <= t.chain_now() + 1
