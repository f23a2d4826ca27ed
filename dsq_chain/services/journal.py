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


class Journal:
    """Rows of :class:`Entry` keyed by chain job id."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA synchronous=NORMAL")
        #: Active jobs allowed one move back after a reorg (see :meth:`rewound`).
        self._rewound: set[int] = set()

    def add(self, job_id: int) -> bool:
        """Records a newly seen assignment (again after a release: the row is reset). True if new."""
        now = time.time()
        row = self.get(job_id)
        if row is not None and row.phase is not Phase.DONE:
            return False
        self.db.execute(
            "INSERT OR REPLACE INTO worker_jobs(job_id, phase, seen_at, updated_at) VALUES (?,?,?,?)",
            (job_id, Phase.NEW.value, now, now),
        )
        return True

    def get(self, job_id: int) -> Entry | None:
        row = self.db.execute("SELECT * FROM worker_jobs WHERE job_id=?", (job_id,)).fetchone()
        return _entry(row) if row else None

    def active(self) -> list[Entry]:
        live = [p.value for p in Phase if p is not Phase.DONE]
        rows = self.db.execute(f"SELECT * FROM worker_jobs WHERE phase IN ({','.join('?' * len(live))}) "
                               "ORDER BY job_id", live)
        return [_entry(r) for r in rows.fetchall()]

    def all(self) -> list[Entry]:
        return [_entry(r) for r in self.db.execute("SELECT * FROM worker_jobs ORDER BY job_id").fetchall()]

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

    def rewound(self) -> None:
        """The chain reorganised: every active job may go back once, to where the surviving chain has it."""
        self._rewound |= {e.job_id for e in self.active()}

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
    job_id, phase, exec_id, limit, chain_status, exit_code, reason, failures, seen, updated = row
    return Entry(int(job_id), Phase(str(phase)), None if exec_id is None else str(exec_id), int(limit),
                 None if chain_status is None else str(chain_status),
                 None if exit_code is None else int(exit_code),
                 str(reason), int(failures), float(seen), float(updated))
