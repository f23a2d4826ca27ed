"""What a provider worker does about reorgs its follower may not see, and about job ids a reorg reuses.

Two things can go wrong when blocks vanish:

* **A report's block vanishes.** Each mined report is journaled with the block (number, hash) of its
  receipt. The follower sees a reorg only when its checkpoint's block changes; a report mined after the
  checkpoint (the follower lags by ``confirmations``, or simply had not polled yet) can vanish with the
  follower none the wiser. So every tick checks the blocks of the reports the follower had not yet
  passed at its previous poll (and, after a reorg it did see, of every report after the common ancestor,
  as far back as the follower remembers blocks: :data:`~dsq_chain.services.follower.RECENT_BLOCKS`);
  a job whose report's block is gone is made active again and decided from the surviving chain (a
  vanished FINISH is sent again with the end time first seen, not a later one), and the nonce is read
  again. Without this a job whose FINISH vanished would stay RUNNING on chain while the journal says DONE.
* **A job id is reused.** A reorg that drops a submission lets the surviving chain give its id to
  another submission. The journal records the transaction of the submission each job was validated for;
  after a reorg, each active job's submission is looked up again: if it is gone or another one, the
  worker forgets what it cached for the old one (workflow bytes, checks), cancels the old execution, and
  the row starts again at NEW for the new submission, its old execution remembered as stale so that it is
  never adopted for the new job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dsq_chain.services.decisions import REPORTED_OUT_OF_CREDITS
from dsq_chain.services.follower import RECENT_BLOCKS, block_is
from dsq_chain.services.journal import Entry, Phase
from dsq_chain.types import Job, JobStatus

if TYPE_CHECKING:
    from dsq_chain.services.worker import ProviderWorker

log = logging.getLogger("dsq.worker")


class ReorgGuard:
    """A worker's checks after reorgs; see the module docstring."""

    def __init__(self, worker: ProviderWorker) -> None:
        self.worker = worker
        cp = worker.follower.checkpoint
        #: Reports mined after this block are checked at the next tick (the follower's checkpoint then).
        self.checked_to = cp.block if cp else 0
        #: Active jobs whose submission must be looked up again (a reorg happened).
        self.suspects: set[int] = set()

    def rewind(self, block: int) -> None:
        """The follower saw a reorg back to ``block``: caches of submissions go, active jobs become suspects,
        and the reports mined after ``block`` are checked at the next tick."""
        w = self.worker
        w.workflows.forget()
        self.suspects |= {e.job_id for e in w.journal.active()}
        self.checked_to = min(self.checked_to, block)

    # -- reports whose block vanished ----------------------------------------------------------------
    def check_reports(self) -> None:
        """Makes active again the jobs whose last report's block is gone (call right after a follower poll)."""
        w = self.worker
        cp = w.follower.checkpoint
        # A reorg deeper than the follower remembers replays everything; the reports checked stay as recent.
        rows = w.journal.landed_after(max(self.checked_to, (cp.block if cp else 0) - RECENT_BLOCKS))
        gone = {(b, h) for b, h in {(b, h) for _, b, h in rows} if not block_is(w.wallet.chain, b, h)}
        if gone:
            w.wallet.reset_nonce()  # our transactions in those blocks are gone too
        for job_id, number, block_hash in rows:
            if (number, block_hash) in gone:
                self._revive(job_id, number)
            elif cp is not None and number <= cp.block and getattr(w.journal.get(job_id), "phase", None) is Phase.DONE:
                w.clock.forget(job_id)  # the follower has passed its FINISH: a later reorg is its to see
        if cp is not None:
            self.checked_to = cp.block

    def _revive(self, job_id: int, number: int) -> None:
        w = self.worker
        entry = w.journal.get(job_id)
        if entry is None:
            return
        log.warning("job %d: the block %d of its last report is gone (a reorg the follower did not see): deciding "
                    "it again from the surviving chain", job_id, number)
        if entry.phase is Phase.DONE:
            # An OUT_OF_CREDITS that vanished is remembered in the row's reason: the START sent again (when the
            # reorg took it too) records RUNNING as the row's chain status, and the job must end OUT_OF_CREDITS.
            ooc = entry.chain_status == JobStatus.OUT_OF_CREDITS.name
            w.journal.revive(job_id, Phase.RUNNING if entry.exec_id else Phase.NEW,
                             REPORTED_OUT_OF_CREDITS if ooc else None)
        else:
            w.journal.rewound([job_id])
            w.journal.update(job_id, landed_block=None, landed_hash=None)

    # -- job ids given to another submission ---------------------------------------------------------
    def note_submission(self, entry: Entry, job: Job) -> None:
        """Journals the submission ``job`` was validated for (its workflow was just fetched)."""
        tx = self.worker.workflows.submissions.get(job.head_id or job.id)
        if tx is not None and tx != entry.submission:
            self.worker.journal.update(job.id, submission=tx)

    def check_submissions(self, entries: list[Entry], jobs: dict[int, Job]) -> list[Entry]:
        """After a reorg, the active jobs whose submission is gone or another one are started again for the
        submission the chain has now (see the module docstring); returns ``entries`` as they now are."""
        w = self.worker
        if not self.suspects or not w.chain_up:
            return entries
        out: list[Entry] = []
        for entry in entries:
            if entry.job_id not in self.suspects:
                out.append(entry)
                continue
            self.suspects.discard(entry.job_id)
            job = jobs.get(entry.job_id)
            tx: str | None = None
            if job is not None:
                tx = w.workflows.submission(job)
                if entry.submission is None or tx is None or tx == entry.submission:
                    out.append(entry)
                    continue
            what = "gone" if job is None else f"another one now (transaction {tx})"
            w._drop(entry, w.executions.status(entry), f"its submission (transaction {entry.submission}) is {what}: "
                    "a reorg")
            w.clock.forget(entry.job_id)
            log.warning("job %d: the submission it was assigned for (transaction %s) is %s after a reorg: its "
                        "execution %s is stopped%s", entry.job_id, entry.submission, what, entry.exec_id,
                        "" if job is None else "; the job is examined afresh")
            if job is not None:
                w.journal.renew(entry.job_id)
                fresh = w.journal.get(entry.job_id)
                if fresh is not None:
                    out.append(fresh)
        return out
