"""The side-by-side benchmark's short variant: 20 trivial jobs straight to a real Slurm with ``sbatch`` and 20
through the grid onto that Slurm (benchmarks/sbatch_vs_grid.py); both paths must complete every job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm_cluster import SlurmUnavailable, ensure_slurm_installed

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.timeout(600)
@pytest.mark.xdist_group("slurm")
def test_short_side_by_side_completes_every_job_on_both_paths() -> None:
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs: run the Slurm tests as root")
    try:
        ensure_slurm_installed()
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sbatch_vs_grid.py"), "--jobs", "20",
                           "--cpus", "20", "--array", "10"], capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr[-3000:]}"
    assert re.search(r"^sbatch: 20 of 20 jobs completed in [\d.]+ s = [\d.]+ jobs/s \(load average [\d.]+\)$",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^grid: 20 of 20 jobs completed in [\d.]+ s = [\d.]+ jobs/s \(load average [\d.]+\)$",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^grid / sbatch: [\d.]+ of the direct rate", proc.stdout, re.M), proc.stdout
