"""Sending a provider's reports: batching, isolating the rows that revert, and telling what went through.

A worker's tick produces report rows (:class:`~dsq_chain.services.decisions.Action`); :class:`ReportSender`
sends them in as few ``report`` transactions as it can (:data:`MAX_REPORT_ROWS` per transaction, a
job's rows always together, since a START and its FINISH must land in the same block). When a batch
reverts, each job's rows are checked alone by gas estimation (nothing sent): those that would revert
are reported as failed, the rest go in one transaction again, and one job at a time only if that
reverts too (a race with another transaction). Fees, nonces and replacement of a transaction left
unmined are the wallet's (:mod:`dsq_chain.sdk.chain`). The sender decides nothing about jobs: it tells
its :class:`ReportListener` which rows were mined, which failed, and when the chain went down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from hexbytes import HexBytes
from web3.types import TxReceipt

from dsq_chain.errors import ContractError, TransactionFailed
from dsq_chain.sdk.chain import CHAIN_DOWN as NODE_DOWN
from dsq_chain.sdk.chain import Call
from dsq_chain.sdk.client import ProviderClient, skipped_entries
from dsq_chain.sdk.receipts import Receipt
from dsq_chain.services.decisions import Action
from dsq_chain.types import ReportAction

log = logging.getLogger("dsq.worker")

#: At most this many report rows per transaction (a FINISH row costs ~19k gas: far below a 30M block).
MAX_REPORT_ROWS = 400
#: Errors meaning "the node is unreachable right now": jobs keep running, reports wait. (A JSON-RPC error
#: answer, TransactionFailed, is treated the same here: the reports are retried.)
CHAIN_DOWN: tuple[type[BaseException], ...] = (*NODE_DOWN, TransactionFailed)


class ReportListener(Protocol):
    """What the sender tells about the rows it was given."""

    def sent(self, actions: list[Action], t0: float, block: tuple[int, str] | None = None) -> None:
        """``actions`` were mined (``t0``: when sending began), in ``block`` (number, hash)."""

    def failed(self, actions: list[Action], error: ContractError) -> None:
        """One job's ``actions`` revert alone, with ``error``."""

    def down(self, error: BaseException) -> None:
        """The node could not be reached; the rows not yet sent wait for the next tick."""


class ReportSender:
    """Sends report rows for a provider; see the module docstring."""

    def __init__(self, client: ProviderClient, listener: ReportListener) -> None:
        self.client = client
        self.listener = listener

    def send(self, actions: list[Action]) -> list[Action]:
        """Sends the rows, :data:`MAX_REPORT_ROWS` per transaction; returns those that were mined."""
        sent: list[Action] = []
        chunk: list[Action] = []
        for group in by_job(actions):
            if chunk and len(chunk) + len(group) > MAX_REPORT_ROWS:
                done, up = self._send_batch(chunk)
                sent += done
                chunk = []
                if not up:
                    return sent
            chunk += group
        if chunk:
            sent += self._send_batch(chunk)[0]
        return sent

    def _send_batch(self, actions: list[Action]) -> tuple[list[Action], bool]:
        """Sends the rows in one transaction; returns those mined, and whether the node is still up."""
        t0 = time.monotonic()
        try:
            return self._landed(actions, self.client.report(rows(actions)), t0), True
        except ContractError as e:
            groups = by_job(actions)
            if len(groups) == 1:
                self.listener.failed(actions, e)
                return [], True
            log.info("batched report of %d reverted (%s); leaving out the jobs that fail alone", len(actions), e)
        except CHAIN_DOWN as e:
            self.listener.down(e)
            return [], False
        good: list[list[Action]] = []
        for group in groups:
            try:
                self.client.wallet.estimate(Call(self.client.market.functions.report(rows(group))))
                good.append(group)
            except ContractError as e:
                self.listener.failed(group, e)
            except CHAIN_DOWN as e:
                self.listener.down(e)
                return [], False
        if not good:
            return [], True
        flat = [a for g in good for a in g]
        try:
            return self._landed(flat, self.client.report(rows(flat)), t0), True
        except ContractError as e:
            log.info("batched report of %d reverted again (%s); sending one job at a time", len(flat), e)
        except CHAIN_DOWN as e:
            self.listener.down(e)
            return [], False
        sent: list[Action] = []
        for group in good:
            try:
                sent += self._landed(group, self.client.report(rows(group)), t0)
            except ContractError as e:
                self.listener.failed(group, e)
            except CHAIN_DOWN as e:
                self.listener.down(e)
                return sent, False
        return sent, True


    def _landed(self, actions: list[Action], receipt: Receipt | TxReceipt, t0: float) -> list[Action]:
        """The actions of a mined report the chain applied; a job whose entries it skipped (a cancel or a
        ban landed first) is a failure, with the error the chain named in ``EntrySkipped``."""
        skipped = skipped_entries(self.client.market, receipt)
        for job_id, error in skipped.items():
            self.listener.failed([a for a in actions if a.job_id == job_id], error)
        done = [a for a in actions if a.job_id not in skipped]
        raw = receipt.raw if isinstance(receipt, Receipt) else receipt
        self.listener.sent(done, t0, (int(raw["blockNumber"]), HexBytes(raw["blockHash"]).to_0x_hex()))
        return done


def rows(actions: Sequence[Action]) -> list[tuple[int, ReportAction, int, int]]:
    """The ``report`` call's rows: job, action, exit code, end time (FINISH)."""
    return [(a.job_id, a.action, a.exit_code, a.end_time) for a in actions]


def by_job(actions: Sequence[Action]) -> list[list[Action]]:
    """Actions grouped by job, in order (a job's START and FINISH must go together)."""
    groups: dict[int, list[Action]] = {}
    for a in actions:
        groups.setdefault(a.job_id, []).append(a)
    return list(groups.values())
