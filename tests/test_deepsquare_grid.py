"""DeepSquare workflows through the whole grid: submit, meta-scheduler, provider worker, executor, chain.

One workflow holds a container step (a busybox image from a real ``docker-registry``), a parallel
``for`` loop, a ``launch``/``dependsOn`` pair, ``catch``/``finally``, a 2-rank MPI step (mpi4py)
and S3 output (a real S3-protocol server, moto, on loopback); it must reach FINISHED and its
outputs must be in the bucket. Two more jobs show the documented statuses: a failing step inside
``catch`` and a failing ``finally`` end FAILED with their own exit codes. Both executors: local
processes and a real one-node Slurm.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dsq_chain.executors import Executor, LocalExecutor, SlurmExecutor
from dsq_chain.sdk.anvil import AnvilNode
from dsq_chain.sdk.chain import Chain
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import CREDIT_UNIT, JobStatus
from dsq_chain.workloads import workflow as wfm
from tests.apt import AptUnavailable, ensure_packages
from tests.grid import Grid
from tests.oci_fixtures import Registry, busybox_image, container_tools, oci_registry  # noqa: F401  (fixtures)
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)
from tests.storage_fixtures import S3Server, s3_server  # noqa: F401  (the fixture)
from tests.worker_scenarios import Rig, cancel_all, new_rig, settlement, submit

CPU_KEY = 5
BIG = 20 * CREDIT_UNIT
SYSTEM_PYTHON = "/usr/bin/python3"
MPI_HELLO = (
    "from mpi4py import MPI; import os; c = MPI.COMM_WORLD; r = c.Get_rank(); "
    "open(os.environ['DEEPSQUARE_OUTPUT'] + f'/mpi.{r}', 'w').write(f'{r} of {c.Get_size()} sum {c.allreduce(r + 1)}')"
)


def _mpi4py_present() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import mpi4py"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def mpi4py() -> None:
    try:
        ensure_packages(["python3-mpi4py", "openmpi-bin"], _mpi4py_present)
    except AptUnavailable as exc:
        pytest.skip(str(exc))


def full_workflow(registry: Registry, s3: S3Server, bucket: str) -> dict[str, Any]:
    return {
        "resources": {"tasks": 2, "cpusPerTask": 1, "memPerCpu": 128, "gpus": 0},
        "labels": ["zone == eu"],  # the grid's cpu provider, the one with a worker here
        "enableLogging": True,
        "env": [{"key": "WHO", "value": "grid"}],
        "output": {"s3": {**s3.workflow_s3(bucket), "path": "/results"}},
        "steps": [
            {
                "name": "background",
                "launch": {
                    "handleName": "bg",
                    "steps": [{"run": {"command": 'sleep 1; echo done > "$DEEPSQUARE_OUTPUT/bg.txt"'}}],
                },
            },
            {
                "name": "in a container",
                "run": {
                    "command": "if [ -e /etc/debian_version ]; then w=host; else w=container; fi; "
                    'echo "hello $WHO from the $w" > "$DEEPSQUARE_OUTPUT/container.txt"',
                    "container": {"image": "test/busybox:1", "registry": registry.host},
                },
            },
            {
                "name": "loop",
                "for": {
                    "parallel": True,
                    "range": {"begin": 1, "end": 3},
                    "steps": [{"run": {"command": 'echo "$index" > "$DEEPSQUARE_OUTPUT/it.$index"'}}],
                },
            },
            {
                "name": "wait for the background",
                "dependsOn": ["bg"],
                "run": {"command": 'test -s "$DEEPSQUARE_OUTPUT/bg.txt"'},
            },
            {
                "name": "mpi",
                "run": {"command": f'{SYSTEM_PYTHON} -c "{MPI_HELLO}"', "resources": {"tasks": 2}, "mpi": "pmix_v4"},
            },
            {
                "name": "guarded",
                "run": {"command": "exit 3"},
                "catch": [
                    {"run": {"command": 'echo "caught $DEEPSQUARE_ERROR_CODE" > "$DEEPSQUARE_OUTPUT/catch.txt"'}}
                ],
                "finally": [{"run": {"command": 'echo finally > "$DEEPSQUARE_OUTPUT/finally.txt"'}}],
            },
        ],
    }


def _small(step: dict[str, Any]) -> wfm.Workflow:
    doc = {"resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 128}, "labels": ["zone == eu"], "steps": [step]}
    return wfm.loads(json.dumps(doc))


FAILING_CATCH = {"run": {"command": "exit 4"}, "catch": [{"run": {"command": "exit 6"}}]}
FAILING_FINALLY = {"run": {"command": "true"}, "finally": [{"run": {"command": "exit 5"}}]}
EXPECTED = {
    "results/container.txt": "hello grid from the container\n",
    "results/it.1": "1\n",
    "results/it.2": "2\n",
    "results/it.3": "3\n",
    "results/bg.txt": "done\n",
    "results/mpi.0": "0 of 2 sum 3",
    "results/mpi.1": "1 of 2 sum 3",
    "results/catch.txt": "caught 3\n",
    "results/finally.txt": "finally\n",
}


def run_through_grid(
    grid: Grid,
    anvil: AnvilNode,
    keys: list[str],
    tmp_path: Path,
    new_executor: Callable[[], Executor],
    registry: Registry,
    s3: S3Server,
) -> None:
    bucket = "dsq-grid-results"
    s3.client().create_bucket(Bucket=bucket)
    rig: Rig = new_rig(anvil.rpc_url, keys[CPU_KEY], grid.deployment, grid.user, new_executor, tmp_path / "worker")
    sched = MetaScheduler(Chain(anvil.rpc_url).wallet(keys[1]), grid.deployment, poll_interval=0.05)
    stop = threading.Event()
    threads = [
        threading.Thread(target=sched.run, args=(stop,), daemon=True),
        threading.Thread(target=rig.worker.run, args=(stop,), daemon=True),
    ]
    for t in threads:
        t.start()
    ids: list[int] = []
    try:
        ids += submit(grid.user, wfm.loads(json.dumps(full_workflow(registry, s3, bucket))), BIG)
        ids += submit(grid.user, _small(FAILING_CATCH), BIG)
        ids += submit(grid.user, _small(FAILING_FINALLY), BIG)
        jobs = [grid.user.wait_for(job_id, timeout=180) for job_id in ids]
        stderr = rig.worker.logs(ids[0])[1].read_text()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        rig.worker.close()
        cancel_all(new_executor(), ids)
    assert jobs[0].status is JobStatus.FINISHED, stderr[-3000:]
    objects = s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    found = {o["Key"]: s3.client().get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode() for o in objects}
    assert found == EXPECTED
    assert [(j.status, settlement(grid.user, j.id)["exitCode"]) for j in jobs[1:]] == [
        (JobStatus.FAILED, 6),  # a failing step inside catch: the catch's status
        (JobStatus.FAILED, 5),  # a failing finally: its status
    ]


@pytest.mark.parametrize(
    "engine",
    ["local", pytest.param("slurm", marks=[pytest.mark.slurm, pytest.mark.xdist_group("slurm")])],
)
def test_deepsquare_workflow_through_the_grid(
    engine: str,
    request: pytest.FixtureRequest,
    grid: Grid,
    anvil: AnvilNode,
    keys: list[str],
    tmp_path: Path,
    oci_registry: Registry,  # noqa: F811
    s3_server: S3Server,  # noqa: F811
    mpi4py: None,
) -> None:
    """The same workflow and statuses on local processes and on a real one-node Slurm."""
    new_executor: Callable[[], Executor]
    if engine == "slurm":
        cluster: SlurmCluster = request.getfixturevalue("slurm_cluster")
        root = tmp_path / "slurm"
        new_executor = lambda: SlurmExecutor(root, slurm_conf=cluster.conf, command_timeout_s=10)  # noqa: E731
    else:
        root = tmp_path / "exec"
        new_executor = lambda: LocalExecutor(root, kill_grace_s=1.0)  # noqa: E731
    run_through_grid(grid, anvil, keys, tmp_path, new_executor, oci_registry, s3_server)
