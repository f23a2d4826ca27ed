"""``dsq_chain.billing`` against the contract on Anvil, for random prices, escrows, times and endings.

Each example drives one job on the standard grid's ``cpu`` provider to a final status at chosen chain
times (``evm_setNextBlockTimestamp``), with random top-ups on the way, and checks that the Python rule
predicts the contract's ``JobSettled`` (status, billed, refunded) and ``billSoFar`` to the credit unit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from web3.logs import DISCARD

from dsq_chain import billing, errors
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Call, Chain
from dsq_chain.types import JobStatus, Prices
from tests.grid import SMALL, Grid

S = JobStatus
ENDINGS = ("finish", "fail", "cancel_running", "out_of_credits", "panic_running", "cancel_pending",
           "cancel_meta", "cancel_scheduled", "panic_pending", "panic_scheduled")


@pytest.fixture
def pristine(_grid_session: Grid, chain: Chain) -> Iterator[tuple[Grid, Chain]]:
    yield _grid_session, chain


def _ts(chain: Chain, receipt: Any) -> int:
    return chain.timestamp(int(receipt["blockNumber"]))


def _at(chain: Chain, t: int) -> None:
    chain.call_rpc("evm_setNextBlockTimestamp", [t])


def _tx(client: Any, fn: Any) -> Any:
    # explicit gas: Anvil estimates on a block that ignores evm_setNextBlockTimestamp
    return client.wallet.transact(Call(fn, gas=500_000))


def _settled(grid: Grid, receipt: Any) -> tuple[JobStatus, int, int]:
    (ev,) = grid.user.market.events.JobSettled().process_receipt(receipt, errors=DISCARD)
    return S(ev["args"]["status"]), int(ev["args"]["billed"]), int(ev["args"]["refunded"])


def test_pure_rules_edges() -> None:
    assert billing.bill_so_far(60, 100, 101, 10**9) == 1
    assert billing.bill_so_far(59, 100, 101, 10**9) == 0  # rounds down
    assert billing.bill_so_far(6000, 0, 3600, 100) == 100  # capped by the escrow
    assert billing.exhausted_at(2100, 0, 2100) == 60 and billing.exhausted_at(2100, 0, 2101) == 61
    assert billing.finish(60, 0, 100, 10**6, end_time=50).billed == 50  # observed end before the report
    assert billing.finish(60, 10, 100, 10**6, end_time=5).billed == 0  # an end before the start bills nothing
    assert billing.finish(60, 0, 100, 10**6, end_time=500).billed == 100  # never past the report
    assert billing.finish(60, 0, 100, 10**6, exit_code=2).status is S.FAILED
    assert billing.cancel(S.SCHEDULED, 77).refunded == 77
    assert billing.panic(S.RUNNING, 77) == billing.Settlement(S.PANICKED, 0, 77)
    with pytest.raises(billing.BillingError, match="EscrowNotExhausted"):
        billing.out_of_credits(60, 0, 99, 100)
    with pytest.raises(billing.BillingError, match="EscrowOverflow"):
        billing.top_up(S.PENDING, billing.MAX_ESCROW, 1)
    with pytest.raises(billing.BillingError, match="InvalidStatus"):
        billing.cancel(S.FINISHED, 1)
    with pytest.raises(billing.BillingError, match="ZeroCredits"):
        billing.top_up(S.RUNNING, 1, 0)


@settings(max_examples=25, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    per_cpu=st.integers(1, 200_000),
    per_gb=st.integers(0, 5_000),
    escrow=st.integers(1, 10**10),
    ending=st.sampled_from(ENDINGS),
    elapsed=st.integers(0, 400_000),
    top_ups=st.lists(st.tuples(st.integers(0, 200_000), st.integers(1, 3 * 10**8)), max_size=3),
    late=st.integers(0, 120),
)
def test_rules_match_the_contract(pristine: tuple[Grid, Chain], per_cpu: int, per_gb: int, escrow: int, ending: str,
                                  elapsed: int, top_ups: list[tuple[int, int]], late: int) -> None:
    grid, chain = pristine
    snap = chain.snapshot()
    grid.reset_nonces()
    try:
        _one_job(grid, chain, Prices.from_units(per_cpu, 0, per_gb), escrow, ending, elapsed, top_ups, late)
    finally:
        chain.revert(snap)
        grid.reset_nonces()


def _one_job(grid: Grid, chain: Chain, prices: Prices, escrow: int, ending: str, elapsed: int,
             top_ups: list[tuple[int, int]], late: int) -> None:
    grid.cpu.update_prices(prices)
    grid.stranger.wallet.transact(grid.stranger.token.functions.approve(grid.deployment.market, 2**255))
    rate = prices.rate_for(SMALL)
    holding = {"pending": S.PENDING, "meta": S.META_SCHEDULED, "scheduled": S.SCHEDULED}
    before = next((s for k, s in holding.items() if ending.endswith(k)), S.SCHEDULED)
    if ending == "out_of_credits":  # keep the exhaustion time within reach (since is a uint32 on chain)
        escrow = 1 + escrow % (rate * 7_000)
        top_ups = [(offset, 1 + amount % (rate * 7_000)) for offset, amount in top_ups]
    grid.admin.mint(grid.user.address, Credits(units=escrow))  # whatever escrow was drawn, the owner can pay it
    if top_ups:
        grid.admin.mint(grid.stranger.address, Credits(units=sum(amount for _, amount in top_ups)))
    job_id = grid.job_in(before, credits=escrow, max_rate=max(rate, 1))
    fn, prov, owner = grid.user.market.functions, grid.cpu, grid.user
    t = chain.timestamp() + 10
    status, start = before, 0
    if before is S.SCHEDULED and not ending.endswith("scheduled"):
        _at(chain, t)
        start = _ts(chain, _tx(prov, prov.market.functions.start(job_id)))
        assert start == t
        status = S.RUNNING
    # top-ups at increasing times, each checked against billing.top_up
    for offset, amount in sorted(top_ups):
        if offset >= elapsed:
            break
        _at(chain, t + offset)
        so_far = billing.bill_so_far(rate, start, t + offset, escrow) if status is S.RUNNING else 0
        try:
            expected = billing.top_up(status, escrow, amount, so_far)
        except billing.BillingError as e:  # the chain must refuse it with the same error
            with pytest.raises(getattr(errors, e.error)):
                _tx(grid.stranger, grid.stranger.market.functions.topUp(job_id, amount))
            continue
        _tx(grid.stranger, grid.stranger.market.functions.topUp(job_id, amount))  # anyone may pay
        escrow = expected
        assert grid.user.job(job_id).escrow == escrow
    end = t + elapsed
    if ending == "out_of_credits":
        end = max(billing.exhausted_at(rate, start, escrow), chain.timestamp()) + late
        before_end = end - 1
        if before_end >= chain.timestamp() and billing.bill_so_far(rate, start, before_end, escrow) < escrow:
            with pytest.raises(billing.BillingError, match="EscrowNotExhausted"):
                billing.out_of_credits(rate, start, before_end, escrow)
            _at(chain, before_end)
            chain.mine()
            assert fn.billSoFar(job_id).call() == billing.bill_so_far(rate, start, before_end, escrow)
            with pytest.raises(errors.EscrowNotExhausted):
                grid.stranger.wallet.check(Call(grid.stranger.market.functions.reportOutOfCredits(job_id)))
    end = max(end, chain.timestamp())
    if status is S.RUNNING:
        _at(chain, end)
        chain.mine()
        assert fn.billSoFar(job_id).call() == billing.bill_so_far(rate, start, end, escrow)
    _at(chain, end)
    if ending in ("finish", "fail"):
        code = 0 if ending == "finish" else 7
        receipt = _tx(prov, prov.market.functions.finish(job_id, code))
        expected = billing.finish(rate, start, end, escrow, code)
    elif ending == "out_of_credits":
        receipt = _tx(grid.stranger, grid.stranger.market.functions.reportOutOfCredits(job_id))
        expected = billing.out_of_credits(rate, start, end, escrow)
    elif ending.startswith("cancel"):
        receipt = _tx(owner, fn.cancel(job_id))
        expected = billing.cancel(status, escrow, rate, start, end)
    else:
        receipt = _tx(grid.scheduler, grid.scheduler.market.functions.panic(job_id))
        expected = billing.panic(status, escrow)
    assert _ts(chain, receipt) == end
    assert _settled(grid, receipt) == (expected.status, expected.billed, expected.refunded)
    assert expected.billed + expected.refunded == escrow
