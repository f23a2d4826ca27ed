"""Typed events: one record per contract event, checked against the ABI; decoding never raises.

Also the hole this closed: a provider nobody approved could set a label whose key is not UTF-8, and
the follower's decoder raised on it, stopping the meta-scheduler for good (a restart replayed the
same log). Here such logs are sent at a running scheduler, which keeps placing jobs, and at one
started afterwards.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from eth_abi import encode
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from dsq_chain import artifacts
from dsq_chain.sdk.client import ProviderClient
from dsq_chain.sdk.events import (
    ENUM_TYPES,
    EVENT_TYPES,
    FOLLOWED_CONTRACTS,
    STRUCT_TYPES,
    ChainEvent,
    EventDecoder,
    ProviderLabelsSet,
    Undecodable,
    snake,
)
from dsq_chain.services.gridstate import GridState
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import JobStatus, Prices, Resources
from dsq_chain.workloads.labels import encode_value
from tests.grid import Grid
from tests.test_invariants import selector
from tests.test_scheduler import EXTRA_KEYS, PLAIN, submit

#: The JobRequest struct as the submit function's ABI spells it (read from the artifacts, not written by hand).
REQUEST = "(" + ",".join(c["type"] for c in next(
    i for i in artifacts.abi("JobMarket") if i.get("name") == "submit")["inputs"][0]["components"]) + ")"


def _events() -> list[dict[str, Any]]:
    return [i for c in FOLLOWED_CONTRACTS for i in artifacts.abi(c) if i["type"] == "event"]


def _struct_fields(cls: Any) -> list[str]:
    cls = getattr(cls, "__self__", cls)  # a classmethod constructor (Prices.from_units)
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return list(cls._fields)  # a NamedTuple


# ------------------------------------------------------------------------------------ records vs ABI


@pytest.mark.parametrize("item", _events(), ids=lambda i: i["name"])
def test_every_contract_event_has_a_record_with_the_abis_fields(item: dict[str, Any]) -> None:
    cls = EVENT_TYPES.get(item["name"])
    assert cls is not None, f"no record class for event {item['name']} in dsq_chain.sdk.events"
    envelope = {f.name for f in dataclasses.fields(ChainEvent)}
    own = [f.name for f in dataclasses.fields(cls) if f.name not in envelope]
    assert own == [snake(i["name"]) for i in item["inputs"]]


def _walk(inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in inputs:
        out.append(i)
        out += _walk(i.get("components", []))
    return out


def test_every_struct_and_enum_in_events_has_a_python_type_with_the_same_fields() -> None:
    for item in _events():
        for inp in _walk(item["inputs"]):
            internal = str(inp.get("internalType", ""))
            if internal.startswith("struct "):
                name = internal.removeprefix("struct ").split("[")[0].rsplit(".", 1)[-1]
                assert name in STRUCT_TYPES, f"{item['name']}.{inp['name']}: no Python type for struct {name}"
                assert _struct_fields(STRUCT_TYPES[name]) == [snake(c["name"]) for c in inp["components"]]
            elif internal.startswith("enum "):
                name = internal.removeprefix("enum ").rsplit(".", 1)[-1]
                assert name in ENUM_TYPES, f"{item['name']}.{inp['name']}: no Python enum for {name}"


def test_record_classes_are_frozen() -> None:
    for cls in EVENT_TYPES.values():
        assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


@pytest.mark.parametrize(("abi", "py"), [("firstJobId", "first_job_id"), ("memMB", "mem_mb"),
                                         ("perGbMinute", "per_gb_minute"), ("exitCode", "exit_code"),
                                         ("id", "id"), ("previousAdminRole", "previous_admin_role")])
def test_snake_case(abi: str, py: str) -> None:
    assert snake(abi) == py


# ------------------------------------------------------------------------------------ never raises


def _log(topics: list[bytes], data: bytes) -> dict[str, Any]:
    return {"address": "0x" + "11" * 20, "topics": topics, "data": data, "blockNumber": 7,
            "blockHash": b"\1" * 32, "transactionHash": b"\2" * 32, "transactionIndex": 0, "logIndex": 3}


DECODER = EventDecoder()
TOPICS = [bytes.fromhex(t[2:]) for t in DECODER.topics.values()]


def test_unknown_and_malformed_logs_become_undecodable_records() -> None:
    labels = bytes.fromhex(DECODER.topics["ProviderLabelsSet"][2:])
    cases = {
        "unknown event signature": _log([b"\x99" * 32], b""),
        "anonymous log": _log([], b"\0" * 32),
        "indexed topics": _log([labels], b""),
        "InsufficientDataBytes": _log([labels, b"\0" * 32], b"\x01\x02"),
    }
    for expected, lg in cases.items():
        ev = DECODER.decode(lg)
        assert isinstance(ev, Undecodable), expected
        assert expected.split()[0] in ev.reason, (expected, ev.reason)
        assert ev.block_number == 7 and ev.log_index == 3 and ev.data == bytes(lg["data"])


def test_an_enum_value_this_library_does_not_know_is_undecodable() -> None:
    changed = bytes.fromhex(DECODER.topics["ProviderStatusChanged"][2:])
    ev = DECODER.decode(_log([changed, b"\0" * 32], encode(["uint8"], [200])))
    assert isinstance(ev, Undecodable) and ev.event == "ProviderStatusChanged"


def test_text_that_is_not_utf8_decodes_to_replacement_characters() -> None:
    topic = bytes.fromhex(DECODER.topics["ProviderLabelsSet"][2:])
    data = encode(["bytes[]", "bytes32[]"], [[b"\xff\xfezone", b"ok"], [b"\1" * 32, b"\2" * 32]])
    ev = DECODER.decode(_log([topic, b"\0" * 12 + b"\x22" * 20], data))
    assert isinstance(ev, ProviderLabelsSet)
    assert ev.keys == ("\ufffd\ufffdzone", "ok")


@settings(max_examples=300, deadline=None)
@given(topic=st.sampled_from([*TOPICS, b"\0" * 32]), extra=st.lists(st.binary(min_size=32, max_size=32), max_size=4),
       data=st.one_of(st.binary(max_size=600),
                      st.lists(st.binary(min_size=32, max_size=32), max_size=24).map(b"".join)))
def test_random_logs_never_raise_and_never_stop_the_grid_state(topic: bytes, extra: list[bytes], data: bytes) -> None:
    ev = DECODER.decode(_log([topic, *extra], data))
    assert isinstance(ev, ChainEvent)
    GridState().apply(ev)  # whatever it is, the state takes it without raising


# ------------------------------------------------------------------------------------ against a running scheduler


def _send(grid: Grid, sender: str, fn: str, sig_types: tuple[str, ...], types: list[str], args: list[Any]) -> None:
    data = selector(fn, sig_types) + encode(types, args).hex()
    receipt = grid.chain.call_rpc("eth_sendTransactionSync",
                                  [{"from": sender, "to": grid.deployment.market, "data": data, "gas": hex(5_000_000)}])
    assert int(receipt["status"], 16) == 1, f"{fn} reverted"


def _hostile_labels(grid: Grid, sender: str) -> None:
    """Label keys that are not UTF-8, empty, overlong, and values no label encodes to."""
    keys = [b"\xff\xfe\xfd", b"", b"k" * 300, b"zone\x00", b"gpu.model"]
    values = [b"\x80" * 32, encode_value("x"), b"\xff" * 32, b"\x01" + b"\0" * 31, b"\x7f" * 32]
    _send(grid, sender, "setLabels", ("string[]", "bytes32[]"), ["bytes[]", "bytes32[]"], [keys, values])


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_hostile_labels_from_an_unapproved_provider_do_not_stop_a_running_scheduler(grid: Grid) -> None:
    stranger = ProviderClient(grid.chain.wallet(EXTRA_KEYS[5]), grid.deployment)
    stranger.register(Resources(2**16 - 1, 255, 2**32 - 1), Prices.from_units(1, 0, 0), {})  # unapproved, huge, cheap
    approved = grid.spare
    sched = MetaScheduler(grid.scheduler.wallet, grid.deployment, poll_interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=sched.run, args=(stop,), daemon=True)
    thread.start()
    try:
        first = submit(grid.user, PLAIN)[0]
        _wait(lambda: grid.user.job(first).status is JobStatus.META_SCHEDULED, 10, "the first job to be placed")
        _hostile_labels(grid, stranger.address)
        _hostile_labels(grid, approved.address)
        second = submit(grid.user, PLAIN)[0]
        _wait(lambda: grid.user.job(second).status is JobStatus.META_SCHEDULED, 10,
              "a job submitted after the hostile logs to be placed")
        assert thread.is_alive()
        assert sched.state.errors >= 2  # each hostile event counted
        assert "gpu.model" not in sched.state.providers[approved.address].labels  # its value decodes to nothing
    finally:
        stop.set()
        thread.join(10)
    # A scheduler started afterwards replays the same logs from the deployment block and works.
    fresh = MetaScheduler(grid.scheduler.wallet, grid.deployment)
    third = submit(grid.user, PLAIN)[0]
    fresh.sync()
    fresh.round()
    assert grid.user.job(third).status is JobStatus.META_SCHEDULED
    assert fresh.state.errors >= 2


def test_workflow_bytes_that_do_not_parse_make_a_problem_not_a_crash(grid: Grid) -> None:
    """Deeply nested JSON (a RecursionError in a naive parser) and bytes that are not UTF-8."""
    user = grid.user.address
    token_approve = "0x" + keccak(text="approve(address,uint256)")[:4].hex() + \
        encode(["address", "uint256"], [grid.deployment.market, 10**12]).hex()
    grid.chain.call_rpc("eth_sendTransactionSync", [{"from": user, "to": grid.deployment.token, "data": token_approve}])
    bodies = [b"[" * 8_000 + b"]" * 8_000, b"\xff\xfe not utf-8", b'{"steps": 7}']
    for body in bodies:
        types = [REQUEST, "(bytes32,uint8,bytes32)[]", "bytes", "uint256"]
        _send(grid, user, "submit", tuple(types), types, [(1, 0, 512, 10**6, 1_000, 0, bytes(32)), [], body, 1])
    sched = MetaScheduler(grid.scheduler.wallet, grid.deployment)
    sched.sync()
    sched.round()
    problems = [j.problem for j in sched.state.jobs.values() if j.problem]
    assert len(problems) == len(bodies)
    assert all(p.startswith("workflow does not parse") for p in problems), problems
    assert not sched.state.pending or all(j.problem for j in sched.state.pending.values())
