"""Container and storage transfer costs on this machine, each figure beside its target.

    .venv/bin/python benchmarks/containers.py [--runs 10] [--files 200] [--size-kib 64]

Starts what the tests start (a ``docker-registry`` on loopback holding the busybox test image,
``moto_server`` for S3; installing the Debian packages with apt-get when missing, as root) and
measures through the command lines a job's script uses:

* first run of an image: digest lookup, pull, unpack and run ``true`` (fresh cache);
* a cached run: the per-step overhead of ``containers run`` (one digest lookup + bubblewrap);
* four concurrent first runs of one image (one pull, three waiting on the lock);
* S3 push and fetch of ``--files`` files of ``--size-kib`` KiB against moto.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.oci_fixtures import build_busybox_image, ensure_container_tools, start_registry
from tests.slurm_cluster import free_port

CONTAINERS = [sys.executable, "-m", "dsq_chain.executors.containers"]
STORAGE = [sys.executable, "-m", "dsq_chain.executors.storage"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def line(what: str, value: str, target: str, ok: bool) -> None:
    print(f"{what:<52} {value:>12}   target {target:<10} {'ok' if ok else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--size-kib", type=int, default=64)
    args = ap.parse_args()
    ensure_container_tools()
    work = Path(tempfile.mkdtemp(prefix="dsq-bench-containers-"))
    registry = start_registry(work / "registry")
    moto = None
    try:
        image = registry.push(build_busybox_image(work / "layout"), "bench/busybox:1")
        env = dict(os.environ, DSQ_IMAGE_CACHE=str(work / "cache"))
        run = [*CONTAINERS, "run", "--image", image, "--", "/bin/true"]

        first = timed(run, env)
        line("first run (digest, pull, unpack, run true)", f"{first:.2f} s", "< 5 s", first < 5)
        cached = [timed(run, env) for _ in range(args.runs)]
        med = statistics.median(cached)
        line(f"cached run, median of {args.runs}", f"{med * 1000:.0f} ms", "< 500 ms", med < 0.5)

        env4 = dict(env, DSQ_IMAGE_CACHE=str(work / "cache4"))
        t0 = time.perf_counter()
        procs = [subprocess.Popen(run, env=env4, stdout=subprocess.DEVNULL) for _ in range(4)]
        codes = [p.wait() for p in procs]
        four = time.perf_counter() - t0
        pulls = len((work / "cache4" / "pulls.log").read_text().splitlines())
        line("4 concurrent first runs of one image", f"{four:.2f} s", "< 8 s", four < 8 and codes == [0] * 4)
        line("  pulls made by those 4 runs", str(pulls), "1", pulls == 1)

        port = free_port()
        moto_bin = Path(sys.executable).parent / "moto_server"
        moto = subprocess.Popen(
            [str(moto_bin), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        s3env = dict(
            env,
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        import boto3

        deadline = time.monotonic() + 60
        while True:
            try:
                client = boto3.client(
                    "s3",
                    endpoint_url=s3env["AWS_ENDPOINT_URL"],
                    region_name="us-east-1",
                    aws_access_key_id="bench",
                    aws_secret_access_key="bench",
                )
                client.create_bucket(Bucket="bench")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        out = work / "output"
        out.mkdir()
        payload = os.urandom(args.size_kib * 1024)
        for i in range(args.files):
            (out / f"f{i:04d}.bin").write_bytes(payload)
        total_mb = args.files * args.size_kib / 1024
        push = timed([*STORAGE, "push", str(out), "s3://bench/run/"], s3env)
        line(f"S3 push {args.files} x {args.size_kib} KiB ({total_mb:.1f} MiB)", f"{push:.2f} s", "< 20 s", push < 20)
        again = timed([*STORAGE, "push", str(out), "s3://bench/run/"], s3env)
        line("S3 push again, nothing changed", f"{again:.2f} s", "< 3 s", again < 3)
        fetch = timed([*STORAGE, "fetch", "s3://bench/run/", str(work / "input")], s3env)
        line(f"S3 fetch {args.files} files", f"{fetch:.2f} s", "< 20 s", fetch < 20)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
