"""Two meta-schedulers at once, as docs/operations.md describes: both active, or a standby that takes over.

No job is assigned twice (the chain refuses a second assignment; a batch that lost a race is matched
again), nothing is lost when either stops, and a standby leaves the work to the active one while it runs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import JobStatus
from tests.grid import Grid
from tests.test_scheduler import EXTRA_KEYS, assignments_per_job, job_events, make_workflow, submit

ONE_CPU = make_workflow(cpus=1, mem_per_cpu=64, tag="one")


@contextmanager
def running(sched: MetaScheduler) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=sched.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(20)
        assert not thread.is_alive(), "the scheduler did not stop"


def scheduler_with(grid: Grid, key_index: int, **kw: float) -> MetaScheduler:
    wallet = grid.chain.wallet(EXTRA_KEYS[key_index])
    grid.admin.grant_scheduler(wallet.address)
    return MetaScheduler(wallet, grid.deployment, poll_interval=0.05, **kw)


def wait_assigned(grid: Grid, ids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(grid.user.job(i).status is JobStatus.META_SCHEDULED for i in ids):
            return
        time.sleep(0.1)
    raise AssertionError(f"not all of {ids} assigned within {timeout} s")


def assigners(grid: Grid) -> Counter[str]:
    """Who sent the transactions that assigned jobs: sender -> jobs."""
    out: Counter[str] = Counter()
    for ev in job_events(grid, "JobAssigned"):
        tx = grid.chain.w3.eth.get_transaction(ev.tx_hash)  # type: ignore[arg-type]
        out[tx["from"]] += 1
    return out


def test_two_active_schedulers_assign_every_job_once(grid: Grid) -> None:
    a, b = scheduler_with(grid, 4), scheduler_with(grid, 5)
    ids: list[int] = []
    with running(a), running(b):
        for n in range(10):
            ids += submit(grid.users[n % 3], ONE_CPU, count=2)
            time.sleep(0.05)
        wait_assigned(grid, ids)
    assert assignments_per_job(grid) == Counter(ids), "a job was assigned twice (or not at all)"


def test_a_standby_leaves_the_work_to_the_active_one_and_takes_over_when_it_stops(grid: Grid) -> None:
    active, standby = scheduler_with(grid, 4), scheduler_with(grid, 5, standby_s=1.5)
    first: list[int] = []
    with running(standby):
        with running(active):
            for n in range(5):
                first += submit(grid.users[n % 3], ONE_CPU, count=2)
            wait_assigned(grid, first)
            time.sleep(2.0)  # past the standby's delay: it must still have left everything to the active one
            assert assigners(grid) == Counter({active.wallet.address: len(first)})
        # The active scheduler is gone (stopped here; a kill -9 leaves no more state behind: all is on chain).
        t0 = time.monotonic()
        second = submit(grid.user, ONE_CPU, count=4)
        wait_assigned(grid, second)
        took = time.monotonic() - t0
    assert assignments_per_job(grid) == Counter(first + second)
    assert assigners(grid) == Counter({active.wallet.address: len(first), standby.wallet.address: len(second)})
    assert 1.0 <= took < 20, f"the standby took over after {took:.1f} s (its delay is 1.5 s)"
