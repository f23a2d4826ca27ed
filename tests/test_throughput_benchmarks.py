"""Short variants of the end-to-end speed benchmarks: every job they submit must be placed and finished (the
figures themselves are the scripts' to print, not the suite's to time): benchmarks/e2e.py and
benchmarks/scheduler_latency.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, timeout: float) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_end_to_end_finishes_every_job() -> None:
    out = bench("benchmarks/e2e.py", "--jobs", "40", "--cpus", "20", "--array", "20", "--probe", "2", timeout=280)
    assert re.search(r"^throughput: 40 jobs FINISHED in [\d.]+ s = [\d.]+ jobs/s \(first submission to last "
                     r"settlement; target >= 50 jobs/s; load average [\d.]+;", out, re.M), out
    assert "NOT FINISHED" not in out, out
    assert re.search(r"CPU time over that window: anvil [\d.]+ s, scheduler [\d.]+ s, worker0 [\d.]+ s", out), out
    assert re.search(r"submission->RUNNING: median \d+ ms, p95 \d+ ms, max \d+ ms \(n=2\)", out), out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_scheduler_latency_assigns_every_job() -> None:
    out = bench("benchmarks/scheduler_latency.py", "--quick", timeout=280)
    assert re.search(r"latency, submit receipt -> assignment receipt, 20 single submissions:\n\s+median -?\d+ ms"
                     r"\s+p95 -?\d+ ms\s+min -?\d+ ms\s+max -?\d+ ms \(target median < 50 ms, p95 < 100 ms; "
                     r"load average [\d.]+\)", out), out
    assert re.search(r"all assigned [\d.]+ s after the send", out), out
    assert re.search(r"throughput, 100 jobs in job arrays of up to \d+:\n\s+all assigned", out), out
