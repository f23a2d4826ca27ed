"""Waiting for a job to reach a status: what the sync and async clients' ``wait_for`` do with each read."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from dsq_chain.types import Job, JobStatus


class Waiter:
    """What ``wait_for`` does with each read of the job (sync and async clients alike)."""

    def __init__(self, job: int | Job, statuses: Iterable[JobStatus], timeout: float,
                 progress: Callable[[Job], None] | None) -> None:
        self.job_id = job.id if isinstance(job, Job) else int(job)
        self.wanted = frozenset(statuses)
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.progress = progress
        self.last: JobStatus | None = None

    def seen(self, current: Job) -> Job | None:
        """``current`` when it is in a wanted status, else None (poll again); reports status changes to
        ``progress``; raises TimeoutError naming the last status once the deadline passed."""
        if self.progress is not None and current.status is not self.last:
            self.progress(current)
        self.last = current.status
        if current.status in self.wanted:
            return current
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"job {self.job_id} still {current.status.name} after {self.timeout:.0f} s")
        return None
