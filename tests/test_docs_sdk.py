"""Every Python block of docs/sdk.md (and of the README) runs, in order, in one namespace, against the test grid with a
meta-scheduler and a provider worker running (as a dApp would meet the grid)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsq_chain.executors import LocalExecutor
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.services.worker import ProviderWorker
from tests.grid import Grid

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "sdk.md"
README = ROOT / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text, with the line each starts on."""
    blocks: list[tuple[int, str]] = []
    for m in re.finditer(r"^```python\n(.*?)^```$", text, re.S | re.M):
        blocks.append((text.count("\n", 0, m.start()) + 2, m.group(1)))
    return blocks


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
