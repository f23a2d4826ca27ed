"""Contract invariants under random sequences of every public action, by random actors, on real Anvil.

A hypothesis ``RuleBasedStateMachine`` drives the deployed CreditToken + JobMarket with every public
action — submit (single and array), assign, batch assign, claim, refuse, start, finish (exit 0 and
not), out-of-credits, batched reports, cancel, panic, top-up, claim timeout, withdraw, provider
registration, hardware/price/label updates, pause/resume, approve/ban/remove, claim-timeout change,
mint — each sent by a random actor (admin, scheduler, owners, providers, stranger) or by the one the
design expects, with random jumps of chain time in between.

A Python model of the contracts predicts each call: success with its exact effects, or the named
custom error it must revert with. After **every** step the chain is read in one JSON-RPC batch and:

* the call succeeded exactly when the model said so, else reverted with the model's named error and
  changed nothing (jobs, providers, labels, internal balances, token balances, supply);
* the whole chain state equals the model's (every job, provider, balance);
* credits are conserved: market token balance == sum of escrows + sum of internal balances; final
  jobs hold no escrow; total supply == sum of all balances and changes only by a successful mint;
* capacity: for every provider, 0 <= free <= declared, and free == declared minus the resources of
  its META_SCHEDULED/SCHEDULED/RUNNING jobs;
* final statuses never change, and every transition seen in the step's events is one the lifecycle table
  allows, made by the caller it allows (scheduler assigns, the assigned provider claims, starts,
  refuses and finishes, the owner cancels, scheduler/admin/provider panic, anyone times out a claim
  or reports an exhausted escrow);
* no job is billed above its escrow: JobSettled's billed + refunded == the escrow it held.

For speed the machine talks raw JSON-RPC: Anvil's unlocked dev accounts send with
``eth_sendTransaction`` and a fixed gas limit (automine: one round trip, no estimation, no signing),
and the reads go in one batch per step. Each example starts from an ``evm_snapshot`` and is reverted
at teardown, so examples are independent (and chain time goes back too).

``DSQ_INVARIANT_EXAMPLES`` / ``DSQ_INVARIANT_STEPS`` override the CI figures (36 x 300, see EXAMPLES);
``benchmarks/invariants_long.py`` runs the same machine longer.
"""

from __future__ import annotations

import copy
import functools
import http.client
import json
import os
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from eth_abi import encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from dsq_chain.errors import decode_revert
from dsq_chain.sdk.anvil import AnvilNode, dev_keys, start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.sdk.events import EventDecoder, Undecodable
from dsq_chain.types import JobStatus, ProviderStatus, ReleaseReason, ReportAction
from dsq_chain.workloads.labels import encode_value
from tests.grid import abi_args

S = JobStatus
PS = ProviderStatus
ZERO = "0x0000000000000000000000000000000000000000"
U64 = 2**64 - 1
GAS = 8_000_000
MAX_SUPPLY = 2**128 - 1
MAX_ARRAY_JOBS = 500

# ------------------------------------------------------------------------------------------ actors
ADMIN, SCHEDULER = 0, 1
OWNERS = (2, 3, 4)
PROVIDERS = (5, 6, 7, 8)  # 5, 6, 7 approved at setup, 8 registered but pending
STRANGER = 9
N_ACCOUNTS = 10
NAMES = {0: "admin", 1: "scheduler", 2: "owner2", 3: "owner3", 4: "owner4", 5: "prov5", 6: "prov6", 7: "prov7",
         8: "prov8", 9: "stranger"}

# ------------------------------------------------------------------------------------------ ABI
LABEL = "(bytes32,uint8,bytes32)"
REQ = "(uint16,uint8,uint32,uint56,uint64)"
HW = "(uint32,uint16,uint32)"
PRICES = "(uint40,uint40,uint40)"
REPORT = "(uint256,uint8,int32)"


#: selector -> function name, for the coverage summary
SELECTOR_NAMES: dict[str, str] = {}


@functools.cache
def selector(name: str, types: tuple[str, ...]) -> str:
    sel = "0x" + keccak(text=f"{name}({','.join(types)})")[:4].hex()
    SELECTOR_NAMES[sel] = name
    return sel


def calldata(name: str, types: Sequence[str], args: Sequence[Any]) -> str:
    """``0x`` + selector of ``name(types)`` + the ABI-encoded arguments."""
    return selector(name, tuple(types)) + (encode(list(types), list(args)).hex() if types else "")


def key_of(name: str) -> bytes:
    return keccak(text=name)


def number(n: int) -> bytes:
    return encode_value(str(n))


def text(s: str) -> bytes:
    return encode_value(s)


W_ZERO = bytes(32)
LABEL_KEYS = ("zone", "gpu.model", "gpu.mem")
LABEL_VALUES = (text("eu"), text("us"), text("A100"), number(80), number(16), W_ZERO)
#: Label constraint sets jobs are submitted with (on-chain tuples); the last one is too long.
CONSTRAINT_SETS: tuple[tuple[tuple[bytes, int, bytes], ...], ...] = (
    (),
    (),
    ((key_of("zone"), 0, text("eu")),),
    ((key_of("gpu.model"), 0, text("A100")), (key_of("gpu.mem"), 5, number(40))),
    ((key_of("zone"), 1, text("us")),),
    ((key_of("gpu.mem"), 2, number(50)),),
    tuple((key_of("zone"), 1, text(f"z{i}")) for i in range(17)),
)


# ------------------------------------------------------------------------------------------ raw JSON-RPC
class RpcError(RuntimeError):
    pass


class Rpc:
    """A minimal JSON-RPC client: one persistent HTTP/1.1 connection with TCP_NODELAY, batches."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.conn: http.client.HTTPConnection | None = None

    def _post(self, body: Any) -> Any:
        payload = json.dumps(body).encode()
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self.conn.connect()
                assert self.conn.sock is not None
                self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self.conn.request("POST", "/", payload, {"Content-Type": "application/json"})
                return json.loads(self.conn.getresponse().read())
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def call(self, method: str, params: list[Any]) -> Any:
        resp = self._post({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        if "error" in resp:
            raise RpcError(f"{method}: {resp['error']}")
        return resp["result"]

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        resps = self._post([{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)])
        out: list[Any] = [None] * len(calls)
        for r in resps:
            if "error" in r:
                raise RpcError(f"{calls[r['id']][0]}: {r['error']}")
            out[r["id"]] = r["result"]
        return out

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send(self, sender: str, to: str, data: str) -> dict[str, Any]:
        """Sends from an unlocked dev account and returns the receipt (Anvil's ``eth_sendTransactionSync``:
        one round trip, the block mined before the answer)."""
        tx = {"from": sender, "to": to, "data": data, "gas": hex(GAS)}
        return dict(self.call("eth_sendTransactionSync", [tx]))

    def revert_data(self, tx_hash: str) -> str:
        trace = self.call("debug_traceTransaction", [tx_hash, {"tracer": "callTracer"}])
        return str(trace.get("output", "0x"))


def revert_name(data: str) -> str:
    if len(data) < 10:
        return f"<no error data {data}>"
    return type(decode_revert(data)).__name__


# ------------------------------------------------------------------------------------------ the model
class Revert(Exception):
    """The model's prediction that a call reverts with the named custom error."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(slots=True)
class MJob:
    owner: str
    escrow: int
    status: JobStatus
    pid: int
    rate: int
    since: int
    max_rate: int
    cpus: int
    gpus: int
    mem: int
    labels: tuple[tuple[bytes, int, bytes], ...]
    head: int
    wf_hash: bytes


@dataclass(slots=True)
class MProv:
    status: ProviderStatus
    paused: bool
    id: int
    total: tuple[int, int, int]
    free: tuple[int, int, int]
    prices: tuple[int, int, int]


def _is_number(word: bytes) -> bool:
    return word != W_ZERO and word[0] == 0


def label_ok(op: int, have: bytes, want: bytes) -> bool:
    """The contract's ``_checkLabels`` for one constraint."""
    if op == 0:
        return have == want
    if op == 1:
        return have != want
    if not (_is_number(have) and _is_number(want)):
        return False
    h, w = int.from_bytes(have, "big"), int.from_bytes(want, "big")
    return {2: h < w, 3: h <= w, 4: h > w, 5: h >= w}[op]


@dataclass
class Model:
    """What the contracts hold, predicted. Methods mirror the contract functions, check in the same order
    and raise :class:`Revert` with the custom error's name. Each call runs on a clone (see ``apply``)."""

    market: str
    admins: frozenset[str]
    schedulers: frozenset[str]
    minters: frozenset[str]
    claim_timeout: int
    jobs: dict[int, MJob] = field(default_factory=dict)
    provs: dict[str, MProv] = field(default_factory=dict)
    at: dict[int, str] = field(default_factory=dict)
    labels: dict[str, dict[bytes, bytes]] = field(default_factory=dict)
    internal: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    supply: int = 0
    next_id: int = 1
    provider_count: int = 0

    def clone(self) -> Model:
        m = copy.copy(self)
        m.jobs = {k: copy.copy(v) for k, v in self.jobs.items()}
        m.provs = {k: copy.copy(v) for k, v in self.provs.items()}
        m.at = dict(self.at)
        m.labels = {k: dict(v) for k, v in self.labels.items()}
        m.internal = dict(self.internal)
        m.tokens = dict(self.tokens)
        return m

    # -- helpers ---------------------------------------------------------------------------------
    def pid(self, addr: str) -> int:
        p = self.provs.get(addr)
        return p.id if p else 0

    def existing(self, job_id: int) -> MJob:
        j = self.jobs.get(job_id)
        if j is None:
            raise Revert("JobNotFound")
        return j

    def assigned(self, job_id: int, pid: int) -> MJob:
        j = self.jobs.get(job_id)
        if j is None:
            raise Revert("JobNotFound")
        if pid == 0 or j.pid != pid:
            raise Revert("NotAssignedProvider")
        return j

    def registered(self, addr: str) -> MProv:
        p = self.provs.get(addr)
        if p is None or p.status in (PS.NONE, PS.REMOVED):
            raise Revert("ProviderNotRegistered")
        return p

    def transfer(self, frm: str, to: str, amount: int) -> None:
        if self.tokens.get(frm, 0) < amount:
            raise Revert("ERC20InsufficientBalance")
        self.tokens[frm] -= amount
        self.tokens[to] = self.tokens.get(to, 0) + amount

    def collect(self, payer: str, amount: int) -> None:
        bal = self.internal.get(payer, 0)
        if bal >= amount:
            self.internal[payer] = bal - amount
            return
        self.internal[payer] = 0
        self.transfer(payer, self.market, amount - bal)

    @staticmethod
    def bill_so_far(j: MJob, now: int) -> int:
        return min(j.rate * (now - j.since) // 60, j.escrow)

    def release(self, addr: str, j: MJob) -> None:
        p = self.provs[addr]
        p.free = (p.free[0] + j.cpus, p.free[1] + j.gpus, p.free[2] + j.mem)

    def settle(self, j: MJob, status: JobStatus, bill: int) -> None:
        prev = j.status
        bill = min(bill, j.escrow)
        refund = j.escrow - bill
        j.status = status
        j.escrow = 0
        if prev >= S.META_SCHEDULED:
            prov = self.at[j.pid]
            self.release(prov, j)
            if bill:
                self.internal[prov] = self.internal.get(prov, 0) + bill
        if refund:
            self.internal[j.owner] = self.internal.get(j.owner, 0) + refund

    def back_to_pending(self, j: MJob, addr: str) -> None:
        self.release(addr, j)
        j.status, j.pid, j.rate, j.since = S.PENDING, 0, 0, 0

    def fits(self, j: MJob, prov: str) -> bool:
        """Whether assigning ``j`` to ``prov`` passes every check (used to pick likely-valid actions)."""
        p = self.provs.get(prov)
        if p is None or p.status is not PS.APPROVED or p.paused:
            return False
        if j.cpus > p.free[0] or j.gpus > p.free[1] or j.mem > p.free[2]:
            return False
        have = self.labels.get(prov, {})
        if not all(label_ok(op, have.get(k, W_ZERO), v) for k, op, v in j.labels):
            return False
        return self.rate(p, j.cpus, j.gpus, j.mem) <= j.max_rate

    def fails_once(self, j: MJob, prov: str) -> str | None:
        """The one assignment check that fails for ``j`` on ``prov`` (a registered provider), if exactly one does."""
        p = self.provs.get(prov)
        if p is None:
            return None
        have = self.labels.get(prov, {})
        checks = {"ProviderNotApproved": p.status is PS.APPROVED, "ProviderIsPaused": not p.paused,
                  "InsufficientCapacity": j.cpus <= p.free[0] and j.gpus <= p.free[1] and j.mem <= p.free[2],
                  "LabelMismatch": all(label_ok(op, have.get(k, W_ZERO), v) for k, op, v in j.labels),
                  "PriceAboveCap": self.rate(p, j.cpus, j.gpus, j.mem) <= j.max_rate}
        failing = [name for name, ok in checks.items() if not ok]
        return failing[0] if len(failing) == 1 else None

    @staticmethod
    def rate(p: MProv, cpus: int, gpus: int, mem: int) -> int:
        return cpus * p.prices[0] + gpus * p.prices[1] + (mem * p.prices[2]) // 1024

    # -- owners ------------------------------------------------------------------------------------
    def submit(self, s: str, req: tuple[int, int, int, int, int], labels: tuple[Any, ...], wf: bytes, count: int,
               now: int) -> None:
        cpus, gpus, mem, max_rate, credits = req
        if cpus == 0 or mem == 0:
            raise Revert("InvalidResources")
        if max_rate == 0:
            raise Revert("ZeroPriceCap")
        if credits == 0:
            raise Revert("ZeroCredits")
        if not wf:
            raise Revert("EmptyWorkflow")
        if len(wf) > 16_384:
            raise Revert("WorkflowTooLarge")
        if count == 0 or count > MAX_ARRAY_JOBS:
            raise Revert("InvalidArrayCount")
        if len(labels) > 16:
            raise Revert("TooManyJobLabels")
        first = self.next_id
        h = keccak(wf)
        for i in range(count):
            self.jobs[first + i] = MJob(s, credits, S.PENDING, 0, 0, 0, max_rate, cpus, gpus, mem, labels, first, h)
        self.next_id = first + count
        self.collect(s, credits * count)

    def top_up(self, s: str, job_id: int, amount: int, now: int) -> None:
        if amount == 0:
            raise Revert("ZeroCredits")
        j = self.existing(job_id)
        if j.status.is_final:
            raise Revert("InvalidStatus")
        if j.escrow + amount > U64:
            raise Revert("EscrowOverflow")
        j.escrow += amount
        self.collect(s, amount)

    def cancel(self, s: str, job_id: int, now: int) -> None:
        j = self.existing(job_id)
        if j.owner != s:
            raise Revert("NotJobOwner")
        if j.status.is_final:
            raise Revert("InvalidStatus")
        self.settle(j, S.CANCELED, self.bill_so_far(j, now) if j.status is S.RUNNING else 0)

    def withdraw(self, s: str, now: int) -> None:
        amount = self.internal.get(s, 0)
        if amount == 0:
            raise Revert("NothingToWithdraw")
        self.internal[s] = 0
        self.transfer(self.market, s, amount)

    # -- scheduler -----------------------------------------------------------------------------------
    def assign(self, s: str, job_id: int, prov: str, labels: tuple[Any, ...], now: int) -> None:
        if s not in self.schedulers:
            raise Revert("AccessControlUnauthorizedAccount")
        self._assign(job_id, prov, labels, now)

    def assign_batch(self, s: str, rows: Sequence[tuple[int, str, tuple[Any, ...]]], now: int,
                     n_providers: int | None = None) -> None:
        if s not in self.schedulers:
            raise Revert("AccessControlUnauthorizedAccount")
        if n_providers is not None and n_providers != len(rows):
            raise Revert("LengthMismatch")
        for job_id, prov, labels in rows:
            self._assign(job_id, prov, labels, now)

    def _assign(self, job_id: int, prov: str, labels: tuple[Any, ...], now: int) -> None:
        j = self.jobs.get(job_id)
        if j is None:
            raise Revert("JobNotFound")
        if j.status is not S.PENDING:
            raise Revert("InvalidStatus")
        if j.labels:
            if labels != j.labels:
                raise Revert("LabelsMismatch")
            have = self.labels.get(prov, {})
            for key, op, want in labels:
                if not label_ok(op, have.get(key, W_ZERO), want):
                    raise Revert("LabelMismatch")
        elif labels:
            raise Revert("LabelsMismatch")
        p = self.provs.get(prov)
        if p is None or p.status is not PS.APPROVED:
            raise Revert("ProviderNotApproved")
        if p.paused:
            raise Revert("ProviderIsPaused")
        if j.cpus > p.free[0] or j.gpus > p.free[1] or j.mem > p.free[2]:
            raise Revert("InsufficientCapacity")
        p.free = (p.free[0] - j.cpus, p.free[1] - j.gpus, p.free[2] - j.mem)
        rate = self.rate(p, j.cpus, j.gpus, j.mem)
        if rate > j.max_rate:
            raise Revert("PriceAboveCap")
        j.status, j.pid, j.rate, j.since = S.META_SCHEDULED, p.id, rate, now

    def timeout_claim(self, s: str, job_id: int, now: int) -> None:
        j = self.existing(job_id)
        if j.status is not S.META_SCHEDULED:
            raise Revert("InvalidStatus")
        if now < j.since + self.claim_timeout:
            raise Revert("ClaimNotExpired")
        self.back_to_pending(j, self.at[j.pid])

    def panic(self, s: str, job_id: int, now: int) -> None:
        j = self.existing(job_id)
        allowed = s in self.schedulers or s in self.admins or (j.pid != 0 and self.pid(s) == j.pid)
        if not allowed:
            raise Revert("NotAllowedToPanic")
        self._panic(j)

    def _panic(self, j: MJob) -> None:
        if j.status.is_final:
            raise Revert("InvalidStatus")
        self.settle(j, S.PANICKED, 0)

    # -- providers -----------------------------------------------------------------------------------
    def claim(self, s: str, job_id: int, now: int) -> None:
        self._claim(s, job_id, self.pid(s))

    def _claim(self, s: str, job_id: int, pid: int) -> None:
        j = self.assigned(job_id, pid)
        if j.status is not S.META_SCHEDULED:
            raise Revert("InvalidStatus")
        if self.provs[s].status is not PS.APPROVED:
            raise Revert("ProviderNotApproved")
        j.status = S.SCHEDULED

    def refuse(self, s: str, job_id: int, now: int) -> None:
        self._refuse(s, job_id, self.pid(s))

    def _refuse(self, s: str, job_id: int, pid: int) -> None:
        j = self.assigned(job_id, pid)
        if j.status not in (S.META_SCHEDULED, S.SCHEDULED):
            raise Revert("InvalidStatus")
        self.back_to_pending(j, s)

    def start(self, s: str, job_id: int, now: int) -> None:
        self._start(job_id, self.pid(s), now)

    def _start(self, job_id: int, pid: int, now: int) -> None:
        j = self.assigned(job_id, pid)
        if j.status is not S.SCHEDULED:
            raise Revert("InvalidStatus")
        j.status, j.since = S.RUNNING, now

    def finish(self, s: str, job_id: int, code: int, now: int) -> None:
        self._finish(job_id, self.pid(s), code, now)

    def _finish(self, job_id: int, pid: int, code: int, now: int) -> None:
        j = self.assigned(job_id, pid)
        if j.status is not S.RUNNING:
            raise Revert("InvalidStatus")
        self.settle(j, S.FINISHED if code == 0 else S.FAILED, self.bill_so_far(j, now))

    def report_out_of_credits(self, s: str, job_id: int, now: int) -> None:
        self._ooc(self.existing(job_id), now)

    def _ooc(self, j: MJob, now: int) -> None:
        if j.status is not S.RUNNING:
            raise Revert("InvalidStatus")
        used = self.bill_so_far(j, now)
        if used < j.escrow:
            raise Revert("EscrowNotExhausted")
        self.settle(j, S.OUT_OF_CREDITS, used)

    def report(self, s: str, rows: Sequence[tuple[int, int, int]], now: int) -> None:
        pid = self.pid(s)
        for job_id, action, code in rows:
            a = ReportAction(action)
            if a is ReportAction.CLAIM:
                self._claim(s, job_id, pid)
            elif a is ReportAction.START:
                self._start(job_id, pid, now)
            elif a is ReportAction.FINISH:
                self._finish(job_id, pid, code, now)
            elif a is ReportAction.REFUSE:
                self._refuse(s, job_id, pid)
            elif a is ReportAction.OUT_OF_CREDITS:
                self._ooc(self.assigned(job_id, pid), now)
            else:
                self._panic(self.assigned(job_id, pid))

    def register(self, s: str, hw: tuple[int, int, int], prices: tuple[int, int, int], keys: Sequence[str],
                 values: Sequence[bytes], now: int) -> None:
        p = self.provs.get(s)
        if p is not None and p.status not in (PS.NONE, PS.REMOVED):
            raise Revert("ProviderAlreadyRegistered")
        if hw[0] == 0 or hw[2] == 0:
            raise Revert("InvalidHardware")
        if prices[0] == 0:
            raise Revert("ZeroCpuPrice")
        if p is None:
            self.provider_count += 1
            pid = self.provider_count
            self.at[pid] = s
        else:
            pid = p.id
        self.labels[s] = {}  # a new registration starts without labels (the contract's label epoch)
        self.provs[s] = MProv(PS.PENDING, False, pid, hw, hw, prices)
        if keys or values:
            self._set_labels(s, keys, values)

    def _set_labels(self, s: str, keys: Sequence[str], values: Sequence[bytes]) -> None:
        if len(keys) != len(values):
            raise Revert("LengthMismatch")
        if len(keys) > 32:
            raise Revert("TooManyLabels")
        mine = self.labels.setdefault(s, {})
        for k, v in zip(keys, values, strict=True):
            mine[key_of(k)] = v

    def update_hardware(self, s: str, hw: tuple[int, int, int], now: int) -> None:
        p = self.registered(s)
        if hw[0] == 0 or hw[2] == 0:
            raise Revert("InvalidHardware")
        used = tuple(t - f for t, f in zip(p.total, p.free, strict=True))
        if any(n < u for n, u in zip(hw, used, strict=True)):
            raise Revert("CapacityInUse")
        p.total = hw
        p.free = (hw[0] - used[0], hw[1] - used[1], hw[2] - used[2])

    def update_prices(self, s: str, prices: tuple[int, int, int], now: int) -> None:
        self.registered(s)
        if prices[0] == 0:
            raise Revert("ZeroCpuPrice")
        self.provs[s].prices = prices

    def set_labels(self, s: str, keys: Sequence[str], values: Sequence[bytes], now: int) -> None:
        self.registered(s)
        self._set_labels(s, keys, values)

    def set_paused(self, s: str, paused: bool, now: int) -> None:
        self.registered(s).paused = paused

    # -- admin -----------------------------------------------------------------------------------------
    def set_status(self, s: str, prov: str, status: ProviderStatus, now: int) -> None:
        if s not in self.admins:
            raise Revert("AccessControlUnauthorizedAccount")
        p = self.registered(prov)
        if status is PS.REMOVED and p.free != p.total:
            raise Revert("ProviderBusy")
        p.status = status

    def set_claim_timeout(self, s: str, seconds: int, now: int) -> None:
        if s not in self.admins:
            raise Revert("AccessControlUnauthorizedAccount")
        self.claim_timeout = seconds

    def mint(self, s: str, to: str, amount: int, now: int) -> None:
        if s not in self.minters:
            raise Revert("AccessControlUnauthorizedAccount")
        if self.supply + amount > MAX_SUPPLY:
            raise Revert("SupplyCapExceeded")
        self.supply += amount
        self.tokens[to] = self.tokens.get(to, 0) + amount


# ------------------------------------------------------------------------------------------ chain reads
@dataclass
class Reading:
    """The chain state the checks look at, read in one batch."""

    jobs: list[tuple[int, ...]]  # JobView words (addresses and hashes as ints)
    provs: dict[str, tuple[int, ...]]  # ProviderView words
    internal: dict[str, int]
    tokens: dict[str, int]  # accounts and the market
    supply: int
    block: int
    timestamp: int
    labels: dict[str, dict[bytes, bytes]] | None = None
    claim_timeout: int | None = None


def _words(hexdata: str) -> list[int]:
    raw = bytes.fromhex(hexdata[2:])
    return [int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]


def addr_of(word: int) -> str:
    return to_checksum_address(word.to_bytes(20, "big")) if word else ZERO


# ------------------------------------------------------------------------------------------ environment
@dataclass
class Env:
    """A deployed grid on its own Anvil, set up once; examples snapshot and revert it."""

    node: AnvilNode
    rpc: Rpc
    deployment: Deployment
    accounts: list[str]
    model0: Model
    reading0: Reading
    decoder: EventDecoder = field(default_factory=EventDecoder)

    @property
    def market(self) -> str:
        return self.deployment.market

    @property
    def token(self) -> str:
        return self.deployment.token

    def read_calls(self, with_labels: bool, with_timeout: bool) -> list[tuple[str, list[Any]]]:
        calls: list[tuple[str, list[Any]]] = [
            ("eth_call", [{"to": self.market, "data": calldata("getJobs", ["uint256", "uint256"], [1, 500])},
                          "latest"]),
            ("eth_call", [{"to": self.token, "data": calldata("totalSupply", [], [])}, "latest"]),
            ("eth_getBlockByNumber", ["latest", False]),
        ]
        for a in self.accounts:
            calls.append(("eth_call", [{"to": self.market, "data": calldata("getProvider", ["address"], [a])},
                                       "latest"]))
            calls.append(("eth_call", [{"to": self.market, "data": calldata("balanceOf", ["address"], [a])},
                                       "latest"]))
        for a in [*self.accounts, self.market]:
            calls.append(("eth_call", [{"to": self.token, "data": calldata("balanceOf", ["address"], [a])},
                                       "latest"]))
        if with_labels:
            for a in self.accounts:
                for k in LABEL_KEYS:
                    calls.append(("eth_call", [{"to": self.market, "data": calldata(
                        "labelOf", ["address", "bytes32"], [a, key_of(k)])}, "latest"]))
        if with_timeout:
            calls.append(("eth_call", [{"to": self.market, "data": calldata("claimTimeout", [], [])}, "latest"]))
        return calls

    def parse(self, results: list[Any], with_labels: bool, with_timeout: bool) -> Reading:
        w = _words(results[0])
        n = w[1]
        assert n < 500, "more jobs than one getJobs page: raise the page or shorten the examples"
        jobs = [tuple(w[2 + 14 * i : 2 + 14 * (i + 1)]) for i in range(n)]
        supply = int(results[1], 16)
        block, ts = int(results[2]["number"], 16), int(results[2]["timestamp"], 16)
        i = 3
        provs: dict[str, tuple[int, ...]] = {}
        internal: dict[str, int] = {}
        for a in self.accounts:
            provs[a] = tuple(_words(results[i]))
            internal[a] = int(results[i + 1], 16)
            i += 2
        tokens: dict[str, int] = {}
        for a in [*self.accounts, self.market]:
            tokens[a] = int(results[i], 16)
            i += 1
        labels = None
        if with_labels:
            labels = {}
            for a in self.accounts:
                labels[a] = {}
                for k in LABEL_KEYS:
                    v = bytes.fromhex(results[i][2:])
                    if v != W_ZERO:
                        labels[a][key_of(k)] = v
                    i += 1
        timeout = int(results[i], 16) if with_timeout else None
        return Reading(jobs, provs, internal, tokens, supply, block, ts, labels, timeout)

    def read(self, extra: Sequence[tuple[str, list[Any]]] = (), *, with_labels: bool = False,
             with_timeout: bool = False) -> tuple[list[Any], Reading]:
        """``extra`` calls (e.g. the step's receipt) then the state, in one batch."""
        calls = [*extra, *self.read_calls(with_labels, with_timeout)]
        results = self.rpc.batch(calls)
        k = len(extra)
        return results[:k], self.parse(results[k:], with_labels, with_timeout)


def setup_env(node: AnvilNode) -> Env:
    keys = dev_keys(N_ACCOUNTS)
    chain = Chain(node.rpc_url)
    admin = chain.wallet(keys[0])
    dep = deploy(admin, claim_timeout=300)
    rpc = Rpc(node.rpc_url)
    accounts = [chain.wallet(k).address for k in keys]
    market, token = dep.market, dep.token

    def send(i: int, to: str, data: str) -> None:
        assert int(rpc.send(accounts[i], to, data)["status"], 16) == 1

    model = Model(market, frozenset({accounts[ADMIN]}), frozenset({accounts[SCHEDULER]}),
                  frozenset({accounts[ADMIN]}), 300)
    role = keccak(text="SCHEDULER_ROLE")
    send(ADMIN, market, calldata("grantRole", ["bytes32", "address"], [role, accounts[SCHEDULER]]))
    mints = {**{o: 10**9 for o in OWNERS}, STRANGER: 50_000}
    for i, amount in mints.items():
        send(ADMIN, token, calldata("mint", ["address", "uint256"], [accounts[i], amount]))
        model.mint(accounts[ADMIN], accounts[i], amount, 0)
    for i in range(N_ACCOUNTS):  # everyone lets the market take tokens: payments fail on balance only
        send(i, token, calldata("approve", ["address", "uint256"], [market, 2**256 - 1]))
    setups = {
        5: ((8, 0, 16_384), (1_000, 0, 100), ["zone"], [text("eu")]),
        6: ((16, 2, 65_536), (2_000, 50_000, 100), ["gpu.model", "gpu.mem", "zone"],
            [text("A100"), number(80), text("us")]),
        7: ((2, 0, 2_048), (500, 0, 0), [], []),
        8: ((4, 0, 8_192), (1_000, 0, 100), [], []),
    }
    for i, (hw, prices, lkeys, lvalues) in setups.items():
        send(i, market, calldata("registerProvider", [HW, PRICES, "string[]", "bytes32[]"],
                                 [hw, prices, lkeys, lvalues]))
        model.register(accounts[i], hw, prices, lkeys, lvalues, 0)
    for i in (5, 6, 7):
        send(ADMIN, market, calldata("approveProvider", ["address"], [accounts[i]]))
        model.set_status(accounts[ADMIN], accounts[i], PS.APPROVED, 0)
    env = Env(node, rpc, dep, accounts, model, None)  # type: ignore[arg-type]
    _, env.reading0 = env.read(with_labels=True, with_timeout=True)
    return env


# ------------------------------------------------------------------------------------------ checks
_ALLOWED_SETTLE_FROM = {
    S.FINISHED: {S.RUNNING}, S.FAILED: {S.RUNNING}, S.OUT_OF_CREDITS: {S.RUNNING},
    S.CANCELED: {S.PENDING, S.META_SCHEDULED, S.SCHEDULED, S.RUNNING},
    S.PANICKED: {S.PENDING, S.META_SCHEDULED, S.SCHEDULED, S.RUNNING},
}
#: JobView word positions
J_ID, J_OWNER, J_STATUS, J_PROVIDER, J_ESCROW, J_RATE, J_SINCE, J_MAXRATE, J_CPUS, J_GPUS, J_MEM, J_WF, J_LH, J_HEAD = \
    range(14)


def check_invariants(env: Env, prev: Reading, cur: Reading, model: Model) -> None:
    """Properties of the chain state alone (independent of the model), then equality with the model."""
    escrows = sum(j[J_ESCROW] for j in cur.jobs)
    held = cur.tokens[env.market]
    internal = sum(cur.internal.values())
    assert held == escrows + internal, f"conservation broken: market holds {held}, escrows {escrows} + " \
                                       f"internal balances {internal}"
    assert cur.supply == sum(cur.tokens.values()), "total supply != sum of every holder's tokens"
    assert cur.supply == model.supply, f"total supply {cur.supply} changed without a mint (expected {model.supply})"
    for j in cur.jobs:
        if S(j[J_STATUS]).is_final:
            assert j[J_ESCROW] == 0, f"final job {j[J_ID]} still holds escrow {j[J_ESCROW]}"
    # capacity
    used: dict[str, list[int]] = {}
    for j in cur.jobs:
        if S(j[J_STATUS]).holds_capacity:
            u = used.setdefault(addr_of(j[J_PROVIDER]), [0, 0, 0])
            u[0] += j[J_CPUS]
            u[1] += j[J_GPUS]
            u[2] += j[J_MEM]
    for a, p in cur.provs.items():
        total, free = p[4:7], p[7:10]
        u = used.pop(a, [0, 0, 0])
        for t, f, x, what in zip(total, free, u, ("cpus", "gpus", "memMB"), strict=True):
            assert 0 <= f <= t, f"provider {a}: free {what} {f} outside 0..{t}"
            assert f == t - x, f"provider {a}: free {what} {f} != declared {t} - held by its jobs {x}"
    assert not used, f"jobs hold capacity on unknown providers: {used}"
    # final statuses never change
    for old, new in zip(prev.jobs, cur.jobs, strict=False):
        if S(old[J_STATUS]).is_final:
            assert new == old, f"final job {old[J_ID]} changed: {old} -> {new}"
    assert len(cur.jobs) >= len(prev.jobs), "jobs disappeared"
    compare_with_model(env, cur, model)


def compare_with_model(env: Env, cur: Reading, model: Model) -> None:
    assert len(cur.jobs) == len(model.jobs), f"{len(cur.jobs)} jobs on chain, model has {len(model.jobs)}"
    for j in cur.jobs:
        m = model.jobs[j[J_ID]]
        provider = model.at.get(m.pid, ZERO) if m.pid else ZERO
        expected = (j[J_ID], int(m.owner, 16), int(m.status), int(provider, 16), m.escrow, m.rate, m.since,
                    m.max_rate, m.cpus, m.gpus, m.mem, int.from_bytes(m.wf_hash, "big"), j[J_LH], m.head)
        assert j == expected, f"job {j[J_ID]}: chain {j} != model {expected}"
        if m.labels:
            assert j[J_LH] == int.from_bytes(keccak(encode([LABEL + "[]"], [list(m.labels)])), "big")
        else:
            assert j[J_LH] == 0
    for a, p in cur.provs.items():
        mp = model.provs.get(a)
        if mp is None:
            assert p[1:] == (0,) * 12, f"{a} is a provider on chain, not in the model: {p}"
            continue
        expected = (int(a, 16), mp.id, int(mp.status), int(mp.paused), *mp.total, *mp.free, *mp.prices)
        assert p == expected, f"provider {a}: chain {p} != model {expected}"
    for a, v in cur.internal.items():
        assert v == model.internal.get(a, 0), f"internal balance of {a}: chain {v} != model {model.internal.get(a, 0)}"
    for a, v in cur.tokens.items():
        assert v == model.tokens.get(a, 0), f"tokens of {a}: chain {v} != model {model.tokens.get(a, 0)}"
    if cur.labels is not None:
        for a, labels in cur.labels.items():
            want = {k: v for k, v in model.labels.get(a, {}).items() if v != W_ZERO and k in _KEYS}
            assert labels == want, f"labels of {a} in block {cur.block}: chain {labels} != model {want} " \
                                   f"(provider on chain: {cur.provs[a]})"
    if cur.claim_timeout is not None:
        assert cur.claim_timeout == model.claim_timeout


_KEYS = {key_of(k) for k in LABEL_KEYS}


def check_events(env: Env, prev: Reading, cur: Reading, receipt: dict[str, Any], sender: str, model: Model) -> None:
    """Every status change in the receipt's events is an allowed transition, by an allowed caller; no bill
    exceeds the escrow; the statuses after the events are the ones read from the chain."""
    status = {j[J_ID]: S(j[J_STATUS]) for j in prev.jobs}
    escrow = {j[J_ID]: j[J_ESCROW] for j in prev.jobs}
    owner = {j[J_ID]: addr_of(j[J_OWNER]) for j in prev.jobs}
    provider = {j[J_ID]: addr_of(j[J_PROVIDER]) for j in prev.jobs}
    for raw in receipt["logs"]:
        if raw["address"].lower() != env.market.lower():
            continue
        ev = env.decoder.decode({
            "address": raw["address"], "topics": raw["topics"], "data": raw["data"],
            "blockNumber": int(raw["blockNumber"], 16), "blockHash": raw["blockHash"],
            "transactionHash": raw["transactionHash"], "transactionIndex": int(raw["transactionIndex"], 16),
            "logIndex": int(raw["logIndex"], 16),
        })
        if isinstance(ev, Undecodable):
            raise AssertionError(f"the market emitted a log the SDK cannot decode: {ev.reason}")
        a = abi_args(ev)
        if ev.name == "JobSubmitted":
            first, count = int(a["firstJobId"]), int(a["count"])
            assert a["workflowHash"] == keccak(a["workflow"]), "JobSubmitted carries a hash of other bytes"
            for jid in range(first, first + count):
                assert jid not in status, f"job {jid} submitted twice"
                status[jid], escrow[jid], owner[jid] = S.PENDING, int(a["request"]["credits"]), a["owner"]
                provider[jid] = ZERO
            continue
        if "jobId" not in a:
            continue  # provider, withdrawal and configuration events
        jid = int(a["jobId"])
        old = status[jid]
        if ev.name == "JobAssigned":
            assert old is S.PENDING, f"job {jid}: assigned from {old.name}"
            assert sender in model.schedulers, f"job {jid} assigned by {sender}, not the scheduler"
            status[jid], provider[jid] = S.META_SCHEDULED, a["provider"]
        elif ev.name == "JobStatusChanged":
            new = S(a["status"])
            assert (old, new) in {(S.META_SCHEDULED, S.SCHEDULED), (S.SCHEDULED, S.RUNNING)}, \
                f"job {jid}: {old.name} -> {new.name}"
            assert sender == provider[jid] == a["provider"], f"job {jid}: {new.name} reported by {sender}"
            status[jid] = new
        elif ev.name == "JobReleased":
            reason = ReleaseReason(a["reason"])
            allowed_from = {S.META_SCHEDULED} if reason is ReleaseReason.CLAIM_TIMEOUT else \
                {S.META_SCHEDULED, S.SCHEDULED}
            assert old in allowed_from, f"job {jid}: released ({reason.name}) from {old.name}"
            assert a["provider"] == provider[jid]
            if reason is ReleaseReason.REFUSED:
                assert sender == provider[jid], f"job {jid}: refused by {sender}, not its provider"
            status[jid], provider[jid] = S.PENDING, ZERO
        elif ev.name == "JobSettled":
            new = S(a["status"])
            assert old in _ALLOWED_SETTLE_FROM[new], f"job {jid}: {old.name} -> {new.name}"
            billed, refunded = int(a["billed"]), int(a["refunded"])
            assert billed <= escrow[jid], f"job {jid} billed {billed} above its escrow {escrow[jid]}"
            assert billed + refunded == escrow[jid], f"job {jid}: billed {billed} + refunded {refunded} != " \
                                                     f"escrow {escrow[jid]}"
            if new in (S.FINISHED, S.FAILED):
                assert sender == provider[jid], f"job {jid}: {new.name} reported by {sender}"
            elif new is S.CANCELED:
                assert sender == owner[jid], f"job {jid} cancelled by {sender}, not its owner"
            elif new is S.PANICKED:
                assert billed == 0, f"panicked job {jid} billed {billed}"
                assert sender in model.schedulers | model.admins or sender == provider[jid], \
                    f"job {jid} panicked by {sender}"
            elif new is S.OUT_OF_CREDITS:
                assert refunded == 0, f"out-of-credits job {jid} refunded {refunded}"
            if old is S.PENDING:
                assert billed == 0 and a["provider"] == ZERO
            else:
                assert a["provider"] == provider[jid]
            status[jid], escrow[jid] = new, 0
            GridMachine.settled[new] += 1
        elif ev.name == "JobToppedUp":
            assert not old.is_final, f"final job {jid} topped up"
            escrow[jid] = int(a["escrow"])
    after = {j[J_ID]: S(j[J_STATUS]) for j in cur.jobs}
    assert status == after, "the statuses after the step's events differ from the chain's"


# ------------------------------------------------------------------------------------------ the machine
#: None: the actor the design expects for the call; else any account (most of those calls must revert).
ACTOR = st.sampled_from([None] * 10 + list(range(N_ACCOUNTS)))
#: A choice among the current jobs/providers, scrambled by :meth:`GridMachine.r` with a per-example step counter,
#: because hypothesis mostly draws boundary values (0, 2**k - 1) that would otherwise always take the same branch.
PICK = st.integers(0, 2**20)


def mix(x: int) -> int:
    """A 32-bit hash of ``x`` (the high half of a 64-bit multiplicative hash)."""
    return ((x * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & (2**64 - 1)) >> 32

#: Values the rules choose from with GridMachine.choose (uniformly: hypothesis' own draws favour a few values
#: per run, which left some checks unexercised in some CI runs).
RESOURCES = ((1, 0, 256), (1, 0, 256), (2, 0, 1_024), (4, 0, 4_096), (1, 1, 2_048), (8, 2, 16_384), (16, 0, 1_024))
CREDITS = (1, 500, 5_000, 50_000, 50_000, 1_000_000, 100_000_000)
MAX_RATE = (1_000_000, 1_000_000, 1_000_000, 3_000, 2**56 - 1, 1)
COUNT = (1, 1, 1, 1, 2, 3)
#: What a submission may get wrong (one in four submissions gets one of these, chosen by GridMachine.r).
BAD_SUBMIT = ("cpus", "mem", "max_rate", "credits", "empty", "huge", "count0", "count_big", "labels17")
HARDWARE = ((8, 0, 16_384), (4, 0, 4_096), (16, 2, 65_536), (2, 0, 2_048), (1, 0, 256), (0, 0, 1), (64, 8, 262_144))
PRICE = ((1_000, 0, 100), (500, 0, 0), (3_000, 10_000, 50), (1, 1, 1), (0, 0, 0))
JUMP = st.sampled_from([1, 10, 59, 61, 120, 299, 301, 600, 3_600, 86_400])


class GridMachine(RuleBasedStateMachine):
    """Random actions by random actors; the checks run after every step (see the module docstring)."""

    env: ClassVar[Env]
    examples: ClassVar[int] = 0
    steps: ClassVar[int] = 0
    reverted: ClassVar[int] = 0
    outcomes: ClassVar[Counter[tuple[str, str]]] = Counter()
    settled: ClassVar[Counter[JobStatus]] = Counter()
    #: Examples in which at least one job reached a final status (the deep checks ran).
    settling: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        self.settled_before = sum(type(self).settled.values())
        self.e = type(self).env
        self.snapshot = self.e.rpc.call("evm_snapshot", [])
        self.model = self.e.model0.clone()
        self.prev = self.e.reading0
        self.draws = 0
        type(self).examples += 1

    def choose(self, pick: int, options: Sequence[Any]) -> Any:
        return options[self.r(pick) % len(options)]

    def r(self, pick: int) -> int:
        """A pseudo-random choice from ``pick`` and how many choices this example made before (reproducible)."""
        self.draws += 1
        return mix(pick * 1_000_003 + self.draws)

    def teardown(self) -> None:
        if sum(type(self).settled.values()) > self.settled_before:
            type(self).settling += 1
        assert self.e.rpc.call("evm_revert", [self.snapshot]), "evm_revert refused"

    # -- plumbing ----------------------------------------------------------------------------------
    def acct(self, i: int) -> str:
        return self.e.accounts[i]

    def actor(self, who: int | None, natural: str) -> str:
        return natural if who is None else self.acct(who)

    def job(self, pick: int, statuses: Sequence[JobStatus] = ()) -> int:
        """Mostly a job in one of ``statuses`` (small picks, which hypothesis favours, choose those), else any
        job, sometimes one that does not exist."""
        jobs = self.model.jobs
        pick = self.r(pick)
        if not jobs or pick % 16 == 15:
            return self.model.next_id  # does not exist
        if statuses and pick % 8 < 6:
            found = [i for i, j in jobs.items() if j.status in statuses]
            if found:
                return found[-1 - (pick // 8) % len(found)]  # the newest first
        return 1 + (pick // 8) % len(jobs)

    def provider_addr(self, pick: int) -> str:
        """A provider account mostly, sometimes one that is not (an owner, the admin)."""
        pool = [*PROVIDERS, STRANGER, OWNERS[0], ADMIN]
        return self.acct(pool[self.r(pick) % len(pool)])

    def holder(self, job_id: int, pick: int) -> str:
        """The job's assigned provider if any, else some provider."""
        j = self.model.jobs.get(job_id)
        if j is not None and j.pid:
            return self.model.at[j.pid]
        return self.provider_addr(pick)

    def step(self, sender: str, to: str, data: str, predict: Callable[[Model, int], None], *,
             with_labels: bool = False, with_timeout: bool = False) -> None:
        """Sends one transaction, predicts it with the model at the block's timestamp, checks everything."""
        receipt = self.e.rpc.send(sender, to, data)
        tx = receipt["transactionHash"]
        _, cur = self.e.read(with_labels=with_labels, with_timeout=with_timeout)
        block = int(receipt["blockNumber"], 16)
        assert block == self.prev.block + 1 and cur.block == block, \
            f"the chain moved under the test (blocks {self.prev.block} -> {block} -> {cur.block}): is another " \
            "process using this node?"
        now = cur.timestamp
        model = self.model.clone()
        expected: str | None = None
        try:
            predict(model, now)
        except Revert as r:
            expected = r.name
        ok = int(receipt["status"], 16) == 1
        actual = None if ok else revert_name(self.e.rpc.revert_data(tx))
        type(self).steps += 1
        type(self).outcomes[(SELECTOR_NAMES.get(data[:10], data[:10]), actual or "ok")] += 1
        assert actual == expected, f"{NAMES.get(self.e.accounts.index(sender))} call: chain says " \
                                   f"{actual or 'success'}, model says {expected or 'success'}"
        if not ok:
            type(self).reverted += 1
            assert receipt["logs"] == [], "a reverted call emitted events"
            p = self.prev  # labels and the claim timeout are compared with the (unchanged) model below
            assert (cur.jobs, cur.provs, cur.internal, cur.tokens, cur.supply) == \
                (p.jobs, p.provs, p.internal, p.tokens, p.supply), "a reverted call changed state"
        else:
            self.model = model
        check_events(self.e, self.prev, cur, receipt, sender, self.model)
        check_invariants(self.e, self.prev, cur, self.model)
        self.prev = cur

    # -- owners ------------------------------------------------------------------------------------
    @rule(who=ACTOR, pick=PICK)
    def submit(self, who: int | None, pick: int, res: tuple[int, int, int] | None = None, credits: int = 0,
               max_rate: int = 0, count: int = 0, labels: tuple[Any, ...] = (), bad: str | None = "draw") -> None:
        s = self.actor(who, self.acct(OWNERS[self.r(pick) % 3]))
        if res is None:  # a rule call: everything drawn here (the lifecycle driver passes its own values)
            res, credits = self.choose(pick, RESOURCES), self.choose(pick, CREDITS)
            max_rate, count = self.choose(pick, MAX_RATE), self.choose(pick, COUNT)
            labels = self.choose(pick, CONSTRAINT_SETS[:-1])
        if bad == "draw":
            k = self.r(pick) % (4 * len(BAD_SUBMIT))
            bad = BAD_SUBMIT[k] if k < len(BAD_SUBMIT) else None
        wf = b'{"job":%d}' % pick
        cpus, gpus, mem = res
        if bad == "cpus":
            cpus = 0
        elif bad == "mem":
            mem = 0
        elif bad == "max_rate":
            max_rate = 0
        elif bad == "credits":
            credits = 0
        elif bad == "empty":
            wf = b""
        elif bad == "huge":
            wf = b"x" * 16_385
        elif bad == "count0":
            count = 0
        elif bad == "count_big":
            count = MAX_ARRAY_JOBS + 1
        elif bad == "labels17":
            labels = CONSTRAINT_SETS[-1]
        req = (cpus, gpus, mem, max_rate, credits)
        data = calldata("submit", [REQ, LABEL + "[]", "bytes", "uint256"], [req, list(labels), wf, count])
        self.step(s, self.e.market, data, lambda m, t: m.submit(s, req, labels, wf, count, t))

    @rule(who=ACTOR, pick=PICK, amount=st.sampled_from([1_000, 100_000, 100_000, 10**8, 1, U64, 0]))
    def top_up(self, who: int | None, pick: int, amount: int) -> None:
        jid = self.job(pick, [S.PENDING, S.META_SCHEDULED, S.SCHEDULED, S.RUNNING])
        j = self.model.jobs.get(jid)
        s = self.actor(who, j.owner if j else self.acct(OWNERS[0]))
        data = calldata("topUp", ["uint256", "uint64"], [jid, amount])
        self.step(s, self.e.market, data, lambda m, t: m.top_up(s, jid, amount, t))

    @rule(who=ACTOR, pick=PICK)
    def cancel(self, who: int | None, pick: int) -> None:
        jid = self.job(pick, [S.PENDING, S.META_SCHEDULED, S.SCHEDULED, S.RUNNING])
        j = self.model.jobs.get(jid)
        s = self.actor(who, j.owner if j else self.acct(OWNERS[1]))
        self.step(s, self.e.market, calldata("cancel", ["uint256"], [jid]), lambda m, t: m.cancel(s, jid, t))

    @rule(who=ACTOR, pick=PICK)
    def withdraw(self, who: int | None, pick: int) -> None:
        rich = [a for a, v in self.model.internal.items() if v]
        s = self.actor(who, rich[self.r(pick) % len(rich)] if rich else self.acct(self.r(pick) % N_ACCOUNTS))
        self.step(s, self.e.market, calldata("withdraw", [], []), lambda m, t: m.withdraw(s, t))

    def _advance(self, pick: int) -> None:
        """The next step of a live job's lifecycle, by the actor the design expects."""
        live = [i for i, j in self.model.jobs.items() if not j.status.is_final]
        if not live:
            return self.submit(None, pick, (1, 0, 256), 50_000, 1_000_000, 1, (), None)
        jid = live[-1 - self.r(pick) % len(live)]
        j = self.model.jobs[jid]
        market = self.e.market
        if j.status is S.PENDING:
            prov = next((a for a in self.e.accounts if self.model.fits(j, a)), None)
            if prov is None:  # nobody can take it: the owner gives up, or the scheduler tries a near miss
                return self.cancel(None, pick) if self.r(pick) % 3 == 0 else self.assign_near_miss(pick)
            data = calldata("assign", ["uint256", "address", LABEL + "[]"], [jid, prov, list(j.labels)])
            s = self.acct(SCHEDULER)
            return self.step(s, market, data, lambda m, t: m.assign(s, jid, prov, j.labels, t))
        p = self.model.at[j.pid]
        how = self.r(pick) % 6
        elapsed = max(0, self.prev.timestamp - j.since)
        if j.status is S.META_SCHEDULED:
            if how == 0:  # the provider never claims: the claim window passes and the scheduler takes it back
                self.e.rpc.call("evm_increaseTime", [max(1, self.model.claim_timeout - elapsed + 1)])
                s = self.acct(SCHEDULER)
                return self.step(s, market, calldata("timeoutClaim", ["uint256"], [jid]),
                                 lambda m, t: m.timeout_claim(s, jid, t))
            return self.step(p, market, calldata("claim", ["uint256"], [jid]), lambda m, t: m.claim(p, jid, t))
        if j.status is S.SCHEDULED:
            return self.step(p, market, calldata("start", ["uint256"], [jid]), lambda m, t: m.start(p, jid, t))
        if how == 0:  # the job runs until its escrow is used up; anyone may then end it
            self.e.rpc.call("evm_increaseTime", [max(1, -(-j.escrow * 60 // j.rate) - elapsed + 1)])
        if how == 2 and self.model.bill_so_far(j, self.prev.timestamp) < j.escrow:  # a griefer ends it early
            s = self.acct(STRANGER)
            return self.step(s, market, calldata("reportOutOfCredits", ["uint256"], [jid]),
                             lambda m, t: m.report_out_of_credits(s, jid, t))
        if how == 0 or self.model.bill_so_far(j, self.prev.timestamp) >= j.escrow:
            s = self.acct(STRANGER)
            return self.step(s, market, calldata("reportOutOfCredits", ["uint256"], [jid]),
                             lambda m, t: m.report_out_of_credits(s, jid, t))
        if how == 1:
            self.e.rpc.call("evm_increaseTime", [60 + self.r(pick) % 600])
        code = [0, 0, 3][self.r(pick) % 3]
        return self.step(p, market, calldata("finish", ["uint256", "int32"], [jid, code]),
                         lambda m, t: m.finish(p, jid, code, t))

    @rule(pick=PICK)
    def advance(self, pick: int) -> None:
        self._advance(pick)

    @rule(pick=PICK)
    def advance_more(self, pick: int) -> None:
        self._advance(pick)

    # -- scheduler -----------------------------------------------------------------------------------
    def _assignment(self, pick: int, wrong_labels: bool) -> tuple[int, str, tuple[Any, ...]]:
        jid = self.job(pick, [S.PENDING])
        pick = self.r(pick + 1)
        j = self.model.jobs.get(jid)
        if pick % 5 < 3 and j is not None:  # mostly a provider that passes every check
            fits = [a for a in self.e.accounts if self.model.fits(j, a)]
            prov = fits[(pick // 5) % len(fits)] if fits else self.provider_addr(pick // 5)
        elif pick % 5 == 3 and j is not None:  # else one that fails exactly one check: paused, banned, full, ...
            near = [a for a in self.e.accounts if self.model.fails_once(j, a)]
            prov = near[(pick // 5) % len(near)] if near else self.provider_addr(pick // 5)
        else:
            prov = self.provider_addr(pick // 5)
        labels = j.labels if j is not None else ()
        if wrong_labels:
            labels = CONSTRAINT_SETS[(pick // 7) % len(CONSTRAINT_SETS)]
        return jid, prov, labels

    @rule(pick=PICK)
    def assign_near_miss(self, pick: int) -> None:
        """The scheduler assigns a pending job to a provider that fails exactly one check (paused, banned, full,
        a label, the price cap); when there is none, a provider that fits pauses (so there is one next time)."""
        pending = [i for i, j in self.model.jobs.items() if j.status is S.PENDING]
        if not pending:
            return
        jid = pending[self.r(pick) % len(pending)]
        j = self.model.jobs[jid]
        near: dict[str, list[str]] = {}
        for a in self.e.accounts:
            check = self.model.fails_once(j, a)
            if check:
                near.setdefault(check, []).append(a)
        fits = [a for a in self.e.accounts if self.model.fits(j, a)]
        if near and (fits == [] or "ProviderIsPaused" in near or self.r(pick) % 3):
            pool = near[self.choose(pick, sorted(near))]  # each kind of near miss equally often
            prov, s = self.choose(pick, pool), self.acct(SCHEDULER)
            data = calldata("assign", ["uint256", "address", LABEL + "[]"], [jid, prov, list(j.labels)])
            return self.step(s, self.e.market, data, lambda m, t: m.assign(s, jid, prov, j.labels, t))
        if fits:  # make a near miss for next time: a provider that fits pauses
            p = self.choose(pick, fits)
            self.step(p, self.e.market, calldata("pause", [], []), lambda m, t: m.set_paused(p, True, t))
        return None

    @rule(who=ACTOR, pick=PICK, wrong_labels=st.sampled_from([False] * 7 + [True]))
    def assign(self, who: int | None, pick: int, wrong_labels: bool) -> None:
        jid, prov, labels = self._assignment(pick, wrong_labels or self.r(pick) % 8 == 0)
        s = self.actor(who, self.acct(SCHEDULER))
        data = calldata("assign", ["uint256", "address", LABEL + "[]"], [jid, prov, list(labels)])
        self.step(s, self.e.market, data, lambda m, t: m.assign(s, jid, prov, labels, t))

    @rule(who=ACTOR, picks=st.lists(PICK, min_size=1, max_size=4), wrong=st.sampled_from([False] * 6 + [True]),
          mismatch=st.sampled_from([False] * 9 + [True]))
    def assign_batch(self, who: int | None, picks: list[int], wrong: bool, mismatch: bool) -> None:
        if self.r(picks[0]) % 4:  # mostly what a scheduler sends: distinct pending jobs, each on a provider that fits
            sim = self.model.clone()
            rows = []
            pending = [i for i, j in sim.jobs.items() if j.status is S.PENDING]
            for p in picks:
                if not pending:
                    break
                jid = pending.pop(self.r(p) % len(pending))
                fits = [a for a in self.e.accounts if sim.fits(sim.jobs[jid], a)]
                if fits:
                    prov = fits[self.r(p + 1) % len(fits)]
                    rows.append((jid, prov, sim.jobs[jid].labels))
                    sim._assign(jid, prov, sim.jobs[jid].labels, self.prev.timestamp)
            if not rows:
                rows = [self._assignment(picks[0], False)]
            if wrong:
                rows.append(self._assignment(picks[-1], True))
        else:
            rows = [self._assignment(p, wrong and i == 0) for i, p in enumerate(picks)]
        s = self.actor(who, self.acct(SCHEDULER))
        provs = [r[1] for r in rows] + ([self.acct(5)] if mismatch else [])
        data = calldata("assignBatch", ["uint256[]", "address[]", LABEL + "[][]"],
                        [[r[0] for r in rows], provs, [list(r[2]) for r in rows]])
        self.step(s, self.e.market, data, lambda m, t: m.assign_batch(s, rows, t, len(provs)))

    @rule(who=ACTOR, pick=PICK)
    def timeout_claim(self, who: int | None, pick: int) -> None:
        jid = self.job(pick, [S.META_SCHEDULED])
        s = self.actor(who, self.acct(SCHEDULER))
        self.step(s, self.e.market, calldata("timeoutClaim", ["uint256"], [jid]),
                  lambda m, t: m.timeout_claim(s, jid, t))

    @rule(who=ACTOR, pick=PICK)
    def panic(self, who: int | None, pick: int) -> None:
        jid = self.job(pick, [S.PENDING, S.META_SCHEDULED, S.SCHEDULED, S.RUNNING])
        natural = [self.acct(SCHEDULER), self.acct(ADMIN), self.holder(jid, pick)][self.r(pick) % 3]
        s = self.actor(who, natural)
        self.step(s, self.e.market, calldata("panic", ["uint256"], [jid]), lambda m, t: m.panic(s, jid, t))

    # -- providers -----------------------------------------------------------------------------------
    @rule(who=ACTOR, pick=PICK)
    def claim(self, who: int | None, pick: int) -> None:
        jid = self.job(pick, [S.META_SCHEDULED])
        s = self.actor(who, self.holder(jid, pick))
        self.step(s, self.e.market, calldata("claim", ["uint256"], [jid]), lambda m, t: m.claim(s, jid, t))

    @rule(who=ACTOR, pick=PICK)
    def refuse(self, who: int | None, pick: int) -> None:
        jid = self.job(pick, [S.META_SCHEDULED, S.SCHEDULED])
        s = self.actor(who, self.holder(jid, pick))
        self.step(s, self.e.market, calldata("refuse", ["uint256"], [jid]), lambda m, t: m.refuse(s, jid, t))

    @rule(who=ACTOR, pick=PICK)
    def start(self, who: int | None, pick: int) -> None:
        jid = self.job(pick, [S.SCHEDULED])
        s = self.actor(who, self.holder(jid, pick))
        self.step(s, self.e.market, calldata("start", ["uint256"], [jid]), lambda m, t: m.start(s, jid, t))

    @rule(who=ACTOR, pick=PICK, code=st.sampled_from([0, 0, 1, 137, -1]))
    def finish(self, who: int | None, pick: int, code: int) -> None:
        jid = self.job(pick, [S.RUNNING])
        s = self.actor(who, self.holder(jid, pick))
        self.step(s, self.e.market, calldata("finish", ["uint256", "int32"], [jid, code]),
                  lambda m, t: m.finish(s, jid, code, t))

    @rule(who=ACTOR, pick=PICK)
    def report_out_of_credits(self, who: int | None, pick: int) -> None:
        jid = self.job(pick, [S.RUNNING])
        s = self.actor(who, self.holder(jid, pick))
        self.step(s, self.e.market, calldata("reportOutOfCredits", ["uint256"], [jid]),
                  lambda m, t: m.report_out_of_credits(s, jid, t))

    @rule(who=ACTOR, pick=PICK, entries=st.lists(st.tuples(PICK, st.sampled_from(list(ReportAction)),
                                                           st.sampled_from([0, 0, 2])), max_size=3))
    def report(self, who: int | None, pick: int, entries: list[tuple[int, ReportAction, int]]) -> None:
        wanted = {ReportAction.CLAIM: [S.META_SCHEDULED], ReportAction.REFUSE: [S.META_SCHEDULED, S.SCHEDULED],
                  ReportAction.START: [S.SCHEDULED], ReportAction.FINISH: [S.RUNNING],
                  ReportAction.OUT_OF_CREDITS: [S.RUNNING], ReportAction.PANIC: [S.SCHEDULED, S.RUNNING]}
        rows = [(self.job(p, wanted[a]), int(a), c) for p, a, c in entries]
        s = self.actor(who, self.holder(rows[0][0], pick) if rows else self.provider_addr(pick))
        self.step(s, self.e.market, calldata("report", [REPORT + "[]"], [rows]), lambda m, t: m.report(s, rows, t))

    @rule(who=ACTOR, pick=PICK, with_labels=st.booleans())
    def register(self, who: int | None, pick: int, with_labels: bool) -> None:
        hw, prices = self.choose(pick, HARDWARE), self.choose(pick, PRICE)
        free = [a for a in (self.acct(i) for i in (*PROVIDERS, STRANGER))
                if self.model.provs.get(a) is None or self.model.provs[a].status is PS.REMOVED]
        anyone = self.acct([*PROVIDERS, STRANGER][self.r(pick) % 5])
        s = self.actor(who, free[self.r(pick) % len(free)] if free and self.r(pick) % 4 != 3 else anyone)
        keys, values = (["zone"], [text("eu")]) if with_labels else ([], [])
        data = calldata("registerProvider", [HW, PRICES, "string[]", "bytes32[]"], [hw, prices, keys, values])
        self.step(s, self.e.market, data, lambda m, t: m.register(s, hw, prices, keys, values, t), with_labels=True)

    @rule(who=ACTOR, pick=PICK)
    def update_hardware(self, who: int | None, pick: int) -> None:
        hw = self.choose(pick, HARDWARE)
        s = self.actor(who, self.provider_addr(pick))
        self.step(s, self.e.market, calldata("updateHardware", [HW], [hw]),
                  lambda m, t: m.update_hardware(s, hw, t))

    @rule(who=ACTOR, pick=PICK)
    def update_prices(self, who: int | None, pick: int) -> None:
        prices = self.choose(pick, PRICE)
        s = self.actor(who, self.provider_addr(pick))
        self.step(s, self.e.market, calldata("updatePrices", [PRICES], [prices]),
                  lambda m, t: m.update_prices(s, prices, t))

    @rule(who=ACTOR, pick=PICK, pairs=st.lists(st.tuples(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES)),
                                               max_size=3), shape=st.sampled_from(["ok"] * 8 + ["mismatch", "many"]))
    def set_labels(self, who: int | None, pick: int, pairs: list[tuple[str, bytes]], shape: str) -> None:
        s = self.actor(who, self.provider_addr(pick))
        keys, values = [k for k, _ in pairs], [v for _, v in pairs]
        if shape == "mismatch":
            values.append(W_ZERO)
        elif shape == "many":
            keys, values = [f"k{i}" for i in range(33)], [text("v")] * 33
        data = calldata("setLabels", ["string[]", "bytes32[]"], [keys, values])
        self.step(s, self.e.market, data, lambda m, t: m.set_labels(s, keys, values, t), with_labels=True)

    @rule(who=ACTOR, pick=PICK, paused=st.booleans())
    def pause_or_resume(self, who: int | None, pick: int, paused: bool) -> None:
        s = self.actor(who, self.provider_addr(pick))
        self.step(s, self.e.market, calldata("pause" if paused else "resume", [], []),
                  lambda m, t: m.set_paused(s, paused, t))

    # -- admin ---------------------------------------------------------------------------------------
    @rule(who=ACTOR, pick=PICK, status=st.sampled_from([PS.APPROVED, PS.APPROVED, PS.BANNED, PS.REMOVED]))
    def set_provider_status(self, who: int | None, pick: int, status: ProviderStatus) -> None:
        s = self.actor(who, self.acct(ADMIN))
        prov = self.provider_addr(pick)
        fn = {PS.APPROVED: "approveProvider", PS.BANNED: "banProvider", PS.REMOVED: "removeProvider"}[status]
        self.step(s, self.e.market, calldata(fn, ["address"], [prov]), lambda m, t: m.set_status(s, prov, status, t))

    @rule(who=ACTOR, seconds=st.sampled_from([0, 60, 300, 3_600]))
    def set_claim_timeout(self, who: int | None, seconds: int) -> None:
        s = self.actor(who, self.acct(ADMIN))
        self.step(s, self.e.market, calldata("setClaimTimeout", ["uint32"], [seconds]),
                  lambda m, t: m.set_claim_timeout(s, seconds, t), with_timeout=True)

    @rule(who=ACTOR, pick=PICK, amount=st.sampled_from([1, 10**6, 10**9]))
    def mint(self, who: int | None, pick: int, amount: int) -> None:
        s = self.actor(who, self.acct(ADMIN))
        to = self.acct(self.r(pick) % N_ACCOUNTS)
        self.step(s, self.e.token, calldata("mint", ["address", "uint256"], [to, amount]),
                  lambda m, t: m.mint(s, to, amount, t))

    # -- time ------------------------------------------------------------------------------------------
    @rule(seconds=JUMP)
    def time_passes(self, seconds: int) -> None:
        self.e.rpc.call("evm_increaseTime", [seconds])

    @rule(seconds=JUMP)
    def more_time_passes(self, seconds: int) -> None:
        self.e.rpc.call("evm_increaseTime", [seconds])


#: The suite's run: examples long enough that most of them drive some job to a final status (the checks on
#: bills, refunds and final statuses run there), about as many transactions in all as 200 examples of 50.
EXAMPLES, STEPS = 36, 300


def examples_setting() -> settings:
    """The run's size on top of the loaded hypothesis profile (tests/conftest.py: new cases every run, failures
    saved in .hypothesis/ and printed with a blob to replay them)."""
    return settings(
        max_examples=int(os.environ.get("DSQ_INVARIANT_EXAMPLES", str(EXAMPLES))),
        stateful_step_count=int(os.environ.get("DSQ_INVARIANT_STEPS", str(STEPS))),
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def own_anvil(**kw: Any) -> AnvilNode:
    """An Anvil of our own on a fresh port (``start_anvil`` checks that the listener is its process)."""
    node = start_anvil(**kw)
    assert Rpc(node.rpc_url).call("eth_blockNumber", []) == "0x0"
    return node


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    node = own_anvil()
    try:
        yield setup_env(node)
    finally:
        node.stop()


#: Calls that must have succeeded at least once in a full run (so the checks saw every transition).
MUST_SUCCEED = ("submit", "assign", "assignBatch", "claim", "refuse", "start", "finish", "reportOutOfCredits",
                "report", "cancel", "panic", "topUp", "timeoutClaim", "withdraw", "registerProvider",
                "updateHardware", "updatePrices", "setLabels", "pause", "resume", "approveProvider", "banProvider",
                "removeProvider", "setClaimTimeout", "mint")
#: Named errors a full run must have seen (the rejections the trust model relies on were exercised).
#: EscrowOverflow is not required here: it needs a top-up past 2**64 units, which the CI run does not
#: reliably reach; tests/test_bad_input.py asserts it directly.
MUST_REVERT_WITH = ("AccessControlUnauthorizedAccount", "NotAssignedProvider", "NotJobOwner", "NotAllowedToPanic",
                    "InvalidStatus", "JobNotFound", "ProviderNotApproved", "ProviderIsPaused", "InsufficientCapacity",
                    "LabelMismatch", "LabelsMismatch", "PriceAboveCap", "ClaimNotExpired", "EscrowNotExhausted",
                    "ERC20InsufficientBalance", "NothingToWithdraw", "ProviderNotRegistered",
                    "ProviderAlreadyRegistered", "TooManyLabels", "TooManyJobLabels", "LengthMismatch")


def run_machine(env: Env, config: settings) -> tuple[float, str]:
    """Runs the machine; returns the elapsed seconds and a coverage summary."""
    GridMachine.env = env
    GridMachine.examples = GridMachine.steps = GridMachine.reverted = GridMachine.settling = 0
    GridMachine.outcomes = Counter()
    GridMachine.settled = Counter()
    t0 = time.monotonic()
    run_state_machine_as_test(GridMachine, settings=config)
    elapsed = time.monotonic() - t0
    by_call: dict[str, Counter[str]] = {}
    for (name, outcome), n in GridMachine.outcomes.items():
        by_call.setdefault(name, Counter())[outcome] += n
    lines = [f"{GridMachine.examples} examples ({GridMachine.settling} drove a job to a final status), "
             f"{GridMachine.steps} transactions "
             f"({GridMachine.reverted} reverted as predicted) in {elapsed:.1f} s "
             f"({GridMachine.steps / max(elapsed, 1e-9):.0f} tx/s)"]
    for name in sorted(by_call):
        c = by_call[name]
        errs = ", ".join(f"{e} {n}" for e, n in c.most_common() if e != "ok")
        lines.append(f"  {name:20s} ok {c['ok']:5d}  {errs}")
    lines.append("  settled: " + ", ".join(f"{s.name} {n}" for s, n in sorted(GridMachine.settled.items())))
    return elapsed, "\n".join(lines)


@pytest.mark.timeout(900)
def test_contract_invariants_hold_under_random_actions(env: Env) -> None:
    config = examples_setting()
    _, summary = run_machine(env, config)
    print("\ninvariants:", summary)
    if config.max_examples >= 100:  # a full run must have exercised every action and every ending
        ok = {name for (name, outcome), n in GridMachine.outcomes.items() if outcome == "ok"}
        assert not set(MUST_SUCCEED) - ok, f"never succeeded: {sorted(set(MUST_SUCCEED) - ok)}"
        assert set(GridMachine.settled) == {S.FINISHED, S.FAILED, S.OUT_OF_CREDITS, S.CANCELED, S.PANICKED}
        # Measured: 55-70 % of the examples settle a job at this depth (hypothesis ends some examples early and
        # its swarm testing leaves submit out of a few); under 40 % means the machine became too shallow again.
        assert GridMachine.settling * 5 >= GridMachine.examples * 2, \
            f"only {GridMachine.settling} of {GridMachine.examples} examples reached a final status: too shallow"
        seen = {outcome for (_, outcome) in GridMachine.outcomes}
        if set(MUST_REVERT_WITH) - seen:  # hypothesis' swarm testing leaves some out now and then: see the tour
            print(f"(this run never saw: {sorted(set(MUST_REVERT_WITH) - seen)})")


def test_every_rejection_the_trust_model_relies_on_is_predicted_and_changes_nothing(env: Env) -> None:
    """A fixed tour through the machine's checked ``step``: each named rejection of MUST_REVERT_WITH happens at
    least once (the random run above usually sees them all, but not always), with every check of a random step:
    the predicted error, nothing changed, all invariants."""
    GridMachine.env = env
    GridMachine.outcomes = Counter()
    m = GridMachine()
    a = m.acct
    admin, sched, owner, stranger = a(ADMIN), a(SCHEDULER), a(OWNERS[0]), a(STRANGER)
    p5, p6, p7, p8 = (a(i) for i in PROVIDERS)
    market = env.market

    def call(sender: str, fn: str, types: list[str], args: list[Any], predict: Callable[[Model, int], None],
             **kw: bool) -> None:
        m.step(sender, market, calldata(fn, types, args), predict, **kw)

    def submit(sender: str, res: tuple[int, int, int], max_rate: int, credits: int, labels: tuple[Any, ...]) -> int:
        req = (*res, max_rate, credits)
        call(sender, "submit", [REQ, LABEL + "[]", "bytes", "uint256"], [req, list(labels), b"wf", 1],
             lambda md, t: md.submit(sender, req, labels, b"wf", 1, t))
        return m.model.next_id - 1

    def assign(sender: str, job: int, prov: str, labels: tuple[Any, ...]) -> None:
        call(sender, "assign", ["uint256", "address", LABEL + "[]"], [job, prov, list(labels)],
             lambda md, t: md.assign(sender, job, prov, labels, t))

    def on_job(sender: str, fn: str, job: int) -> None:
        call(sender, fn, ["uint256"], [job], lambda md, t: getattr(md, {
            "claim": "claim", "start": "start", "cancel": "cancel", "panic": "panic", "timeoutClaim": "timeout_claim",
            "reportOutOfCredits": "report_out_of_credits"}[fn])(sender, job, t))

    zone_eu = CONSTRAINT_SETS[2]
    try:
        submit(stranger, (1, 0, 256), 10**6, 10**6, ())  # ERC20InsufficientBalance: the stranger holds 50,000
        submit(owner, (1, 0, 256), 10**6, 1, CONSTRAINT_SETS[-1])  # TooManyJobLabels
        job_a = submit(owner, (1, 0, 256), 10**6, 50_000, zone_eu)
        job_b = submit(owner, (16, 0, 1_024), 3_000, 50_000, ())
        job_c = submit(owner, (1, 0, 256), 10**6, 50_000, ())
        assign(stranger, job_a, p5, zone_eu)  # AccessControlUnauthorizedAccount
        assign(sched, m.model.next_id, p5, ())  # JobNotFound
        assign(sched, job_a, p6, zone_eu)  # LabelMismatch: p6 is in zone us
        assign(sched, job_a, p5, ())  # LabelsMismatch
        assign(sched, job_c, p8, ())  # ProviderNotApproved: p8 was never approved
        call(p7, "pause", [], [], lambda md, t: md.set_paused(p7, True, t))
        assign(sched, job_c, p7, ())  # ProviderIsPaused
        assign(sched, job_b, p5, ())  # InsufficientCapacity: 16 cpus on 8
        assign(sched, job_b, p6, ())  # PriceAboveCap: 32,100 units/min > 3,000
        assign(sched, job_a, p5, zone_eu)
        on_job(p6, "claim", job_a)  # NotAssignedProvider
        on_job(stranger, "cancel", job_a)  # NotJobOwner
        on_job(stranger, "panic", job_a)  # NotAllowedToPanic
        on_job(stranger, "timeoutClaim", job_a)  # ClaimNotExpired
        on_job(p5, "start", job_a)  # InvalidStatus: not claimed yet
        on_job(p5, "claim", job_a)
        on_job(p5, "start", job_a)
        on_job(stranger, "reportOutOfCredits", job_a)  # EscrowNotExhausted
        call(owner, "topUp", ["uint256", "uint64"], [job_a, U64], lambda md, t: md.top_up(owner, job_a, U64, t))
        call(stranger, "withdraw", [], [], lambda md, t: md.withdraw(stranger, t))  # NothingToWithdraw
        call(owner, "updateHardware", [HW], [(1, 0, 1)], lambda md, t: md.update_hardware(owner, (1, 0, 1), t))
        call(p5, "registerProvider", [HW, PRICES, "string[]", "bytes32[]"], [(1, 0, 1), (1, 0, 0), [], []],
             lambda md, t: md.register(p5, (1, 0, 1), (1, 0, 0), [], [], t), with_labels=True)
        keys, values = [f"k{i}" for i in range(33)], [text("v")] * 33
        call(p5, "setLabels", ["string[]", "bytes32[]"], [keys, values],
             lambda md, t: md.set_labels(p5, keys, values, t), with_labels=True)  # TooManyLabels
        call(p5, "setLabels", ["string[]", "bytes32[]"], [["zone"], []],
             lambda md, t: md.set_labels(p5, ["zone"], [], t), with_labels=True)  # LengthMismatch
        call(admin, "banProvider", ["address"], [p5], lambda md, t: md.set_status(admin, p5, PS.BANNED, t))
    finally:
        m.teardown()
    seen = {outcome for (_, outcome) in GridMachine.outcomes}
    assert not set(MUST_REVERT_WITH) - seen, f"the tour never saw: {sorted(set(MUST_REVERT_WITH) - seen)}"
