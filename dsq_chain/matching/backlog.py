"""The meta-scheduler's backlog: which pending jobs a round examines, and which wait aside.

A job that fits no provider is *parked*: later rounds do not look at it again until a provider changes
so that the job could fit there (free capacity, prices, labels, activity, a new provider: see
:meth:`Backlog.touch`). So a flood of jobs that cannot be placed (spam, or a real backlog of jobs too
big for today's grid) costs its examination once, not once per round: a round for a new job stays as
fast as on an empty grid.

Fresh jobs (new, returned to PENDING, woken) are handed out per owner, oldest first, at most
``per_owner`` of each owner per round: one owner's flood of 100,000 submissions cannot make a round
slow for the others, nor push their jobs behind its own (the matcher's fair-share order then decides
among the jobs taken).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator
from itertools import count, islice

from dsq_chain.matching.constraints import ConstraintError, first_failure
from dsq_chain.matching.model import PendingJob, ProviderState
from dsq_chain.types import LabelConstraint, LabelOp

#: Parked jobs are grouped by what they need: (cpus, gpus, memory, label constraints).
_Shape = tuple[int, int, int, tuple[LabelConstraint, ...]]
#: A shape's first ``==`` constraint (key, value): only a provider with that label can take it. None: no such.
_Anchor = tuple[str, str] | None


class _Group:
    """Parked jobs of one shape; ``cap`` is the highest price cap among them, ``gid`` its number."""

    __slots__ = ("anchor", "cap", "gid", "jobs", "shape")

    def __init__(self, shape: _Shape, anchor: _Anchor, gid: int) -> None:
        self.shape, self.anchor, self.gid = shape, anchor, gid
        self.jobs: dict[int, PendingJob] = {}
        self.cap = -1


class _CapIndex:
    """Groups by the cpus they need (distinct needs sorted), each need's groups sorted by their highest cap."""

    __slots__ = ("by_need", "needs")

    def __init__(self) -> None:
        self.needs: list[int] = []
        self.by_need: dict[int, list[tuple[int, int]]] = {}  # cpus -> sorted (cap, gid)

    def add(self, cpus: int, cap: int, gid: int) -> None:
        entries = self.by_need.get(cpus)
        if entries is None:
            entries = self.by_need[cpus] = []
            insort(self.needs, cpus)
        insort(entries, (cap, gid))

    def discard(self, cpus: int, cap: int, gid: int) -> None:
        entries = self.by_need[cpus]
        del entries[bisect_left(entries, (cap, gid))]
        if not entries:
            del self.by_need[cpus]
            del self.needs[bisect_left(self.needs, cpus)]

    def candidates(self, free_cpus: int, per_cpu: int) -> Iterator[int]:
        """Groups needing at most ``free_cpus`` whose highest cap covers their cpus at ``per_cpu`` at least."""
        for need in self.needs[: bisect_right(self.needs, free_cpus)]:
            entries = self.by_need[need]
            for _, gid in entries[bisect_left(entries, (need * per_cpu, -1)):]:
                yield gid


class Backlog:
    """Fresh jobs per owner (examined next) and parked jobs by shape (examined when a provider could take them)."""

    def __init__(self, per_owner: int = 200, per_round: int = 1_000) -> None:
        if per_owner < 1 or per_round < 1:
            raise ValueError(f"per_owner and per_round must be >= 1, got {per_owner!r}, {per_round!r}")
        self.per_owner = per_owner
        self.per_round = per_round
        self._fresh: dict[str, dict[int, PendingJob]] = {}
        self._owner_of: dict[int, str] = {}
        self._groups: dict[_Shape, _Group] = {}
        self._by_gid: dict[int, _Group] = {}
        self._shape_of: dict[int, _Shape] = {}
        self._index: dict[_Anchor, _CapIndex] = {}
        self._gids = count()
        self._cursor = 0

    # ------------------------------------------------------------------ reading

    @property
    def fresh(self) -> int:
        """How many jobs wait to be examined."""
        return len(self._owner_of)

    @property
    def parked(self) -> int:
        """How many jobs are parked (fit nowhere when last examined)."""
        return len(self._shape_of)

    def is_parked(self, job_id: int) -> bool:
        return job_id in self._shape_of

    # ------------------------------------------------------------------ changes

    def add(self, job: PendingJob) -> None:
        """``job`` is (again) pending, or changed: it is examined in a coming round (replaces what was held)."""
        self.remove(job.id)
        self._fresh.setdefault(job.owner, {})[job.id] = job
        self._owner_of[job.id] = job.owner

    def remove(self, job_id: int) -> None:
        """``job_id`` is no longer pending (assigned, cancelled, gone): forget it."""
        owner = self._owner_of.pop(job_id, None)
        if owner is not None:
            queue = self._fresh[owner]
            del queue[job_id]
            if not queue:
                del self._fresh[owner]
            return
        shape = self._shape_of.pop(job_id, None)
        if shape is not None:
            group = self._groups[shape]
            del group.jobs[job_id]
            if not group.jobs:
                self._drop_group(shape)

    def clear(self) -> None:
        """Forget every job (the caller adds the pending ones again, e.g. after a reorg)."""
        self._fresh.clear()
        self._owner_of.clear()
        self._groups.clear()
        self._by_gid.clear()
        self._shape_of.clear()
        self._index.clear()

    def touch(self, provider: ProviderState) -> int:
        """``provider`` changed: wake the parked jobs that fit it as it is now; returns how many woke.

        Only shapes it could take are looked at: those needing at most its free cpus, whose highest cap
        covers its cpu price for them, and whose first ``==`` label (if any) it carries.
        """
        if not provider.active:
            return 0
        free = provider.free
        per_cpu, per_gpu, per_gb = provider.prices.units  # plain ints: Credits arithmetic is slower
        woken = 0
        anchors: list[_Anchor] = [None, *((k, _canonical(v)) for k, v in provider.labels.items())]
        for anchor in anchors:
            index = self._index.get(anchor)
            if index is None:
                continue
            for gid in list(index.candidates(free.cpus, per_cpu)):
                group = self._by_gid.get(gid)
                if group is None:
                    continue
                cpus, gpus, mem, _ = group.shape
                if gpus > free.gpus or mem > free.mem_mb or cpus * per_cpu + gpus * per_gpu + (
                    mem * per_gb) // 1024 > group.cap:
                    continue
                for job in list(group.jobs.values()):
                    if _fits(job, provider):
                        self.remove(job.id)
                        self.add(job)
                        woken += 1
        return woken

    # ------------------------------------------------------------------ rounds

    def take(self) -> list[PendingJob]:
        """The jobs for the next round: up to ``per_owner`` of each owner's fresh jobs, oldest first, and at
        most ``per_round`` in all (owners in turn, starting after where the last round stopped).

        They leave the fresh queue; report each round's outcome with :meth:`settle` (or :meth:`restore`).
        """
        owners = list(self._fresh)
        if not owners:
            return []
        start = self._cursor % len(owners)
        taken: list[PendingJob] = []
        for n, owner in enumerate(owners[start:] + owners[:start]):
            room = self.per_round - len(taken)
            if room <= 0:
                self._cursor = start + n
                break
            taken.extend(islice(self._fresh[owner].values(), min(room, self.per_owner)))
        else:
            self._cursor = start + len(owners)
        for job in taken:
            self._forget_fresh(job)
        return taken

    def settle(self, taken: Iterable[PendingJob], placed: Iterable[int], unplaced: Iterable[int]) -> None:
        """After a round whose assignments landed: ``unplaced`` jobs are parked, ``placed`` ones forgotten,
        and the rest of ``taken`` (not reached: the batch was full) stay fresh."""
        done, park = set(placed), set(unplaced)
        for job in taken:
            if job.id in done:
                continue
            if job.id in park:
                self._park(job)
            elif job.id not in self._owner_of and job.id not in self._shape_of:
                self.add(job)

    def restore(self, taken: Iterable[PendingJob]) -> None:
        """The round's outcome is unknown (its batch did not land): ``taken`` are fresh again."""
        for job in taken:
            if job.id not in self._owner_of and job.id not in self._shape_of:
                self.add(job)

    # ------------------------------------------------------------------ internals

    def _forget_fresh(self, job: PendingJob) -> None:
        owner = self._owner_of.pop(job.id)
        queue = self._fresh[owner]
        del queue[job.id]
        if not queue:
            del self._fresh[owner]

    def _park(self, job: PendingJob) -> None:
        res = job.resources
        shape: _Shape = (res.cpus, res.gpus, res.mem_mb, tuple(job.labels))
        group = self._groups.get(shape)
        if group is None:
            anchor = next(((c.key, _canonical(c.value)) for c in job.labels if c.op is LabelOp.EQ), None)
            group = self._groups[shape] = _Group(shape, anchor, next(self._gids))
            self._by_gid[group.gid] = group
        elif job.max_rate > group.cap:
            self._index[group.anchor].discard(res.cpus, group.cap, group.gid)
        if job.max_rate > group.cap:
            group.cap = job.max_rate
            self._index.setdefault(group.anchor, _CapIndex()).add(res.cpus, group.cap, group.gid)
        group.jobs[job.id] = job
        self._shape_of[job.id] = shape

    def _drop_group(self, shape: _Shape) -> None:
        group = self._groups.pop(shape)
        del self._by_gid[group.gid]
        index = self._index[group.anchor]
        index.discard(shape[0], group.cap, group.gid)
        if not index.needs:
            del self._index[group.anchor]


def _canonical(value: str) -> str:
    """Label values equal as :func:`dsq_chain.workloads.labels.check` compares them are equal here (whole
    numbers by value, the rest as text)."""
    return value.lstrip("0") if value.isascii() and value.isdigit() else value


def _fits(job: PendingJob, provider: ProviderState) -> bool:
    try:
        return first_failure(job, provider) is None
    except ConstraintError:
        return False
