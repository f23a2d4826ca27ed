"""An `ape test` example: the dsq_chain SDK driven by ape's test accounts, on the Anvil ape-foundry starts.

Run it with ``scripts/ape test examples/ape``. ape's accounts sign (through ``ApeSigner``, picked by
``GridClient.connect`` when given an ape account); the SDK builds, sends and checks the transactions.
"""

from __future__ import annotations

from typing import Any

import pytest

from dsq_chain import AdminClient, Credits, GridClient, JobStatus, ProviderClient, SchedulerClient, errors
from dsq_chain.sdk.chain import Call, Chain
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.sdk.events import JobSettled
from dsq_chain.sdk.signers import ApeSigner
from dsq_chain.types import Prices, Resources

WORKFLOW = """
resources: {tasks: 1, cpusPerTask: 2, memPerCpu: 512}
steps:
  - name: hello
    run: {command: echo hello}
"""


@pytest.fixture(scope="module")
def rpc(networks: Any) -> str:
    return str(networks.provider.http_uri)


@pytest.fixture(scope="module")
def deployment(rpc: str, accounts: Any) -> Deployment:
    return deploy(Chain(rpc).wallet(accounts[0]))  # the ape account deploys, as admin


def test_submit_run_settle_and_withdraw_with_ape_accounts(
    rpc: str, accounts: Any, chain: Any, deployment: Deployment
) -> None:
    admin = AdminClient.connect(rpc, deployment, accounts[0])
    assert isinstance(admin.wallet.signer, ApeSigner)
    user = GridClient.connect(rpc, deployment, accounts[1])
    provider = ProviderClient.connect(rpc, deployment, accounts[2])
    admin.mint(user.address, Credits(100))
    provider.register(Resources(4, 0, 8192), Prices.from_units(per_cpu_minute=1_000))
    admin.approve(provider.address)

    [job_id] = user.submit(WORKFLOW, credits=Credits(5), max_rate=Credits("0.01"))  # paid by permit
    admin.grant_scheduler(admin.address)  # the admin also schedules here (no meta-scheduler running)
    SchedulerClient(admin.wallet, deployment).assign(job_id, provider.address)
    provider.claim(job_id)
    provider.start(job_id)
    chain.mine(1, deltatime=90)  # ape's chain moves Anvil's clock: 90 s of run time
    receipt = provider.finish(job_id, 0)
    settled = receipt.event("JobSettled")
    assert receipt.status == 1 and isinstance(settled, JobSettled) and settled.status is JobStatus.FINISHED

    job = user.job(job_id)
    assert job.status is JobStatus.FINISHED and job.billed is not None and job.refunded is not None
    assert job.billed + job.refunded == Credits(5)
    assert job.billed > 0 and provider.withdraw().amount == job.billed


def test_a_revert_raises_the_contracts_error_not_a_receipt(rpc: str, accounts: Any, deployment: Deployment) -> None:
    stranger = GridClient.connect(rpc, deployment, accounts[3])
    with pytest.raises(errors.NothingToWithdraw):  # refused at estimation: nothing sent
        stranger.withdraw()
    with pytest.raises(errors.JobNotFound):
        stranger.cancel(999)
    # sent anyway (explicit gas, no estimation) and mined: status 0, raised as the contract's error
    block = stranger.chain.block_number()
    with pytest.raises(errors.NothingToWithdraw):
        stranger.wallet.transact(Call(stranger.market.functions.withdraw(), gas=200_000))
    assert stranger.chain.block_number() == block + 1
    mined = stranger.chain.w3.eth.get_block(block + 1, full_transactions=True)["transactions"][0]
    assert stranger.chain.w3.eth.get_transaction_receipt(mined["hash"])["status"] == 0


def test_a_transaction_estimated_fine_but_reverted_when_mined_raises(
    rpc: str, accounts: Any, deployment: Deployment
) -> None:
    admin = AdminClient.connect(rpc, deployment, accounts[0])
    user = GridClient.connect(rpc, deployment, accounts[4])
    admin.mint(user.address, Credits(3))
    [job_id] = user.submit(WORKFLOW, credits=Credits(1), max_rate=Credits("0.01"), force=True)
    user.cancel(job_id)  # the escrow comes back to the internal balance
    assert user.balance() == Credits(1)
    withdraw = user.market.functions.withdraw()
    block = user.chain.block_number()
    # Both are estimated while the balance is 1 credit and signed by ape; the second reverts once mined.
    with pytest.raises(errors.NothingToWithdraw):
        user.wallet.transact_many([withdraw, withdraw])
    statuses = [user.chain.w3.eth.get_transaction_receipt(tx["hash"])["status"]
                for n in range(block + 1, user.chain.block_number() + 1)
                for tx in user.chain.w3.eth.get_block(n, full_transactions=True)["transactions"]]
    assert statuses == [1, 0]
    assert user.balance() == Credits(0) and user.token_balance() == Credits(3)
