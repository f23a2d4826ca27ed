"""The SDK a dApp developer reaches for: money, submission from a Workflow, feasibility before locking
credits, signers, read-only clients, typed receipts, errors that web3 code catches, job arrays, async."""

from __future__ import annotations

import asyncio
import json
import pickle
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.exceptions import ContractLogicError

import dsq_chain
from dsq_chain import AsyncGridClient, Credits, GridClient, JobStatus, errors, signers
from dsq_chain.cli.common import parse_credits
from dsq_chain.sdk.events import JobAssigned, JobSettled, JobSubmitted, Withdrawn
from dsq_chain.sdk.receipts import LogEvent, Receipt, Submission
from dsq_chain.services.scheduler import explain
from dsq_chain.types import Prices, Resources
from dsq_chain.workloads import workflow as wfmod
from dsq_chain.workloads.labels import parse_constraint
from tests.grid import SMALL, SMALL_RATE, WORKFLOW, Grid, workflow_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


# ---------------------------------------------------------------------------------- money
def test_credits_are_exact_and_know_the_six_decimals() -> None:
    assert Credits("2.5").units == 2_500_000
    assert Credits(Decimal("0.000001")) == Credits(units=1)
    assert Credits(3).units == 3_000_000  # a whole number given to Credits() is credits
    assert Credits("0.1") + Credits("0.2") == Credits("0.3")  # exact, unlike floats
    assert Credits("1.5") * 4 == Credits(6) and -Credits(1) == Credits(units=-1_000_000)
    assert str(Credits("2.50")) == "2.5" and repr(Credits("2.5")) == "Credits('2.5')"
    assert Credits("2.5").amount == Decimal("2.5")
    assert pickle.loads(pickle.dumps(Credits("7.25"))) == Credits("7.25")
    assert isinstance(Credits(1) + 5, Credits)  # ints are base units
    assert parse_credits("2.5") == Credits("2.5")  # the CLI parses with the same type


@pytest.mark.parametrize("bad, message", [
    (lambda: Credits(0.1), "floats are not exact"),  # type: ignore[arg-type]
    (lambda: Credits("1e-7"), "more than 6 decimals"),
    (lambda: Credits("ten"), "must be a number of credits"),
    (lambda: Credits.of(1), "plain int is ambiguous"),
    (lambda: Credits(units=1.5), "whole number of base units"),  # type: ignore[arg-type]
    (lambda: Credits.parse("-1"), "positive"),
])
def test_bad_amounts_are_refused_with_what_to_write(bad: Any, message: str) -> None:
    with pytest.raises(errors.InputError, match=message):
        bad()


def test_float_arithmetic_is_refused() -> None:
    with pytest.raises(TypeError, match="floats are not exact"):
        Credits(1) * 1.5
    with pytest.raises(TypeError, match="floats are not exact"):
        Credits(1) + 0.5


def test_amounts_in_the_api_refuse_plain_ints_and_floats(grid: Grid) -> None:
    before = grid.chain.block_number()
    with pytest.raises(errors.InputError, match=r"Credits\(1\) for 1 credit"):
        grid.user.submit(WORKFLOW, credits=1, max_rate=Credits(1))  # type: ignore[arg-type]
    with pytest.raises(errors.InputError, match="floats are not exact"):
        grid.user.submit(WORKFLOW, credits=1.5, max_rate=Credits(1))  # type: ignore[arg-type]
    assert grid.chain.block_number() == before


# ---------------------------------------------------------------------------------- public face
def test_prices_are_credits_in_arguments_records_events_and_the_cli(grid: Grid) -> None:
    from dsq_chain.cli.jobs import provider_rows
    from dsq_chain.sdk.events import ProviderPricesUpdated

    prices = Prices(Credits("0.002"), "0.05", Decimal("0.0001"))
    assert prices.units == (2_000, 50_000, 100) and prices == Prices.from_units(2_000, 50_000, 100)
    rate = prices.rate_for(Resources(2, 1, 1024))
    assert rate == Credits("0.0541") and isinstance(rate, Credits)
    assert Prices(Credits(1), 0, 0).per_gpu_minute == Credits(0)  # zero is zero in any unit
    with pytest.raises(errors.InputError, match=r"Prices\.per_cpu_minute=1000: a plain int is ambiguous"):
        Prices(1_000)  # type: ignore[arg-type]
    with pytest.raises(errors.InputError, match=r"Prices\.per_gb_minute=0\.1: floats are not exact"):
        Prices(Credits(1), Credits(0), 0.1)  # type: ignore[arg-type]
    with pytest.raises(errors.InputError, match="prices must be a Prices record"):
        grid.cpu.update_prices((1_000, 0, 0))  # type: ignore[arg-type]
    with pytest.raises(errors.InputError, match=r"prices\.per_gpu_minute must be 0\.\.1099511\.627775 credits"):
        grid.cpu.update_prices(Prices(Credits(1), Credits(10**7), Credits(0)))

    event = grid.cpu.update_prices(prices).event("ProviderPricesUpdated")  # the contract encoding: base units
    assert isinstance(event, ProviderPricesUpdated) and event.prices == prices
    record = grid.user.provider(grid.cpu.address)
    assert record.prices == prices
    for p in (event.prices, record.prices):
        assert all(isinstance(getattr(p, f), Credits) for f in ("per_cpu_minute", "per_gpu_minute", "per_gb_minute"))
    assert grid.user.market.functions.getProvider(grid.cpu.address).call()[6] == (2_000, 50_000, 100)  # on chain

    assert provider_rows([record])[0][-3:] == ["0.002", "0.05", "0.0001"]  # `dsq provider list`: credits/min


def test_the_public_names_import_from_the_package() -> None:
    for name in ("GridClient", "ProviderClient", "AdminClient", "Credits", "Workflow", "JobStatus", "errors",
                 "AsyncGridClient", "Receipt", "signers"):
        assert getattr(dsq_chain, name) is not None
        assert name in dir(dsq_chain)


# ---------------------------------------------------------------------------------- submission
def test_submit_takes_a_workflow_a_path_or_text(grid: Grid) -> None:
    wf = wfmod.load(EXAMPLES / "hello.yaml")
    for given in (wf, EXAMPLES / "hello.yaml", str(EXAMPLES / "hello.yaml"), (EXAMPLES / "hello.yaml").read_text(),
                  wf.canonical()):
        [job_id] = grid.user.submit(given, credits=Credits("1.5"), max_rate=Credits(1))
        job = grid.user.job(job_id)
        # The workflow hash lives in the submission event only (not in storage since the contracts split).
        [submitted] = [e for e in grid.user.events(job_id) if isinstance(e, JobSubmitted)]
        assert job.resources == wf.resources and submitted.workflow_hash == wf.hash()
        assert job.escrow == Credits("1.5") and isinstance(job.escrow, Credits)


def test_raw_bytes_must_parse_and_agree(grid: Grid) -> None:
    before = grid.chain.block_number()
    with pytest.raises(errors.InputError, match="not a canonical workflow"):
        grid.user.submit(b"steps: [{name: a, run: {command: 'true'}}]", credits=Credits(1), max_rate=Credits(1))
    with pytest.raises(errors.InputError, match="disagree with the workflow's"):
        grid.user.submit(WORKFLOW, resources=Resources(4, 0, 1024), credits=Credits(1), max_rate=Credits(1))
    with pytest.raises(errors.InputError, match=r"labels=.* disagree"):
        grid.user.submit(WORKFLOW, labels=[parse_constraint("zone == eu")], credits=Credits(1), max_rate=Credits(1))
    with pytest.raises(errors.InputError, match="not found"):
        grid.user.submit("no-such-file.yaml", credits=Credits(1), max_rate=Credits(1))
    assert grid.chain.block_number() == before
    # agreeing resources and labels are fine
    wf = workflow_for(SMALL, (parse_constraint("zone == eu"),))
    assert len(grid.user.submit(wf.canonical(), resources=SMALL, labels=wf.labels, credits=Credits(1),
                                max_rate=Credits(1))) == 1


def test_infeasible_jobs_are_refused_with_explains_verdicts_unless_forced(grid: Grid) -> None:
    before = (grid.chain.block_number(), grid.user.token_balance())
    low_cap = Credits(units=SMALL_RATE - 1)  # below every provider's rate for SMALL
    with pytest.raises(errors.Infeasible) as info:
        grid.user.submit(WORKFLOW, credits=Credits(1), max_rate=low_cap)
    assert (grid.chain.block_number(), grid.user.token_balance()) == before  # nothing sent, nothing locked
    reasons = info.value.reasons
    assert set(reasons) == {grid.cpu.address, grid.gpu.address, grid.spare.address}  # every approved provider
    assert reasons[grid.cpu.address] == f"price: rate {SMALL_RATE} > cap {SMALL_RATE - 1} credits/min"
    # forced, it waits; the scheduler's explain gives the same verdict per provider
    [job_id] = grid.user.submit(WORKFLOW, credits=Credits(1), max_rate=low_cap, force=True)
    why = explain(grid.scheduler.wallet, grid.deployment, job_id)
    assert not isinstance(why, str)
    for v in why.verdicts:
        if v.address in reasons:
            assert v.rejection is not None and v.rejection.reason == reasons[v.address]


def test_labels_nobody_has_are_infeasible(grid: Grid) -> None:
    wf = workflow_for(SMALL, (parse_constraint("gpu.model == H100"),))
    with pytest.raises(errors.Infeasible, match=r"gpu\.model == H100") as info:
        grid.user.submit(wf, credits=Credits(1), max_rate=Credits(1))
    assert "provider has A100" in info.value.reasons[grid.gpu.address]
    ok = grid.user.check(workflow_for(SMALL, (parse_constraint("gpu.model == A100"),)), max_rate=Credits(1))
    assert [v.address for v in ok.placeable] == [grid.gpu.address]


def test_the_cli_refuses_what_the_sdk_refuses(grid: Grid, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dsq_chain.cli import app

    path = tmp_path / "h100.json"
    path.write_text(workflow_for(SMALL, (parse_constraint("gpu.model == H100"),)).canonical().decode())
    grid.deployment.save(tmp_path / "deployment.json")
    env = {"DSQ_PRIVATE_KEY": "0x" + bytes(grid.user.wallet.account.key).hex(),
           "DSQ_DEPLOYMENT": str(tmp_path / "deployment.json"), "DSQ_RPC_URL": grid.chain.rpc_url}
    with pytest.raises(errors.Infeasible) as sdk:
        grid.user.submit(path, credits=Credits(1), max_rate=Credits(1000))
    before = grid.chain.block_number()
    result = CliRunner().invoke(app, ["submit", str(path), "--credits", "1"], env=env)
    assert result.exit_code == 2, result.output
    assert grid.chain.block_number() == before
    for address, reason in sdk.value.reasons.items():
        assert f"{address}: {reason}" in " ".join(result.output.split()), result.output
    forced = CliRunner().invoke(app, ["submit", str(path), "--credits", "1", "--force", "--json"], env=env)
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["job_ids"] == [grid.user.job_count()]


# ---------------------------------------------------------------------------------- records and receipts
def test_job_records_carry_escrow_rate_bill_and_refund_as_credits(grid: Grid) -> None:
    job_id = grid.job_in(JobStatus.RUNNING)
    grid.chain.increase_time(60)
    running = grid.user.job(job_id)
    assert running.rate == Credits(units=SMALL_RATE) and isinstance(running.rate, Credits)
    assert running.billed is not None and running.billed >= Credits(units=SMALL_RATE) and running.refunded is None
    receipt = grid.cpu.finish(job_id, 0)
    settled = receipt.event("JobSettled")
    assert isinstance(settled, JobSettled)
    done = grid.user.job(job_id)
    assert done.status is JobStatus.FINISHED
    assert (done.billed, done.refunded) == (Credits(units=settled.billed), Credits(units=settled.refunded))
    assert done.billed + done.refunded == Credits(10)
    assert grid.user.jobs([job_id])[0].billed == done.billed
    for job in (running, done, *grid.user.jobs_of()):
        amounts = (job.escrow, job.rate, job.max_rate, job.billed, job.refunded)
        assert all(isinstance(a, Credits) for a in amounts if a is not None), amounts
    assert (type(done.billed), type(done.refunded), type(running.billed)) == (Credits, Credits, Credits)


def test_every_transaction_returns_a_typed_receipt(grid: Grid) -> None:
    sub = grid.user.submit(WORKFLOW, credits=Credits(2), max_rate=Credits(1), count=3)
    assert isinstance(sub, Submission) and isinstance(sub, Receipt)
    assert sub.status == 1 and sub.gas_used > 0 and sub.block_number == grid.chain.block_number()
    assert sub.tx_hash.startswith("0x") and len(sub.tx_hash) == 66
    names = [e.name for e in sub.events]
    assert "JobSubmitted" in names and "Transfer" in names  # the market's and the token's events, decoded
    first, *_ = sub
    assert list(sub) == [first, first + 1, first + 2] == list(sub.job_ids) and sub == list(sub)
    transfer = sub.event("Transfer")
    assert isinstance(transfer, LogEvent) and transfer.args["value"] == Credits(6)  # the token's event
    assigned = grid.scheduler.assign(first, grid.cpu.address).event("JobAssigned")
    assert isinstance(assigned, JobAssigned)  # the market's typed record
    assert (assigned.job_id, assigned.provider, assigned.rate) == (first, grid.cpu.address, SMALL_RATE)
    for r in (grid.cpu.claim(first), grid.cpu.pause(), grid.cpu.resume(), grid.user.cancel(first + 1),
              grid.user.top_up(first + 2, Credits("0.5"))):
        assert isinstance(r, Receipt) and r.status == 1 and r.events
    with pytest.raises(KeyError, match="no Withdrawn event"):
        sub.event("Withdrawn")


def test_withdraw_returns_the_amount_and_nothing_raises_the_contracts_error(grid: Grid) -> None:
    grid.user.cancel(grid.submit())
    w = grid.user.withdraw()
    withdrawn = w.event("Withdrawn")
    assert w.amount == Credits(10) and isinstance(withdrawn, Withdrawn) and withdrawn.amount == Credits(10)
    with pytest.raises(errors.NothingToWithdraw) as info:
        grid.user.withdraw()
    assert info.value.args_dict == {"account": grid.user.address}


def test_contract_errors_are_web3_contract_logic_errors_with_decoded_enums(grid: Grid) -> None:
    job_id = grid.job_in(JobStatus.FINISHED)
    with pytest.raises(ContractLogicError) as info:  # what web3 code catches
        grid.user.cancel(job_id)
    e = info.value
    assert isinstance(e, errors.InvalidStatus) and isinstance(e, errors.ContractError)
    assert e.args_dict["status"] is JobStatus.FINISHED
    assert "status=FINISHED" in str(e) and e.data.startswith("0x")
    with pytest.raises(errors.NotJobOwner):
        grid.stranger.cancel(grid.submit())


# ---------------------------------------------------------------------------------- signers, read-only
def test_connect_is_typed_and_reads_without_a_key(grid: Grid, tmp_path: Path) -> None:
    job_id = grid.submit()
    dep = tmp_path / "deployment.json"
    grid.deployment.save(dep)
    reader = GridClient.connect(grid.chain.rpc_url, dep)
    assert reader.read_only and reader.job(job_id).owner == grid.user.address
    assert reader.balance(grid.user.address) == grid.user.balance()
    assert [j.id for j in reader.jobs_of(grid.user.address)] == [job_id]
    before = grid.chain.block_number()
    with pytest.raises(errors.InputError, match="read-only"):
        reader.cancel(job_id)
    with pytest.raises(errors.InputError, match="read-only"):
        reader.submit(WORKFLOW, credits=Credits(1), max_rate=Credits(1), force=True)
    assert grid.chain.block_number() == before


class CountingRemoteSigner:
    """A remote signer as a dApp would plug one in: it holds the key elsewhere and counts requests."""

    def __init__(self, account: LocalAccount) -> None:
        self._inner = signers.LocalSigner(account)
        self.requests: list[str] = []

    @property
    def address(self) -> str:
        return self._inner.address

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        self.requests.append("tx")
        return self._inner.sign_transaction(tx)

    def sign_typed_data(self, typed: dict[str, Any]) -> tuple[int, bytes, bytes]:
        self.requests.append(typed["primaryType"])
        return self._inner.sign_typed_data(typed)


def test_any_signer_local_account_keystore_or_remote(grid: Grid, tmp_path: Path) -> None:
    acct = Account.create()
    grid.admin.mint(acct.address, Credits(50))
    grid.chain.call_rpc("anvil_setBalance", [acct.address, hex(10**19)])
    remote = CountingRemoteSigner(acct)
    assert isinstance(remote, signers.Signer)
    client = GridClient.connect(grid.chain.rpc_url, grid.deployment, remote)
    [job_id] = client.submit(WORKFLOW, credits=Credits(1), max_rate=Credits(1))
    assert remote.requests == ["Permit", "tx"]  # paid by permit, in one transaction
    assert client.job(job_id).owner == acct.address
    # the same account from a LocalAccount, and from a keystore file
    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(acct.key, "secret")))
    for signer in (acct, signers.from_keystore(keystore, "secret")):
        c = GridClient.connect(grid.chain.rpc_url, grid.deployment, signer)
        assert c.address == acct.address and len(c.submit(WORKFLOW, credits=Credits(1), max_rate=Credits(1))) == 1
    with pytest.raises(errors.InputError, match="wrong password"):
        signers.from_keystore(keystore, "nope")
    with pytest.raises(errors.InputError, match="cannot sign with a int"):
        GridClient.connect(grid.chain.rpc_url, grid.deployment, 5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- arrays, waiting, events
def test_jobs_in_arrays_have_events_and_owners_without_knowing_the_head(grid: Grid) -> None:
    single = grid.submit()
    array = list(grid.user.submit(WORKFLOW, credits=Credits(1), max_rate=Credits(1), count=4))
    assert [j.id for j in grid.user.jobs_of()] == [single, *array]
    third = array[2]
    grid.scheduler.assign(third, grid.cpu.address)
    grid.cpu.claim(third)
    seen: list[JobStatus] = []
    done = grid.user.wait_for(third, [JobStatus.SCHEDULED], timeout=10, progress=lambda j: seen.append(j.status))
    assert (done.id, done.head_id, seen) == (third, array[0], [JobStatus.SCHEDULED])
    reader = GridClient.connect(grid.chain.rpc_url, grid.deployment)  # anyone's jobs, read-only
    assert [j.id for j in reader.jobs_of(grid.user.address)] == [single, *array]
    names = [e.name for e in grid.user.events(third)]
    assert names == ["JobSubmitted", "JobAssigned", "JobStatusChanged"]
    submitted = grid.user.events(third)[0]
    assert isinstance(submitted, JobSubmitted) and third in submitted.job_ids and submitted.count == 4


def test_wait_for_reports_progress(grid: Grid) -> None:
    job_id = grid.job_in(JobStatus.SCHEDULED)
    seen: list[JobStatus] = []
    assert grid.user.wait_for(job_id, [JobStatus.SCHEDULED], progress=lambda j: seen.append(j.status)).id == job_id
    assert seen == [JobStatus.SCHEDULED]
    with pytest.raises(TimeoutError, match="still SCHEDULED"):
        grid.user.wait_for(job_id, timeout=0.3, progress=lambda j: seen.append(j.status))
    assert seen == [JobStatus.SCHEDULED, JobStatus.SCHEDULED]


# ---------------------------------------------------------------------------------- async
def test_async_client_submits_waits_cancels_and_withdraws(grid: Grid) -> None:
    key = grid.user.wallet.account.key

    async def main() -> tuple[list[int], JobStatus, Credits, list[str]]:
        client = await AsyncGridClient.connect(grid.chain.rpc_url, grid.deployment, key)
        ids = list(await client.submit(WORKFLOW, credits=Credits(2), max_rate=Credits(1), count=2))
        with pytest.raises(errors.Infeasible):
            await client.submit(WORKFLOW, credits=Credits(2), max_rate=Credits(units=1))
        await client.cancel(ids[0])
        with pytest.raises(errors.InvalidStatus):
            await client.cancel(ids[0])
        job = await client.wait_for(ids[0])
        events = [e.name for e in await client.events(ids[1])]
        w = await client.withdraw()
        mine = [j.id for j in await client.jobs_of()]
        assert mine[-2:] == ids
        return ids, job.status, w.amount, events

    ids, status, amount, events = asyncio.run(main())
    assert status is JobStatus.CANCELED and amount >= Credits(2)
    assert events == ["JobSubmitted"]
    assert grid.user.job(ids[1]).status is JobStatus.PENDING


def test_the_async_client_closes_its_http_session(grid: Grid) -> None:
    """``close()`` (or leaving ``async with``) closes the aiohttp session; a later call opens a new one."""

    async def main() -> tuple[int, int, int, int]:
        async with await AsyncGridClient.connect(grid.chain.rpc_url, grid.deployment) as client:
            await client.providers()
            sessions = client.w3.provider._request_session_manager.session_cache  # type: ignore[attr-defined]
            [session] = [s for _, s in sessions.items()]
            open_inside = len(sessions)
        closed_after = int(session.closed)
        await client.providers()  # still usable: a new session
        reopened = len(sessions)
        await client.close()
        return open_inside, closed_after, reopened, len(sessions)

    assert asyncio.run(main()) == (1, 1, 1, 0)


def test_a_mined_revert_in_a_batch_names_its_own_error(grid: Grid) -> None:
    """The second of two batched cancels of one job reverts when mined (each passed estimation alone):
    its error comes from the node's trace of that transaction, not from a replay on the block before."""
    from dsq_chain.sdk.chain import Call

    job_id = grid.submit()
    cancel = grid.user.market.functions.cancel(job_id)
    with pytest.raises(errors.InvalidStatus) as info:
        grid.user.wallet.transact_many([Call(cancel, gas=200_000), Call(cancel, gas=200_000)])
    assert info.value.args_dict == {"jobId": job_id, "status": JobStatus.CANCELED}
    assert grid.user.job(job_id).status is JobStatus.CANCELED
