"""Molecular dynamics through the whole grid on a real Slurm: submit → meta-scheduler → worker → sbatch → MPI
ranks → FINISHED, outputs uploaded to the workflow's output storage (a real S3 server on loopback) and read back
from there by the owner.

LAMMPS (Lennard-Jones melt) and GROMACS (a water box) run on 2 MPI ranks started by ``srun --mpi=pmix_v4``,
LAMMPS also by ``mpirun`` inside one step, and a small temperature sweep runs as a job array. Each simulation
lasts a few seconds. Jobs require ``zone == eu`` so that the scheduler places them on the grid's ``cpu``
provider, the one whose worker runs here.

These tests have their own Slurm cluster; test clusters side by side do not collide (``tests/slurm_cluster.py``).
They still run in the ``slurm`` xdist group, one after another with the other Slurm tests: two MPI ranks take
both cores of a 2-core CI machine, and the Slurm timing tests run beside them timed out (``scontrol`` past its
5 s limit after slurmctld came back, ``dsq provider init`` detecting the engine).
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsq_chain.executors import SlurmExecutor
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import AnvilNode
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import CREDIT_UNIT, JobStatus
from dsq_chain.workloads import workflow as wfm
from tests.grid import Grid
from tests.md_tools import fetch_outputs, md_codes, md_workflow, mpi_plugin  # noqa: F401  (md_codes: the fixture)
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)
from tests.storage_fixtures import S3Server
from tests.worker_scenarios import Rig, cancel_all, job_ids_under, new_rig, settlement

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

CPU_KEY = 5
ESCROW = 20 * CREDIT_UNIT
ON_CPU = ("zone == eu",)


@pytest.fixture
def md_rig(md_codes: None, grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path,  # noqa: F811
           slurm_cluster: SlurmCluster) -> Iterator[Rig]:  # noqa: F811
    root = tmp_path / "slurm"

    def new_executor() -> SlurmExecutor:
        return SlurmExecutor(root, slurm_conf=slurm_cluster.conf, command_timeout_s=10)

    rig = new_rig(anvil.rpc_url, keys[CPU_KEY], grid.deployment, grid.user, new_executor, tmp_path / "worker")
    try:
        yield rig
    finally:
        rig.worker.close()
        cancel_all(new_executor(), job_ids_under(root))


@pytest.fixture
def results(s3_server: S3Server) -> dict[str, str]:
    """A fresh bucket on the S3 server: the ``output.s3`` fields that send a workflow's outputs there. The test
    process's own environment has no S3 settings: only the workflow's reach the job."""
    bucket = f"md-{secrets.token_hex(6)}"
    s3_server.client().create_bucket(Bucket=bucket)
    return s3_server.workflow_s3(bucket)


def owner_reads(s3_server: S3Server, wf: wfm.Workflow, sub: str, dest: Path) -> dict[str, Path]:
    """The files jobs of ``wf`` uploaded under ``<output path>/<sub>``, downloaded with the owner's key."""
    return fetch_outputs(wf, sub, dest, s3_server.client())


def through_grid(grid: Grid, rig: Rig, wf: wfm.Workflow, *, count: int = 1, timeout: float = 240) -> list[int]:
    """Submits ``wf`` (``count`` jobs), lets the real meta-scheduler place them and the worker run them to a final
    status; returns the job ids."""
    ids = list(grid.user.submit(wf, credits=Credits(units=ESCROW), max_rate=Credits(1), count=count))
    sched = MetaScheduler(grid.scheduler.wallet, grid.deployment)
    placed: set[int] = set()
    for _ in range(20):
        placed.update(a.job_id for a in sched.round().assigned)
        if placed >= set(ids):
            break
    assert placed >= set(ids), f"the scheduler placed only {sorted(placed)} of {ids}: {sched.explain(ids[0])}"
    assert all(grid.user.job(i).provider == grid.cpu.address for i in ids)
    finals = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.PANICKED, JobStatus.OUT_OF_CREDITS)
    for job_id in ids:
        rig.until(job_id, finals, timeout=timeout)
    return ids


def _explain(rig: Rig, job_id: int) -> str:
    out, err = rig.worker.logs(job_id)
    tail = {p.name: p.read_text()[-2500:] if p.exists() else "" for p in (out, err)}
    return "\n".join(f"{name}:\n{text}" for name, text in tail.items())


def _finished(rig: Rig, job_id: int) -> None:
    status = rig.status(job_id)
    assert status is JobStatus.FINISHED, f"job {job_id} ended {status.name}\n{_explain(rig, job_id)}"
    assert settlement(rig.user, job_id)["exitCode"] == 0


def test_lammps_srun_pmix(grid: Grid, md_rig: Rig, slurm_cluster: SlurmCluster, s3_server: S3Server,  # noqa: F811
                          results: dict[str, str], tmp_path: Path) -> None:
    plugin = mpi_plugin(slurm_cluster)
    if plugin is None:
        pytest.skip("this slurmd cannot load PMIx (libpmix-dev installed after it started): the mpirun test covers "
                    "MPI; Debian's Open MPI does not start under --mpi=pmi2")
    wf = md_workflow("lammps-melt", labels=ON_CPU, output=results, LJ_STEPS="100", DUMP_EVERY="50")
    [job] = through_grid(grid, md_rig, wf)
    _finished(md_rig, job)
    got = owner_reads(s3_server, wf, str(job), tmp_path / "owner")
    assert sorted(got) == ["final.data", "log.lammps", "traj.lammpstrj"]
    assert re.search(r"Loop time of [0-9.]+ on 2 procs for 100 steps with 4000 atoms", got["log.lammps"].read_text())
    assert "timesteps/s" in md_rig.worker.logs(job)[0].read_text()
    frames = _lammps_frames(got["traj.lammpstrj"].read_text())
    assert [step for step, _ in frames] == [0, 50, 100] and {atoms for _, atoms in frames} == {4000}
    assert "4000 atoms" in got["final.data"].read_text()
    assert got["final.data"].read_text().count("\n") > 4000  # every atom came back


def _lammps_frames(traj: str) -> list[tuple[int, int]]:
    """(timestep, atoms) of each frame of a LAMMPS text dump."""
    items = re.findall(r"ITEM: TIMESTEP\n(\d+)\nITEM: NUMBER OF ATOMS\n(\d+)\n", traj)
    return [(int(step), int(atoms)) for step, atoms in items]


def test_lammps_mpirun_in_one_step(grid: Grid, md_rig: Rig, s3_server: S3Server, results: dict[str, str],
                                   tmp_path: Path) -> None:
    wf = md_workflow("lammps-mpirun", labels=ON_CPU, output=results, LJ_STEPS="100")
    [job] = through_grid(grid, md_rig, wf)
    _finished(md_rig, job)
    got = owner_reads(s3_server, wf, str(job), tmp_path / "owner")
    assert sorted(got) == ["log.lammps"]
    assert re.search(r"Loop time of [0-9.]+ on 2 procs for 100 steps with 4000 atoms", got["log.lammps"].read_text())


def test_gromacs_water_box(grid: Grid, md_rig: Rig, slurm_cluster: SlurmCluster, s3_server: S3Server,  # noqa: F811
                           results: dict[str, str], tmp_path: Path) -> None:
    plugin = mpi_plugin(slurm_cluster)
    if plugin is None:
        pytest.skip("this slurmd cannot load PMIx (libpmix-dev installed after it started)")
    wf = md_workflow("gromacs-water", labels=ON_CPU, output=results, MD_STEPS="200")
    [job] = through_grid(grid, md_rig, wf)
    _finished(md_rig, job)
    got = owner_reads(s3_server, wf, str(job), tmp_path / "owner")
    assert sorted(got) == ["md.edr", "md.gro", "md.log", "md.xtc"]
    log = got["md.log"].read_text()
    assert "Using 2 MPI processes" in log
    assert "Performance:" in log and "ns/day" in log
    assert got["md.gro"].read_text().splitlines()[1].strip() == "2652"  # atoms in the last frame
    # The owner's copies are whole GROMACS files: gmx reads every frame (steps 0, 100, 200 at 2 fs: 0.4 ps).
    trajectory = _gmx_check(tmp_path, "-f", got["md.xtc"])
    assert re.search(r"# Atoms\s+2652\b", trajectory) and re.search(r"Last frame\s+2 time\s+0\.400", trajectory)
    assert re.search(r"^Coords\s+3\s", trajectory, re.M), trajectory
    energies = _gmx_check(tmp_path, "-e", got["md.edr"])
    assert "Found 3 frames with a timestep of 0.2 ps" in energies, energies


def _gmx_check(cwd: Path, *args: Any) -> str:
    proc = subprocess.run(["gmx", "-quiet", "check", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_sweep_as_a_job_array(grid: Grid, md_rig: Rig, s3_server: S3Server, results: dict[str, str],
                              tmp_path: Path) -> None:
    wf = md_workflow("lammps-sweep", labels=ON_CPU, output=results, STEPS="50", SWEEP_POINTS="4")
    ids = through_grid(grid, md_rig, wf, count=4)
    for job in ids:
        _finished(md_rig, job)
    got = owner_reads(s3_server, wf, "", tmp_path / "owner")
    assert sorted(got) == sorted(f"{j}.txt" for j in ids)  # every job of the array added its own object
    rows = [got[f"{j}.txt"].read_text().split() for j in ids]
    temperatures = sorted(float(r[1]) for r in rows)
    assert temperatures == [0.5, 0.55, 0.6, 0.65]  # consecutive ids cover every point once
    assert all(len(r) == 4 and float(r[2]) < 0 for r in rows)  # T, temperature, potential energy, pressure
