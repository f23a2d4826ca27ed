"""An Akash SDL through the whole grid: translated, explained before submission, submitted with
``dsq_chain.akash``, placed by the meta-scheduler, run by a provider worker as a container (from a
real ``docker-registry`` on loopback) and settled FINISHED; and a GPU SDL nobody can run is explained
provider by provider instead of locking credits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from dsq_chain import akash, errors
from dsq_chain.akash.grid import workflow_of
from dsq_chain.errors import InputError
from dsq_chain.executors import LocalExecutor
from dsq_chain.sdk.anvil import AnvilNode
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import placement_labels
from dsq_chain.sdk.events import JobSubmitted
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import CREDIT_UNIT, JobStatus, Resources
from dsq_chain.workloads.labels import on_chain
from dsq_chain.workloads.workflow import Workflow
from tests.grid import Grid
from tests.oci_fixtures import Registry, busybox_image, container_tools, oci_registry  # noqa: F401  (fixtures)
from tests.test_scheduler import job_events
from tests.worker_scenarios import Rig, cancel_all, new_rig

ROOT = Path(__file__).resolve().parents[1]
CPU_KEY = 5
#: A real Akash account (from Akash's documentation).
LEASE_OWNER = "akash1365yvmc4s7awdyj3n2sav7xfx76adc6dnmlx63"


def akash_workflow(tr: akash.Translation) -> Workflow:
    return workflow_of(tr.jobs[0])


def _sdl_with_image(name: str, image: str, tmp_path: Path) -> Path:
    """An example SDL with its image pointed at the test registry."""
    doc = yaml.safe_load((ROOT / "examples" / "akash" / name).read_text())
    for svc in doc["services"].values():
        svc["image"] = image
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def test_an_sdl_runs_to_finished_through_the_grid(grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path,
                                                  oci_registry: Registry) -> None:  # noqa: F811
    sdl = _sdl_with_image("batch.yml", f"{oci_registry.host}/test/busybox:1", tmp_path)
    tr = akash.translate_file(sdl)
    assert tr.ok, tr.refused
    # The example asks for 1 GiB of ephemeral storage: 2 GB of scratch disk, which the cpu provider offers.
    assert tr.jobs[0].workflow["resources"]["diskGB"] == 2
    grid.cpu.update_hardware(Resources(8, 0, 16_384, disk_gb=100))
    verdicts = akash.explain(grid.user.wallet, grid.deployment, tr)["sweep"]
    assert grid.cpu.address in {v.address for v in verdicts.verdicts if v.placeable}
    new_executor = lambda: LocalExecutor(tmp_path / "exec", kill_grace_s=1.0)  # noqa: E731
    rig: Rig = new_rig(anvil.rpc_url, keys[CPU_KEY], grid.deployment, grid.user, new_executor, tmp_path / "worker")
    sched = MetaScheduler(Chain(anvil.rpc_url).wallet(keys[1]), grid.deployment, poll_interval=0.05)
    stop = threading.Event()
    threads = [threading.Thread(target=sched.run, args=(stop,), daemon=True),
               threading.Thread(target=rig.worker.run, args=(stop,), daemon=True)]
    for t in threads:
        t.start()
    ids: list[int] = []
    try:
        [done] = akash.submit(grid.user, tr, 2 * CREDIT_UNIT, lease=(LEASE_OWNER, 77))
        ids = done.job_ids
        assert len(ids) == 2  # count: 2 replicas, a job array of two
        jobs = [grid.user.wait_for(job_id, timeout=120) for job_id in ids]
        outputs = [rig.worker.logs(job_id)[0].read_text() for job_id in ids]
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        rig.worker.close()
        cancel_all(new_executor(), ids)
    assert [j.status for j in jobs] == [JobStatus.FINISHED, JobStatus.FINISHED]
    # The lease travels in the submission event: a console finds the jobs of (owner, dseq).
    submitted = [e for e in job_events(grid, "JobSubmitted") if isinstance(e, JobSubmitted)]
    assert akash.parse_lease_ref(submitted[-1].request.external_ref) == (LEASE_OWNER, 77)
    assert all("step 1 of a parameter sweep" in out and "done" in out for out in outputs), outputs


def test_a_gpu_sdl_nobody_can_run_is_explained_and_not_submitted(grid: Grid, tmp_path: Path) -> None:
    tr = akash.translate_file(ROOT / "examples" / "akash" / "gpu.yml")
    expl = akash.explain(grid.user.wallet, grid.deployment, tr)["train"]
    assert not any(v.placeable for v in expl.verdicts)
    reasons = {v.address: str(v) for v in expl.verdicts}
    # the A100 provider has no scratch disk (checked first), nor the vendor label
    assert "disk" in reasons[grid.gpu.address] or "gpu" in reasons[grid.gpu.address]
    assert "gpus" in reasons[grid.cpu.address] or "gpu" in reasons[grid.cpu.address]
    before = grid.user.credits(grid.user.address)
    with pytest.raises(InputError, match="no approved provider can run service train") as refused:
        akash.submit(grid.user, tr, CREDIT_UNIT)
    assert grid.gpu.address in str(refused.value)  # the explanation, provider by provider
    assert grid.user.credits(grid.user.address) == before


def test_a_direct_placement_on_a_provider_without_the_disk_is_refused_before_and_on_chain(grid: Grid) -> None:
    tr = akash.translate_file(ROOT / "examples" / "akash" / "batch.yml")
    grid.cpu.update_hardware(Resources(8, 0, 16_384, disk_gb=100))  # the cpu provider has disk, the gpu one none
    before = grid.user.credits(grid.user.address)
    with pytest.raises(InputError, match="no approved provider can run service sweep") as refused:
        akash.submit(grid.user, tr, CREDIT_UNIT, providers=[grid.gpu.address])
    assert "disk" in str(refused.value)
    assert grid.user.credits(grid.user.address) == before
    # Forced anyway: the chain refuses an assignment to that provider (no disk), and to any other (placement).
    [done] = akash.submit(grid.user, tr, CREDIT_UNIT, providers=[grid.gpu.address], force=True)
    job_id = done.job_ids[0]
    labels = on_chain(akash_workflow(tr).labels) + placement_labels([grid.gpu.address], [])
    with pytest.raises(errors.InsufficientCapacity):
        grid.scheduler.assign(job_id, grid.gpu.address, labels)
    with pytest.raises(errors.ProviderNotAllowed):
        grid.scheduler.assign(job_id, grid.cpu.address, labels)
    assert grid.user.job(job_id).status is JobStatus.PENDING
