"""The full permission matrix of the job market: every job status x every action x every kind of caller.

The expectations come from the one lifecycle table, ``dsq_chain.lifecycle`` (``RULES`` below), not from
the contract: an allowed call must succeed with exactly the effects the lifecycle describes (new status,
escrow, internal balances, token balances, provider capacity); a forbidden one must revert with the named
custom error and change nothing.

Speed: one job per status is prepared once per module (all owned by ``grid.user``, all on the ``cpu``
provider) and every case reverts to that state. Reads go through one raw JSON-RPC batch per state
snapshot. Credit conservation is checked after every case, as the ``grid`` fixture does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address
from eth_utils.abi import get_abi_input_types, get_abi_output_types

from dsq_chain import errors, lifecycle
from dsq_chain.lifecycle import Caller
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Chain, Wallet
from dsq_chain.sdk.client import ZERO_ADDRESS
from dsq_chain.types import CREDIT_UNIT, JobStatus
from tests.grid import SMALL, SMALL_RATE, Grid

S = JobStatus
NON_FINAL = (S.PENDING, S.META_SCHEDULED, S.SCHEDULED, S.RUNNING)
STATUSES = tuple(s for s in JobStatus if s is not S.NONE)

# -- callers ----------------------------------------------------------------------------------------
OWNER = "owner"  # grid.user, who submitted every job
PROVIDER = "provider"  # grid.cpu, the provider the job is assigned to (a PENDING job has none)
OTHER_PROVIDER = "other_provider"  # grid.gpu, approved but not assigned
SCHEDULER = "scheduler"
ADMIN = "admin"
STRANGER = "stranger"
CALLERS = (OWNER, PROVIDER, OTHER_PROVIDER, SCHEDULER, ADMIN, STRANGER)
ANYONE = frozenset(CALLERS)

TOP_UP = 3 * CREDIT_UNIT


@dataclass(frozen=True)
class Rule:
    """What the lifecycle allows for one action, in this test's terms.

    ``who``: callers allowed (PROVIDER = the job's assigned provider); any other caller gets
    ``wrong_caller``, whatever the status (the caller is checked first).
    ``moves``: status before -> status after, for the statuses the action applies to.
    ``blocked``: statuses where the action applies but a precondition fails, with its error.
    Every other status: ``InvalidStatus``.
    """

    who: frozenset[str]
    moves: dict[JobStatus, JobStatus]
    wrong_caller: str | None = None
    blocked: dict[JobStatus, str] = field(default_factory=dict)


def _rules() -> dict[str, Rule]:
    """The matrix's rules, derived from the one lifecycle table (``dsq_chain.lifecycle``).

    An action with a precondition beyond status and caller is tried twice: ``_unmet`` (it must revert
    with the precondition's error) and ``_met`` (it must move the job).
    """
    rules: dict[str, Rule] = {}
    for t in lifecycle.TRANSITIONS:
        if S.NONE in t.moves:
            continue  # submission: covered by the billing and bad-input tests
        who = ANYONE if Caller.ANYONE in t.callers else frozenset(str(c) for c in t.callers)
        moves = dict(t.moves)
        if t.requires:
            assert t.blocked is not None
            rules[f"{t.name}_unmet"] = Rule(who, {}, t.wrong_caller, dict.fromkeys(moves, t.blocked))
            rules[f"{t.name}_met"] = Rule(who, moves, t.wrong_caller)
        else:
            rules[t.name] = Rule(who, moves, t.wrong_caller)
    return rules


RULES = _rules()
# A top-up of a RUNNING job whose escrow ran out is refused by name: it would pay for time run unfunded.
RULES["topUp_exhausted"] = Rule(ANYONE, {s: s for s in NON_FINAL if s is not S.RUNNING},
                                blocked={S.RUNNING: "EscrowExhausted"})
ACTIONS = tuple(RULES)


class Outcome(NamedTuple):
    new_status: JobStatus | None  # set when the call must succeed
    error: str | None  # set when it must revert

    def __str__(self) -> str:
        return self.new_status.name if self.new_status is not None else str(self.error)


def expected(status: JobStatus, action: str, caller: str) -> Outcome:
    rule = RULES[action]
    # A PENDING job has no assigned provider: the cpu provider is then just another provider.
    role = OTHER_PROVIDER if caller == PROVIDER and status is S.PENDING else caller
    if role not in rule.who:
        return Outcome(None, rule.wrong_caller)
    if status in rule.blocked:
        return Outcome(None, rule.blocked[status])
    if status in rule.moves:
        return Outcome(rule.moves[status], None)
    return Outcome(None, "InvalidStatus")


CASES = [(s, a, c, expected(s, a, c)) for s in STATUSES for a in ACTIONS for c in CALLERS]


# -- fast state reads -------------------------------------------------------------------------------
@dataclass(frozen=True)
class State:
    job: dict[str, Any]  # the JobView, by field name
    credits: dict[str, int]  # internal market balances of the watched accounts
    tokens: dict[str, int]  # token balances of the watched accounts
    cpu_free: tuple[int, ...]
    conservation_gap: int
    owed_gap: int = 0  # the market's own count of what it owes, minus escrows + balances


class Reader:
    """Reads a job, balances, the cpu provider's free capacity and the conservation terms in one batch."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.market = grid.user.market
        self.token = grid.user.token

        self._abi: dict[tuple[str, str], tuple[bytes, list[str], list[str]]] = {}
        job_abi = self.market.get_function_by_name("getJob").abi
        self.job_fields = [c["name"] for c in job_abi["outputs"][0]["components"]]

    def _fn(self, contract: Any, name: str) -> tuple[bytes, list[str], list[str]]:
        """Selector, input types and output types of a view (cached: web3's encoder is slow)."""
        key = (contract.address, name)
        if key not in self._abi:
            abi = contract.get_function_by_name(name).abi
            inputs = list(get_abi_input_types(abi))
            selector = keccak(text=f"{name}({','.join(inputs)})")[:4]
            self._abi[key] = (selector, inputs, list(get_abi_output_types(abi)))
        return self._abi[key]

    def _job(self, view: tuple[Any, ...]) -> dict[str, Any]:
        job = dict(zip(self.job_fields, view, strict=True))
        job["owner"], job["provider"] = to_checksum_address(job["owner"]), to_checksum_address(job["provider"])
        return job

    def _batch(self, calls: list[tuple[Any, str, list[Any]]]) -> list[Any]:
        requests = []
        for c, name, args in calls:
            selector, inputs, _ = self._fn(c, name)
            data = "0x" + (selector + abi_encode(inputs, args)).hex()
            requests.append(("eth_call", [{"to": c.address, "data": data}, "latest"]))
        responses = self.grid.chain.w3.provider.make_batch_request(requests)  # type: ignore[arg-type]
        out = []
        for (c, name, _), resp in zip(calls, responses, strict=True):  # type: ignore[arg-type]
            assert "error" not in resp, resp
            out.append(abi_decode(self._fn(c, name)[2], bytes.fromhex(resp["result"][2:]))[0])
        return out

    def state(self, job_id: int, watched: list[str]) -> State:
        accounts = self.grid.accounts
        calls: list[tuple[Any, str, list[Any]]] = [
            (self.market, "getJob", [job_id]),
            (self.market, "getProvider", [self.grid.cpu.address]),
            (self.token, "balanceOf", [self.market.address]),
            (self.market, "getJobs", [1, 500]),
            (self.market, "owed", []),
            *[(self.market, "balanceOf", [a]) for a in accounts],
            *[(self.token, "balanceOf", [a]) for a in watched],
        ]
        res = self._batch(calls)
        job, provider, held, jobs, owed = res[:5]
        credits = dict(zip(accounts, res[5 : 5 + len(accounts)], strict=True))
        tokens = dict(zip(watched, res[5 + len(accounts) :], strict=True))
        liabilities = sum(self._job(j)["escrow"] for j in jobs) + sum(credits.values())
        return State(self._job(job), {a: credits[a] for a in watched}, tokens, tuple(provider[5]),
                     held - liabilities, owed - liabilities)


# -- the prepared world -----------------------------------------------------------------------------
@dataclass
class World:
    grid: Grid
    chain: Chain
    reader: Reader
    jobs: dict[JobStatus, int]
    wallets: dict[str, Wallet]
    exhaust_seconds: int
    claim_timeout: int

    def address(self, caller: str) -> str:
        return self.wallets[caller].address


@pytest.fixture(scope="module")
def world(_grid_session: Grid, chain: Chain) -> Iterator[World]:
    grid = _grid_session
    base = chain.snapshot()
    grid.reset_nonces()
    try:
        wallets = {
            OWNER: grid.user.wallet,
            PROVIDER: grid.cpu.wallet,
            OTHER_PROVIDER: grid.gpu.wallet,
            SCHEDULER: grid.scheduler.wallet,
            ADMIN: grid.admin.wallet,
            STRANGER: grid.stranger.wallet,
        }
        # Everybody can pay a top-up: tokens for those who have none, and an allowance for the market.
        for who in (PROVIDER, OTHER_PROVIDER, SCHEDULER, ADMIN):
            grid.admin.mint(wallets[who].address, Credits(100))
        for w in wallets.values():
            w.transact(grid.user.token.functions.approve(grid.deployment.market, 2**256 - 1))
        jobs: dict[JobStatus, int] = {}
        # OUT_OF_CREDITS first: it moves the clock by a day (1 credit buys 476 min at SMALL_RATE).
        jobs[S.OUT_OF_CREDITS] = grid.job_in(S.OUT_OF_CREDITS, credits=CREDIT_UNIT)
        for s in (S.FINISHED, S.FAILED, S.CANCELED, S.PANICKED, S.PENDING, S.META_SCHEDULED, S.SCHEDULED):
            jobs[s] = grid.job_in(s)
        jobs[S.RUNNING] = grid.job_in(S.RUNNING)
        chain.increase_time(90)  # the RUNNING job has run 90 s: a finish or cancel bills something
        running = grid.user.job(jobs[S.RUNNING])
        exhaust_seconds = -(-running.escrow * 60 // running.rate) + 60
        claim_timeout = int(grid.user.market.functions.claimTimeout().call())
        for s, job_id in jobs.items():
            assert grid.user.job(job_id).status is s
        grid.reset_nonces()
        yield World(grid, chain, Reader(grid), jobs, wallets, exhaust_seconds, claim_timeout)
    finally:
        chain.revert(base)
        grid.reset_nonces()


@pytest.fixture
def w(world: World) -> Iterator[World]:
    """The prepared world, reverted after each case (the case itself checks credit conservation)."""
    snap = world.chain.snapshot()
    world.grid.reset_nonces()
    try:
        yield world
    finally:
        world.chain.revert(snap)
        world.grid.reset_nonces()


def _call(w: World, action: str, job_id: int) -> Any:
    f = w.grid.user.market.functions
    calls: dict[str, Callable[[], Any]] = {
        "assign": lambda: f.assign(job_id, w.grid.cpu.address, []),
        "claim": lambda: f.claim(job_id),
        "refuse": lambda: f.refuse(job_id),
        "start": lambda: f.start(job_id),
        "finish_exit0": lambda: f.finish(job_id, 0),
        "finish_failed": lambda: f.finish(job_id, 3),
        "outOfCredits_met": lambda: f.reportOutOfCredits(job_id),
        "outOfCredits_unmet": lambda: f.reportOutOfCredits(job_id),
        "cancel": lambda: f.cancel(job_id),
        "panic": lambda: f.panic(job_id),
        "topUp": lambda: f.topUp(job_id, TOP_UP),
        "topUp_exhausted": lambda: f.topUp(job_id, TOP_UP),
        "timeoutClaim_unmet": lambda: f.timeoutClaim(job_id),
        "timeoutClaim_met": lambda: f.timeoutClaim(job_id),
        "releaseFromBanned_unmet": lambda: f.releaseFromBanned(job_id),
        "releaseFromBanned_met": lambda: f.releaseFromBanned(job_id),
    }
    return calls[action]()


def _expected_state(w: World, before: State, action: str, caller: str, new: JobStatus, ts: int) -> State:
    """``before`` with the effects the lifecycle gives the action, mined at timestamp ``ts``."""
    job = before.job
    old = JobStatus(job["status"])
    owner, cpu, payer = w.address(OWNER), w.grid.cpu.address, w.address(caller)
    credits, tokens = dict(before.credits), dict(before.tokens)
    if new.is_final:
        if action in ("finish_exit0", "finish_failed") or (action == "cancel" and old is S.RUNNING):
            bill = min(job["rate"] * (ts - job["since"]) // 60, job["escrow"])  # rate x elapsed chain time, capped
        elif action == "outOfCredits_met":
            bill = job["escrow"]  # whole escrow billed
        else:
            bill = 0  # cancel before RUNNING, panic: full refund
        credits[cpu] += bill
        credits[owner] += job["escrow"] - bill
        job = job | {"status": new, "escrow": 0}
    elif action == "assign":
        job = job | {"status": new, "provider": cpu, "rate": SMALL_RATE, "since": ts}
    elif action in ("refuse", "timeoutClaim_met", "releaseFromBanned_met"):
        job = job | {"status": new, "provider": ZERO_ADDRESS, "rate": 0, "since": 0}
    elif action == "start":
        job = job | {"status": new, "since": ts}
    elif action in ("topUp", "topUp_exhausted"):
        from_balance = min(credits[payer], TOP_UP)  # internal balance first, then tokens
        credits[payer] -= from_balance
        tokens[payer] -= TOP_UP - from_balance
        job = job | {"escrow": job["escrow"] + TOP_UP}
    else:
        job = job | {"status": new}
    free = before.cpu_free
    small = (SMALL.cpus, SMALL.gpus, SMALL.mem_mb, 0, 0)  # no disk; persistent storage is never reserved
    if old.holds_capacity and not new.holds_capacity:
        free = tuple(a + b for a, b in zip(free, small, strict=True))  # type: ignore[assignment]
    elif new.holds_capacity and not old.holds_capacity:
        free = tuple(a - b for a, b in zip(free, small, strict=True))  # type: ignore[assignment]
    return State(job, credits, tokens, free, 0)


@pytest.mark.parametrize(
    ("status", "action", "caller", "outcome"),
    CASES,
    ids=[f"{s.name}-{a}-{c}->{o}" for s, a, c, o in CASES],
)
def test_matrix(w: World, status: JobStatus, action: str, caller: str, outcome: Outcome) -> None:
    job_id = w.jobs[status]
    if action in ("outOfCredits_met", "topUp_exhausted"):
        w.chain.increase_time(w.exhaust_seconds)
    elif action == "timeoutClaim_met":
        w.chain.increase_time(w.claim_timeout + 1)
    elif action == "releaseFromBanned_met":
        w.grid.admin.ban(w.grid.cpu.address)
    watched = list(dict.fromkeys([w.address(OWNER), w.grid.cpu.address, w.address(caller)]))
    before = w.reader.state(job_id, watched)
    assert JobStatus(before.job["status"]) is status
    block = w.chain.block_number()
    wallet = w.wallets[caller]

    if outcome.error is not None:
        with pytest.raises(getattr(errors, outcome.error)) as info:
            wallet.transact(_call(w, action, job_id))
        args = info.value.args_dict
        if "jobId" in args:
            assert args["jobId"] == job_id
        for key in ("caller", "account"):
            if key in args:
                assert args[key] == wallet.address
        if outcome.error == "InvalidStatus":
            assert args["status"] == status
        after = w.reader.state(job_id, watched)
        assert after.job == before.job
        assert after.credits == before.credits and after.tokens == before.tokens
        assert after.cpu_free == before.cpu_free
        assert w.chain.block_number() == block, "a forbidden call must not be sent"
    else:
        assert outcome.new_status is not None
        receipt = wallet.transact(_call(w, action, job_id))
        ts = w.chain.timestamp(int(receipt["blockNumber"]))
        after = w.reader.state(job_id, watched)
        want = _expected_state(w, before, action, caller, outcome.new_status, ts)
        assert after.job == want.job
        assert after.credits == want.credits
        assert after.tokens == want.tokens
        assert after.cpu_free == want.cpu_free
    assert after.conservation_gap == 0, "credits not conserved"
    assert after.owed_gap == 0, "the market's count of what it owes drifted"

