"""The worker's local journal (SQLite): chain job id <-> executor job id, phase and outcome.

It lives in the same SQLite file as the worker's follower checkpoint, so recording a new
assignment and advancing the checkpoint commit together.

Durability: the file is in WAL mode with ``synchronous=NORMAL``: a commit survives the worker's
death (kill -9) but not necessarily a power loss, which may roll the file back to an earlier
consistent state. That is safe: the worker decides from the chain and the executor, and replays
the events after its checkpoint; an fsync per journal write (~3 ms each) is not worth it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dsq_chain import lifecycle
from dsq_chain.types import JobStatus


class Phase(StrEnum):
    """Where the worker is with a job."""

    NEW = "NEW"  # assignment seen, not yet claimed or refused
    CLAIMED = "CLAIMED"  # claim mined (chain: SCHEDULED)
    SUBMITTED = "SUBMITTED"  # handed to the executor
    RUNNING = "RUNNING"  # start reported (chain: RUNNING)
    DONE = "DONE"  # final on chain (or no longer ours); nothing left to do

    @property
    def status(self) -> JobStatus | None:
        """The on-chain status this phase stands for (None for DONE: final, or no longer this provider's)."""
        return _PHASE_STATUS[self]


_PHASE_STATUS: dict[Phase, JobStatus | None] = {
    Phase.NEW: JobStatus.META_SCHEDULED,
    Phase.CLAIMED: JobStatus.SCHEDULED,
    Phase.SUBMITTED: JobStatus.SCHEDULED,
    Phase.RUNNING: JobStatus.RUNNING,
    Phase.DONE: None,
}


class JournalError(RuntimeError):
    """A phase change the lifecycle does not allow (a bug in the worker, never the chain's doing)."""


def can_enter(old: Phase, new: Phase) -> bool:
    """Whether the journal may move a job from ``old`` to ``new``: to DONE always; otherwise only where the
    lifecycle table leads from the status ``old`` stands for to the one ``new`` stands for (a worker that
    restarts may catch up several steps at once, never go back)."""
    if new is Phase.DONE or old is new:
        return True
    src, dst = old.status, new.status
    if src is None or dst is None:
        return False
    return src is dst or (lifecycle.reachable(src, dst) and {dst} <= lifecycle.HOLDS_CAPACITY)


SCHEMA = """
CREATE TABLE IF NOT EXISTS worker_jobs (
    job_id INTEGER PRIMARY KEY,
    phase TEXT NOT NULL,
    exec_id TEXT,
    time_limit_s INTEGER NOT NULL DEFAULT 0,
    chain_status TEXT,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    failures INTEGER NOT NULL DEFAULT 0,
    seen_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS worker_jobs_phase ON worker_jobs(phase);
"""
#: Columns added after the first release (a journal written before gains them, empty, when opened):
#: the block (number, hash) of the job's last mined report, the transaction of the submission the row is
#: about, and an execution that belonged to an earlier assignment of the same id (never adopted again).
LATER_COLUMNS = {"landed_block": "INTEGER", "landed_hash": "TEXT", "submission": "TEXT", "stale_exec": "TEXT"}
COLUMNS = ("job_id, phase, exec_id, time_limit_s, chain_status, exit_code, reason, failures, seen_at, updated_at, "
           + ", ".join(LATER_COLUMNS))


@dataclass(frozen=True, slots=True)
class Entry:
    job_id: int
    phase: Phase
    exec_id: str | None
    time_limit_s: int
    chain_status: str | None
    exit_code: int | None
    reason: str
    failures: int
    seen_at: float
    updated_at: float
    #: Transaction hash of the submission the row is about (None: not looked up by this journal).
    submission: str | None = None
    #: An execution of an earlier assignment of this id (ended or cancelled): never adopted for this one.
    stale_exec: str | None = None


class Journal:
    """Rows of :class:`Entry` keyed by chain job id."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(SCHEMA)
        have = {str(r[1]) for r in self.db.execute("PRAGMA table_info(worker_jobs)").fetchall()}
        for name, kind in LATER_COLUMNS.items():
            if name not in have:
                self.db.execute(f"ALTER TABLE worker_jobs ADD COLUMN {name} {kind}")
        self.db.execute("CREATE INDEX IF NOT EXISTS worker_jobs_landed ON worker_jobs(landed_block)")
        self.db.execute("PRAGMA synchronous=NORMAL")
        #: Active jobs allowed one move back after a reorg (see :meth:`rewound`).
        self._rewound: set[int] = set()

    def add(self, job_id: int) -> bool:
        """Records a newly seen assignment (again after a release: the row is reset, and the execution of the
        earlier assignment is remembered as stale). True if new."""
        row = self.get(job_id)
        if row is not None and row.phase is not Phase.DONE:
            return False
        self._reset(job_id, row)
        return True

    def renew(self, job_id: int) -> None:
        """The id now stands for another submission (a reorg dropped the one the row was about): the row
        starts again at NEW, its execution remembered as stale."""
        self._reset(job_id, self.get(job_id))
        self._rewound.discard(job_id)

    def _reset(self, job_id: int, row: Entry | None) -> None:
        now = time.time()
        stale = row.exec_id or row.stale_exec if row is not None else None
        self.db.execute(
            "INSERT OR REPLACE INTO worker_jobs(job_id, phase, seen_at, updated_at, stale_exec) VALUES (?,?,?,?,?)",
            (job_id, Phase.NEW.value, now, now, stale),
        )

    def get(self, job_id: int) -> Entry | None:
        row = self.db.execute(f"SELECT {COLUMNS} FROM worker_jobs WHERE job_id=?", (job_id,)).fetchone()
        return _entry(row) if row else None

    def active(self) -> list[Entry]:
        live = [p.value for p in Phase if p is not Phase.DONE]
        rows = self.db.execute(f"SELECT {COLUMNS} FROM worker_jobs WHERE phase IN ({','.join('?' * len(live))}) "
                               "ORDER BY job_id", live)
        return [_entry(r) for r in rows.fetchall()]

    def all(self) -> list[Entry]:
        return [_entry(r) for r in self.db.execute(f"SELECT {COLUMNS} FROM worker_jobs ORDER BY job_id").fetchall()]

    def landed_after(self, block: int) -> list[tuple[int, int, str]]:
        """(job id, block, block hash) of every job whose last report was mined after ``block``."""
        rows = self.db.execute("SELECT job_id, landed_block, landed_hash FROM worker_jobs WHERE landed_block > ? "
                               "ORDER BY job_id", (block,)).fetchall()
        return [(int(j), int(b), str(h)) for j, b, h in rows]

    def transition(self, job_id: int, phase: Phase, **fields: object) -> None:
        """Moves a job to ``phase`` (with other fields), checked against the lifecycle (:func:`can_enter`).

        The one way back is a reorg: after :meth:`rewound`, each active job may move once to any phase
        (the chain it follows is no longer the one its phase was recorded on).
        """
        row = self.get(job_id)
        if row is None:
            raise JournalError(f"job {job_id} is not in the journal")
        if not can_enter(row.phase, phase):
            if job_id not in self._rewound:
                raise JournalError(f"job {job_id}: {row.phase} -> {phase} is not a move the lifecycle allows")
            self._rewound.discard(job_id)
        self._write(job_id, phase=phase.value, **fields)

    def rewound(self, job_ids: Iterable[int] | None = None) -> None:
        """The chain reorganised: every active job (or those given) may go back once, to where the surviving
        chain has it."""
        self._rewound |= {e.job_id for e in self.active()} if job_ids is None else set(job_ids)

    def revive(self, job_id: int, phase: Phase, reason: str | None = None) -> None:
        """The block of the report that ended the job is gone: the row is active again, at ``phase`` (with
        ``reason``, when given), and may go back once more (to where the surviving chain has the job)."""
        fields: dict[str, object] = {} if reason is None else {"reason": reason}
        self._write(job_id, phase=phase.value, landed_block=None, landed_hash=None, **fields)
        self._rewound.add(job_id)

    def update(self, job_id: int, **fields: object) -> None:
        """Sets fields other than the phase (use :meth:`transition` for that)."""
        if "phase" in fields:
            raise JournalError("the phase changes through transition(), which checks it")
        self._write(job_id, **fields)

    def _write(self, job_id: int, **fields: object) -> None:
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k}=?" for k in fields)
        self.db.execute(f"UPDATE worker_jobs SET {cols} WHERE job_id=?", (*fields.values(), job_id))

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT phase, COUNT(*) FROM worker_jobs GROUP BY phase").fetchall()
        return {p: int(n) for p, n in rows}


def _entry(row: tuple[Any, ...]) -> Entry:
    job_id, phase, exec_id, limit, chain_status, exit_code, reason, failures, seen, updated, *later = row
    _block, _hash, submission, stale = later
    return Entry(int(job_id), Phase(str(phase)), None if exec_id is None else str(exec_id), int(limit),
                 None if chain_status is None else str(chain_status),
                 None if exit_code is None else int(exit_code),
                 str(reason), int(failures), float(seen), float(updated),
                 None if submission is None else str(submission), None if stale is None else str(stale))
