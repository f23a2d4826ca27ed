"""Chain access: an RPC connection, local signing wallets with explicit nonces, gas estimation with a
margin, many pre-signed transactions in one JSON-RPC batch, and reverts turned into the Python
exceptions of :mod:`dsq_chain.errors`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, TransactionNotFound
from web3.types import TxParams, TxReceipt

from .errors import ChainUnavailable, ContractError, TransactionFailed, decode_revert

#: Estimated gas is multiplied by this and then increased by :data:`GAS_ADDEND`.
GAS_MARGIN = 1.2
GAS_ADDEND = 10_000


@dataclass(frozen=True, slots=True)
class Call:
    """A contract call ready to sign: the function, an explicit gas limit (None = estimate) and a label."""

    fn: ContractFunction | ContractConstructor
    gas: int | None = None

    @property
    def label(self) -> str:
        name = getattr(self.fn, "fn_name", "constructor")
        return f"{name}({', '.join(_short(a) for a in getattr(self.fn, 'args', ()) or ())})"


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


class Chain:
    """A JSON-RPC connection to an EVM node."""

    def __init__(self, rpc_url: str, *, timeout: float = 30.0) -> None:
        self.rpc_url = rpc_url
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        self._chain_id: int | None = None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.call_rpc("eth_chainId", []), 16)
        return self._chain_id

    def call_rpc(self, method: str, params: list[Any]) -> Any:
        """One raw JSON-RPC request; connection problems raise :class:`ChainUnavailable`."""
        try:
            resp = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        except (requests.ConnectionError, requests.Timeout, OSError) as e:
            raise ChainUnavailable(f"RPC node at {self.rpc_url} unreachable: {e.__class__.__name__}") from e
        if "error" in resp:
            raise TransactionFailed(f"{method}: {resp['error']}")
        return resp.get("result")

    def is_up(self) -> bool:
        try:
            self.call_rpc("eth_chainId", [])
            return True
        except ChainUnavailable:
            return False

    def block_number(self) -> int:
        return int(self.call_rpc("eth_blockNumber", []), 16)

    def timestamp(self, block: str | int = "latest") -> int:
        tag = hex(block) if isinstance(block, int) else block
        return int(self.call_rpc("eth_getBlockByNumber", [tag, False])["timestamp"], 16)

    def wallet(self, private_key: str | bytes) -> Wallet:
        return Wallet(self, private_key)

    # -- development-node helpers (Anvil) ------------------------------------------------------
    def increase_time(self, seconds: int, *, mine: bool = True) -> None:
        self.call_rpc("evm_increaseTime", [seconds])
        if mine:
            self.mine()

    def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            self.call_rpc("evm_mine", [])

    def snapshot(self) -> str:
        return cast(str, self.call_rpc("evm_snapshot", []))

    def revert(self, snapshot_id: str) -> None:
        if not self.call_rpc("evm_revert", [snapshot_id]):
            raise TransactionFailed(f"evm_revert({snapshot_id}) refused")


class Wallet:
    """A local signing key on a :class:`Chain`, with its own nonce counter (thread-safe)."""

    def __init__(self, chain: Chain, private_key: str | bytes) -> None:
        self.chain = chain
        self.account: LocalAccount = Account.from_key(private_key)
        self.address: str = self.account.address
        self._nonce: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"Wallet({self.address})"

    # -- nonces ---------------------------------------------------------------------------------
    def _take_nonces(self, n: int) -> int:
        with self._lock:
            if self._nonce is None:
                self._nonce = int(self.chain.call_rpc("eth_getTransactionCount", [self.address, "pending"]), 16)
            first = self._nonce
            self._nonce += n
            return first

    def reset_nonce(self) -> None:
        """Forget the local nonce; the next transaction reads it from the node."""
        with self._lock:
            self._nonce = None

    # -- building -------------------------------------------------------------------------------
    def estimate(self, call: Call) -> int:
        """Estimated gas with the margin; a revert raises the matching ContractError."""
        try:
            # Against the pending block: on a chain that mines only on demand, "latest" keeps an old
            # timestamp, and time-dependent calls (out of credits, claim timeouts) would never pass.
            est = call.fn.estimate_gas({"from": self.address}, block_identifier="pending")
        except (ContractCustomError, ContractLogicError, ContractPanicError) as e:
            raise _decode(e, call.label) from None
        except (requests.ConnectionError, requests.Timeout) as e:
            raise ChainUnavailable(f"RPC node at {self.chain.rpc_url} unreachable") from e
        return int(est * GAS_MARGIN) + GAS_ADDEND

    def check(self, call: Call) -> Any:
        """Runs the call with ``eth_call`` (no transaction); a revert raises the ContractError."""
        try:
            return cast(ContractFunction, call.fn).call({"from": self.address})
        except (ContractCustomError, ContractLogicError, ContractPanicError) as e:
            raise _decode(e, call.label) from None

    def _sign(self, call: Call, nonce: int, fees: dict[str, int]) -> HexBytes:
        gas = call.gas if call.gas is not None else self.estimate(call)
        params: dict[str, Any] = {"from": self.address, "nonce": nonce, "gas": gas, "chainId": self.chain.chain_id}
        tx: TxParams = call.fn.build_transaction(cast(TxParams, params | fees))
        return HexBytes(self.account.sign_transaction(cast(dict[str, Any], tx)).raw_transaction)

    def _fees(self) -> dict[str, int]:
        """EIP-1559 fees: the node's suggested tip, and room for the base fee to double.

        Not a legacy ``gasPrice`` of 2 x ``eth_gasPrice``: the overpayment became the block's tip,
        which the node's next suggestion includes, so the price doubled with every transaction
        (on Anvil, accounts ran out of ether after a few dozen transactions).
        """
        block = self.chain.call_rpc("eth_getBlockByNumber", ["latest", False])
        if block.get("baseFeePerGas") is None:  # a chain without EIP-1559
            return {"gasPrice": int(self.chain.call_rpc("eth_gasPrice", []), 16)}
        tip = int(self.chain.call_rpc("eth_maxPriorityFeePerGas", []), 16)
        return {"maxFeePerGas": 2 * int(block["baseFeePerGas"], 16) + tip, "maxPriorityFeePerGas": tip}

    # -- sending --------------------------------------------------------------------------------
    def transact(self, fn: ContractFunction | ContractConstructor | Call, *, timeout: float = 120.0) -> TxReceipt:
        """Signs, sends and waits for one transaction; raises the ContractError if it reverts."""
        return self.transact_many([fn], timeout=timeout)[0]

    def transact_many(
        self, calls: Sequence[ContractFunction | ContractConstructor | Call], *, timeout: float = 120.0
    ) -> list[TxReceipt]:
        """Pre-signs ``calls`` with consecutive nonces, sends them in one JSON-RPC batch and waits for
        every receipt. Gas is estimated per call against the current state unless the Call gives it.
        The first reverted transaction raises its ContractError (after all receipts are in)."""
        items = [c if isinstance(c, Call) else Call(c) for c in calls]
        if not items:
            return []
        fees = self._fees()
        # Estimate before taking nonces, so a revert found at estimation costs no nonce.
        items = [c if c.gas is not None else Call(c.fn, self.estimate(c)) for c in items]
        first = self._take_nonces(len(items))
        try:
            raws = [self._sign(c, first + i, fees) for i, c in enumerate(items)]
            hashes = self._send_raw(raws)
        except BaseException:
            self.reset_nonce()
            raise
        receipts = self.wait_receipts(hashes, timeout=timeout)
        for call, receipt in zip(items, receipts, strict=True):
            if receipt["status"] != 1:
                raise self._explain_failure(call, receipt)
        return receipts

    def _send_raw(self, raws: list[HexBytes]) -> list[HexBytes]:
        if len(raws) == 1:
            return [HexBytes(self.chain.call_rpc("eth_sendRawTransaction", [raws[0].to_0x_hex()]))]
        try:
            responses = cast(Any, self.chain.w3.provider).make_batch_request(
                [("eth_sendRawTransaction", [r.to_0x_hex()]) for r in raws]  # type: ignore[misc]
            )
        except (requests.ConnectionError, requests.Timeout, OSError) as e:
            raise ChainUnavailable(f"RPC node at {self.chain.rpc_url} unreachable") from e
        out: list[HexBytes] = []
        for resp in cast(list[dict[str, Any]], responses):
            if "error" in resp:
                raise TransactionFailed(f"eth_sendRawTransaction: {resp['error']}")
            out.append(HexBytes(resp["result"]))
        return out

    def wait_receipts(self, hashes: Sequence[HexBytes], *, timeout: float = 120.0) -> list[TxReceipt]:
        """Polls receipts in batches until all are mined or ``timeout`` passes."""
        try:
            return self._wait_receipts(hashes, timeout)
        except (requests.ConnectionError, requests.Timeout, OSError) as e:
            raise ChainUnavailable(f"RPC node at {self.chain.rpc_url} unreachable while waiting for receipts") from e

    def _wait_receipts(self, hashes: Sequence[HexBytes], timeout: float) -> list[TxReceipt]:
        deadline = time.monotonic() + timeout
        found: dict[int, TxReceipt] = {}
        delay = 0.01
        while True:
            missing = [i for i in range(len(hashes)) if i not in found]
            if len(missing) == 1:
                with contextlib.suppress(TransactionNotFound):
                    found[missing[0]] = self.chain.w3.eth.get_transaction_receipt(hashes[missing[0]])
            else:
                with self.chain.w3.batch_requests() as batch:
                    for i in missing:
                        batch.add(self.chain.w3.eth.get_transaction_receipt(hashes[i]))
                    results: list[Any]
                    try:
                        results = list(batch.execute())
                    except TransactionNotFound:
                        results = [None] * len(missing)
                for i, r in zip(missing, results, strict=True):
                    if r is not None and not isinstance(r, Exception):
                        found[i] = cast(TxReceipt, r)
            if len(found) == len(hashes):
                return [found[i] for i in range(len(hashes))]
            if time.monotonic() > deadline:
                raise TransactionFailed(f"{len(hashes) - len(found)} transaction(s) not mined within {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _explain_failure(self, call: Call, receipt: TxReceipt) -> DsqErrorLike:
        """Replays a reverted transaction with eth_call at its block to recover the custom error."""
        try:
            cast(ContractFunction, call.fn).call({"from": self.address}, block_identifier=receipt["blockNumber"] - 1)
        except (ContractCustomError, ContractLogicError, ContractPanicError) as e:
            return _decode(e, call.label)
        except Exception:
            pass
        used = receipt["gasUsed"]
        return TransactionFailed(
            f"{call.label} reverted in block {receipt['blockNumber']} (gas used {used} of {call.gas})"
        )


DsqErrorLike = ContractError | TransactionFailed


def _decode(e: Exception, label: str) -> ContractError | TransactionFailed:
    data = getattr(e, "data", None)
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        return decode_revert(data, contract_call=label)
    message = getattr(e, "message", None) or str(e)
    return TransactionFailed(f"{label} reverted: {message}")
