"""Prints ``akash corpus: N translate, K run, R refused`` for the SDL corpus and the shipped examples.

Every SDL under ``tests/data/akash`` (public files, see SOURCES) and ``examples/akash`` is translated;
with ``--run`` (the default), each one that translates and asks for no GPU is then run through a
local grid: Anvil, the contracts, one provider with a local-executor worker, the meta-scheduler, and a
``docker-registry`` on loopback holding a busybox image in place of the SDL's own image (the real ones
are not reachable from here). ``--no-run`` only translates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test fixtures' registry and image builder

from dsq_chain import akash  # noqa: E402
from dsq_chain.executors import LocalExecutor  # noqa: E402
from dsq_chain.money import Credits  # noqa: E402
from dsq_chain.sdk.anvil import dev_keys, start_anvil  # noqa: E402
from dsq_chain.sdk.chain import Chain  # noqa: E402
from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient  # noqa: E402
from dsq_chain.sdk.deployment import deploy  # noqa: E402
from dsq_chain.services.scheduler import MetaScheduler  # noqa: E402
from dsq_chain.services.worker import ProviderWorker  # noqa: E402
from dsq_chain.types import JobStatus, Prices, Resources  # noqa: E402
from dsq_chain.workloads.sdl import SdlError, Translation, translate  # noqa: E402


def load_all() -> tuple[list[tuple[Path, Translation]], int]:
    """Translations of every file, and how many could not be read at all."""
    files = sorted((ROOT / "tests" / "data" / "akash").rglob("*.y*ml"))
    files += sorted((ROOT / "examples" / "akash").glob("*.yml"))
    out: list[tuple[Path, Translation]] = []
    unreadable = 0
    for f in files:
        try:
            out.append((f, akash.translate_file(f)))
        except SdlError:
            unreadable += 1
    return out, unreadable


def run_on_grid(translated: list[tuple[Path, Translation]], workdir: Path) -> int:
    """Runs each translated SDL (GPU ones excepted) to a final status; returns how many FINISHED."""
    from tests.oci_fixtures import build_busybox_image, ensure_container_tools, start_registry

    ensure_container_tools()
    registry = start_registry(workdir / "registry")
    node = start_anvil()
    try:
        image = registry.push(build_busybox_image(workdir / "oci"), "bench/busybox:1")
        keys = dev_keys(3)
        chain = Chain(node.rpc_url)
        dep = deploy(chain.wallet(keys[0]))
        admin = AdminClient(chain.wallet(keys[0]), dep)
        admin.grant_scheduler(chain.wallet(keys[1]).address)
        provider = ProviderClient(chain.wallet(keys[2]), dep)
        provider.register(Resources(2, 0, 4096, disk_gb=1000), Prices.from_units(1_000, 10_000, 10), {})
        admin.approve(provider.address)
        user = GridClient(chain.wallet(keys[0]), dep)
        admin.mint(user.address, Credits(10_000))
        worker = ProviderWorker(chain.wallet(keys[2]), dep, LocalExecutor(workdir / "exec"), workdir / "worker")
        sched = MetaScheduler(chain.wallet(keys[1]), dep, poll_interval=0.05)
        stop = threading.Event()
        threads = [threading.Thread(target=sched.run, args=(stop,), daemon=True),
                   threading.Thread(target=worker.run, args=(stop,), daemon=True)]
        for t in threads:
            t.start()
        finished = 0
        try:
            for path, tr in translated:
                runnable = translate(_with_image(_as_doc(tr), image), tr.source)
                if any(j.workflow["resources"]["gpus"] for j in runnable.jobs):
                    continue
                done = akash.submit(user, runnable, Credits(1))
                statuses = [user.wait_for(i, timeout=120).status for d in done for i in d.job_ids]
                ok = all(s is JobStatus.FINISHED for s in statuses)
                finished += ok
                print(f"  {path.relative_to(ROOT)}: {', '.join(s.name for s in statuses)}")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            worker.close()
        return finished
    finally:
        node.stop()
        registry.stop()


def _as_doc(tr: Translation) -> dict[str, object]:
    import yaml

    return dict(yaml.safe_load(Path(tr.source).read_text()))


def _with_image(doc: dict[str, object], image: str) -> dict[str, object]:
    services = doc["services"]
    assert isinstance(services, dict)
    for svc in services.values():
        svc["image"] = image
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-run", action="store_true", help="translate only")
    args = p.parse_args(argv)
    translated, unreadable = load_all()
    ok = [(f, tr) for f, tr in translated if tr.ok]
    refused = len(translated) - len(ok) + unreadable
    reasons = Counter(why.split(":")[0] for _, tr in translated for why in tr.refused.values())
    run = 0
    if ok and not args.no_run:
        with tempfile.TemporaryDirectory(prefix="dsq-akash-") as d:
            run = run_on_grid(ok, Path(d))
    total = len(translated) + unreadable
    print(f"akash corpus: {len(ok)} translate, {run} run, {refused} refused (of {total} SDL files; "
          f"{unreadable} unreadable)")
    print("most common refusals: " + "; ".join(f"{n} x {r}" for r, n in reasons.most_common(5)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
