"""The market's logs as typed records: one frozen dataclass per contract event, and topic filters.

:class:`EventDecoder` decodes a log once, straight from the compiled ABI, into the dataclass of its
event (fields are the ABI's names in snake case; structs become :class:`~dsq_chain.types.Resources`,
:class:`~dsq_chain.types.Prices`, :class:`JobRequest` and :class:`ChainLabel`; enums their
``IntEnum``). ``tests/test_events.py`` checks every class against the ABI.

Decoding never raises. Anything an account can put in a log that the ABI cannot make sense of — a
log of an unknown event (a newer contract version), a wrong number of topics, data that does not
decode, an enum value this library does not know — becomes an :class:`Undecodable` record that
keeps the raw log. Text (``string``) is decoded leniently: bytes that are not UTF-8 become U+FFFD,
which no label key or name accepts, so consumers reject them by their own rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import Any, NamedTuple, cast

from eth_utils.abi import collapse_if_tuple, event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3.types import LogReceipt

from dsq_chain import artifacts, lifecycle
from dsq_chain.types import JobStatus, LabelOp, Prices, ProviderStatus, ReleaseReason, Resources

#: The contracts whose events the services follow, by artifact name.
FOLLOWED_CONTRACTS = ("JobMarket",)

#: Events a provider's worker needs, each with the position of its indexed ``provider`` topic.
PROVIDER_TOPIC_POSITION = {
    "JobAssigned": 2,
    "JobStatusChanged": 2,
    "JobReleased": 2,
    "JobToppedUp": 2,
    "JobSettled": 3,
}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainEvent:
    """Where a log sits in the chain; every event record derives from this."""

    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int

    @property
    def name(self) -> str:
        """The contract event's name (the class name)."""
        return type(self).__name__

    @property
    def position(self) -> tuple[int, int]:
        return (self.block_number, self.log_index)


class ChainLabel(NamedTuple):
    """A label constraint as the chain stores it (``LabelConstraint`` struct)."""

    key: bytes
    op: LabelOp
    value: bytes


@dataclass(frozen=True, slots=True)
class JobRequest:
    """The ``JobRequest`` struct of a submission."""

    cpus: int
    gpus: int
    mem_mb: int
    max_rate: int
    credits: int
    disk_gb: int = 0
    #: A reference outside the grid (e.g. an Akash deployment), carried by this event only.
    external_ref: bytes = b"\0" * 32

    @property
    def resources(self) -> Resources:
        return Resources(self.cpus, self.gpus, self.mem_mb, self.disk_gb)



@dataclass(frozen=True, slots=True, kw_only=True)
class Undecodable(ChainEvent):
    """A log the ABI could not make sense of, kept raw; consumers log it, count it and go on."""

    address: str
    topics: tuple[bytes, ...]
    data: bytes
    #: The event the first topic names, when it names one of the ABI's.
    event: str | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSubmitted(ChainEvent):
    first_job_id: int
    owner: str
    count: int
    request: JobRequest
    labels: tuple[ChainLabel, ...]
    workflow_hash: bytes
    workflow: bytes

    @property
    def job_ids(self) -> range:
        return range(self.first_job_id, self.first_job_id + self.count)


@dataclass(frozen=True, slots=True, kw_only=True)
class EntrySkipped(ChainEvent):
    """An entry of an ``assignBatch`` (provider: the target) or ``report`` (provider: the reporter) that the
    chain skipped; ``reason`` is the custom error's revert data (``errors.decode_revert`` names it)."""

    job_id: int
    provider: str
    reason: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminActionScheduled(ChainEvent):
    """A delayed admin action was scheduled: a watchdog's alert."""

    operation: bytes
    action: bytes
    args: bytes
    ready_at: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminActionCancelled(ChainEvent):
    operation: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminDelayChanged(ChainEvent):
    admin_delay: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Swept(ChainEvent):
    to: str
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobAssigned(ChainEvent):
    job_id: int
    provider: str
    rate: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStatusChanged(ChainEvent):
    job_id: int
    provider: str
    status: JobStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class JobReleased(ChainEvent):
    job_id: int
    provider: str
    reason: ReleaseReason


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSettled(ChainEvent):
    job_id: int
    owner: str
    provider: str
    status: JobStatus
    exit_code: int
    billed: int
    refunded: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobToppedUp(ChainEvent):
    job_id: int
    provider: str
    payer: str
    amount: int
    escrow: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Withdrawn(ChainEvent):
    account: str
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimTimeoutChanged(ChainEvent):
    claim_timeout: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderRegistered(ChainEvent):
    provider: str
    id: int
    hardware: Resources
    prices: Prices


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderHardwareUpdated(ChainEvent):
    provider: str
    hardware: Resources


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderPricesUpdated(ChainEvent):
    provider: str
    prices: Prices


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderLabelsSet(ChainEvent):
    provider: str
    keys: tuple[str, ...]
    values: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderStatusChanged(ChainEvent):
    provider: str
    status: ProviderStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderPaused(ChainEvent):
    provider: str
    paused: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleGranted(ChainEvent):
    role: bytes
    account: str
    sender: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleRevoked(ChainEvent):
    role: bytes
    account: str
    sender: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleAdminChanged(ChainEvent):
    role: bytes
    previous_admin_role: bytes
    new_admin_role: bytes


#: Every event record by contract event name.
EVENT_TYPES: dict[str, type[ChainEvent]] = {
    cls.__name__: cls
    for cls in (
        JobSubmitted, JobAssigned, JobStatusChanged, JobReleased, JobSettled, JobToppedUp, Withdrawn,
        ClaimTimeoutChanged, ProviderRegistered, ProviderHardwareUpdated, ProviderPricesUpdated,
        ProviderLabelsSet, ProviderStatusChanged, ProviderPaused, RoleGranted, RoleRevoked, RoleAdminChanged,
        EntrySkipped, AdminActionScheduled, AdminActionCancelled, AdminDelayChanged, Swept,
    )
}

#: What each Solidity struct decodes into (its components become the fields, in snake case).
STRUCT_TYPES: dict[str, Callable[..., Any]] = {
    "Hardware": Resources,
    "Prices": Prices.from_units,  # the chain's base units
    "JobRequest": JobRequest,
    "LabelConstraint": ChainLabel,
}

#: What each Solidity enum decodes into.
ENUM_TYPES: dict[str, type[IntEnum]] = {
    "JobStatus": JobStatus,
    "ProviderStatus": ProviderStatus,
    "ReleaseReason": ReleaseReason,
    "LabelOp": LabelOp,
}


def job_status_after(ev: ChainEvent) -> JobStatus | None:
    """The status ``ev`` leaves its job (every job of a submitted array) in; None when it changes none.

    The one event-to-status step of every consumer (:class:`~dsq_chain.services.gridstate.GridState`,
    the index's ``Applier``, :func:`~dsq_chain.sdk.history.job_history`): the lifecycle table says
    what each event means (:func:`dsq_chain.lifecycle.status_after`); this reads the ``status`` field of
    the events that carry it. A provider's ``ProviderStatusChanged`` changes no job's status.
    """
    carried = getattr(ev, "status", None) if ev.name in lifecycle.CARRIES_STATUS else None
    return lifecycle.status_after(ev.name, carried)


def job_status_set_by(ev: ChainEvent) -> JobStatus:
    """:func:`job_status_after` for an event that sets a job's status; ValueError for one that does not."""
    status = job_status_after(ev)
    if status is None:
        raise ValueError(f"{ev.name} sets no job status")
    return status


def snake(name: str) -> str:
    """An ABI name in Python's spelling: ``firstJobId`` → ``first_job_id``, ``memMB`` → ``mem_mb``."""
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


# --------------------------------------------------------------------------- decoding


class _EventSpec:
    """What decoding one event needs, worked out once from its ABI entry."""

    __slots__ = ("abi", "cls", "data", "data_types", "indexed", "name")

    def __init__(self, abi: dict[str, Any]) -> None:
        self.abi = abi
        self.name: str = abi["name"]
        self.cls = EVENT_TYPES.get(self.name)
        inputs = abi["inputs"]
        # Indexed dynamic values (strings, arrays, structs) are only present as their hash.
        self.indexed = [(i, i["type"] if _is_static(i) else "bytes32") for i in inputs if i["indexed"]]
        self.data = [i for i in inputs if not i["indexed"]]
        # Text is read as bytes (the same encoding) so that bytes that are not UTF-8 cannot fail the log.
        self.data_types = [re.sub(r"\bstring\b", "bytes", collapse_if_tuple(i)) for i in self.data]


class EventDecoder:
    """Decodes logs of the grid's contracts by their first topic into :data:`EVENT_TYPES` records.

    Decoding calls eth-abi with the types worked out once per event (web3's generic
    ``get_event_data`` cost milliseconds per event). :meth:`decode` never raises.
    """

    def __init__(self, contracts: Sequence[str] = FOLLOWED_CONTRACTS) -> None:
        from web3 import Web3

        self._codec = Web3().codec
        self._by_topic: dict[bytes, _EventSpec] = {}
        self.topics: dict[str, str] = {}
        for contract in contracts:
            for item in artifacts.abi(contract):
                if item["type"] == "event":
                    topic = bytes(event_abi_to_log_topic(cast(Any, item)))
                    self._by_topic[topic] = _EventSpec(item)
                    self.topics[item["name"]] = "0x" + topic.hex()

    def decode(self, log: LogReceipt | dict[str, Any]) -> ChainEvent:
        """The event's record, or :class:`Undecodable` with the reason; never raises."""
        spec: _EventSpec | None = None
        try:
            topics = [bytes(HexBytes(t)) for t in log["topics"]]
            spec = self._by_topic.get(topics[0]) if topics else None
            if spec is None:
                return _undecodable(log, None, "unknown event signature" if topics else "anonymous log")
            if spec.cls is None:
                return _undecodable(log, spec.name, "no record type for this event")
            if len(topics) - 1 != len(spec.indexed):
                return _undecodable(
                    log, spec.name, f"{len(topics) - 1} indexed topics, expected {len(spec.indexed)}"
                )
            values: dict[str, Any] = {}
            for (inp, typ), topic in zip(spec.indexed, topics[1:], strict=True):
                values[snake(inp["name"])] = _convert(inp, self._codec.decode([typ], topic)[0])
            decoded = self._codec.decode(spec.data_types, bytes(HexBytes(log["data"])))
            for inp, value in zip(spec.data, decoded, strict=True):
                values[snake(inp["name"])] = _convert(inp, value)
            return spec.cls(**_envelope(log), **values)
        except Exception as e:  # whatever a log holds, the caller gets a record, not an exception
            try:
                return _undecodable(log, spec.name if spec else None, f"{type(e).__name__}: {e}")
            except Exception:  # the log's own envelope is malformed
                return Undecodable(block_number=-1, block_hash="", tx_hash="", log_index=-1, address="",
                                   topics=(), data=b"", event=None, reason=f"malformed log: {e}")

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


def _envelope(log: LogReceipt | dict[str, Any]) -> dict[str, Any]:
    return {
        "block_number": int(log["blockNumber"]),
        "block_hash": HexBytes(log["blockHash"]).to_0x_hex(),
        "tx_hash": HexBytes(log["transactionHash"]).to_0x_hex(),
        "log_index": int(log["logIndex"]),
    }


def _undecodable(log: LogReceipt | dict[str, Any], event: str | None, reason: str) -> Undecodable:
    return Undecodable(
        **_envelope(log),
        address=str(log.get("address", "")),
        topics=tuple(bytes(HexBytes(t)) for t in log.get("topics", ())),
        data=bytes(HexBytes(log.get("data", b""))),
        event=event,
        reason=reason,
    )


def _is_static(inp: dict[str, Any]) -> bool:
    typ = str(inp["type"])
    return not (typ in ("string", "bytes") or typ.endswith("]") or typ.startswith("tuple"))


def _convert(inp: dict[str, Any], value: Any) -> Any:
    """An eth-abi value as the record's field holds it (see the module docstring)."""
    typ = str(inp["type"])
    internal = str(inp.get("internalType", typ))
    if typ.endswith("]"):
        element = dict(inp, type=typ[: typ.rindex("[")], internalType=internal[: internal.rindex("[")])
        return tuple(_convert(element, v) for v in value)
    if typ == "tuple":
        struct = internal.removeprefix("struct ").rsplit(".", 1)[-1]
        make = STRUCT_TYPES[struct]
        return make(**{snake(c["name"]): _convert(c, v) for c, v in zip(inp["components"], value, strict=True)})
    if internal.startswith("enum "):
        return ENUM_TYPES[internal.removeprefix("enum ").rsplit(".", 1)[-1]](value)  # unknown value: ValueError
    if typ == "address":
        return _checksum(value)
    if typ == "string":
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return value


#: Checksumming hashes the address: the same few providers and owners recur in every event.
_checksum = lru_cache(maxsize=65_536)(to_checksum_address)


def sort_events(events: Sequence[ChainEvent]) -> list[ChainEvent]:
    """Chain order, without duplicates (the same log matched by two filters)."""
    seen: dict[tuple[int, int], ChainEvent] = {}
    for e in events:
        seen[e.position] = e
    return [seen[k] for k in sorted(seen)]


def normalise_log(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw JSON-RPC log into the shape the decoder expects."""
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
