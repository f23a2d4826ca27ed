"""The same trivial jobs on one real Slurm cluster, twice: straight with ``sbatch``, then through the grid.

    .venv/bin/python benchmarks/sbatch_vs_grid.py [--jobs 1000] [--oversubscribe 64] [--cpus 200]

One one-node Slurm cluster (``tests/slurm_cluster.py``: Debian's slurm-wlm installed with apt, run as root)
serves both paths, one after the other:

1. **sbatch**: ``--jobs`` batch scripts running ``true``, each submitted with its own ``sbatch`` call
   (``--parallel`` calls at once, as the grid's worker submits), timed from the first ``sbatch`` to the
   moment the last job is COMPLETED (``sacct -c`` on the job completion file).
2. **grid**: the same number of jobs of a workflow running ``true``, submitted in job arrays to a fresh Anvil,
   placed by the meta-scheduler on one provider whose worker runs them on that cluster with the Slurm executor;
   timed from the first submission to the last settlement (FINISHED on chain).

Prints both rates (jobs completed per second over each window), their ratio, and the load average beside
them (the machine is shared: wall-clock figures are upper bounds). ``--oversubscribe`` sets how many jobs
share a CPU in the cluster's partition (both paths get the same cluster). Needs root and apt (Slurm).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import WORKFLOW, GridRig, grid_options, loadavg, submit_all, wait_all_final

from dsq_chain.executors.slurm import parse_slurm_state
from dsq_chain.types import JobStatus
from dsq_chain.workloads import workflow as wfm
from tests.slurm_cluster import SlurmCluster


@dataclass(frozen=True)
class Run:
    """One path's result: jobs that ended well, of how many, over how many seconds."""

    path: str
    jobs: int
    completed: int
    seconds: float
    load: str

    @property
    def rate(self) -> float:
        return self.completed / self.seconds

    def line(self) -> str:
        return (f"{self.path}: {self.completed} of {self.jobs} jobs completed in {self.seconds:.1f} s = "
                f"{self.rate:.1f} jobs/s (load average {self.load})")


def run_sbatch(cluster: SlurmCluster, jobs: int, parallel: int, timeout: float) -> Run:
    """``jobs`` trivial batch jobs, one ``sbatch`` each; waits until every one has ended."""
    d = Path(tempfile.mkdtemp(prefix="dsq-bench-sbatch-"))
    script = d / "true.sh"
    script.write_text("#!/bin/bash\ntrue\n")

    def one(i: int) -> str:
        out = cluster.command("sbatch", "--parsable", f"--job-name=direct-{i}", "--ntasks=1", "--cpus-per-task=1",
                              "--mem-per-cpu=64", "--time=1", f"--output={d}/{i}.out", f"--chdir={d}",
                              str(script), timeout=120)
        return out.stdout.strip().split(";", 1)[0]

    t0 = time.monotonic()
    with ThreadPoolExecutor(parallel) as pool:
        ids = set(pool.map(one, range(jobs)))
    states: dict[str, str] = {}
    deadline = t0 + timeout
    while len(states) < len(ids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"sbatch: {len(ids) - len(states)} of {jobs} jobs not ended after {timeout:.0f} s")
        time.sleep(0.2)
        acct = cluster.command("sacct", "-c", "-P", "-n", "-o", "JobID,State", check=False, timeout=60)
        for line in acct.stdout.splitlines():
            job, _, state = line.partition("|")
            if job in ids and parse_slurm_state(state).is_final:
                states[job] = state
    elapsed = time.monotonic() - t0
    done = sum(1 for s in states.values() if s.split()[0] == "COMPLETED")
    return Run("sbatch", jobs, done, elapsed, loadavg())


def run_grid(cluster: SlurmCluster, jobs: int, cpus: int, array: int, timeout: float) -> Run:
    """``jobs`` trivial jobs through the grid onto ``cluster`` (Slurm executor); waits until every one settled."""
    tmp = Path(tempfile.mkdtemp(prefix="dsq-bench-grid-"))
    wf = wfm.loads(WORKFLOW)
    with GridRig(tmp, cpus=cpus, executor="slurm", exec_kw={"slurm_conf": cluster.conf}) as rig:
        t0 = time.monotonic()
        ids = submit_all(rig.user, wf, jobs, array)
        statuses = wait_all_final(rig.user, ids, timeout)
        elapsed = time.monotonic() - t0
        load = loadavg()
    done = sum(1 for s in statuses if s is JobStatus.FINISHED)
    return Run("grid", jobs, done, elapsed, load)


def compare(cluster: SlurmCluster, jobs: int, *, parallel: int = 8, cpus: int = 200, array: int = 250,
            timeout: float = 1800) -> tuple[Run, Run]:
    """Both paths on ``cluster``, sbatch first; the two runs."""
    return run_sbatch(cluster, jobs, parallel, timeout), run_grid(cluster, jobs, cpus, array, timeout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grid_options(p, timeout=1800)  # --jobs (on each path), --cpus, --array (the grid's), --timeout (per path)
    p.add_argument("--oversubscribe", type=int, default=64,
                   help="jobs sharing one CPU in the cluster's partition (default 64)")
    p.add_argument("--parallel", type=int, default=8, help="sbatch calls at once on the direct path (default 8)")
    args = p.parse_args(argv)
    cluster = SlurmCluster.start(oversubscribe=args.oversubscribe)
    try:
        print(f"{args.jobs} jobs `true` on each path; one Slurm node, {cluster.cpus} cpus, OverSubscribe=FORCE:"
              f"{args.oversubscribe}; grid: 1 provider advertising {args.cpus} cpus, arrays of {args.array}, "
              f"Slurm executor", flush=True)
        direct, grid = compare(cluster, args.jobs, parallel=args.parallel, cpus=args.cpus, array=args.array,
                               timeout=args.timeout)
    finally:
        cluster.stop()
    print(direct.line())
    print(grid.line())
    print(f"grid / sbatch: {grid.rate / direct.rate:.2f} of the direct rate ({direct.rate / grid.rate:.2f}x slower)")
    return 0 if direct.completed == grid.completed == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
