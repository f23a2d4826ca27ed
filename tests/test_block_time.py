"""Scheduler and worker on real block times: Anvil mining a block every 2 s (as ``--block-time 2`` does), the
scheduler trusting events only ``confirmations`` blocks deep.

Latency is then counted in blocks: a job submitted in block S is assigned in block S + confirmations + 1, the
next block after its submission is confirmed; the worker then runs it to FINISHED.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import pytest

from dsq_chain.executors import LocalExecutor
from dsq_chain.sdk.anvil import start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.events import JobAssigned, JobSubmitted
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.services.worker import ProviderWorker
from dsq_chain.types import JobStatus
from tests.grid import build_grid
from tests.test_scheduler import job_events, make_workflow, submit

BLOCK_TIME_S = 2
EU = make_workflow(cpus=1, labels=("zone == eu",), tag="blocks")  # only the grid's cpu provider (our worker) fits


class _Runs(Protocol):
    def run(self, stop: threading.Event) -> None: ...


@contextmanager
def running(*services: _Runs) -> Iterator[None]:
    stop = threading.Event()
    threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in services]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(20)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("confirmations", [0, 2])
def test_assignment_in_the_next_block_after_the_submission_is_confirmed(
    keys: list[str], tmp_path: Path, confirmations: int
) -> None:
    with start_anvil() as node:
        chain = Chain(node.rpc_url)
        grid = build_grid(chain, keys)  # deployed with automine (fast), then blocks every 2 s from here on
        chain.call_rpc("evm_setAutomine", [False])
        chain.call_rpc("evm_setIntervalMining", [BLOCK_TIME_S])
        sched = MetaScheduler(chain.wallet(keys[1]), grid.deployment, confirmations=confirmations)
        worker = ProviderWorker(chain.wallet(keys[5]), grid.deployment, LocalExecutor(tmp_path / "exec"),
                                tmp_path / "worker", poll_interval=0.1)
        try:
            with running(sched, worker):
                time.sleep(BLOCK_TIME_S)  # both caught up
                ids = submit(grid.user, EU, count=2)
                for job_id in ids:
                    assert grid.user.wait_for(job_id, timeout=90).status is JobStatus.FINISHED
        finally:
            worker.close()
        submitted = {e.first_job_id: e.block_number for e in job_events(grid, "JobSubmitted")
                     if isinstance(e, JobSubmitted)}
        assigned = {e.job_id: e.block_number for e in job_events(grid, "JobAssigned") if isinstance(e, JobAssigned)}
        s = submitted[ids[0]]
        blocks = {j: assigned[j] - s for j in ids}
        print(f"\nblock time {BLOCK_TIME_S} s, confirmations {confirmations}: assigned {blocks} block(s) after the "
              f"submission's block (target {confirmations + 1})")
        assert all(b == confirmations + 1 for b in blocks.values()), blocks
