"""MPI through Slurm as DeepSquare's ``run.mpi`` asks for it: ``srun --mpi=pmix_v4`` on the test cluster.

The Slurm fixture installs ``libpmix-dev`` (without it the pmix plugins cannot load the PMIx
library); this module installs Debian's ``python3-mpi4py`` (Open MPI) for a 2-rank hello.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.apt import AptUnavailable, ensure_packages
from tests.oci_fixtures import Registry
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


def test_two_rank_mpi_hello_in_containers(
    slurm_cluster: SlurmCluster,  # noqa: F811
    mpi4py: None,
    oci_registry: Registry,
    image_cache: Path,
) -> None:
    """Each rank in its own container (the busybox image with the host's MPI mounted read-only): PMIx
    reaches every rank, and they talk to each other (allreduce) across container boundaries."""
    mounts = [
        f"{d}:{d}:ro" for d in ("/usr", "/lib", "/lib64", "/etc/alternatives", "/etc/openmpi") if os.path.exists(d)
    ]
    proc = slurm_cluster.command(
        "srun", "--mpi=pmix_v4", "-n", "2", sys.executable, "-m", "dsq_chain.executors.containers", "run",
        "--image", oci_registry.images["busybox"], *[a for m in mounts for a in ("--mount", m)],
        "--", SYSTEM_PYTHON, "-c", HELLO,
        timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["rank 0 of 2 sum 3", "rank 1 of 2 sum 3"]
    assert "PMIX ERROR" not in proc.stderr, proc.stderr
