"""The matcher's pure core: hard constraints, scoring, fair share, batches, explanations."""

from __future__ import annotations

import copy
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsq_chain.matching import (
    EXCLUDED,
    INACTIVE,
    FairShare,
    Matcher,
    PendingJob,
    ProviderState,
    ProviderStats,
    Weights,
)
from dsq_chain.types import LabelConstraint, LabelOp, Prices, Resources
from dsq_chain.workloads.labels import check, parse_constraint

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_000_000.0
PRICES = Prices.from_units(1_000, 0, 100)


def addr(n: int) -> str:
    return f"0x{n:040x}"


def provider(
    n: int,
    cpus: int = 16,
    gpus: int = 0,
    mem_mb: int = 65_536,
    *,
    free: Resources | None = None,
    prices: Prices = PRICES,
    labels: dict[str, str] | None = None,
    active: bool = True,
    stats: ProviderStats | None = None,
) -> ProviderState:
    total = Resources(cpus, gpus, mem_mb)
    return ProviderState(
        addr(n), total, free or total, prices, dict(labels or {}), active, stats or ProviderStats(finished=10)
    )


def job(
    job_id: int,
    cpus: int = 1,
    gpus: int = 0,
    mem_mb: int = 1_024,
    *,
    owner: str = "0xowner",
    cap: int = 10**12,
    labels: tuple[str, ...] = (),
    submitted_at: float = 0.0,
    excluded: set[str] | None = None,
) -> PendingJob:
    constraints = tuple(parse_constraint(text) for text in labels)
    return PendingJob(job_id, owner, Resources(cpus, gpus, mem_mb), cap, constraints, submitted_at, set(excluded or ()))


def grid(*providers: ProviderState) -> dict[str, ProviderState]:
    return {p.address: p for p in providers}


def placed(matcher: Matcher, jobs: list[PendingJob], providers: dict[str, ProviderState]) -> dict[int, str]:
    return {a.job_id: a.provider for a in matcher.match(jobs, providers, NOW)}


# --------------------------------------------------------------------------- hard constraints


def test_places_on_the_provider_with_enough_free_cpus() -> None:
    providers = grid(provider(1, free=Resources(2, 0, 65_536)), provider(2))
    assert placed(Matcher(), [job(1, cpus=4)], providers) == {1: addr(2)}
    reason = Matcher().explain(job(1, cpus=4), providers, NOW).verdict(addr(1)).rejection
    assert reason is not None and reason.reason == "cpus: needs 4, has 2 free"


def test_gpu_jobs_go_to_gpu_providers_with_reasons_for_the_others() -> None:
    providers = grid(provider(1), provider(2, gpus=4), provider(3, gpus=1))
    assert placed(Matcher(), [job(1, gpus=2)], providers) == {1: addr(2)}
    explanation = Matcher().explain(job(1, gpus=2), providers, NOW)
    assert str(explanation.verdict(addr(1))) == f"{addr(1)}: gpus: needs 2, has 0 free"
    assert str(explanation.verdict(addr(3))) == f"{addr(3)}: gpus: needs 2, has 1 free"


def test_memory_reason_carries_megabytes() -> None:
    providers = grid(provider(1, free=Resources(16, 0, 4_096)))
    explanation = Matcher().explain(job(1, mem_mb=8_192), providers, NOW)
    assert explanation.verdict(addr(1)).rejection.reason == "memory: needs 8192 MB, has 4096 MB free"  # type: ignore[union-attr]
    assert placed(Matcher(), [job(1, mem_mb=8_192)], providers) == {}


def test_label_constraints_select_providers_and_explain_with_labels_reason() -> None:
    providers = grid(
        provider(1, gpus=2, labels={"gpu.model": "RTX3090"}),
        provider(2, gpus=2, labels={"gpu.model": "A100"}),
        provider(3, gpus=2),
    )
    wanted = job(1, gpus=1, labels=("gpu.model == A100",))
    assert placed(Matcher(), [wanted], providers) == {1: addr(2)}
    explanation = Matcher().explain(wanted, providers, NOW)
    assert explanation.verdict(addr(1)).rejection.reason == "label gpu.model == A100: provider has RTX3090"  # type: ignore[union-attr]
    assert explanation.verdict(addr(3)).rejection.reason == "label gpu.model == A100: provider has no gpu.model"  # type: ignore[union-attr]
    assert [v.address for v in explanation.placeable] == [addr(2)]


def test_price_cap_is_a_hard_constraint_and_the_rate_is_the_on_chain_one() -> None:
    cheap, dear = Prices.from_units(200, 0, 100), Prices.from_units(300, 0, 100)
    providers = grid(provider(1, prices=dear), provider(2, prices=cheap, free=Resources(2, 0, 1_024)))
    need = job(1, cpus=4, mem_mb=2_048, cap=1_100)
    assert dear.rate_for(need.resources) == 1_400  # 4 * 300 + 2 GB * 100
    explanation = Matcher().explain(need, providers, NOW)
    assert explanation.verdict(addr(1)).rejection.reason == "price: rate 0.0014 > cap 0.0011 credits/min"  # type: ignore[union-attr]
    assert placed(Matcher(), [need], providers) == {}
    roomy = grid(provider(1, prices=dear), provider(2, prices=cheap))
    [assignment] = Matcher().match([need], roomy, NOW)
    assert (assignment.provider, assignment.rate) == (addr(2), cheap.rate_for(need.resources))


def test_never_places_a_job_where_it_was_refused_or_timed_out() -> None:
    providers = grid(provider(1, prices=Prices.from_units(100)), provider(2, prices=Prices.from_units(900)))
    assert placed(Matcher(), [job(1)], providers) == {1: addr(1)}
    refused = job(1, excluded={addr(1).upper().replace("0X", "0x")})  # addresses compare case-insensitively
    assert placed(Matcher(), [refused], providers) == {1: addr(2)}
    everywhere = job(1, excluded={addr(1), addr(2)})
    matcher = Matcher()
    assert placed(matcher, [everywhere], providers) == {}
    assert matcher.last_unplaced == [1]
    assert Matcher().explain(everywhere, providers, NOW).verdict(addr(2)).rejection.reason == EXCLUDED  # type: ignore[union-attr]


def test_paused_or_unapproved_providers_get_nothing() -> None:
    providers = grid(provider(1, active=False, prices=Prices.from_units(1)),
                     provider(2, prices=Prices.from_units(5_000)))
    assert placed(Matcher(), [job(1), job(2)], providers) == {1: addr(2), 2: addr(2)}
    assert Matcher().explain(job(1), providers, NOW).verdict(addr(1)).rejection.reason == INACTIVE  # type: ignore[union-attr]


def test_reasons_follow_the_documented_order() -> None:
    poor = provider(1, active=False, free=Resources(0, 0, 0), prices=Prices.from_units(10**9))
    need = job(1, cpus=4, gpus=1, mem_mb=8_192, cap=1, labels=("zone == eu",), excluded={addr(1)})
    steps = [
        INACTIVE,
        EXCLUDED,
        "cpus: needs 4, has 0 free",
        "gpus: needs 1, has 0 free",
        "memory: needs 8192 MB, has 0 MB free",
        "label zone == eu: provider has no zone",
        f"price: rate {Prices.from_units(10**9).rate_for(need.resources)} > cap 0.000001 credits/min",
    ]
    fixes: list[Callable[[], object]] = [
        lambda: setattr(poor, "active", True),
        lambda: need.excluded.clear(),
        lambda: setattr(poor, "free", Resources(4, 0, 0)),
        lambda: setattr(poor, "free", Resources(4, 1, 0)),
        lambda: setattr(poor, "free", Resources(4, 1, 8_192)),
        lambda: poor.labels.update(zone="eu"),
        lambda: setattr(poor, "prices", Prices.from_units(0)),
    ]
    poor.total = Resources(16, 2, 65_536)
    for expected, fix in zip(steps, fixes, strict=True):
        verdict = Matcher().explain(need, grid(poor), NOW).verdict(addr(1))
        assert verdict.rejection is not None and verdict.rejection.reason == expected
        fix()
    assert Matcher().explain(need, grid(poor), NOW).verdict(addr(1)).rank == 1


# --------------------------------------------------------------------------- batches


def test_a_batch_never_overcommits_a_provider() -> None:
    providers = grid(provider(1, cpus=16, mem_mb=16_384))
    matcher = Matcher()
    assignments = matcher.match([job(i, cpus=4, mem_mb=2_048) for i in range(1, 11)], providers, NOW)
    assert len(assignments) == 4
    assert sorted(matcher.last_unplaced) == list(range(5, 11))


def test_match_does_not_mutate_the_callers_states() -> None:
    providers = grid(provider(1), provider(2, gpus=2))
    jobs = [job(1, cpus=8), job(2, gpus=1, excluded={addr(1)})]
    before = copy.deepcopy((providers, jobs))
    assert len(Matcher().match(jobs, providers, NOW)) == 2
    assert (providers, jobs) == before


def test_limit_caps_the_batch() -> None:
    providers = grid(provider(1))
    assert len(Matcher().match([job(i) for i in range(1, 6)], providers, NOW, limit=3)) == 3
    assert Matcher().match([job(1)], providers, NOW, limit=0) == []


def test_prefers_cheap_then_idle_then_reliable_providers() -> None:
    cheap = provider(1, prices=Prices.from_units(500))
    dear = provider(2, prices=Prices.from_units(1_500))
    assert placed(Matcher(), [job(1)], grid(cheap, dear)) == {1: addr(1)}
    busy = provider(1, free=Resources(2, 0, 65_536))
    idle = provider(2)
    assert placed(Matcher(), [job(1)], grid(busy, idle)) == {1: addr(2)}
    flaky = provider(1, stats=ProviderStats(finished=5, refused=5, timed_out=5))
    solid = provider(2, stats=ProviderStats(finished=50))
    assert placed(Matcher(), [job(1)], grid(flaky, solid)) == {1: addr(2)}


def test_load_spreads_a_batch_over_equal_providers() -> None:
    providers = grid(*(provider(n) for n in range(1, 5)))
    counts = Counter(placed(Matcher(), [job(i, cpus=2) for i in range(1, 9)], providers).values())
    assert sorted(counts.values()) == [2, 2, 2, 2]


def test_ties_break_by_address_and_results_are_deterministic() -> None:
    rng = random.Random(7)
    providers = [provider(n, cpus=rng.choice((8, 16)), prices=Prices.from_units(rng.choice((100, 200))))
                 for n in range(40)]
    jobs = [job(i, cpus=rng.choice((1, 2, 4)), owner=f"0x{i % 3}", submitted_at=i // 5) for i in range(120)]
    first = Matcher().match(jobs, grid(*providers), NOW)
    for _ in range(3):
        rng.shuffle(providers)
        rng.shuffle(jobs)
        assert Matcher().match(jobs, grid(*providers), NOW) == first
    twins = grid(provider(9), provider(3), provider(5))
    assert placed(Matcher(), [job(1)], twins) == {1: addr(3)}


# --------------------------------------------------------------------------- fair share


def test_fair_share_decays_with_its_half_life() -> None:
    fs = FairShare(half_life_s=100.0)
    fs.record("a", 80.0, now=0.0)
    assert fs.usage("a", 100.0) == pytest.approx(40.0)
    assert fs.usage("a", 200.0) == pytest.approx(20.0)
    fs.record("a", 10.0, now=100.0)
    assert fs.usage("a", 100.0) == pytest.approx(50.0)
    fs.record("a", 20.0, now=0.0)  # late record: decayed to the last one, not inflating usage
    assert fs.usage("a", 100.0) == pytest.approx(60.0)
    assert fs.usage("nobody", 100.0) == 0.0
    fs.record("b", 60.0, now=100.0)
    assert fs.shares(["a", "b", "c"], 100.0) == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.0})
    with pytest.raises(ValueError):
        FairShare(0)
    with pytest.raises(ValueError):
        fs.record("a", -1.0, now=0.0)


def test_a_heavy_user_cannot_starve_a_light_one() -> None:
    fs = FairShare(half_life_s=3_600.0)
    fs.record("0xheavy", 1e9, NOW - 60)
    providers = grid(provider(1, cpus=4))
    hog = [job(i, cpus=1, owner="0xheavy", submitted_at=i) for i in range(1, 101)]
    light = job(1_000, cpus=1, owner="0xlight", submitted_at=10_000)
    assignments = Matcher(fairshare=fs).match([*hog, light], providers, NOW)
    assert assignments[0].job_id == 1_000
    assert len(assignments) == 4


def test_owners_with_equal_usage_take_turns_and_older_jobs_go_first() -> None:
    providers = grid(provider(1, cpus=4))
    a_jobs = [job(i, owner="0xa", submitted_at=i) for i in (1, 2, 3)]
    b_jobs = [job(i, owner="0xb", submitted_at=i) for i in (11, 12, 13)]
    order = [a.job_id for a in Matcher().match([*b_jobs, *a_jobs], providers, NOW)]
    assert order == [1, 11, 2, 12]


def test_fair_share_steers_heavy_users_away_from_the_most_reliable_provider() -> None:
    solid = provider(1, stats=ProviderStats(finished=1_000))
    shaky = provider(2, stats=ProviderStats(finished=90, refused=10))
    weights = Weights(price=1.0, load=0.0, reliability=0.1, fairshare=1.0)
    fs = FairShare(3_600.0)
    fs.record("0xheavy", 100.0, NOW)
    matcher = Matcher(weights, fs)
    assert placed(matcher, [job(1, owner="0xlight")], grid(solid, shaky)) == {1: addr(1)}
    assert placed(matcher, [job(2, owner="0xheavy")], grid(solid, shaky)) == {2: addr(2)}
    breakdown = matcher.explain(job(2, owner="0xheavy"), grid(solid, shaky), NOW).verdict(addr(1)).score
    assert breakdown is not None and breakdown.fairshare == pytest.approx(solid.stats.reliability)


def test_weights_and_stats_validate() -> None:
    with pytest.raises(ValueError):
        Weights(price=-1.0)
    with pytest.raises(ValueError):
        Weights(0, 0, 0, 0)
    assert ProviderStats().reliability == 0.5
    assert ProviderStats(finished=8, failed=0, refused=1, timed_out=0, panicked=1).reliability == pytest.approx(9 / 12)


# --------------------------------------------------------------------------- bad input


def test_bad_jobs_and_providers_are_skipped_with_reasons() -> None:
    broken = PendingJob(1, "0xo", Resources(1), 10**9, (LabelConstraint("gpu.mem", LabelOp.LT, "lots"),))
    negative = PendingJob(2, "0xo", Resources(-1), 10**9)
    duplicate = job(3)
    fine = job(4)
    providers = grid(
        provider(1, labels={"gpu.mem": "16"}),
        ProviderState(addr(2), Resources(4), Resources(8), Prices.from_units(1)),  # free > total
    )
    matcher = Matcher()
    assignments = matcher.match([broken, negative, duplicate, job(3), fine], providers, NOW)
    assert {a.job_id for a in assignments} == {3, 4}
    assert "cannot be evaluated" in matcher.last_errors[1]
    assert "resources.cpus" in matcher.last_errors[2]
    assert matcher.last_errors[3] == "duplicate job id in the batch"
    assert "exceeds total" in matcher.last_provider_errors[addr(2)]
    explanation = matcher.explain(broken, providers, NOW)
    assert explanation.error is not None and "cannot be evaluated" in explanation.error
    assert explanation.best is None


# --------------------------------------------------------------------------- explanations


def test_explanation_renders_every_provider_and_a_grouped_summary() -> None:
    many = [provider(n, gpus=0, free=Resources(16, 0, 65_536)) for n in range(10, 1_210)]
    best = provider(1, gpus=4)
    half = provider(2, gpus=1)
    providers = grid(best, half, *many)
    explanation = Matcher().explain(job(7, gpus=2, cap=10**9), providers, NOW)
    text = str(explanation)
    lines = text.splitlines()
    assert lines[0].startswith("job 7 of 0xowner: 1 cpus, 2 gpus, 1024 MB; cap 1000 credits/min")
    assert lines[1] == "placeable on 1 of 1,202 providers"
    assert lines[2].startswith(f"  {addr(1)}: #1 rate ")
    assert f"  {addr(2)}: gpus: needs 2, has 1 free" in lines
    assert len(lines) == 2 + 1_202
    summary = explanation.summary().splitlines()
    assert summary[1] == "placeable on 1 of 1,202 providers"
    assert "  1,201 providers: gpus: needs 2, has 1 free (max free 1)" in summary
    assert len(summary) == 4


def test_explain_rank_one_is_what_match_picks() -> None:
    rng = random.Random(3)
    providers = grid(
        *(
            provider(
                n,
                cpus=rng.choice((8, 32)),
                gpus=rng.choice((0, 0, 2)),
                free=None,
                prices=Prices.from_units(rng.randint(100, 900), rng.randint(1_000, 9_000), rng.randint(1, 50)),
                stats=ProviderStats(finished=rng.randint(0, 50), refused=rng.randint(0, 5)),
            )
            for n in range(60)
        )
    )
    for i in range(30):
        need = job(i, cpus=rng.choice((1, 4, 8)), gpus=rng.choice((0, 1)))
        expected = Matcher().explain(need, providers, NOW).best
        got = Matcher().match([need], providers, NOW)
        assert (got[0].provider if got else None) == (expected.address if expected else None)


# --------------------------------------------------------------------------- properties

LABEL_VALUES = {"zone": ["a", "b", "c"], "gpu.model": ["A100", "H100"], "tier": ["1", "2", "3"]}


@st.composite
def markets(draw: st.DrawFn) -> tuple[dict[str, ProviderState], list[PendingJob], FairShare]:
    n_providers = draw(st.integers(1, 12))
    providers = []
    for n in range(n_providers):
        total = Resources(draw(st.integers(0, 16)), draw(st.integers(0, 4)), draw(st.integers(0, 8)) * 1_024)
        free = Resources(*(draw(st.integers(0, t)) for t in (total.cpus, total.gpus, total.mem_mb)))
        labels = {k: draw(st.sampled_from(v)) for k, v in LABEL_VALUES.items() if draw(st.booleans())}
        prices = Prices.from_units(draw(st.integers(0, 50)), draw(st.integers(0, 500)), draw(st.integers(0, 20)))
        stats = ProviderStats(*(draw(st.integers(0, 5)) for _ in range(5)))
        providers.append(ProviderState(addr(n), total, free, prices, labels, draw(st.booleans()), stats))
    constraint = st.sampled_from(
        ["zone == a", "zone != b", "gpu.model in A100,H100", "tier >= 2", "tier < 3", "gpu.model == H100"]
    )
    jobs = []
    for i in range(draw(st.integers(0, 25))):
        res = Resources(draw(st.integers(0, 8)), draw(st.integers(0, 2)), draw(st.integers(0, 4)) * 1_024)
        texts = draw(st.lists(constraint, max_size=2))
        excluded = set(draw(st.lists(st.sampled_from([p.address for p in providers]), max_size=2)))
        jobs.append(
            PendingJob(
                i,
                draw(st.sampled_from(["0xa", "0xb", "0xc"])),
                res,
                draw(st.integers(0, 600)),
                tuple(parse_constraint(t) for t in texts),
                draw(st.integers(0, 5)),
                excluded,
            )
        )
    fs = FairShare(100.0)
    for owner in ("0xa", "0xb"):
        fs.record(owner, draw(st.floats(0, 1_000)), NOW)
    return grid(*providers), jobs, fs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(markets(), st.sampled_from([1, 2, 16]), st.sampled_from([False, None]))
def test_property_every_placement_is_valid_best_and_unplaced_jobs_fit_nowhere(
    market: tuple[dict[str, ProviderState], list[PendingJob], FairShare], leaf_size: int, compiled: bool | None
) -> None:
    """With the Python search (compiled=False) and the compiled one (None: used when built)."""
    providers, jobs, fs = market
    matcher = Matcher(fairshare=fs, leaf_size=leaf_size, compiled=compiled)
    assignments = matcher.match(jobs, providers, NOW)
    by_id = {j.id: j for j in jobs}
    state = copy.deepcopy(providers)
    for a in assignments:
        j, p = by_id[a.job_id], providers[a.provider]
        # every hard constraint holds ...
        assert p.active and a.provider not in j.excluded
        assert all(check(c, p.labels) is None for c in j.labels)
        assert a.rate == p.prices.rate_for(j.resources) <= j.max_rate
        # ... and the provider is exactly the best one given the earlier placements of the batch
        best = matcher.explain(j, state, NOW).best
        assert best is not None and best.address == a.provider
        here = state[a.provider]
        here.free = here.free - j.resources
        assert here.free.cpus >= 0 and here.free.gpus >= 0 and here.free.mem_mb >= 0
    placed_ids = {a.job_id for a in assignments}
    assert placed_ids.isdisjoint(matcher.last_unplaced)
    assert placed_ids | set(matcher.last_unplaced) | set(matcher.last_errors) == set(by_id)
    for job_id in matcher.last_unplaced:
        assert matcher.explain(by_id[job_id], state, NOW).placeable == ()


# --------------------------------------------------------------------------- benchmark


def test_benchmark_quick_run() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "matcher.py"), "--quick"],
        check=True,
        capture_output=True,
        text=True,
        timeout=240,
    ).stdout
    assert "jobs/s" in out and "same as recorded" in out and "DIFFERENT" not in out


def test_index_node_bounds_stay_lower_bounds_between_refreshes_and_exact_after_one() -> None:
    """Placements leave the node bounds stale until a refresh: stale, each is at most the exact one (still a
    lower bound); after the refresh every node holds exactly the minima of its providers' current rows."""
    from dsq_chain.matching.index import ProviderIndex
    from dsq_chain.matching.scoring import MarketReference

    rng = random.Random(7)
    states = [
        provider(n, cpus=rng.choice((8, 16, 64)), gpus=rng.choice((0, 0, 2)), mem_mb=rng.choice((16_384, 65_536)),
                 prices=Prices.from_units(rng.randint(500, 2_000), rng.randint(0, 50_000), rng.randint(50, 200)),
                 stats=ProviderStats(finished=rng.randint(0, 50), refused=rng.randint(0, 5)))
        for n in range(1, 201)
    ]  # fmt: skip
    index = ProviderIndex(states, [0] * len(states), Weights(), MarketReference.of(states), leaf_size=4)

    def exact(node: int) -> tuple[float, ...]:
        return tuple(map(min, *(index._derive(i) for i in range(index.lo[node], index.hi[node]))))

    refreshes = 0
    for _ in range(600):
        i = rng.randrange(len(index))
        if index.fc[i] >= 1 and index.fm[i] >= 1_024:
            index.place(i, 1, 0, 1_024)
        exacts = [exact(node) for node in range(len(index.lo))]
        assert all(s <= e for node, ex in enumerate(exacts) for s, e in zip(index.dynamic[node], ex, strict=True))
        if index.refreshes > refreshes:  # place() just refreshed: no placement pending
            refreshes = index.refreshes
            assert all(index.dynamic[node] == ex for node, ex in enumerate(exacts))
    assert refreshes >= 2
    index.refresh()
    assert all(index.dynamic[node] == exact(node) for node in range(len(index.lo)))


def test_match_pauses_the_garbage_collector_only_while_it_runs() -> None:
    import gc

    providers = grid(provider(1), provider(2))
    jobs = [PendingJob(1, "0xa", Resources(1, 0, 1_024), 10**9)]
    seen: list[bool] = []

    class Spy(Matcher):
        def _valid_jobs(self, jobs: Iterable[PendingJob]) -> list[PendingJob]:
            seen.append(gc.isenabled())
            return super()._valid_jobs(jobs)

    assert gc.isenabled()
    assert len(Spy().match(jobs, providers, NOW)) == 1
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        Spy().match(jobs, providers, NOW)
        assert not gc.isenabled()  # a caller's choice is left as it was
    finally:
        gc.enable()


@pytest.mark.parametrize("huge", [2**63, 10**30])
def test_counts_and_prices_beyond_64_bits_are_matched_exactly_as_explained(huge: int) -> None:
    """The index is built with int64 arrays; a capacity or price that does not fit falls back to Python ints,
    with the same placements and scores as the plain scoring."""
    providers = grid(
        provider(1, cpus=huge),
        provider(2, prices=Prices.from_units(huge, 0, 100)),
        *(provider(n, cpus=16 * n, prices=Prices.from_units(900 + n, 0, 100)) for n in range(3, 9)),
    )
    jobs = [job(k, cpus=2, mem_mb=4_096, cap=10**40) for k in range(1, 13)]
    matcher = Matcher(leaf_size=2)
    assignments = matcher.match(jobs, providers, NOW)
    assert [a.job_id for a in assignments] == [j.id for j in jobs]
    state = copy.deepcopy(providers)
    for a, j in zip(assignments, jobs, strict=True):
        assert a.provider == matcher.explain(j, state, NOW).best.address  # type: ignore[union-attr]
        state[a.provider].free = state[a.provider].free - j.resources
