"""The index: every job, provider, status change, bill, top-up and assignment, from a real Anvil, into SQLite
and a real PostgreSQL; restarts, reorgs and bad events."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from dsq_chain.money import Credits
from dsq_chain.services.index import IndexReader, IndexService
from dsq_chain.services.index import schema as s
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import CREDIT_UNIT, JobStatus
from tests.grid import CPU_PRICES, SMALL, Grid, submit_unchecked
from tests.postgres import pg_url, postgres_server  # noqa: F401  (fixtures)


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


def submit_workflow(grid: Grid, cpus: int = 2, gpus: int = 0, mem_per_cpu: int = 512, labels: str = "",
                    user: object = None) -> int:
    """A job whose workflow matches what it is submitted with (the scheduler places only those)."""
    from dsq_chain.workloads import workflow as wfm

    text = (f"name: probe\nresources: {{tasks: 1, cpusPerTask: {cpus}, memPerCpu: {mem_per_cpu}, gpus: {gpus}}}\n"
            + (f"labels: [{labels!r}]\n" if labels else "") + "steps:\n  - name: main\n    run: {command: 'true'}\n")
    wf = wfm.loads(text)
    client = user or grid.user
    return int(client.submit(wf, credits=Credits(10), max_rate=Credits(1), force=True)[0])  # type: ignore[attr-defined]


def _count(idx: IndexService, table: s.Table) -> int:
    with idx.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_index_holds_jobs_providers_history_bills_topups(grid: Grid, index_url: str) -> None:
    finished = grid.job_in(JobStatus.FINISHED)
    running = grid.job_in(JobStatus.RUNNING)
    grid.user.top_up(running, Credits(units=2 * CREDIT_UNIT))
    refused = grid.job_in(JobStatus.SCHEDULED)
    grid.cpu.refuse(refused)
    array = grid.submit(count=3)
    idx = IndexService(grid.chain, grid.deployment, index_url)
    assert idx.poll() > 0
    reader = IndexReader(index_url)

    job = reader.job(finished)
    assert job is not None and job["status"] == "FINISHED" and job["provider"] == grid.cpu.address
    assert [t["status"] for t in job["timeline"]] == ["PENDING", "META_SCHEDULED", "SCHEDULED", "RUNNING", "FINISHED"]
    assert all(t["block"] > 0 and t["time"] > 0 for t in job["timeline"])
    chain_bill = grid.user.job(finished)
    bill = job["bill"]
    assert bill["final"] and bill["billed"] == job["billed"] and bill["billed"] + bill["refunded"] == job["credits"]
    assert sum(bill["by_resource"].values()) == bill["billed"]
    assert bill["rate"] == {"cpu": 2 * CPU_PRICES.per_cpu_minute, "gpu": 0,
                            "memory": SMALL.mem_mb * CPU_PRICES.per_gb_minute // 1024}
    assert chain_bill.status is JobStatus.FINISHED

    run = reader.job(running)
    assert run is not None and run["status"] == "RUNNING" and run["topped_up"] == 2 * CREDIT_UNIT
    assert run["escrow"] == run["credits"] + 2 * CREDIT_UNIT and run["topups"][0]["amount"] == 2 * CREDIT_UNIT
    assert run["time_left_s"] > 0 and not run["bill"]["final"]

    ref = reader.job(refused)
    assert ref is not None and ref["status"] == "PENDING" and ref["provider"] is None
    assert [t["event"] for t in ref["timeline"]][-1] == "JobReleased"
    assert reader.jobs(owner=grid.user.address, limit=3)[0]["id"] == array + 2
    assert {j["id"] for j in reader.jobs(provider=grid.cpu.address)} == {finished, running}
    assert [j["id"] for j in reader.jobs(status=JobStatus.RUNNING)] == [running]

    cpu = reader.provider(grid.cpu.address)
    assert cpu is not None and cpu["status"] == "APPROVED" and cpu["labels"] == {"zone": "eu"}
    assert cpu["capacity"]["used"] == {"cpus": SMALL.cpus, "gpus": 0, "mem_mb": SMALL.mem_mb}  # the running job
    assert cpu["jobs"]["finished"] == 1 and cpu["jobs"]["refused"] == 1 and cpu["earnings"] == job["billed"]
    assert cpu["last_report_time"] is not None
    assert {p["address"] for p in reader.providers()} >= {grid.cpu.address, grid.gpu.address, grid.pending.address}
    assert _count(idx, s.assignments) == 3 and _count(idx, s.releases) == 1
    market = reader.market()
    # The grid's jobs carry a workflow that agrees with what they are submitted with: the only failure is
    # the refusal (a job whose workflow does not parse is counted in
    # test_a_workflow_that_does_not_parse_is_indexed_as_never_placeable).
    assert sum(market["jobs_per_hour"]) == 6
    assert market["placement_failures"] == {"refused": 1}
    idx.close()


def test_pending_reason_is_the_schedulers(grid: Grid, index_url: str) -> None:
    """The index's explain is the one ``dsq explain`` prints from the chain, word for word."""
    impossible = submit_workflow(grid, cpus=64)
    placeable = submit_workflow(grid)
    excluded = submit_workflow(grid)
    grid.scheduler.assign(excluded, grid.cpu.address)
    grid.cpu.refuse(excluded)
    idx = IndexService(grid.chain, grid.deployment, index_url)
    idx.poll()
    reader = IndexReader(index_url)
    sched = MetaScheduler(grid.scheduler.wallet, grid.deployment)
    for job_id in (impossible, placeable, excluded):
        from_index, from_chain = reader.explain(job_id), sched.explain(job_id)
        assert type(from_index) is type(from_chain)
        if isinstance(from_chain, str):
            assert from_index == from_chain
        else:  # scores depend on "now": compare the verdicts that decide (who passes, why the others do not)
            assert from_index.headline() == from_chain.headline()  # type: ignore[union-attr]
            assert [(v.address, v.rejection) for v in from_index.verdicts] == [  # type: ignore[union-attr]
                (v.address, v.rejection) for v in from_chain.verdicts]
    view = reader.explain_view(impossible)
    assert view["waiting"] and all(not p["placeable"] for p in view["providers"])
    assert any("cpus: needs 64" in p["reason"] for p in view["providers"])
    running = grid.job_in(JobStatus.RUNNING)
    idx.poll()
    assert "not waiting for a provider" in reader.explain_view(running)["explanation"]
    idx.close()


def test_restart_applies_each_event_once(grid: Grid, index_url: str) -> None:
    first = grid.job_in(JobStatus.RUNNING)
    idx = IndexService(grid.chain, grid.deployment, index_url)
    idx.poll()
    changes = _count(idx, s.status_changes)
    idx.close()
    grid.cpu.finish(first, 0)
    second = grid.job_in(JobStatus.FINISHED)
    again = IndexService(grid.chain, grid.deployment, index_url)
    again.poll()
    again.poll()
    assert _count(again, s.status_changes) == changes + 1 + 5
    reader = IndexReader(index_url)
    for job_id in (first, second):
        job = reader.job(job_id)
        assert job is not None and job["status"] == "FINISHED"
    cpu = reader.provider(grid.cpu.address)
    assert cpu is not None and cpu["capacity"]["used"]["cpus"] == 0 and cpu["jobs"]["finished"] == 2
    again.close()


def test_index_of_another_market_is_refused(grid: Grid, tmp_path: Path) -> None:
    from dataclasses import replace

    url = f"sqlite:///{tmp_path / 'i.sqlite'}"
    IndexService(grid.chain, grid.deployment, url).close()
    other = replace(grid.deployment, market="0x" + "12" * 20)
    with pytest.raises(Exception, match="follows market"):
        IndexService(grid.chain, other, url)


def test_reorg_rolls_back_and_replays(grid: Grid, index_url: str) -> None:
    job = grid.job_in(JobStatus.SCHEDULED)
    idx = IndexService(grid.chain, grid.deployment, index_url)
    idx.poll()
    snap = grid.chain.snapshot()
    grid.cpu.start(job)
    grid.cpu.finish(job, 0)
    gone = grid.submit(count=2)
    grid.user.top_up(job, Credits(units=1)) if False else None
    idx.poll()
    reader = IndexReader(index_url)
    assert reader.job(job)["status"] == "FINISHED"  # type: ignore[index]
    epoch = reader.head()["epoch"]
    grid.chain.revert(snap)  # the blocks above the snapshot are gone: a reorg
    grid.reset_nonces()
    grid.cpu.refuse(job)  # the new branch: refused instead of run
    grid.chain.mine(3)
    idx.poll()
    after = reader.job(job)
    assert after is not None and after["status"] == "PENDING" and after["billed"] is None
    assert [t["status"] for t in after["timeline"]] == ["PENDING", "META_SCHEDULED", "SCHEDULED", "PENDING"]
    assert reader.job(gone) is None and reader.head()["epoch"] == epoch + 1
    cpu = reader.provider(grid.cpu.address)
    assert cpu is not None and cpu["capacity"]["used"]["cpus"] == 0
    assert cpu["jobs"]["finished"] == 0 and cpu["jobs"]["refused"] == 1 and cpu["earnings"] == 0
    assert _count(idx, s.bills) == 0
    idx.close()


def test_a_workflow_that_does_not_parse_is_indexed_as_never_placeable(grid: Grid, tmp_path: Path) -> None:
    job = submit_unchecked(grid.user, b"\xff\xfe not a workflow", SMALL, credits=CREDIT_UNIT, max_rate=10**6)[0]
    url = f"sqlite:///{tmp_path / 'i.sqlite'}"
    idx = IndexService(grid.chain, grid.deployment, url)
    idx.poll()
    got = IndexReader(url).job(job)
    assert got is not None and got["status"] == "PENDING" and got["problem"].startswith("workflow does not parse")
    assert "can never be placed" in IndexReader(url).explain_view(job)["explanation"]
    assert idx.errors == 0
    idx.close()
