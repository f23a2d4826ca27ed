"""The soak's short variant: 30 s of jobs under kill -9s, RPC cuts, node restarts and hostile events, then
every job final exactly once, billed once, run once, and the credits reconciling (benchmarks/soak.py)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_soak_finds_no_violation() -> None:
    seed = random.randrange(2**31)  # a new fault sequence each run; the seed is printed to replay it
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "30", "--seed",
                           str(seed)], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"seed {seed}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert " 0 violations (target 0)" in proc.stdout and "faults injected" in proc.stdout, proc.stdout
