"""Exceptions of dsq-chain.

Every Solidity custom error of the shipped contracts has a Python exception class of the same name,
created here from the compiled ABI (so they can never drift apart), e.g.::

    from dsq_chain import errors
    try:
        grid.cancel(job_id)
    except errors.NotJobOwner as e:
        print(e.args_dict["caller"])

Contract errors derive from web3's ``ContractCustomError`` (a ``ContractLogicError``), so code written
for web3 catches them too; enum parameters arrive decoded (``InvalidStatus.args_dict["status"]`` is a
:class:`~dsq_chain.types.JobStatus`). Errors raised before anything is sent (bad input caught by the
SDK) derive from :class:`DsqError` too.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3.exceptions import ContractCustomError

from dsq_chain import artifacts, types


class DsqError(Exception):
    """Base of every error dsq-chain raises on purpose."""


class InputError(DsqError, ValueError):
    """Bad input caught before any transaction was sent: nothing changed on chain."""


class Infeasible(InputError):
    """No approved provider could run the job as submitted: nothing was sent, no credits locked.

    ``reasons`` maps each approved provider's address to why it cannot take the job (the verdicts of
    ``dsq explain``); ``explanation`` is the matcher's full :class:`~dsq_chain.matching.Explanation`.
    Submit with ``force=True`` (``dsq submit --force``) to queue it anyway."""

    def __init__(self, message: str, reasons: dict[str, str] | None = None, explanation: Any = None) -> None:
        super().__init__(message)
        self.reasons = dict(reasons or {})
        self.explanation = explanation


class ChainUnavailable(DsqError):
    """The RPC node could not be reached (or timed out)."""


class TransactionFailed(DsqError):
    """A transaction reverted without a decodable custom error, or was not mined in time."""


class ContractError(DsqError, ContractCustomError):
    """A contract call reverted with a custom error; the subclass is named after the Solidity error.

    ``args_dict`` maps the error's parameter names to decoded values (addresses checksummed, enums
    as the :mod:`dsq_chain.types` enum of the same name). ``data`` holds the raw revert data (hex),
    as on web3's ``ContractLogicError``.
    """

    #: Solidity signature, e.g. ``InvalidStatus(uint256,uint8)``; set on each generated subclass.
    signature: str = ""
    #: The NatSpec notice of the error, when the contracts give one.
    notice: str = ""

    def __init__(self, args_dict: dict[str, Any] | None = None, *, contract_call: str = "", data: str = "") -> None:
        self.args_dict = dict(args_dict or {})
        self.contract_call = contract_call
        super().__init__(str(self), data)

    def __str__(self) -> str:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in self.args_dict.items())
        where = f" in {self.contract_call}" if self.contract_call else ""
        hint = f": {self.notice}" if self.notice else ""
        return f"{type(self).__name__}({params}){where}{hint}"


class UnknownContractError(ContractError):
    """A revert whose selector no shipped ABI knows (raw data in ``args_dict['data']``)."""


def _fmt(v: Any) -> str:
    if isinstance(v, Enum):
        return v.name
    if isinstance(v, bytes):
        return "0x" + v.hex()
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _type_string(inp: dict[str, Any]) -> str:
    t: str = inp["type"]
    if t.startswith("tuple"):
        return "(" + ",".join(_type_string(c) for c in inp["components"]) + ")" + t[len("tuple") :]
    return t


def _build() -> tuple[dict[str, type[ContractError]], dict[bytes, tuple[type[ContractError], list[dict[str, Any]]]]]:
    classes: dict[str, type[ContractError]] = {}
    selectors: dict[bytes, tuple[type[ContractError], list[dict[str, Any]]]] = {}
    for contract in artifacts.load()["contracts"].values():
        notices = {sig: v[0].get("notice", "") for sig, v in contract.get("userdoc", {}).get("errors", {}).items()}
        for item in contract["abi"]:
            if item["type"] != "error":
                continue
            signature = f"{item['name']}({','.join(_type_string(i) for i in item['inputs'])})"
            cls = classes.get(item["name"])
            if cls is None:
                doc = notices.get(signature) or "Custom error raised inside the contracts (OpenZeppelin)."
                cls = type(item["name"], (ContractError,), {"__doc__": doc, "signature": signature,
                                                             "notice": notices.get(signature, ""),
                                                             "__module__": __name__})
                classes[item["name"]] = cls
            selectors[keccak(text=signature)[:4]] = (cls, item["inputs"])
    return classes, selectors


_CLASSES, _SELECTORS = _build()
globals().update(_CLASSES)
#: Names of every generated contract error class.
CONTRACT_ERRORS: frozenset[str] = frozenset(_CLASSES)


def __getattr__(name: str) -> type[ContractError]:  # typing aid: errors.JobNotFound etc. exist at run time
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def decode_revert(data: bytes | str, contract_call: str = "") -> ContractError:
    """Turns raw revert data into the matching :class:`ContractError` subclass instance."""
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else data
    entry = _SELECTORS.get(raw[:4])
    if entry is None:
        return UnknownContractError({"data": raw}, contract_call=contract_call, data="0x" + raw.hex())
    cls, inputs = entry
    values = abi_decode([_type_string(i) for i in inputs], raw[4:]) if inputs else ()
    args = {i["name"] or f"arg{n}": _normalise(v, i) for n, (i, v) in enumerate(zip(inputs, values, strict=True))}
    return cls(args, contract_call=contract_call, data="0x" + raw.hex())


def _normalise(value: Any, inp: dict[str, Any]) -> Any:
    if inp["type"] == "address":
        return to_checksum_address(value)
    internal = str(inp.get("internalType", ""))
    if internal.startswith("enum "):
        enum = getattr(types, internal.rsplit(".", 1)[-1].split()[-1], None)
        if enum is not None:
            try:
                return enum(value)
            except ValueError:  # a value this SDK does not know: keep the number
                return value
    return value
