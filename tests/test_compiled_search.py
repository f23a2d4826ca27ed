"""The compiled provider search (dsq_chain/matching/_search.c): built, exact, and bounded to its range.

Its placements are checked against the brute-force reference and the Python search in
test_matcher_reference.py and test_matching.py (both run each market with both searches); here: that it is
built at all, that both searches place the same on the benchmark's seeded markets (exclusions, label
needs, price caps, many owners), that values out of its range go to the Python search with the same
placements, and that malformed input to the extension is refused with an error, not a crash.
"""

from __future__ import annotations

import random
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from dsq_chain.matching import Matcher, PendingJob, ProviderState, ProviderStats
from dsq_chain.matching import compiled as compiled_search
from dsq_chain.matching.compiled import LIMIT, CompiledIndex, search_index
from dsq_chain.matching.index import Demand, ProviderIndex, rate_edges
from dsq_chain.matching.scoring import MarketReference, Weights
from dsq_chain.types import Prices, Resources

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import matcher as bench  # noqa: E402  # benchmarks/matcher.py: the seeded market generators

NOW = 1_000_000.0


def _have_c_toolchain() -> bool:
    include = sysconfig.get_paths()["include"]
    return shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc") is not None and (
        Path(include) / "Python.h"
    ).exists()


def test_the_compiled_search_is_built_where_a_c_compiler_is() -> None:
    if not _have_c_toolchain():
        pytest.skip("no C compiler or no Python headers here: the matcher uses its Python search")
    assert compiled_search.AVAILABLE, (
        "dsq_chain/matching/_search.c is not built although a C compiler is here: reinstall the package "
        "(pip install -e .) and read the compiler's output"
    )
    providers = {p.address: p for p in [_provider(1), _provider(2)]}
    matcher = Matcher(compiled=True)
    assert [a.provider for a in matcher.match([_job(1)], providers, NOW)] == [_address(1)]


@pytest.mark.parametrize(("n_jobs", "n_providers", "seed"), [(2_000, 500, 1), (3_000, 400, 2), (1_500, 2_000, 3)])
def test_both_searches_place_the_same_on_seeded_markets(n_jobs: int, n_providers: int, seed: int) -> None:
    """The benchmark's markets: 20 % GPU boxes, partly busy, label needs on a third of the jobs, exclusions,
    500 owners with fair share; and a few directly placed jobs and jobs needing scratch disk."""
    rng = random.Random(seed)
    providers = bench.make_providers(n_providers, rng)
    jobs = bench.make_jobs(n_jobs, rng, providers)
    addresses = list(providers)
    for job in jobs[::97]:
        job.allowed = frozenset(rng.sample(addresses, 3))
    for job in jobs[::31]:
        job.resources = Resources(job.resources.cpus, job.resources.gpus, job.resources.mem_mb, rng.choice((1, 50)))
    for p in list(providers.values())[::7]:
        p.free = Resources(p.free.cpus, p.free.gpus, p.free.mem_mb, rng.choice((0, 20, 100)))
    fairshare = bench.make_fairshare(jobs, rng)
    placements = []
    for choice in (False, True if compiled_search.AVAILABLE else None):
        matcher = Matcher(fairshare=fairshare, compiled=choice)
        assignments = matcher.match(jobs, providers, bench.HOUR)
        placements.append(([(a.job_id, a.provider, a.rate) for a in assignments], matcher.last_unplaced))
    assert placements[0] == placements[1]
    assert len(placements[0][0]) > n_jobs // 3


def test_values_from_the_limit_up_go_to_the_python_search_with_the_same_placements() -> None:
    if not compiled_search.AVAILABLE:
        pytest.skip("the compiled search is not built here (see test_the_compiled_search_is_built...)")
    for big, expected in ((LIMIT - 1, CompiledIndex), (LIMIT, ProviderIndex)):
        states = [_provider(1, cpus=big), *(_provider(n, cpus=8 * n) for n in range(2, 9))]
        index = search_index(states, [0] * len(states), 1, Weights(), MarketReference.of(states))
        assert type(index) is expected
        jobs = [_job(99, cpus=big)] + [_job(k, cpus=1 + k % 3) for k in range(1, 40)]
        got = [Matcher(compiled=c).match(jobs, {p.address: p for p in states}, NOW) for c in (False, None)]
        assert got[0] == got[1]
        assert got[0][0].job_id == 99 and got[0][0].provider == _address(1)  # it fits only on the big provider
        assert len(got[0]) == len(jobs)


def test_asking_for_the_compiled_search_where_it_is_not_built_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled_search, "AVAILABLE", False)
    providers = {p.address: p for p in [_provider(1)]}
    with pytest.raises(RuntimeError, match=r"compiled search .* is not built"):
        Matcher(compiled=True).match([_job(1)], providers, NOW)
    assert [a.job_id for a in Matcher().match([_job(1)], providers, NOW)] == [1]  # the default falls back


def test_the_extension_refuses_malformed_input_with_errors() -> None:
    if not compiled_search.AVAILABLE:
        pytest.skip("the compiled search is not built here")
    from dsq_chain.matching import _search  # type: ignore[attr-defined]

    n = 4
    ints = np.ones((10, n), dtype=np.int64) * 8
    floats = np.full((5, n), 0.125)
    sig = np.zeros(n, dtype=np.int32)
    rank = np.arange(n, dtype=np.int32)
    args = (1, 2, (1.0, 0.5, 1.0), 0.001, 0.0)
    index = _search.Index(ints, floats, sig, rank, *args)
    with pytest.raises(ValueError, match="ints: expected 10 x 4 items of format 'l'"):
        _search.Index(ints.astype(np.int32), floats, sig, rank, *args)
    with pytest.raises(ValueError, match="floats"):
        _search.Index(ints, floats[:4], sig, rank, *args)
    bad = ints.copy()
    bad[0, 0] = LIMIT
    with pytest.raises(ValueError, match=r"\[0, 2\*\*30\)"):
        _search.Index(bad, floats, sig, rank, *args)
    bad = ints.copy()
    bad[3, 1] = 9  # more free than total
    with pytest.raises(ValueError, match="inconsistent provider row"):
        _search.Index(bad, floats, sig, rank, *args)
    with pytest.raises(ValueError, match="inconsistent provider row"):
        _search.Index(ints, floats, sig + 1, rank, *args)  # a signature beyond nsig
    with pytest.raises(IndexError):
        index.place(n, 1, 0, 0)
    with pytest.raises(ValueError, match="exceeds the provider's free capacity"):
        index.place(0, 9, 0, 0)
    index.place(0, 8, 0, 0)
    assert index.free_of(0) == (0, 8, 8)
    with pytest.raises(ValueError, match="one flag per label signature"):
        index.node_flags(b"\x01\x01")
    nodes = index.node_flags(b"\x01")
    with pytest.raises(ValueError, match="demand counts"):
        _search.Frontier(index, LIMIT, 0, 0, 1.0, 0.0, b"\x01", nodes, (1, 2))
    with pytest.raises(ValueError, match="node_ok: expected"):
        _search.Frontier(index, 1, 0, 0, 1.0, 0.0, b"\x01", nodes + b"\x00", (1, 2))
    frontier = _search.Frontier(index, 1, 0, 0, 1.0, 0.0, b"\x01", nodes, (1, 2))
    assert frontier.best(10**40)[0] is not None  # a cap beyond 64 bits is no limit
    assert frontier.best(-1) == (None, 0, True)
    with pytest.raises(ValueError, match="narrow"):
        frontier.best(100, frozenset(), 0, (b"\x01", b""))


def _address(n: int) -> str:
    return f"0x{n:040x}"


def _provider(n: int, cpus: int = 16) -> ProviderState:
    total = Resources(cpus, 0, 65_536)
    return ProviderState(_address(n), total, total, Prices.from_units(1_000 + n, 0, 100), {}, True,
                         ProviderStats(finished=10))  # fmt: skip


def _job(job_id: int, cpus: int = 1) -> PendingJob:
    return PendingJob(job_id, "0xowner", Resources(cpus, 0, 1_024), 10**15, submitted_at=0.0 if job_id == 99 else 1.0)


# --------------------------------------------------------------------------- found by review (each failed before)


def test_a_market_at_the_top_of_the_range_is_matched_by_both_searches() -> None:
    """Counts and prices just below 2**30 make rate-bucket edges beyond 64 bits: the compiled search clamps
    them (every rate is below 2**62) instead of raising out of the batch."""
    top = LIMIT - 1
    p = ProviderState(_address(1), Resources(top, top, 1_024), Resources(top, top, 1_024),
                      Prices.from_units(top, top, 0), {}, True, ProviderStats(finished=1))  # fmt: skip
    job = PendingJob(1, "0xowner", Resources(top, top, 0), 10**30)
    got = [Matcher(compiled=c).match([job], {p.address: p}, NOW) for c in (False, None)]
    assert got[0] == got[1] and [a.provider for a in got[0]] == [p.address]


def test_a_search_reentered_from_an_exclusion_lookup_is_refused_not_corrupted() -> None:
    """An ``excluded`` element's ``__eq__`` is Python code: calling the same frontier's search from it raises
    instead of moving the heap under the outer search."""
    if not compiled_search.AVAILABLE:
        pytest.skip("the compiled search is not built here")
    states = [_provider(n) for n in range(1, 40)]
    index = search_index(states, [0] * len(states), 1, Weights(), MarketReference.of(states), 4)
    assert isinstance(index, CompiledIndex)
    frontier = index.frontier(_demand(states))
    found = frontier.best(10**9)[0]
    assert found is not None
    calls: list[str] = []

    class Reentering:
        def __hash__(self) -> int:
            return hash(found[0])  # type: ignore[index]

        def __eq__(self, other: object) -> bool:
            try:
                frontier.best(10**9, frozenset(range(40)))
            except RuntimeError as exc:
                calls.append(str(exc))
            return False

    assert frontier.best(10**9, frozenset({Reentering()}))[0] == found  # type: ignore[arg-type]
    assert calls == ["Frontier.best() re-entered during its own search"]
    assert frontier.best(10**9)[0] == found  # the frontier is whole


def test_exclusions_in_any_container_are_honoured_by_both_searches() -> None:
    states = [_provider(n) for n in range(1, 40)]
    searches = [search_index(states, [0] * len(states), 1, Weights(), MarketReference.of(states), 4, c)
                for c in (False, None)]  # fmt: skip
    frontiers = [s.frontier(_demand(states)) for s in searches]
    best = frontiers[0].best(10**9)[0]
    assert best is not None and frontiers[1].best(10**9)[0] == best
    b = best[0]
    for excluded in (frozenset({b}), {b}, [b], (b,), {b: 1}, range(b, b + 1)):
        got = [f.best(10**9, excluded)[0] for f in frontiers]  # type: ignore[arg-type]
        assert got[0] == got[1] and got[0] is not None and got[0][0] != b, type(excluded).__name__


@pytest.mark.parametrize(("provider_disk", "job_disk", "problem"), [
    (-1, 0, "total.disk_gb must be an integer >= 0, got -1"),
    (-0.5, 0, "total.disk_gb must be an integer >= 0, got -0.5"),
    (10, 0.5, "resources.disk_gb must be an integer >= 0, got 0.5"),
    (10, -3, "resources.disk_gb must be an integer >= 0, got -3"),
])  # fmt: skip
def test_a_malformed_scratch_disk_is_a_reason_in_both_searches_not_a_failed_batch(
    provider_disk: float, job_disk: float, problem: str
) -> None:
    def state(n: int, disk: float) -> ProviderState:
        r = Resources(8, 0, 4_096, disk)  # type: ignore[arg-type]
        return ProviderState(_address(n), r, r, Prices.from_units(100 + n, 0, 10), {}, True, ProviderStats(finished=3))

    providers = {p.address: p for p in (state(1, provider_disk), state(2, 10))}
    job = PendingJob(1, "0xowner", Resources(1, 0, 512, job_disk), 10**9)  # type: ignore[arg-type]
    for choice in (False, None):
        matcher = Matcher(compiled=choice)
        assignments = matcher.match([job], providers, NOW)
        if job_disk == 0:
            assert [a.provider for a in assignments] == [_address(2)]
            assert matcher.last_provider_errors == {_address(1): problem}
        else:
            assert assignments == [] and matcher.last_errors == {1: problem}


def test_ties_at_large_scores_go_to_the_lowest_address_as_explained() -> None:
    """Node bounds add the score's terms in another order (a few ulps off): at scores near 1e9 an absolute
    slack of 1e-9 let a node holding an equal-scored provider with a lower address be cut off."""
    rng = random.Random(3)
    for _ in range(60):
        states = [ProviderState(_address(n), Resources(8, 0, 4_096), Resources(0, 0, 4_096),
                                Prices.from_units(1, 0, 1), {}, True, ProviderStats(finished=5)) for n in range(5)]
        total = rng.randint(1, 2**29)
        free = rng.randint(1, total)
        price = rng.randint(2**28, LIMIT - 1)
        stats = {"finished": rng.randint(0, 50), "refused": rng.randint(0, 50)}
        states += [ProviderState(_address(n), Resources(total, 0, 4_096), Resources(free, 0, 4_096),
                                 Prices.from_units(price, 0, 1), {}, True, ProviderStats(**stats))
                   for n in (5, 6, 7, 8)]  # fmt: skip
        rng.shuffle(states)
        providers = {p.address: p for p in states}
        job = PendingJob(1, "0xowner", Resources(1, 0, 0), 10**18)
        rank_one = Matcher().explain(job, providers, NOW).best
        assert rank_one is not None
        for choice in (False, None):
            [assignment] = Matcher(compiled=choice, leaf_size=1).match([job], providers, NOW)
            assert assignment.provider == rank_one.address


def _demand(states: list[ProviderState]) -> Demand:
    reference = MarketReference.of(states).rate_for(Resources(1, 0, 512))
    return Demand(1, 0, 512, b"\x01", 1, 1.0 / reference, 0.25, rate_edges(reference))
