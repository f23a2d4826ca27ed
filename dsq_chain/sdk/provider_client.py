"""A provider's client: registration (hardware, prices, labels), pause/resume, and the reports of its
jobs (claim, refuse, start, finish, panic — one at a time or many in one transaction)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from dsq_chain.errors import InputError
from dsq_chain.money import Credits
from dsq_chain.sdk.client_base import _Client
from dsq_chain.sdk.receipts import Receipt
from dsq_chain.types import Prices, Provider, ReportAction, Resources

UINT40_MAX = 2**40 - 1


class ProviderClient(_Client):
    """A provider's side: registration and job reports. Prices are :class:`~dsq_chain.types.Prices` of
    :class:`~dsq_chain.money.Credits` per minute."""

    def register(self, hardware: Resources, prices: Prices, labels: Mapping[str, str] | None = None, *,
                 persistent_gb: int = 0) -> Receipt:
        """Registers this account as a provider (PENDING until the admin approves it); ``persistent_gb``
        declares persistent storage beside the scratch disk of ``hardware``.

        Raises InputError, LabelExpressionError, and the contract's ``ProviderAlreadyRegistered``,
        ``InvalidHardware``, ``ZeroCpuPrice``, ``TooManyLabels``, ``LengthMismatch``."""
        from dsq_chain.workloads.labels import encode_value, parse_labels

        parsed = parse_labels(labels or {})
        _check_hardware(hardware)
        _check_prices(prices)
        return self._send(
            self.market.functions.registerProvider(
                _hardware(hardware, persistent_gb), prices.units, list(parsed),
                [encode_value(v) for v in parsed.values()]
            )
        )

    def update_hardware(self, hardware: Resources, *, persistent_gb: int = 0) -> Receipt:
        """Declares new hardware totals. Raises InputError, the contract's ``ProviderNotRegistered``,
        ``InvalidHardware``, ``CapacityInUse`` (below what running jobs hold)."""
        _check_hardware(hardware)
        return self._send(self.market.functions.updateHardware(_hardware(hardware, persistent_gb)))

    def update_prices(self, prices: Prices) -> Receipt:
        """New prices for future assignments. Raises InputError, the contract's ``ProviderNotRegistered``,
        ``ZeroCpuPrice``."""
        _check_prices(prices)
        return self._send(self.market.functions.updatePrices(prices.units))

    def set_labels(self, labels: Mapping[str, str], remove: Iterable[str] = ()) -> Receipt:
        """Sets (or, for ``remove``, deletes) label values. Raises LabelExpressionError, the contract's
        ``ProviderNotRegistered``, ``TooManyLabels``, ``LengthMismatch``."""
        from dsq_chain.workloads.labels import encode_value, parse_labels

        parsed = parse_labels(labels)
        keys = list(parsed) + list(remove)
        values = [encode_value(v) for v in parsed.values()] + [b"\0" * 32 for _ in remove]
        return self._send(self.market.functions.setLabels(keys, values))

    def pause(self) -> Receipt:
        """Takes no new jobs until :meth:`resume`. Raises the contract's ``ProviderNotRegistered``."""
        return self._send(self.market.functions.pause())

    def resume(self) -> Receipt:
        """Takes jobs again. Raises the contract's ``ProviderNotRegistered``."""
        return self._send(self.market.functions.resume())

    def info(self) -> Provider:
        """This provider's registration. Raises the contract's ``ProviderNotRegistered``."""
        return self.provider(self.address)

    def claim(self, job_id: int) -> Receipt:
        """Accepts an assigned job (META_SCHEDULED → SCHEDULED). Raises the contract's ``JobNotFound``,
        ``InvalidStatus``, ``NotAssignedProvider``."""
        return self._send(self.market.functions.claim(job_id))

    def refuse(self, job_id: int) -> Receipt:
        """Gives an assigned or claimed job back (→ PENDING). Raises the contract's ``JobNotFound``,
        ``InvalidStatus``, ``NotAssignedProvider``."""
        return self._send(self.market.functions.refuse(job_id))

    def start(self, job_id: int) -> Receipt:
        """Reports the job RUNNING (billing starts). Raises the contract's ``JobNotFound``,
        ``InvalidStatus``, ``NotAssignedProvider``."""
        return self._send(self.market.functions.start(job_id))

    def finish(self, job_id: int, exit_code: int) -> Receipt:
        """Reports the end (FINISHED for exit 0, else FAILED) and settles the bill. Raises InputError
        (exit code beyond int32), the contract's ``JobNotFound``, ``InvalidStatus``, ``NotAssignedProvider``."""
        return self._send(self.market.functions.finish(job_id, _exit_code(exit_code)))

    def report_out_of_credits(self, job_id: int) -> Receipt:
        """Ends a RUNNING job whose escrow ran out (anyone may). Raises the contract's ``JobNotFound``,
        ``InvalidStatus``, ``EscrowNotExhausted``."""
        return self._send(self.market.functions.reportOutOfCredits(job_id))

    def panic(self, job_id: int) -> Receipt:
        """A provider-side fault: the whole escrow goes back to the owner. Raises the contract's
        ``JobNotFound``, ``InvalidStatus``, ``NotAllowedToPanic``."""
        return self._send(self.market.functions.panic(job_id))

    def report(self, reports: Sequence[tuple[int, ReportAction, int] | tuple[int, ReportAction, int, int]]
               ) -> Receipt:
        """Many reports of this provider's jobs in one transaction: (job id, action, exit code), or
        (job id, action, exit code, end time) where a FINISH's end time (unix seconds, 0 = now) is when
        the engine saw the job end: the chain bills up to it (never past the report's block).
        An entry the chain cannot apply is skipped (see :func:`~dsq_chain.sdk.receipts.skipped_entries`),
        the others land.
        Raises InputError (empty, bad exit code)."""
        if not reports:
            raise InputError("report() needs at least one (job id, action, exit code)")
        rows = [_report_row(r) for r in reports]
        return self._send(self.market.functions.report(rows))


def _check_hardware(hw: Resources) -> None:
    if hw.cpus < 1 or hw.mem_mb < 1 or hw.gpus < 0 or not 0 <= hw.disk_gb < 2**32:
        raise InputError(f"hardware needs >= 1 cpu, > 0 MB memory and 0..2**32-1 GB disk, got {hw}")


def _check_prices(p: Prices) -> None:
    if not isinstance(p, Prices):
        raise InputError(f"prices must be a Prices record (Prices(Credits('0.001'), ...)), got {type(p).__name__}")
    if p.per_cpu_minute <= 0:
        raise InputError(f"the price per cpu-minute must be positive, got {p.per_cpu_minute}")
    for name, value in zip(("per_cpu_minute", "per_gpu_minute", "per_gb_minute"), p.units, strict=True):
        if not 0 <= value <= UINT40_MAX:
            raise InputError(f"prices.{name} must be 0..{Credits(units=UINT40_MAX)} credits per minute, "
                             f"got {Credits(units=value)}")


def _hardware(hw: Resources, persistent_gb: int = 0) -> tuple[int, int, int, int, int]:
    if not 0 <= persistent_gb < 2**32:
        raise InputError(f"persistent storage must be 0..2**32-1 GB, got {persistent_gb}")
    return (hw.cpus, hw.gpus, hw.mem_mb, hw.disk_gb, persistent_gb)


def _report_row(r: Sequence[int]) -> tuple[int, int, int, int]:
    if len(r) not in (3, 4):
        raise InputError(f"a report is (job id, action, exit code[, end time]), got {r!r}")
    end = int(r[3]) if len(r) == 4 else 0
    if not 0 <= end < 2**64:
        raise InputError(f"end time must be 0..2**64-1 unix seconds, got {end}")
    return (int(r[0]), int(r[1]), _exit_code(int(r[2])), end)


def _exit_code(code: int) -> int:
    if not -(2**31) <= code < 2**31:
        raise InputError(f"exit code {code} does not fit int32")
    return code
