"""Every Python block of docs/sdk.md (and of the README) runs, in order, in one namespace, against the test grid with a
meta-scheduler and a provider worker running (as a dApp would meet the grid); every JavaScript block of docs/sdk.md
runs with Node (viem and ethers from the project's package-lock.json) against the same kind of grid."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsq_chain.artifacts import ARTIFACTS_PATH
from dsq_chain.executors import LocalExecutor
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.services.worker import ProviderWorker
from dsq_chain.types import JobStatus
from tests.grid import Grid

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "sdk.md"
README = ROOT / "README.md"


def code_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    """The ```lang blocks of a Markdown text, with the line each starts on."""
    blocks: list[tuple[int, str]] = []
    for m in re.finditer(rf"^```{lang}\n(.*?)^```$", text, re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text, with the line each starts on."""
    return code_blocks(text, "python")


@pytest.fixture
def services(grid: Grid, tmp_path: Path) -> Iterator[None]:
    """The meta-scheduler and the cpu provider's worker, running; the other providers paused so that
    every job lands where a worker runs."""
    grid.gpu.pause()
    grid.spare.pause()
    sched = MetaScheduler(grid.scheduler.wallet, grid.deployment, poll_interval=0.05)
    worker = ProviderWorker(grid.cpu.wallet, grid.deployment, LocalExecutor(tmp_path / "exec", kill_grace_s=1.0),
                            tmp_path / "worker", poll_interval=0.05)
    stop = threading.Event()
    threads = [threading.Thread(target=s.run, args=(stop,), daemon=True) for s in (sched, worker)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        worker.close()


def test_docs_sdk_has_python_blocks() -> None:
    assert len(python_blocks(DOC.read_text())) >= 8


def test_every_code_block_of_docs_sdk_is_run_or_a_console() -> None:
    """A block in another language would not run: python and js run below, console blocks are commands."""
    fences = re.findall(r"^```(\S+)$", DOC.read_text(), re.M)
    assert set(fences) <= {"python", "js", "console"}, fences
    assert fences.count("js") >= 2


@pytest.mark.timeout(600)
def test_every_python_block_of_docs_sdk_runs(grid: Grid, services: None, tmp_path: Path) -> None:
    dep = tmp_path / "deployment.json"
    grid.deployment.save(dep)
    namespace: dict[str, object] = {
        "__name__": "docs_sdk",
        "RPC_URL": grid.chain.rpc_url,
        "DEPLOYMENT_FILE": str(dep),
        "PRIVATE_KEY": "0x" + bytes(grid.user.wallet.account.key).hex(),
    }
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)  # the guide's paths (examples/hello.yaml) are relative to the repository
    try:
        for doc, scope in ((DOC, namespace), (README, dict(namespace))):
            for line, code in python_blocks(doc.read_text()):
                with contextlib.redirect_stdout(out):
                    try:
                        exec(compile(code, f"{doc}:{line}", "exec"), scope)
                    except Exception as e:
                        raise AssertionError(f"{doc.name} block at line {line} failed: {e!r}\n{code}") from e
    finally:
        os.chdir(cwd)
    printed = out.getvalue()
    # what the guide says the blocks show
    assert "a plain int is ambiguous" in printed
    assert "JobSubmitted" in printed and "FINISHED" in printed
    assert grid.user.address in printed  # NothingToWithdraw names the account
    assert "label gpu.model == H100" in printed  # Infeasible names each provider's reason
    assert "signing a Permit" not in printed  # the remote signer only read


@pytest.mark.timeout(300)
def test_every_js_block_of_docs_sdk_runs_with_node(grid: Grid, tmp_path: Path) -> None:
    """Each ```js block is a module run by Node beside the deployment file and the ABIs (as the guide says to
    copy them), with viem/ethers from node_modules, against a grid holding a finished job."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (ROOT / "node_modules" / "viem").is_dir() or not (ROOT / "node_modules" / "ethers").is_dir():
        pytest.fail("viem/ethers missing from node_modules: run `make setup` (npm ci)")
    job_id = grid.job_in(JobStatus.FINISHED)
    job = grid.user.job(job_id)
    assert job.billed is not None and job.refunded is not None
    grid.deployment.save(tmp_path / "deployment.json")
    shutil.copy(ARTIFACTS_PATH, tmp_path / "contracts.json")
    (tmp_path / "node_modules").symlink_to(ROOT / "node_modules")
    env = {**os.environ, "RPC_URL": grid.chain.rpc_url, "JOB_ID": str(job_id), "OWNER": grid.user.address}
    outputs: list[str] = []
    for line, code in code_blocks(DOC.read_text(), "js"):
        script = tmp_path / f"block_{line}.mjs"
        script.write_text(code)
        proc = subprocess.run([node, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"docs/sdk.md js block at line {line} failed:\n{proc.stderr[-3000:]}\n{code}"
        outputs.append(proc.stdout)
    viem, ethers = outputs
    final = int(JobStatus.FINISHED)
    assert f"job {job_id} status {final} rate {job.rate} credits/min" in viem
    assert f"JobSettled {job_id} billed {job.billed} refunded {job.refunded}" in viem
    assert f"viem: InvalidStatus({job_id}, {final})" in viem
    assert f"job {job_id} status {final} escrow 0.0 credits" in ethers  # settled: nothing left in escrow
    assert f"ethers: InvalidStatus({job_id}, {final})" in ethers
    # claimed, started (assignment is JobAssigned, the final status JobSettled)
    assert f"statuses {int(JobStatus.SCHEDULED)} -> {int(JobStatus.RUNNING)}\n" in ethers
