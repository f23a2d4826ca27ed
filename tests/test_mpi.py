"""MPI through Slurm as DeepSquare's ``run.mpi`` asks for it: ``srun --mpi=pmix_v4`` on the test cluster.

The Slurm fixture installs ``libpmix-dev`` (without it the pmix plugins cannot load the PMIx
library); this module installs Debian's ``python3-mpi4py`` (Open MPI) for a 2-rank hello.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.apt import AptUnavailable, ensure_packages
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)

SYSTEM_PYTHON = "/usr/bin/python3"
HELLO = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "print(f'rank {c.Get_rank()} of {c.Get_size()} sum {c.allreduce(c.Get_rank() + 1)}', flush=True)"
)

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]


def _mpi4py_present() -> bool:
    proc = subprocess.run([SYSTEM_PYTHON, "-c", "import mpi4py"], capture_output=True, check=False)
    return proc.returncode == 0


@pytest.fixture(scope="module")
def mpi4py() -> None:
    try:
        ensure_packages(["python3-mpi4py"], _mpi4py_present)
    except AptUnavailable as exc:
        pytest.skip(str(exc))


def test_srun_lists_the_mpi_plugins_deepsquare_names(slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    out = slurm_cluster.command("srun", "--mpi=list").stdout + slurm_cluster.command("srun", "--mpi=list").stderr
    for plugin in ("none", "pmi2", "pmix", "pmix_v4"):
        assert plugin in out.split() or f"{plugin}\n" in out, out


@pytest.mark.parametrize("mpi", ["pmix_v4", "pmix"])
def test_two_rank_mpi_hello(slurm_cluster: SlurmCluster, mpi4py: None, mpi: str) -> None:  # noqa: F811
    proc = slurm_cluster.command(
        "srun", f"--mpi={mpi}", "-n", "2", SYSTEM_PYTHON, "-c", HELLO, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["rank 0 of 2 sum 3", "rank 1 of 2 sum 3"]
