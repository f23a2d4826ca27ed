"""The index's tables (SQLAlchemy Core) and its versioned migrations.

One schema for SQLite and PostgreSQL. ``meta`` holds the schema version: :func:`migrate` applies each
step of :data:`MIGRATIONS` above it in one transaction, so an index written by an older release is
brought up to date at start, and one written by a newer release is refused with a clear error.

Current-state tables (``jobs``, ``providers``) are updated in place; every in-place update first saves
the old row in ``undo`` so a reorg can roll the rows back to the common ancestor. History tables
(``status_changes``, ``topups``, ``assignments``, ``bills``, ``blocks``) are append-only and carry the
block that wrote them, so a reorg deletes what lies above the ancestor.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    select,
    text,
)

from dsq_chain.errors import InputError

metadata = MetaData()

#: Addresses are 0x-prefixed checksummed hex (42 characters).
ADDRESS = String(42)

meta = Table(
    "dsq_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

#: The follower's checkpoint and the recent block hashes it needs to find a common ancestor after a reorg.
checkpoint_blocks = Table(
    "dsq_checkpoint_blocks", metadata,
    Column("block", BigInteger, primary_key=True),
    Column("hash", String(66), nullable=False),
)

blocks = Table(
    "dsq_blocks", metadata,
    Column("number", BigInteger, primary_key=True),
    Column("time", BigInteger, nullable=False),
)

providers = Table(
    "dsq_providers", metadata,
    Column("address", ADDRESS, primary_key=True),
    Column("provider_id", BigInteger, nullable=False),
    Column("status", Integer, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("cpus", BigInteger, nullable=False),
    Column("gpus", BigInteger, nullable=False),
    Column("mem_mb", BigInteger, nullable=False),
    Column("used_cpus", BigInteger, nullable=False),
    Column("used_gpus", BigInteger, nullable=False),
    Column("used_mem_mb", BigInteger, nullable=False),
    Column("per_cpu_minute", BigInteger, nullable=False),
    Column("per_gpu_minute", BigInteger, nullable=False),
    Column("per_gb_minute", BigInteger, nullable=False),
    Column("labels", Text, nullable=False),  # JSON object key -> value
    Column("finished", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("refused", BigInteger, nullable=False),
    Column("timed_out", BigInteger, nullable=False),
    Column("panicked", BigInteger, nullable=False),
    Column("canceled", BigInteger, nullable=False),
    Column("earnings", BigInteger, nullable=False),
    Column("registered_block", BigInteger, nullable=False),
    Column("registered_time", BigInteger, nullable=False),
    Column("last_report_time", BigInteger),  # last status report the provider sent (claim, start, finish...)
    Column("version", BigInteger, nullable=False),
)

jobs = Table(
    "dsq_jobs", metadata,
    Column("id", BigInteger, primary_key=True),
    Column("head_id", BigInteger, nullable=False),
    Column("owner", ADDRESS, nullable=False),
    Column("name", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("provider", ADDRESS),
    Column("cpus", BigInteger, nullable=False),
    Column("gpus", BigInteger, nullable=False),
    Column("mem_mb", BigInteger, nullable=False),
    Column("max_rate", BigInteger, nullable=False),
    Column("rate", BigInteger, nullable=False),
    # The rate's parts by resource (the provider's prices when it was assigned): the bill's breakdown.
    Column("rate_cpu", BigInteger, nullable=False),
    Column("rate_gpu", BigInteger, nullable=False),
    Column("rate_mem", BigInteger, nullable=False),
    Column("credits", BigInteger, nullable=False),  # escrow at submission
    Column("escrow", BigInteger, nullable=False),  # escrow at submission plus top-ups
    Column("topped_up", BigInteger, nullable=False),
    Column("labels", Text, nullable=False),  # JSON [[key, op symbol, value], ...]: the workflow's full expressions
    Column("problem", Text),  # why the job can never be placed
    Column("excluded", Text, nullable=False),  # JSON list of providers that refused it or let its claim time out
    Column("workflow_hash", String(66), nullable=False),
    Column("submitted_block", BigInteger, nullable=False),
    Column("submitted_time", BigInteger, nullable=False),
    Column("assigned_time", BigInteger),
    Column("started_time", BigInteger),
    Column("ended_time", BigInteger),
    Column("billed", BigInteger),
    Column("refunded", BigInteger),
    Column("exit_code", Integer),
    # External lease reference (Akash Console: the lease owner and its deployment sequence), when submitted with one.
    Column("lease_owner", String(64)),  # akash1... (44 characters)
    Column("lease_dseq", String(24)),
    Column("version", BigInteger, nullable=False),
    Index("ix_dsq_jobs_owner", "owner", "id"),
    Index("ix_dsq_jobs_provider", "provider", "id"),
    Index("ix_dsq_jobs_status", "status", "id"),
    Index("ix_dsq_jobs_lease", "lease_owner", "lease_dseq"),
    Index("ix_dsq_jobs_version", "version"),
)

status_changes = Table(
    "dsq_status_changes", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", BigInteger, nullable=False),
    Column("block", BigInteger, nullable=False),
    Column("log_index", Integer, nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("event", String(32), nullable=False),
    Column("status", Integer),  # None for events that change no status (a top-up)
    Column("provider", ADDRESS),
    Column("detail", Text, nullable=False),
    Index("ix_dsq_status_changes_job", "job_id", "block", "log_index"),
    Index("ix_dsq_status_changes_block", "block"),
)

topups = Table(
    "dsq_topups", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", BigInteger, nullable=False, index=True),
    Column("block", BigInteger, nullable=False, index=True),
    Column("log_index", Integer, nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("payer", ADDRESS, nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("escrow", BigInteger, nullable=False),
)

assignments = Table(
    "dsq_assignments", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", BigInteger, nullable=False, index=True),
    Column("block", BigInteger, nullable=False, index=True),
    Column("log_index", Integer, nullable=False),
    Column("time", BigInteger, nullable=False),
    Column("provider", ADDRESS, nullable=False, index=True),
    Column("rate", BigInteger, nullable=False),
)

#: Assignments that came back: refused by the provider or claim timed out (placement failures).
releases = Table(
    "dsq_releases", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("job_id", BigInteger, nullable=False, index=True),
    Column("block", BigInteger, nullable=False, index=True),
    Column("time", BigInteger, nullable=False),
    Column("provider", ADDRESS, nullable=False),
    Column("reason", String(32), nullable=False),
)

bills = Table(
    "dsq_bills", metadata,
    Column("job_id", BigInteger, primary_key=True),
    Column("block", BigInteger, nullable=False, index=True),
    Column("time", BigInteger, nullable=False, index=True),
    Column("owner", ADDRESS, nullable=False),
    Column("provider", ADDRESS),
    Column("status", Integer, nullable=False),
    Column("exit_code", Integer, nullable=False),
    Column("billed", BigInteger, nullable=False),
    Column("refunded", BigInteger, nullable=False),
    Column("cpu", BigInteger, nullable=False),
    Column("gpu", BigInteger, nullable=False),
    Column("mem", BigInteger, nullable=False),
)

undo = Table(
    "dsq_undo", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("block", BigInteger, nullable=False, index=True),
    Column("tbl", String(32), nullable=False),
    Column("key", String(66), nullable=False),
    Column("old", Text, nullable=False),  # JSON of the row before the update
)

#: Tables a reorg trims by block (column name of the block that wrote each row).
HISTORY = ((status_changes, "block"), (topups, "block"), (assignments, "block"), (releases, "block"),
           (bills, "block"), (blocks, "number"))


def _v1(conn: Connection) -> None:
    metadata.create_all(conn)


#: Schema version -> the step that brings version - 1 to it. Append only.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1}
SCHEMA_VERSION = max(MIGRATIONS)


def schema_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, meta.name):
        return 0
    row = conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
    return int(row[0]) if row else 0


def migrate(engine: Engine) -> int:
    """Brings the index at ``engine`` to :data:`SCHEMA_VERSION`; returns the version it found."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # one migrating process at a time
            conn.execute(text("SELECT pg_advisory_xact_lock(7421001)"))
        found = schema_version(conn)
        if found > SCHEMA_VERSION:
            raise InputError(f"the index at {engine.url.render_as_string(hide_password=True)} has schema version "
                             f"{found}, newer than this release's {SCHEMA_VERSION}: upgrade dsq-chain")
        for version in range(found + 1, SCHEMA_VERSION + 1):
            if version == 1:
                meta.create(conn, checkfirst=True)
            MIGRATIONS[version](conn)
            conn.execute(meta.delete().where(meta.c.key == "schema_version"))
            conn.execute(meta.insert().values(key="schema_version", value=str(version)))
    return found
