"""The soak's short variant: 30 s of jobs under kill -9s, RPC cuts, node restarts, hostile events and block
reverts, then every job on the surviving chain final exactly once, billed once, run once, and the credits
reconciling (benchmarks/soak.py)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The soak's fault kinds (soak.py refuses a name it does not know).
EVERY_FAULT = ("kill worker", "kill scheduler", "cut rpc", "restart node", "hostile events", "revert blocks")


def short_soak(faults: tuple[str, ...]) -> str:
    seed = random.randrange(2**31)  # a new fault sequence each run; the seed is printed to replay it
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "30", "--seed",
                           str(seed), "--faults", ",".join(faults)], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, f"seed {seed}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert " 0 violations (target 0)" in proc.stdout and "faults injected" in proc.stdout, proc.stdout
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_soak_finds_no_violation() -> None:
    short_soak(EVERY_FAULT)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_soak_with_block_reverts_finds_no_violation() -> None:
    """Reverts drawn among fewer kinds, so that most runs have some; a run that drew none (about 1 in 11: six
    faults drawn among three kinds) is not this test's case and runs again with another seed, up to 3 times."""
    for _ in range(3):
        out = short_soak(("revert blocks", "kill worker", "kill scheduler"))
        if "revert blocks" in out:
            return
    raise AssertionError(f"three soaks drew no block revert: {out}")
