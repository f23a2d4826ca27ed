"""docs/provider-guide.md, run block by block: a fresh devnet (Anvil), a real Slurm, a fresh state folder.

Every ```sh block of the guide runs in order with bash (``-euo pipefail``), from the repository root, with the
guide's variables (WORK, PORT, METRICS, SLURM_CONF) set by the test. Two blocks are marked for the test: the
one that installs the systemd unit (the test starts the unit's ``ExecStart`` with its ``EnvironmentFile``
instead: no systemd in the test container) and the scheduler, which runs in the background until the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dsq_chain.sdk.anvil import free_port
from dsq_chain.services.heartbeat import read_heartbeat
from dsq_chain.services.onboarding import read_env_file
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "provider-guide.md"
BIN = Path(sys.executable).parent


def guide_blocks() -> list[tuple[str, str]]:
    """(marker, code) of every ```sh block of the guide; marker is the guide-test comment before it, or ""."""
    text = GUIDE.read_text()
    blocks = []
    for m in re.finditer(r"(?:<!-- guide-test: (?P<marker>[^>]*?) -->\n)?```sh\n(?P<code>.*?)```", text, re.S):
        blocks.append((m.group("marker") or "", m.group("code")))
    return blocks


class Guide:
    def __init__(self, work: Path, cluster: SlurmCluster) -> None:
        self.work = work
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DSQ_")}
        port = free_port()
        metrics = free_port()
        while metrics == port:  # two free ports, not the same one twice
            metrics = free_port()
        self.env.update(WORK=str(work), PORT=str(port), METRICS=str(metrics), SLURM_CONF=str(cluster.conf),
                        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: list[str] = []

    def run(self, code: str, timeout: float = 180) -> str:
        """Runs one block; what it exports carries over to the next blocks, as in one terminal."""
        dump = self.work.parent / "guide-env"
        script = f"{code}\nenv -0 > {shlex.quote(str(dump))}\n"
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"guide block failed ({proc.returncode}):\n{code}\n{proc.stdout}\n{proc.stderr}"
        exported = dict(item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item)
        self.env = {k: v for k, v in exported.items() if k not in ("_", "SHLVL", "PWD", "OLDPWD")}
        self.outputs.append(proc.stdout)
        return proc.stdout

    def background(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as fh:
            p = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)


@pytest.fixture
def guide(tmp_path: Path, slurm_cluster: SlurmCluster) -> Iterator[Guide]:  # noqa: F811
    g = Guide(tmp_path / "guide", slurm_cluster)
    try:
        yield g
    finally:
        g.stop()
        devnet = g.work / "grid" / "devnet.json"
        if devnet.exists():  # the guide's last block did not run: stop the devnet's Anvil by its recorded pid
            pid = int(json.loads(devnet.read_text())["pid"])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def unit_command(unit: Path) -> tuple[list[str], Path]:
    """(ExecStart argv, EnvironmentFile) of a generated unit."""
    lines = unit.read_text().splitlines()
    exec_start = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("ExecStart="))
    env_file = next(ln.split("=", 1)[1] for ln in lines if ln.startswith("EnvironmentFile="))
    return shlex.split(exec_start), Path(env_file)


def test_the_guide_step_by_step(guide: Guide) -> None:
    blocks = guide_blocks()
    assert len(blocks) >= 10, "the guide lost its command blocks"
    provider = guide.work / "provider"
    for marker, code in blocks:
        if "systemd-analyze" in code and shutil.which("systemd-analyze") is None:
            print("skipped `systemd-analyze verify`: systemd-analyze is not installed here")  # the only skipped check
            continue
        if marker.startswith("the test starts the unit"):
            argv, env_file = unit_command(provider / "dsq-worker.service")
            assert env_file.stat().st_mode & 0o777 == 0o600
            env = {**guide.env, **read_env_file(env_file)}
            guide.background(argv, env, guide.work / "worker.log")
            deadline = time.monotonic() + 30
            while read_heartbeat(provider / "state") is None:
                worker_log = (guide.work / "worker.log").read_text()
                assert time.monotonic() < deadline and guide.procs[-1].poll() is None, worker_log
                time.sleep(0.2)
            continue
        if marker.startswith("the test starts this in the background"):
            guide.background(["bash", "-euo", "pipefail", "-c", code], guide.env, guide.work / "scheduler.log")
            continue
        guide.run(code)
    out = "\n".join(guide.outputs)
    # step 2 and 3: the self-check ran on Slurm and its labels were registered
    assert "│ engine             │ slurm" in out
    config = json.loads((provider / "config.json").read_text())
    assert config["provider"]["executor"] == "slurm" and config["provider"]["labels"]["region"] == "eu-test"
    assert {"cpu.model", "storage.persistent.gb", "bench.cpu.sha256.mbps"} <= set(config["provider"]["labels"])
    assert (provider / "keystore.json").stat().st_mode & 0o777 == 0o600
    assert "6. on chain: registered; status PENDING" in out
    # step 6: every check of the doctor passed
    doctor = next(o for o in guide.outputs if "heartbeat" in o)
    assert not re.search(r"^(FAIL|skip)", doctor, re.M), doctor
    for name in ("key", "rpc", "deployment", "registration", "approval", "engine", "disk", "clock", "worker",
                 "metrics"):
        assert re.search(rf"^ok\s+{name}\b", doctor, re.M), f"{name} missing:\n{doctor}"
    # step 7: the job ran on this provider's Slurm worker
    assert "FINISHED" in out
    jobs = list((provider / "state" / "executor" / "jobs").glob("1-*"))
    assert len(jobs) == 1 and (jobs[0] / "stdout").read_text() == "hello from job 1\n"


def test_doctor_names_each_failure_with_its_fix(tmp_path: Path) -> None:
    """Nothing set up: every check that can run fails with a fix, the others say why they were skipped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSQ_")}
    proc = subprocess.run([str(BIN / "dsq"), "--rpc-url", f"http://127.0.0.1:{free_port()}", "--deployment",
                           str(tmp_path / "missing.json"), "provider", "doctor", "--state-dir", str(tmp_path / "s"),
                           "--executor", "local"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stdout
    assert re.search(r"^FAIL\s+key .*DSQ_PRIVATE_KEY", lines, re.M)
    assert re.search(r"^FAIL\s+deployment .*not found", lines, re.M)
    assert re.search(r"^skip\s+registration", lines, re.M)
    assert re.search(r"^FAIL\s+worker .*no heartbeat.json", lines, re.M)
    assert lines.count("fix: ") >= 3
