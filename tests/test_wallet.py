"""The wallet replaces a transaction the chain will not mine (same nonce, higher fees), on a real Anvil."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account

from dsq_chain import artifacts
from dsq_chain.sdk.anvil import AnvilNode, dev_keys, start_anvil
from dsq_chain.sdk.chain import Chain, Wallet, calldata, fee_fields
from dsq_chain.sdk.client import AdminClient
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.types import ReportAction
from dsq_chain.workloads.labels import on_chain, parse_constraint
from tests.grid import Grid

HIGH_BASE_FEE = 10**12  # far above what the first signature allows (2 x the old base fee + tip)


@pytest.fixture
def node() -> Iterator[AnvilNode]:
    """A node of our own: the test raises the base fee and turns automine off and on."""
    with start_anvil() as n:
        yield n


def _mint_in_background(wallet: Wallet, dep: Deployment, to: str) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["receipt"] = wallet.transact(AdminClient(wallet, dep).token.functions.mint(to, 5))
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def _pending(chain: Chain, address: str) -> int:
    return int(chain.call_rpc("eth_getTransactionCount", [address, "pending"]), 16) - int(
        chain.call_rpc("eth_getTransactionCount", [address, "latest"]), 16)


def test_a_transaction_priced_out_by_a_base_fee_rise_is_replaced_and_mined_once(node: AnvilNode) -> None:
    chain = Chain(node.rpc_url)
    admin_key, user_key = dev_keys(2)
    dep = deploy(chain.wallet(admin_key))
    wallet = Wallet(chain, admin_key, replace_after=0.5)
    user = chain.wallet(user_key).address
    token = AdminClient(wallet, dep).token
    nonce = int(chain.call_rpc("eth_getTransactionCount", [wallet.address, "latest"]), 16)

    chain.call_rpc("evm_setAutomine", [False])
    thread, out = _mint_in_background(wallet, dep, user)
    deadline = time.monotonic() + 10
    while _pending(chain, wallet.address) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _pending(chain, wallet.address) == 1, "the mint never reached the pool"
    # The base fee jumps before the next block: the signed transaction no longer fits in one.
    chain.call_rpc("anvil_setNextBlockBaseFeePerGas", [hex(HIGH_BASE_FEE)])
    chain.call_rpc("evm_mine", [])
    assert int(chain.call_rpc("eth_getTransactionCount", [wallet.address, "latest"]), 16) == nonce, \
        "the first signature was mined: the test did not price it out"
    chain.call_rpc("evm_setAutomine", [True])  # the replacement is mined on arrival
    thread.join(30)
    assert not thread.is_alive() and "error" not in out, out
    receipt = out["receipt"]
    tx = chain.w3.eth.get_transaction(receipt["transactionHash"])
    assert tx["nonce"] == nonce and tx["maxFeePerGas"] >= HIGH_BASE_FEE  # the replacement, priced for the rise
    assert int(chain.call_rpc("eth_getTransactionCount", [wallet.address, "latest"]), 16) == nonce + 1
    assert token.functions.balanceOf(user).call() == 5  # minted once


def test_a_mined_transaction_is_never_replaced(node: AnvilNode, caplog: pytest.LogCaptureFixture) -> None:
    chain = Chain(node.rpc_url)
    admin_key, user_key = dev_keys(2)
    dep = deploy(chain.wallet(admin_key))
    wallet = Wallet(chain, admin_key, replace_after=0.0)  # would replace at once if it looked unmined
    nonce = int(chain.call_rpc("eth_getTransactionCount", [wallet.address, "latest"]), 16)
    for _ in range(5):
        assert wallet.transact(AdminClient(wallet, dep).token.functions.mint(chain.wallet(user_key).address, 5))[
            "status"] == 1
    assert int(chain.call_rpc("eth_getTransactionCount", [wallet.address, "latest"]), 16) == nonce + 5
    assert not [r for r in caplog.records if "replaced" in r.getMessage()]


def test_calldata_is_what_web3_encodes(grid: Grid) -> None:
    """The fast encoder gives web3's bytes for every shape the SDK sends (structs, nested arrays, strings, bytes);
    what eth-abi does not take as it is (bytes given as hex text) goes through web3."""
    m = grid.user.market.functions
    labels = on_chain([parse_constraint("zone == eu"), parse_constraint("gpu.mem >= 40")])
    permit = (10**6, 2**255, 27, b"\x11" * 32, b"\x22" * 32)
    addr = grid.cpu.address
    calls = [
        m.submitWithPermit((2, 1, 4096, 10**6, 5 * 10**6, 0, b"\0" * 32), labels, b'{"steps": []}', 3, permit),
        m.submit((1, 0, 256, 1, 1, 0, b"\0" * 32), [], b"\x00" * 100, 1),
        m.assignBatch([1, 2, 3], [addr] * 3, [labels, [], labels]),
        m.assign(7, addr, labels),
        m.report([(1, ReportAction.CLAIM, 0, 0), (2, ReportAction.FINISH, -3, 0), (3, ReportAction.START, 0, 0)]),
        m.registerProvider((64, 2, 262144, 500, 0), (1000, 90_000, 100), ["zone", "gpu.model"],
                           [b"eu".ljust(32, b"\0")] * 2),
        m.topUp(5, 2**64 - 1),
        m.claim(2**256 - 1),
    ]
    for fn in calls:
        assert calldata(fn) == fn._encode_transaction_data(), fn.fn_name
    # web3 refuses an all-lowercase address; eth-abi takes it, for the same 20 bytes
    assert calldata(m.assign(1, addr.lower(), [])) == m.assign(1, addr, [])._encode_transaction_data()
    hw = (64, 2, 262144, 500, 0)
    as_hex = m.registerProvider(hw, (1000, 0, 100), ["zone"], ["0x" + "65" * 32])  # bytes32 as hex text
    assert calldata(as_hex) == as_hex._encode_transaction_data() == calldata(
        m.registerProvider((64, 2, 262144, 500, 0), (1000, 0, 100), ["zone"], [b"e" * 32]))


def test_a_chain_without_eip_1559_gets_legacy_gas_price_transactions() -> None:
    """Blocks without a base fee (an Anvil on the Berlin rules): the wallet signs a legacy ``gasPrice``
    transaction at the node's ``eth_gasPrice``, the node mines it, and a replacement raises that price."""
    with start_anvil(extra_args=["--hardfork", "berlin"]) as berlin:
        chain = Chain(berlin.rpc_url)
        assert chain.call_rpc("eth_getBlockByNumber", ["latest", False]).get("baseFeePerGas") is None
        wallet = chain.wallet(dev_keys(1)[0])
        fees = wallet.fees()
        assert fees == {"gasPrice": int(chain.call_rpc("eth_gasPrice", []), 16)} and fees["gasPrice"] > 0
        assert wallet.bumped_fees(fees)["gasPrice"] > fees["gasPrice"]
        # The contracts need the Cancun rules; a call to an address without code runs the whole signing path.
        target = chain.w3.eth.contract(address=dev_keys_address(2), abi=artifacts.abi("CreditToken"))  # type: ignore[call-overload]
        receipt = wallet.transact(target.functions.mint(dev_keys_address(3), 5))
        tx = chain.w3.eth.get_transaction(receipt["transactionHash"])
        assert receipt["status"] == 1 and tx["type"] == 0 and tx["gasPrice"] == fees["gasPrice"]


def dev_keys_address(n: int) -> str:
    """The address of the ``n``-th dev account (1-based)."""
    return str(Account.from_key(dev_keys(n)[n - 1]).address)


def test_fee_fields_are_eip_1559_or_legacy() -> None:
    assert fee_fields(None, 7) == {"gasPrice": 7}
    assert fee_fields(100, 3) == {"maxFeePerGas": 203, "maxPriorityFeePerGas": 3}
