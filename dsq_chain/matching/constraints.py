"""Hard constraints: the reasons a provider cannot take a job, and label evaluation.

Reasons carry the numbers (``cpus: needs 4, has 2 free``). They are checked in
a fixed order and :func:`first_failure` reports the first that fails:
invalid state, inactive, excluded, cpus, gpus, memory, labels (in the job's
order), price cap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dsq_chain.matching.model import PendingJob, ProviderState
from dsq_chain.money import Credits
from dsq_chain.types import LabelConstraint, Prices, Resources
from dsq_chain.workloads import labels as label_rules

INACTIVE = "provider inactive (paused or not approved)"
EXCLUDED = "excluded: refused or timed out on this job, or excluded by its placement"
NOT_ALLOWED = "placement: not among the providers the job allows"

#: Rejection kinds, in the order the constraints are checked.
KINDS = ("invalid", "inactive", "excluded", "placement", "cpus", "gpus", "memory", "disk", "label", "price")


class ConstraintError(Exception):
    """A job's label constraint cannot be evaluated (malformed constraint)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a provider cannot take a job.

    ``need``/``have`` are set for capacity (free amount) and price (cap, rate)
    rejections so that summaries can aggregate them.
    """

    kind: str
    reason: str
    need: int | None = None
    have: int | None = None


def capacity_failure(need: Resources, free: Resources) -> Rejection | None:
    """The first resource the provider lacks, or None when ``need`` fits in ``free``."""
    if need.cpus > free.cpus:
        return Rejection("cpus", f"cpus: needs {need.cpus}, has {free.cpus} free", need.cpus, free.cpus)
    if need.gpus > free.gpus:
        return Rejection("gpus", f"gpus: needs {need.gpus}, has {free.gpus} free", need.gpus, free.gpus)
    if need.mem_mb > free.mem_mb:
        return Rejection(
            "memory", f"memory: needs {need.mem_mb} MB, has {free.mem_mb} MB free", need.mem_mb, free.mem_mb
        )
    if need.disk_gb > free.disk_gb:
        return Rejection("disk", f"disk: needs {need.disk_gb} GB, has {free.disk_gb} GB free", need.disk_gb,
                         free.disk_gb)
    return None


def price_failure(rate: int, cap: int) -> Rejection | None:
    """A rejection when the provider's ``rate`` for the job exceeds the job's ``cap``."""
    if rate > cap:
        reason = f"price: rate {Credits(units=rate)} > cap {Credits(units=cap)} credits/min"
        return Rejection("price", reason, cap, rate)
    return None


def label_failure(constraints: Sequence[LabelConstraint], labels: Mapping[str, str]) -> Rejection | None:
    """The first unmet label constraint (reason from :func:`dsq_chain.workloads.labels.check`).

    Raises :class:`ConstraintError` when a constraint cannot be evaluated.
    """
    for constraint in constraints:
        reason = evaluate(constraint, labels)
        if reason is not None:
            return Rejection("label", reason)
    return None


def evaluate(constraint: LabelConstraint, labels: Mapping[str, str]) -> str | None:
    """:func:`dsq_chain.workloads.labels.check`, with any failure to evaluate turned into :class:`ConstraintError`."""
    try:
        return label_rules.check(constraint, labels)
    except Exception as exc:  # a malformed constraint must not crash matching
        raise ConstraintError(f"label constraint {constraint!s} cannot be evaluated: {exc}") from exc


def first_failure(job: PendingJob, provider: ProviderState) -> Rejection | None:
    """The first hard constraint ``provider`` (as it is now) fails for ``job``, or None.

    Raises :class:`ConstraintError` for a malformed label constraint.
    """
    problem = provider_problem(provider)
    if problem is not None:
        return Rejection("invalid", f"invalid provider state: {problem}")
    if not provider.active:
        return Rejection("inactive", INACTIVE)
    if is_excluded(job, provider.address):
        return Rejection("excluded", EXCLUDED)
    if not is_allowed(job, provider.address):
        return Rejection("placement", NOT_ALLOWED)
    rejection = capacity_failure(job.resources, provider.free) or label_failure(job.labels, provider.labels)
    if rejection is not None:
        return rejection
    return price_failure(provider.prices.rate_for(job.resources), job.max_rate)


def is_excluded(job: PendingJob, address: str) -> bool:
    """Whether ``address`` refused ``job`` or timed out on it (addresses compare case-insensitively)."""
    return address.lower() in excluded_addresses(job)


def is_allowed(job: PendingJob, address: str) -> bool:
    """Whether the job's direct placement (if any) lets ``address`` run it."""
    return not job.allowed or address.lower() in allowed_addresses(job)


def allowed_addresses(job: PendingJob) -> frozenset[str]:
    """The job's allowed provider addresses (direct placement), lower-cased; empty: any provider."""
    return frozenset(a.lower() for a in job.allowed)


def excluded_addresses(job: PendingJob) -> frozenset[str]:
    """The job's excluded provider addresses, lower-cased."""
    return frozenset(a.lower() for a in job.excluded)


# --------------------------------------------------------------------------- input validation


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def resources_problem(res: object, what: str) -> str | None:
    """Why ``res`` is not a valid :class:`Resources` of non-negative integers, or None."""
    if not isinstance(res, Resources):
        return f"{what} is not a Resources record"
    for name in ("cpus", "gpus", "mem_mb", "disk_gb"):
        value = getattr(res, name)
        if not _is_count(value):
            return f"{what}.{name} must be an integer >= 0, got {value!r}"
    return None


def _plain_count(value: object) -> bool:
    """A fast sufficient test for :func:`_is_count` (exactly an int, not a subclass)."""
    return type(value) is int and value >= 0  # type: ignore[operator]


def _plain_price(value: object) -> bool:
    """A fast sufficient test that a price is a valid count (exactly Credits or int, not negative)."""
    return (type(value) is Credits or type(value) is int) and value >= 0  # type: ignore[operator]


def _plain_resources(res: object) -> bool:
    """A fast sufficient test that :func:`resources_problem` finds nothing (written out: it runs for every
    provider and job of every batch)."""
    return (type(res) is Resources and type(c := res.cpus) is int and type(g := res.gpus) is int
            and type(m := res.mem_mb) is int and type(d := res.disk_gb) is int
            and c >= 0 and g >= 0 and m >= 0 and d >= 0)  # fmt: skip


def job_problem(job: object) -> str | None:
    """Why ``job`` cannot be matched at all (malformed record), or None."""
    if (
        type(job) is PendingJob
        and type(job.id) is int
        and _plain_resources(job.resources)
        and _plain_count(job.max_rate)
        and type(job.owner) is str
        and type(job.submitted_at) in (float, int)
        and (not job.labels or all(type(c) is LabelConstraint for c in job.labels))
        and (not job.excluded or all(type(a) is str for a in job.excluded))
    ):
        return None  # the common case, decided by exact types; anything else gets the full check below
    if not isinstance(job, PendingJob):
        return f"not a PendingJob: {type(job).__name__}"
    if not isinstance(job.id, int):
        return f"id must be an integer, got {job.id!r}"
    problem = resources_problem(job.resources, "resources")
    if problem is not None:
        return problem
    if not _is_count(job.max_rate):
        return f"max_rate must be an integer >= 0, got {job.max_rate!r}"
    if not isinstance(job.owner, str):
        return f"owner must be an address string, got {job.owner!r}"
    if not isinstance(job.submitted_at, int | float):
        return f"submitted_at must be a number, got {job.submitted_at!r}"
    if not all(isinstance(c, LabelConstraint) for c in job.labels):
        return "labels must be LabelConstraint records"
    if not all(isinstance(a, str) for a in job.excluded):
        return "excluded must hold address strings"
    return None


def provider_problem(provider: ProviderState) -> str | None:
    """Why ``provider``'s state is unusable (malformed or inconsistent), or None."""
    total, free, prices = provider.total, provider.free, provider.prices
    if (
        type(provider.address) is str
        and provider.address
        and _plain_resources(total)
        and _plain_resources(free)
        and free.fits_in(total)
        and type(prices) is Prices
        and _plain_price(prices.per_cpu_minute)
        and _plain_price(prices.per_gpu_minute)
        and _plain_price(prices.per_gb_minute)
        and type(provider.labels) is dict
        and all(type(k) is str and type(v) is str for k, v in provider.labels.items())
    ):
        return None  # the common case, decided by exact types; anything else gets the full check below
    if not isinstance(provider.address, str) or not provider.address:
        return f"address must be a non-empty string, got {provider.address!r}"
    problem = resources_problem(provider.total, "total") or resources_problem(provider.free, "free")
    if problem is not None:
        return problem
    if not provider.free.fits_in(provider.total):
        return f"free {provider.free} exceeds total {provider.total}"
    if not isinstance(provider.prices, Prices):
        return "prices is not a Prices record"
    for name in ("per_cpu_minute", "per_gpu_minute", "per_gb_minute"):
        if not _is_count(getattr(provider.prices, name)):
            return f"prices.{name} must be an integer >= 0, got {getattr(provider.prices, name)!r}"
    if not isinstance(provider.labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in provider.labels.items()
    ):
        return "labels must map strings to strings"
    return None


# --------------------------------------------------------------------------- label signatures


class LabelSignatures:
    """Distinct label sets of the providers, numbered, with memoised constraint verdicts.

    Providers rarely have more than a few dozen distinct label sets, so each
    constraint is evaluated once per set rather than once per provider.
    """

    __slots__ = ("_by_constraint", "_by_tuple", "_ids", "_labels")

    def __init__(self) -> None:
        self._ids: dict[frozenset[tuple[str, str]], int] = {}
        self._labels: list[Mapping[str, str]] = []
        self._by_constraint: dict[LabelConstraint, bytes] = {}
        self._by_tuple: dict[tuple[LabelConstraint, ...], bytes] = {}

    def __len__(self) -> int:
        return len(self._labels)

    def signature(self, labels: Mapping[str, str]) -> int:
        """The id of ``labels``' set, registering it on first sight (ids in the order first seen)."""
        key = frozenset(labels.items())  # a mapping's items are unique by key: equal sets, equal mappings
        sig = self._ids.get(key)
        if sig is None:
            sig = self._ids[key] = len(self._labels)
            self._labels.append(dict(labels))
        return sig

    def allowed(self, constraints: tuple[LabelConstraint, ...]) -> bytes:
        """One flag per signature: 1 where every constraint holds. Raises :class:`ConstraintError`."""
        flags = self._by_tuple.get(constraints)
        if flags is None:
            flags = bytes(len(self._labels) * [1])
            for constraint in constraints:
                one = self._for_constraint(constraint)
                flags = bytes(a & b for a, b in zip(flags, one, strict=True))
            self._by_tuple[constraints] = flags
        return flags

    def _for_constraint(self, constraint: LabelConstraint) -> bytes:
        flags = self._by_constraint.get(constraint)
        if flags is None:
            flags = bytes(evaluate(constraint, labels) is None for labels in self._labels)
            self._by_constraint[constraint] = flags
        return flags
