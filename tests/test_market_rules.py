"""The market's rules of issue 17, on Anvil: contract sizes, batches applied entry by entry when a cancel,
pause, ban or top-up lands first in the same block, bans, sweeps, delayed admin actions, direct placement,
scratch disk, external references and FINISH end times."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from web3.logs import DISCARD

from dsq_chain import errors
from dsq_chain.matching import Matcher, PendingJob
from dsq_chain.matching.constraints import NOT_ALLOWED
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Chain, calldata
from dsq_chain.sdk.client import (
    AdminClient,
    GridClient,
    ProviderClient,
    SchedulerClient,
    external_ref,
    placement_of,
    skipped_entries,
)
from dsq_chain.sdk.deployment import CODE_SIZE_LIMIT, code_sizes, deploy
from dsq_chain.types import CREDIT_UNIT, JobStatus, Prices, ProviderStatus, ReportAction, Resources
from tests.grid import CPU_PRICES, MAX_RATE, WORKFLOW, Grid, submit_unchecked

S, A = JobStatus, ReportAction
TINY = Resources(1, 0, 256)
BIG = Resources(1_000, 0, 1_000_000)


def test_every_deployed_contract_is_under_three_quarters_of_eip170(grid: Grid) -> None:
    sizes = code_sizes(grid.chain, grid.deployment)
    assert set(sizes) == {"CreditToken", "JobMarket", "ProviderRegistry"}
    for name, size in sizes.items():
        assert 0 < size < 0.75 * CODE_SIZE_LIMIT, f"{name}: {size} bytes of code, limit {0.75 * CODE_SIZE_LIMIT:.0f}"


# ------------------------------------------------------------------------------ races in one block
def _big(grid: Grid, keys: list[str], i: int) -> ProviderClient:
    p = ProviderClient(grid.chain.wallet(keys[10 + i]), grid.deployment)
    p.register(BIG, CPU_PRICES, {})
    grid.admin.approve(p.address)
    return p


def _send_unmined(chain: Chain, sender: str, fn: Any, *, gas: int, tip_gwei: int) -> str:
    """Queues a transaction (Anvil signs for its dev accounts) without mining it; a higher tip goes first."""
    tx = {"from": sender, "to": fn.address, "data": calldata(fn), "gas": hex(gas),
          "maxPriorityFeePerGas": hex(tip_gwei * 10**9), "maxFeePerGas": hex(200 * 10**9)}
    return str(chain.call_rpc("eth_sendTransaction", [tx]))


def _same_block(grid: Grid, first: tuple[str, Any], batch: tuple[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mines ``first`` and then ``batch`` in one block (automine off); returns both receipts."""
    chain = grid.chain
    chain.call_rpc("evm_setAutomine", [False])
    try:
        h1 = _send_unmined(chain, first[0], first[1], gas=500_000, tip_gwei=50)
        h2 = _send_unmined(chain, batch[0], batch[1], gas=25_000_000, tip_gwei=1)
        chain.mine()
    finally:
        chain.call_rpc("evm_setAutomine", [True])
        grid.reset_nonces()
    r1, r2 = (dict(chain.w3.eth.get_transaction_receipt(h)) for h in (h1, h2))  # type: ignore[arg-type]
    assert r1["blockNumber"] == r2["blockNumber"] and r1["transactionIndex"] < r2["transactionIndex"]
    assert r1["status"] == r2["status"] == 1
    return r1, r2


@pytest.fixture
def two_big(grid: Grid, keys: list[str]) -> tuple[ProviderClient, ProviderClient]:
    return _big(grid, keys, 0), _big(grid, keys, 1)


@pytest.mark.parametrize("race", ["cancel", "pause", "ban", "top_up"])
def test_a_200_job_assign_batch_lands_around_what_landed_first(grid: Grid, two_big: tuple[ProviderClient, ...],
                                                               race: str) -> None:
    b1, b2 = two_big
    ids = submit_unchecked(grid.user, WORKFLOW, TINY, credits=CREDIT_UNIT, max_rate=MAX_RATE, count=200)
    victim = ids[7]
    rows = [(j, (b1 if i < 100 else b2).address, []) for i, j in enumerate(ids)]
    batch = grid.scheduler.market.functions.assignBatch([r[0] for r in rows], [r[1] for r in rows],
                                                        [r[2] for r in rows])
    f = grid.user.market.functions
    grid.user.wallet.transact(grid.user.token.functions.approve(grid.deployment.market, 2**256 - 1))
    first = {"cancel": (grid.user.address, f.cancel(victim)), "pause": (b2.address, f.pause()),
             "ban": (grid.admin.address, f.banProvider(b2.address)),
             "top_up": (grid.user.address, f.topUp(victim, CREDIT_UNIT))}[race]
    _, receipt = _same_block(grid, first, (grid.scheduler.address, batch))
    skipped = skipped_entries(grid.user.market, receipt)
    statuses = [j.status for j in grid.user.jobs(ids)]
    if race == "cancel":
        assert list(skipped) == [victim] and isinstance(skipped[victim], errors.InvalidStatus)
        assert statuses.count(S.META_SCHEDULED) == 199 and statuses[7] is S.CANCELED
    elif race == "top_up":
        assert skipped == {} and statuses == [S.META_SCHEDULED] * 200
        assert grid.user.job(victim).escrow == 2 * CREDIT_UNIT
    else:
        want = errors.ProviderIsPaused if race == "pause" else errors.ProviderNotApproved
        assert sorted(skipped) == ids[100:] and all(isinstance(e, want) for e in skipped.values())
        assert statuses == [S.META_SCHEDULED] * 100 + [S.PENDING] * 100
    assert len(grid.user.market.events.JobAssigned().process_receipt(receipt, errors=DISCARD)) == 200 - len(skipped)


@pytest.fixture(scope="module")
def running_500(_grid_session: Grid, chain: Chain, keys: list[str]) -> Iterator[tuple[Grid, ProviderClient, list[int]]]:
    """500 RUNNING jobs on one big provider, prepared once (reverted after the module)."""
    grid = _grid_session
    base = chain.snapshot()
    grid.reset_nonces()
    try:
        big = _big(grid, keys, 0)
        ids = submit_unchecked(grid.user, WORKFLOW, TINY, credits=CREDIT_UNIT, max_rate=MAX_RATE, count=500)
        grid.scheduler.assign_batch([(j, big.address, []) for j in ids])
        big.report([(j, a, 0) for j in ids for a in (A.CLAIM, A.START)])
        chain.increase_time(120)
        yield grid, big, ids
    finally:
        chain.revert(base)
        grid.reset_nonces()


@pytest.mark.parametrize("race", ["cancel", "pause", "ban", "top_up"])
def test_a_500_entry_report_lands_around_what_landed_first(running_500: tuple[Grid, ProviderClient, list[int]],
                                                           race: str) -> None:
    grid, big, ids = running_500
    snap = grid.chain.snapshot()
    try:
        victim = ids[42]
        f = grid.user.market.functions
        grid.user.wallet.transact(grid.user.token.functions.approve(grid.deployment.market, 2**256 - 1))
        report = f.report([(j, int(A.FINISH), 0, 0) for j in ids])
        first = {"cancel": (grid.user.address, f.cancel(victim)), "pause": (big.address, f.pause()),
                 "ban": (grid.admin.address, f.banProvider(big.address)),
                 "top_up": (grid.user.address, f.topUp(victim, CREDIT_UNIT))}[race]
        _, receipt = _same_block(grid, first, (big.address, report))
        skipped = skipped_entries(grid.user.market, receipt)
        statuses = [j.status for j in grid.user.jobs(ids)]
        if race == "cancel":
            assert list(skipped) == [victim] and isinstance(skipped[victim], errors.InvalidStatus)
            assert statuses.count(S.FINISHED) == 499 and statuses[42] is S.CANCELED
        else:  # a paused or banned provider still finishes what it runs, and is paid for the time run
            assert skipped == {} and statuses == [S.FINISHED] * 500
        settled = grid.user.market.events.JobSettled().process_receipt(receipt, errors=DISCARD)
        assert all(e["args"]["billed"] > 0 for e in settled)
    finally:
        grid.chain.revert(snap)
        grid.reset_nonces()


# ------------------------------------------------------------------------------ bans, top-ups, sweeps
def test_a_banned_providers_assigned_jobs_go_back_to_pending_by_anyone(grid: Grid) -> None:
    meta = grid.job_in(S.META_SCHEDULED)
    sched = grid.job_in(S.SCHEDULED)
    running = grid.job_in(S.RUNNING)
    with pytest.raises(errors.ProviderNotBanned):
        grid.stranger.wallet.transact(grid.stranger.market.functions.releaseFromBanned(meta))
    grid.admin.ban(grid.cpu.address)
    with pytest.raises(errors.ProviderNotApproved):
        grid.cpu.start(sched)  # a banned provider starts nothing ...
    with pytest.raises(errors.ProviderNotApproved):
        grid.cpu.claim(meta)
    for j in (meta, sched):  # ... and anyone takes its assigned jobs back
        grid.stranger.wallet.transact(grid.stranger.market.functions.releaseFromBanned(j))
        assert (grid.user.job(j).status, grid.user.job(j).provider) == (S.PENDING, None)
    with pytest.raises(errors.InvalidStatus):
        grid.stranger.wallet.transact(grid.stranger.market.functions.releaseFromBanned(running))
    grid.chain.increase_time(60)
    before = grid.cpu.credits()
    grid.cpu.finish(running, 0)  # what it runs may finish, paid for the time run
    assert grid.user.job(running).status is S.FINISHED and grid.cpu.credits() > before
    assert grid.cpu.info().free == grid.cpu.info().total


def test_a_top_up_never_pays_for_time_that_ran_unfunded(grid: Grid) -> None:
    job = grid.job_in(S.RUNNING, credits=2_100)  # one minute at SMALL_RATE
    grid.chain.increase_time(120)
    with pytest.raises(errors.EscrowExhausted):
        grid.user.top_up(job, Credits(units=CREDIT_UNIT))
    grid.stranger.wallet.transact(grid.stranger.market.functions.reportOutOfCredits(job))
    assert grid.user.job(job).status is S.OUT_OF_CREDITS


def test_the_admin_sweeps_only_credits_sent_by_mistake(grid: Grid) -> None:
    grid.job_in(S.RUNNING)
    grid.submit()
    with pytest.raises(errors.InputError):
        grid.admin.sweep(grid.admin.address)
    grid.user.wallet.transact(grid.user.token.functions.transfer(grid.deployment.market, 12_345))
    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        grid.user.wallet.transact(grid.user.market.functions.sweep(grid.user.address))
    owed = int(grid.user.market.functions.owed().call())
    assert grid.admin.sweep(grid.stranger.address) == 12_345
    assert grid.user.token_balance(grid.deployment.market) == owed == int(grid.user.market.functions.owed().call())
    with pytest.raises(errors.NothingToSweep):
        grid.admin.wallet.transact(grid.admin.market.functions.sweep(grid.admin.address))


# ------------------------------------------------------------------------------ the delayed admin
DELAY = 3_600


@pytest.fixture
def delayed(chain: Chain, keys: list[str]) -> Iterator[tuple[AdminClient, ProviderClient, SchedulerClient,
                                                             GridClient]]:
    snap = chain.snapshot()
    try:
        w = [chain.wallet(k) for k in keys[10:14]]
        dep = deploy(w[0], admin_delay=DELAY)
        admin, prov = AdminClient(w[0], dep), ProviderClient(w[1], dep)
        sched, user = SchedulerClient(w[2], dep), GridClient(w[3], dep)
        admin.mint(user.address, Credits(units=100 * CREDIT_UNIT))
        prov.register(Resources(8, 0, 16_384), CPU_PRICES)
        yield admin, prov, sched, user
    finally:
        chain.revert(snap)


def test_approvals_and_roles_wait_for_the_public_delay(delayed: tuple[Any, ...], chain: Chain) -> None:
    """What a stolen admin key can do at once: schedule (in public) and ban. A new provider gets no job and a
    new scheduler assigns nothing until the delay passed; the real admin can cancel in between."""
    admin, prov, sched, user = delayed
    m = admin.market
    assert m.functions.adminDelay().call() == DELAY
    admin.approve(prov.address)  # scheduled, not applied
    admin.grant_scheduler(sched.address)
    events = m.events.AdminActionScheduled().get_logs(from_block=chain.block_number() - 1)
    assert len(events) == 2 and all(e["args"]["readyAt"] > chain.timestamp() for e in events)
    assert prov.info().status is ProviderStatus.PENDING
    job = submit_unchecked(user, WORKFLOW, TINY, credits=CREDIT_UNIT, max_rate=MAX_RATE)[0]
    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        sched.assign(job, prov.address)
    with pytest.raises(errors.AdminActionNotReady):
        admin.approve(prov.address)
    chain.increase_time(DELAY)
    admin.approve(prov.address)
    admin.grant_scheduler(sched.address)
    assert prov.info().status is ProviderStatus.APPROVED
    sched.assign(job, prov.address)
    assert user.job(job).status is S.META_SCHEDULED
    # a scheduled action can be dropped; ban is immediate
    admin.set_claim_timeout(5)
    (ev,) = m.events.AdminActionScheduled().get_logs(from_block=chain.block_number())
    admin.wallet.transact(m.functions.cancelAdminAction(ev["args"]["operation"]))
    assert m.functions.scheduledAt(ev["args"]["operation"]).call() == 0
    chain.increase_time(DELAY)
    admin.set_claim_timeout(5)  # cancelled: this schedules it again
    assert m.functions.claimTimeout().call() == 300
    admin.ban(prov.address)
    assert prov.info().status is ProviderStatus.BANNED
    with pytest.raises(errors.AccessControlUnauthorizedAccount):
        user.wallet.transact(m.functions.approveProvider(user.address))


# ------------------------------------------------------------------------------ placement, disk, references
def test_direct_placement_and_exclusion_are_enforced_on_chain_and_by_the_matcher(grid: Grid) -> None:
    only_gpu = submit_unchecked(grid.user, WORKFLOW, TINY, credits=CREDIT_UNIT, max_rate=MAX_RATE,
                                providers=[grid.gpu.address])[0]
    not_cpu = submit_unchecked(grid.user, WORKFLOW, TINY, credits=CREDIT_UNIT, max_rate=MAX_RATE,
                               exclude=[grid.cpu.address])[0]
    (ev1,) = grid.user.market.events.JobSubmitted().get_logs(from_block=grid.deployment.block,
                                                              argument_filters={"firstJobId": only_gpu})
    labels = [(bytes(c["key"]), int(c["op"]), bytes(c["value"])) for c in ev1["args"]["labels"]]
    assert placement_of(labels) == (frozenset({grid.gpu.address}), frozenset())
    with pytest.raises(errors.ProviderNotAllowed):
        grid.scheduler.assign(only_gpu, grid.cpu.address, labels)
    receipt = grid.scheduler.assign_batch([(only_gpu, grid.spare.address, labels)])
    assert isinstance(skipped_entries(grid.user.market, receipt)[only_gpu], errors.ProviderNotAllowed)
    (ev2,) = grid.user.market.events.JobSubmitted().get_logs(from_block=grid.chain.block_number() - 3,
                                                              argument_filters={"firstJobId": not_cpu})
    excl = [(bytes(c["key"]), int(c["op"]), bytes(c["value"])) for c in ev2["args"]["labels"]]
    with pytest.raises(errors.ProviderNotAllowed):
        grid.scheduler.assign(not_cpu, grid.cpu.address, excl)
    grid.scheduler.assign(not_cpu, grid.spare.address, excl)
    grid.scheduler.assign(only_gpu, grid.gpu.address, labels)
    assert [grid.user.job(j).provider for j in (only_gpu, not_cpu)] == [grid.gpu.address, grid.spare.address]
    # the matcher honours and explains it
    providers = {p.address: p for p in _states(grid)}
    job = PendingJob(999, grid.user.address, TINY, MAX_RATE, allowed=frozenset({grid.gpu.address}))
    (a,) = Matcher().match([job], providers, 0.0)
    assert a.provider == grid.gpu.address
    text = str(Matcher().explain(job, providers, 0.0))
    assert NOT_ALLOWED in text


def _states(grid: Grid) -> list[Any]:
    from dsq_chain.matching import ProviderState

    return [ProviderState(p.address, p.total, p.free, p.prices, {}, p.status is ProviderStatus.APPROVED
                          and not p.paused) for p in grid.user.providers()]


def test_scratch_disk_is_reserved_like_memory(grid: Grid, keys: list[str]) -> None:
    disky = ProviderClient(grid.chain.wallet(keys[12]), grid.deployment)
    disky.register(Resources(8, 0, 16_384, disk_gb=100), Prices.from_units(1_000), persistent_gb=2_000)
    grid.admin.approve(disky.address)
    info = disky.info()
    assert (info.total.disk_gb, info.free.disk_gb, info.persistent_gb) == (100, 100, 2_000)
    need = Resources(1, 0, 256, disk_gb=60)
    a, b = submit_unchecked(grid.user, WORKFLOW, need, credits=CREDIT_UNIT, max_rate=MAX_RATE, count=2)
    assert grid.user.job(a).resources == need
    grid.scheduler.assign(a, disky.address)
    assert disky.info().free.disk_gb == 40
    with pytest.raises(errors.InsufficientCapacity) as info_err:
        grid.scheduler.assign(b, disky.address)
    assert tuple(info_err.value.args_dict["needed"])[3] == 60
    grid.user.cancel(a)
    assert disky.info().free.disk_gb == 100
    grid.scheduler.assign(b, disky.address)


def test_an_external_reference_travels_in_the_submission_event_only(grid: Grid) -> None:
    ref = external_ref(grid.stranger.address, 123_456)
    job = submit_unchecked(grid.user, WORKFLOW, TINY, credits=CREDIT_UNIT, max_rate=MAX_RATE, external_ref=ref)[0]
    (ev,) = grid.user.market.events.JobSubmitted().get_logs(from_block=grid.chain.block_number(),
                                                             argument_filters={"firstJobId": job})
    assert bytes(ev["args"]["request"]["externalRef"]) == ref
    assert ref[:20] == bytes.fromhex(grid.stranger.address[2:]) and int.from_bytes(ref[20:28], "big") == 123_456
    assert grid.user.job(job).head_id == job  # a job's own id leads to its submission event


def test_a_finish_bills_up_to_the_end_time_seen_never_past_the_block(grid: Grid) -> None:
    jobs = [grid.job_in(S.RUNNING) for _ in range(4)]
    started = [grid.user.job(j).since for j in jobs]
    grid.chain.increase_time(600)
    now = grid.chain.timestamp() + 1
    ends = [started[0] + 120, started[1] - 50, now + 10_000, 0]  # seen ended, before start, future, now
    receipt = grid.cpu.report([(j, A.FINISH, 0, e) for j, e in zip(jobs, ends, strict=True)])
    block_ts = grid.chain.timestamp(int(receipt["blockNumber"]))
    billed = {int(e["args"]["jobId"]): int(e["args"]["billed"])
              for e in grid.user.market.events.JobSettled().process_receipt(receipt, errors=DISCARD)}
    rate = grid.user.job(jobs[0]).rate
    assert billed[jobs[0]] == rate * 120 // 60  # the ISP dropped: billed to when the engine saw the end
    assert billed[jobs[1]] == 0  # an end before the start bills nothing (the provider only lowers its bill)
    assert billed[jobs[2]] == rate * (block_ts - started[2]) // 60  # never past the report's block
    assert billed[jobs[3]] == rate * (block_ts - started[3]) // 60
