"""Molecular-dynamics codes for the tests and ``benchmarks/md.py``: Debian's LAMMPS and GROMACS with Open MPI.

* :func:`ensure_md_installed` installs ``lammps``, ``lammps-examples``, ``gromacs`` and ``openmpi-bin`` with
  ``apt-get`` (``tests/apt.py``); ``md_codes`` is the session fixture that does it, skipping with the reason
  when apt or root is missing. The Slurm fixture installs ``libpmix-dev`` (for ``srun --mpi=pmix_v4``).
* :func:`mpi_plugin` says which ``srun --mpi`` plugin starts Open MPI ranks on a cluster: ``pmix_v4`` when a
  one-rank probe works; None when it does not (a slurmd started before ``libpmix-dev`` was installed cannot
  load PMIx until restarted; Debian's Open MPI cannot start under ``--mpi=pmi2``).
* :func:`md_workflow` loads one of ``examples/md/`` with its ``env`` overridden (sizes, steps) and its output
  storage pointed at a real S3 server (the examples name a placeholder bucket and endpoint for users to replace);
  :func:`fetch_outputs` downloads what a job uploaded there, as the job's owner does.

Measured here (2 shared cores): ``apt-get install`` of the four packages ≈ 60 s once; the LJ melt of
4,000 atoms, 250 steps, 2 ranks ≈ 2-10 s; the 3 nm water box (2,652 atoms), 100 steps, 2 ranks ≈ 3-6 s.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsq_chain.executors import storage
from dsq_chain.workloads import workflow as wfm
from tests.apt import AptUnavailable, ensure_packages
from tests.slurm_cluster import SlurmCluster, find_binary

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "md"
MD_PACKAGES = ("lammps", "lammps-examples", "gromacs", "openmpi-bin")
LJ_INPUT = Path("/usr/share/lammps/examples/melt/in.melt")


def _present() -> bool:
    return all(shutil.which(b) for b in ("lmp", "gmx", "gmx_mpi", "mpirun")) and LJ_INPUT.exists()


def ensure_md_installed(timeout_s: float = 1200) -> None:
    """Installs the MD packages with apt-get unless present; :class:`AptUnavailable` when it cannot."""
    ensure_packages(MD_PACKAGES, _present, timeout_s=timeout_s)


@pytest.fixture(scope="session")
def md_codes() -> None:
    """LAMMPS, GROMACS and Open MPI installed (skips with the reason where they cannot be)."""
    try:
        ensure_md_installed()
    except AptUnavailable as e:
        pytest.skip(str(e))


def mpi_plugin(cluster: SlurmCluster) -> str | None:
    """``pmix_v4`` when ``srun --mpi=pmix_v4`` starts an Open MPI rank on ``cluster``, else None."""
    listed = cluster.command("srun", "--mpi=list", check=False).stdout + cluster.command(
        "srun", "--mpi=list", check=False).stderr
    if "pmix" not in listed:
        return None
    probe = cluster.command("srun", "--mpi=pmix_v4", "-n1", "-t1", find_binary("true") or "/bin/true",
                            check=False, timeout=60)
    return "pmix_v4" if probe.returncode == 0 else None


def md_workflow(name: str, *, labels: tuple[str, ...] = (), output: Mapping[str, str] | None = None,
                **env: str) -> wfm.Workflow:
    """``examples/md/<name>.yaml`` with these ``env`` values, label constraints and ``output.s3`` fields (e.g.
    ``S3Server.workflow_s3(bucket)``: bucket, endpoint, credentials), validated like a user's file."""
    return md_workflow_with(name, env, labels, output)


def md_workflow_with(name: str, env: Mapping[str, str], labels: tuple[str, ...] = (),
                     output: Mapping[str, str] | None = None) -> wfm.Workflow:
    """:func:`md_workflow` with the environment as one mapping."""
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    doc.setdefault("env", {}).update(env)
    if labels:
        doc["labels"] = [*doc.get("labels", []), *labels]
    if output is not None:
        doc["output"]["s3"].update(output)
    return wfm.loads(json.dumps(doc), source=str(EXAMPLES / f"{name}.yaml"))


def fetch_outputs(wf: wfm.Workflow, sub: str, dest: Path, client: Any = None) -> dict[str, Path]:
    """What jobs of ``wf`` uploaded under ``<output path>/<sub>``, downloaded into ``dest`` as the owner does (the
    storage tool; ``client``: a boto3 S3 client with the owner's key, else one from the ``AWS_*`` variables);
    relative file name -> path."""
    assert wf.output is not None and wf.output.is_s3, f"{wf.name}: no S3 output storage"
    dest.mkdir(parents=True, exist_ok=True)
    files = storage.fetch_s3(f"{wf.output.url.rstrip('/')}/{sub}".rstrip("/") + "/", dest, client)
    return {p.relative_to(dest).as_posix(): p for p in files}
