"""Search index over providers: find a job's best provider without scanning them all.

Providers are laid out in a binary tree (a k-d tree over prices, reliability,
load and GPU presence); each node keeps bounds over its providers: the most
free of each resource, the lowest price of each resource, the least used
fraction of each resource, the range of reliability, the label signatures
present, and two joint minima (price + load + unreliability) that stay tight
when cheap providers are the busy ones. From these, a lower bound of the
score of any provider in the node follows for a given demand.

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
above its cap, excluded) are set aside during its search and put back.

The index owns private copies of the free capacities: :meth:`ProviderIndex.place`
decrements them and refreshes the bounds on the path to the root.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush, heapreplace

from dsq_chain.matching.model import ProviderState
from dsq_chain.matching.scoring import MarketReference, Weights, inverse

#: Slack for floating-point rounding between a node's bound and the exact scores below it.
_EPS = 1e-9
_NO_CHILD = -1
#: A popped node whose bound rose by more than this since it was pushed goes back to the heap.
_RETRY = 1e-3
#: Number of rate buckets of a frontier (besides the one below the first edge).
_RATE_BUCKETS = 37
#: Stands for "no such provider" in the GPU joint minimum (finite, so that 0 * it is 0).
_FAR = 1e12

#: Heap entry: (key, address, ref, version, rate, price term, reliability terms).
#: ``ref >= 0`` is a provider index, scored at ``version``: ``key`` is its
#: score, the sum of the price term, the load term and the reliability terms.
#: ``ref < 0`` is node ``-1 - ref``: ``key`` and ``rate`` are lower bounds and
#: the address is empty, so that it pops before providers with an equal key.
_Entry = tuple[float, str, int, int, int, float, float]
_Bound = Callable[[int], "tuple[float, int] | None"]
#: Dynamic node bounds: max free cpus, gpus, memory; min used fraction of cpus, gpus, memory,
#: of the tightest resource; min joint cpu-price and gpu-price terms (see ProviderIndex._derive).
_Dynamic = tuple[int, int, int, float, float, float, float, float, float]


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


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What one job requires beyond its frontier's :class:`Demand`.

    ``allowed``/``allowed_mask`` narrow the label signatures when the job
    shares a frontier with jobs of broader label needs (None: no narrowing);
    ``excluded`` holds provider indices the job may not go to.
    """

    cap: int
    excluded: frozenset[int]
    allowed: bytes | None = None
    allowed_mask: int = 0


def rate_edges(reference_rate: float) -> tuple[int, ...]:
    """Bucket edges for rates: from a quarter to eight times ``reference_rate``, 10 % apart."""
    edges = {int(reference_rate * 0.25 * 1.1**k) for k in range(_RATE_BUCKETS)}
    return tuple(sorted(e for e in edges if e > 0))


class ProviderIndex:
    """The tree and the per-provider arrays, in tree order (provider ``i`` is the ``i``-th leaf slot)."""

    def __init__(
        self,
        providers: Sequence[ProviderState],
        signatures: Sequence[int],
        weights: Weights,
        market: MarketReference,
        leaf_size: int = 16,
    ) -> None:
        if leaf_size < 1:
            raise ValueError("leaf_size must be >= 1")
        self.weights = weights
        self._leaf_size = leaf_size
        # Joint terms: k_cpu * per-cpu price (and k_gpu * per-gpu price) + load weight * used + unreliability.
        self.k_cpu = weights.price / market.per_cpu_minute if market.per_cpu_minute > 0 else 0.0
        self.k_gpu = weights.price / market.per_gpu_minute if market.per_gpu_minute > 0 else 0.0
        order = _build_order(providers, weights, leaf_size)
        ps = [providers[k] for k in order]
        self.address = [p.address for p in ps]
        self.position = {p.address.lower(): i for i, p in enumerate(ps)}
        self.sig = [signatures[k] for k in order]
        self.version = [0] * len(ps)
        self.fc = [p.free.cpus for p in ps]
        self.fg = [p.free.gpus for p in ps]
        self.fm = [p.free.mem_mb for p in ps]
        self.tc = [p.total.cpus for p in ps]
        self.tg = [p.total.gpus for p in ps]
        self.tm = [p.total.mem_mb for p in ps]
        self.ic = [inverse(t) for t in self.tc]
        self.ig = [inverse(t) for t in self.tg]
        self.im = [inverse(t) for t in self.tm]
        units = [p.prices.units for p in ps]  # plain ints: Credits arithmetic is slower
        self.pc = [u[0] for u in units]
        self.pg = [u[1] for u in units]
        self.pm = [u[2] for u in units]
        self.rel = [p.stats.reliability for p in ps]
        # The score's reliability term without the fair-share part, exactly as scoring.score computes it.
        self.unrel = [weights.reliability * (1.0 - r) for r in self.rel]
        self.uc = [0.0] * len(ps)
        self.ug = [0.0] * len(ps)
        self.um = [0.0] * len(ps)
        self.umax = [0.0] * len(ps)
        self.jc = [0.0] * len(ps)
        self.jg = [0.0] * len(ps)
        for i in range(len(ps)):
            self._derive(i)
        self._build_nodes()

    def __len__(self) -> int:
        return len(self.address)

    def _derive(self, i: int) -> None:
        """Recompute provider ``i``'s used fractions and joint terms from its free capacity."""
        self.uc[i] = uc = (self.tc[i] - self.fc[i]) * self.ic[i]
        self.ug[i] = ug = (self.tg[i] - self.fg[i]) * self.ig[i]
        self.um[i] = um = (self.tm[i] - self.fm[i]) * self.im[i]
        self.umax[i] = umax = max(uc, ug, um)
        base = self.weights.load * umax + self.unrel[i]
        self.jc[i] = self.k_cpu * self.pc[i] + base
        self.jg[i] = self.k_gpu * self.pg[i] + base if self.tg[i] > 0 else _FAR

    # ------------------------------------------------------------------ tree construction

    def _build_nodes(self) -> None:
        self.lo: list[int] = []
        self.hi: list[int] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.parent: list[int] = []
        # Static per node: price minima, reliability range, inverse-capacity minima, min unreliability.
        self.static: list[tuple[int, int, int, float, float, float, float, float, float]] = []
        self.mask: list[int] = []  # label signatures present, as bits
        self.dynamic: list[_Dynamic] = []
        self.leaf_of = [0] * len(self.address)
        if self.address:
            self._make_node(0, len(self.address), _NO_CHILD)

    def _make_node(self, lo: int, hi: int, parent: int) -> int:
        node = len(self.lo)
        self.lo.append(lo)
        self.hi.append(hi)
        self.parent.append(parent)
        self.left.append(_NO_CHILD)
        self.right.append(_NO_CHILD)
        rel = self.rel[lo:hi]
        mask = 0
        for s in set(self.sig[lo:hi]):
            mask |= 1 << s
        self.mask.append(mask)
        self.static.append(
            (
                min(self.pc[lo:hi]),
                min(self.pg[lo:hi]),
                min(self.pm[lo:hi]),
                min(rel),
                max(rel),
                min(self.ic[lo:hi]),
                min(self.ig[lo:hi]),
                min(self.im[lo:hi]),
                min(self.unrel[lo:hi]),
            )
        )
        self.dynamic.append(self._leaf_range(lo, hi))
        if hi - lo <= self._leaf_size:
            for i in range(lo, hi):
                self.leaf_of[i] = node
        else:
            mid = (lo + hi) // 2
            self.left[node] = self._make_node(lo, mid, node)
            self.right[node] = self._make_node(mid, hi, node)
        return node

    # ------------------------------------------------------------------ bounds maintenance

    def _leaf_range(self, lo: int, hi: int) -> _Dynamic:
        return (
            max(self.fc[lo:hi]),
            max(self.fg[lo:hi]),
            max(self.fm[lo:hi]),
            min(self.uc[lo:hi]),
            min(self.ug[lo:hi]),
            min(self.um[lo:hi]),
            min(self.umax[lo:hi]),
            min(self.jc[lo:hi]),
            min(self.jg[lo:hi]),
        )

    def place(self, i: int, cpus: int, gpus: int, mem_mb: int) -> None:
        """Take ``cpus``/``gpus``/``mem_mb`` from provider ``i``'s free capacity and refresh the bounds."""
        self.version[i] += 1
        node = self.leaf_of[i]
        before = (
            self.fc[i], self.fg[i], self.fm[i], self.uc[i], self.ug[i], self.um[i], self.umax[i], self.jc[i], self.jg[i]
        )  # fmt: skip
        self.fc[i] -= cpus
        self.fg[i] -= gpus
        self.fm[i] -= mem_mb
        self._derive(i)
        # The node bounds change only if provider i held one of its leaf's extremes.
        if any(value == extreme for value, extreme in zip(before, self.dynamic[node], strict=True)):
            self.dynamic[node] = self._leaf_range(self.lo[node], self.hi[node])
            self._refresh_ancestors(self.parent[node])

    def _refresh_ancestors(self, node: int) -> None:
        dynamic, left, right, parent = self.dynamic, self.left, self.right, self.parent
        while node != _NO_CHILD:
            a, b = dynamic[left[node]], dynamic[right[node]]
            new = (
                max(a[0], b[0]),
                max(a[1], b[1]),
                max(a[2], b[2]),
                min(a[3], b[3]),
                min(a[4], b[4]),
                min(a[5], b[5]),
                min(a[6], b[6]),
                min(a[7], b[7]),
                min(a[8], b[8]),
            )
            if new == dynamic[node]:
                return  # the ancestors' bounds cannot change either
            dynamic[node] = new
            node = parent[node]

    def could_take(self, cpus: int, gpus: int, mem_mb: int, cap: int, allowed_mask: int) -> bool:
        """False when no provider can take the demand, by the root's bounds alone (free capacity, lowest
        prices, label signatures present): a job that fits nowhere costs no search."""
        if not self.address:
            return False
        mfc, mfg, mfm = self.dynamic[0][:3]
        pc, pg, pm = self.static[0][:3]
        return (mfc >= cpus and mfg >= gpus and mfm >= mem_mb and bool(self.mask[0] & allowed_mask)
                and cpus * pc + gpus * pg + (mem_mb * pm) // 1024 <= cap)

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
            mfc, mfg, mfm, muc, mug, mum, mumax, mjc, mjg = dynamic[node]
            if mfc < c or mfg < g or mfm < m or not mask[node] & allowed_mask:
                return None
            pc, pg, pm, rmin, rmax, ic, ig, im, munrel = static[node]
            mem_rate = (m * pm) // 1024
            rate = c * pc + g * pg + mem_rate
            lb = (
                kp * rate
                + wl * max(muc + c * ic, mum + m * im, mug + g * ig)
                + wr
                + (rmin if use_min_rel else rmax) * slope
            )
            rest = (1.0 - lam_c) * (wl * mumax + munrel) + fair * rmin
            joint = lam_c * mjc + spare_c * pc + kp * (g * pg + mem_rate) + rest
            if g:
                rest = (1.0 - lam_g) * (wl * mumax + munrel) + fair * rmin
                joint = max(joint, lam_g * mjg + spare_g * pg + kp * (c * pc + mem_rate) + rest)
            return max(lb, joint) - _EPS, rate

        return bound

    def leaf_entries(self, d: Demand, lo: int, hi: int) -> list[_Entry]:
        """Heap entries with the exact scores of the providers ``lo .. hi - 1`` that can take ``d`` now.

        The arithmetic is :func:`~dsq_chain.matching.scoring.score`'s, term for
        term, so that scores agree bit for bit with :meth:`Matcher.explain`.
        """
        c, g, m, allowed, inv_ref, fair = d.cpus, d.gpus, d.mem_mb, d.allowed, d.inv_ref, d.fair
        w = self.weights
        wp, wl = w.price, w.load
        fc, fg, fm, tc, tg, tm = self.fc, self.fg, self.fm, self.tc, self.tg, self.tm
        ic, ig, im, pc, pg, pm = self.ic, self.ig, self.im, self.pc, self.pg, self.pm
        sig, unrel, rel, address, version = self.sig, self.unrel, self.rel, self.address, self.version
        out: list[_Entry] = []
        for i in range(lo, hi):
            if fc[i] < c or fg[i] < g or fm[i] < m or not allowed[sig[i]]:
                continue
            rate = c * pc[i] + g * pg[i] + (m * pm[i]) // 1024
            load = max((tc[i] - fc[i] + c) * ic[i], (tm[i] - fm[i] + m) * im[i], (tg[i] - fg[i] + g) * ig[i])
            price = wp * (rate * inv_ref)
            reliability = unrel[i] + fair * rel[i]
            out.append((price + wl * load + reliability, address[i], i, version[i], rate, price, reliability))
        return out


class Frontier:
    """A resumable best-first search for one :class:`Demand` (see the module docstring).

    Its entries are kept in buckets by rate (a node's by its lowest possible
    rate), so that a job only looks at the buckets within its price cap and
    skips (sets aside) entries above its cap in one bucket at most.
    """

    __slots__ = ("_bound", "_edges", "_heaps", "_index", "demand")

    def __init__(self, index: ProviderIndex, demand: Demand) -> None:
        self._index = index
        self.demand = demand
        self._bound = index.bound_fn(demand)
        self._edges = demand.rate_edges
        self._heaps: list[list[_Entry]] = [[] for _ in range(len(self._edges) + 1)]
        root = self._bound(0) if len(index) else None
        if root is not None:
            self._push((root[0], "", -1, 0, root[1], 0.0, 0.0))

    def _push(self, entry: _Entry) -> None:
        heappush(self._heaps[bisect_right(self._edges, entry[4])], entry)

    def best(self, job: JobFilter, budget: int | None = None) -> tuple[tuple[int, int] | None, int, bool]:
        """The best provider for ``job`` (within its cap, labels and exclusions).

        Returns ``((provider index, rate) or None, skips, complete)``.
        Better-scored entries that ``job`` cannot use are set aside while it
        searches and put back after, for the frontier's other jobs; ``skips``
        counts them. After ``budget`` skips the search stops incomplete.
        """
        index, d = self._index, self.demand
        version, fc, fg, fm, tc, tg, tm = index.version, index.fc, index.fg, index.fm, index.tc, index.tg, index.tm
        ic, ig, im, sig, node_mask = index.ic, index.ig, index.im, index.sig, index.mask
        c, g, m, wl = d.cpus, d.gpus, d.mem_mb, index.weights.load
        cap, excluded, allowed, allowed_mask = job.cap, job.excluded, job.allowed, job.allowed_mask
        heaps = self._heaps
        last = bisect_right(self._edges, cap)  # the buckets before it hold rates below cap only
        aside: list[tuple[list[_Entry], _Entry]] = []
        skips = 0
        best: _Entry | None = None
        for k in range(last + 1):
            heap = heaps[k]
            while heap:
                top = heap[0]
                if best is not None and top >= best:
                    break  # keys are lower bounds: nothing in this bucket beats the best
                key, address, ref, seen, rate, price, reliability = top
                if ref < 0:
                    if (rate > cap and k == last) or (allowed is not None and not node_mask[-1 - ref] & allowed_mask):
                        aside.append((heap, heappop(heap)))
                        skips += 1
                        if skips == budget:
                            self._restore(aside)
                            return None, skips, False
                    else:
                        heappop(heap)
                        self._expand(-1 - ref, key)
                elif seen != version[ref]:  # capacity changed since scored: re-score (load only), for every job
                    c_free, g_free, m_free = fc[ref], fg[ref], fm[ref]
                    if c_free < c or g_free < g or m_free < m:
                        heappop(heap)  # no longer fits: capacity only shrinks during a batch
                        continue
                    load = max(
                        (tc[ref] - c_free + c) * ic[ref],
                        (tm[ref] - m_free + m) * im[ref],
                        (tg[ref] - g_free + g) * ig[ref],
                    )
                    heapreplace(
                        heap, (price + wl * load + reliability, address, ref, version[ref], rate, price, reliability)
                    )
                elif (rate > cap and k == last) or ref in excluded or (allowed is not None and not allowed[sig[ref]]):
                    aside.append((heap, heappop(heap)))
                    skips += 1
                    if skips == budget:
                        self._restore(aside)
                        return None, skips, False
                else:
                    best = top
                    break
        self._restore(aside)
        return (None if best is None else (best[2], best[4])), skips, True

    @staticmethod
    def _restore(aside: list[tuple[list[_Entry], _Entry]]) -> None:
        for heap, entry in aside:
            heappush(heap, entry)

    def _expand(self, node: int, key: float) -> None:
        """Replace a popped node by its children (or, for a leaf, its providers' exact scores)."""
        index = self._index
        current = self._bound(node)
        if current is None:
            return
        if current[0] > key + _RETRY:  # placements since it was pushed raised the bound: revisit it later
            self._push((current[0], "", -1 - node, 0, current[1], 0.0, 0.0))
            return
        left = index.left[node]
        if left == _NO_CHILD:
            for entry in index.leaf_entries(self.demand, index.lo[node], index.hi[node]):
                self._push(entry)
            return
        for child in (left, index.right[node]):
            lb = self._bound(child)
            if lb is not None:
                self._push((lb[0], "", -1 - child, 0, lb[1], 0.0, 0.0))


# ---------------------------------------------------------------------- k-d layout


def _build_order(providers: Sequence[ProviderState], weights: Weights, leaf_size: int) -> list[int]:
    """A permutation of ``providers`` such that each tree node covers a contiguous, homogeneous range.

    Each node is split at the median of the attribute along which the score
    varies most within it (attributes scaled by their weight in the score), so
    that node bounds are tight where it matters. Providers start in address
    order, which makes the layout (and so the search) deterministic.
    """
    columns = _axes(providers, weights)
    start = sorted(range(len(providers)), key=lambda k: providers[k].address)
    out: list[int] = []
    stack = [start]
    while stack:
        part = stack.pop()
        if len(part) <= leaf_size:
            out.extend(part)
            continue
        part.sort(key=_widest(part, columns).__getitem__)
        mid = len(part) // 2
        stack.append(part[mid:])  # popped after the left half: keeps left-to-right order
        stack.append(part[:mid])
    return out


def _axes(providers: Sequence[ProviderState], w: Weights) -> list[list[float]]:
    """Per attribute, each provider's coordinate, scaled by how much it moves a typical job's score.

    Attributes: cpu, memory and gpu prices relative to the median, reliability,
    load (the tightest resource's used fraction) and GPU presence.
    """
    cpu = _median_of(p.prices.per_cpu_minute for p in providers)
    gpu = _median_of(p.prices.per_gpu_minute for p in providers if p.total.gpus > 0)
    mem = _median_of(p.prices.per_gb_minute for p in providers)
    columns: list[list[float]] = [[] for _ in range(6)]
    for p in providers:
        total, free, prices = p.total, p.free, p.prices
        used = max(
            (total.cpus - free.cpus) * inverse(total.cpus),
            (total.mem_mb - free.mem_mb) * inverse(total.mem_mb),
            (total.gpus - free.gpus) * inverse(total.gpus),
        )
        has_gpus = total.gpus > 0
        row = (
            w.price * 0.8 * prices.per_cpu_minute / cpu,
            w.price * 0.2 * prices.per_gb_minute / mem,
            w.price * 0.9 * prices.per_gpu_minute / gpu if has_gpus else 0.0,
            w.reliability * p.stats.reliability,
            w.load * used,
            4.0 * has_gpus,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _median_of(values: Iterable[int]) -> float:
    ordered = sorted(values)
    return max(float(ordered[len(ordered) // 2]), 1.0) if ordered else 1.0


def _widest(part: list[int], columns: list[list[float]]) -> list[float]:
    """The column along which the providers in ``part`` spread most."""
    best, best_spread = columns[0], -1.0
    for column in columns:
        values = list(map(column.__getitem__, part))
        spread = max(values) - min(values)
        if spread > best_spread:
            best, best_spread = column, spread
    return best
