"""Two meta-schedulers at once, as docs/operations.md describes: both active, or a standby that takes over.

Both active (each given the other as ``peers``): each takes its own share of the jobs at once and the other's
only after ``takeover_s``, so no transaction reverts and no batch entry is spent on a job the other took;
killing either loses nothing. A standby leaves the work to the active one while it runs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from dsq_chain.errors import InputError
from dsq_chain.executors import LocalExecutor
from dsq_chain.sdk.client import skipped_entries
from dsq_chain.sdk.events import RoleGranted, RoleRevoked
from dsq_chain.services.scheduler import MetaScheduler, RoundResult
from dsq_chain.services.shares import Shares
from dsq_chain.services.worker import ProviderWorker
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


def scheduler_with(grid: Grid, key_index: int, **kw: Any) -> MetaScheduler:
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


def scheduler_txs(grid: Grid, senders: set[str], first_block: int) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Transactions sent by ``senders`` since ``first_block``: sent and reverted per sender, and the batch
    entries the chain skipped, by the error it named."""
    sent: Counter[str] = Counter()
    reverted: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    eth = grid.chain.w3.eth
    for number in range(first_block, eth.block_number + 1):
        for tx in eth.get_block(number, full_transactions=True)["transactions"]:
            assert isinstance(tx, Mapping)
            if tx["from"] not in senders:
                continue
            receipt = eth.get_transaction_receipt(tx["hash"])
            sent[tx["from"]] += 1
            reverted[tx["from"]] += receipt["status"] == 0
            skipped.update(type(e).__name__ for e in skipped_entries(grid.scheduler.market, receipt).values())
    return sent, reverted, skipped


def test_two_active_schedulers_share_the_jobs_without_a_revert_and_survive_a_kill(grid: Grid, tmp_path: Path) -> None:
    """120 jobs through two active schedulers and three workers; one scheduler dies halfway: every job
    finishes, each assigned once, no transaction of either scheduler reverted, no entry raced the other."""
    peers = [grid.chain.wallet(EXTRA_KEYS[i]).address for i in (4, 5)]
    a, b = (scheduler_with(grid, i, peers=peers, takeover_s=3.0) for i in (4, 5))
    first_block = grid.chain.w3.eth.block_number + 1
    workers = [ProviderWorker(p.wallet, grid.deployment, LocalExecutor(tmp_path / f"exec{i}", kill_grace_s=1.0),
                              tmp_path / f"state{i}", poll_interval=0.1)
               for i, p in enumerate((grid.cpu, grid.gpu, grid.spare))]
    stop_workers = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop_workers,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    ids: list[int] = []
    try:
        with running(a):
            with running(b):
                for n in range(30):
                    ids += submit(grid.users[n % 3], ONE_CPU, count=2)
                    time.sleep(0.05)
                wait_assigned_or_later(grid, ids[:40])
            assert b.shares.active == tuple(sorted((a.wallet.address, b.wallet.address), key=str.lower))
            # b is gone (a kill -9 leaves nothing more behind: all is on chain); its share goes to a.
            for n in range(30):
                ids += submit(grid.users[n % 3], ONE_CPU, count=2)
                time.sleep(0.05)
            wait_final(grid, ids, timeout=180)
    finally:
        stop_workers.set()
        for t in threads:
            t.join(20)
    assert all(j.status is JobStatus.FINISHED for j in grid.user.jobs(ids))
    assert assignments_per_job(grid) == Counter(ids), "a job was assigned twice (or not at all)"
    by = assigners(grid)
    assert by[a.wallet.address] > 60 and by[b.wallet.address] > 10, by
    sent, reverted, skipped = scheduler_txs(grid, {a.wallet.address, b.wallet.address}, first_block)
    assert sum(reverted.values()) == 0, f"reverted transactions: {reverted} of {sent}"
    # InvalidStatus: the job was no longer PENDING (the other scheduler took it). A capacity race on a nearly
    # full provider (InsufficientCapacity) may still skip an entry: the job is matched again at once.
    assert skipped["InvalidStatus"] == 0, skipped


def wait_assigned_or_later(grid: Grid, ids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(j.status is not JobStatus.PENDING for j in grid.user.jobs(ids)):
            return
        time.sleep(0.1)
    raise AssertionError(f"not all of {ids} assigned within {timeout} s")


def wait_final(grid: Grid, ids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(j.status.is_final for j in grid.user.jobs(ids)):
            return
        time.sleep(0.5)
    left = Counter(j.status.name for j in grid.user.jobs(ids))
    raise AssertionError(f"not all jobs final within {timeout} s: {left}")


EV: dict[str, Any] = {"block_number": 1, "block_hash": "0x" + "00" * 32, "tx_hash": "0x" + "00" * 32, "log_index": 0}


def test_shares_follow_the_role_and_take_the_others_jobs_late() -> None:
    me, other, stranger = (f"0x{n:040x}" for n in (0xB, 0xA, 0xC))
    role = keccak(text="SCHEDULER_ROLE")
    shares = Shares(me, [other, stranger], takeover_s=4.0, role=role)
    assert list(shares.active) == [to_checksum_address(me)] and shares.delay(1) == 0.0, "no peer holds the role"
    shares.on_event(RoleGranted(**EV, role=role, account=other, sender=me))
    shares.on_event(RoleGranted(**EV, role=b"\x01" * 32, account=stranger, sender=me))  # another role
    assert list(shares.active) == [to_checksum_address(other), to_checksum_address(me)]
    assert [shares.delay(j) for j in range(4)] == [4.0, 0.0, 4.0, 0.0]
    shares.on_event(RoleRevoked(**EV, role=role, account=other, sender=me))
    assert shares.delay(0) == 0.0, "a revoked peer's share is taken at once"
    with pytest.raises(InputError, match="peer 'nope' is not an address"):
        Shares(me, ["nope"])


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


class Counting(MetaScheduler):
    rounds = 0

    def round(self, *, max_attempts: int = 3, synced: bool = False) -> RoundResult:
        self.rounds += 1
        return super().round(max_attempts=max_attempts, synced=synced)


def test_jobs_left_to_another_scheduler_do_not_keep_the_loop_busy(grid: Grid) -> None:
    """A standby holding jobs back waits for blocks like an idle scheduler (it ran a round per loop before)."""
    wallet = grid.chain.wallet(EXTRA_KEYS[5])
    grid.admin.grant_scheduler(wallet.address)
    standby = Counting(wallet, grid.deployment, poll_interval=0.05, standby_s=30)
    ids = submit(grid.user, ONE_CPU, count=3)
    with running(standby):
        time.sleep(2.0)
    assert all(grid.user.job(i).status is JobStatus.PENDING for i in ids), "the standby's delay has not passed"
    assert standby.rounds <= 3, f"{standby.rounds} rounds in 2 s for jobs held back"


def test_each_active_scheduler_sweeps_its_own_share_of_expired_claims_first(grid: Grid) -> None:
    """Two active schedulers would both send timeoutClaim for the same job (with block times, the second is mined
    and reverts): a peer's expired claims wait ``takeover_s`` more (chain time) before this one sweeps them."""
    ids = submit(grid.user, ONE_CPU, count=4)
    MetaScheduler(grid.scheduler.wallet, grid.deployment).round()  # a third scheduler assigned them all
    peers = [grid.chain.wallet(EXTRA_KEYS[i]).address for i in (4, 5)]
    a = scheduler_with(grid, 4, peers=peers, takeover_s=100.0)
    scheduler_with(grid, 5)  # b holds the role; it does not run
    a.sync()
    mine = [j for j in ids if a.shares.owner(j) == a.wallet.address]
    assert len(a.shares.active) == 2 and 0 < len(mine) < len(ids)
    grid.chain.increase_time(a.claim_timeout + 1)
    assert sorted(a.sweep_claim_timeouts()) == mine, "only its own share at first"
    grid.chain.increase_time(100)
    assert sorted(a.sweep_claim_timeouts()) == sorted(set(ids) - set(mine)), "the peer's after takeover_s"
    assert all(grid.user.job(j).status is JobStatus.PENDING for j in ids)
