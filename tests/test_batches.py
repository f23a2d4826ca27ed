"""Batched calls: job arrays (one transaction, one permit), the scheduler's batch assignment and the
providers' batched reports. A batch applies the same checks per job as the single calls, and one bad
entry reverts the whole batch with that entry's named error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from web3.logs import DISCARD

from dsq_chain import errors
from dsq_chain.sdk.chain import Call
from dsq_chain.sdk.client import skipped_entries
from dsq_chain.types import CREDIT_UNIT, JobStatus, ReportAction, Resources
from dsq_chain.workloads.labels import on_chain, parse_constraint
from tests.grid import CREDITS, MAX_RATE, SMALL, WORKFLOW, Grid, workflow_for

S = JobStatus
A = ReportAction
A100 = [parse_constraint("gpu.model == A100")]
BIG_GPU_MEM = [parse_constraint("gpu.mem >= 40")]
#: 1 cpu, 512 MB: the cpu provider (8 cpus, 16 GB) holds eight of them.
TINY = Resources(1, 0, 512)


def _state(grid: Grid, job_ids: list[int]) -> list[Any]:
    """Everything a batch may change: the jobs, every provider's record, every internal balance."""
    f = grid.user.market.functions
    with grid.chain.w3.batch_requests() as batch:
        batch.add(f.jobCount())
        for job_id in job_ids:
            batch.add(f.getJob(job_id))
        for p in (grid.cpu, grid.gpu, grid.spare):
            batch.add(f.getProvider(p.address))
        for a in grid.accounts:
            batch.add(f.balanceOf(a))
        return list(batch.execute())


def _mined(client: Any, fn: Any) -> Any:
    """Sends ``fn`` as a mined transaction (explicit gas, no estimation)."""
    return client.wallet.transact(Call(fn, gas=5_000_000))


# ---------------------------------------------------------------------------------- job arrays
def test_job_array_of_50_is_one_transaction_with_one_permit(grid: Grid) -> None:
    user, token = grid.user, grid.user.token
    first_expected = user.job_count() + 1
    tokens0, block0 = user.token_balance(), grid.chain.block_number()
    assert token.functions.nonces(user.address).call() == 0
    assert token.functions.allowance(user.address, grid.deployment.market).call() == 0

    ids = grid.user.submit(WORKFLOW, resources=SMALL, credits=CREDITS, max_rate=MAX_RATE, count=50)

    assert grid.chain.block_number() == block0 + 1
    block = grid.chain.w3.eth.get_block(block0 + 1, full_transactions=True)
    (tx,) = block["transactions"]
    assert tx["from"] == user.address and tx["to"] == grid.deployment.market
    fn, _ = user.market.decode_function_input(tx["input"])
    assert fn.fn_name == "submitWithPermit"
    assert token.functions.nonces(user.address).call() == 1  # exactly one permit used
    assert token.functions.allowance(user.address, grid.deployment.market).call() == 0

    assert ids == list(range(first_expected, first_expected + 50))
    assert user.job_count() == first_expected + 49
    jobs = user.jobs(ids)
    assert {j.head_id for j in jobs} == {ids[0]}  # each job leads to its array's submission event
    assert all(j.status is S.PENDING and j.escrow == CREDITS and j.owner == user.address for j in jobs)
    assert tokens0 - user.token_balance() == 50 * CREDITS

    receipt = grid.chain.w3.eth.get_transaction_receipt(tx["hash"])
    (event,) = user.market.events.JobSubmitted().process_receipt(receipt, errors=DISCARD)
    assert (event["args"]["firstJobId"], event["args"]["count"]) == (ids[0], 50)
    assert event["args"]["workflow"] == WORKFLOW


def test_jobs_of_an_array_live_independently(grid: Grid) -> None:
    ids = grid.user.submit(WORKFLOW, resources=SMALL, credits=CREDITS, max_rate=MAX_RATE, count=3)
    grid.user.cancel(ids[1])
    grid.scheduler.assign(ids[2], grid.cpu.address)
    assert [j.status for j in grid.user.jobs(ids)] == [S.PENDING, S.CANCELED, S.META_SCHEDULED]
    assert grid.user.credits() == CREDITS


# ---------------------------------------------------------------------------------- batch assignment
def _submit_direct(
    grid: Grid, labels: list[list[Any]], *, max_rate: int = MAX_RATE, resources: Resources = SMALL
) -> list[int]:
    """One job per entry of ``labels``, sent straight to the contract in one JSON-RPC batch (fast
    set-up: the SDK's submission path is tested above and in test_bad_input)."""
    user, request = grid.user, (resources.cpus, resources.gpus, resources.mem_mb, max_rate, CREDITS, 0, b"\0" * 32)
    user.wallet.transact(user.token.functions.approve(grid.deployment.market, 2**256 - 1))
    first = user.job_count() + 1
    user.wallet.transact_many([user.market.functions.submit(request, on_chain(c), WORKFLOW, 1) for c in labels])
    return list(range(first, first + len(labels)))


def _one(grid: Grid, labels: list[Any] | None = None, **kw: Any) -> int:
    return _submit_direct(grid, [labels or []], **kw)[0]


def _mixed_jobs(grid: Grid) -> list[tuple[int, str, list[Any]]]:
    """Four PENDING jobs, two with label constraints, and where each can go."""
    plain1, a100, plain2, big_mem = _submit_direct(grid, [[], A100, [], BIG_GPU_MEM])
    return [
        (plain1, grid.cpu.address, []),
        (a100, grid.gpu.address, on_chain(A100)),
        (plain2, grid.spare.address, []),
        (big_mem, grid.gpu.address, on_chain(BIG_GPU_MEM)),
    ]


def test_assign_batch_with_and_without_labels(grid: Grid) -> None:
    batch = _mixed_jobs(grid)
    free0 = {p.address: p.info().free for p in (grid.cpu, grid.gpu, grid.spare)}
    block0 = grid.chain.block_number()
    receipt = grid.scheduler.assign_batch(batch)
    assert grid.chain.block_number() == block0 + 1
    assert len(grid.user.market.events.JobAssigned().process_receipt(receipt, errors=DISCARD)) == 4
    for job_id, provider, _ in batch:
        job = grid.user.job(job_id)
        prices = grid.user.provider(provider).prices
        assert (job.status, job.provider, job.rate) == (S.META_SCHEDULED, provider, prices.rate_for(SMALL))
    assert grid.cpu.info().free == free0[grid.cpu.address] - SMALL
    assert grid.spare.info().free == free0[grid.spare.address] - SMALL
    assert grid.gpu.info().free == free0[grid.gpu.address] - SMALL - SMALL


# fmt: off
#: One bad entry appended to the good mixed batch -> the error that reverts the whole batch.
BAD_ASSIGNMENTS: dict[str, tuple[Callable[[Grid, list[Any]], tuple[int, str, list[Any]]], str]] = {
    "label_mismatch":       (lambda g, b: (_one(g, A100), g.cpu.address, on_chain(A100)),
                             "LabelMismatch"),
    "labels_not_submitted": (lambda g, b: (_one(g, A100), g.gpu.address, []), "LabelsMismatch"),
    "labels_on_plain_job":  (lambda g, b: (_one(g), g.gpu.address, on_chain(A100)), "LabelsMismatch"),
    "same_job_twice":       (lambda g, b: b[0], "InvalidStatus"),
    "not_pending":          (lambda g, b: (g.job_in(S.RUNNING), g.cpu.address, []), "InvalidStatus"),
    "unknown_job":          (lambda g, b: (999, g.cpu.address, []), "JobNotFound"),
    "unapproved_provider":  (lambda g, b: (_one(g), g.pending.address, []), "ProviderNotApproved"),
    "price_above_cap":      (lambda g, b: (_one(g, max_rate=100), g.cpu.address, []), "PriceAboveCap"),
    "capacity_used_by_batch": (lambda g, b: (_one(g, resources=Resources(4, 0, 1024)), g.spare.address, []),
                               "InsufficientCapacity"),
}
# fmt: on


@pytest.mark.parametrize("bad", list(BAD_ASSIGNMENTS))
def test_one_bad_assignment_is_skipped_and_the_rest_lands(grid: Grid, bad: str) -> None:
    batch = _mixed_jobs(grid)
    make, error = BAD_ASSIGNMENTS[bad]
    extra = make(grid, batch)
    good = [job_id for job_id, _, _ in batch]
    watched = [extra[0]] if extra[0] not in good and extra[0] != 999 else []
    before, block0 = _state(grid, watched), grid.chain.block_number()
    receipt = grid.scheduler.assign_batch([*batch, extra])
    assert grid.chain.block_number() == block0 + 1
    assert [j.status for j in grid.user.jobs(good)] == [S.META_SCHEDULED] * len(good)
    skipped = skipped_entries(grid.user.market, receipt)
    assert list(skipped) == [extra[0]] and type(skipped[extra[0]]).__name__ == error
    (event,) = grid.user.market.events.EntrySkipped().process_receipt(receipt, errors=DISCARD)
    assert event["args"]["provider"] == extra[1]  # the target of the skipped assignment
    if watched:
        assert _state(grid, watched)[1:2] == before[1:2]  # the skipped job did not move


def test_assign_batch_needs_the_scheduler_role_and_matching_lengths(grid: Grid) -> None:
    batch = _mixed_jobs(grid)
    ids = [b[0] for b in batch]
    before = _state(grid, ids)
    f = grid.scheduler.market.functions
    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        grid.admin.wallet.transact(f.assignBatch(ids, [b[1] for b in batch], [b[2] for b in batch]))
    with pytest.raises(errors.LengthMismatch):
        grid.scheduler.wallet.transact(f.assignBatch(ids, [b[1] for b in batch][:3], [b[2] for b in batch]))
    with pytest.raises(errors.LengthMismatch):
        grid.scheduler.wallet.transact(f.assignBatch(ids, [b[1] for b in batch], [b[2] for b in batch][:3]))
    with pytest.raises(errors.InputError):
        grid.scheduler.assign_batch([])
    assert _state(grid, ids) == before


# ---------------------------------------------------------------------------------- batched reports
# fmt: off
#: A job prepared in a status on the cpu provider, what the batch reports for it, its status after.
MIXED_REPORT: list[tuple[JobStatus, list[tuple[ReportAction, int]], JobStatus]] = [
    (S.META_SCHEDULED, [(A.CLAIM, 0)],               S.SCHEDULED),
    (S.SCHEDULED,      [(A.START, 0)],               S.RUNNING),
    (S.RUNNING,        [(A.FINISH, 0)],              S.FINISHED),
    (S.RUNNING,        [(A.FINISH, 7)],              S.FAILED),
    (S.META_SCHEDULED, [(A.REFUSE, 0)],              S.PENDING),
    (S.SCHEDULED,      [(A.REFUSE, 0)],              S.PENDING),
    (S.META_SCHEDULED, [(A.CLAIM, 0), (A.START, 0)], S.RUNNING),   # two steps of one job, in order
    (S.SCHEDULED,      [(A.PANIC, 0)],               S.PANICKED),
]
# fmt: on


def _prepare_reports(grid: Grid) -> list[int]:
    """The MIXED_REPORT jobs, prepared with batches too: one array, one batch assignment, two reports."""
    ids = grid.user.submit(workflow_for(TINY), credits=CREDITS, max_rate=MAX_RATE, count=len(MIXED_REPORT))
    grid.scheduler.assign_batch([(job_id, grid.cpu.address, []) for job_id in ids])
    prepared = [status for status, _, _ in MIXED_REPORT]
    grid.cpu.report([(j, A.CLAIM, 0) for j, s in zip(ids, prepared, strict=True) if s is not S.META_SCHEDULED])
    grid.cpu.report([(j, A.START, 0) for j, s in zip(ids, prepared, strict=True) if s is S.RUNNING])
    assert [j.status for j in grid.user.jobs(ids)] == prepared
    grid.chain.increase_time(120)  # the RUNNING ones have run two minutes
    return ids


def _rows(ids: list[int]) -> list[tuple[int, ReportAction, int]]:
    return [(job_id, action, code) for job_id, (_, steps, _) in zip(ids, MIXED_REPORT, strict=True)
            for action, code in steps]


def test_batched_report_mixing_claim_start_finish_refuse_panic(grid: Grid) -> None:
    ids = _prepare_reports(grid)
    before = {j.id: j for j in grid.user.jobs(ids)}
    total = grid.cpu.info().total
    prov0, owner0, block0 = grid.cpu.credits(), grid.user.credits(), grid.chain.block_number()

    receipt = grid.cpu.report(_rows(ids))

    assert grid.chain.block_number() == block0 + 1
    ts = grid.chain.timestamp(int(receipt["blockNumber"]))
    after = {j.id: j for j in grid.user.jobs(ids)}
    bills = refunds = 0
    for job_id, (_, _, status) in zip(ids, MIXED_REPORT, strict=True):
        job, old = after[job_id], before[job_id]
        assert job.status is status, f"job {job_id}"
        if status in (S.FINISHED, S.FAILED):
            bill = min(old.rate * (ts - old.since) // 60, old.escrow)
            assert bill >= old.rate * 2  # two minutes
            bills, refunds = bills + bill, refunds + old.escrow - bill
        elif status is S.PANICKED:
            refunds += old.escrow
        if status.is_final:
            assert job.escrow == 0
        elif status is S.PENDING:
            assert (job.provider, job.escrow) == (None, old.escrow)
        else:
            assert (job.provider, job.escrow) == (grid.cpu.address, old.escrow)
        if status is S.RUNNING:
            assert job.since == ts
    holding = sum(1 for _, _, s in MIXED_REPORT if s.holds_capacity)
    assert grid.cpu.info().free == total - Resources(holding * TINY.cpus, 0, holding * TINY.mem_mb)
    assert grid.cpu.credits() - prov0 == bills
    assert grid.user.credits() - owner0 == refunds
    settled = grid.user.market.events.JobSettled().process_receipt(receipt, errors=DISCARD)
    assert sorted(e["args"]["status"] for e in settled) == [S.FINISHED, S.FAILED, S.PANICKED]


def test_batched_report_out_of_credits(grid: Grid) -> None:
    spent = grid.job_in(S.RUNNING, resources=TINY, credits=1_050)  # one minute of TINY on cpu
    other = grid.job_in(S.SCHEDULED, resources=TINY)
    spent_rate = grid.user.job(spent).rate
    grid.chain.increase_time(-(-1_050 * 60 // spent_rate) + 1)
    prov0 = grid.cpu.credits()
    grid.cpu.report([(spent, A.OUT_OF_CREDITS, 0), (other, A.START, 0)])
    assert grid.user.job(spent).status is S.OUT_OF_CREDITS
    assert grid.user.job(other).status is S.RUNNING
    assert grid.cpu.credits() - prov0 == 1_050


def _on_gpu(grid: Grid) -> int:
    job_id = _one(grid)
    grid.scheduler.assign(job_id, grid.gpu.address)
    return job_id


# fmt: off
#: One bad entry appended to the good mixed report -> the error that reverts the whole batch.
BAD_REPORTS: dict[str, tuple[Callable[[Grid, list[int]], tuple[int, ReportAction, int]], str]] = {
    "another_providers_job": (lambda g, ids: (_on_gpu(g), A.CLAIM, 0),
                              "NotAssignedProvider"),
    "pending_job":           (lambda g, ids: (_one(g), A.CLAIM, 0), "NotAssignedProvider"),
    "start_after_refuse":    (lambda g, ids: (ids[5], A.START, 0), "NotAssignedProvider"),  # refused above
    "finish_twice":          (lambda g, ids: (ids[2], A.FINISH, 0), "InvalidStatus"),
    "claim_twice":           (lambda g, ids: (ids[0], A.CLAIM, 0), "InvalidStatus"),
    "escrow_not_exhausted":  (lambda g, ids: (ids[1], A.OUT_OF_CREDITS, 0), "EscrowNotExhausted"),
    "panic_final_job":       (lambda g, ids: (ids[7], A.PANIC, 0), "InvalidStatus"),
    "unknown_job":           (lambda g, ids: (999, A.CLAIM, 0), "JobNotFound"),
}
# fmt: on


@pytest.mark.parametrize("bad", list(BAD_REPORTS))
def test_one_bad_report_is_skipped_and_the_rest_lands(grid: Grid, bad: str) -> None:
    ids = _prepare_reports(grid)
    make, error = BAD_REPORTS[bad]
    extra = make(grid, ids)
    outside = extra[0] not in ids and extra[0] != 999
    before = _state(grid, [extra[0]]) if outside else None
    receipt = grid.cpu.report([*_rows(ids), extra])
    assert [j.status for j in grid.user.jobs(ids)] == [status for _, _, status in MIXED_REPORT]
    skipped = skipped_entries(grid.user.market, receipt)
    assert list(skipped) == [extra[0]] and type(skipped[extra[0]]).__name__ == error
    if outside:
        assert _state(grid, [extra[0]])[1] == before[1]  # type: ignore[index]


def test_report_by_a_non_provider_or_empty(grid: Grid) -> None:
    job_id = grid.job_in(S.META_SCHEDULED)
    before = _state(grid, [job_id])
    receipt = grid.stranger.wallet.transact(grid.stranger.market.functions.report([(job_id, int(A.CLAIM), 0, 0)]))
    skipped = skipped_entries(grid.user.market, receipt)
    assert isinstance(skipped[job_id], errors.NotAssignedProvider)
    assert skipped[job_id].args_dict["caller"] == grid.stranger.address
    with pytest.raises(errors.InputError):
        grid.cpu.report([])
    assert _state(grid, [job_id]) == before


def test_a_full_job_array_fits_in_one_block(grid: Grid) -> None:
    """MAX_ARRAY_JOBS is set so that the largest array is one transaction under a 30M-gas block."""
    from dsq_chain.sdk.client import MAX_ARRAY_JOBS

    before = grid.user.job_count()
    first = grid.submit(count=MAX_ARRAY_JOBS, credits=CREDIT_UNIT // 100)
    assert grid.user.job_count() == before + MAX_ARRAY_JOBS and first == before + 1
    block = grid.chain.w3.eth.get_block("latest")
    assert block["gasUsed"] < 30_000_000 * 0.9, f"a full array used {block['gasUsed']} gas"
