"""Enums and typed records shared by every layer of dsq-chain.

The integer values of the enums are the on-chain ones: ``tests/test_build.py``
checks them against the Solidity enums in the compiled AST, so this module and
``contracts/`` cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from dsq_chain.money import DECIMALS, UNIT, Credits

#: Credits have 6 decimals on chain: 1 credit == 1_000_000 units.
CREDIT_DECIMALS = DECIMALS
CREDIT_UNIT = UNIT


class JobStatus(IntEnum):
    """Lifecycle of a job (``JobStatus`` in ``contracts/GridTypes.sol``)."""

    NONE = 0
    PENDING = 1
    META_SCHEDULED = 2
    SCHEDULED = 3
    RUNNING = 4
    FINISHED = 5
    FAILED = 6
    OUT_OF_CREDITS = 7
    CANCELED = 8
    PANICKED = 9

    @property
    def is_final(self) -> bool:
        """True for a status the job never leaves (asks :mod:`dsq_chain.lifecycle`)."""
        from dsq_chain.lifecycle import FINAL

        return self in FINAL

    @property
    def holds_capacity(self) -> bool:
        """True while the job reserves capacity on its provider (asks :mod:`dsq_chain.lifecycle`)."""
        from dsq_chain.lifecycle import HOLDS_CAPACITY

        return self in HOLDS_CAPACITY


class ProviderStatus(IntEnum):
    """Registration state of a provider (``ProviderStatus`` on chain)."""

    NONE = 0
    PENDING = 1
    APPROVED = 2
    BANNED = 3
    REMOVED = 4


class ReleaseReason(IntEnum):
    """Why an assigned job went back to PENDING (``ReleaseReason`` on chain)."""

    REFUSED = 0
    CLAIM_TIMEOUT = 1
    PROVIDER_BANNED = 2


class ReportAction(IntEnum):
    """What a provider reports in a batched ``report`` call (``ReportAction``)."""

    CLAIM = 0
    REFUSE = 1
    START = 2
    FINISH = 3
    OUT_OF_CREDITS = 4
    PANIC = 5


class LabelOp(IntEnum):
    """Operator of a label constraint ``key op value``.

    ``EQ`` .. ``GE`` are also checked on chain at assignment (``LabelOp`` in
    Solidity); ``IN`` is evaluated by the meta-scheduler only.
    """

    EQ = 0
    NE = 1
    LT = 2
    LE = 3
    GT = 4
    GE = 5
    IN = 6

    @property
    def symbol(self) -> str:
        return _OP_SYMBOLS[self]

    @property
    def on_chain(self) -> bool:
        return self is not LabelOp.IN

    @classmethod
    def from_symbol(cls, symbol: str) -> LabelOp:
        for op, sym in _OP_SYMBOLS.items():
            if sym == symbol:
                return op
        raise ValueError(f"unknown label operator {symbol!r}; expected one of {', '.join(_OP_SYMBOLS.values())}")


_OP_SYMBOLS: dict[LabelOp, str] = {
    LabelOp.EQ: "==",
    LabelOp.NE: "!=",
    LabelOp.LT: "<",
    LabelOp.LE: "<=",
    LabelOp.GT: ">",
    LabelOp.GE: ">=",
    LabelOp.IN: "in",
}


class Role(IntEnum):
    """Who may call what; names match the contracts' role constants."""

    ADMIN = 0
    SCHEDULER = 1
    MINTER = 2


@dataclass(frozen=True, slots=True)
class Resources:
    """What a job needs, or what a provider offers, in totals.

    ``cpus`` is the total of CPU cores (tasks x cpus per task), ``mem_mb`` the
    total memory in MB, ``disk_gb`` scratch disk in GB (reserved on chain like memory).
    """

    cpus: int
    gpus: int = 0
    mem_mb: int = 0
    disk_gb: int = 0
    #: Persistent storage in GB a provider declares; never reserved by jobs (arithmetic keeps the left side's).
    persistent_gb: int = 0

    def fits_in(self, other: Resources) -> bool:
        """True when every amount is at most ``other``'s."""
        return (self.cpus <= other.cpus and self.gpus <= other.gpus and self.mem_mb <= other.mem_mb
                and self.disk_gb <= other.disk_gb)

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.gpus + other.gpus, self.mem_mb + other.mem_mb,
                         self.disk_gb + other.disk_gb, self.persistent_gb)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpus - other.cpus, self.gpus - other.gpus, self.mem_mb - other.mem_mb,
                         self.disk_gb - other.disk_gb, self.persistent_gb)


_FREE = Credits(0)


@dataclass(frozen=True, slots=True)
class Prices:
    """A provider's prices per minute, as :class:`~dsq_chain.money.Credits`: per cpu core, per GPU and per
    GB of memory (the contract's ``Prices``, which holds their base units).

    Give each price as Credits, text or a Decimal (``Prices(Credits("0.001"))``, ``Prices("0.001", "0.05")``);
    a plain int other than 0 is refused as ambiguous, as for every amount: base units are given by name,
    ``Prices.from_units(1_000, 50_000, 100)``. Floats are refused."""

    per_cpu_minute: Credits
    per_gpu_minute: Credits = _FREE
    per_gb_minute: Credits = _FREE

    def __post_init__(self) -> None:
        for name in ("per_cpu_minute", "per_gpu_minute", "per_gb_minute"):
            value = getattr(self, name)
            if type(value) is not Credits:
                object.__setattr__(self, name, _FREE if value == 0 and type(value) is int
                                   else Credits.of(value, f"Prices.{name}"))

    @classmethod
    def from_units(cls, per_cpu_minute: int, per_gpu_minute: int = 0, per_gb_minute: int = 0) -> Prices:
        """Prices given in base units (millionths of a credit) per minute, as the chain holds them."""
        return cls(Credits(units=per_cpu_minute), Credits(units=per_gpu_minute), Credits(units=per_gb_minute))

    @property
    def units(self) -> tuple[int, int, int]:
        """(cpu, gpu, GB) prices in base units per minute: the contract's ``Prices`` tuple."""
        return (int(self.per_cpu_minute), int(self.per_gpu_minute), int(self.per_gb_minute))

    def rate_for(self, res: Resources) -> Credits:
        """What a job with ``res`` costs per minute (the contract's formula, rounded down to a base unit)."""
        cpu, gpu, gb = self.units  # plain ints: Credits arithmetic is slower
        return Credits(units=res.cpus * cpu + res.gpus * gpu + (res.mem_mb * gb) // 1024)

    def __str__(self) -> str:
        return f"{self.per_cpu_minute}/cpu-min, {self.per_gpu_minute}/gpu-min, {self.per_gb_minute}/GB-min"


@dataclass(frozen=True, slots=True)
class LabelConstraint:
    """One ``key op value`` requirement of a job on a provider's labels.

    For ``IN`` the value is a comma-separated list of alternatives.
    """

    key: str
    op: LabelOp
    value: str

    def __str__(self) -> str:
        return f"{self.key} {self.op.symbol} {self.value}"


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the chain holds it (plus the submission's event data when known).

    Amounts are :class:`~dsq_chain.money.Credits`: ``escrow`` still locked, ``rate`` per minute
    (snapshotted at assignment), ``max_rate`` the price cap per minute; ``billed``/``refunded`` are
    set once the job is settled (``billed`` is the bill so far while it runs), else None.
    ``head_id`` is the first job of the job's array (its own id when submitted alone).
    """

    id: int
    owner: str
    status: JobStatus
    resources: Resources
    max_rate: Credits
    escrow: Credits
    provider: str | None
    rate: Credits
    since: int
    #: Only the submission event carries the workflow hash (not the chain's job record): empty unless
    #: the reader took it from there.
    workflow_hash: bytes = b""
    labels_hash: bytes = b"\0" * 32
    head_id: int = 0
    labels: tuple[LabelConstraint, ...] = ()
    workflow: bytes | None = None
    billed: Credits | None = None
    refunded: Credits | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    """A provider's on-chain registration."""

    address: str
    id: int
    status: ProviderStatus
    paused: bool
    total: Resources
    free: Resources
    prices: Prices
    labels: dict[str, str] = field(default_factory=dict)
    #: Persistent storage in GB the provider declares (not reserved by jobs).
    persistent_gb: int = 0

    @property
    def active(self) -> bool:
        """Approved and not paused: the scheduler may assign it jobs."""
        return self.status is ProviderStatus.APPROVED and not self.paused
