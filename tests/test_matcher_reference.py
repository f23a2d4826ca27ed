"""The indexed matcher places exactly as a brute-force reference does.

The reference below is the matching policy written the plain way: fair-share
order by owner, then every provider scored for every job against the batch's
running free capacity, the lowest (score, address) taken. The matcher's index,
frontiers, rate buckets and memos must never change a placement; markets are
drawn with few distinct prices and label sets so that ties are common and trees
several levels deep.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsq_chain.matching import FairShare, Matcher, PendingJob, ProviderState, ProviderStats, Weights, score
from dsq_chain.matching.constraints import first_failure
from dsq_chain.matching.scoring import MarketReference
from dsq_chain.types import Prices, Resources
from dsq_chain.workloads.labels import parse_constraint

NOW = 1_000_000.0
OWNERS = ("0xa", "0xb", "0xc", "0xd")
CONSTRAINTS = ("zone == a", "zone != b", "gpu.model in A100,H100", "tier >= 2", "tier < 3", "arch == arm64")
LABELS = {"zone": ("a", "b", "c"), "gpu.model": ("A100", "H100"), "tier": ("1", "2", "3"), "arch": ("arm64",)}


def reference_match(
    matcher: Matcher, jobs: list[PendingJob], providers: dict[str, ProviderState], now: float
) -> list[tuple[int, str, int]]:
    """(job id, provider, rate) of each placement, in order, found by scoring every provider for every job."""
    valid = [p for p in providers.values()]
    ref = MarketReference.of(valid)
    free = {p.address: p.free for p in valid}
    usage = {job.owner: matcher.fairshare.usage(job.owner, now) for job in jobs}
    placed_count = dict.fromkeys(usage, 0)
    waiting = sorted(jobs, key=lambda j: (j.submitted_at, j.id))
    out: list[tuple[int, str, int]] = []
    while waiting:
        heads: dict[str, PendingJob] = {}
        for j in waiting:
            heads.setdefault(j.owner, j)
        owner = min(heads, key=lambda o: (usage[o], placed_count[o], heads[o].submitted_at, heads[o].id, o))
        job = heads[owner]
        waiting.remove(job)
        share = matcher.fairshare.share(owner, now)
        best: tuple[float, str, int] | None = None
        for p in valid:
            # disk is checked against the batch's start; cpus, gpus and memory against the running free capacity
            now_free = replace(free[p.address], disk_gb=p.free.disk_gb)
            if first_failure(job, replace(p, free=now_free)) is not None:
                continue
            rate = int(p.prices.rate_for(job.resources))  # base units, as the matcher computes
            ref_rate = float(ref.rate_for(job.resources))
            total = score(matcher.weights, job.resources, rate, ref_rate, replace(p, free=now_free), share).total
            if best is None or (total, p.address) < best[:2]:
                best = (total, p.address, rate)
        if best is not None:
            _, address, rate = best
            free[address] = free[address] - replace(job.resources, disk_gb=0)
            usage[owner] += rate * matcher.provisional_minutes
            placed_count[owner] += 1
            out.append((job.id, address, rate))
    return out


@st.composite
def markets(draw: st.DrawFn) -> tuple[dict[str, ProviderState], list[PendingJob], FairShare]:
    """Up to 70 providers and 40 jobs, prices and shapes from small sets (many ties), some disk and placements."""
    n_providers = draw(st.integers(1, 70))
    cpu_prices = draw(st.lists(st.integers(0, 40), min_size=1, max_size=4))
    providers: list[ProviderState] = []
    for n in range(n_providers):
        gpus = draw(st.sampled_from((0, 0, 2, 4)))
        total = Resources(draw(st.sampled_from((4, 8, 16))), gpus, draw(st.sampled_from((8, 16, 32))) * 1_024,
                          draw(st.sampled_from((0, 10, 100))))  # fmt: skip
        used = draw(st.sampled_from((0.0, 0.25, 0.5, 1.0)))
        free = Resources(int(total.cpus * (1 - used)), int(total.gpus * (1 - used)), int(total.mem_mb * (1 - used)),
                         total.disk_gb)  # fmt: skip
        labels = {k: draw(st.sampled_from(v)) for k, v in LABELS.items() if draw(st.booleans())}
        prices = Prices.from_units(draw(st.sampled_from(cpu_prices)), draw(st.sampled_from((0, 300, 500))),
                        draw(st.sampled_from((0, 10))))  # fmt: skip
        stats = ProviderStats(*(draw(st.sampled_from((0, 1, 5))) for _ in range(5)))
        providers.append(
            ProviderState(f"0x{n:040x}", total, free, prices, labels, draw(st.integers(0, 9)) > 0, stats)
        )
    addresses = [p.address for p in providers]
    jobs: list[PendingJob] = []
    for i in range(draw(st.integers(1, 40))):
        res = Resources(draw(st.sampled_from((1, 2, 4))), draw(st.sampled_from((0, 0, 1, 2))),
                        draw(st.sampled_from((1, 2, 4))) * 1_024, draw(st.sampled_from((0, 0, 0, 20))))  # fmt: skip
        excluded = {a.upper() if draw(st.booleans()) else a for a in draw(st.lists(st.sampled_from(addresses),
                                                                                    max_size=2))}  # fmt: skip
        allowed = frozenset(draw(st.lists(st.sampled_from(addresses), max_size=3))) if draw(st.integers(0, 5)) == 0 \
            else frozenset()  # fmt: skip
        jobs.append(
            PendingJob(
                i,
                draw(st.sampled_from(OWNERS)),
                res,
                draw(st.sampled_from((10**9, 10**9, 60, 150, 400, 2_000))),
                tuple(parse_constraint(t) for t in draw(st.lists(st.sampled_from(CONSTRAINTS), max_size=2))),
                draw(st.integers(0, 5)),
                excluded,
                allowed,
            )
        )
    fairshare = FairShare(3_600.0)
    for owner in OWNERS[:3]:
        fairshare.record(owner, draw(st.sampled_from((0.0, 10.0, 1_000.0))), NOW)
    return {p.address: p for p in providers}, jobs, fairshare


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(markets(), st.sampled_from([1, 2, 4, 32]), st.sampled_from([Weights(), Weights(1.0, 2.0, 0.5, 3.0)]))
def test_property_placements_equal_the_brute_force_reference(
    market: tuple[dict[str, ProviderState], list[PendingJob], FairShare], leaf_size: int, weights: Weights
) -> None:
    """Both searches, the Python one and the compiled one (when built: see test_compiled_search.py)."""
    providers, jobs, fairshare = market
    expected: list[tuple[int, str, int]] | None = None
    for compiled in (False, None):
        matcher = Matcher(weights, fairshare, leaf_size=leaf_size, compiled=compiled)
        got = [(a.job_id, a.provider, a.rate) for a in matcher.match(jobs, providers, NOW)]
        if expected is None:
            expected = reference_match(matcher, jobs, providers, NOW)
        assert got == expected, f"compiled={compiled}"
        placed = {job_id for job_id, _, _ in got}
        assert set(matcher.last_unplaced) == {j.id for j in jobs} - placed
