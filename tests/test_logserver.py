"""Logs for their owner only: the provider's log server against a real chain, with hostile requests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from dsq_chain.sdk.logaccess import LogAccessDenied, LogClient, log_request, sign_log_request
from dsq_chain.services.logserver import LogServer
from dsq_chain.types import JobStatus
from tests.grid import Grid


class Files:
    """Log files a worker would keep: job id -> (stdout, stderr)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, job_id: int) -> tuple[Path, Path]:
        out, err = self.root / f"{job_id}.out", self.root / f"{job_id}.err"
        if not out.exists():
            raise FileNotFoundError(f"job {job_id} never ran here")
        return out, err


@pytest.fixture
def served(grid: Grid, tmp_path: Path) -> Iterator[tuple[LogServer, Files]]:
    files = Files(tmp_path)
    server = LogServer(grid.cpu.job, files, grid.cpu.address, grid.chain.chain_id, grid.deployment.market,
                       tmp_path / "nonces.sqlite", keepalive_s=0.5).start()
    try:
        yield server, files
    finally:
        server.stop()


def _get(server: LogServer, job_id: int, key: str, provider: str, grid: Grid, **over: object) -> requests.Response:
    typed = log_request(grid.chain.chain_id, grid.deployment.market, job_id, provider,
                        expiry=over.pop("expiry", None), nonce=over.pop("nonce", None))  # type: ignore[arg-type]
    params = {"expiry": typed["message"]["expiry"], "nonce": typed["message"]["nonce"],
              "signature": sign_log_request(key, typed), **over}
    return requests.get(f"{server.url}/v1/jobs/{job_id}/logs", params=params, timeout=10)


def test_the_owner_reads_the_log_and_nobody_else(grid: Grid, served: tuple[LogServer, Files],
                                                 keys: list[str]) -> None:
    server, files = served
    job = grid.job_in(JobStatus.RUNNING)
    other = grid.job_in(JobStatus.RUNNING)
    (files.root / f"{job}.out").write_text("hello from the job\n")
    (files.root / f"{job}.err").write_text("a warning\n")
    (files.root / f"{other}.out").write_text("secret of another job\n")
    owner_key, stranger_key, provider_key = keys[2], keys[9], keys[5]
    ok = _get(server, job, owner_key, grid.cpu.address, grid)
    assert ok.status_code == 200 and "hello from the job" in ok.text and "event: end" in ok.text
    err = _get(server, job, owner_key, grid.cpu.address, grid, stream="stderr")
    assert "a warning" in err.text and "hello" not in err.text

    denied = [
        _get(server, job, stranger_key, grid.cpu.address, grid),  # wrong key
        _get(server, job, provider_key, grid.cpu.address, grid),  # even the provider's own key
        _get(server, job, owner_key, grid.cpu.address, grid, expiry=int(time.time()) - 1),  # expired
        _get(server, job, owner_key, grid.cpu.address, grid, expiry=int(time.time()) + 3600),  # too far ahead
        _get(server, job, owner_key, grid.gpu.address, grid),  # signed for another provider: recovers a stranger
        _get(server, 10**9, owner_key, grid.cpu.address, grid),  # a job that does not exist
    ]
    assert [r.status_code for r in denied] == [403, 403, 401, 401, 403, 403]
    assert len({r.text for r in denied}) == 1 and "secret" not in "".join(r.text for r in denied)

    # Replay: the same signed request twice.
    typed = log_request(grid.chain.chain_id, grid.deployment.market, job, grid.cpu.address)
    params = {"expiry": typed["message"]["expiry"], "nonce": typed["message"]["nonce"],
              "signature": sign_log_request(owner_key, typed)}
    url = f"{server.url}/v1/jobs/{job}/logs"
    assert requests.get(url, params=params, timeout=10).status_code == 200
    assert requests.get(url, params=params, timeout=10).status_code == 401
    # A signature made for this job sent for another job's id (fresh nonce): it recovers to nobody it knows.
    assert requests.get(f"{server.url}/v1/jobs/{other}/logs", params=dict(params, nonce="0x" + "ab" * 32),
                        timeout=10).status_code == 403
    assert _get(server, other, stranger_key, grid.cpu.address, grid).status_code == 403
    # Garbage never stops it.
    for bad in ({"expiry": "soon"}, {"expiry": str(int(time.time()) + 60), "nonce": "0x1", "signature": "0x00"},
                {"expiry": str(int(time.time()) + 60), "nonce": "0x" + "00" * 32, "signature": "0x" + "11" * 65}):
        assert requests.get(url, params=bad, timeout=10).status_code == 401
    assert requests.get(f"{server.url}/v1/jobs/x/logs", timeout=10).status_code == 404
    # The browser path: the typed data the server hands out, signed as eth_signTypedData_v4 signs it.
    typed = requests.get(f"{server.url}/v1/jobs/{job}/logs/request", timeout=10).json()["typed_data"]
    assert typed["domain"]["verifyingContract"] == grid.deployment.market and typed["message"]["jobId"] == job
    m = typed["message"]
    browser = requests.get(url, params={"expiry": m["expiry"], "nonce": m["nonce"], "follow": "0",
                                        "signature": sign_log_request(owner_key, typed)}, timeout=10)
    assert browser.status_code == 200 and "hello from the job" in browser.text
    assert browser.headers["access-control-allow-origin"] == "*"
    assert _get(server, job, owner_key, grid.cpu.address, grid).status_code == 200


def test_replay_is_refused_after_a_restart(grid: Grid, tmp_path: Path, keys: list[str]) -> None:
    job = grid.job_in(JobStatus.RUNNING)
    files = Files(tmp_path)
    (tmp_path / f"{job}.out").write_text("x\n")
    typed = log_request(grid.chain.chain_id, grid.deployment.market, job, grid.cpu.address)
    params = {"expiry": typed["message"]["expiry"], "nonce": typed["message"]["nonce"],
              "signature": sign_log_request(keys[2], typed)}
    for expected in (200, 401):
        server = LogServer(grid.cpu.job, files, grid.cpu.address, grid.chain.chain_id, grid.deployment.market,
                           tmp_path / "nonces.sqlite").start()
        try:
            assert requests.get(f"{server.url}/v1/jobs/{job}/logs", params=params, timeout=10).status_code == expected
        finally:
            server.stop()


def test_follow_streams_across_idle_time_and_a_server_restart(grid: Grid, tmp_path: Path, keys: list[str]) -> None:
    """The client keeps following through quiet periods (keepalives) and a restart of the server (it signs a
    fresh request and resumes at its offset): nothing lost, nothing repeated."""
    job = grid.job_in(JobStatus.RUNNING)
    files = Files(tmp_path)
    out = tmp_path / f"{job}.out"
    out.write_text("line 1\n")
    port_holder: list[int] = []

    def serve() -> LogServer:
        port = port_holder[0] if port_holder else 0
        srv = LogServer(grid.cpu.job, files, grid.cpu.address, grid.chain.chain_id, grid.deployment.market,
                        tmp_path / "nonces.sqlite", port=port, keepalive_s=0.3, poll_s=0.05).start()
        port_holder[:] = [srv.httpd.server_address[1]]
        return srv

    server = serve()
    client = LogClient(server.url, keys[2], grid.chain.chain_id, grid.deployment.market, grid.cpu.address)
    got: list[str] = []
    retries: list[Exception] = []
    done = threading.Event()

    def follow() -> None:
        for chunk in client.read(job, follow=True, retry_for=30, on_retry=retries.append):
            got.append(chunk.text)
        done.set()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    _wait(lambda: "".join(got) == "line 1\n")
    time.sleep(1.2)  # idle: only keepalives
    with out.open("a") as f:
        f.write("line 2 ünïcode\n")
    _wait(lambda: "line 2" in "".join(got))
    server.stop()  # the worker restarts
    with out.open("a") as f:
        f.write("line 3 while it was down\n")
    time.sleep(0.5)
    server = serve()
    _wait(lambda: "line 3" in "".join(got))
    grid.cpu.finish(job, 0)
    with out.open("a") as f:
        f.write("line 4\n")
    assert done.wait(15), "the stream did not end after the job did"
    server.stop()
    assert "".join(got) == "line 1\nline 2 ünïcode\nline 3 while it was down\nline 4\n"
    assert retries, "the restart was not noticed"


def test_a_stranger_is_refused_by_the_client(grid: Grid, served: tuple[LogServer, Files], keys: list[str]) -> None:
    server, files = served
    job = grid.job_in(JobStatus.RUNNING)
    (files.root / f"{job}.out").write_text("x")
    client = LogClient(server.url, keys[9], grid.chain.chain_id, grid.deployment.market, grid.cpu.address)
    with pytest.raises(LogAccessDenied):
        list(client.read(job, follow=True))


def _wait(cond: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
