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


def short_soak(faults: tuple[str, ...], run: Path) -> str:
    """Runs the soak with its folder kept in ``run``; a failure shows the end of every service's log (the
    seed replays the faults, not their timing)."""
    seed = random.randrange(2**31)  # a new fault sequence each run; the seed is printed to replay it
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "30", "--seed",
                           str(seed), "--faults", ",".join(faults), "--keep", str(run)],
                          capture_output=True, text=True, timeout=280)  # fmt: skip
    ok = proc.returncode == 0 and " 0 violations (target 0)" in proc.stdout and "faults injected" in proc.stdout
    assert ok, f"seed {seed}\n{proc.stdout}\n{proc.stderr[-3000:]}\n{_log_tails(run)}"
    return proc.stdout


def _log_tails(run: Path, lines: int = 60) -> str:
    tails = []
    for log in sorted(run.glob("*.log")):
        text = log.read_text(errors="replace").splitlines()
        tails.append(f"--- last {lines} lines of {log.name} ---\n" + "\n".join(text[-lines:]))
    return "\n".join(tails)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_soak_finds_no_violation(tmp_path: Path) -> None:
    short_soak(EVERY_FAULT, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_soak_with_block_reverts_finds_no_violation(tmp_path: Path) -> None:
    """Reverts drawn among fewer kinds, so that most runs have some; a run that drew none (about 1 in 11: six
    faults drawn among three kinds) is not this test's case and runs again with another seed, up to 3 times."""
    for attempt in range(3):
        out = short_soak(("revert blocks", "kill worker", "kill scheduler"), tmp_path / f"run{attempt}")
        if "revert blocks" in out:
            return
    raise AssertionError(f"three soaks drew no block revert: {out}")
