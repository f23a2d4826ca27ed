"""The job market's billing rules in Python: one function per rule of ``contracts/JobMarket.sol``.

These are the contract's rules, not a model of them: ``tests/test_billing_rules.py`` checks every
function against the deployed contract on Anvil for random inputs. The market simulator
(:mod:`dsq_chain.simulation`) settles every simulated job with them.

Amounts are credit units (6 decimals), rates credit units per minute, times chain seconds.

* a RUNNING job has used ``rate x (now - start) // 60``, capped by its escrow (:func:`bill_so_far`);
* FINISHED / FAILED: the provider is paid that, the owner gets the rest back (:func:`finish`); a
  report that carries the observed end time bills up to ``min(report time, max(start, end))``;
* OUT_OF_CREDITS: only once the escrow is used up on chain time; the whole escrow is billed
  (:func:`out_of_credits`); :func:`exhausted_at` is the first second that allows it;
* CANCELED: a full refund before RUNNING, billed up to now while RUNNING (:func:`cancel`);
* PANICKED: a full refund, the provider is paid nothing (:func:`panic`);
* a top-up adds escrow to a non-final job, extending its time (:func:`top_up`).
"""

from __future__ import annotations

from dataclasses import dataclass

from dsq_chain.types import JobStatus

#: The escrow is a uint64 on chain.
MAX_ESCROW = 2**64 - 1


class BillingError(ValueError):
    """A call the contract would revert; ``error`` is the contract's custom error name."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error


@dataclass(frozen=True, slots=True)
class Settlement:
    """A job's final split: ``billed`` to the provider, ``refunded`` to the owner (their sum is the escrow)."""

    status: JobStatus
    billed: int
    refunded: int


def bill_so_far(rate: int, start: int, now: int, escrow: int) -> int:
    """Credit units a job RUNNING since ``start`` has used at ``now``: ``rate x elapsed // 60``, capped by escrow."""
    if now < start:
        raise BillingError("Panic", f"time {now} is before the job's start {start}")
    return min(escrow, rate * (now - start) // 60)


def exhausted_at(rate: int, start: int, escrow: int) -> int:
    """The first chain second at which the escrow is used up (``reportOutOfCredits`` passes from then on)."""
    if rate <= 0:
        raise BillingError("InvalidRate", f"rate must be positive, got {rate}")
    return start + -(-escrow * 60 // rate)


def paid_seconds(escrow: int, rate: int) -> int:
    """Whole seconds of run time ``escrow`` buys at ``rate`` (the time before :func:`exhausted_at`)."""
    if rate <= 0:
        raise BillingError("InvalidRate", f"rate must be positive, got {rate}")
    return escrow * 60 // rate


def _split(status: JobStatus, escrow: int, bill: int) -> Settlement:
    bill = min(bill, escrow)
    return Settlement(status, bill, escrow - bill)


def finish(rate: int, start: int, now: int, escrow: int, exit_code: int = 0, end_time: int | None = None) -> Settlement:
    """A RUNNING job reported ended at chain time ``now`` with ``exit_code`` (0 FINISHED, else FAILED).

    ``end_time`` is the end the provider observed, when its report carries one: the bill then runs up
    to ``min(now, max(start, end_time))`` (never past the report, never before the start).
    """
    until = now if end_time is None else min(now, max(start, end_time))
    status = JobStatus.FINISHED if exit_code == 0 else JobStatus.FAILED
    return _split(status, escrow, bill_so_far(rate, start, until, escrow))


def out_of_credits(rate: int, start: int, now: int, escrow: int) -> Settlement:
    """A RUNNING job ended for lack of credits at ``now``: the whole escrow billed, nothing refunded.

    Raises :class:`BillingError` ``EscrowNotExhausted`` while the escrow still pays for more time.
    """
    used = bill_so_far(rate, start, now, escrow)
    if used < escrow:
        raise BillingError("EscrowNotExhausted", f"billed so far {used} < escrow {escrow}")
    return Settlement(JobStatus.OUT_OF_CREDITS, escrow, 0)


def cancel(status: JobStatus, escrow: int, rate: int = 0, start: int = 0, now: int = 0) -> Settlement:
    """The owner cancels a job in ``status``: full refund before RUNNING, billed up to ``now`` while RUNNING."""
    if status.is_final or status is JobStatus.NONE:
        raise BillingError("InvalidStatus", f"cannot cancel a job in {status.name}")
    bill = bill_so_far(rate, start, now, escrow) if status is JobStatus.RUNNING else 0
    return _split(JobStatus.CANCELED, escrow, bill)


def panic(status: JobStatus, escrow: int) -> Settlement:
    """A provider-side fault: the whole escrow back to the owner, nothing to the provider."""
    if status.is_final or status is JobStatus.NONE:
        raise BillingError("InvalidStatus", f"cannot panic a job in {status.name}")
    return Settlement(JobStatus.PANICKED, 0, escrow)


def top_up(status: JobStatus, escrow: int, amount: int, billed_so_far: int = 0) -> int:
    """The escrow after adding ``amount`` to a non-final job (it extends the job's paid time).

    A RUNNING job whose escrow is already used up (``billed_so_far`` >= ``escrow``) cannot be topped up:
    the top-up would pay for time that ran unfunded (``EscrowExhausted``; report it out of credits)."""
    if amount <= 0:
        raise BillingError("ZeroCredits", "a top-up must be positive")
    if status.is_final or status is JobStatus.NONE:
        raise BillingError("InvalidStatus", f"cannot top up a job in {status.name}")
    if status is JobStatus.RUNNING and billed_so_far >= escrow:
        raise BillingError("EscrowExhausted", "the running job's escrow is used up")
    if escrow + amount > MAX_ESCROW:
        raise BillingError("EscrowOverflow", f"escrow {escrow} + {amount} exceeds 64 bits")
    return escrow + amount


__all__ = [
    "MAX_ESCROW",
    "BillingError",
    "Settlement",
    "bill_so_far",
    "cancel",
    "exhausted_at",
    "finish",
    "out_of_credits",
    "paid_seconds",
    "panic",
    "top_up",
]
