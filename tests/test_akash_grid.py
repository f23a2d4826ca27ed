"""An Akash SDL through the whole grid: translated, explained before submission, submitted with
``dsq_chain.akash``, placed by the meta-scheduler, run by a provider worker as a container (from a
real ``docker-registry`` on loopback) and settled FINISHED; and a GPU SDL nobody can run is explained
provider by provider instead of locking credits."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from dsq_chain import akash
from dsq_chain.errors import InputError
from dsq_chain.executors import LocalExecutor
from dsq_chain.sdk.anvil import AnvilNode
from dsq_chain.sdk.chain import Chain
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.types import CREDIT_UNIT, JobStatus
from tests.grid import Grid
from tests.oci_fixtures import Registry, busybox_image, container_tools, oci_registry  # noqa: F401  (fixtures)
from tests.worker_scenarios import Rig, cancel_all, new_rig

ROOT = Path(__file__).resolve().parents[1]
CPU_KEY = 5


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
    # The example asks for 1 GB of scratch disk: the cpu provider advertises what it has.
    grid.cpu.set_labels({"zone": "eu", "storage.ephemeral.gb": "100"})
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
        [done] = akash.submit(grid.user, tr, 2 * CREDIT_UNIT)
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
    assert all("step 1 of a parameter sweep" in out and "done" in out for out in outputs), outputs


def test_a_gpu_sdl_nobody_can_run_is_explained_and_not_submitted(grid: Grid, tmp_path: Path) -> None:
    tr = akash.translate_file(ROOT / "examples" / "akash" / "gpu.yml")
    expl = akash.explain(grid.user.wallet, grid.deployment, tr)["train"]
    assert not any(v.placeable for v in expl.verdicts)
    reasons = {v.address: str(v) for v in expl.verdicts}
    assert "gpu" in reasons[grid.gpu.address]  # the A100 provider lacks the vendor label, or the model
    assert "gpus" in reasons[grid.cpu.address] or "gpu" in reasons[grid.cpu.address]
    before = grid.user.credits(grid.user.address)
    with pytest.raises(InputError, match="no approved provider can run service train") as refused:
        akash.submit(grid.user, tr, CREDIT_UNIT)
    assert grid.gpu.address in str(refused.value)  # the explanation, provider by provider
    assert grid.user.credits(grid.user.address) == before
