"""The greedy batch matcher and its explanations.

:meth:`Matcher.match` takes the pending jobs in fair-share order and places
each on its best provider (see :mod:`~dsq_chain.matching.scoring`), taking the
job's resources off that provider's free capacity in a private working copy,
so a batch never overcommits. Jobs that fit nowhere are left pending (later
jobs may still be placed: small jobs can overtake big ones). The caller's
states are never mutated.

Fair-share order: owners with less recent usage first, then older jobs first.
Within a batch each placement provisionally charges its owner ``rate x
provisional_minutes`` of usage (and counts one placement), so owners with equal
usage take turns and one owner's thousand jobs do not fill the grid before
another owner's first.

Bad input never crashes a batch: a malformed job, or one whose label
constraint cannot be evaluated, is skipped with its reason in
:attr:`Matcher.last_errors`; a provider with a malformed or inconsistent state
is left out with its reason in :attr:`Matcher.last_provider_errors`.
"""

from __future__ import annotations

import gc
import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TypeAlias

from dsq_chain.matching.compiled import CompiledFrontier, CompiledIndex, search_index
from dsq_chain.matching.constraints import (
    ConstraintError,
    LabelSignatures,
    Rejection,
    allowed_addresses,
    excluded_addresses,
    first_failure,
    job_problem,
    provider_problem,
)
from dsq_chain.matching.explain import Explanation, ProviderVerdict
from dsq_chain.matching.fairshare import FairShare
from dsq_chain.matching.index import DEFAULT_LEAF_SIZE, Demand, Frontier, LabelFilter, ProviderIndex, rate_edges
from dsq_chain.matching.model import Assignment, PendingJob, ProviderState
from dsq_chain.matching.scoring import MarketReference, Weights, score, share_level
from dsq_chain.types import LabelConstraint

#: Fair-share half-life when none is given: a week.
DEFAULT_HALF_LIFE_S = 7 * 24 * 3600.0
#: A demand with label constraints gets a frontier of its own once it has skipped this many entries of its
#: shape's shared frontier, plus one per _BUY_DIVISOR entries there (copying them costs about as much).
_BUY_BASE = 512
_BUY_DIVISOR = 2
#: The index positions a job without exclusions may not go to.
_NOWHERE: frozenset[int] = frozenset()
#: Frontiers are kept per demand: (cpus, gpus, memory, allowed label signatures, fair-share weight).
_DemandKey = tuple[int, int, int, bytes, float]
#: The two searches (Python and compiled) have the same methods and results.
_Index: TypeAlias = ProviderIndex | CompiledIndex
_Frontier: TypeAlias = Frontier | CompiledFrontier


@dataclass(slots=True)
class _Market:
    """The providers a batch can use, with their label signatures and the market's median prices."""

    active: list[ProviderState] = field(default_factory=list)
    signature_ids: list[int] = field(default_factory=list)
    signatures: LabelSignatures = field(default_factory=LabelSignatures)
    reference: MarketReference = field(default_factory=MarketReference)
    errors: dict[str, str] = field(default_factory=dict)
    invalid: dict[int, str] = field(default_factory=dict)  # id() of each left-out state -> reason

    @classmethod
    def of(cls, providers: Iterable[ProviderState]) -> _Market:
        """Validate ``providers``: the valid active ones are usable, the invalid ones listed in ``errors``."""
        market = cls()
        valid: list[ProviderState] = []
        seen: set[str] = set()
        for p in providers:
            problem = provider_problem(p)
            if problem is None:
                address = p.address.lower()
                if address in seen:
                    problem = "duplicate address"
            if problem is not None:
                market.errors[str(p.address)] = market.invalid[id(p)] = problem
                continue
            seen.add(address)
            valid.append(p)
            if p.active:
                market.active.append(p)
                market.signature_ids.append(market.signatures.signature(p.labels))
        market.reference = MarketReference.of(valid)
        return market


class Matcher:
    """Matches pending jobs to providers; see the module docstring for the policy."""

    def __init__(
        self,
        weights: Weights | None = None,
        fairshare: FairShare | None = None,
        *,
        provisional_minutes: float = 60.0,
        leaf_size: int = DEFAULT_LEAF_SIZE,
        compiled: bool | None = None,
    ) -> None:
        if not provisional_minutes >= 0:
            raise ValueError(f"provisional_minutes must be >= 0, got {provisional_minutes!r}")
        self.weights = weights if weights is not None else Weights()
        self.fairshare = fairshare if fairshare is not None else FairShare(DEFAULT_HALF_LIFE_S)
        self.provisional_minutes = provisional_minutes
        self.leaf_size = leaf_size
        #: The compiled search when built (None), always (True: an error when not built) or never (False).
        self.compiled = compiled
        #: Jobs of the last batch that were skipped as unmatchable: job id -> reason.
        self.last_errors: dict[int, str] = {}
        #: Providers left out of the last batch or explanation: address -> reason.
        self.last_provider_errors: dict[str, str] = {}
        #: Ids of the jobs of the last batch that were considered but fit nowhere.
        self.last_unplaced: list[int] = []

    # ------------------------------------------------------------------ matching

    def match(
        self,
        jobs: Iterable[PendingJob],
        providers: Mapping[str, ProviderState],
        now: float,
        limit: int | None = None,
    ) -> list[Assignment]:
        """Assignments for as many ``jobs`` as fit, in placement order (at most ``limit``).

        ``providers`` is not mutated; the free capacity after the batch is each
        provider's free capacity minus the resources of the jobs assigned to it.

        The cyclic garbage collector is paused during the batch (and resumed if it was on): a batch
        allocates millions of short-lived tuples and none in cycles, and each collection would walk
        every live object of the process (about 8 % of a 100,000-job batch's CPU time, measured).
        """
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._match(jobs, providers, now, limit)
        finally:
            if collecting:
                gc.enable()

    def _match(
        self, jobs: Iterable[PendingJob], providers: Mapping[str, ProviderState], now: float, limit: int | None
    ) -> list[Assignment]:
        self.last_errors, self.last_unplaced = {}, []
        market = _Market.of(providers.values())
        self.last_provider_errors = market.errors
        index = search_index(market.active, market.signature_ids, len(market.signatures), self.weights,
                             market.reference, self.leaf_size, self.compiled)
        batch = _Batch(self, index, market, now)
        assignments: list[Assignment] = []
        queue = _FairQueue(self._valid_jobs(jobs), self.fairshare, now)
        while (limit is None or len(assignments) < limit) and (job := queue.pop()) is not None:
            placed = batch.place(job)
            queue.done(job, None if placed is None else placed.rate * self.provisional_minutes)
            if placed is not None:
                assignments.append(placed)
            elif job.id not in self.last_errors:
                self.last_unplaced.append(job.id)
        return assignments

    def _valid_jobs(self, jobs: Iterable[PendingJob]) -> list[PendingJob]:
        valid: list[PendingJob] = []
        seen: set[int] = set()
        for job in jobs:
            problem = job_problem(job)
            if problem is None and job.id in seen:
                problem = "duplicate job id in the batch"
            if problem is not None:
                self.last_errors[getattr(job, "id", -1)] = problem
                continue
            seen.add(job.id)
            valid.append(job)
        return valid

    # ------------------------------------------------------------------ explaining

    def explain(self, job: PendingJob, providers: Mapping[str, ProviderState], now: float) -> Explanation:
        """Every provider's verdict for ``job`` against ``providers`` as they are now.

        The rank-1 provider is the one :meth:`match` picks for this job when it
        is the first (or only) job of a batch.
        """
        market = _Market.of(providers.values())
        self.last_provider_errors = market.errors
        error = job_problem(job)
        if error is not None:
            return Explanation(job, (), error)
        try:
            market.signatures.allowed(tuple(job.labels))
        except (ConstraintError, TypeError) as exc:
            error = str(exc)
        share = self.fairshare.share(job.owner, now)
        ref_rate = market.reference.rate_for(job.resources)
        passing: list[ProviderVerdict] = []
        rejected: list[ProviderVerdict] = []
        for p in providers.values():
            problem = market.invalid.get(id(p))
            rejection = (
                Rejection("invalid", f"invalid provider state: {problem}") if problem else _first_failure(job, p)
            )
            if rejection is not None:
                rejected.append(ProviderVerdict(str(p.address), rejection))
                continue
            rate = int(p.prices.rate_for(job.resources))  # plain int: the score is float arithmetic
            breakdown = score(self.weights, job.resources, rate, ref_rate, p, share)
            passing.append(ProviderVerdict(p.address, score=breakdown, rate=rate))
        passing.sort(key=lambda v: (v.score.total if v.score else 0.0, v.address))
        ranked = [ProviderVerdict(v.address, None, v.score, rank, v.rate) for rank, v in enumerate(passing, 1)]
        rejected.sort(key=lambda v: v.address)
        return Explanation(job, (*ranked, *rejected), error)


def _first_failure(job: PendingJob, provider: ProviderState) -> Rejection | None:
    try:
        return first_failure(job, provider)
    except ConstraintError as exc:
        return Rejection("label", str(exc))


@dataclass(frozen=True, slots=True)
class _Labels:
    """A label-constraint tuple's verdict over the signatures.

    ``flags``/``mask``: the allowed signatures; ``everything``: no provider is
    ruled out; ``count``: how many providers it allows (among GPU providers,
    for GPU jobs); ``filter``: the same for the index's searches.
    """

    flags: bytes
    mask: int
    everything: bool
    count: int
    filter: LabelFilter


class _Batch:
    """One batch's working state: the index (private free capacities) and a frontier per demand."""

    def __init__(self, matcher: Matcher, index: _Index, market: _Market, now: float) -> None:
        self._matcher = matcher
        self._index = index
        self._market = market
        self._now = now
        self._fair: dict[str, float] = {}
        self._total_usage = matcher.fairshare.total(now)
        # Providers per label signature, among all and among those with GPUs (the only ones for GPU jobs).
        self._sig_counts = ([0] * len(market.signatures), [0] * len(market.signatures))
        for sig, p in zip(market.signature_ids, market.active, strict=True):
            self._sig_counts[0][sig] += 1
            self._sig_counts[1][sig] += p.total.gpus > 0
        self._labels: dict[tuple[tuple[LabelConstraint, ...], bool], _Labels] = {}
        self._all = self._labels_for((), False)
        self._frontiers: dict[_DemandKey, _Frontier] = {}
        self._demands: dict[_DemandKey, Demand] = {}
        # Per demand, the highest cap at which it found nothing for a job without exclusions:
        # capacity only shrinks during a batch, so jobs of that demand with a cap as low fail too.
        self._failed_cap: dict[_DemandKey, int] = {}
        # Entries skipped per demand with label constraints in its shape's shared frontier (see _search).
        self._skips: dict[_DemandKey, int] = {}
        # Per shape (cpus, gpus, memory, fair-share weight): the frontiers made so far, with their allowed labels.
        self._shapes: defaultdict[tuple[int, int, int, float], list[tuple[int, _Frontier]]] = defaultdict(list)

    def place(self, job: PendingJob) -> Assignment | None:
        """Find ``job``'s best provider and reserve its resources there; None if it fits nowhere or errs."""
        res = job.resources
        try:
            labels = self._labels_for(tuple(job.labels), res.gpus > 0)
            excluded = self._excluded(job) if job.excluded else _NOWHERE
        except (ConstraintError, TypeError) as exc:
            self._matcher.last_errors[job.id] = str(exc)
            return None
        fair = self._fair.get(job.owner)
        if fair is None:
            fair = self._fair_weight(job.owner)
        key = (res.cpus, res.gpus, res.mem_mb, labels.flags, fair)
        cap = job.max_rate
        if cap <= self._failed_cap.get(key, -1):
            return None
        if not labels.count or not self._index.could_take(res.cpus, res.gpus, res.mem_mb, cap):
            return None
        if job.allowed:
            found = self._among(job, key, labels, fair, excluded)
        else:
            found = self._search(job, key, labels, fair, excluded)
        if found is None:
            if not excluded and not res.disk_gb and not job.allowed:
                self._failed_cap[key] = max(cap, self._failed_cap.get(key, -1))
            return None
        i, rate = found
        self._index.place(i, res.cpus, res.gpus, res.mem_mb)
        return Assignment(job.id, self._index.address[i], rate)

    def _search(
        self, job: PendingJob, key: _DemandKey, labels: _Labels, fair: float, excluded: frozenset[int]
    ) -> tuple[int, int] | None:
        """Search the frontier of ``job``'s shape, narrowed to its labels, or a frontier of its own.

        Jobs with label constraints start in a frontier shared with broader
        labels: the smallest of their shape's frontiers whose labels allow every
        provider theirs do (at worst the one for any labels), skipping the
        entries of other providers; once a demand has skipped as many entries
        as it would cost to copy that frontier's entries it can use (or as its
        labels allow providers), it gets a frontier of its own, starting from
        that copy: the classic rent-or-buy rule, never more than twice the
        better choice. A narrower frontier skips less: a job needing an H100 in
        one zone searches the H100 jobs' frontier, not the one of every GPU.
        """
        cap, disk = job.max_rate, job.resources.disk_gb
        if labels.everything or key in self._frontiers:
            return self._frontier(job, key, labels, fair).best(cap, excluded, disk)[0]
        res = job.resources
        shared = self._frontier(job, (res.cpus, res.gpus, res.mem_mb, self._all.flags, fair), self._all, fair)
        for mask, other in self._shapes[res.cpus, res.gpus, res.mem_mb, fair]:
            if not labels.mask & ~mask and len(other) < len(shared):
                shared = other
        skipped = self._skips.get(key, 0)
        budget = min(labels.count, _BUY_BASE + len(shared) // _BUY_DIVISOR) - skipped
        if budget > 0:
            found, skips, complete = shared.best(cap, excluded, disk, labels.filter, budget)
            self._skips[key] = skipped + skips
            if complete:
                return found
        frontier = self._frontiers[key] = shared.narrowed(self._demand(job, key, labels, fair), labels.filter)
        self._shapes[res.cpus, res.gpus, res.mem_mb, fair].append((labels.mask, frontier))
        return frontier.best(cap, excluded, disk)[0]

    def _among(
        self, job: PendingJob, key: _DemandKey, labels: _Labels, fair: float, excluded: frozenset[int]
    ) -> tuple[int, int] | None:
        """The best of the few providers a directly placed job allows: scored one by one, no search."""
        index = self._index
        position, address, disk = index.position, index.address, index.disk
        allowed = sorted({position[a] for a in allowed_addresses(job) if a in position} - excluded)
        frontier = self._frontier(job, key, labels, fair)
        usable = [
            (found[0], address[i], i, found[1])
            for i in allowed
            if (found := frontier.score_of(i)) is not None
            and found[1] <= job.max_rate
            and disk[i] >= job.resources.disk_gb
        ]
        if not usable:
            return None
        best = min(usable)
        return best[2], best[3]

    def _frontier(self, job: PendingJob, key: _DemandKey, labels: _Labels, fair: float) -> _Frontier:
        frontier = self._frontiers.get(key)
        if frontier is None:
            frontier = self._frontiers[key] = self._index.frontier(self._demand(job, key, labels, fair))
            self._shapes[key[:3] + key[4:]].append((labels.mask, frontier))
        return frontier

    def _demand(self, job: PendingJob, key: _DemandKey, labels: _Labels, fair: float) -> Demand:
        demand = self._demands.get(key)
        if demand is None:
            res = job.resources
            ref_rate = self._market.reference.rate_for(res)
            demand = self._demands[key] = Demand(
                res.cpus, res.gpus, res.mem_mb, labels.flags, labels.mask, 1.0 / ref_rate, fair, rate_edges(ref_rate)
            )
        return demand

    def _excluded(self, job: PendingJob) -> frozenset[int]:
        """Index positions a job with exclusions may not go to: refused or timed out, or excluded by its
        placement (:meth:`place` passes :data:`_NOWHERE` for the others without a call). Its allowed providers
        and scratch disk are checked in the search: see :meth:`Frontier.best`."""
        position = self._index.position
        return frozenset(position[a] for a in excluded_addresses(job) if a in position)

    def _labels_for(self, constraints: tuple[LabelConstraint, ...], gpus: bool) -> _Labels:
        """The verdict of ``constraints`` (providers counted among those with GPUs for a GPU job)."""
        labels = self._labels.get((constraints, gpus))
        if labels is None:
            flags = self._market.signatures.allowed(constraints)
            mask = sum(1 << sig for sig, ok in enumerate(flags) if ok)
            counts = self._sig_counts[gpus]
            count = sum(n for n, ok in zip(counts, flags, strict=True) if ok)
            labels = self._labels[constraints, gpus] = _Labels(
                flags, mask, all(flags), count, self._index.label_filter(flags, mask)
            )
        return labels

    def _fair_weight(self, owner: str) -> float:
        """``weights.fairshare * share level`` of ``owner`` (see :func:`share_level`), worked out on its first
        job of the batch and kept in ``_fair``, which :meth:`place` reads first."""
        share = self._matcher.fairshare.share(owner, self._now, self._total_usage)
        fair = self._fair[owner] = self._matcher.weights.fairshare * share_level(share)
        return fair


class _FairQueue:
    """Jobs by owner; pops the oldest job of the owner with the least (recent + provisional) usage."""

    def __init__(self, jobs: list[PendingJob], fairshare: FairShare, now: float) -> None:
        self._queues: dict[str, list[PendingJob]] = {}
        for job in sorted(jobs, key=attrgetter("submitted_at", "id"), reverse=True):
            self._queues.setdefault(job.owner, []).append(job)  # oldest last: pop() from the end
        self._usage = {owner: fairshare.usage(owner, now) for owner in self._queues}
        self._placed = dict.fromkeys(self._queues, 0)
        self._heap = [self._entry(owner) for owner in self._queues]
        heapq.heapify(self._heap)

    def _entry(self, owner: str) -> tuple[float, int, float, int, str]:
        head = self._queues[owner][-1]
        return (self._usage[owner], self._placed[owner], head.submitted_at, head.id, owner)

    def pop(self) -> PendingJob | None:
        """The next job to place, or None when all were handed out; call :meth:`done` with it next (its owner
        stays at the top of the heap until then)."""
        if not self._heap:
            return None
        return self._queues[self._heap[0][-1]].pop()

    def done(self, job: PendingJob, usage: float | None) -> None:
        """Report ``job``'s outcome: ``usage`` provisionally charged if it was placed, None if not."""
        owner = job.owner
        if usage is not None:
            self._usage[owner] += usage
            self._placed[owner] += 1
        if self._queues[owner]:
            heapq.heapreplace(self._heap, self._entry(owner))
        else:
            heapq.heappop(self._heap)
