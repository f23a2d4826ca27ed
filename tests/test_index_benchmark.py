"""The short variant of benchmarks/index.py: it runs end to end and prints each figure beside its target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_index_benchmark_short() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "index.py"), "--jobs", "600", "--lifecycle", "200",
                           "--requests", "20", "--samples", "3", "--backends", "sqlite"],
                          capture_output=True, text=True, timeout=540, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "submitted 600 jobs" in out and "ran 200 jobs to FINISHED" in out
    for figure in ("index build", "job list p50/p95", "job (API) p50/p95", "job page (HTML) p50/p95",
                   "block -> open page p50/p95"):
        assert f"sqlite      {figure}" in out, out
    assert "events/s" in out and "target p95 < 100 ms" in out and "target < 1 s" in out
