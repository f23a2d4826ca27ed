"""Typed transaction receipts: what every transaction method of the SDK returns.

A :class:`Receipt` holds the transaction hash, its block, the gas it used and its events decoded
against every shipped contract (the market's and the token's). :class:`Submission` adds the job ids
of a submission and reads like that list (``ids = grid.submit(...)``; ``[job] = grid.submit(...)``);
:class:`Withdrawal` adds the amount withdrawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast, overload

from eth_utils.abi import event_abi_to_log_topic
from hexbytes import HexBytes
from web3 import Web3
from web3._utils.events import get_event_data
from web3.types import TxReceipt

from dsq_chain import artifacts
from dsq_chain.money import Credits
from dsq_chain.sdk.events import ChainEvent, _plain


@dataclass(frozen=True, slots=True)
class Receipt:
    """A mined, successful transaction: hash, block, gas used and decoded events (in log order).

    ``raw`` is web3's receipt, for anything else (``raw["effectiveGasPrice"]``, ...)."""

    tx_hash: str
    block_number: int
    gas_used: int
    events: tuple[ChainEvent, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def status(self) -> int:
        """1: the transaction succeeded (a reverted one raises instead of returning a receipt)."""
        return int(self.raw["status"])

    def named(self, name: str) -> list[ChainEvent]:
        """The events called ``name``, in log order."""
        return [e for e in self.events if e.name == name]

    def event(self, name: str) -> ChainEvent:
        """The first event called ``name``; KeyError naming the events present when there is none."""
        for e in self.events:
            if e.name == name:
                return e
        present = ", ".join(e.name for e in self.events) or "none"
        raise KeyError(f"no {name} event in {self.tx_hash} (events: {present})")

    def __getitem__(self, key: str) -> Any:
        """web3's receipt fields (``receipt["gasUsed"]``), for code written against web3."""
        return self.raw[key]


@dataclass(frozen=True, slots=True)
class Submission(Receipt, Sequence[int]):
    """The receipt of a submission; it reads as the list of the job ids it created."""

    job_ids: tuple[int, ...] = ()

    @overload
    def __getitem__(self, key: int) -> int: ...
    @overload
    def __getitem__(self, key: slice) -> Sequence[int]: ...
    @overload
    def __getitem__(self, key: str) -> Any: ...
    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            return self.raw[key]
        return self.job_ids[key]

    def __len__(self) -> int:
        return len(self.job_ids)

    def __iter__(self) -> Iterator[int]:
        return iter(self.job_ids)

    def __contains__(self, value: object) -> bool:
        return value in self.job_ids

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple)):
            return list(self.job_ids) == list(other)
        return isinstance(other, Submission) and (self.tx_hash, self.job_ids) == (other.tx_hash, other.job_ids)

    __hash__ = None  # type: ignore[assignment]


_NOTHING = Credits(0)


@dataclass(frozen=True, slots=True)
class Withdrawal(Receipt):
    """The receipt of a withdrawal, with the amount moved to the account's tokens."""

    amount: Credits = _NOTHING


class _Spec:
    __slots__ = ("abi", "name")

    def __init__(self, abi: dict[str, Any]) -> None:
        self.abi = abi
        self.name: str = abi["name"]


@lru_cache(maxsize=1)
def _events_by_topic() -> dict[bytes, list[_Spec]]:
    """Every event of every shipped contract, by topic 0 (ERC-20 Transfer and the like appear once)."""
    table: dict[bytes, list[_Spec]] = {}
    seen: set[tuple[bytes, int]] = set()
    for contract in artifacts.load()["contracts"].values():
        for item in contract["abi"]:
            if item["type"] != "event":
                continue
            topic = bytes(event_abi_to_log_topic(cast(Any, item)))
            indexed = sum(1 for i in item["inputs"] if i["indexed"])
            if (topic, indexed) not in seen:
                seen.add((topic, indexed))
                table.setdefault(topic, []).append(_Spec(item))
    return table


@lru_cache(maxsize=1)
def _codec() -> Any:
    return Web3().codec


def decode_logs(logs: Sequence[Mapping[str, Any]]) -> tuple[ChainEvent, ...]:
    """The logs that a shipped contract emitted, decoded (others, e.g. of unknown contracts, are left out)."""
    out: list[ChainEvent] = []
    for log in logs:
        topics = log["topics"]
        if not topics:
            continue
        for spec in _events_by_topic().get(bytes(HexBytes(topics[0])), []):
            if len(topics) - 1 != sum(1 for i in spec.abi["inputs"] if i["indexed"]):
                continue
            try:
                data = get_event_data(_codec(), cast(Any, spec.abi), cast(Any, log))
            except Exception:  # a log that merely shares the topic: not ours
                continue
            out.append(ChainEvent(
                name=spec.name,
                args={k: _plain(v) for k, v in data["args"].items()},
                block_number=int(log["blockNumber"]),
                block_hash=HexBytes(log["blockHash"]).to_0x_hex(),
                tx_hash=HexBytes(log["transactionHash"]).to_0x_hex(),
                log_index=int(log["logIndex"]),
            ))
            break
    return tuple(out)


def receipt_of(raw: TxReceipt) -> Receipt:
    """A :class:`Receipt` from web3's receipt."""
    return Receipt(**_fields(raw))


def _fields(raw: TxReceipt) -> dict[str, Any]:
    return {
        "tx_hash": HexBytes(raw["transactionHash"]).to_0x_hex(),
        "block_number": int(raw["blockNumber"]),
        "gas_used": int(raw["gasUsed"]),
        "events": decode_logs(cast(Sequence[Mapping[str, Any]], raw["logs"])),
        "raw": raw,
    }


def submission_of(raw: TxReceipt) -> Submission:
    """A :class:`Submission`: the receipt and the ids of the jobs its ``JobSubmitted`` event created."""
    fields = _fields(raw)
    ids: list[int] = []
    for e in fields["events"]:
        if e.name == "JobSubmitted":
            first, count = int(e.args["firstJobId"]), int(e.args["count"])
            ids.extend(range(first, first + count))
    return Submission(**fields, job_ids=tuple(ids))


def withdrawal_of(raw: TxReceipt) -> Withdrawal:
    """A :class:`Withdrawal`: the receipt and the amount of its ``Withdrawn`` event."""
    fields = _fields(raw)
    amount = sum(int(e.args["amount"]) for e in fields["events"] if e.name == "Withdrawn")
    return Withdrawal(**fields, amount=Credits(units=amount))


__all__ = ["Receipt", "Submission", "Withdrawal", "decode_logs", "receipt_of", "submission_of", "withdrawal_of"]
