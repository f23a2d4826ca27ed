"""Molecular dynamics directly with sbatch and through the grid, on a real one-node Slurm and a fresh Anvil.

    .venv/bin/python benchmarks/md.py [--codes lammps,gromacs] [--ranks 1,2] [--seconds 60]
    .venv/bin/python benchmarks/md.py --sweep 100 [--codes none]

For each code and rank count, the same workflow (``examples/md/lammps-melt.yaml``: the LJ melt, 32,000 atoms;
``examples/md/gromacs-water.yaml``: a 4 nm water box, 6,500 atoms) runs twice:

* directly: its batch script submitted with ``sbatch`` by the Slurm executor (no chain), polled every 0.2 s;
* through the grid: submitted on chain, placed by the meta-scheduler, claimed and run by the provider worker on
  the same Slurm, polled on chain every 0.2 s until FINISHED.

It prints the science figure (LAMMPS timesteps/s, GROMACS ns/day) of each run, the wall time of each, the
overhead ratio (grid ÷ direct; target ≤ 1.05 on a 60 s run) and the seconds from submission to start on each
path. The number of steps is calibrated by a short direct run so that each simulation lasts ``--seconds``.

``--sweep N`` submits ``examples/md/lammps-sweep.yaml`` as a job array of N small simulations (a few seconds each)
and prints the total time from submission to the last settlement and the total cost in credits.

Every run uploads its outputs to the workflow's output storage, here a moto S3 server on loopback (the examples'
placeholder bucket and endpoint are replaced); the benchmark checks they arrived (the sweep reads its results
from there). LAMMPS dumps the trajectory's first and last frames only (``DUMP_EVERY`` = the number of steps).

The scheduler and worker run in threads of this process (scheduler polls every 0.1 s, worker every 0.2 s).
Slurm comes from ``tests/slurm_cluster.py`` (installed with apt, started as root) and LAMMPS/GROMACS from
``tests/md_tools.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dsq_chain.executors import ExecSpec, SlurmExecutor
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import dev_keys, start_anvil
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import AdminClient, GridClient
from dsq_chain.sdk.deployment import deploy
from dsq_chain.services.onboarding import DEFAULT_PRICES
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.services.worker import ProviderWorker
from dsq_chain.types import CREDIT_UNIT, JobStatus
from dsq_chain.workloads import workflow as wfm
from tests.md_tools import ensure_md_installed, fetch_outputs, md_workflow, md_workflow_with, mpi_plugin
from tests.slurm_cluster import SlurmCluster
from tests.storage_fixtures import start_moto

POLL_S = 0.2
FINAL = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.PANICKED, JobStatus.OUT_OF_CREDITS, JobStatus.CANCELED)
#: The MD loop's own wall time in a code's output: what remains of a run's wall time is start-up and overhead.
LOOP_RE = {"lammps": r"Loop time of ([0-9.]+)", "gromacs": r"Time:\s+[0-9.]+\s+([0-9.]+)"}
CODES = {
    # code: (example, size env, steps variable, figure regex, unit)
    "lammps": ("lammps-melt", {"LJ_SCALE": "2"}, "LJ_STEPS", r"Performance: .*?([0-9.]+) timesteps/s", "timesteps/s"),
    "gromacs": ("gromacs-water", {"BOX_NM": "4"}, "MD_STEPS", r"Performance:\s+([0-9.]+)", "ns/day"),
}


def figure(code: str, text: str) -> float:
    m = re.search(CODES[code][3], text)
    if not m:
        raise RuntimeError(f"no {CODES[code][4]} figure in the job's output:\n{text[-2000:]}")
    return float(m.group(1))


def loop_s(code: str, text: str) -> float:
    m = re.search(LOOP_RE[code], text)
    return float(m.group(1)) if m else float("nan")


def steps_per_s(code: str, value: float) -> float:
    return value if code == "lammps" else value * 1e6 / 0.002 / 1e3 / 86400  # ns/day at 2 fs -> steps/s


def dump(code: str, steps: int) -> dict[str, str]:
    """LAMMPS: a trajectory of the first and last frames only (uploading every 50th frame of 32,000 atoms would
    measure the storage, not the grid)."""
    return {"DUMP_EVERY": str(steps)} if code == "lammps" else {}


def with_ranks(wf: wfm.Workflow, ranks: int) -> wfm.Workflow:
    data = wf.to_data()
    data["resources"]["tasks"] = ranks
    for step in data["steps"]:  # the MPI step: one rank per task
        resources = (step.get("run") or {}).get("resources")
        if resources and resources.get("tasks", 1) > 1:
            resources["tasks"] = ranks
    return wfm.loads(json.dumps(data))


class Bench:
    def __init__(self, cluster: SlurmCluster, work: Path) -> None:
        self.cluster = cluster
        self.work = work
        self.s3 = start_moto(work / "moto.log")
        self.s3.client().create_bucket(Bucket="md-results")
        self.output = self.s3.workflow_s3("md-results")
        self.node = start_anvil()
        chain = Chain(self.node.rpc_url)
        keys = dev_keys(4)
        self.dep = deploy(chain.wallet(keys[0]), claim_timeout=300)
        admin = AdminClient(chain.wallet(keys[0]), self.dep)
        admin.grant_scheduler(chain.wallet(keys[1]).address)
        self.user = GridClient(Chain(self.node.rpc_url).wallet(keys[2]), self.dep)
        admin.mint(self.user.address, Credits(units=100_000 * CREDIT_UNIT))
        self.direct = SlurmExecutor(work / "direct", slurm_conf=cluster.conf)
        self.worker = ProviderWorker(Chain(self.node.rpc_url).wallet(keys[3]), self.dep,
                                     SlurmExecutor(work / "grid", slurm_conf=cluster.conf), work / "worker")
        self.worker.register(DEFAULT_PRICES)
        admin.approve(self.worker.address)
        self.scheduler = MetaScheduler(Chain(self.node.rpc_url).wallet(keys[1]), self.dep)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=s.run, args=(self.stop,), daemon=True)
                        for s in (self.worker, self.scheduler)]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=20)
        self.worker.close()
        self.node.stop()
        self.s3.stop()

    def outputs(self, wf: wfm.Workflow, job_id: int) -> int:
        """Bytes job ``job_id`` uploaded to the workflow's output storage (an error when nothing arrived)."""
        files = fetch_outputs(wf, str(job_id), self.work / "outputs" / str(job_id), self.s3.client())
        return sum(p.stat().st_size for p in files.values())

    def run_direct(self, wf: wfm.Workflow) -> tuple[float, float, str]:
        """(wall s, submit->start s, stdout) of ``wf`` submitted with sbatch."""
        spec = ExecSpec(job_id=0, script=wfm.render_script(wf, 0), tasks=wf.tasks, cpus_per_task=wf.cpus_per_task,
                        mem_per_cpu_mb=wf.mem_per_cpu, gpus=wf.gpus, time_limit_s=3600)
        t0 = time.monotonic()
        exec_id = self.direct.submit(spec)
        started = None
        while True:
            st = self.direct.status(exec_id)
            if started is None and (st.started or st.final):
                started = time.monotonic() - t0
            if st.final:
                break
            time.sleep(POLL_S)
        wall = time.monotonic() - t0
        out = self.direct.logs(exec_id)[0].read_text()
        if st.exit_code != 0:
            raise RuntimeError(f"direct run failed ({st.reason}):\n{out[-2000:]}\n"
                               f"{self.direct.logs(exec_id)[1].read_text()[-2000:]}")
        return wall, started or wall, out

    def submit(self, wf: wfm.Workflow, count: int = 1) -> list[int]:
        return list(self.user.submit(wf, credits=Credits(50), max_rate=Credits(10), count=count))

    def run_grid(self, wf: wfm.Workflow) -> tuple[float, float, str, int, int]:
        """(wall s, submit->RUNNING s, stdout, billed units, job id) of ``wf`` through the grid."""
        t0 = time.monotonic()
        [job_id] = self.submit(wf)
        started = None
        while True:
            status = self.user.job(job_id).status
            if started is None and status in (JobStatus.RUNNING, *FINAL):
                started = time.monotonic() - t0
            if status in FINAL:
                break
            time.sleep(POLL_S)
        wall = time.monotonic() - t0
        out = self.worker.logs(job_id)[0].read_text()
        if status is not JobStatus.FINISHED:
            raise RuntimeError(f"job {job_id} ended {status.name}:\n{out[-2000:]}")
        return wall, started or wall, out, self.billed([job_id]), job_id

    def billed(self, ids: list[int]) -> int:
        logs = self.user.market.events.JobSettled().get_logs(from_block=self.dep.block)
        wanted = set(ids)
        return sum(int(lg["args"]["billed"]) for lg in logs if int(lg["args"]["jobId"]) in wanted)


def md(bench: Bench, codes: list[str], ranks: list[int], seconds: float, plugin: str) -> None:
    print(f"MPI through srun --mpi={plugin}; {seconds:g} s simulations; grid wall time = submit -> FINISHED on chain, "
          f"direct = sbatch -> COMPLETED in scontrol (both polled every {POLL_S} s)")
    header = f"{'code':8} {'ranks':>5} {'steps':>7} {'direct s':>9} {'grid s':>8} {'ratio':>6} {'start+ d/g s':>13} " \
             f"{'figure direct':>14} {'figure grid':>12} {'bill':>9}"
    print(header)
    for code in codes:
        example, size, steps_var, _, unit = CODES[code]
        for n in ranks:
            probe = with_ranks(md_workflow_with(example, {**size, steps_var: "200", **dump(code, 200)},
                                                output=bench.output), n)
            _, _, out = bench.run_direct(probe)  # calibration
            steps = max(100, int(seconds * steps_per_s(code, figure(code, out))))
            wf = with_ranks(md_workflow_with(example, {**size, steps_var: str(steps), **dump(code, steps)},
                                             output=bench.output), n)
            d_wall, d_start, d_out = bench.run_direct(wf)
            g_wall, g_start, g_out, bill, job_id = bench.run_grid(wf)
            uploaded = bench.outputs(wf, job_id)
            ratio = g_wall / d_wall
            print(f"{code:8} {n:>5} {steps:>7} {d_wall:>9.1f} {g_wall:>8.1f} {ratio:>6.3f} "
                  f"{d_start:>6.1f}/{g_start:<6.1f} {figure(code, d_out):>10.1f} {unit[:3]} "
                  f"{figure(code, g_out):>8.1f} {unit[:3]} {bill / CREDIT_UNIT:>9.4f}  "
                  f"(outputs in S3: {uploaded / 1e6:.1f} MB)", flush=True)
            d_rest, g_rest = d_wall - loop_s(code, d_out), g_wall - loop_s(code, g_out)
            print(f"  -> overhead ratio {ratio:.3f} (target <= 1.05 on a 60 s run), submit->start adds "
                  f"{g_start - d_start:+.1f} s through the grid; wall time outside the MD loop: direct {d_rest:.1f} s, "
                  f"grid {g_rest:.1f} s (the grid adds {g_rest - d_rest:+.1f} s: ratio "
                  f"{(d_wall + g_rest - d_rest) / d_wall:.3f} at equal MD speed)", flush=True)


def sweep(bench: Bench, n: int) -> None:
    wf = md_workflow("lammps-sweep", SWEEP_POINTS=str(n), output=bench.output)
    t0 = time.monotonic()
    ids = bench.submit(wf, count=n)
    t_sub = time.monotonic() - t0
    pending = set(ids)
    statuses: dict[int, JobStatus] = {}
    while pending:
        for job in bench.user.jobs(sorted(pending)):
            if job.status in FINAL:
                statuses[job.id] = job.status
                pending.discard(job.id)
        time.sleep(0.5)
    total = time.monotonic() - t0
    done = sum(1 for s in statuses.values() if s is JobStatus.FINISHED)
    results = fetch_outputs(wf, "", bench.work / "sweep-out", bench.s3.client())  # every job's own object
    rows = sorted(float(p.read_text().split()[1]) for p in results.values())
    bill = bench.billed(ids)
    logs = [p for i in ids for p in (bench.work / "grid" / "jobs").glob(f"{i}-*/work/log.lammps")]
    runs = [float(m.group(1)) for p in logs for m in [re.search(r"Loop time of ([0-9.]+)", p.read_text())] if m]
    counts = statistics.multimode([s.name for s in statuses.values()])
    print(f"sweep: {n} LAMMPS simulations as one job array (submitted in {t_sub:.1f} s): {done} FINISHED, "
          f"{len(rows)} result files in the output storage (T {rows[0] if rows else '-'} .. "
          f"{rows[-1] if rows else '-'})")
    for job_id, status in sorted(statuses.items()):
        if status is not JobStatus.FINISHED:
            try:
                err = bench.worker.logs(job_id)[1].read_text()[-500:]
            except (OSError, LookupError, RuntimeError) as e:
                err = f"(no stderr: {e})"
            print(f"  job {job_id} ended {status.name}: {err} {bench.worker.journal.get(job_id)}")
    if runs:
        print(f"  each simulation: median {statistics.median(runs):.2f} s of MD ({len(runs)} logs); most common "
              f"status {counts}")
    print(f"  total time submit -> last final: {total:.1f} s ({total / n:.2f} s per simulation on "
          f"{bench.cluster.cpus} cores)")
    print(f"  total cost: {bill / CREDIT_UNIT:.6f} credits ({bill / n / CREDIT_UNIT:.6f} per simulation at "
          f"{DEFAULT_PRICES.per_cpu_minute / CREDIT_UNIT:g} credits per cpu-minute)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codes", default="lammps,gromacs", help="lammps,gromacs or none")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--sweep", type=int, default=0, help="also run a job array of this many small simulations")
    args = ap.parse_args()
    ensure_md_installed()
    cluster = SlurmCluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="dsq-md-") as tmp:
            bench = Bench(cluster, Path(tmp))
            try:
                codes = [] if args.codes == "none" else args.codes.split(",")
                if codes:
                    plugin = mpi_plugin(cluster)
                    if plugin is None:
                        raise SystemExit("srun --mpi=pmix_v4 does not work on this cluster: install libpmix-dev")
                    md(bench, codes, [int(r) for r in args.ranks.split(",")], args.seconds, plugin)
                if args.sweep:
                    sweep(bench, args.sweep)
            finally:
                bench.close()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
