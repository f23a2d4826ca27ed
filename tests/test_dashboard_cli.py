"""`dsq worker run --logs-port`, `dsq logs --follow --server`, `dsq index run` and `dsq dashboard` as processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from eth_account import Account

from dsq_chain.sdk.anvil import free_port
from dsq_chain.types import JobStatus
from tests.grid import Grid
from tests.test_cli import DSQ, Cli, user_key


@pytest.fixture
def cli(grid: Grid, tmp_path: Path, keys: list[str]) -> Cli:
    return Cli(grid, tmp_path, keys)


def _env(key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSQ_")}
    if key:
        env["DSQ_PRIVATE_KEY"] = key
    return env


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.1)


@pytest.mark.slow
def test_owner_follows_logs_across_a_worker_restart_and_a_stranger_is_refused(cli: Cli) -> None:
    worker_key, stranger_key = cli.keys[11], cli.keys[9]
    state = cli.tmp / "worker"
    cli.ok("provider", "register", "--price-cpu", "0.001", "--cpus", "1", "--mem-mb", "1024", "--label", "zone=logs",
           "--state-dir", str(state), key=worker_key)
    cli.ok("admin", "approve", Account.from_key(worker_key).address, key=cli.keys[0])
    wf = cli.tmp / "talk.yaml"
    wf.write_text("resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64}\nlabels: ['zone == logs']\n"
                  "steps: [{name: a, run: {command: 'for i in 1 2 3 4 5 6; do echo line $i; sleep 1; done'}}]\n")
    job_id = json.loads(cli.ok("submit", str(wf), "--credits", "1", "--json", key=user_key(cli)).stdout)["job_ids"][0]
    port = free_port()
    worker_cmd = [DSQ, "--deployment", str(cli.deployment), "worker", "run", "--state-dir", str(state), "--poll", "0.1",
                  "--logs-port", str(port)]
    sched = subprocess.Popen([DSQ, "--deployment", str(cli.deployment), "scheduler", "run"], env=_env(cli.keys[1]),
                             cwd=cli.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    worker = subprocess.Popen(worker_cmd, env=_env(worker_key), cwd=cli.tmp, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    follower: subprocess.Popen[str] | None = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        deadline = time.monotonic() + 60
        while cli.grid.user.job(job_id).status is not JobStatus.RUNNING:
            assert time.monotonic() < deadline, "the job never ran"
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}"
        follower = subprocess.Popen([DSQ, "--deployment", str(cli.deployment), "logs", str(job_id), "--follow",
                                     "--server", url], env=_env(user_key(cli)), cwd=cli.tmp,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        denied = cli.run("logs", str(job_id), "--server", url, key=stranger_key)
        assert denied.returncode != 0 and "refused: HTTP 403" in denied.stderr and "line" not in denied.stdout
        time.sleep(1.5)
        worker.send_signal(signal.SIGTERM)  # the worker restarts while the owner follows
        assert worker.wait(20) == 0
        time.sleep(1.0)
        worker = subprocess.Popen(worker_cmd, env=_env(worker_key), cwd=cli.tmp, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.STDOUT)
        out, err = follower.communicate(timeout=90)
        assert follower.returncode == 0, err
        assert out == "".join(f"line {i}\n" for i in range(1, 7))
        assert cli.grid.user.job(job_id).status is JobStatus.FINISHED
    finally:
        for p in (sched, worker, follower):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)


@pytest.mark.slow
def test_index_run_and_dashboard_serve_the_api(cli: Cli, tmp_path: Path) -> None:
    job = cli.grid.job_in(JobStatus.FINISHED)
    db = f"sqlite:///{tmp_path / 'index.sqlite'}"
    port = free_port()
    index = subprocess.Popen([DSQ, "--deployment", str(cli.deployment), "index", "run", "--db", db], env=_env(),
                             cwd=cli.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    dash = subprocess.Popen([DSQ, "dashboard", "--port", str(port), "--db", db], env=_env(), cwd=cli.tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/v1/head")
        deadline = time.monotonic() + 30
        while requests.get(f"http://127.0.0.1:{port}/api/v1/jobs/{job}", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the job never reached the index"
            time.sleep(0.2)
        got = requests.get(f"http://127.0.0.1:{port}/api/v1/jobs/{job}", timeout=5).json()
        assert got["status"] == "FINISHED" and len(got["timeline"]) == 5
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    finally:
        for p in (index, dash):
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in (index, dash)]
    assert codes[0] == 0
    assert "dashboard at http://127.0.0.1:" in (dash.stdout.read() if dash.stdout else "")
    bad = cli.run("dashboard", "--db", "mysql://x", "--port", str(free_port()))
    assert bad.returncode == 2 and "unsupported database 'mysql'" in bad.stderr
    bad = cli.run("dashboard", "--log-server", "nonsense")
    assert bad.returncode == 2 and "PROVIDER=URL" in bad.stderr
