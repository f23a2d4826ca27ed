"""`make demo` is the end-to-end test: the whole grid on one machine, real processes, checked."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.xdist_group("demo")
@pytest.mark.timeout(600)
def test_demo_runs_the_grid_end_to_end_and_reconciles() -> None:
    proc = subprocess.run([sys.executable, "-m", "dsq_chain.demo"], capture_output=True, text=True, timeout=540)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "demo OK" in out
    for status in ("FINISHED", "FAILED", "OUT_OF_CREDITS", "CANCELED"):
        assert status in out
    assert "placeable on 0 of 3 providers" in out  # the explain output for the impossible job
    assert "FAIL" not in out.replace("FAILED", "")
