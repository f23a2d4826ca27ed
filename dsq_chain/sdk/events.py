"""Decoding the market's logs into typed :class:`ChainEvent` records, and topic filters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from eth_utils.abi import collapse_if_tuple, event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3._utils.events import get_event_data
from web3.types import LogReceipt

from dsq_chain import artifacts

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


class _EventSpec:
    """What decoding one event needs, worked out once from its ABI entry."""

    __slots__ = ("abi", "data", "data_types", "indexed")

    def __init__(self, abi: dict[str, Any]) -> None:
        self.abi = abi
        inputs = abi["inputs"]
        # Indexed dynamic values (strings, arrays, structs) are only present as their hash.
        self.indexed = [(i["name"], i["type"] if _is_static(i) else "bytes32") for i in inputs if i["indexed"]]
        self.data = [i for i in inputs if not i["indexed"]]
        self.data_types = [collapse_if_tuple(i) for i in self.data]


class EventDecoder:
    """Decodes logs of the market contract by their first topic (events of the shipped ABI only).

    Decoding calls eth-abi with the types worked out once per event: web3's generic
    ``get_event_data`` cost milliseconds per event, which made replaying a busy market slow.
    :meth:`decode_with_web3` gives web3's result, the reference in tests.
    """

    def __init__(self) -> None:
        from web3 import Web3

        self._codec = Web3().codec
        self._by_topic: dict[bytes, _EventSpec] = {}
        self.topics: dict[str, str] = {}
        for item in artifacts.abi("JobMarket"):
            if item["type"] == "event":
                topic = event_abi_to_log_topic(cast(Any, item))
                self._by_topic[bytes(topic)] = _EventSpec(item)
                self.topics[item["name"]] = "0x" + bytes(topic).hex()

    def decode(self, log: LogReceipt | dict[str, Any]) -> ChainEvent | None:
        """The event, or None for a log this ABI does not know."""
        topics = log["topics"]
        if not topics:
            return None
        spec = self._by_topic.get(bytes(HexBytes(topics[0])))
        if spec is None:
            return None
        name = spec.abi["name"]
        if len(topics) - 1 != len(spec.indexed):
            raise ValueError(f"{name} log with {len(topics) - 1} indexed topics, expected {len(spec.indexed)}")
        args: dict[str, Any] = {}
        for (arg, typ), topic in zip(spec.indexed, topics[1:], strict=True):
            args[arg] = _plain(self._codec.decode([typ], bytes(HexBytes(topic)))[0])
        values = self._codec.decode(spec.data_types, bytes(HexBytes(log["data"])))
        for inp, value in zip(spec.data, values, strict=True):
            args[inp["name"]] = _plain(_named(inp, value))
        return _event(name, args, log)

    def decode_with_web3(self, log: LogReceipt | dict[str, Any]) -> ChainEvent | None:
        """:meth:`decode` through web3's ``get_event_data`` (slower)."""
        topics = log["topics"]
        spec = self._by_topic.get(bytes(HexBytes(topics[0]))) if topics else None
        if spec is None:
            return None
        data = get_event_data(self._codec, cast(Any, spec.abi), cast(Any, log))
        return _event(spec.abi["name"], {k: _plain(v) for k, v in data["args"].items()}, log)

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


def _event(name: str, args: dict[str, Any], log: LogReceipt | dict[str, Any]) -> ChainEvent:
    return ChainEvent(
        name=name,
        args=args,
        block_number=int(log["blockNumber"]),
        block_hash=HexBytes(log["blockHash"]).to_0x_hex(),
        tx_hash=HexBytes(log["transactionHash"]).to_0x_hex(),
        log_index=int(log["logIndex"]),
    )


def _is_static(inp: dict[str, Any]) -> bool:
    typ = str(inp["type"])
    return not (typ in ("string", "bytes") or typ.endswith("]") or typ.startswith("tuple"))


def _named(inp: dict[str, Any], value: Any) -> Any:
    """eth-abi's tuples as web3 gives them: structs as dicts by component name, arrays as tuples."""
    typ = str(inp["type"])
    if typ.endswith("]"):
        element = dict(inp, type=typ[: typ.rindex("[")])
        return tuple(_named(element, v) for v in value)
    if typ == "tuple":
        return {c["name"]: _named(c, v) for c, v in zip(inp["components"], value, strict=True)}
    return value


#: Checksumming hashes the address: the same few providers and owners recur in every event.
_checksum = lru_cache(maxsize=65_536)(to_checksum_address)


def _plain(value: Any) -> Any:
    """web3's AttributeDicts/HexBytes/tuples into plain Python values."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        return _checksum(value)
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


def normalise_log(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw JSON-RPC log into the shape web3's decoder expects."""
    return {
        "address": raw["address"],
        "topics": [HexBytes(t) for t in raw["topics"]],
        "data": HexBytes(raw["data"]),
        "blockNumber": int(raw["blockNumber"], 16),
        "blockHash": HexBytes(raw["blockHash"]),
        "transactionHash": HexBytes(raw["transactionHash"]),
        "transactionIndex": int(raw["transactionIndex"], 16),
        "logIndex": int(raw["logIndex"], 16),
    }
