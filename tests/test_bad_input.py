"""Bad input: a clear error, and nothing changed.

Each bad submission is tried twice: through the SDK, which must raise ``InputError`` before sending
anything (the block number does not move), and directly against the contract, bypassing the SDK's
checks, which must revert with its own named error. The direct calls are mined with an explicit gas
limit (no estimation), so the revert happens in a real transaction. After each: job count, internal
balances and token balances are unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from dsq_chain import AsyncGridClient, errors
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Call
from dsq_chain.sdk.client import GridClient
from dsq_chain.types import JobStatus, Resources
from dsq_chain.workloads import workflow as wfmod
from dsq_chain.workloads.labels import on_chain, parse_constraint
from tests.grid import CREDITS, MAX_RATE, SMALL, WORKFLOW, Grid, workflow_for

MAX_WORKFLOW_BYTES = 16_384
NO_REF = b"\0" * 32  # no external reference
REQUEST = (SMALL.cpus, SMALL.gpus, SMALL.mem_mb, MAX_RATE, CREDITS, 0, NO_REF)  # the contract's JobRequest tuple
A100 = on_chain([parse_constraint("gpu.model == A100")])[0]


@dataclass(frozen=True)
class Snapshot:
    job_count: int
    credits: dict[str, int]
    tokens: dict[str, int]
    market_tokens: int
    jobs: list[Any]


def _snapshot(grid: Grid) -> Snapshot:
    accounts, market, token = grid.accounts, grid.user.market, grid.user.token
    n = grid.user.job_count()
    with grid.chain.w3.batch_requests() as batch:
        for a in accounts:
            batch.add(market.functions.balanceOf(a))
        for a in accounts:
            batch.add(token.functions.balanceOf(a))
        batch.add(token.functions.balanceOf(market.address))
        values = [int(v) for v in batch.execute()]
    return Snapshot(
        n,
        dict(zip(accounts, values[: len(accounts)], strict=True)),
        dict(zip(accounts, values[len(accounts) : 2 * len(accounts)], strict=True)),
        values[-1],
        grid.user.jobs(range(1, n + 1)),
    )


@contextmanager
def untouched(grid: Grid, *, transactions: int = 0) -> Iterator[None]:
    """Asserts that the block ends nothing but ``transactions`` reverted transactions: state unchanged."""
    before, block = _snapshot(grid), grid.chain.block_number()
    yield
    assert grid.chain.block_number() == block + transactions
    assert _snapshot(grid) == before


def _direct(client: Any, fn: Any) -> Any:
    """Sends ``fn`` as a mined transaction (explicit gas, no estimation): a revert is a real one."""
    return client.wallet.transact(Call(fn, gas=3_000_000))


def _sdk_submit(client: GridClient, **overrides: Any) -> list[int]:
    kw: dict[str, Any] = {"workflow": WORKFLOW, "resources": SMALL, "credits": CREDITS, "max_rate": MAX_RATE}
    kw.update(overrides)
    if kw["resources"] is None:
        del kw["resources"]
    workflow = kw.pop("workflow")
    return client.submit(workflow, **kw)


# ---------------------------------------------------------------------------------- submissions
# fmt: off
#: (SDK arguments, contract arguments (request, labels, workflow, count), contract error)
BAD_SUBMISSIONS: dict[str, tuple[dict[str, Any], tuple[Any, ...], str]] = {
    "zero_cpus":          ({"resources": Resources(0, 0, 1024)},
                           ((0, 0, 1024, MAX_RATE, CREDITS, 0, NO_REF), [], WORKFLOW, 1), "InvalidResources"),
    "zero_memory":        ({"resources": Resources(2, 0, 0)},
                           ((2, 0, 0, MAX_RATE, CREDITS, 0, NO_REF), [], WORKFLOW, 1), "InvalidResources"),
    "zero_price_cap":     ({"max_rate": Credits(0)},
                           ((2, 0, 1024, 0, CREDITS, 0, NO_REF), [], WORKFLOW, 1), "ZeroPriceCap"),
    "zero_credits":       ({"credits": Credits(0)},
                           ((2, 0, 1024, MAX_RATE, 0, 0, NO_REF), [], WORKFLOW, 1), "ZeroCredits"),
    "empty_workflow":     ({"workflow": b""},
                           (REQUEST, [], b"", 1), "EmptyWorkflow"),
    "oversized_workflow": ({"workflow": b"x" * (MAX_WORKFLOW_BYTES + 1)},
                           (REQUEST, [], b"x" * (MAX_WORKFLOW_BYTES + 1), 1), "WorkflowTooLarge"),
    "zero_jobs":          ({"count": 0},
                           (REQUEST, [], WORKFLOW, 0), "InvalidArrayCount"),
    "1001_jobs":          ({"count": 1001},
                           (REQUEST, [], WORKFLOW, 501), "InvalidArrayCount"),
    "17_labels":          ({"workflow": workflow_for(SMALL, tuple(parse_constraint(f"k{i} == v") for i in range(17)))},
                           (REQUEST, [A100] * 17, WORKFLOW, 1), "TooManyJobLabels"),
}
# fmt: on


@pytest.mark.parametrize("case", list(BAD_SUBMISSIONS))
def test_bad_submission_is_caught_by_the_sdk_before_sending(grid: Grid, case: str) -> None:
    sdk_args, _, _ = BAD_SUBMISSIONS[case]
    with untouched(grid), pytest.raises(errors.InputError):
        _sdk_submit(grid.user, **sdk_args)


@pytest.mark.parametrize("case", list(BAD_SUBMISSIONS))
def test_bad_submission_is_refused_by_the_contract(grid: Grid, case: str) -> None:
    _, args, error = BAD_SUBMISSIONS[case]
    grid.user.wallet.transact(grid.user.token.functions.approve(grid.deployment.market, 2**256 - 1))
    with untouched(grid, transactions=1), pytest.raises(getattr(errors, error)) as info:
        _direct(grid.user, grid.user.market.functions.submit(*args))
    if error == "WorkflowTooLarge":
        assert (info.value.args_dict["size"], info.value.args_dict["max"]) == (MAX_WORKFLOW_BYTES + 1, 16_384)
    if error == "TooManyJobLabels":
        assert (info.value.args_dict["count"], info.value.args_dict["max"]) == (17, 16)


def test_limits_themselves_are_accepted(grid: Grid) -> None:
    """The bad cases above are one step past the limits: the limits themselves pass."""
    labels = tuple(parse_constraint(f"k{i} != v") for i in range(16))
    wf = workflow_for(SMALL, labels)
    pad = MAX_WORKFLOW_BYTES - len(wf.canonical())
    wf = wfmod.loads(wf.canonical().decode().replace('"command":"true"', '"command":"true' + " " * pad + '"'))
    assert len(wf.canonical()) == MAX_WORKFLOW_BYTES
    ids = _sdk_submit(grid.user, workflow=wf, resources=None, credits=Credits(units=1), max_rate=Credits(units=1),
                      force=True)
    assert len(ids) == 1 and grid.user.job(ids[0]).escrow == 1


@pytest.mark.parametrize(
    "resources",
    [Resources(17, 0, 17 * 64), Resources(2, 3, 1024), Resources(2, 0, 65_538)],
    ids=["cpus", "gpus", "memory"],
)
def test_resources_no_provider_has_are_refused_before_sending(grid: Grid, resources: Resources) -> None:
    # largest approved: gpu 16 cpus, 2 gpus, 64 GB; cpu 8 cpus, 0 gpus, 16 GB
    with untouched(grid), pytest.raises(errors.Infeasible, match="no approved provider can run this job") as info:
        _sdk_submit(grid.user, workflow=workflow_for(resources), resources=None)
    kind = "cpus" if resources.cpus > 16 else "gpus" if resources.gpus > 2 else "memory"
    assert info.value.reasons[grid.gpu.address].startswith(kind)


def test_not_enough_tokens(grid: Grid) -> None:
    too_much = grid.stranger.token_balance() + 1
    with untouched(grid), pytest.raises(errors.InputError, match="holds"):
        _sdk_submit(grid.stranger, credits=too_much)
    grid.stranger.wallet.transact(grid.stranger.token.functions.approve(grid.deployment.market, 2**256 - 1))
    with untouched(grid, transactions=1), pytest.raises(errors.ERC20InsufficientBalance) as info:
        _direct(grid.stranger,
                grid.stranger.market.functions.submit((2, 0, 1024, MAX_RATE, too_much, 0, NO_REF), [], WORKFLOW, 1))
    assert info.value.args_dict["needed"] == too_much


def test_job_array_whose_total_exceeds_the_tokens(grid: Grid) -> None:
    per_job = Credits(units=grid.stranger.token_balance() // 10 + 1)
    with untouched(grid), pytest.raises(errors.InputError, match="holds"):
        _sdk_submit(grid.stranger, credits=per_job, count=10)


# ---------------------------------------------------------------------------------- permits
def test_expired_permit(grid: Grid) -> None:
    permit = grid.user.sign_permit(CREDITS, deadline=grid.chain.timestamp() - 1)
    with untouched(grid, transactions=1), pytest.raises(errors.PermitExpired) as info:
        _direct(grid.user, grid.user.market.functions.submitWithPermit(REQUEST, [], WORKFLOW, 1, permit))
    assert info.value.args_dict["deadline"] == permit[1]


@pytest.mark.parametrize("how", ["signed_by_someone_else", "value_altered", "value_too_small"])
def test_unusable_permit_leaves_no_allowance(grid: Grid, how: str) -> None:
    if how == "signed_by_someone_else":
        permit = grid.stranger.sign_permit(CREDITS)  # the stranger's permit cannot pay for the user
    elif how == "value_altered":
        _, deadline, v, r, s = grid.user.sign_permit(CREDITS // 2)
        permit = (CREDITS, deadline, v, r, s)  # signature no longer matches
    else:
        permit = grid.user.sign_permit(CREDITS - 1)  # valid, but one unit short
    with untouched(grid, transactions=1), pytest.raises(errors.ERC20InsufficientAllowance) as info:
        _direct(grid.user, grid.user.market.functions.submitWithPermit(REQUEST, [], WORKFLOW, 1, permit))
    assert info.value.args_dict["spender"] == grid.deployment.market
    assert info.value.args_dict["needed"] == CREDITS
    assert info.value.args_dict["allowance"] == (CREDITS - 1 if how == "value_too_small" else 0)


def test_valid_permit_pays_in_one_transaction(grid: Grid) -> None:
    """Control for the cases above: the same call with a good permit works."""
    tokens0, block = grid.user.token_balance(), grid.chain.block_number()
    permit = grid.user.sign_permit(CREDITS)
    _direct(grid.user, grid.user.market.functions.submitWithPermit(REQUEST, [], WORKFLOW, 1, permit))
    assert grid.chain.block_number() == block + 1
    assert tokens0 - grid.user.token_balance() == CREDITS
    assert grid.user.job(grid.user.job_count()).escrow == CREDITS


# ---------------------------------------------------------------------------------- top-ups
@pytest.mark.parametrize("amount", [0, -5, 2**64], ids=["zero", "negative", "above_uint64"])
def test_bad_top_up_amount_is_caught_by_the_sdk(grid: Grid, amount: int) -> None:
    job_id = grid.submit()
    with untouched(grid), pytest.raises(errors.InputError, match="top-up amount"):
        grid.user.top_up(job_id, Credits(units=amount))


@pytest.mark.parametrize("amount", [0, 2**64], ids=["zero", "above_uint64"])
def test_bad_top_up_amount_is_caught_by_the_async_client_too(grid: Grid, amount: int) -> None:
    job_id = grid.submit()

    async def top_up() -> None:
        client = await AsyncGridClient.connect(grid.chain.rpc_url, grid.deployment, grid.user.wallet.account.key)
        try:
            await client.top_up(job_id, Credits(units=amount))
        finally:
            await client.w3.provider.disconnect()

    with untouched(grid), pytest.raises(errors.InputError, match="top-up amount"):
        asyncio.run(top_up())


def test_zero_top_up_is_refused_by_the_contract(grid: Grid) -> None:
    job_id = grid.submit()
    with untouched(grid, transactions=1), pytest.raises(errors.ZeroCredits):
        _direct(grid.user, grid.user.market.functions.topUp(job_id, 0))


def test_top_up_overflowing_the_escrow(grid: Grid) -> None:
    job_id = grid.submit()
    grid.admin.mint(grid.user.address, Credits(units=2**64))
    grid.user.wallet.transact(grid.user.token.functions.approve(grid.deployment.market, 2**256 - 1))
    with untouched(grid, transactions=1), pytest.raises(errors.EscrowOverflow):
        _direct(grid.user, grid.user.market.functions.topUp(job_id, 2**64 - 1))


def test_top_up_of_a_final_job(grid: Grid) -> None:
    job_id = grid.job_in(JobStatus.FINISHED)
    with untouched(grid), pytest.raises(errors.InvalidStatus):
        grid.user.top_up(job_id, Credits(1))


# ---------------------------------------------------------------------------------- unknown jobs
UNKNOWN = 999


@pytest.mark.parametrize(
    "call",
    ["getJob", "cancel", "topUp", "assign", "claim", "refuse", "start", "finish", "reportOutOfCredits", "panic",
     "timeoutClaim", "billSoFar", "report", "job_zero"],
)
def test_unknown_job_id(grid: Grid, call: str) -> None:
    grid.submit()  # job 1 exists; 999 does not
    f = grid.user.market.functions
    sender: Any = {
        "assign": grid.scheduler, "claim": grid.cpu, "refuse": grid.cpu, "start": grid.cpu, "finish": grid.cpu,
        "report": grid.cpu, "panic": grid.scheduler,
    }.get(call, grid.user)
    fn = {
        "getJob": lambda: f.getJob(UNKNOWN),
        "job_zero": lambda: f.getJob(0),
        "cancel": lambda: f.cancel(UNKNOWN),
        "topUp": lambda: f.topUp(UNKNOWN, 1),
        "assign": lambda: f.assign(UNKNOWN, grid.cpu.address, []),
        "claim": lambda: f.claim(UNKNOWN),
        "refuse": lambda: f.refuse(UNKNOWN),
        "start": lambda: f.start(UNKNOWN),
        "finish": lambda: f.finish(UNKNOWN, 0),
        "reportOutOfCredits": lambda: f.reportOutOfCredits(UNKNOWN),
        "panic": lambda: f.panic(UNKNOWN),
        "timeoutClaim": lambda: f.timeoutClaim(UNKNOWN),
        "billSoFar": lambda: f.billSoFar(UNKNOWN),
        "report": lambda: f.report([(UNKNOWN, 0, 0, 0)]),
    }[call]()
    if call == "report":  # a batch skips the entry (and says why) instead of reverting
        from dsq_chain.sdk.client import skipped_entries

        skipped = skipped_entries(grid.user.market, sender.wallet.transact(fn))
        assert isinstance(skipped[UNKNOWN], errors.JobNotFound)
        return
    if call in ("getJob", "job_zero", "billSoFar"):
        with untouched(grid), pytest.raises(errors.JobNotFound) as info:
            sender.wallet.check(Call(fn))
    else:
        with untouched(grid, transactions=1), pytest.raises(errors.JobNotFound) as info:
            _direct(sender, fn)
    assert info.value.args_dict["jobId"] == (0 if call == "job_zero" else UNKNOWN)


def test_unknown_job_through_the_sdk(grid: Grid) -> None:
    with untouched(grid), pytest.raises(errors.JobNotFound):
        grid.user.job(UNKNOWN)
    with untouched(grid), pytest.raises(errors.JobNotFound):
        grid.user.cancel(UNKNOWN)
    with untouched(grid), pytest.raises(errors.JobNotFound):
        grid.user.top_up(UNKNOWN, Credits(1))
