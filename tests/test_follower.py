"""The event follower on a real Anvil: order, exactly-once across restarts, reorgs, confirmations, node
outages, provider topic filters and adaptive ``eth_getLogs`` paging."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dsq_chain.errors import TransactionFailed
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import dev_keys, free_port, start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import GridClient
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import (
    PROVIDER_TOPIC_POSITION,
    ChainEvent,
    EventDecoder,
    JobSettled,
    JobSubmitted,
    Undecodable,
    normalise_log,
)
from dsq_chain.services.follower import EventFollower
from dsq_chain.types import CREDIT_UNIT, Prices, ReportAction, Resources
from dsq_chain.workloads import workflow
from dsq_chain.workloads.labels import on_chain
from tests.grid import Grid, abi_args, build_grid, web3_args

CREDITS = 10 * CREDIT_UNIT
MAX_RATE = 10**6


def make_workflow(cpus: int = 2, gpus: int = 0, labels: tuple[str, ...] = (), tag: str = "x") -> workflow.Workflow:
    doc = {
        "name": f"job-{tag}",
        "resources": {"tasks": 1, "cpusPerTask": cpus, "memPerCpu": 512, "gpus": gpus},
        "labels": list(labels),
        "steps": [{"name": "main", "run": {"command": "true"}}],
    }
    return workflow.loads(json.dumps(doc))


SMALL_WF = make_workflow()


def submit(user: GridClient, count: int = 1, wf: workflow.Workflow = SMALL_WF) -> list[int]:
    return list(user.submit(wf, credits=Credits(units=int(CREDITS)), max_rate=Credits(units=int(MAX_RATE)),
                            count=count, force=True))


def raw_positions(chain: Chain, dep: Deployment, topics: list[Any] | None = None) -> list[tuple[int, int, str]]:
    """(block, logIndex, blockHash) of every market log, straight from one eth_getLogs."""
    params: dict[str, Any] = {"address": dep.market, "fromBlock": hex(dep.block), "toBlock": "latest"}
    if topics:
        params["topics"] = topics
    logs = chain.call_rpc("eth_getLogs", [params])
    return sorted((int(lg["blockNumber"], 16), int(lg["logIndex"], 16), lg["blockHash"]) for lg in logs)


def positions(events: list[ChainEvent]) -> list[tuple[int, int, str]]:
    return [(e.block_number, e.log_index, e.block_hash) for e in events]


class Recorder:
    """A handler with in-memory state: events in delivery order; a reorg drops what it removed."""

    def __init__(self) -> None:
        self.events: list[ChainEvent] = []
        self.reorgs: list[int] = []
        self.removed: list[ChainEvent] = []

    def on_event(self, event: ChainEvent) -> None:
        self.events.append(event)

    def on_reorg(self, block: int) -> None:
        self.reorgs.append(block)
        self.removed += [e for e in self.events if e.block_number > block]
        self.events = [e for e in self.events if e.block_number <= block]


def follow(grid: Grid, **kw: Any) -> tuple[EventFollower, Recorder]:
    rec = Recorder()
    f = EventFollower(grid.chain, grid.deployment, handlers=[rec], **kw)
    return f, rec


def busy_history(grid: Grid) -> list[int]:
    """Several kinds of events, some blocks with many logs (a batch assignment, a batch report)."""
    ids = submit(grid.user, count=4) + submit(grid.users[1], count=2)
    grid.scheduler.assign_batch([(i, grid.cpu.address, ()) for i in ids[:3]] + [(ids[3], grid.spare.address, ())])
    grid.cpu.claim(ids[0])
    grid.cpu.refuse(ids[1])
    grid.users[1].cancel(ids[5])
    grid.user.top_up(ids[0], Credits(1))
    return ids


# ------------------------------------------------------------------------------------ order, restarts


def test_delivers_every_event_in_chain_order(grid: Grid) -> None:
    busy_history(grid)
    f, rec = follow(grid)
    assert f.poll() == len(rec.events)
    got = positions(rec.events)
    assert got == raw_positions(grid.chain, grid.deployment)
    assert got == sorted(set(got)), "not strictly in chain order"
    assert any(a[0] == b[0] for a, b in itertools.pairwise(got)), "history should have multi-log blocks"
    names = {e.name for e in rec.events}
    assert {"ProviderRegistered", "ProviderLabelsSet", "JobSubmitted", "JobAssigned", "JobReleased",
            "JobSettled", "JobToppedUp", "JobStatusChanged"} <= names
    # Nothing new: a second poll delivers nothing; new events come next, in order.
    assert f.poll() == 0
    submit(grid.user)
    assert f.poll() == 1 and rec.events[-1].name == "JobSubmitted"
    assert positions(rec.events) == raw_positions(grid.chain, grid.deployment)


class Crash(Exception):
    pass


def test_restart_continues_exactly_where_it_stopped(grid: Grid, tmp_path: Path) -> None:
    """A handler writing into follower.db inside the delivery transaction; the follower dies on the Nth
    event again and again (mid-block too), is recreated on the same file: each log applied exactly once."""
    db = tmp_path / "follower.db"
    busy_history(grid)
    expected = [(b, i) for b, i, _ in raw_positions(grid.chain, grid.deployment)]
    calls = 0

    def make(crash_at: int | None) -> EventFollower:
        f = EventFollower(grid.chain, grid.deployment, db, name="svc")
        f.db.execute("CREATE TABLE IF NOT EXISTS applied (block INTEGER, log_index INTEGER, name TEXT)")

        def handler(ev: ChainEvent) -> None:
            nonlocal calls
            calls += 1
            f.db.execute("INSERT INTO applied VALUES (?,?,?)", (ev.block_number, ev.log_index, ev.name))
            if crash_at is not None and calls == crash_at:
                raise Crash(f"killed at event {ev.position}")

        f.add_handler(handler)
        return f

    crashes = 0
    # Crash points chosen to land inside multi-log blocks as well as at block boundaries.
    for crash_at in [3, 4, 9, 15, 16, 17, 19, 23, 26, 28, None]:
        f = make(crash_at)
        try:
            f.poll()
        except Crash:
            crashes += 1
        finally:
            f.close()
        if crash_at is None:
            break
    assert crashes >= 8
    # More events after a clean stop: a fresh follower on the same file picks up only those.
    submit(grid.user, count=3)
    f = make(None)
    try:
        assert f.poll() == 1
        rows = f.db.execute("SELECT block, log_index, COUNT(*) FROM applied GROUP BY block, log_index "
                            "ORDER BY block, log_index").fetchall()
    finally:
        f.close()
    expected = [(b, i) for b, i, _ in raw_positions(grid.chain, grid.deployment)]
    assert [(b, i) for b, i, _ in rows] == expected, "an event was missed"
    assert all(n == 1 for _, _, n in rows), f"applied twice: {[r for r in rows if r[2] != 1]}"
    with sqlite3.connect(db) as conn:  # the checkpoint is durable in the file
        assert conn.execute("SELECT block FROM follower_checkpoint WHERE name='svc'").fetchone()[0] == expected[-1][0]


def test_checkpoints_are_per_name(grid: Grid, tmp_path: Path) -> None:
    db = tmp_path / "follower.db"
    submit(grid.user)
    a = EventFollower(grid.chain, grid.deployment, db, name="a")
    n = a.poll()
    a.close()
    b = EventFollower(grid.chain, grid.deployment, db, name="b")
    assert b.poll() == n > 0
    b.close()


def test_decoder_agrees_with_web3_on_every_event_kind(grid: Grid) -> None:
    """The follower's own ABI decoding (fast) against web3's get_event_data (the reference)."""
    busy_history(grid)
    labelled = make_workflow(gpus=1, labels=("gpu.model == A100", "gpu.mem >= 40", "zone in eu,us"))
    jid = submit(grid.user, wf=labelled)[0]
    grid.scheduler.assign(jid, grid.gpu.address, on_chain(labelled.labels))
    grid.gpu.claim(jid)
    grid.gpu.start(jid)
    grid.chain.increase_time(120)
    grid.gpu.finish(jid, -7)
    grid.gpu.withdraw()
    grid.gpu.update_prices(Prices.from_units(3_000, 40_000, 100))
    grid.spare.update_hardware(Resources(6, 0, 8_192))
    grid.spare.set_labels({"zone": "us", "disk": "4000"})
    grid.spare.pause()
    grid.admin.ban(grid.spare.address)
    grid.admin.set_claim_timeout(120)
    grid.admin.grant_scheduler(grid.stranger.address)
    grid.gpu.report([(jid, ReportAction.CLAIM, 0)])  # skipped: the job is final (EntrySkipped)
    grid.user.wallet.transact(grid.user.token.functions.transfer(grid.deployment.market, 5))  # sent by mistake
    grid.admin.sweep(grid.admin.address)
    m = grid.admin.market.functions
    grid.admin.wallet.transact(m.setAdminDelay(60))  # no delay yet: runs at once
    grid.admin.approve(grid.spare.address)  # now scheduled, not run
    (scheduled,) = grid.admin.market.events.AdminActionScheduled().get_logs(from_block=grid.chain.block_number())
    grid.admin.wallet.transact(m.cancelAdminAction(scheduled["args"]["operation"]))
    dec = EventDecoder()
    logs = grid.chain.call_rpc("eth_getLogs", [{"address": grid.deployment.market,
                                               "fromBlock": hex(grid.deployment.block), "toBlock": "latest"}])
    decoded = []
    for raw in logs:
        lg = normalise_log(raw)
        fast = dec.decode(lg)
        assert not isinstance(fast, Undecodable), fast.reason
        assert abi_args(fast) == web3_args(lg), f"{fast} != web3's decoding"
        decoded.append(fast)
    missing = set(dec.topics) - {e.name for e in decoded} - {"RoleAdminChanged", "RoleRevoked"}
    assert not missing, f"no {missing} in the history: the comparison does not cover them"
    assert any(isinstance(e, JobSettled) and e.exit_code == -7 for e in decoded)
    submitted = next(e for e in decoded if isinstance(e, JobSubmitted) and e.first_job_id == jid)
    assert len(submitted.labels) == 2 and submitted.request.gpus == 1


# ------------------------------------------------------------------------------------ reorgs


def test_reorg_by_snapshot_revert_rewinds_to_the_common_ancestor(grid: Grid) -> None:
    chain = grid.chain
    f, rec = follow(grid)
    f.poll()
    ancestor = chain.block_number()
    snap = chain.snapshot()
    old_ids = submit(grid.user, count=2)
    grid.scheduler.assign_batch([(old_ids[0], grid.cpu.address, ())])
    grid.cpu.claim(old_ids[0])
    f.poll()
    old = [e for e in rec.events if e.block_number > ancestor]
    assert [e.name for e in old] == ["JobSubmitted", "JobAssigned", "JobStatusChanged"]
    old_hashes = {e.block_number: e.block_hash for e in old}

    chain.revert(snap)
    grid.reset_nonces()
    # Different transactions reuse the same block numbers with new hashes (and one block more).
    new_ids = submit(grid.users[1], count=1) + submit(grid.users[2], count=3)
    grid.scheduler.assign_batch([(new_ids[1], grid.gpu.address, ()), (new_ids[0], grid.spare.address, ())])
    chain.mine()
    assert all(chain.call_rpc("eth_getBlockByNumber", [hex(b), False])["hash"] != h for b, h in old_hashes.items())

    delivered = f.poll()
    assert rec.reorgs == [ancestor], "on_reorg must be called once, with the common ancestor"
    assert f.reorgs == 1
    assert positions(rec.removed) == positions(old), "the removed events are exactly those after the ancestor"
    assert positions(rec.events) == raw_positions(chain, grid.deployment)
    new = [e for e in rec.events if e.block_number > ancestor]
    assert delivered == len(new) == 4
    assert [e.name for e in new] == ["JobSubmitted", "JobSubmitted", "JobAssigned", "JobAssigned"]
    assert new[0].owner == grid.users[1].address
    # Stable afterwards: no further reorg reported.
    assert f.poll() == 0 and rec.reorgs == [ancestor]


def test_reorg_that_shortens_the_chain(grid: Grid) -> None:
    """Reverted below the checkpoint and not yet as long again: the follower still rewinds."""
    chain = grid.chain
    f, rec = follow(grid)
    f.poll()
    ancestor = chain.block_number()
    snap = chain.snapshot()
    submit(grid.user, count=1)
    submit(grid.user, count=1)
    f.poll()
    chain.revert(snap)
    grid.reset_nonces()
    assert f.poll() == 0
    assert rec.reorgs == [ancestor] and len(rec.removed) == 2
    assert positions(rec.events) == raw_positions(chain, grid.deployment)


def test_reorg_with_anvil_reorg(private_grid: Grid) -> None:
    """On its own Anvil (see ``private_grid``): on the shared node, after many snapshot/revert rounds, anvil_reorg
    once left the contracts without code (CI: every call after it returned no data)."""
    grid = private_grid
    chain = grid.chain
    f, rec = follow(grid)
    submit(grid.user, count=2)
    f.poll()
    base = chain.block_number()
    ids = submit(grid.users[1])  # block base+1
    grid.scheduler.assign(ids[0], grid.cpu.address)  # block base+2
    f.poll()
    doomed = [e for e in rec.events if e.block_number > base]
    assert len(doomed) == 2
    chain.call_rpc("anvil_reorg", [2, []])  # the last two blocks replaced by empty ones
    grid.reset_nonces()
    assert grid.user.job_count() == ids[0] - 1, "anvil_reorg should have dropped the submission"
    new = submit(grid.users[2])
    f.poll()
    assert rec.reorgs == [base]
    assert positions(rec.removed) == positions(doomed)
    assert positions(rec.events) == raw_positions(chain, grid.deployment)
    last = rec.events[-1]
    assert isinstance(last, JobSubmitted) and last.first_job_id == new[0]
    assert last.owner == grid.users[2].address


def test_confirmations_hold_back_recent_blocks(grid: Grid) -> None:
    chain = grid.chain
    f, rec = follow(grid, confirmations=3)
    f.poll()
    ids = submit(grid.user)
    block = chain.block_number()

    def seen() -> bool:
        return any(isinstance(e, JobSubmitted) and e.first_job_id == ids[0] for e in rec.events)

    f.poll()
    assert not seen()
    chain.mine(2)
    f.poll()
    assert not seen(), "delivered with only 2 confirmations"
    assert all(e.block_number <= chain.block_number() - 3 for e in rec.events)
    chain.mine(1)
    f.poll()
    assert seen() and rec.events[-1].block_number == block


def test_confirmations_absorb_shallow_reorgs(grid: Grid) -> None:
    """A reorg of blocks not yet confirmed is never seen by handlers: no on_reorg, no phantom event."""
    chain = grid.chain
    f, rec = follow(grid, confirmations=3)
    f.poll()
    snap = chain.snapshot()
    submit(grid.user)
    f.poll()
    chain.revert(snap)
    grid.reset_nonces()
    ids = submit(grid.users[1])
    chain.mine(3)
    f.poll()
    assert rec.reorgs == [] and f.reorgs == 0
    assert positions(rec.events) == raw_positions(chain, grid.deployment)
    last = rec.events[-1]
    assert isinstance(last, JobSubmitted) and last.first_job_id == ids[0] and last.owner == grid.users[1].address


# ------------------------------------------------------------------------------------ topics and paging


def test_provider_filter_sees_only_its_own_jobs(grid: Grid) -> None:
    ids = submit(grid.user, count=4)
    grid.scheduler.assign_batch([(ids[0], grid.cpu.address, ()), (ids[1], grid.gpu.address, ()),
                                 (ids[2], grid.cpu.address, ()), (ids[3], grid.gpu.address, ())])
    for p, a, b in ((grid.cpu, ids[0], ids[2]), (grid.gpu, ids[1], ids[3])):
        p.claim(a)
        p.refuse(b)
        p.start(a)
        grid.user.top_up(a, Credits(1))
        p.finish(a, 0)

    decoder = EventDecoder()
    everything, all_rec = follow(grid)
    everything.poll()
    for provider in (grid.cpu, grid.gpu):
        worker = EventFollower(grid.chain, grid.deployment, filters=decoder.provider_filters(provider.address))
        rec = Recorder()
        worker.add_handler(rec)
        worker.poll()
        mine = [e for e in all_rec.events if e.name in PROVIDER_TOPIC_POSITION
                and getattr(e, "provider", None) == provider.address]
        assert positions(rec.events) == positions(mine)
        assert {e.name for e in rec.events} == set(PROVIDER_TOPIC_POSITION)
        assert all(getattr(e, "provider", None) == provider.address for e in rec.events)


@pytest.mark.parametrize("page_size", [1, 3])
def test_small_pages_deliver_everything(grid: Grid, page_size: int) -> None:
    busy_history(grid)
    f, rec = follow(grid, page_size=page_size)
    f.poll()
    assert positions(rec.events) == raw_positions(grid.chain, grid.deployment)


class RangeLimitProxy:
    """A JSON-RPC proxy on loopback that refuses ``eth_getLogs`` over more than ``max_blocks`` blocks,
    like hosted nodes do; everything else is forwarded to the node."""

    def __init__(self, upstream: str, max_blocks: int) -> None:
        self.upstream = upstream
        self.max_blocks = max_blocks
        self.served: list[int] = []
        self.refused: list[int] = []
        #: Every request by JSON-RPC method (batches counted per entry).
        self.methods: Counter[str] = Counter()
        #: Called (once) after the node answered an eth_getLogs and before the answer is passed on.
        self.after_logs: Callable[[], None] | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                answer = proxy.answer(body)
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, body: Any) -> Any:
        if isinstance(body, list):
            return [self.answer(b) for b in body]
        self.methods[body.get("method", "")] += 1
        if body.get("method") == "eth_getLogs":
            p = body["params"][0]
            start, end = int(p["fromBlock"], 16), int(p["toBlock"], 16)
            span = end - start + 1
            if span > self.max_blocks:
                self.refused.append(span)
                return {"jsonrpc": "2.0", "id": body["id"],
                        "error": {"code": -32005, "message": f"block range too large: max {self.max_blocks}"}}
            self.served.append(span)
        req = urllib.request.Request(self.upstream, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        if body.get("method") == "eth_getLogs" and self.after_logs is not None:
            hook, self.after_logs = self.after_logs, None
            hook()
        return answer

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(grid: Grid) -> Iterator[Callable[[int], RangeLimitProxy]]:
    made: list[RangeLimitProxy] = []

    def make(max_blocks: int) -> RangeLimitProxy:
        p = RangeLimitProxy(grid.chain.rpc_url, max_blocks)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def test_pages_shrink_to_what_the_node_accepts(grid: Grid, proxy: Callable[[int], RangeLimitProxy]) -> None:
    busy_history(grid)
    grid.chain.mine(60)
    limited = proxy(5)
    f = EventFollower(Chain(limited.url), grid.deployment, page_size=1000)
    rec = Recorder()
    f.add_handler(rec)
    f.poll()
    assert positions(rec.events) == raw_positions(grid.chain, grid.deployment)
    assert limited.refused, "the proxy should have refused the first, large range"
    assert limited.served and max(limited.served) <= 5
    # Refusals stay few: the refused range is halved (not a page size larger than the range asked),
    # and pages do not grow straight back to a refused size.
    blocks = grid.chain.block_number() - grid.deployment.block + 1
    assert len(limited.refused) <= 10, f"{len(limited.refused)} refusals for {blocks} blocks: {limited.refused}"
    assert len(limited.served) <= blocks // 3 + 2, f"pages stayed too small: {limited.served}"
    # A later poll over a short range works without refusals piling up.
    before = len(limited.refused)
    submit(grid.user)
    f.poll()
    assert rec.events[-1].name == "JobSubmitted"
    assert len(limited.refused) - before <= 2


@pytest.fixture
def private_grid() -> Iterator[Grid]:
    """A grid on its own Anvil: anvil_reorg does not mix with the shared node's snapshot/revert isolation."""
    node = start_anvil()
    try:
        yield build_grid(Chain(node.rpc_url), dev_keys(20))
    finally:
        node.stop()


def test_a_reorg_while_a_page_is_read_is_not_missed(private_grid: Grid) -> None:
    """The logs come from the old fork, the page's last block hash from the new one: the page must not be
    delivered with a checkpoint that makes the vanished events look confirmed."""
    grid = private_grid
    chain = grid.chain
    node = RangeLimitProxy(chain.rpc_url, 10**6)
    f = EventFollower(Chain(node.url), grid.deployment)
    rec = Recorder()
    f.add_handler(rec)
    f.poll()
    submit(grid.user)
    submit(grid.users[1])
    node.after_logs = lambda: chain.call_rpc("anvil_reorg", [2, []])  # both submissions vanish meanwhile
    f.poll()
    grid.reset_nonces()
    f.poll()
    assert positions(rec.events) == raw_positions(chain, grid.deployment)
    assert not [e for e in rec.events if e.name == "JobSubmitted"], "events of a vanished fork were kept"
    assert positions(rec.removed) == [], "nothing of the vanished fork was delivered in the first place"
    # And the follower keeps going on the new fork.
    ids = submit(grid.users[2])
    f.poll()
    last = rec.events[-1]
    assert isinstance(last, JobSubmitted) and last.first_job_id == ids[0]
    node.close()


def test_a_node_refusing_even_one_block_is_an_error_not_a_hang(
    grid: Grid, proxy: Callable[[int], RangeLimitProxy]
) -> None:
    f = EventFollower(Chain(proxy(0).url), grid.deployment, page_size=64)
    t0 = time.monotonic()
    with pytest.raises(TransactionFailed, match="block range too large"):
        f.poll()
    assert time.monotonic() - t0 < 10


# ------------------------------------------------------------------------------------ node outage


def test_survives_the_node_going_away(tmp_path: Path) -> None:
    """A follower thread under its own Anvil: stop the node (state dumped), restart it from the dump on
    the same port, submit more jobs: the follower catches up by itself, each event exactly once."""
    state = tmp_path / "anvil-state.json"
    port = free_port()
    keys = dev_keys(20)
    node = start_anvil(port, dump_state=state)
    try:
        chain = Chain(node.rpc_url)
        grid = build_grid(chain, keys)
        db = tmp_path / "follower.db"
        f = EventFollower(chain, grid.deployment, db, name="outage")
        f.db.execute("CREATE TABLE applied (block INTEGER, log_index INTEGER)")
        f.add_handler(lambda ev: f.db.execute("INSERT INTO applied VALUES (?,?)", (ev.block_number, ev.log_index)))
        stop = threading.Event()
        errors: list[BaseException] = []

        def runner() -> None:
            try:
                f.run(stop, interval=0.05)
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=runner, daemon=True)
        thread.start()

        def applied() -> list[tuple[int, int, int]]:
            with f.lock:
                return f.db.execute("SELECT block, log_index, COUNT(*) FROM applied GROUP BY block, log_index "
                                    "ORDER BY block, log_index").fetchall()

        def wait_caught_up(timeout: float) -> list[tuple[int, int, int]]:
            want = [(b, i) for b, i, _ in raw_positions(chain, grid.deployment)]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                rows = applied()
                if [(b, i) for b, i, _ in rows] == want:
                    return rows
                time.sleep(0.05)
            raise AssertionError(f"follower did not catch up: {len(applied())} of {len(want)} events")

        submit(grid.user, count=2)
        wait_caught_up(10)
        before = len(applied())

        node.stop()
        assert state.is_file() and state.stat().st_size > 0, "anvil --dump-state wrote nothing"
        time.sleep(1.0)  # the follower polls a dead node meanwhile
        assert thread.is_alive() and not errors

        node = start_anvil(port, load_state=state)
        grid.reset_nonces()
        assert chain.block_number() >= grid.deployment.block
        ids = submit(grid.users[1], count=3)
        grid.scheduler.assign_batch([(ids[0], grid.cpu.address, ()), (ids[1], grid.gpu.address, ())])
        rows = wait_caught_up(15)
        assert len(rows) == before + 3
        assert all(n == 1 for _, _, n in rows), "an event was applied twice"
        assert thread.is_alive() and not errors
        assert f.reorgs == 0, "restoring the dumped state must not look like a reorg"
        stop.set()
        thread.join(10)
        assert not thread.is_alive()
        f.close()
    finally:
        node.stop()

