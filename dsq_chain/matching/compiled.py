"""The compiled provider search (``_search.c``), with the interface of the Python one.

:func:`search_index` is what the matcher calls: it builds a :class:`CompiledIndex`
when the extension is built (``pip install`` compiles it where a C compiler is
found) and every count and price of the batch is below 2**30, and the Python
:class:`~dsq_chain.matching.index.ProviderIndex` otherwise. Both give the same
placements: the compiled search is the Python one's algorithm on C arrays, with
the same floating-point operations in the same order (see ``_search.c``); the
tests run both on the same markets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from dsq_chain.matching.index import (
    DEFAULT_LEAF_SIZE,
    Demand,
    LabelFilter,
    ProviderIndex,
    _int_array,
    _inverses,
    joint_coefficients,
    provider_columns,
    tree_order,
)
from dsq_chain.matching.model import ProviderState
from dsq_chain.matching.scoring import MarketReference, Weights

try:
    from dsq_chain.matching import _search  # type: ignore[attr-defined]
except ImportError:  # not built: no C compiler when the package was installed
    _search = None

_log = logging.getLogger(__name__)

#: Whether the compiled search is built (the matcher uses it when it is).
AVAILABLE = _search is not None
#: Counts and prices of a batch the compiled search takes: below this, no rate overflows 64 bits.
LIMIT = 2**30
#: Caps beyond 64 bits are passed to ``could_take`` as this (every rate is far below).
_CLAMP = 2**62


def describe() -> str:
    """Which search a batch uses here, in a few words (the scheduler logs it at start)."""
    if AVAILABLE:
        return ("compiled search (dsq_chain/matching/_search.c; the Python one for a batch with a count or price "
                "from 2**30)")
    return ("Python search (the compiled one is not built: no C compiler or Python headers when the package "
            "was installed; same placements, slower)")


def search_index(
    providers: Sequence[ProviderState],
    signatures: Sequence[int],
    n_signatures: int,
    weights: Weights,
    market: MarketReference,
    leaf_size: int = DEFAULT_LEAF_SIZE,
    compiled: bool | None = None,
) -> ProviderIndex | CompiledIndex:
    """The index a batch searches: compiled when ``compiled`` is not False, the extension is built and the
    market's values fit (see :data:`LIMIT`); the Python one otherwise. ``compiled=True`` makes a missing
    extension an error instead."""
    if compiled is True and not AVAILABLE:
        raise RuntimeError("the compiled search (dsq_chain/matching/_search.c) is not built: reinstall the "
                           "package where a C compiler is available")  # fmt: skip
    if compiled is not False and AVAILABLE:
        try:
            index = CompiledIndex.build(providers, signatures, n_signatures, weights, market, leaf_size)
        except (ValueError, TypeError, OverflowError) as exc:  # a market the extension refuses: never a failed batch
            if compiled:
                raise
            _log.warning("compiled search refused this batch's market (%s): using the Python search", exc)
            index = None
        if index is not None:
            return index
    return ProviderIndex(providers, signatures, weights, market, leaf_size)


class CompiledFrontier:
    """A :class:`~dsq_chain.matching.index.Frontier` on the compiled search: same methods, same results."""

    __slots__ = ("_core", "_index", "best", "demand")

    #: ``best(cap, excluded=frozenset(), disk=0, narrow=None, budget=-1)``: see :meth:`Frontier.best
    #: <dsq_chain.matching.index.Frontier.best>` (``narrow`` from :meth:`CompiledIndex.label_filter`). The C
    #: method itself, called once per job: it takes caps and disk sizes beyond 64 bits as no limit.
    best: Callable[..., tuple[tuple[int, int] | None, int, bool]]

    def __init__(self, index: CompiledIndex, demand: Demand, core: Any) -> None:
        self._index = index
        self.demand = demand
        self._core = core
        self.best = core.best

    def __len__(self) -> int:
        """Entries held (providers scored and nodes not expanded yet)."""
        return len(self._core)

    def narrowed(self, demand: Demand, labels: LabelFilter) -> CompiledFrontier:
        """See :meth:`Frontier.narrowed <dsq_chain.matching.index.Frontier.narrowed>` (the C side keeps this
        frontier's shape, fair share and rate buckets: ``demand`` differs from its demand in labels only)."""
        d = self.demand
        if (demand.cpus, demand.gpus, demand.mem_mb, demand.fair, demand.rate_edges) != (
            d.cpus, d.gpus, d.mem_mb, d.fair, d.rate_edges
        ):
            raise ValueError("a narrowed frontier differs from its source in labels only")
        return CompiledFrontier(self._index, demand, self._core.narrowed(*labels))

    def score_of(self, i: int) -> tuple[float, int] | None:
        """Provider ``i``'s score and rate for the demand now, or None when it cannot take it."""
        found: tuple[float, int] | None = self._core.score_of(i)
        return found


class CompiledIndex:
    """A :class:`~dsq_chain.matching.index.ProviderIndex` on the compiled search: the providers in the same
    tree order, the same addresses, positions and scratch disk; the free capacities live in C."""

    def __init__(self, core: Any, address: list[str], disk: list[int]) -> None:
        self._core = core
        #: Takes ``cpus``/``gpus``/``mem_mb`` from provider ``i``'s free capacity (node bounds follow): the C
        #: method itself, called once per placement.
        self.place: Callable[[int, int, int, int], None] = core.place
        self.address = address
        self.position = {a.lower(): i for i, a in enumerate(address)}
        #: Free scratch disk at the batch's start (as :attr:`ProviderIndex.disk`).
        self.disk = disk
        self._nodes_of: dict[bytes, bytes] = {}

    @classmethod
    def build(
        cls,
        providers: Sequence[ProviderState],
        signatures: Sequence[int],
        n_signatures: int,
        weights: Weights,
        market: MarketReference,
        leaf_size: int = DEFAULT_LEAF_SIZE,
    ) -> CompiledIndex | None:
        """The compiled index of ``providers``, or None when a count or price is out of its range."""
        import numpy as np

        n = len(providers)
        rows, reliabilities = provider_columns(providers)
        ints = _int_array(rows).reshape(10, n)
        if ints.dtype == object or (n and int(ints[:9].max()) >= LIMIT):
            return None  # a disk beyond 64 bits too: the Python search compares it exactly
        rel = np.array(reliabilities, dtype=np.float64)
        order = tree_order(providers, ints, rel, weights, leaf_size)
        ints = np.ascontiguousarray(ints[:, order])
        rel = rel[order]
        inverses = [_inverses(ints[k]) for k in range(3)]
        floats = np.ascontiguousarray(np.stack((*inverses, weights.reliability * (1.0 - rel), rel)))
        address = [providers[i].address for i in order.tolist()]
        rank = np.empty(n, dtype=np.int32)
        rank[np.array(sorted(range(n), key=address.__getitem__), dtype=np.intp)] = np.arange(n, dtype=np.int32)
        sig = np.array(signatures, dtype=np.int32)[order]
        k_cpu, k_gpu = joint_coefficients(weights, market)
        core = _search.Index(
            ints, floats, np.ascontiguousarray(sig), rank, n_signatures, leaf_size,
            (weights.price, weights.load, weights.reliability), k_cpu, k_gpu,
        )  # fmt: skip
        return cls(core, address, ints[9].tolist())

    def __len__(self) -> int:
        return len(self.address)

    def could_take(self, cpus: int, gpus: int, mem_mb: int, cap: int) -> bool:
        """See :meth:`ProviderIndex.could_take <dsq_chain.matching.index.ProviderIndex.could_take>`."""
        if cpus >= LIMIT or gpus >= LIMIT or mem_mb >= LIMIT:
            return False  # every provider's capacity is below
        return bool(self._core.could_take(cpus, gpus, mem_mb, min(cap, _CLAMP)))

    def label_filter(self, allowed: bytes, allowed_mask: int) -> LabelFilter:
        """The signatures flagged in ``allowed`` and, per tree node, whether one of them is under it."""
        return (allowed, self._node_flags(allowed))

    def _node_flags(self, allowed: bytes) -> bytes:
        flags = self._nodes_of.get(allowed)
        if flags is None:
            flags = self._nodes_of[allowed] = self._core.node_flags(allowed)
        return flags

    def frontier(self, demand: Demand) -> CompiledFrontier:
        """A new search for ``demand``, from the root."""
        core = _search.Frontier(
            self._core, demand.cpus, demand.gpus, demand.mem_mb, demand.inv_ref, demand.fair, demand.allowed,
            self._node_flags(demand.allowed), demand.rate_edges,
        )  # fmt: skip
        return CompiledFrontier(self, demand, core)
