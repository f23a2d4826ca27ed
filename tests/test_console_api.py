"""The console API: docs/console-api.md's examples run against a real index (SQLite and PostgreSQL) and must
answer what the document shows; the OpenAPI description covers every route; bad input gets a clear 4xx."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests
from fastapi.testclient import TestClient

from dsq_chain.money import Credits
from dsq_chain.services.index import IndexReader, IndexService
from dsq_chain.web.app import create_app
from dsq_chain.web.server import DashboardServer
from tests.grid import Grid
from tests.postgres import pg_url, postgres_server  # noqa: F401  (fixtures)
from tests.test_index import submit_workflow

DOC = Path(__file__).resolve().parent.parent / "docs" / "console-api.md"
EXAMPLE = re.compile(r"```http\n(GET [^\n]+)\n```\n+(?:[^\n`]*\n)*?```json\n(.*?)\n```", re.S)
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z")
HASH = re.compile(r"0x[0-9a-f]{64}\Z")
#: Numbers that depend on when the test runs (times, blocks, costs of seconds run, counters).
VARYING = {"time", "block", "block_time", "started_time", "ended_time", "submitted", "version", "epoch",
           "time_left_s", "cost_so_far", "billed", "refunded", "log_index", "chain_id", "registered_time",
           "last_report_time", "since_last_report_s", "cpu", "memory", "gpu", "next_before", "hours", "jobs_per_hour",
           "utilisation", "wait_p50", "wait_p95"}


def examples() -> list[tuple[str, Any]]:
    return [(req, json.loads(body)) for req, body in EXAMPLE.findall(DOC.read_text())]


def scenario(grid: Grid) -> None:
    """What the document's examples were taken from: job 1 finished and job 2 running on the cpu provider."""
    first = submit_workflow(grid)
    grid.scheduler.assign(first, grid.cpu.address)
    grid.cpu.claim(first)
    grid.cpu.start(first)
    grid.cpu.finish(first, 0)
    second = submit_workflow(grid)
    grid.scheduler.assign(second, grid.cpu.address)
    grid.cpu.claim(second)
    grid.cpu.start(second)
    assert (first, second) == (1, 2)


def same_shape(doc: Any, got: Any, path: str = "$") -> None:
    """``got`` has every key of ``doc`` with a value of the same kind; fixed values are equal."""
    if isinstance(doc, dict):
        assert isinstance(got, dict), f"{path}: expected an object, got {got!r}"
        assert set(doc) == set(got), f"{path}: keys {sorted(got)} instead of {sorted(doc)}"
        for k, v in doc.items():
            if k in VARYING and (v is None or isinstance(v, int | dict | list)):
                assert got[k] is None or v is None or isinstance(got[k], type(v)), f"{path}.{k}: {got[k]!r}"
                continue
            same_shape(v, got[k], f"{path}.{k}")
    elif isinstance(doc, list):
        assert isinstance(got, list) and len(got) == len(doc), f"{path}: {len(doc)} items expected, got {got!r}"
        for i, (d, g) in enumerate(zip(doc, got, strict=True)):
            same_shape(d, g, f"{path}[{i}]")
    elif isinstance(doc, str) and (ADDRESS.match(doc) or HASH.match(doc)):
        assert isinstance(got, str) and re.match(r"0x[0-9a-fA-F]+\Z", got), f"{path}: {got!r}"
    elif isinstance(doc, str) and re.search(r"0x[0-9a-fA-F]{40}|units", doc):  # details quoting addresses, amounts
        assert isinstance(got, str) and doc.split(" ")[0] == got.split(" ")[0], f"{path}: {got!r} vs {doc!r}"
    else:
        assert doc == got, f"{path}: the document shows {doc!r}, the API answers {got!r}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_documented_examples(grid: Grid, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'i.sqlite'}" if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    scenario(grid)
    idx = IndexService(grid.chain, grid.deployment, url)
    idx.poll()
    client = TestClient(create_app(IndexReader(url)))
    found = examples()
    assert len(found) >= 8, "docs/console-api.md lost its examples"
    for req, doc in found:
        _, path = req.split(" ", 1)
        resp = client.get(path)
        body = resp.json()
        expected_status = 404 if "error" in doc else 200
        assert resp.status_code == expected_status, f"{req}: HTTP {resp.status_code} {body}"
        same_shape(doc, body, req)
    idx.close()


def test_the_documented_event_stream(grid: Grid, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'i.sqlite'}"
    scenario(grid)
    idx = IndexService(grid.chain, grid.deployment, url)
    idx.poll()
    server = DashboardServer(create_app(IndexReader(url))).start()
    try:
        with requests.get(server.url + "/api/v1/jobs/2/events", stream=True, timeout=10) as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.raw.read1(4096).decode()
            assert lines.startswith("retry: 1000\nevent: head\ndata: {")
            grid.cpu.finish(2, 0)
            idx.poll()
            seen = ""
            while "FINISHED" not in seen:
                seen += resp.raw.read1(65536).decode()
            event = seen[seen.index("event: job"):]
            data = json.loads(event.split("\n")[1].removeprefix("data: "))
            assert data["id"] == 2 and data["status"] == "FINISHED" and data["timeline"][-1]["event"] == "JobSettled"
        assert "event: job\ndata: {" in DOC.read_text() and "retry: 1000" in DOC.read_text()
    finally:
        server.stop()
        idx.close()


def test_openapi_and_bad_input(grid: Grid, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'i.sqlite'}"
    idx = IndexService(grid.chain, grid.deployment, url)
    idx.poll()
    client = TestClient(create_app(IndexReader(url)))
    spec = client.get("/api/v1/openapi.json").json()
    paths = set(spec["paths"])
    routes = ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/events", "/owners/{owner}/jobs", "/providers/{provider}/jobs",
              "/leases/{owner}/{dseq}/jobs", "/market", "/providers", "/jobs/{job_id}/explain", "/events", "/head")
    for route in routes:
        assert "/api/v1" + route in paths and route in DOC.read_text(), route
    assert client.get("/api/v1/docs").status_code == 200
    bad = client.get("/api/v1/owners/0x123/jobs")
    assert bad.status_code == 422 and "owner must be a 0x-prefixed 20-byte hex address" in bad.json()["error"]
    bad = client.get("/api/v1/jobs?status=DONE")
    assert bad.status_code == 422 and "status must be one of" in bad.json()["error"]
    assert client.get("/api/v1/jobs?limit=100000").status_code == 422
    assert client.get("/api/v1/jobs/-1").status_code == 422
    assert client.get("/api/v1/jobs/" + "9" * 100).status_code == 422
    assert client.get("/api/v1/jobs/12345").status_code == 404
    assert client.get("/api/v1/leases/0x" + "00" * 20 + "/-5/jobs").status_code == 422
    assert client.get("/jobs/12345").status_code == 404
    idx.close()


def test_jobs_of_a_lease_when_the_submission_carries_one(grid: Grid, tmp_path: Path) -> None:
    """A submission carrying an Akash lease (owner + dseq, in its event) is found by that lease, with the owner
    as akash1... or as its 0x account bytes; one without a lease is not."""
    from dsq_chain.workloads import workflow as wfm
    from dsq_chain.workloads.lease import decode_owner, lease_ref

    owner = "akash1365yvmc4s7awdyj3n2sav7xfx76adc6dnmlx63"
    wf = wfm.loads("name: leased\nresources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64}\nsteps: [{name: a, run: "
                   "{command: 'true'}}]\n")
    leased = list(grid.user.submit(wf, credits=Credits(1), max_rate=Credits(1), count=2, force=True,
                                   external_ref=lease_ref(owner, 4242)))
    [plain] = grid.user.submit(wf, credits=Credits(1), max_rate=Credits(1), force=True)
    url = f"sqlite:///{tmp_path / 'i.sqlite'}"
    idx = IndexService(grid.chain, grid.deployment, url)
    idx.poll()
    client = TestClient(create_app(IndexReader(url)))
    got = client.get(f"/api/v1/leases/{owner}/4242/jobs").json()["jobs"]
    assert [j["id"] for j in got] == sorted(leased, reverse=True)
    assert got[0]["lease"] == {"owner": owner, "dseq": "4242"}
    as_hex = "0x" + decode_owner(owner).hex()
    by_hex = client.get(f"/api/v1/leases/{as_hex}/4242/jobs").json()["jobs"]
    assert [j["id"] for j in by_hex] == [j["id"] for j in got]
    assert client.get(f"/api/v1/leases/{owner}/4243/jobs").json()["jobs"] == []
    assert client.get(f"/api/v1/jobs/{plain}").json()["lease"] is None
    assert client.get("/api/v1/leases/akash1nope/1/jobs").status_code == 422
    idx.close()
