"""The scheduler's backlog: parked jobs wake exactly when a provider change lets them fit; per-owner limits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dsq_chain.matching import FairShare, Matcher, PendingJob, ProviderState, first_failure
from dsq_chain.matching.backlog import Backlog
from dsq_chain.types import LabelConstraint, LabelOp, Prices, Resources

PRICES = Prices.from_units(1_000, 10_000, 100)
FULL = Resources(8, 0, 16_384)


def provider(address: str = "0xp1", free: Resources = FULL, *, prices: Prices = PRICES,
             labels: dict[str, str] | None = None, active: bool = True) -> ProviderState:
    return ProviderState(address, Resources(8, 1, 16_384), free, prices, labels or {}, active)


def job(job_id: int, owner: str = "0xa", cpus: int = 2, cap: int = 10**6, labels: tuple[LabelConstraint, ...] = (),
        excluded: set[str] | None = None, gpus: int = 0) -> PendingJob:
    return PendingJob(job_id, owner, Resources(cpus, gpus, 1_024), cap, labels, float(job_id), excluded or set())


def test_a_parked_job_is_not_examined_again_until_a_provider_change_lets_it_fit() -> None:
    backlog = Backlog()
    big, cheap = job(1, cpus=6), job(2, cap=1)
    for j in (big, cheap):
        backlog.add(j)
    taken = backlog.take()
    assert [j.id for j in taken] == [1, 2]
    backlog.settle(taken, placed=(), unplaced=[1, 2])
    assert (backlog.fresh, backlog.parked) == (0, 2)
    assert backlog.take() == []  # nothing changed: nothing to examine
    assert backlog.touch(provider(free=Resources(4, 0, 16_384))) == 0  # still too small for the big one
    assert backlog.touch(provider(active=False)) == 0
    assert backlog.touch(provider(free=Resources(8, 0, 16_384))) == 1  # the big one fits now; the cheap one never
    assert [j.id for j in backlog.take()] == [1]
    assert backlog.is_parked(2) and not backlog.is_parked(1)
    assert backlog.touch(provider(prices=Prices.from_units(0, 0, 0))) == 1  # a free provider fits the cap of 1
    assert [j.id for j in backlog.take()] == [2]


def test_labels_and_exclusions_are_respected_when_waking() -> None:
    backlog = Backlog()
    eu = job(1, labels=(LabelConstraint("zone", LabelOp.EQ, "eu"),))
    not_p1 = job(2, excluded={"0xP1"})
    for j in (eu, not_p1):
        backlog.add(j)
    backlog.settle(backlog.take(), (), [1, 2])
    assert backlog.touch(provider("0xp1", labels={"zone": "us"})) == 0
    assert backlog.touch(provider("0xp1", labels={"zone": "eu"})) == 1
    assert backlog.touch(provider("0xp2")) == 1


def test_jobs_not_reached_stay_fresh_and_a_lost_round_restores_them() -> None:
    backlog = Backlog()
    for i in range(1, 4):
        backlog.add(job(i))
    taken = backlog.take()
    backlog.settle(taken, placed=[1], unplaced=[2])  # job 3 was not reached (the batch was full)
    assert (backlog.fresh, backlog.parked) == (1, 1)
    taken = backlog.take()
    backlog.restore(taken)
    assert [j.id for j in backlog.take()] == [3]


def test_a_job_that_leaves_pending_is_forgotten_wherever_it_was() -> None:
    backlog = Backlog()
    backlog.add(job(1))
    backlog.add(job(2))
    backlog.settle(backlog.take(), (), [2])
    backlog.add(job(3))
    for i in (1, 2, 3):
        backlog.remove(i)
    backlog.remove(99)
    assert (backlog.fresh, backlog.parked) == (0, 0)
    assert backlog.touch(provider()) == 0


def test_one_owners_flood_cannot_push_anothers_job_out_of_a_round() -> None:
    backlog = Backlog(per_owner=50)
    for i in range(1, 10_001):
        backlog.add(job(i, owner="0xflood", cpus=1))
    backlog.add(job(20_000, owner="0xother", cpus=1))
    taken = backlog.take()
    assert len(taken) == 51 and taken[-1].id == 20_000
    assert [j.id for j in taken[:50]] == list(range(1, 51)), "the flood's oldest first"
    # The matcher, given a round's jobs, places the other owner's job although the flood is older and bigger.
    providers = {"0xp1": provider(free=Resources(8, 0, 16_384))}
    placed = Matcher(fairshare=FairShare(3600.0)).match(taken, providers, now=0.0, limit=4)
    assert 20_000 in [a.job_id for a in placed]


shapes = st.tuples(st.integers(0, 9), st.integers(0, 2), st.sampled_from([0, 512, 1_024, 20_000]))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(shapes, st.integers(0, 30_000), st.sampled_from(["", "eu", "us", "007", "7"]), st.booleans()),
             min_size=1, max_size=30),
    st.tuples(shapes, st.sampled_from([None, "eu", "us", "7", "0007"]), st.integers(0, 3_000), st.booleans()),
)
def test_touch_wakes_exactly_the_parked_jobs_that_fit_the_provider(
    specs: list[tuple[tuple[int, int, int], int, str, bool]],
    change: tuple[tuple[int, int, int], str | None, int, bool],
) -> None:
    backlog = Backlog()
    jobs = []
    for i, ((c, g, m), cap, zone, exclude) in enumerate(specs, 1):
        labels = (LabelConstraint("zone", LabelOp.EQ, zone),) if zone else ()
        jobs.append(PendingJob(i, "0xa", Resources(c, g, m), cap, labels, 0.0, {"0xp"} if exclude else set()))
        backlog.add(jobs[-1])
    backlog.settle(backlog.take(), (), [j.id for j in jobs])
    (c, g, m), where, per_cpu, active = change
    p = ProviderState("0xp", Resources(9, 2, 20_000), Resources(c, g, m), Prices.from_units(per_cpu, 5_000, 50),
                      {"zone": where} if where else {}, active)
    woken = backlog.touch(p)
    expected = sorted(j.id for j in jobs if first_failure(j, p) is None)
    assert woken == len(expected)
    assert sorted(j.id for j in backlog.take()) == expected
    assert backlog.parked == len(jobs) - len(expected)


def test_spam_benchmark_quick_run() -> None:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "spam.py"), "--quick"], check=True,
                         capture_output=True, text=True, timeout=240).stdout
    assert "round for a new placeable job with 10,000 parked" in out and "target < 50 ms" in out
