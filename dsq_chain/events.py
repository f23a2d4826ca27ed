"""Decoding the market's logs into typed :class:`ChainEvent` records, and topic filters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3._utils.events import get_event_data
from web3.types import LogReceipt

from . import artifacts

#: Events a provider's worker needs, each with the position of its indexed ``provider`` topic.
PROVIDER_TOPIC_POSITION = {
    "JobAssigned": 2,
    "JobStatusChanged": 2,
    "JobReleased": 2,
    "JobToppedUp": 2,
    "JobSettled": 3,
}


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """One decoded log, with where it sits in the chain."""

    name: str
    args: dict[str, Any]
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)


class EventDecoder:
    """Decodes logs of the market contract by their first topic (events of the shipped ABI only)."""

    def __init__(self) -> None:
        from web3 import Web3

        self._codec = Web3().codec
        self._by_topic: dict[bytes, dict[str, Any]] = {}
        self.topics: dict[str, str] = {}
        for item in artifacts.abi("JobMarket"):
            if item["type"] == "event":
                topic = event_abi_to_log_topic(cast(Any, item))
                self._by_topic[bytes(topic)] = item
                self.topics[item["name"]] = "0x" + bytes(topic).hex()

    def decode(self, log: LogReceipt | dict[str, Any]) -> ChainEvent | None:
        """The event, or None for a log this ABI does not know."""
        topics = log["topics"]
        if not topics:
            return None
        abi = self._by_topic.get(bytes(HexBytes(topics[0])))
        if abi is None:
            return None
        data = get_event_data(self._codec, abi, log)  # type: ignore[arg-type]
        return ChainEvent(
            name=abi["name"],
            args={k: _plain(v) for k, v in data["args"].items()},
            block_number=int(log["blockNumber"]),
            block_hash=HexBytes(log["blockHash"]).to_0x_hex(),
            tx_hash=HexBytes(log["transactionHash"]).to_0x_hex(),
            log_index=int(log["logIndex"]),
        )

    def provider_filters(self, provider: str) -> list[list[Any]]:
        """``eth_getLogs`` topic filters selecting only ``provider``'s job events."""
        padded = "0x" + "0" * 24 + to_checksum_address(provider)[2:].lower()
        filters: list[list[Any]] = []
        for pos in sorted(set(PROVIDER_TOPIC_POSITION.values())):
            names = [n for n, p in PROVIDER_TOPIC_POSITION.items() if p == pos]
            topics: list[Any] = [[self.topics[n] for n in names]] + [None] * (pos - 1) + [padded]
            filters.append(topics)
        return filters

    def filter_for(self, names: Iterable[str]) -> list[Any]:
        """A topic filter selecting the named events."""
        return [[self.topics[n] for n in names]]


def _plain(value: Any) -> Any:
    """web3's AttributeDicts/HexBytes/tuples into plain Python values."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return to_checksum_address(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def sort_events(events: Sequence[ChainEvent]) -> list[ChainEvent]:
    """Chain order, without duplicates (the same log matched by two filters)."""
    seen: dict[tuple[int, int], ChainEvent] = {}
    for e in events:
        seen[e.position] = e
    return [seen[k] for k in sorted(seen)]
