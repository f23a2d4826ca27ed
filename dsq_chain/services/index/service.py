"""The index service: follows the market with the reorg-safe follower into an SQL database.

``IndexService(chain, deployment, url)`` keeps every job, provider, status change (with block and
time), bill, top-up and assignment in SQLite (``sqlite:///path``, the default) or PostgreSQL
(``postgresql://...``). The follower's checkpoint and recent block hashes live in the index itself and
are committed with the rows they account for, so a crash or restart at any point neither loses nor
applies an event twice, whatever the database.

Reorgs: the follower finds the common ancestor and calls :meth:`IndexService.on_reorg`, which rolls
``jobs`` and ``providers`` back with the saved old rows (``undo``), deletes history above the ancestor,
bumps the ``epoch`` (readers reload) and lets the follower replay the new branch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, func, insert, select, update
from sqlalchemy.engine import make_url

from dsq_chain.errors import ChainUnavailable, InputError
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import ChainEvent
from dsq_chain.services.follower import EventFollower, poll_until
from dsq_chain.services.index import schema as s
from dsq_chain.services.index.apply import Applier
from dsq_chain.services.index.store import Store

log = logging.getLogger("dsq.index")

DEFAULT_URL = "sqlite:///.dsq/index.sqlite"
#: A long catch-up is committed every this many events (each commit holds a consistent checkpoint).
COMMIT_EVERY = 20_000


def make_engine(url: str) -> Engine:
    """An engine for ``url``: ``sqlite:///FILE`` (WAL, foreign writers wait) or ``postgresql://...`` (psycopg 3)."""
    try:
        parsed = make_url(url)
    except Exception as e:  # sqlalchemy's ArgumentError: say which URL and what is expected
        raise InputError(f"index URL {url!r} is not a database URL ({e}); expected sqlite:///FILE or "
                         "postgresql://USER@HOST:PORT/DB") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, pool_size=8, max_overflow=8)
    if backend != "sqlite":
        raise InputError(f"index URL {url!r}: unsupported database {backend!r}; expected sqlite or postgresql")
    if parsed.database and parsed.database != ":memory:":
        from pathlib import Path

        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def get_meta(conn: Connection, key: str) -> str | None:
    row = conn.execute(select(s.meta.c.value).where(s.meta.c.key == key)).first()
    return None if row is None else str(row[0])


def set_meta(conn: Connection, **values: Any) -> None:
    conn.execute(delete(s.meta).where(s.meta.c.key.in_(list(values))))
    conn.execute(insert(s.meta), [{"key": k, "value": str(v)} for k, v in values.items()])


class IndexService:
    """Builds and keeps the index; a library object first (``dsq index run`` wires it)."""

    def __init__(
        self,
        chain: Chain,
        deployment: Deployment,
        url: str = DEFAULT_URL,
        *,
        confirmations: int = 0,
        page_size: int = 2_000,
        commit_every: int = COMMIT_EVERY,
    ) -> None:
        self.chain = chain
        self.deployment = deployment
        self.url = url
        self.engine = make_engine(url)
        s.migrate(self.engine)
        self.commit_every = commit_every
        self.follower = EventFollower(chain, deployment, ":memory:", name="index", confirmations=confirmations,
                                      page_size=page_size, handlers=[self])
        self.lock = threading.RLock()
        self._conn: Connection | None = None
        self._store: Store | None = None
        self._applier = Applier(None, self._block_time)  # type: ignore[arg-type]  # given a store per poll
        self._times: dict[int, int] = {}
        self._pending = 0
        self.version = 0
        self._restore()

    # -- checkpoint in the index -------------------------------------------------------------------
    def _restore(self) -> None:
        """Loads the index's checkpoint into the follower (whose own database is scratch memory)."""
        with self.engine.begin() as conn:
            market = get_meta(conn, "market")
            if market is None:
                set_meta(conn, market=self.deployment.market, chain_id=self.chain.chain_id,
                         start_block=self.deployment.block, version=0, epoch=0)
            elif market.lower() != self.deployment.market.lower():
                raise InputError(f"the index at {self.engine.url.render_as_string(hide_password=True)} follows "
                                 f"market {market}, not {self.deployment.market}: use another --db")
            self.version = int(get_meta(conn, "version") or 0)
            cp = get_meta(conn, "checkpoint")
            blocks = conn.execute(select(s.checkpoint_blocks.c.block, s.checkpoint_blocks.c.hash)).all()
        db = self.follower.db
        db.execute("DELETE FROM follower_checkpoint")
        db.execute("DELETE FROM follower_blocks")
        if cp is not None:
            block, block_hash, log_index = json.loads(cp)
            db.execute("INSERT INTO follower_checkpoint VALUES (?,?,?,?)", ("index", block, block_hash, log_index))
        db.executemany("INSERT INTO follower_blocks VALUES (?,?,?)", [("index", b, h) for b, h in blocks])

    def _save_checkpoint(self, conn: Connection, position: tuple[int, str, int] | None = None) -> None:
        if position is None:
            cp = self.follower.checkpoint
            if cp is None:
                conn.execute(delete(s.meta).where(s.meta.c.key == "checkpoint"))
                conn.execute(delete(s.checkpoint_blocks))
                set_meta(conn, version=self.version)
                return
            position = (cp.block, cp.block_hash, cp.log_index)
        rows = self.follower.db.execute("SELECT block, block_hash FROM follower_blocks WHERE name='index'").fetchall()
        conn.execute(delete(s.checkpoint_blocks))
        if rows:
            conn.execute(insert(s.checkpoint_blocks), [{"block": b, "hash": h} for b, h in rows])
            # Undo rows older than every remembered block can never be needed: a reorg that deep replays all.
            conn.execute(delete(s.undo).where(s.undo.c.block < min(b for b, _ in rows)))
        head_time = self._times.get(position[0])
        set_meta(conn, checkpoint=json.dumps(list(position)), version=self.version, head_block=position[0],
                 **({"head_time": head_time} if head_time is not None else {}))

    # -- follower handler --------------------------------------------------------------------------
    def on_event(self, ev: ChainEvent) -> None:
        assert self._conn is not None
        self.version += 1
        self._applier.apply(ev, self.version)
        self._pending += 1
        if self._pending >= self.commit_every:
            assert self._store is not None
            self._store.flush()
            self._save_checkpoint(self._conn, (ev.block_number, ev.block_hash, ev.log_index))
            self._conn.commit()
            self._pending = 0

    def on_reorg(self, block: int) -> None:
        """Everything above ``block`` is gone: roll back to it (the follower then replays)."""
        assert self._conn is not None and self._store is not None
        conn = self._conn
        self._store.flush()
        self._store.reset()
        self._store.rows[s.providers.name].clear()
        log.warning("index: reorg back to block %d; rolling back and replaying", block)
        tables = {t.name: t for t in (s.jobs, s.providers)}
        undo_rows = conn.execute(select(s.undo).where(s.undo.c.block > block).order_by(s.undo.c.seq.desc())).all()
        for row in undo_rows:
            table = tables[row.tbl]
            old = json.loads(row.old)
            pk = next(iter(table.primary_key.columns))
            conn.execute(update(table).where(pk == old[pk.name]).values(**old))
        conn.execute(delete(s.undo).where(s.undo.c.block > block))
        conn.execute(delete(s.jobs).where(s.jobs.c.submitted_block > block))
        conn.execute(delete(s.providers).where(s.providers.c.registered_block > block))
        for table, column in s.HISTORY:
            conn.execute(delete(table).where(table.c[column] > block))
        self._times = {b: t for b, t in self._times.items() if b <= block}
        epoch = int(get_meta(conn, "epoch") or 0) + 1
        self.version += 1
        set_meta(conn, epoch=epoch, reorgs=int(get_meta(conn, "reorgs") or 0) + 1)
        # Readers watching versions see every row restored above as changed.
        if undo_rows:
            conn.execute(update(s.jobs).where(s.jobs.c.id.in_(
                [int(r.key) for r in undo_rows if r.tbl == s.jobs.name])).values(version=self.version))

    def _block_time(self, number: int) -> int:
        t = self._times.get(number)
        if t is None:
            assert self._conn is not None
            row = self._conn.execute(select(s.blocks.c.time).where(s.blocks.c.number == number)).first()
            if row is not None:
                t = int(row[0])
            else:
                t = self.chain.timestamp(number)
                self._conn.execute(insert(s.blocks).values(number=number, time=t))
            if len(self._times) > 50_000:
                self._times.clear()
            self._times[number] = t
        return t

    # -- running -------------------------------------------------------------------------------
    def poll(self) -> int:
        """Indexes every new event up to the confirmed head; returns how many were delivered."""
        with self.lock, self.engine.connect() as conn:
            self._conn = conn
            store = self._store = Store(conn)
            self._applier.store = store
            self._pending = 0
            try:
                n = self.follower.poll()
            except ChainUnavailable:
                store.flush()
                self._save_checkpoint(conn)  # what was delivered before the node went away is consistent
                conn.commit()
                raise
            except BaseException:
                conn.rollback()
                self._times.clear()
                self._restore()  # back to the last committed checkpoint
                raise
            finally:
                self._conn = None
            store.flush()
            head = self.chain.block_number() - self.follower.confirmations
            if head >= 0 and head not in self._times:
                with contextlib.suppress(ChainUnavailable):
                    self._times[head] = self.chain.timestamp(head)
            self._save_checkpoint(conn)
            if head in self._times:
                set_meta(conn, chain_head=head, chain_head_time=self._times[head])
            conn.commit()
            return n

    @property
    def errors(self) -> int:
        """Events skipped as malformed since this service started."""
        return self._applier.errors

    def run(self, stop: threading.Event, *, interval: float = 0.2) -> None:
        """Polls until ``stop`` is set; survives the node going away (backs off, reconnects, catches up)."""
        poll_until(stop, self.poll, interval=interval)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(s.jobs)).scalar_one())

    def close(self) -> None:
        self.follower.close()
        self.engine.dispose()
