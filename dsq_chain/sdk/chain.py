"""Chain access: an RPC connection, local signing wallets with explicit nonces, gas estimation with a
margin, many pre-signed transactions in one JSON-RPC batch, and reverts turned into the Python
exceptions of :mod:`dsq_chain.errors`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import requests
from eth_abi.abi import encode as abi_encode
from eth_abi.exceptions import EncodingError
from eth_account.signers.local import LocalAccount
from eth_utils.abi import collapse_if_tuple, function_abi_to_4byte_selector
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, TransactionNotFound
from web3.types import TxParams, TxReceipt

from dsq_chain.errors import ChainUnavailable, ContractError, InputError, TransactionFailed, decode_revert
from dsq_chain.sdk.signers import LocalSigner, ReadOnlySigner, Signer, SignerLike, as_signer

#: Estimated gas is multiplied by this and then increased by :data:`GAS_ADDEND`.
GAS_MARGIN = 1.2
GAS_ADDEND = 10_000
#: A transaction still not mined this long after it was sent is signed again with the same nonce and
#: higher fees (the base fee rose, or the tip was too low for the block builders).
REPLACE_AFTER_S = 30.0
#: Each replacement raises both fees at least this much (nodes refuse a replacement under +10 %).
FEE_BUMP = 1.125

log = logging.getLogger("dsq.chain")


#: Errors of the transport meaning "the node cannot be reached right now" (retry later, lose nothing).
UNREACHABLE: tuple[type[BaseException], ...] = (requests.ConnectionError, requests.Timeout, OSError)
#: Transport errors that say so by their type (requests' and the socket's), unlike a bare OSError, which may be a
#: file's: the CLI tells a node it cannot reach from a file it cannot read with these.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (requests.RequestException, ConnectionError)
#: What a service treats as "the chain is down": the SDK's own error and any transport error that escaped it.
CHAIN_DOWN: tuple[type[BaseException], ...] = (ChainUnavailable, requests.RequestException, OSError)


@contextlib.contextmanager
def node_errors(rpc_url: str) -> Iterator[None]:
    """Turns a transport error inside the block into :class:`ChainUnavailable` (the one place that does)."""
    try:
        yield
    except UNREACHABLE as e:
        raise ChainUnavailable(f"RPC node at {rpc_url} unreachable: {e.__class__.__name__}") from e


@dataclass(frozen=True, slots=True)
class Call:
    """A contract call ready to sign: the function, an explicit gas limit (None = estimate) and a label.

    ``data`` is the encoded call once :meth:`encoded` ran (None for a deployment, which web3 builds)."""

    fn: ContractFunction | ContractConstructor
    gas: int | None = None
    data: str | None = None

    @property
    def label(self) -> str:
        name = getattr(self.fn, "fn_name", "constructor")
        return f"{name}({', '.join(_short(a) for a in getattr(self.fn, 'args', ()) or ())})"

    @property
    def to(self) -> str | None:
        """The contract called (None for a deployment)."""
        return None if isinstance(self.fn, ContractConstructor) else cast(str | None, self.fn.address)

    def encoded(self) -> Call:
        """This call with its data encoded (once: estimating and signing both use it)."""
        if self.data is not None or self.to is None:
            return self
        return replace(self, data=calldata(cast(ContractFunction, self.fn)))


_INPUTS: dict[str, tuple[str, list[str]]] = {}


def calldata(fn: ContractFunction) -> str:
    """``fn``'s call data, encoded by eth-abi directly.

    web3's own encoder validates and normalises every element first: 380 ms for a 200-job
    ``assignBatch`` here, against 17 ms, the same bytes. Arguments eth-abi does not take as they are
    (keyword arguments, hex strings for bytes) go through web3.
    """
    if fn.kwargs:
        return str(fn._encode_transaction_data())
    entry = _INPUTS.get(fn.signature)
    if entry is None:
        entry = _INPUTS[fn.signature] = (
            "0x" + function_abi_to_4byte_selector(fn.abi).hex(),
            [collapse_if_tuple(dict(i)) for i in fn.abi.get("inputs", [])],
        )
    selector, types = entry
    try:
        return selector + abi_encode(types, fn.args).hex()
    except (EncodingError, TypeError, ValueError, OverflowError):
        return str(fn._encode_transaction_data())


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
        resp = self.request(method, params)
        if "error" in resp:
            raise TransactionFailed(f"{method}: {resp['error']}")
        return resp.get("result")

    def request(self, method: str, params: list[Any]) -> dict[str, Any]:
        """One raw JSON-RPC request, its whole response (``result`` or ``error``)."""
        with node_errors(self.rpc_url):
            return dict(self.w3.provider.make_request(method, params))  # type: ignore[arg-type]

    def is_up(self) -> bool:
        try:
            self.call_rpc("eth_chainId", [])
            return True
        except ChainUnavailable:
            return False

    def block_number(self) -> int:
        return int(self.call_rpc("eth_blockNumber", []), 16)

    def timestamp(self, block: str | int = "latest") -> int:
        """The block's timestamp; a block the node does not have (yet, or no more after a reorg) raises
        :class:`ChainUnavailable`."""
        tag = hex(block) if isinstance(block, int) else block
        found = self.call_rpc("eth_getBlockByNumber", [tag, False])
        if not isinstance(found, dict) or "timestamp" not in found:
            raise ChainUnavailable(f"block {block} is not available from {self.rpc_url} (not mined, or reorged away)")
        return int(found["timestamp"], 16)

    def wallet(self, signer: SignerLike | None) -> Wallet:
        """A wallet signing with ``signer`` (a key, a LocalAccount, a :class:`Signer`; None: read-only)."""
        return Wallet(self, signer)

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


def fee_fields(base_fee: int | None, price: int) -> dict[str, int]:
    """A transaction's fee fields. On an EIP-1559 chain (``base_fee`` is the latest block's base fee),
    ``price`` is the node's suggested tip and the cap leaves room for the base fee to double; on a chain
    without EIP-1559 (``base_fee`` None, blocks have no base fee) it is the node's ``eth_gasPrice``, sent as
    a legacy ``gasPrice``."""
    if base_fee is None:
        return {"gasPrice": price}
    return {"maxFeePerGas": 2 * base_fee + price, "maxPriorityFeePerGas": price}


class Wallet:
    """A signer on a :class:`Chain`, with its own nonce counter (thread-safe).

    ``signer`` is a private key, an eth-account ``LocalAccount``, any
    :class:`~dsq_chain.sdk.signers.Signer` (remote signers, ape accounts) or None for a read-only
    wallet, which reads and raises InputError when asked to send."""

    def __init__(self, chain: Chain, signer: SignerLike | None, *, replace_after: float = REPLACE_AFTER_S) -> None:
        self.chain = chain
        self.signer: Signer = as_signer(signer)
        self.address: str = self.signer.address
        #: Seconds before an unmined transaction is replaced at higher fees (same nonce, same call).
        self.replace_after = replace_after
        self._nonce: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"Wallet({self.address})"

    @property
    def account(self) -> LocalAccount:
        """The eth-account key of a wallet holding one in this process (InputError otherwise)."""
        if isinstance(self.signer, LocalSigner):
            return self.signer.account
        raise InputError(f"{self.signer!r} holds no local key")

    @property
    def read_only(self) -> bool:
        """True for a wallet that cannot sign."""
        return isinstance(self.signer, ReadOnlySigner)

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
        # Against the pending block: on a chain that mines only on demand, "latest" keeps an old
        # timestamp, and time-dependent calls (out of credits, claim timeouts) would never pass.
        call = call.encoded()
        if call.to is None:  # a deployment
            try:
                est = call.fn.estimate_gas({"from": self.address}, block_identifier="pending")
            except (ContractCustomError, ContractLogicError, ContractPanicError) as e:
                raise _decode(e, call.label) from None
            except UNREACHABLE as e:
                raise ChainUnavailable(f"RPC node at {self.chain.rpc_url} unreachable: {e.__class__.__name__}") from e
            return int(est * GAS_MARGIN) + GAS_ADDEND
        resp = self.chain.request("eth_estimateGas", [{"from": self.address, "to": call.to, "data": call.data},
                                                      "pending"])
        error = resp.get("error")
        if error is not None:
            data = error.get("data") if isinstance(error, dict) else None
            if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
                raise decode_revert(data, contract_call=call.label)
            message = error.get("message") if isinstance(error, dict) else error
            raise TransactionFailed(f"{call.label} reverted: {message}")
        return int(int(resp["result"], 16) * GAS_MARGIN) + GAS_ADDEND

    def check(self, call: Call) -> Any:
        """Runs the call with ``eth_call`` (no transaction); a revert raises the ContractError."""
        try:
            return cast(ContractFunction, call.fn).call({"from": self.address})
        except (ContractCustomError, ContractLogicError, ContractPanicError) as e:
            raise _decode(e, call.label) from None

    def _sign(self, call: Call, nonce: int, fees: dict[str, int]) -> HexBytes:
        call = call.encoded()
        gas = call.gas if call.gas is not None else self.estimate(call)
        params: dict[str, Any] = {"nonce": nonce, "gas": gas, "chainId": self.chain.chain_id, **fees}
        if call.to is None:  # a deployment: web3 builds it
            tx = dict(call.fn.build_transaction(cast(TxParams, params | {"from": self.address})))
        else:
            tx = params | {"to": call.to, "data": call.data, "value": 0}
        return HexBytes(self.signer.sign_transaction(tx))

    def fees(self) -> dict[str, int]:
        """EIP-1559 fees: the node's suggested tip, and room for the base fee to double.

        Not a legacy ``gasPrice`` of 2 x ``eth_gasPrice``: the overpayment became the block's tip,
        which the node's next suggestion includes, so the price doubled with every transaction
        (on Anvil, accounts ran out of ether after a few dozen transactions).
        """
        block = self.chain.call_rpc("eth_getBlockByNumber", ["latest", False])
        base_fee = None if block.get("baseFeePerGas") is None else int(block["baseFeePerGas"], 16)
        method = "eth_gasPrice" if base_fee is None else "eth_maxPriorityFeePerGas"
        return fee_fields(base_fee, int(self.chain.call_rpc(method, []), 16))

    def bumped_fees(self, fees: dict[str, int]) -> dict[str, int]:
        """Fees for a replacement: at least FEE_BUMP times the last ones, and what the chain asks now."""
        now = self.fees()
        if "gasPrice" in fees:
            return {"gasPrice": max(math.ceil(fees["gasPrice"] * FEE_BUMP), now.get("gasPrice", 0))}
        tip = max(math.ceil(fees["maxPriorityFeePerGas"] * FEE_BUMP), now.get("maxPriorityFeePerGas", 0))
        cap = max(math.ceil(fees["maxFeePerGas"] * FEE_BUMP), now.get("maxFeePerGas", 0), tip)
        return {"maxFeePerGas": cap, "maxPriorityFeePerGas": tip}

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
        items = [(c if isinstance(c, Call) else Call(c)).encoded() for c in calls]
        if not items:
            return []
        if self.read_only:
            raise InputError(f"{items[0].label}: this client is read-only: connect with a key, a keystore or a "
                             "signer to send transactions")
        fees = self.fees()
        # Estimate before taking nonces, so a revert found at estimation costs no nonce.
        items = [c if c.gas is not None else replace(c, gas=self.estimate(c)) for c in items]
        first = self._take_nonces(len(items))
        try:
            raws = [self._sign(c, first + i, fees) for i, c in enumerate(items)]
            hashes = self._send_raw(raws)
        except BaseException:
            self.reset_nonce()
            raise
        receipts = self._wait_mined(items, first, fees, hashes, timeout)
        for call, receipt in zip(items, receipts, strict=True):
            if receipt["status"] != 1:
                raise self._explain_failure(call, receipt)
        return receipts

    def _send_raw(self, raws: list[HexBytes]) -> list[HexBytes]:
        if len(raws) == 1:
            return [HexBytes(self.chain.call_rpc("eth_sendRawTransaction", [raws[0].to_0x_hex()]))]
        with node_errors(self.chain.rpc_url):
            responses = cast(Any, self.chain.w3.provider).make_batch_request(
                [("eth_sendRawTransaction", [r.to_0x_hex()]) for r in raws]  # type: ignore[misc]
            )
        out: list[HexBytes] = []
        for resp in cast(list[dict[str, Any]], responses):
            if "error" in resp:
                raise TransactionFailed(f"eth_sendRawTransaction: {resp['error']}")
            out.append(HexBytes(resp["result"]))
        return out

    def wait_receipts(self, hashes: Sequence[HexBytes], *, timeout: float = 120.0) -> list[TxReceipt]:
        """Polls receipts in batches until all are mined or ``timeout`` passes."""
        found = self._poll([[h] for h in hashes], {}, time.monotonic() + timeout)
        if len(found) < len(hashes):
            raise TransactionFailed(f"{len(hashes) - len(found)} transaction(s) not mined within {timeout:.0f} s")
        return [found[i] for i in range(len(hashes))]

    def _wait_mined(
        self, items: list[Call], first: int, fees: dict[str, int], hashes: list[HexBytes], timeout: float
    ) -> list[TxReceipt]:
        """Waits for every receipt. A transaction still unmined after :attr:`replace_after` seconds is
        signed again with the same nonce and bumped fees; whichever version is mined counts."""
        versions = [[h] for h in hashes]
        found: dict[int, TxReceipt] = {}
        deadline = time.monotonic() + timeout
        while True:
            found = self._poll(versions, found, min(deadline, time.monotonic() + self.replace_after))
            if len(found) == len(items):
                return [found[i] for i in range(len(items))]
            if time.monotonic() >= deadline:
                raise TransactionFailed(f"{len(items) - len(found)} transaction(s) not mined within {timeout:.0f} s")
            # Mined or waiting in the node's pool: fewer than ``first`` means one before ours is gone.
            mined = int(self.chain.call_rpc("eth_getTransactionCount", [self.address, "pending"]), 16)
            if mined < first:
                # A transaction of an earlier call, mined before, is gone (a reorg dropped it): these can never
                # be mined. The caller reads the nonce again and sends anew; a fee bump would not help.
                raise TransactionFailed(f"nonce gap: the chain has {mined} transactions of ours, these start at "
                                        f"nonce {first} (an earlier one was dropped, e.g. by a reorg)")
            fees = self.bumped_fees(fees)
            for i in range(len(items)):
                if i in found:
                    continue
                raw = self._sign(items[i], first + i, fees)
                try:
                    versions[i] += self._send_raw([raw])
                except TransactionFailed as e:  # mined meanwhile ("nonce too low"), or the node wants more
                    log.info("replacement of %s (nonce %d) not taken: %s", items[i].label, first + i, e)
                    continue
                log.warning("%s (nonce %d) not mined after %.0f s: replaced with fees %s",
                            items[i].label, first + i, self.replace_after, fees)

    def _poll(self, versions: list[list[HexBytes]], found: dict[int, TxReceipt], until: float
              ) -> dict[int, TxReceipt]:
        """Polls until every index has a receipt for one of its versions, or ``until`` (monotonic) passes."""
        found = dict(found)
        delay = 0.01
        try:
            while True:
                wanted = [(i, h) for i, hs in enumerate(versions) if i not in found for h in hs]
                if len(wanted) == 1:
                    with contextlib.suppress(TransactionNotFound):
                        found[wanted[0][0]] = self.chain.w3.eth.get_transaction_receipt(wanted[0][1])
                elif wanted:
                    # Which are mined: a raw batch answers null for the others (web3's batch raises for all).
                    raw = cast(Any, self.chain.w3.provider).make_batch_request(
                        [("eth_getTransactionReceipt", [h.to_0x_hex()]) for _, h in wanted])  # type: ignore[misc]
                    mined = [w for w, r in zip(wanted, cast(list[dict[str, Any]], raw), strict=True) if r.get("result")]
                    if mined:  # then their receipts, formatted by web3 (every one exists: nothing raises)
                        with self.chain.w3.batch_requests() as batch:
                            for _, h in mined:
                                batch.add(self.chain.w3.eth.get_transaction_receipt(h))
                            results = list(batch.execute())
                        for (i, _), r in zip(mined, results, strict=True):
                            if r is not None and not isinstance(r, Exception):
                                found[i] = cast(TxReceipt, r)
                if len(found) == len(versions) or time.monotonic() >= until:
                    return found
                time.sleep(min(delay, max(0.0, until - time.monotonic())))
                delay = min(delay * 2, 0.25)
        except UNREACHABLE as e:
            raise ChainUnavailable(f"RPC node at {self.chain.rpc_url} unreachable while waiting for receipts: "
                                   f"{e.__class__.__name__}") from e

    def _explain_failure(self, call: Call, receipt: TxReceipt) -> DsqErrorLike:
        """The custom error a mined transaction reverted with: from the node's trace of that very
        transaction when it has one (Anvil, geth with debug), else by replaying the call with eth_call on
        the block before (which is wrong for the second of two batched transactions that conflict)."""
        resp = self.chain.request("debug_traceTransaction",
                                  [HexBytes(receipt["transactionHash"]).to_0x_hex(), {"tracer": "callTracer"}])
        trace = resp.get("result")
        output = trace.get("output") if isinstance(trace, dict) else None
        if isinstance(output, str) and output.startswith("0x") and len(output) >= 10:
            return decode_revert(output, contract_call=call.label)
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
