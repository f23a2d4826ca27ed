"""The meta-scheduler on a real Anvil: placement by the rules, explanations with exact reasons,
refusals, claim timeouts, pauses, lost races, restarts, bad input, fair share, batching, metrics."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from dsq_chain import errors
from dsq_chain.matching import EXCLUDED, INACTIVE, Assignment, Explanation
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import dev_keys, free_port
from dsq_chain.sdk.chain import Chain, Wallet
from dsq_chain.sdk.client import GridClient, ProviderClient
from dsq_chain.sdk.events import ChainEvent, EventDecoder, JobAssigned, JobReleased
from dsq_chain.services.follower import EventFollower
from dsq_chain.services.metrics import SchedulerMetrics
from dsq_chain.services.scheduler import MetaScheduler, RoundResult
from dsq_chain.types import CREDIT_UNIT, JobStatus, LabelConstraint, LabelOp, Prices, Resources
from dsq_chain.workloads import workflow
from dsq_chain.workloads.labels import encode_key, encode_value
from tests.grid import CPU_PRICES, GPU_PRICES, Grid, submit_unchecked
from tests.test_follower import RangeLimitProxy

CREDITS = 10 * CREDIT_UNIT
MAX_RATE = 10**6
#: Anvil's dev accounts 10..19 are funded but not used by the standard grid.
EXTRA_KEYS = dev_keys(20)[10:]


def make_workflow(cpus: int = 2, gpus: int = 0, labels: tuple[str, ...] = (), mem_per_cpu: int = 512,
                  tag: str = "x") -> workflow.Workflow:
    doc = {
        "name": f"job-{tag}",
        "resources": {"tasks": 1, "cpusPerTask": cpus, "memPerCpu": mem_per_cpu, "gpus": gpus},
        "labels": list(labels),
        "steps": [{"name": "main", "run": {"command": "true"}}],
    }
    return workflow.loads(json.dumps(doc))


def submit(user: GridClient, wf: workflow.Workflow, *, count: int = 1, max_rate: int = MAX_RATE) -> list[int]:
    """Submits ``wf`` (amounts in base units), placeable or not: these tests are about the scheduler."""
    return list(user.submit(wf, credits=Credits(units=int(CREDITS)), max_rate=Credits(units=int(max_rate)),
                            count=count, force=True))


PLAIN = make_workflow()
EU = make_workflow(labels=("zone == eu",))


def job_events(grid: Grid, name: str) -> list[ChainEvent]:
    f = EventFollower(grid.chain, grid.deployment, filters=[EventDecoder().filter_for([name])])
    out: list[ChainEvent] = []
    f.add_handler(out.append)
    f.poll()
    return out


def assignments_per_job(grid: Grid) -> Counter[int]:
    return Counter(e.job_id for e in job_events(grid, "JobAssigned") if isinstance(e, JobAssigned))


def releases_per_job(grid: Grid) -> Counter[int]:
    return Counter(e.job_id for e in job_events(grid, "JobReleased") if isinstance(e, JobReleased))


def status(grid: Grid, job_id: int) -> tuple[JobStatus, str | None]:
    job = grid.user.job(job_id)
    return job.status, job.provider


def nonce(grid: Grid, address: str) -> int:
    return int(grid.chain.call_rpc("eth_getTransactionCount", [address, "latest"]), 16)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Extra:
    """Providers beyond the standard grid: an RTX box, an A100 box that is paused, one that is banned."""

    rtx: ProviderClient
    paused: ProviderClient
    banned: ProviderClient


@pytest.fixture
def extra(grid: Grid) -> Extra:
    wallets = [grid.chain.wallet(k) for k in EXTRA_KEYS[:3]]
    rtx, paused, banned = (ProviderClient(w, grid.deployment) for w in wallets)
    rtx.register(Resources(8, 4, 32_768), Prices.from_units(500, 10_000, 50), {"gpu.model": "RTX3090", "gpu.mem": "24"})
    big_a100 = Resources(64, 8, 262_144)
    paused.register(big_a100, Prices.from_units(100, 1_000, 10), {"gpu.model": "A100", "zone": "eu"})
    banned.register(big_a100, Prices.from_units(100, 1_000, 10), {"gpu.model": "A100", "zone": "eu"})
    for p in (rtx, paused, banned):
        grid.admin.approve(p.address)
    paused.pause()
    grid.admin.ban(banned.address)
    return Extra(rtx, paused, banned)


def scheduler(grid: Grid, **kw: Any) -> MetaScheduler:
    return MetaScheduler(grid.scheduler.wallet, grid.deployment, **kw)


def reasons(expl: Explanation | str) -> dict[str, str]:
    assert isinstance(expl, Explanation), expl
    return {v.address: v.rejection.reason for v in expl.verdicts if v.rejection is not None}


# ------------------------------------------------------------------------------------ placement, explain


def test_jobs_are_placed_by_the_rules_and_the_rest_explained(grid: Grid, extra: Extra) -> None:
    a100x2 = make_workflow(gpus=2, labels=("gpu.model == A100",), tag="a100")
    small_gpu = make_workflow(gpus=1, labels=("gpu.mem <= 32",), tag="rtx")
    eu = submit(grid.user, EU)[0]
    a100 = submit(grid.user, a100x2)[0]
    rtx = submit(grid.user, small_gpu)[0]
    a100_again = submit(grid.user, a100x2)[0]
    capped = submit(grid.user, EU, max_rate=CPU_PRICES.rate_for(EU.resources) - 1)[0]

    sched = scheduler(grid)
    result = sched.round()
    placed = {a.job_id: a.provider for a in result.assigned}
    assert placed == {eu: grid.cpu.address, a100: grid.gpu.address, rtx: extra.rtx.address}
    assert sorted(result.unplaced) == sorted([a100_again, capped])
    for job_id, provider in placed.items():
        assert status(grid, job_id) == (JobStatus.META_SCHEDULED, provider)
    assert grid.user.job(a100).rate == GPU_PRICES.rate_for(a100x2.resources)

    why = reasons(sched.explain(a100_again))
    assert why == {
        grid.cpu.address: "gpus: needs 2, has 0 free",
        grid.spare.address: "gpus: needs 2, has 0 free",
        grid.gpu.address: "gpus: needs 2, has 0 free",
        extra.rtx.address: "label gpu.model == A100: provider has RTX3090",
        extra.paused.address: INACTIVE,
        extra.banned.address: INACTIVE,
        grid.pending.address: INACTIVE,
    }
    rate = CPU_PRICES.rate_for(EU.resources)
    why = reasons(sched.explain(capped))
    assert why[grid.cpu.address] == f"price: rate {rate} > cap {rate - 1} credits/min"
    assert why[grid.spare.address] == "label zone == eu: provider has no zone"
    assert why[extra.paused.address] == INACTIVE
    assert str(sched.explain(capped)).count("placeable on 0 of 7 providers") == 1

    # A job without needs goes where explain ranks first, on an active provider.
    plain = submit(grid.users[1], PLAIN)[0]
    before = sched.explain(plain)
    assert isinstance(before, Explanation) and before.best is not None
    assert {v.address for v in before.placeable} == {grid.cpu.address, grid.gpu.address, grid.spare.address,
                                                     extra.rtx.address}
    result = sched.round()
    assert [(a.job_id, a.provider) for a in result.assigned] == [(plain, before.best.address)]
    assert sched.explain(plain) == f"job {plain} is META_SCHEDULED on {before.best.address}: it is not waiting " \
                                   "for a provider"


def test_explain_of_missing_and_finished_jobs_and_unknown_providers(grid: Grid) -> None:
    job = submit(grid.user, EU)[0]
    sched = scheduler(grid)
    assert sched.explain(job + 1) == f"job {job + 1} does not exist (no JobSubmitted event for it)"
    expl = sched.explain(job)
    assert isinstance(expl, Explanation) and expl.best is not None and expl.best.address == grid.cpu.address
    with pytest.raises(KeyError, match="0x000000000000000000000000000000000000dEaD"):
        expl.verdict("0x000000000000000000000000000000000000dEaD")
    sched.round()
    grid.cpu.claim(job)
    grid.cpu.start(job)
    grid.cpu.finish(job, 0)
    assert sched.explain(job) == f"job {job} is FINISHED on {grid.cpu.address}: it is not waiting for a provider"
    other = submit(grid.user, PLAIN)[0]
    grid.user.cancel(other)
    assert sched.explain(other) == f"job {other} is CANCELED: it is not waiting for a provider"


# ------------------------------------------------------------------------------------ refusals, timeouts


def test_refused_job_is_rematched_elsewhere_never_back(grid: Grid) -> None:
    job = submit(grid.user, PLAIN)[0]
    sched = scheduler(grid)
    clients = {p.address: p for p in (grid.cpu, grid.gpu, grid.spare)}
    refused: list[str] = []
    for _ in range(3):
        result = sched.round()
        assert len(result.assigned) == 1
        provider = result.assigned[0].provider
        assert provider not in refused, f"job went back to {provider}, which refused it"
        assert status(grid, job) == (JobStatus.META_SCHEDULED, provider)
        clients[provider].refuse(job)
        refused.append(provider)
    assert set(refused) == set(clients)
    result = sched.round()
    assert result.assigned == [] and result.unplaced == [job]
    assert status(grid, job) == (JobStatus.PENDING, None)
    why = reasons(sched.explain(job))
    assert all(why[p] == EXCLUDED for p in refused)
    assert assignments_per_job(grid)[job] == 3 and releases_per_job(grid)[job] == 3
    assert all(sched.state.providers[p].stats.refused == 1 for p in refused)


def test_jobs_of_a_banned_provider_go_back_to_pending_and_elsewhere(grid: Grid) -> None:
    """A banned provider may no longer claim or start: a job it had claimed would wait SCHEDULED for good (the
    claim timeout covers META_SCHEDULED only), and an assigned one would wait for the claim timeout. The
    scheduler sends both back (``releaseFromBanned``); each is placed again, never on that provider."""
    [claimed] = submit(grid.user, PLAIN)
    sched = scheduler(grid)
    [placed] = sched.round().assigned
    banned = placed.provider
    {p.address: p for p in (grid.cpu, grid.gpu, grid.spare)}[banned].claim(claimed)
    [direct] = submit_unchecked(grid.user, PLAIN.canonical(), PLAIN.resources, providers=[banned])
    sched.sync()
    assert [a.job_id for a in sched.round().assigned] == [direct]
    assert sched.sweep_banned() == []  # not banned yet
    grid.admin.ban(banned)
    sched.sync()
    assert sorted(sched.sweep_banned()) == sorted([claimed, direct])
    assert status(grid, claimed) == status(grid, direct) == (JobStatus.PENDING, None)
    sched.sync()
    assert sched.sweep_banned() == []  # (sent once)
    again = sched.round()
    [moved] = again.assigned
    assert moved.job_id == claimed and moved.provider != banned
    assert again.unplaced == [direct]  # its only allowed provider is banned: it waits, PENDING, not stranded
    assert sched.state.providers[banned].stats.timed_out == 2  # a release counts against the provider


def test_claim_timeout_sends_job_back_and_it_goes_elsewhere(grid: Grid) -> None:
    job = submit(grid.user, PLAIN)[0]
    sched = scheduler(grid)
    assert sched.claim_timeout == 300
    first = sched.round().assigned[0].provider
    assert sched.sweep_claim_timeouts() == [], "swept before the claim window passed"
    assert status(grid, job) == (JobStatus.META_SCHEDULED, first)

    grid.chain.increase_time(sched.claim_timeout + 1)
    assert sched.sweep_claim_timeouts() == [job]
    second = sched.round().assigned[0].provider
    assert second != first
    assert status(grid, job) == (JobStatus.META_SCHEDULED, second)

    grid.chain.increase_time(sched.claim_timeout + 1)
    assert sched.sweep_claim_timeouts() == [job]
    third = sched.round().assigned[0].provider
    assert third not in (first, second)
    grid.chain.increase_time(sched.claim_timeout + 1)
    assert sched.sweep_claim_timeouts() == [job]
    result = sched.round()
    assert result.assigned == [] and status(grid, job) == (JobStatus.PENDING, None)
    assert sched.state.providers[first].stats.timed_out == 1
    assert reasons(sched.explain(job))[first] == EXCLUDED
    # A claimed job is not swept, however late.
    other = submit(grid.user, PLAIN)[0]
    grid.scheduler.assign(other, grid.cpu.address)
    grid.cpu.claim(other)
    sched.sync()
    grid.chain.increase_time(sched.claim_timeout + 1)
    assert sched.sweep_claim_timeouts() == []


def test_claim_timeout_follows_the_admins_change(grid: Grid) -> None:
    job = submit(grid.user, PLAIN)[0]
    sched = scheduler(grid)
    first = sched.round().assigned[0].provider
    grid.admin.set_claim_timeout(60)
    grid.chain.increase_time(61)
    assert sched.sweep_claim_timeouts() == [], "the change is not applied before its event is seen"
    sched.sync()
    assert sched.claim_timeout == 60
    assert sched.sweep_claim_timeouts() == [job]
    assert sched.round().assigned[0].provider != first


def test_sweep_reads_only_the_jobs_that_are_due(grid: Grid) -> None:
    """Every 2 s the service looks for expired claims: it must not read every waiting job from the chain
    each time (with thousands waiting, that stalled the service for seconds per sweep)."""
    node = RangeLimitProxy(grid.chain.rpc_url, 10**6)
    try:
        sched = MetaScheduler(Chain(node.url).wallet(grid.scheduler.wallet.account.key), grid.deployment)
        early = submit(grid.user, PLAIN, count=5)
        sched.round()
        grid.chain.increase_time(200)
        late = submit(grid.user, PLAIN, count=5)
        sched.round()
        node.methods.clear()
        assert sched.sweep_claim_timeouts() == []
        assert node.methods["eth_call"] == 0, f"read waiting jobs that cannot be due: {node.methods}"
        grid.chain.increase_time(101)  # the first five are due, the others not
        node.methods.clear()
        assert sorted(sched.sweep_claim_timeouts()) == early
        assert node.methods["eth_call"] <= 2 * len(early), node.methods  # a getJob each, an estimate each
        assert all(status(grid, j)[0] is JobStatus.META_SCHEDULED for j in late)
    finally:
        node.close()


def test_paused_provider_is_not_chosen_until_it_resumes(grid: Grid) -> None:
    grid.cpu.pause()
    sched = scheduler(grid, poll_interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=sched.run, args=(stop,), daemon=True)
    thread.start()
    try:
        job = submit(grid.user, EU)[0]
        plain = submit(grid.user, PLAIN)[0]
        wait_until(lambda: status(grid, plain)[0] is JobStatus.META_SCHEDULED, 5, "the plain job to be placed")
        assert status(grid, plain)[1] != grid.cpu.address
        time.sleep(0.5)
        assert status(grid, job) == (JobStatus.PENDING, None)
        assert reasons(sched.explain(job))[grid.cpu.address] == INACTIVE
        t0 = time.monotonic()
        grid.cpu.resume()  # an event: a round follows at once, not after a slow cycle
        wait_until(lambda: status(grid, job)[0] is JobStatus.META_SCHEDULED, 5, "the eu job after resume")
        assert time.monotonic() - t0 < 2.0
        assert status(grid, job) == (JobStatus.META_SCHEDULED, grid.cpu.address)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


# ------------------------------------------------------------------------------------ lost races


class Hooked(MetaScheduler):
    """A scheduler that runs ``hooks`` (one per commit, in order) between matching and committing."""

    hooks: list[Callable[[], None]]
    commits: list[list[int]]

    def _commit(self, assignments: list[Assignment]) -> list[Assignment]:
        self.commits.append([a.job_id for a in assignments])
        if self.hooks:
            self.hooks.pop(0)()
        return super()._commit(assignments)


def hooked(grid: Grid, hooks: list[Callable[[], None]], **kw: Any) -> Hooked:
    s = Hooked(grid.scheduler.wallet, grid.deployment, **kw)
    s.hooks, s.commits = hooks, []
    return s


def second_scheduler(grid: Grid, **kw: Any) -> MetaScheduler:
    wallet: Wallet = grid.chain.wallet(EXTRA_KEYS[3])
    grid.admin.grant_scheduler(wallet.address)
    return MetaScheduler(wallet, grid.deployment, **kw)


def test_race_lost_to_another_scheduler_is_rematched(grid: Grid) -> None:
    ids = submit(grid.user, PLAIN, count=3)
    other = second_scheduler(grid, batch_limit=1)
    metrics = SchedulerMetrics()
    a = hooked(grid, [lambda: other.round()], metrics=metrics)
    result = a.round()  # B takes the first job between A's match and A's commit: that entry is skipped
    assert a.commits == [ids], "the rest of the batch landed: nothing to re-match"
    assert sorted(x.job_id for x in result.assigned) == ids[1:]
    assert "InvalidStatus" in result.skipped[ids[0]]
    assert assignments_per_job(grid) == Counter(ids), "a job was assigned twice (or not at all)"
    assert all(status(grid, i)[0] is JobStatus.META_SCHEDULED for i in ids)
    assert metrics.errors.labels(kind="InvalidStatus")._value.get() == 1

    # B wins everything: A's round neither raises nor assigns.
    more = submit(grid.user, PLAIN, count=2)
    other_all = second_scheduler(grid)
    a.hooks = [lambda: other_all.round()]
    result = a.round()
    assert result.assigned == []
    assert assignments_per_job(grid) == Counter(ids + more)


def test_job_cancelled_between_sync_and_commit(grid: Grid) -> None:
    ids = submit(grid.user, PLAIN, count=3)
    a = hooked(grid, [lambda: grid.user.cancel(ids[1])])
    result = a.round()
    assert sorted(x.job_id for x in result.assigned) == [ids[0], ids[2]]
    assert status(grid, ids[1]) == (JobStatus.CANCELED, None)
    assert ids[1] not in assignments_per_job(grid)
    assert a.explain(ids[1]) == f"job {ids[1]} is CANCELED: it is not waiting for a provider"


def test_entries_that_no_longer_fit_are_skipped_and_recorded(grid: Grid) -> None:
    """A cancel and a pause land between matching and committing: the batch still lands, the chain skips
    the entries that no longer fit (EntrySkipped), and the scheduler records why and shows it in explain."""
    ids = submit(grid.user, EU, count=6)

    def race() -> None:
        grid.user.cancel(ids[0])
        grid.cpu.pause()

    a = hooked(grid, [race])
    result = a.round()
    assert len(a.commits) == 1 and len(a.commits[0]) == 4, "one batch (cpu takes 4)"
    assert result.assigned == []
    assert "InvalidStatus" in result.skipped[ids[0]]
    assert status(grid, ids[0]) == (JobStatus.CANCELED, None)
    for j in a.commits[0][1:]:
        assert "ProviderIsPaused" in result.skipped[j]
        assert status(grid, j) == (JobStatus.PENDING, None)
    text = str(a.explain(a.commits[0][1]))
    assert INACTIVE in text and "last attempt: assignment to" in text and "ProviderIsPaused" in text


# ------------------------------------------------------------------------------------ restarts


class Crash(BaseException):  # a kill -9 is nothing the service may catch (its run loop catches Exception)
    pass


def test_restart_mid_stream_assigns_nothing_twice_and_forgets_nothing(grid: Grid) -> None:
    one_cpu = make_workflow(cpus=1, tag="one")
    submitted: list[int] = []
    feed_done = threading.Event()

    def feed() -> None:
        for i in range(16):
            submitted.extend(submit(grid.users[i % 2], one_cpu))
            time.sleep(0.02)
        feed_done.set()

    class CrashAfterCommit(MetaScheduler):
        """Dies right after its 2nd batch is mined, before applying the JobAssigned events."""

        batches = 0

        def _commit(self, assignments: list[Assignment]) -> list[Assignment]:
            landed = super()._commit(assignments)
            self.batches += 1
            if self.batches == 2:
                raise Crash("scheduler process killed")
            return landed

    errors: list[BaseException] = []

    def run(s: MetaScheduler, stop: threading.Event) -> None:
        try:
            s.run(stop)
        except BaseException as e:
            errors.append(e)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    first = CrashAfterCommit(grid.scheduler.wallet, grid.deployment, poll_interval=0.02)
    t1 = threading.Thread(target=run, args=(first, threading.Event()), daemon=True)
    t1.start()
    t1.join(30)
    assert not t1.is_alive() and len(errors) == 1 and isinstance(errors[0], Crash)
    assert 0 < len(assignments_per_job(grid)) < 16, "the crash should happen mid-stream"
    # A job assigned before the crash is refused: the next scheduler must re-match it.
    victim = min(assignments_per_job(grid))
    provider = {p.address: p for p in (grid.cpu, grid.gpu, grid.spare)}[grid.user.job(victim).provider or ""]
    provider.refuse(victim)

    second = MetaScheduler(grid.chain.wallet(grid.scheduler.wallet.account.key), grid.deployment, poll_interval=0.02)
    stop = threading.Event()
    t2 = threading.Thread(target=run, args=(second, stop), daemon=True)
    t2.start()
    try:
        assert feed_done.wait(30)
        wait_until(lambda: all(grid.user.job(i).status is JobStatus.META_SCHEDULED for i in submitted), 15,
                   "every job to be assigned")
    finally:
        stop.set()
        t2.join(10)
    assert len(errors) == 1
    assigned, released = assignments_per_job(grid), releases_per_job(grid)
    assert sorted(assigned) == sorted(submitted), "a job was forgotten"
    assert all(assigned[j] == released[j] + 1 for j in submitted), f"assigned twice: {assigned}, {released}"
    assert released == Counter([victim])
    assert grid.user.job(victim).provider != provider.address


# ------------------------------------------------------------------------------------ bad input, bad events


def _canonical_with(labels: list[str]) -> bytes:
    data = PLAIN.to_data() | {"labels": labels}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def test_jobs_that_can_never_be_placed_do_not_stop_the_others(grid: Grid) -> None:
    u = grid.user
    # what the SDK refuses, sent as another client could
    garbage = submit_unchecked(u, b"not yaml", PLAIN.resources, credits=CREDITS, max_rate=MAX_RATE)[0]
    bad_label = submit_unchecked(u, _canonical_with(["gpu.model ~ A100"]), PLAIN.resources, credits=CREDITS,
                                 max_rate=MAX_RATE)[0]
    no_chain_labels = submit_unchecked(u, EU.canonical(), EU.resources, credits=CREDITS, max_rate=MAX_RATE)[0]
    wrong_size = submit_unchecked(u, PLAIN.canonical(), Resources(4, 0, 1024), credits=CREDITS,
                                  max_rate=MAX_RATE)[0]
    good = submit(grid.users[1], EU, count=2)
    sched = scheduler(grid)
    result = sched.round()
    assert sorted(a.job_id for a in result.assigned) == good
    assert set(result.skipped) == {garbage, bad_label, no_chain_labels, wrong_size}
    assert str(sched.explain(garbage)).startswith(f"job {garbage} can never be placed: workflow does not parse: ")
    text = str(sched.explain(bad_label))
    assert text.startswith(f"job {bad_label} can never be placed: workflow does not parse: ") and "labels[0]" in text
    assert sched.explain(no_chain_labels) == (
        f"job {no_chain_labels} can never be placed: "
        "the label constraints submitted on chain differ from the workflow's labels")
    assert "the workflow asks for" in str(sched.explain(wrong_size))
    assert all(status(grid, j) == (JobStatus.PENDING, None) for j in result.skipped)


def test_a_label_the_matcher_cannot_evaluate_is_reported_not_fatal(grid: Grid) -> None:
    jobs = submit(grid.user, PLAIN, count=3)
    sched = scheduler(grid)
    sched.sync()
    # Not expressible in a workflow (the parser refuses it): an ordering against a non-number.
    sched.state.jobs[jobs[1]].labels = (LabelConstraint("gpu.mem", LabelOp.GE, "lots"),)
    result = sched.round()
    assert sorted(a.job_id for a in result.assigned) == [jobs[0], jobs[2]]
    assert "label constraint gpu.mem >= lots cannot be evaluated" in result.skipped[jobs[1]]
    expl = sched.explain(jobs[1])
    assert isinstance(expl, Explanation) and expl.best is None
    assert expl.error is not None and "cannot be evaluated" in expl.error
    assert "cannot be evaluated" in reasons(expl)[grid.gpu.address]


def test_a_label_word_no_value_encodes_to_is_refused_when_set(grid: Grid) -> None:
    """The contract refuses words no label value encodes to (numeric marker missing, a number spelled as
    text, text not left-aligned) and the reserved placement key: the state only ever sees good labels."""
    f = grid.cpu.market.functions
    for bogus in ((1).to_bytes(32, "big"), b"42".ljust(32, b"\0"), b"\0a".ljust(32, b"\0"), b"a\0b".ljust(32, b"\0")):
        with pytest.raises(errors.MalformedLabelValue):
            grid.cpu.wallet.transact(f.setLabels(["weird", "zone"], [bogus, encode_value("us")]))
    with pytest.raises(errors.ReservedLabel):
        grid.cpu.wallet.transact(f.setLabels(["@provider"], [encode_value("us")]))
    grid.cpu.set_labels({"zone": "us", "weird": "42"})
    assert grid.cpu.market.functions.labelOf(grid.cpu.address, encode_key("weird")).call() == encode_value("42")
    us_job = submit(grid.user, make_workflow(labels=("zone == us",), tag="us"))[0]
    sched = scheduler(grid)
    result = sched.round()
    assert [(a.job_id, a.provider) for a in result.assigned] == [(us_job, grid.cpu.address)]
    assert sched.state.errors == 0
    assert sched.state.providers[grid.cpu.address].labels == {"zone": "us", "weird": "42"}


def test_events_about_providers_it_never_saw(grid: Grid) -> None:
    """A scheduler started after the providers registered (bad start block) sees assignments to
    providers it does not know: each such event is counted as an error, the job's own state still follows."""
    sched = scheduler(grid)
    sched.follower.start_block = grid.chain.block_number() + 1
    jobs = submit(grid.user, PLAIN, count=2)
    sched.sync()
    grid.scheduler.assign(jobs[0], grid.cpu.address)
    grid.cpu.refuse(jobs[0])
    grid.scheduler.assign(jobs[1], grid.gpu.address)
    grid.gpu.claim(jobs[1])
    grid.gpu.start(jobs[1])
    grid.gpu.finish(jobs[1], 0)
    result = sched.round()  # must not raise
    assert result.assigned == []
    assert sched.state.providers == {}
    assert sched.state.errors == 4  # two assignments, a release and a settlement name unknown providers
    # What the events say about the jobs themselves is still applied.
    j0, j1 = (sched.state.jobs[j] for j in jobs)
    assert j0.status is JobStatus.PENDING and jobs[0] in sched.state.pending and j0.excluded == {grid.cpu.address}
    assert j1.status is JobStatus.FINISHED and jobs[1] not in sched.state.pending
    assert result.unplaced == [jobs[0]]


def test_a_reorg_rebuilds_the_state(grid: Grid) -> None:
    """Jobs and assignments on a fork that vanished must leave no trace in the scheduler's model, and its
    own vanished transactions must not leave it with a stale nonce."""
    big_eu = make_workflow(cpus=8, mem_per_cpu=1024, labels=("zone == eu",), tag="big")
    # Its own wallet object, so that the test's nonce resets do not help it.
    sched = MetaScheduler(grid.chain.wallet(grid.scheduler.wallet.account.key), grid.deployment)
    sched.round()
    snap = grid.chain.snapshot()
    gone = submit(grid.user, big_eu)[0]
    gone_too = submit(grid.user, big_eu)[0]
    assert [a.provider for a in sched.round().assigned] == [grid.cpu.address]
    grid.chain.revert(snap)
    grid.reset_nonces()
    job = submit(grid.users[1], big_eu)[0]
    assert job == gone  # the id is reused on the new fork
    t0 = time.monotonic()
    result = sched.round()
    assert time.monotonic() - t0 < 10, "the scheduler waited for a transaction sent with a stale nonce"
    assert [(a.job_id, a.provider) for a in result.assigned] == [(job, grid.cpu.address)]
    assert sched.follower.reorgs == 1
    assert sched.state.jobs[job].owner == grid.users[1].address
    assert sched.explain(gone_too) == f"job {gone_too} does not exist (no JobSubmitted event for it)"
    assert set(sched.state.jobs) == {job}

def test_a_reorg_before_the_follower_saw_the_assignment_puts_the_job_back(grid: Grid) -> None:
    """The assignment's block vanishes before the follower reached it (here: the follower waits for one
    confirmation; in the fault test it was a revert between the receipt and the next eth_getLogs). The
    follower sees no reorg (its checkpoint is older and intact), so the scheduler must notice on its own
    that the receipt's block is gone, or the job stays PENDING on chain and out of every round. Found by
    CI: test_faults' reorg test timed out this way."""
    sched = MetaScheduler(grid.chain.wallet(grid.scheduler.wallet.account.key), grid.deployment, confirmations=1)
    sched.round()
    job = submit(grid.user, PLAIN)[0]
    grid.chain.mine()  # the submission confirmed, so the follower delivers it
    snap = grid.chain.snapshot()
    assert [a.job_id for a in sched.round().assigned] == [job]
    assert status(grid, job)[0] is JobStatus.META_SCHEDULED
    assert sched.follower.checkpoint is not None
    assert sched.follower.checkpoint.block < grid.chain.block_number()  # the assignment not seen as an event
    grid.chain.revert(snap)
    assert status(grid, job)[0] is JobStatus.PENDING
    result = sched.round()
    assert [a.job_id for a in result.assigned] == [job], result
    assert status(grid, job)[0] is JobStatus.META_SCHEDULED
    assert sched.follower.reorgs == 0  # it was the scheduler's own check, not the follower's
    grid.chain.mine()
    sched.sync()
    assert not sched._inflight  # the event arrived: nothing left to watch



# ------------------------------------------------------------------------------------ fair share, batching


def test_fair_share_first_round_interleaves_owners(grid: Grid) -> None:
    heavy, light = grid.users[0], grid.users[1]
    h = submit(heavy, EU, count=20)
    lt = [submit(light, EU)[0] for _ in range(2)]
    result = scheduler(grid).round()
    assert len(result.assigned) == 4, "capacity for 4 eu jobs at a time"
    assert set(lt) <= {a.job_id for a in result.assigned}
    assert {a.job_id for a in result.assigned} - set(lt) == set(h[:2])


def test_fair_share_light_user_overtakes_a_heavy_backlog(grid: Grid) -> None:
    heavy, light = grid.users[0], grid.users[1]
    sched = scheduler(grid)
    h = submit(heavy, EU, count=20)
    first = [a.job_id for a in sched.round().assigned]
    assert first == h[:4]
    lt = [submit(light, EU)[0] for _ in range(2)]
    assert sched.round().assigned == [], "no capacity left"
    for j in first:  # heavy's jobs run a while and are billed: that is its recent usage
        grid.cpu.claim(j)
        grid.cpu.start(j)
    grid.chain.increase_time(3600)
    for j in first:
        grid.cpu.finish(j, 0)
    result = sched.round()
    assert [a.job_id for a in result.assigned][:2] == lt, "light user's jobs come first"
    assert [a.job_id for a in result.assigned][2:] == h[4:6]
    assert sched.fairshare.usage(heavy.address, time.time()) > 0
    assert sched.fairshare.usage(light.address, time.time()) == 0


def test_fair_share_decays_in_chain_time(grid: Grid) -> None:
    """Usage is recorded at its settlement's block time, so it must decay against chain time too: an hour of
    use twenty half-lives ago weighs less than a minute of use now (on Anvil chain time runs ahead of the wall
    clock after evm_increaseTime; decayed against the wall clock, the old hour would still count in full)."""
    heavy, light = grid.users[0], grid.users[1]
    sched = scheduler(grid, half_life_s=60)

    def run(user: GridClient, seconds: int) -> None:
        [job] = submit(user, EU)
        [a] = sched.round().assigned
        assert (a.job_id, a.provider) == (job, grid.cpu.address)
        grid.cpu.claim(job)
        grid.cpu.start(job)
        grid.chain.increase_time(seconds)
        grid.cpu.finish(job, 0)

    run(heavy, 3600)
    grid.chain.increase_time(20 * 60)
    run(light, 60)
    x = submit(heavy, EU)[0]
    y = submit(light, EU)[0]
    assert [a.job_id for a in sched.round().assigned] == [x, y], "the heavy user's old hour still counted"


def test_pending_jobs_are_committed_in_one_transaction(grid: Grid) -> None:
    ids = submit(grid.user, PLAIN, count=5) + submit(grid.users[1], EU, count=3)
    sched = scheduler(grid)
    before = nonce(grid, grid.scheduler.address)
    result = sched.round()
    assert nonce(grid, grid.scheduler.address) == before + 1
    assert sorted(a.job_id for a in result.assigned) == ids
    assigned = job_events(grid, "JobAssigned")
    assert len({e.tx_hash for e in assigned}) == 1 and len(assigned) == 8


def test_batch_limit_splits_rounds(grid: Grid) -> None:
    ids = submit(grid.user, PLAIN, count=5)
    sched = scheduler(grid, batch_limit=2)
    before = nonce(grid, grid.scheduler.address)
    sizes = []
    while (r := sched.round()).assigned:
        sizes.append(len(r.assigned))
    assert sizes == [2, 2, 1] and nonce(grid, grid.scheduler.address) == before + 3
    assert sorted(assignments_per_job(grid)) == ids


def test_a_backlog_beyond_the_batch_limit_is_drained_without_new_events(grid: Grid) -> None:
    """One job array of 7 with batch_limit 3: the running service must go on with rounds until the backlog
    is placed, not wait for the next triggering event."""
    sched = scheduler(grid, batch_limit=3, poll_interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=sched.run, args=(stop,), daemon=True)
    thread.start()
    try:
        before = nonce(grid, grid.scheduler.address)
        ids = submit(grid.user, PLAIN, count=7)
        wait_until(lambda: all(status(grid, i)[0] is JobStatus.META_SCHEDULED for i in ids), 10,
                   "all 7 jobs assigned")
    finally:
        stop.set()
        thread.join(10)
    assert nonce(grid, grid.scheduler.address) == before + 3


# ------------------------------------------------------------------------------------ metrics


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+0-9.eEinfNa]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def test_metrics_are_served_and_move(grid: Grid) -> None:
    metrics = SchedulerMetrics()
    port = free_port()
    metrics.serve(port)
    submit(grid.user, PLAIN, count=3)
    sched = scheduler(grid, metrics=metrics)
    sched.sync()
    m0 = _scrape(port)
    assert m0["dsq_scheduler_pending_jobs"] == 3
    assert m0["dsq_scheduler_jobs_submitted_total"] == 3
    assert m0["dsq_scheduler_matches_total"] == 0
    assert m0["dsq_scheduler_commit_latency_seconds_count"] == 0
    result: RoundResult = sched.round()
    assert len(result.assigned) == 3
    m1 = _scrape(port)
    assert m1["dsq_scheduler_pending_jobs"] == 0
    assert m1["dsq_scheduler_matches_total"] == 3
    assert m1["dsq_scheduler_commit_latency_seconds_count"] == 1
    assert 0 < m1["dsq_scheduler_commit_latency_seconds_sum"] < 10
    # A lost race shows up as an error by kind.
    ids = submit(grid.user, PLAIN, count=2)
    a = hooked(grid, [lambda: grid.user.cancel(ids[0])], metrics=metrics)
    a.round()
    m2 = _scrape(port)
    assert m2['dsq_scheduler_errors_total{kind="InvalidStatus"}'] == 1
    assert m2["dsq_scheduler_matches_total"] == 4



def test_unplaceable_jobs_are_parked_and_wake_when_capacity_frees(grid: Grid) -> None:
    blocker = submit(grid.user, PLAIN)[0]
    grid.scheduler.assign(blocker, grid.gpu.address)  # the only 16-cpu provider is partly busy
    big = submit(grid.user, make_workflow(cpus=16))[0]
    spam = submit(grid.users[1], PLAIN, count=20, max_rate=1)  # priced out everywhere
    sched = scheduler(grid)
    result = sched.round()
    assert result.assigned == [] and sorted(result.unplaced) == sorted([big, *spam])
    assert sched.backlog.parked == 21
    new = submit(grid.users[2], PLAIN)[0]
    result = sched.round()
    assert [a.job_id for a in result.assigned] == [new] and result.unplaced == [], "parked jobs were examined again"
    assert sched.round().unplaced == []
    grid.gpu.claim(blocker)
    grid.gpu.start(blocker)
    grid.gpu.finish(blocker, 0)  # frees the gpu provider: the big job fits there now, the spam still nowhere
    result = sched.round()
    assert [(a.job_id, a.provider) for a in result.assigned] == [(big, grid.gpu.address)]
    assert sched.backlog.parked == 20
