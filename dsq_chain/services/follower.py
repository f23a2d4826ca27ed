"""The event follower every service stands on.

It reads the market's logs from a start block, decodes them and delivers each to its handlers in
chain order. Its checkpoint — the last delivered (block, log index) and that block's hash — lives in
SQLite. A handler that keeps its own state in the follower's connection (:attr:`EventFollower.db`)
has its writes committed in the same transaction as the checkpoint, so across crashes and restarts
each event is applied exactly once. Handlers with in-memory state use ``db_path=":memory:"`` and
simply replay from the start block at each start.

Reorgs: only blocks ``confirmations`` deep are read; the hashes of recently completed blocks are
kept, and when the checkpoint's block hash changes the follower rewinds to the newest block whose
hash still matches (the common ancestor), tells handlers through ``on_reorg(block)``, and replays.
A page of logs is only delivered if its last block's hash is the same before and after reading it,
so a reorg that happens while a page is read is seen at the next poll instead of being missed.

Outages: :meth:`run` backs off (0.2 s doubling to 5 s) while the node is unreachable and catches up
when it is back. ``eth_getLogs`` ranges shrink when the node refuses a range (to half the refused
range) and grow back after, but not past a refused size until :data:`REPROBE_PAGES` pages went through.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dsq_chain.errors import ChainUnavailable, TransactionFailed
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import ChainEvent, EventDecoder, Undecodable, normalise_log, sort_events

log = logging.getLogger("dsq.follower")

#: log index meaning "every log of this block was delivered".
BLOCK_DONE = 2**31
#: How many completed block hashes are kept for finding a common ancestor.
RECENT_BLOCKS = 256
#: After this many pages without a refusal, pages may grow past the last refused size again.
REPROBE_PAGES = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS follower_checkpoint (
    name TEXT PRIMARY KEY, block INTEGER NOT NULL, block_hash TEXT NOT NULL, log_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS follower_blocks (
    name TEXT NOT NULL, block INTEGER NOT NULL, block_hash TEXT NOT NULL, PRIMARY KEY (name, block)
);
"""


class Handler(Protocol):
    """What the follower calls. ``on_reorg`` is optional (looked up with getattr)."""

    def on_event(self, event: ChainEvent) -> None: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    block: int
    block_hash: str
    log_index: int


class EventFollower:
    """Follows the market's events into handlers; see the module docstring."""

    def __init__(
        self,
        chain: Chain,
        deployment: Deployment,
        db_path: str | Path = ":memory:",
        *,
        name: str = "default",
        filters: Sequence[list[Any]] | None = None,
        confirmations: int = 0,
        start_block: int | None = None,
        page_size: int = 2_000,
        handlers: Sequence[Handler | Callable[[ChainEvent], None]] = (),
    ) -> None:
        self.chain = chain
        self.deployment = deployment
        self.name = name
        self.decoder = EventDecoder()
        self.filters: list[list[Any]] = list(filters) if filters else [[]]
        self.confirmations = confirmations
        self.start_block = deployment.block if start_block is None else start_block
        self.page_size = self.max_page = page_size
        #: Largest page not known to be refused, and pages read since the last refusal.
        self._ceiling = page_size
        self._pages_ok = 0
        self.db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL") if str(db_path) != ":memory:" else None
        self.db.executescript(SCHEMA)
        self.lock = threading.RLock()
        self._handlers: list[Handler] = [h if hasattr(h, "on_event") else _FnHandler(h) for h in handlers]  # type: ignore[arg-type]
        self.delivered = 0
        self.reorgs = 0
        #: Logs that decoded to :class:`Undecodable` (each is still handed to the handlers, raw).
        self.undecodable = 0
        self._undecodable_kinds: set[tuple[str | None, str]] = set()

    def add_handler(self, handler: Handler | Callable[[ChainEvent], None]) -> None:
        self._handlers.append(handler if hasattr(handler, "on_event") else _FnHandler(handler))  # type: ignore[arg-type]

    # -- checkpoint ----------------------------------------------------------------------------
    @property
    def checkpoint(self) -> Checkpoint | None:
        row = self.db.execute(
            "SELECT block, block_hash, log_index FROM follower_checkpoint WHERE name=?", (self.name,)
        ).fetchone()
        return Checkpoint(*row) if row else None

    def _save(self, block: int, block_hash: str, log_index: int) -> None:
        self.db.execute(
            "INSERT INTO follower_checkpoint(name, block, block_hash, log_index) VALUES (?,?,?,?) "
            "ON CONFLICT(name) DO UPDATE SET block=excluded.block, block_hash=excluded.block_hash, "
            "log_index=excluded.log_index",
            (self.name, block, block_hash, log_index),
        )

    def _remember(self, blocks: dict[int, str]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO follower_blocks(name, block, block_hash) VALUES (?,?,?)",
            [(self.name, b, h) for b, h in blocks.items()],
        )
        self.db.execute(
            "DELETE FROM follower_blocks WHERE name=? AND block < "
            "(SELECT MIN(block) FROM (SELECT block FROM follower_blocks WHERE name=? ORDER BY block DESC LIMIT ?))",
            (self.name, self.name, RECENT_BLOCKS),
        )

    # -- polling -------------------------------------------------------------------------------
    def poll(self) -> int:
        """Delivers every event up to the confirmed head; returns how many were delivered."""
        with self.lock:
            self._check_reorg()
            head = self.chain.block_number() - self.confirmations
            cp = self.checkpoint
            start = self.start_block if cp is None else (cp.block + 1 if cp.log_index == BLOCK_DONE else cp.block)
            delivered = 0
            while start <= head:
                end = min(head, start + self.page_size - 1)
                end_hash = self._block_hash(end)
                try:
                    events = self._fetch(start, end)
                except TransactionFailed as e:
                    span = end - start + 1
                    if span == 1:
                        raise
                    # Halve what was refused (not the page size, which may exceed what was asked) and do
                    # not grow back to a refused size until many pages went through.
                    self.page_size = max(1, span // 2)
                    self._ceiling = span - 1
                    self._pages_ok = 0
                    log.info("eth_getLogs refused %d..%d (%s); page size now %d", start, end, e, self.page_size)
                    continue
                if self._block_hash(end) != end_hash:
                    # The chain changed while the logs were read: they may belong to a fork that is gone.
                    # Drop the page; the next poll checks for a reorg from the checkpoint and reads again.
                    log.info("block %d changed while reading its logs; re-reading at the next poll", end)
                    break
                delivered += self._deliver(events, end, end_hash)
                start = end + 1
                self._pages_ok += 1
                if self._pages_ok >= REPROBE_PAGES:
                    self._ceiling = self.max_page
                self.page_size = min(self._ceiling, self.max_page, self.page_size * 2)
            return delivered

    def _fetch(self, start: int, end: int) -> list[ChainEvent]:
        out: list[ChainEvent] = []
        for topics in self.filters:
            params: dict[str, Any] = {"address": self.deployment.market, "fromBlock": hex(start), "toBlock": hex(end)}
            if topics:
                params["topics"] = topics
            for raw in self.chain.call_rpc("eth_getLogs", [params]) or []:
                if raw.get("removed"):
                    continue
                ev = self.decoder.decode(normalise_log(raw))
                if isinstance(ev, Undecodable):
                    self._note_undecodable(ev)
                out.append(ev)
        return sort_events(out)

    def _note_undecodable(self, ev: Undecodable) -> None:
        """Counts an undecodable log, and logs the first of each kind (handlers still receive it)."""
        self.undecodable += 1
        kind = (ev.event, ev.reason.split(":", 1)[0])
        if kind not in self._undecodable_kinds:
            self._undecodable_kinds.add(kind)
            log.error("undecodable %s log at block %d (tx %s): %s; skipped, and counted from now on",
                      ev.event or "unknown", ev.block_number, ev.tx_hash, ev.reason)

    def _deliver(self, events: list[ChainEvent], end: int, end_hash: str) -> int:
        cp = self.checkpoint
        done = (cp.block, cp.log_index) if cp else (-1, -1)
        blocks: dict[int, str] = {}
        n = 0
        for ev in events:
            if ev.position <= done:
                continue  # delivered before a restart: never twice
            self.db.execute("BEGIN")
            try:
                for h in self._handlers:
                    h.on_event(ev)
                self._save(ev.block_number, ev.block_hash, ev.log_index)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            blocks[ev.block_number] = ev.block_hash
            n += 1
        blocks[end] = end_hash
        self.db.execute("BEGIN")
        self._save(end, end_hash, BLOCK_DONE)
        self._remember(blocks)
        self.db.execute("COMMIT")
        self.delivered += n
        return n

    def _block_hash(self, number: int) -> str:
        block = self.chain.call_rpc("eth_getBlockByNumber", [hex(number), False])
        if block is None:
            raise ChainUnavailable(f"block {number} not available yet")
        return str(block["hash"])

    def _check_reorg(self) -> None:
        cp = self.checkpoint
        if cp is None:
            return
        block = self.chain.call_rpc("eth_getBlockByNumber", [hex(cp.block), False])
        if block is not None and block["hash"] == cp.block_hash:
            return
        ancestor: tuple[int, str] | None = None
        rows = self.db.execute(
            "SELECT block, block_hash FROM follower_blocks WHERE name=? AND block < ? ORDER BY block DESC",
            (self.name, cp.block),
        ).fetchall()
        for number, stored in rows:
            b = self.chain.call_rpc("eth_getBlockByNumber", [hex(number), False])
            if b is not None and b["hash"] == stored:
                ancestor = (number, stored)
                break
        self.reorgs += 1
        self.db.execute("BEGIN")
        if ancestor is None:
            log.warning("reorg below every remembered block: replaying from block %d", self.start_block)
            self.db.execute("DELETE FROM follower_checkpoint WHERE name=?", (self.name,))
            self.db.execute("DELETE FROM follower_blocks WHERE name=?", (self.name,))
            rewind_to = self.start_block - 1
        else:
            log.warning("reorg: block %d changed; rewinding to common ancestor %d", cp.block, ancestor[0])
            self._save(ancestor[0], ancestor[1], BLOCK_DONE)
            self.db.execute("DELETE FROM follower_blocks WHERE name=? AND block > ?", (self.name, ancestor[0]))
            rewind_to = ancestor[0]
        self.db.execute("COMMIT")
        for h in self._handlers:
            on_reorg = getattr(h, "on_reorg", None)
            if on_reorg is not None:
                on_reorg(rewind_to)

    # -- running -------------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, interval: float = 0.2, on_idle: Callable[[], None] | None = None) -> None:
        """Polls until ``stop`` is set; survives the node going away (backs off, reconnects, catches up)."""
        poll_until(stop, self.poll, interval=interval, on_idle=on_idle)

    def close(self) -> None:
        self.db.close()


def poll_until(stop: threading.Event, poll: Callable[[], object], *, interval: float = 0.2,
               on_idle: Callable[[], None] | None = None) -> None:
    """Calls ``poll`` every ``interval`` s until ``stop`` is set, backing off (0.2 s doubling to 5 s) while the
    node is unreachable."""
    backoff = interval
    while not stop.is_set():
        try:
            poll()
            if on_idle is not None:
                on_idle()
            backoff = interval
            stop.wait(interval)
        except ChainUnavailable as e:
            log.warning("chain unavailable (%s); retrying in %.1f s", e, backoff)
            stop.wait(backoff)
            backoff = min(5.0, backoff * 2)


def block_is(chain: Chain, number: int, block_hash: str) -> bool:
    """Whether the node's block ``number`` still has ``block_hash`` (False once a reorg replaced or removed it)."""
    block = chain.call_rpc("eth_getBlockByNumber", [hex(number), False])
    return block is not None and str(block["hash"]).lower() == block_hash.lower()


class _FnHandler:
    def __init__(self, fn: Callable[[ChainEvent], None]) -> None:
        self.fn = fn

    def on_event(self, event: ChainEvent) -> None:
        self.fn(event)
