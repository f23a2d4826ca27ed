"""Search index over providers: find a job's best provider without scanning them all.

Providers are laid out in a binary tree (a k-d tree over prices, reliability,
load and GPU presence); each node keeps bounds over its providers: the most
free of each resource, the lowest price of each resource, the least used
fraction of each resource, the range of reliability, the label signatures
present, and two joint minima (price + load + unreliability) that stay tight
when cheap providers are the busy ones. From these, a lower bound of the
score of any provider in the node follows for a given demand. The layout
and the per-provider and leaf bounds are computed with numpy, every node of a
tree level at once; the search itself reads plain Python lists (faster for
one value at a time), filled from arrays computed with the same float64
operations as the Python expressions, so that they agree bit for bit (numpy
is imported by the build, not with this module).

Jobs with the same demand (resources, label signatures, fair-share level)
share a :class:`Frontier`: a best-first search over the tree that is kept
between jobs. Its heaps hold tree nodes (keyed by their lower bound) and
providers (keyed by their exact score when it was computed). During a batch
free capacity only shrinks, so scores only grow and every key stays a valid
lower bound: a provider whose capacity changed since it was scored is simply
re-scored when it reaches the top. The first up-to-date provider at the top
is exactly the best one (ties broken by address), the same a full scan would
pick; the next job of the same demand resumes where the previous one stopped.

Entries are bucketed by rate, so that a job only looks at the buckets within
its price cap. A job may search a frontier made for broader labels than its
own (see ``matcher._Batch._search``): entries it cannot use (other labels,
above its cap, excluded) are set aside during its search and put back. When
that gets too costly, its demand gets a frontier of its own, a copy of the
broader one's entries it can use (:meth:`Frontier.narrowed`): scores do not
depend on labels, so the copy is as far along as the original.

The index owns private copies of the free capacities: :meth:`ProviderIndex.place`
decrements them; the node bounds follow in a batched refresh now and then (a stale
bound is still a lower bound: see :meth:`ProviderIndex.place`).

``_search.c`` is this search compiled: the same tree, bounds, frontiers, rate
buckets and rent-or-buy narrowing on C arrays, with the same score arithmetic,
so its placements are these (the tests run both). A batch uses it when it is
built and every count and price is below 2**30
(:func:`~dsq_chain.matching.compiled.search_index`); this module serves the
rest, Python ints of any size included.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush, heapreplace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from dsq_chain.matching.model import ProviderState
from dsq_chain.matching.scoring import MarketReference, Weights, inverse

if TYPE_CHECKING:
    import numpy as np

#: Slack for floating-point rounding between a node's bound and the exact scores below it.
_EPS = 1e-9
_NO_CHILD = -1
#: A popped node whose bound rose by more than this since it was pushed goes back to the heap.
_RETRY = 1e-3
#: Providers per tree leaf: a leaf is scored in one pass, so its size trades bound checks for scorings.
DEFAULT_LEAF_SIZE = 32
#: Placements between two refreshes of the node bounds, at least (see :meth:`ProviderIndex.place`).
REFRESH_EVERY = 64
#: Number of rate buckets of a frontier (besides the one below the first edge).
_RATE_BUCKETS = 37
#: Stands for "no such provider" in the GPU joint minimum (finite, so that 0 * it is 0).
_FAR = 1e12

#: Heap entry: (key, address, ref, version, rate, price term, reliability terms).
#: ``ref >= 0`` is a provider index, scored at ``version``: ``key`` is its
#: score, the sum of the price term, the load term and the reliability terms.
#: ``ref < 0`` is node ``-1 - ref``: ``key`` and ``rate`` are lower bounds (computed after ``version``
#: refreshes of the node bounds) and the address is empty, so that it pops before providers with an equal key.
_Entry = tuple[float, str, int, int, int, float, float]
#: A label filter (see :meth:`ProviderIndex.label_filter`): one flag per label signature, and what the index
#: checks tree nodes with (the same as bits here; one flag per node in the compiled index).
LabelFilter = tuple[bytes, object]
_Bound = Callable[[int], "tuple[float, int] | None"]
#: Dynamic node bounds, all minima: of the negated free cpus, gpus, memory (the most free); of the used
#: fraction of cpus, gpus, memory, of the tightest resource; of the joint cpu-price and gpu-price terms
#: (see ProviderIndex._derive).
_Dynamic = tuple[int, int, int, float, float, float, float, float, float]
_NO_DYNAMIC: _Dynamic = (0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
#: Static node bounds, all minima: of the cpu, gpu, memory prices; of the reliability and of its negation
#: (the range); of the inverse cpu, gpu, memory capacity; of the unreliability term.
_Static = tuple[int, int, int, float, float, float, float, float, float]
_NO_STATIC: _Static = (0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Demand:
    """What the jobs sharing a :class:`Frontier` need; the price cap and exclusions stay per job.

    ``allowed`` holds one flag per label signature (``allowed_mask`` the same as
    bits); ``inv_ref`` is ``1 / reference rate`` of the resources and ``fair``
    is ``weights.fairshare * share level`` of the owner. ``rate_edges`` split
    rates into the buckets of a frontier (see :func:`rate_edges`).
    """

    cpus: int
    gpus: int
    mem_mb: int
    allowed: bytes
    allowed_mask: int
    inv_ref: float
    fair: float
    rate_edges: tuple[int, ...]


def rate_edges(reference_rate: float) -> tuple[int, ...]:
    """Bucket edges for rates: from a quarter to eight times ``reference_rate``, 10 % apart."""
    edges = {int(reference_rate * 0.25 * 1.1**k) for k in range(_RATE_BUCKETS)}
    return tuple(sorted(e for e in edges if e > 0))


_Row = TypeVar("_Row", _Static, _Dynamic)
_T = TypeVar("_T")


def _minima(rows: list[_Row]) -> _Row:
    """The column-wise minima of one or more rows."""
    return rows[0] if len(rows) == 1 else cast(_Row, tuple(map(min, *rows)))


class ProviderIndex:
    """The tree and the per-provider arrays, in tree order (provider ``i`` is the ``i``-th leaf slot)."""

    def __init__(
        self,
        providers: Sequence[ProviderState],
        signatures: Sequence[int],
        weights: Weights,
        market: MarketReference,
        leaf_size: int = DEFAULT_LEAF_SIZE,
    ) -> None:
        import numpy as np  # here, not with the module: only an index build needs it (CLI start-up)
        if leaf_size < 1:
            raise ValueError("leaf_size must be >= 1")
        self.weights = weights
        self._leaf_size = leaf_size
        self.k_cpu, self.k_gpu = joint_coefficients(weights, market)
        n = len(providers)
        rows, rel = provider_columns(providers)
        ints = _int_array(rows[:9]).reshape(9, n)
        order = tree_order(providers, ints, np.array(rel, dtype=np.float64), weights, leaf_size)
        pick = order.tolist()

        def permuted(values: list[_T]) -> list[_T]:
            return list(map(values.__getitem__, pick))

        ps = list(map(providers.__getitem__, pick))
        self.address = [p.address for p in ps]
        self.position = {a.lower(): i for i, a in enumerate(self.address)}
        self.sig = list(map(signatures.__getitem__, pick))
        self.version = [0] * n
        #: Bound refreshes so far: a node entry pushed at the current count still has its exact bound.
        self.refreshes = 0
        self._dirty: list[int] = []  # providers placed on since the last refresh
        self._refresh_every = max(REFRESH_EVERY, n)
        # In tree order, as arrays: the same float64 operations as the Python expressions (see _derive), so the
        # values agree bit for bit. Prices become plain ints: Credits arithmetic is slower.
        cols = ints[:, order]
        self.tc, self.tg, self.tm, self.fc, self.fg, self.fm, self.pc, self.pg, self.pm = cols.tolist()
        #: Free scratch disk at the batch's start (not decremented: the chain skips an entry that no longer fits).
        self.disk = permuted(rows[9])
        self.rel = permuted(rel)
        a_tc, a_tg, a_tm, a_fc, a_fg, a_fm, a_pc, a_pg = cols[:8]
        a_ic, a_ig, a_im = _inverses(a_tc), _inverses(a_tg), _inverses(a_tm)
        a_rel = np.array(self.rel, dtype=np.float64)
        a_unrel = weights.reliability * (1.0 - a_rel)
        self.ic, self.ig, self.im = a_ic.tolist(), a_ig.tolist(), a_im.tolist()
        # The score's reliability term without the fair-share part, exactly as scoring.score computes it.
        self.unrel = a_unrel.tolist()
        #: Per provider, what scoring reads that a batch does not change: totals, their inverses, prices,
        #: unreliability term, reliability, label signature, address.
        self.fixed = list(
            zip(self.tc, self.tg, self.tm, self.ic, self.ig, self.im, self.pc, self.pg, self.pm, self.unrel, self.rel,
                self.sig, self.address, strict=True)
        )  # fmt: skip
        uc, ug, um = (a_tc - a_fc) * a_ic, (a_tg - a_fg) * a_ig, (a_tm - a_fm) * a_im
        umax = np.maximum(np.maximum(uc, ug), um)
        base = weights.load * umax + a_unrel
        jc = self.k_cpu * a_pc + base
        jg = np.where(a_tg > 0, self.k_gpu * a_pg + base, _FAR)
        dynamic_ints, dynamic_floats = -cols[3:6], np.stack((uc, ug, um, umax, jc, jg))
        #: Per provider, its part of the dynamic node bounds (see :data:`_Dynamic`).
        self.row: list[_Dynamic] = list(zip(*dynamic_ints.tolist(), *dynamic_floats.tolist(), strict=True))
        static_ints = cols[6:9]
        static_floats = np.stack((a_rel, -a_rel, a_ic, a_ig, a_im, a_unrel))
        self._build_nodes(static_ints, static_floats, dynamic_ints, dynamic_floats)

    def __len__(self) -> int:
        return len(self.address)

    def _derive(self, i: int) -> _Dynamic:
        """Provider ``i``'s part of the dynamic bounds (negated free capacity, used fractions, joint terms)."""
        fc, fg, fm = self.fc[i], self.fg[i], self.fm[i]
        uc = (self.tc[i] - fc) * self.ic[i]
        ug = (self.tg[i] - fg) * self.ig[i]
        um = (self.tm[i] - fm) * self.im[i]
        umax = max(uc, ug, um)
        base = self.weights.load * umax + self.unrel[i]
        jg = self.k_gpu * self.pg[i] + base if self.tg[i] > 0 else _FAR
        return (-fc, -fg, -fm, uc, ug, um, umax, self.k_cpu * self.pc[i] + base, jg)

    # ------------------------------------------------------------------ tree construction

    def _build_nodes(self, *columns: np.ndarray) -> None:
        """The tree over the providers in tree order; ``columns``: the static (ints, floats) and dynamic (ints,
        floats) per-provider bound columns, reduced to each leaf's minima at once."""
        import numpy as np
        self.lo: list[int] = []
        self.hi: list[int] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.parent: list[int] = []
        self.mask: list[int] = []  # label signatures present, as bits
        self.leaf_of = [0] * len(self.address)
        leaves: list[int] = []
        if self.address:
            self._make_node(0, len(self.address), _NO_CHILD, leaves)
        starts = np.array([self.lo[leaf] for leaf in leaves], dtype=np.intp)
        s_int, s_float, d_int, d_float = (np.minimum.reduceat(c, starts, axis=1).tolist() if len(starts) else []
                                          for c in columns)  # fmt: skip
        self.static: list[_Static] = [_NO_STATIC] * len(self.lo)
        self.dynamic: list[_Dynamic] = [_NO_DYNAMIC] * len(self.lo)
        for k, leaf in enumerate(leaves):
            self.static[leaf] = cast(_Static, (*(c[k] for c in s_int), *(c[k] for c in s_float)))
            self.dynamic[leaf] = cast(_Dynamic, (*(c[k] for c in d_int), *(c[k] for c in d_float)))
        left, right, static, dynamic, mask = self.left, self.right, self.static, self.dynamic, self.mask
        for node in reversed(range(len(self.lo))):  # children are numbered after their parent
            a, b = left[node], right[node]
            if a != _NO_CHILD:
                mask[node] = mask[a] | mask[b]
                static[node] = cast(_Static, tuple(map(min, static[a], static[b])))
                dynamic[node] = cast(_Dynamic, tuple(map(min, dynamic[a], dynamic[b])))

    def _make_node(self, lo: int, hi: int, parent: int, leaves: list[int]) -> int:
        """Node ``lo .. hi - 1`` and its subtree (its bounds are set by :meth:`_build_nodes`)."""
        node = len(self.lo)
        self.lo.append(lo)
        self.hi.append(hi)
        self.parent.append(parent)
        self.left.append(_NO_CHILD)
        self.right.append(_NO_CHILD)
        self.mask.append(0)
        if hi - lo <= self._leaf_size:
            mask = 0
            for s in set(self.sig[lo:hi]):
                mask |= 1 << s
            self.leaf_of[lo:hi] = [node] * (hi - lo)
            self.mask[node] = mask
            leaves.append(node)
        else:
            mid = (lo + hi) // 2
            self.left[node] = self._make_node(lo, mid, node, leaves)
            self.right[node] = self._make_node(mid, hi, node, leaves)
        return node

    # ------------------------------------------------------------------ bounds maintenance

    def place(self, i: int, cpus: int, gpus: int, mem_mb: int) -> None:
        """Take ``cpus``/``gpus``/``mem_mb`` from provider ``i``'s free capacity.

        The node bounds are refreshed lazily, once per as many placements as there are providers (at least
        :data:`REFRESH_EVERY`): capacity only shrinks, so every dynamic bound (most free, least used, joint
        minima) only grows and a stale one is still a valid lower bound, just a looser one. Refreshing on
        every placement cost more than the searches lose to the looser bounds (measured)."""
        self.version[i] += 1
        self.fc[i] -= cpus
        self.fg[i] -= gpus
        self.fm[i] -= mem_mb
        self._dirty.append(i)
        if len(self._dirty) >= self._refresh_every:
            self.refresh()

    def refresh(self) -> None:
        """Bring the node bounds up to date with the placements since the last refresh."""
        dirty, self._dirty = self._dirty, []
        dynamic, row, lo, hi, leaf_of, parent = self.dynamic, self.row, self.lo, self.hi, self.leaf_of, self.parent
        changed: set[int] = set()
        for i in set(dirty):
            row[i] = self._derive(i)
            changed.add(leaf_of[i])
        pending: set[int] = set()
        for node in changed:
            new = _minima(row[lo[node] : hi[node]])
            if new != dynamic[node]:
                dynamic[node] = new
                if parent[node] != _NO_CHILD:
                    pending.add(parent[node])
        left, right = self.left, self.right
        # Parents are numbered before their children: the highest pending node has no pending descendant.
        heap = [-node for node in pending]
        heapify(heap)
        while heap:
            node = -heappop(heap)
            new = cast(_Dynamic, tuple(map(min, dynamic[left[node]], dynamic[right[node]])))
            if new != dynamic[node]:
                dynamic[node] = new
                up = parent[node]
                if up != _NO_CHILD and up not in pending:
                    pending.add(up)
                    heappush(heap, -up)
        self.refreshes += 1

    def could_take(self, cpus: int, gpus: int, mem_mb: int, cap: int) -> bool:
        """False when no provider can take the demand, by the root's bounds alone (free capacity, lowest
        prices): a job that fits nowhere costs no search. (Labels are the caller's: it counts the providers
        whose labels a job allows.)"""
        if not self.address:
            return False
        most, cheapest = self.dynamic[0], self.static[0]  # most free (negated), lowest prices
        return (-most[0] >= cpus and -most[1] >= gpus and -most[2] >= mem_mb
                and cpus * cheapest[0] + gpus * cheapest[1] + (mem_mb * cheapest[2]) // 1024 <= cap)

    def label_filter(self, allowed: bytes, allowed_mask: int) -> LabelFilter:
        """What :meth:`Frontier.best` and :meth:`Frontier.narrowed` take to narrow a search to the label
        signatures flagged in ``allowed`` (``allowed_mask``: the same as bits)."""
        return (allowed, allowed_mask)

    def frontier(self, demand: Demand) -> Frontier:
        """A new search for ``demand``, from the root."""
        return Frontier(self, demand)

    # ------------------------------------------------------------------ scoring

    def bound_fn(self, d: Demand) -> _Bound:
        """A function giving a node's ``(score lower bound, rate lower bound)`` for ``d``.

        It returns None when no provider in the node can take ``d`` (capacity or labels).
        Three bounds are combined: one from the per-resource extremes, and two
        from the joint minima, which tie the cpu (gpu) price to the load and
        unreliability of the same provider.
        """
        c, g, m, allowed_mask = d.cpus, d.gpus, d.mem_mb, d.allowed_mask
        w = self.weights
        kp, wl, wr, fair = w.price * d.inv_ref, w.load, w.reliability, d.fair
        slope = fair - wr  # the reliability terms are wr + rel * slope
        use_min_rel = slope >= 0
        k_cpu, k_gpu = self.k_cpu, self.k_gpu
        # cpu price coefficient kp * c = lam_c * k_cpu + spare_c (and likewise for gpus)
        lam_c = min(1.0, kp * c / k_cpu) if k_cpu > 0 else 0.0
        spare_c = kp * c - lam_c * k_cpu
        lam_g = min(1.0, kp * g / k_gpu) if k_gpu > 0 and g > 0 else 0.0
        spare_g = kp * g - lam_g * k_gpu
        static, mask, dynamic = self.static, self.mask, self.dynamic

        def bound(node: int) -> tuple[float, int] | None:
            nfc, nfg, nfm, muc, mug, mum, mumax, mjc, mjg = dynamic[node]
            if -nfc < c or -nfg < g or -nfm < m or not mask[node] & allowed_mask:
                return None
            pc, pg, pm, rmin, nrmax, ic, ig, im, munrel = static[node]
            mem_rate = (m * pm) // 1024
            rate = c * pc + g * pg + mem_rate
            lb = (
                kp * rate
                + wl * max(muc + c * ic, mum + m * im, mug + g * ig)
                + wr
                + (rmin if use_min_rel else -nrmax) * slope
            )
            rest = (1.0 - lam_c) * (wl * mumax + munrel) + fair * rmin
            joint = lam_c * mjc + spare_c * pc + kp * (g * pg + mem_rate) + rest
            if g:
                rest = (1.0 - lam_g) * (wl * mumax + munrel) + fair * rmin
                joint = max(joint, lam_g * mjg + spare_g * pg + kp * (c * pc + mem_rate) + rest)
            top = max(lb, joint)
            # the bound adds the score's terms in another order: a few ulps off, so the slack grows with it
            return top - (_EPS + 1e-12 * (abs(top) + wr + fair)), rate

        return bound

    def entries(self, d: Demand, lo: int, hi: int) -> list[_Entry]:
        """Heap entries with the exact scores of the providers at positions ``lo .. hi - 1`` that can take ``d``
        now.

        The arithmetic is :func:`~dsq_chain.matching.scoring.score`'s, term for
        term (the load is :func:`~dsq_chain.matching.scoring.load_after`'s
        ``max`` written out: the first largest term), so that scores agree bit
        for bit with :meth:`Matcher.explain`.
        """
        c, g, m, allowed, inv_ref, fair = d.cpus, d.gpus, d.mem_mb, d.allowed, d.inv_ref, d.fair
        w = self.weights
        wp, wl = w.price, w.load
        out: list[_Entry] = []
        for i, f_c, f_g, f_m, fixed, seen in zip(
            range(lo, hi), self.fc[lo:hi], self.fg[lo:hi], self.fm[lo:hi], self.fixed[lo:hi], self.version[lo:hi],
            strict=True,
        ):
            if f_c < c or f_g < g or f_m < m:
                continue
            tc, tg, tm, ic, ig, im, pc, pg, pm, unrel, rel, sig, address = fixed
            if not allowed[sig]:
                continue
            rate = c * pc + g * pg + (m * pm) // 1024
            load = (tc - f_c + c) * ic
            other = (tm - f_m + m) * im
            if other > load:
                load = other
            other = (tg - f_g + g) * ig
            if other > load:
                load = other
            price = wp * (rate * inv_ref)
            reliability = unrel + fair * rel
            out.append((price + wl * load + reliability, address, i, seen, rate, price, reliability))
        return out


class Frontier:
    """A resumable best-first search for one :class:`Demand` (see the module docstring).

    Its entries are kept in buckets by rate (a node's by its lowest possible
    rate), so that a job only looks at the buckets within its price cap and
    skips (sets aside) entries above its cap in one bucket at most.
    """

    __slots__ = ("_bound", "_edges", "_heaps", "_index", "demand")

    def __init__(self, index: ProviderIndex, demand: Demand, *, root: bool = True) -> None:
        self._index = index
        self.demand = demand
        self._bound = index.bound_fn(demand)
        self._edges = demand.rate_edges
        self._heaps: list[list[_Entry]] = [[] for _ in range(len(self._edges) + 1)]
        if not root:
            return
        root_bound = self._bound(0) if len(index) else None
        if root_bound is not None:
            self._push((root_bound[0], "", -1, index.refreshes, root_bound[1], 0.0, 0.0))

    def _push(self, entry: _Entry) -> None:
        heappush(self._heaps[bisect_right(self._edges, entry[4])], entry)

    def __len__(self) -> int:
        """Entries held (providers scored and nodes not expanded yet)."""
        return sum(map(len, self._heaps))

    def narrowed(self, demand: Demand, labels: LabelFilter) -> Frontier:
        """A frontier for ``demand``, the same shape and fair share as this one's with narrower labels
        (``labels``, its filter), starting where this one is: its entries of providers and nodes ``demand``
        allows."""
        out = Frontier(self._index, demand, root=False)
        sig, mask, allowed, allowed_mask = self._index.sig, self._index.mask, demand.allowed, demand.allowed_mask
        for heap, source in zip(out._heaps, self._heaps, strict=True):
            heap.extend(e for e in source if (allowed[sig[e[2]]] if e[2] >= 0 else mask[-1 - e[2]] & allowed_mask))
            heapify(heap)
        return out

    def score_of(self, i: int) -> tuple[float, int] | None:
        """Provider ``i``'s score and rate for the demand now, or None when it cannot take it."""
        entries = self._index.entries(self.demand, i, i + 1)
        return (entries[0][0], entries[0][4]) if entries else None

    def best(
        self,
        cap: int,
        excluded: frozenset[int] = frozenset(),
        disk: int = 0,
        narrow: LabelFilter | None = None,
        budget: int = -1,
    ) -> tuple[tuple[int, int] | None, int, bool]:
        """The best provider for a job of this frontier's demand with price cap ``cap``.

        The job may not go to the provider indices in ``excluded``, needs
        ``disk`` GB of scratch disk free (see :attr:`ProviderIndex.disk`) and,
        when it shares the frontier with jobs of broader label needs, only
        allows the label signatures ``narrow`` allows (see
        :meth:`ProviderIndex.label_filter`; None: no narrowing).

        Returns ``((provider index, rate) or None, skips, complete)``.
        Better-scored entries that the job cannot use are set aside while it
        searches and put back after, for the frontier's other jobs; ``skips``
        counts them. After ``budget`` skips the search stops incomplete.
        """
        index, d = self._index, self.demand
        allowed, allowed_mask = (narrow[0], cast(int, narrow[1])) if narrow is not None else (None, 0)
        version, fc, fg, fm, tc, tg, tm = index.version, index.fc, index.fg, index.fm, index.tc, index.tg, index.tm
        ic, ig, im, sig, node_mask, free_disk = index.ic, index.ig, index.im, index.sig, index.mask, index.disk
        c, g, m, wl = d.cpus, d.gpus, d.mem_mb, index.weights.load
        # Buckets past the one holding cap have rates above it; those before it, rates below it.
        buckets = self._heaps[: bisect_right(self._edges, cap) + 1]
        best: _Entry | None = None
        skips = 0
        # Set aside from the bucket searched; put back once done with it: a search only pushes to later buckets.
        aside: list[_Entry] = []
        for heap in filter(None, buckets):
            while heap:
                top = heap[0]
                if best is not None and top >= best:
                    break  # keys are lower bounds: nothing in this bucket beats the best
                key, address, ref, seen, rate, price, reliability = top
                if ref < 0:
                    if rate > cap or (allowed is not None and not node_mask[-1 - ref] & allowed_mask):
                        aside.append(heappop(heap))
                        if skips + len(aside) == budget:
                            _restore(heap, aside)
                            return None, budget, False
                    else:
                        heappop(heap)
                        self._expand(-1 - ref, key, seen)
                elif seen != version[ref]:  # capacity changed since scored: re-score (load only), for every job
                    c_free, g_free, m_free = fc[ref], fg[ref], fm[ref]
                    if c_free < c or g_free < g or m_free < m:
                        heappop(heap)  # no longer fits: capacity only shrinks during a batch
                        continue
                    load = (tc[ref] - c_free + c) * ic[ref]  # as in ProviderIndex.entries
                    other = (tm[ref] - m_free + m) * im[ref]
                    if other > load:
                        load = other
                    other = (tg[ref] - g_free + g) * ig[ref]
                    if other > load:
                        load = other
                    heapreplace(
                        heap, (price + wl * load + reliability, address, ref, version[ref], rate, price, reliability)
                    )
                elif (
                    rate > cap
                    or ref in excluded
                    or free_disk[ref] < disk
                    or (allowed is not None and not allowed[sig[ref]])
                ):
                    aside.append(heappop(heap))
                    if skips + len(aside) == budget:
                        _restore(heap, aside)
                        return None, budget, False
                else:
                    best = top
                    break
            if aside:
                skips += len(aside)
                _restore(heap, aside)
                aside = []
        return (None if best is None else (best[2], best[4])), skips, True

    def _expand(self, node: int, key: float, seen: int) -> None:
        """Replace a popped node (pushed after ``seen`` bound refreshes) by its children (or, for a leaf, its
        providers' exact scores)."""
        index = self._index
        refreshes = index.refreshes
        if seen != refreshes:
            current = self._bound(node)
            if current is None:
                return
            if current[0] > key + _RETRY:  # placements since it was pushed raised the bound: revisit it later
                self._push((current[0], "", -1 - node, refreshes, current[1], 0.0, 0.0))
                return
        left = index.left[node]
        if left == _NO_CHILD:
            heaps, edges = self._heaps, self._edges
            for entry in index.entries(self.demand, index.lo[node], index.hi[node]):
                heappush(heaps[bisect_right(edges, entry[4])], entry)
            return
        for child in (left, index.right[node]):
            lb = self._bound(child)
            if lb is not None:
                self._push((lb[0], "", -1 - child, refreshes, lb[1], 0.0, 0.0))


def _restore(heap: list[_Entry], aside: list[_Entry]) -> None:
    for entry in aside:
        heappush(heap, entry)


# ---------------------------------------------------------------------- columns and k-d layout


def provider_columns(providers: Sequence[ProviderState]) -> tuple[list[list[Any]], list[float]]:
    """Per provider, as rows: total cpus, gpus, memory; free cpus, gpus, memory; cpu, gpu, memory prices;
    free scratch disk (prices as given: :func:`_int_array` makes them plain ints). And each one's reliability."""
    totals = [p.total for p in providers]
    frees = [p.free for p in providers]
    prices = [p.prices for p in providers]
    rows: list[list[Any]] = [
        [t.cpus for t in totals], [t.gpus for t in totals], [t.mem_mb for t in totals],
        [f.cpus for f in frees], [f.gpus for f in frees], [f.mem_mb for f in frees],
        [q.per_cpu_minute for q in prices], [q.per_gpu_minute for q in prices], [q.per_gb_minute for q in prices],
        [f.disk_gb for f in frees],
    ]  # fmt: skip
    return rows, [p.stats.reliability for p in providers]


def joint_coefficients(weights: Weights, market: MarketReference) -> tuple[float, float]:
    """``k_cpu``, ``k_gpu`` of the joint bound terms: k_cpu * per-cpu price (k_gpu * per-gpu price) + load
    weight * used fraction + unreliability, the price weight over the market's median price."""
    k_cpu = weights.price / market.per_cpu_minute if market.per_cpu_minute > 0 else 0.0
    k_gpu = weights.price / market.per_gpu_minute if market.per_gpu_minute > 0 else 0.0
    return k_cpu, k_gpu


def tree_order(
    providers: Sequence[ProviderState], ints: np.ndarray, reliability: np.ndarray, weights: Weights, leaf_size: int
) -> np.ndarray:
    """The providers' tree order (see :func:`_build_order`), from the first nine rows of
    :func:`provider_columns` as an array and the reliabilities."""
    return _build_order([p.address for p in providers], _axes(ints[:9], reliability, weights), leaf_size)


def _build_order(addresses: list[str], columns: np.ndarray, leaf_size: int) -> np.ndarray:
    """A permutation of the providers such that each tree node covers a contiguous, homogeneous range.

    Each node is split at the median of the attribute (a row of ``columns``)
    along which its providers spread most (attributes scaled by their weight in
    the score), so that node bounds are tight where it matters. The tree is
    laid out one level at a time, every node of a level at once. Providers
    start in address order, which makes the layout (and so the search)
    deterministic.
    """
    import numpy as np
    n = len(addresses)
    order = np.array(sorted(range(n), key=addresses.__getitem__), dtype=np.intp)
    bounds = [0, n]  # node boundaries of the current level
    while True:
        starts = np.array(bounds[:-1], dtype=np.intp)
        sizes: np.ndarray = np.diff(np.array(bounds, dtype=np.intp))
        split = sizes > leaf_size
        if not split.any():
            return order
        values = columns[:, order]
        spread = np.maximum.reduceat(values, starts, axis=1) - np.minimum.reduceat(values, starts, axis=1)
        axis = np.argmax(spread, axis=0)  # the first widest attribute of each node
        node = np.repeat(np.arange(len(starts)), sizes)
        key = np.where(np.repeat(split, sizes), values[np.repeat(axis, sizes), np.arange(n)], 0.0)
        order = order[np.lexsort((key, node))]  # stable: leaves keep their order
        mids = (starts + sizes // 2)[split].tolist()
        bounds = sorted(bounds + mids)


def _axes(ints: np.ndarray, reliability: np.ndarray, w: Weights) -> np.ndarray:
    """Per attribute, each provider's coordinate, scaled by how much it moves a typical job's score.

    ``ints`` holds the totals, free capacities and prices (rows as in :class:`ProviderIndex`). Attributes:
    cpu, memory and gpu prices relative to the median, reliability, load (the tightest resource's used
    fraction) and GPU presence.
    """
    import numpy as np
    tc, tg, tm, fc, fg, fm, pc, pg, pm = ints
    has_gpus = tg > 0
    cpu = w.price * 0.8 / _median_of(pc)
    gpu = w.price * 0.9 / _median_of(pg[has_gpus])
    mem = w.price * 0.2 / _median_of(pm)
    used = np.maximum(np.maximum((tc - fc) * _inverses(tc), (tm - fm) * _inverses(tm)), (tg - fg) * _inverses(tg))
    return np.stack((
        cpu * pc,
        mem * pm,
        np.where(has_gpus, gpu * pg, 0.0),
        w.reliability * reliability,
        w.load * used,
        np.where(has_gpus, 4.0, 0.0),
    )).reshape(6, len(tc)).astype(np.float64)  # fmt: skip


def _median_of(values: np.ndarray) -> float:
    import numpy as np
    ordered = np.sort(values)
    return max(float(ordered[len(ordered) // 2]), 1.0) if len(ordered) else 1.0


def _inverses(totals: np.ndarray) -> np.ndarray:
    """:func:`~dsq_chain.matching.scoring.inverse` of each of ``totals``: ``1 / total``, or 0.0 where it is 0."""
    import numpy as np
    if totals.dtype == object:
        return np.array([inverse(t) for t in totals.tolist()], dtype=np.float64)
    out = np.zeros(len(totals), dtype=np.float64)
    np.divide(1.0, totals, out=out, where=totals > 0)
    return out


def _int_array(rows: list[list[Any]]) -> np.ndarray:
    """``rows`` as int64, or as Python ints (an object array: slower, same arithmetic) where a value does not fit."""
    import numpy as np
    try:
        return np.array(rows, dtype=np.int64)
    except OverflowError:
        return np.array([[int(v) for v in row] for row in rows], dtype=object)  # int(): Credits arithmetic differs
