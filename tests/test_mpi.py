"""MPI through Slurm as DeepSquare's ``run.mpi`` asks for it: ``srun --mpi=pmix_v4`` on the test cluster.

The Slurm fixture installs ``libpmix-dev`` (without it the pmix plugins cannot load the PMIx
library); this module installs Debian's ``python3-mpi4py`` (Open MPI) for a 2-rank hello.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.apt import AptUnavailable, ensure_packages
from tests.oci_fixtures import Registry
from tests.slurm_cluster import SlurmCluster, find_binary, slurm_cluster  # noqa: F401  (the fixture)

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


#: Rank 0 broadcasts a large message naming its job and round for 4 s; every rank checks each one (and an
#: allreduce), then prints its job, rounds, verdict, time span and the shared-memory files it sees.
SIDE_BY_SIDE = """
import os, time
from mpi4py import MPI
c = MPI.COMM_WORLD; r = c.Get_rank(); job = os.environ["SLURM_JOB_ID"]
t0 = time.time(); n = 0; ok = True
while c.bcast(time.time() - t0 < 4 if r == 0 else None, root=0):
    text = f"{job}:{n}," * 20000
    ok = ok and c.bcast(text if r == 0 else None, root=0) == text and c.allreduce(r + 1 + n) == 3 + 2 * n
    n += 1
shm = os.environ["OMPI_MCA_btl_vader_backing_directory"]
segments = sum(1 for f in os.listdir(shm) if f.startswith("vader_segment"))
print(f"rank {r} of {c.Get_size()} job {job} rounds {n} ok {ok} span {t0:.3f} {time.time():.3f} shm {segments}")
"""

RANK_LINE = re.compile(r"rank (\d) of 2 job (\d+) rounds (\d+) ok (\w+) span ([\d.]+) ([\d.]+) shm (\d+)")


def test_two_clusters_run_mpi_side_by_side(mpi4py: None, tmp_path: Path) -> None:
    """Two fresh clusters (as two xdist workers or two test sessions start them) run a 2-rank MPI job each at the
    same time, exchanging large messages through shared memory for 4 s: both finish, every message arrives
    intact. With the same job ids and the same /dev/shm (every cluster counting from job 1, as before), the
    ranks of one job attach to the other's shared-memory segments and crash (segfault in MPI_Bcast)."""
    program = tmp_path / "side_by_side.py"
    program.write_text(SIDE_BY_SIDE)
    clusters: list[SlurmCluster] = []
    try:
        clusters += [SlurmCluster.start(), SlurmCluster.start()]
        a, b = clusters
        assert a.first_job_id != b.first_job_id and a.shm != b.shm and a.dir != b.dir
        srun = find_binary("srun") or "srun"
        runs = [subprocess.Popen([srun, "--mpi=pmix_v4", "-n", "2", "-t", "2", SYSTEM_PYTHON, str(program)],
                                 env=c.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for c in clusters]  # fmt: skip
        outputs = []
        for c, run in zip(clusters, runs, strict=True):
            try:
                out, err = run.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                run.kill()
                out, err = run.communicate()
            assert run.returncode == 0, f"{c.conf}: {out}\n{err[-3000:]}"
            outputs.append(sorted(out.splitlines()))
        spans = []
        for c, lines in zip(clusters, outputs, strict=True):
            ranks = [RANK_LINE.fullmatch(line) for line in lines]
            assert len(ranks) == 2 and all(ranks), lines
            fields = [m.groups() for m in ranks if m]
            assert [f[0] for f in fields] == ["0", "1"], lines
            assert {f[1] for f in fields} == {str(c.first_job_id)}, lines  # each job has its cluster's first id
            assert {f[3] for f in fields} == {"True"} and int(fields[0][2]) > 1, lines  # every message intact
            assert {f[6] for f in fields} == {"2"}, lines  # both ranks' segments, in this cluster's own folder
            spans.append((min(float(f[4]) for f in fields), max(float(f[5]) for f in fields)))
        (a0, a1), (b0, b1) = spans
        assert a0 < b1 and b0 < a1, f"the two jobs did not run at the same time: {spans}"
    finally:
        for c in clusters:
            c.stop()
    assert not any(c.shm is not None and c.shm.exists() for c in clusters)
