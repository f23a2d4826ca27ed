"""A real one-node Slurm cluster for tests: ``slurm_cluster`` (session-scoped pytest fixture).

Import it into a conftest or test module (``from tests.slurm_cluster import slurm_cluster``).
The fixture

* installs Debian's ``slurm-wlm`` and ``libpmix-dev`` (for ``srun --mpi=pmix_v4``) with
  ``apt-get`` when missing (skips, saying why, only when that is impossible: no ``apt-get``
  or not root);
* writes a ``slurm.conf`` into a fresh ``/tmp/dsq-slurm-*`` folder: free ports,
  state/spool/pid/log files in that folder, ``auth/none`` (no munge), the node
  exactly as ``slurmd -C`` sees this machine, ``MinJobAge=3600`` (``scontrol``
  still shows finished jobs), ``KillWait=2``, ``OverTimeLimit=0``, a job
  completion file for ``sacct -c``, ``batch_sched_delay=0`` (a job starts ~1 s
  after ``sbatch`` instead of ~3 s) and ``OverSubscribe=FORCE:4`` so tests can
  run several 1-CPU jobs at once on a 2-CPU CI machine;
* exports ``SLURM_CONF`` for the test process and starts ``slurmctld -D -i`` and
  ``slurmd -D``; waits until ``sinfo`` shows the node idle (the error carries the
  daemons' logs);
* at teardown cancels every job of that cluster, stops both daemons by PID and
  removes the folder.

Clusters side by side. Every pytest-xdist worker (and every test session or benchmark on the
machine) that uses Slurm starts its own cluster, and MPI jobs of two clusters must not meet. What
separates them:

* job ids: each cluster claims a block of ``JOB_ID_BLOCK`` ids (``FirstJobId``/``MaxJobId``) by
  locking a slot file under ``/tmp/dsq-slurm-ids`` for its lifetime. Same ids would give ranks of
  two jobs the same PMIx namespace (``slurm.pmix.<job>.<step>``), hence the same Open MPI job id
  and the same shared-memory segment names: ranks of the other job attach to them and crash;
* temporary folders: ``TmpFS``, the PMIx client folders (``mpi.conf``'s ``PMIxCliTmpDirBase``;
  the PMIx server's are in ``SlurmdSpoolDir``) and, through a ``TaskProlog``, every task's
  ``TMPDIR``, Open MPI's session folder (``OMPI_MCA_orte_tmpdir_base``), PMIx's
  (``PMIX_SYSTEM_TMPDIR``, ``PMIX_MCA_*``) and Open MPI's shared-memory files
  (``OMPI_MCA_btl_vader_backing_directory``) in the cluster's own ``/dev/shm/dsq-slurm-*``;
* ports, state, spool, pid and log files (each cluster's own folder).

``tests/test_mpi.py::test_two_clusters_run_mpi_side_by_side`` runs MPI jobs on two clusters at
once. Tests that share a cluster still mark themselves ``@pytest.mark.xdist_group(NAME)``
(``make test`` uses ``--dist loadgroup``): one group per cluster, so a group's tests share its
start-up; different groups may run in parallel.

Measured here (2 CPUs): ``apt-get update && apt-get install slurm-wlm`` ≈ 14 s,
cluster up ≈ 1 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from tests.apt import AptUnavailable, ensure_packages

APT_PACKAGES = ("slurm-wlm", "libpmix-dev")
_SBIN = (Path("/usr/sbin"), Path("/usr/local/sbin"), Path("/sbin"))


class SlurmUnavailable(AptUnavailable):
    """Slurm is missing and cannot be installed here (the fixture turns this into a skip)."""


def find_binary(name: str) -> str | None:
    """``name`` on PATH or in an ``sbin`` folder (root's PATH in CI may lack ``/usr/sbin``)."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:
        if (d / name).is_file() and os.access(d / name, os.X_OK):
            return str(d / name)
    return None


def pmix_library_present() -> bool:
    """The unversioned ``libpmix.so`` that Slurm's ``mpi_pmix`` plugin opens (from ``libpmix-dev``)."""
    libdirs = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")
    return any(any(Path(d).glob("pmix*/lib/libpmix.so")) for d in libdirs)


def ensure_slurm_installed(timeout_s: float = 900) -> None:
    """Install ``slurm-wlm`` and ``libpmix-dev`` with apt-get unless the daemons, clients and PMIx are present.

    ``libpmix-dev`` makes ``srun --mpi=pmix`` / ``pmix_v4`` work: without it the plugin fails with
    "can not load PMIx library". It is installed before the fixture starts ``slurmd`` (which loads
    the plugin), so no restart is needed. Raises :class:`SlurmUnavailable` when apt-get is missing
    or we are not root, :class:`RuntimeError` (with apt's output) when the installation fails.
    """

    def present() -> bool:
        binaries = all(find_binary(b) for b in ("slurmctld", "slurmd", "sbatch", "scontrol", "sacct"))
        return binaries and pmix_library_present()

    try:
        ensure_packages(APT_PACKAGES, present, timeout_s=timeout_s)
    except AptUnavailable as exc:
        raise SlurmUnavailable(f"Slurm cannot be set up: {exc}") from None


#: Job ids of one cluster: ``FirstJobId = slot * JOB_ID_BLOCK``, ``MaxJobId`` the end of its block.
JOB_ID_BLOCK = 100_000
#: Slurm's largest MaxJobId is 67,043,328: slots 1 .. 600 stay below it.
JOB_ID_SLOTS = 600
SLOTS_DIR = Path("/tmp/dsq-slurm-ids")


def claim_job_id_block() -> tuple[int, IO[bytes]]:
    """(slot, open lock file) of a block of job ids no other running test cluster on this machine uses.

    The slot is held by an exclusive ``flock`` on ``SLOTS_DIR/slot-<n>.lock`` until the file is closed
    (or its process dies): close it when the cluster stops. The search starts at a slot derived from the
    PID so that clusters started at the same moment rarely try the same slot first.
    """
    SLOTS_DIR.mkdir(mode=0o1777, exist_ok=True)
    start = os.getpid() % JOB_ID_SLOTS
    for i in range(JOB_ID_SLOTS):
        slot = 1 + (start + i) % JOB_ID_SLOTS
        f = open(SLOTS_DIR / f"slot-{slot}.lock", "ab")  # noqa: SIM115  (held open for the cluster's lifetime)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        return slot, f
    raise RuntimeError(f"all {JOB_ID_SLOTS} job id blocks under {SLOTS_DIR} are held by running test clusters")


def task_prolog(d: Path, shm: Path) -> str:
    """A ``TaskProlog``: its ``export`` lines set every task's temporary folders inside this cluster's own."""
    exports = {
        "TMPDIR": f"{d}/tmp",
        "OMPI_MCA_orte_tmpdir_base": f"{d}/tmp",
        "OMPI_MCA_btl_vader_backing_directory": str(shm),
        "PMIX_SYSTEM_TMPDIR": f"{d}/tmp",
        "PMIX_MCA_ptl_base_system_tmpdir": f"{d}/tmp",
    }
    return "#!/bin/sh\n" + "".join(f"echo 'export {k}={v}'\n" for k, v in exports.items())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_config(slurmd: str) -> tuple[str, str, int, int]:
    """(node name, ``slurmd -C`` node line without UpTime, cpus, real memory MB) of this machine."""
    proc = subprocess.run([slurmd, "-C"], capture_output=True, text=True, timeout=60, check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("NodeName="))
    name = line.split()[0].split("=", 1)[1]
    cpus = int(re.search(r"\bCPUs=(\d+)", line).group(1))  # type: ignore[union-attr]
    mem = int(re.search(r"\bRealMemory=(\d+)", line).group(1))  # type: ignore[union-attr]
    return name, line.strip(), cpus, mem


@dataclass
class SlurmCluster:
    """A running one-node cluster; ``conf`` is its ``slurm.conf`` (give it to executors as ``slurm_conf``)."""

    dir: Path
    conf: Path
    node: str
    cpus: int
    mem_mb: int
    ctld_port: int
    slurmd_port: int
    first_job_id: int = 1
    shm: Path | None = None
    """This cluster's folder in ``/dev/shm`` (Open MPI's shared-memory files)."""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    id_lock: IO[bytes] | None = None

    @property
    def jobcomp(self) -> Path:
        return self.dir / "jobcomp.txt"

    def env(self) -> dict[str, str]:
        """``os.environ`` with this cluster's ``SLURM_CONF``."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def command(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster."""
        exe = find_binary(args[0]) or args[0]
        return subprocess.run(
            [exe, *args[1:]], env=self.env(), capture_output=True, text=True, timeout=timeout, check=check
        )

    def logs(self) -> str:
        """The daemons' log files (and their stdout/stderr), for error messages."""
        out = []
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            p = self.dir / "log" / name
            if p.exists():
                out.append(f"--- {name} ---\n{p.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    def start(cls, oversubscribe: int = 4, timeout_s: float = 60) -> SlurmCluster:
        """Write the configuration, start both daemons and wait for an idle node."""
        ensure_slurm_installed()
        if os.geteuid() != 0:
            raise SlurmUnavailable("slurmd must run as root to start jobs: run the Slurm tests as root")
        slurmctld, slurmd = find_binary("slurmctld"), find_binary("slurmd")
        assert slurmctld and slurmd
        node, node_line, cpus, mem = node_config(slurmd)
        slot, id_lock = claim_job_id_block()
        d = Path(tempfile.mkdtemp(prefix="dsq-slurm-", dir="/tmp"))  # short: slurmstepd sockets live in spool/
        shm = Path("/dev/shm") / d.name if Path("/dev/shm").is_dir() else d / "shm"
        cluster = cls(d, d / "slurm.conf", node, cpus, mem, free_port(), free_port(), slot * JOB_ID_BLOCK, shm,
                      id_lock=id_lock)
        try:
            cluster._write_files(node_line, oversubscribe)
            env = cluster.env()
            for name, cmd in (("slurmctld", [slurmctld, "-D", "-i"]), ("slurmd", [slurmd, "-D", "-N", node])):
                with open(d / "log" / f"{name}.out", "wb") as out:
                    cluster.procs[name] = subprocess.Popen(
                        cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
            cluster._wait_idle(timeout_s)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _write_files(self, node_line: str, oversubscribe: int) -> None:
        """This cluster's folders, ``slurm.conf``, ``mpi.conf`` and task prolog."""
        d, shm = self.dir, self.shm
        assert shm is not None
        for folder in (d / "state", d / "spool", d / "log", d / "tmp", shm):
            folder.mkdir()
        for folder in (d / "tmp", shm):
            folder.chmod(0o1777)  # tasks of any user write there
        # PMIx keeps per-step folders named after job and step ids (spmix_appdir_<uid>_<job>.<step>): here, not /tmp.
        (d / "mpi.conf").write_text(f"PMIxCliTmpDirBase={d}/tmp\n")
        (d / "task_prolog.sh").write_text(task_prolog(d, shm))
        (d / "task_prolog.sh").chmod(0o755)
        self.conf.write_text(
            f"""# dsq-chain test cluster (tests/slurm_cluster.py)
ClusterName=dsqtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser={_username()}
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
TmpFS={d}/tmp
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={d}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
FirstJobId={self.first_job_id}
MaxJobId={self.first_job_id + JOB_ID_BLOCK - 1}
TaskProlog={d}/task_prolog.sh
ReturnToService=2
MinJobAge=3600
KillWait=2
OverTimeLimit=0
InactiveLimit=0
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=dsq Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:{oversubscribe}
"""
        )

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with code {proc.returncode} while starting:\n{self.logs()}")
            proc2 = self.command("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10)
            last = (proc2.stdout + proc2.stderr).strip()
            if proc2.returncode == 0 and any(ln.split()[1:2] == ["idle"] for ln in proc2.stdout.splitlines()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"Slurm node not idle after {timeout_s:g} s (sinfo: {last!r}):\n{self.logs()}")

    def stop(self) -> None:
        """Cancel every job of this cluster, stop the daemons by PID, delete the folder."""
        ctld = self.procs.get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            with contextlib.suppress(Exception):
                self.command("scancel", "-u", _username(), timeout=10)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    q = self.command("squeue", "-h", "-o", "%i", check=False, timeout=10)
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(0.2)
        for name in ("slurmd", "slurmctld"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.shm is not None:
            shutil.rmtree(self.shm, ignore_errors=True)
        if self.id_lock is not None:
            self.id_lock.close()  # the job id block is free again
            self.id_lock = None


def _username() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A running one-node Slurm cluster; ``SLURM_CONF`` points at it for the whole session."""
    try:
        cluster = SlurmCluster.start()
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        cluster.stop()
