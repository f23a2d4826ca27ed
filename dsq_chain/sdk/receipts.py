"""Typed transaction receipts: what every transaction method of the SDK returns.

A :class:`Receipt` holds the transaction hash, its block, the gas it used and its events decoded
against every shipped contract: the market's as the typed records of :mod:`dsq_chain.sdk.events`
(``receipt.event("JobSettled").billed``), the token's as :class:`LogEvent`
(``receipt.event("Transfer").args["value"]``). :class:`Submission` adds the job ids
of a submission and reads like that list (``ids = grid.submit(...)``; ``[job] = grid.submit(...)``);
:class:`Withdrawal` adds the amount withdrawn. :func:`skipped_entries` names the entries of a batched
transaction the chain skipped, each with the error its single call would have raised.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast, overload

from hexbytes import HexBytes
from web3 import Web3
from web3._utils.events import get_event_data
from web3.logs import DISCARD
from web3.types import TxReceipt

from dsq_chain import artifacts
from dsq_chain.errors import ContractError, decode_revert
from dsq_chain.money import Credits
from dsq_chain.sdk.events import ChainEvent, EventDecoder, JobSubmitted, Undecodable, Withdrawn


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


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEvent(ChainEvent):
    """An event of a shipped contract that has no record type of its own (the token's ``Transfer`` and
    ``Approval``, ...): its name and its arguments by ABI name."""

    event: str
    args: dict[str, Any]

    @property
    def name(self) -> str:  # type: ignore[override]
        """The contract event's name."""
        return self.event


@lru_cache(maxsize=1)
def _decoder() -> EventDecoder:
    return EventDecoder(tuple(artifacts.load()["contracts"]))


@lru_cache(maxsize=1)
def _abi_by_name() -> dict[str, dict[str, Any]]:
    return {i["name"]: i for c in artifacts.load()["contracts"].values() for i in c["abi"] if i["type"] == "event"}


def decode_logs(logs: Sequence[Mapping[str, Any]]) -> tuple[ChainEvent, ...]:
    """The logs as event records, in log order: the market's as their typed records
    (:mod:`dsq_chain.sdk.events`), the other shipped contracts' as :class:`LogEvent`, anything else as
    ``Undecodable``."""
    out: list[ChainEvent] = []
    for log in logs:
        ev = _decoder().decode(cast(Any, log))
        if isinstance(ev, Undecodable) and ev.event in _abi_by_name():
            try:
                data = get_event_data(Web3().codec, cast(Any, _abi_by_name()[ev.event]), cast(Any, log))
                ev = LogEvent(block_number=ev.block_number, block_hash=ev.block_hash, tx_hash=ev.tx_hash,
                              log_index=ev.log_index, event=ev.event, args=dict(data["args"]))
            except Exception:  # keep the Undecodable record and its reason
                pass
        out.append(ev)
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
    ids = [i for e in fields["events"] if isinstance(e, JobSubmitted) for i in e.job_ids]
    return Submission(**fields, job_ids=tuple(ids))


def withdrawal_of(raw: TxReceipt) -> Withdrawal:
    """A :class:`Withdrawal`: the receipt and the amount of its ``Withdrawn`` event."""
    fields = _fields(raw)
    amount = sum(e.amount for e in fields["events"] if isinstance(e, Withdrawn))
    return Withdrawal(**fields, amount=Credits(units=amount))


def skipped_entries(market: Any, receipt: Receipt | TxReceipt) -> dict[int, ContractError]:
    """The entries of an ``assignBatch`` or ``report`` transaction the chain skipped: job id -> the
    error the single call would have raised (from the ``EntrySkipped`` events of ``receipt``)."""
    raw = receipt.raw if isinstance(receipt, Receipt) else receipt
    out: dict[int, ContractError] = {}
    for ev in market.events.EntrySkipped().process_receipt(cast(TxReceipt, raw), errors=DISCARD):
        out[int(ev["args"]["jobId"])] = decode_revert(bytes(ev["args"]["reason"]))
    return out


__all__ = [
    "LogEvent", "Receipt", "Submission", "Withdrawal", "decode_logs", "receipt_of", "skipped_entries", "submission_of",
    "withdrawal_of",
]
