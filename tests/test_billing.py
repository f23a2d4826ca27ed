"""Exact credits for provider and owner at every final status, on chain time (``evm_increaseTime``).

Bill = rate x elapsed // 60, where elapsed is the chain time between the start and the settling blocks
(read from the receipts), capped by the escrow; the provider's share accrues to its internal balance,
the rest is refunded to the owner's. Also: top-ups, withdrawals, internal balance spent first, rate
snapshot, capacity release, and the assignment checks (pause, ban, price cap, labels).
"""

from __future__ import annotations

from typing import Any

import pytest
from web3.logs import DISCARD

from dsq_chain import errors
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Call
from dsq_chain.sdk.client import ProviderClient
from dsq_chain.types import CREDIT_UNIT, JobStatus, Prices, Resources
from dsq_chain.workloads.labels import encode_key, on_chain, parse_constraint
from tests.grid import CPU_PRICES, CREDITS, SMALL, SMALL_RATE, Grid

S = JobStatus


def _tx(client: Any, fn: Any) -> Any:
    """Sends ``fn`` from ``client``'s wallet; returns the receipt."""
    return client.wallet.transact(fn)


def _ts(grid: Grid, receipt: Any) -> int:
    return grid.chain.timestamp(int(receipt["blockNumber"]))


def _settled(grid: Grid, receipt: Any) -> dict[str, Any]:
    (event,) = grid.user.market.events.JobSettled().process_receipt(receipt, errors=DISCARD)
    return dict(event["args"])


def _running(grid: Grid, provider: ProviderClient | None = None, **submit_kw: Any) -> tuple[int, int]:
    """A RUNNING job on ``provider`` (default cpu): (job id, chain time of its start block)."""
    prov = provider or grid.cpu
    job_id = grid.job_in(S.SCHEDULED, prov, **submit_kw)
    receipt = _tx(prov, prov.market.functions.start(job_id))
    return job_id, _ts(grid, receipt)


def _free(grid: Grid, provider: ProviderClient | None = None) -> Resources:
    return (provider or grid.cpu).info().free


# ---------------------------------------------------------------------------------- final statuses
@pytest.mark.parametrize(("exit_code", "final"), [(0, S.FINISHED), (3, S.FAILED)], ids=["FINISHED", "FAILED"])
def test_finish_after_90s_bills_rate_times_elapsed_chain_time(grid: Grid, exit_code: int, final: JobStatus) -> None:
    job_id, started = _running(grid)
    owner0, prov0 = grid.user.credits(), grid.cpu.credits()
    grid.chain.increase_time(90)
    receipt = _tx(grid.cpu, grid.cpu.market.functions.finish(job_id, exit_code))
    elapsed = _ts(grid, receipt) - started
    assert 90 <= elapsed <= 92
    bill = SMALL_RATE * elapsed // 60
    assert bill >= 3150  # 1.5 min at 2100 units/min
    job = grid.user.job(job_id)
    assert (job.status, job.escrow) == (final, 0)
    assert grid.cpu.credits() - prov0 == bill
    assert grid.user.credits() - owner0 == CREDITS - bill
    ev = _settled(grid, receipt)
    assert (ev["status"], ev["exitCode"], ev["billed"], ev["refunded"]) == (final, exit_code, bill, CREDITS - bill)


def test_out_of_credits_bills_the_whole_escrow_and_refunds_nothing(grid: Grid) -> None:
    credits = CREDIT_UNIT  # 1 credit buys 1_000_000 * 60 / 2100 = 28_571 s at SMALL_RATE
    job_id, _ = _running(grid, credits=credits)
    owner0, prov0 = grid.user.credits(), grid.cpu.credits()
    grid.chain.increase_time(28_580)
    assert grid.user.market.functions.billSoFar(job_id).call() == credits
    receipt = _tx(grid.stranger, grid.stranger.market.functions.reportOutOfCredits(job_id))
    job = grid.user.job(job_id)
    assert (job.status, job.escrow) == (S.OUT_OF_CREDITS, 0)
    assert grid.cpu.credits() - prov0 == credits
    assert grid.user.credits() == owner0
    ev = _settled(grid, receipt)
    assert (ev["billed"], ev["refunded"]) == (credits, 0)


def test_out_of_credits_exactly_when_the_escrow_is_used_up(grid: Grid) -> None:
    job_id, started = _running(grid, credits=2_100)  # exactly 60 s at SMALL_RATE
    fn = grid.stranger.market.functions
    grid.chain.call_rpc("evm_setNextBlockTimestamp", [started + 59])
    grid.chain.mine()
    assert fn.billSoFar(job_id).call() == 2_065  # 59 s used of 60
    with pytest.raises(errors.EscrowNotExhausted) as info:
        grid.stranger.wallet.check(Call(fn.reportOutOfCredits(job_id)))
    assert (info.value.args_dict["billedSoFar"], info.value.args_dict["escrow"]) == (2_065, 2_100)
    grid.chain.call_rpc("evm_setNextBlockTimestamp", [started + 60])
    # explicit gas: Anvil estimates on a block that ignores evm_setNextBlockTimestamp
    receipt = _tx(grid.stranger, Call(fn.reportOutOfCredits(job_id), gas=300_000))
    assert _ts(grid, receipt) == started + 60
    assert grid.user.job(job_id).status is S.OUT_OF_CREDITS
    assert (_settled(grid, receipt)["billed"], _settled(grid, receipt)["refunded"]) == (2_100, 0)


@pytest.mark.parametrize("status", [S.PENDING, S.META_SCHEDULED, S.SCHEDULED], ids=lambda s: s.name)
def test_cancel_before_running_refunds_everything(grid: Grid, status: JobStatus) -> None:
    job_id = grid.job_in(status)
    owner0, prov0 = grid.user.credits(), grid.cpu.credits()
    grid.chain.increase_time(600)
    receipt = _tx(grid.user, grid.user.market.functions.cancel(job_id))
    assert grid.user.job(job_id).status is S.CANCELED
    assert grid.user.credits() - owner0 == CREDITS
    assert grid.cpu.credits() == prov0
    assert (_settled(grid, receipt)["billed"], _settled(grid, receipt)["refunded"]) == (0, CREDITS)


def test_cancel_while_running_bills_up_to_now(grid: Grid) -> None:
    job_id, started = _running(grid)
    owner0, prov0 = grid.user.credits(), grid.cpu.credits()
    grid.chain.increase_time(600)
    receipt = _tx(grid.user, grid.user.market.functions.cancel(job_id))
    bill = SMALL_RATE * (_ts(grid, receipt) - started) // 60
    assert bill >= 21_000
    assert grid.user.job(job_id).status is S.CANCELED
    assert grid.cpu.credits() - prov0 == bill
    assert grid.user.credits() - owner0 == CREDITS - bill


#: Who may panic a job in each non-final status (a PENDING job has no provider yet).
PANICS = [
    (status, who)
    for status in (S.PENDING, S.META_SCHEDULED, S.SCHEDULED, S.RUNNING)
    for who in ("scheduler", "admin", "provider")
    if not (who == "provider" and status is S.PENDING)
]


@pytest.mark.parametrize(("status", "who"), PANICS, ids=[f"{s.name}-by_{w}" for s, w in PANICS])
def test_panic_refunds_everything_and_pays_the_provider_nothing(grid: Grid, status: JobStatus, who: str) -> None:
    job_id = grid.job_in(status)
    grid.chain.increase_time(600)  # a RUNNING job would owe 21_000 units by now
    owner0, prov0 = grid.user.credits(), grid.cpu.credits()
    client = {"scheduler": grid.scheduler, "admin": grid.admin, "provider": grid.cpu}[who]
    receipt = _tx(client, client.market.functions.panic(job_id))
    assert grid.user.job(job_id).status is S.PANICKED
    assert grid.user.credits() - owner0 == CREDITS
    assert grid.cpu.credits() == prov0
    assert (_settled(grid, receipt)["billed"], _settled(grid, receipt)["refunded"]) == (0, CREDITS)


def test_bill_is_capped_at_the_escrow(grid: Grid) -> None:
    job_id, _ = _running(grid, credits=5_000)  # 5000 units last 142 s at 2100/min
    owner0, prov0 = grid.user.credits(), grid.cpu.credits()
    grid.chain.increase_time(3_600)  # would be 126_000 units uncapped
    receipt = _tx(grid.cpu, grid.cpu.market.functions.finish(job_id, 0))
    assert grid.cpu.credits() - prov0 == 5_000
    assert grid.user.credits() == owner0
    assert (_settled(grid, receipt)["billed"], _settled(grid, receipt)["refunded"]) == (5_000, 0)


def test_top_up_extends_a_job_that_would_be_out_of_credits(grid: Grid) -> None:
    job_id, started = _running(grid, credits=2_100)  # one minute
    grid.chain.increase_time(30)
    assert grid.user.market.functions.billSoFar(job_id).call() < 2_100  # half used: a top-up still counts...
    grid.stranger.top_up(job_id, Credits(units=10_000))  # ...whoever pays (once used up, it reverts:
    assert grid.user.job(job_id).escrow == 12_100      # test_a_top_up_never_pays_for_time_that_ran_unfunded)
    grid.chain.increase_time(90)  # past what the first escrow bought
    with pytest.raises(errors.EscrowNotExhausted):
        _tx(grid.stranger, grid.stranger.market.functions.reportOutOfCredits(job_id))
    prov0, owner0, stranger0 = grid.cpu.credits(), grid.user.credits(), grid.stranger.credits()
    receipt = _tx(grid.cpu, grid.cpu.market.functions.finish(job_id, 0))
    bill = SMALL_RATE * (_ts(grid, receipt) - started) // 60
    assert 2_100 < bill < 12_100  # more than the first escrow bought
    assert grid.cpu.credits() - prov0 == bill
    assert grid.user.credits() - owner0 == 12_100 - bill  # the refund goes to the owner, not the payer
    assert grid.stranger.credits() == stranger0


# ---------------------------------------------------------------------------------- pull payments
def test_withdraw_moves_exactly_the_internal_balance(grid: Grid) -> None:
    job_id, _ = _running(grid)
    grid.chain.increase_time(90)
    grid.cpu.finish(job_id, 0)
    earned = grid.cpu.credits()
    assert earned > 0
    tokens0, market0 = grid.cpu.token_balance(), grid.cpu.token_balance(grid.deployment.market)
    assert grid.cpu.withdraw().amount == earned
    assert grid.cpu.token_balance() - tokens0 == earned
    assert market0 - grid.cpu.token_balance(grid.deployment.market) == earned
    assert grid.cpu.credits() == 0
    # nothing left: the contract says so, and the SDK raises the contract's error before sending anything
    with pytest.raises(errors.NothingToWithdraw):
        _tx(grid.cpu, grid.cpu.market.functions.withdraw())
    block = grid.chain.block_number()
    with pytest.raises(errors.NothingToWithdraw) as info:
        grid.cpu.withdraw()
    assert info.value.args_dict["account"] == grid.cpu.address
    assert grid.chain.block_number() == block
    # the next earning is withdrawable again, in full
    job_id, _ = _running(grid)
    grid.chain.increase_time(60)
    grid.cpu.finish(job_id, 0)
    again = grid.cpu.credits()
    assert again > 0 and grid.cpu.withdraw().amount == again
    assert grid.cpu.token_balance() - tokens0 == earned + again


def test_nothing_to_withdraw_for_an_account_that_never_earned(grid: Grid) -> None:
    with pytest.raises(errors.NothingToWithdraw) as info:
        _tx(grid.stranger, grid.stranger.market.functions.withdraw())
    assert info.value.args_dict["account"] == grid.stranger.address


def test_internal_balance_is_spent_first_on_the_next_submit(grid: Grid) -> None:
    job_id = grid.job_in(S.PENDING)
    grid.user.cancel(job_id)
    assert grid.user.credits() == CREDITS
    tokens0 = grid.user.token_balance()
    # covered by the refund: no token moves at all
    receipt_block = grid.chain.block_number()
    grid.submit(credits=CREDITS // 4)
    assert grid.chain.block_number() == receipt_block + 1  # one transaction, no approve or permit
    assert len(grid.user.token.events.Transfer().get_logs(from_block=receipt_block + 1)) == 0
    assert grid.user.token_balance() == tokens0
    assert grid.user.credits() == CREDITS - CREDITS // 4
    # partly covered: the rest of the balance, then exactly the difference in tokens
    grid.submit(credits=CREDITS)
    assert grid.user.credits() == 0
    assert tokens0 - grid.user.token_balance() == CREDITS // 4


# ---------------------------------------------------------------------------------- rate snapshot
def test_price_update_after_assignment_does_not_change_the_bill(grid: Grid) -> None:
    job_id = grid.job_in(S.META_SCHEDULED)
    grid.cpu.update_prices(Prices.from_units(CPU_PRICES.per_cpu_minute * 10, 0, CPU_PRICES.per_gb_minute * 10))
    new_rate = Prices.from_units(CPU_PRICES.per_cpu_minute * 10, 0, CPU_PRICES.per_gb_minute * 10).rate_for(SMALL)
    assert grid.user.market.functions.quote(grid.cpu.address, 2, 0, 1024).call() == new_rate
    grid.cpu.claim(job_id)
    receipt = _tx(grid.cpu, grid.cpu.market.functions.start(job_id))
    started = _ts(grid, receipt)
    grid.chain.increase_time(90)
    prov0 = grid.cpu.credits()
    receipt = _tx(grid.cpu, grid.cpu.market.functions.finish(job_id, 0))
    assert grid.user.job(job_id).rate == SMALL_RATE
    assert grid.cpu.credits() - prov0 == SMALL_RATE * (_ts(grid, receipt) - started) // 60
    # a new assignment takes the new price
    assert grid.user.job(grid.job_in(S.META_SCHEDULED)).rate == new_rate


# ---------------------------------------------------------------------------------- capacity
def _spend_all(grid: Grid, job_id: int) -> None:
    grid.chain.increase_time(30_000)  # 1 credit lasts 28_571 s at SMALL_RATE
    grid.stranger.wallet.transact(grid.stranger.market.functions.reportOutOfCredits(job_id))


def _time_out(grid: Grid, job_id: int) -> None:
    grid.chain.increase_time(301)  # the grid's claim timeout is 300 s
    grid.stranger.wallet.transact(grid.stranger.market.functions.timeoutClaim(job_id))


# fmt: off
#: How a job that holds capacity ends: (status it holds capacity in, the ending, status after).
ENDINGS: dict[str, tuple[JobStatus, Any, JobStatus]] = {
    "finish_exit0":          (S.RUNNING,        lambda g, j: g.cpu.finish(j, 0),        S.FINISHED),
    "finish_exit3":          (S.RUNNING,        lambda g, j: g.cpu.finish(j, 3),        S.FAILED),
    "out_of_credits":        (S.RUNNING,        _spend_all,                             S.OUT_OF_CREDITS),
    "cancel_running":        (S.RUNNING,        lambda g, j: g.user.cancel(j),          S.CANCELED),
    "cancel_meta_scheduled": (S.META_SCHEDULED, lambda g, j: g.user.cancel(j),          S.CANCELED),
    "panic_scheduled":       (S.SCHEDULED,      lambda g, j: g.scheduler.panic(j),      S.PANICKED),
    "panic_running":         (S.RUNNING,        lambda g, j: g.cpu.panic(j),            S.PANICKED),
    "refuse_meta_scheduled": (S.META_SCHEDULED, lambda g, j: g.cpu.refuse(j),           S.PENDING),
    "refuse_scheduled":      (S.SCHEDULED,      lambda g, j: g.cpu.refuse(j),           S.PENDING),
    "claim_timeout":         (S.META_SCHEDULED, _time_out,                              S.PENDING),
}
# fmt: on


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_capacity_is_released(grid: Grid, ending: str) -> None:
    holding, end, after = ENDINGS[ending]
    total = grid.cpu.info().total
    assert _free(grid) == total
    job_id = grid.job_in(holding, credits=CREDIT_UNIT)
    assert _free(grid) == total - SMALL  # reserved from assignment on
    end(grid, job_id)
    assert grid.user.job(job_id).status is after
    assert _free(grid) == total
    # really free: a job needing the whole machine can be assigned now
    whole = grid.submit(resources=total)
    grid.scheduler.assign(whole, grid.cpu.address)
    assert _free(grid) == Resources(0, 0, 0)


# ---------------------------------------------------------------------------------- assignment checks
def _assign_fails(grid: Grid, job_id: int, provider: ProviderClient, error: type[Exception], labels: Any = ()) -> Any:
    """Assigning must revert with ``error`` and leave the job and the provider untouched."""
    job0, prov0 = grid.user.job(job_id), provider.info()
    with pytest.raises(error) as info:
        grid.scheduler.assign(job_id, provider.address, labels)
    assert grid.user.job(job_id) == job0 and job0.status is S.PENDING
    assert provider.info() == prov0
    return info.value


def test_paused_provider_gets_no_assignment_until_it_resumes(grid: Grid) -> None:
    job_id = grid.submit()
    grid.cpu.pause()
    err = _assign_fails(grid, job_id, grid.cpu, errors.ProviderIsPaused)
    assert err.args_dict["provider"] == grid.cpu.address
    grid.cpu.resume()
    grid.scheduler.assign(job_id, grid.cpu.address)
    assert grid.user.job(job_id).status is S.META_SCHEDULED


def test_paused_provider_keeps_its_current_jobs(grid: Grid) -> None:
    job_id = grid.job_in(S.META_SCHEDULED)
    grid.cpu.pause()
    grid.cpu.claim(job_id)
    grid.cpu.start(job_id)
    grid.cpu.finish(job_id, 0)
    assert grid.user.job(job_id).status is S.FINISHED


@pytest.mark.parametrize("who", ["banned", "pending", "removed", "never_registered"])
def test_unapproved_provider_gets_no_assignment(grid: Grid, who: str) -> None:
    job_id = grid.submit()
    if who == "banned":
        grid.admin.ban(grid.spare.address)
    elif who == "removed":
        grid.admin.remove(grid.spare.address)
    provider = {"pending": grid.pending, "never_registered": ProviderClient(grid.stranger.wallet, grid.deployment)}
    target = provider.get(who, grid.spare)
    err = _assign_fails(grid, job_id, target, errors.ProviderNotApproved)
    assert err.args_dict["provider"] == target.address


def test_price_above_the_cap_is_refused(grid: Grid) -> None:
    job_id = grid.submit(max_rate=SMALL_RATE - 1)
    err = _assign_fails(grid, job_id, grid.cpu, errors.PriceAboveCap)
    assert (err.args_dict["rate"], err.args_dict["maxRate"]) == (SMALL_RATE, SMALL_RATE - 1)
    at_cap = grid.submit(max_rate=SMALL_RATE)  # a cap equal to the rate is fine
    grid.scheduler.assign(at_cap, grid.cpu.address)
    assert grid.user.job(at_cap).rate == SMALL_RATE


def test_insufficient_capacity_is_refused(grid: Grid) -> None:
    job_id = grid.submit(resources=Resources(4, 0, 1024))
    grid.scheduler.assign(job_id, grid.spare.address)  # spare: 4 cpus, now all taken
    second = grid.submit(resources=Resources(1, 0, 1024))
    err = _assign_fails(grid, second, grid.spare, errors.InsufficientCapacity)
    assert tuple(err.args_dict["free"]) == (0, 0, 8_192 - 1024, 0, 0)  # cpus, gpus, MB, disk GB, persistent GB


A100 = parse_constraint("gpu.model == A100")


def test_label_constraint_admits_the_gpu_provider_only(grid: Grid) -> None:
    job_id = grid.submit(labels=(A100,))
    err = _assign_fails(grid, job_id, grid.cpu, errors.LabelMismatch, on_chain([A100]))
    assert err.args_dict["key"] == encode_key("gpu.model")
    grid.scheduler.assign(job_id, grid.gpu.address, on_chain([A100]))
    job = grid.user.job(job_id)
    assert (job.status, job.provider) == (S.META_SCHEDULED, grid.gpu.address)


@pytest.mark.parametrize(
    "given",
    [
        pytest.param((), id="none_given"),
        pytest.param(("gpu.model == H100",), id="other_value"),
        pytest.param(("gpu.model == A100", "gpu.mem >= 40"), id="one_more"),
        pytest.param(("gpu.model != A100",), id="other_op"),
    ],
)
def test_constraints_given_at_assignment_must_be_the_submitted_ones(grid: Grid, given: tuple[str, ...]) -> None:
    job_id = grid.submit(labels=(A100,))
    labels = on_chain([parse_constraint(t) for t in given])
    err = _assign_fails(grid, job_id, grid.gpu, errors.LabelsMismatch, labels)
    assert err.args_dict["jobId"] == job_id


def test_constraints_given_for_a_job_without_any_are_refused(grid: Grid) -> None:
    job_id = grid.submit()
    _assign_fails(grid, job_id, grid.gpu, errors.LabelsMismatch, on_chain([A100]))


@pytest.mark.parametrize(
    ("constraint", "ok"),
    [
        ("gpu.mem >= 40", True),
        ("gpu.mem >= 80", True),
        ("gpu.mem > 80", False),
        ("gpu.mem >= 100", False),
        ("gpu.mem < 100", True),
        ("gpu.mem <= 79", False),
        ("gpu.mem == 80", True),
        ("gpu.mem != 80", False),
        ("gpu.model >= 1", False),  # a text label never orders
        ("zone != eu", True),  # absent label: only != holds
        ("zone == eu", False),
    ],
)
def test_numeric_and_text_label_operators_on_chain(grid: Grid, constraint: str, ok: bool) -> None:
    c = parse_constraint(constraint)
    job_id = grid.submit(labels=(c,))
    if ok:
        grid.scheduler.assign(job_id, grid.gpu.address, on_chain([c]))
        assert grid.user.job(job_id).status is S.META_SCHEDULED
    else:
        err = _assign_fails(grid, job_id, grid.gpu, errors.LabelMismatch, on_chain([c]))
        assert err.args_dict["key"] == encode_key(c.key)
