"""What a provider really has: hardware detection and the seconds-long self-check that backs its labels.

A provider advertises cores, memory, GPUs and labels; the grid only trusts what this module measured.
:func:`self_check` reads the engine's capacity (:meth:`Executor.capacity`: ``sinfo`` on Slurm, the
cgroup-limited CPUs and memory locally), the free disk of the file system that holds the job folders,
the GPUs ``nvidia-smi`` lists, the CPU model, and times three small benchmarks (a few tenths of a
second each): SHA-256 throughput of one core, memory copy bandwidth and disk write throughput with
``fsync``. :func:`standard_labels` turns the result into the labels every provider carries
(``cpu.model``, ``gpu.model``, ``gpu.vendor``, ``storage.persistent.gb``, ``region``, and the
``bench.*`` figures), and :func:`verify_offer` refuses an offer that claims more than was measured.

``python -m dsq_chain.executors.hardware bench DIR`` prints the benchmarks as JSON: a Slurm provider runs
it inside ``srun`` so that the figures are those of a compute node, not of the login node.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dsq_chain.errors import InputError
from dsq_chain.executors.base import CommandError, Executor, ExecutorError, run_command
from dsq_chain.executors.slurm import SlurmExecutor
from dsq_chain.types import Resources
from dsq_chain.workloads.labels import MAX_VALUE_BYTES, parse_labels

__all__ = [
    "MEASURED_LABELS",
    "Benchmarks",
    "Gpu",
    "HardwareReport",
    "SlurmNode",
    "cpu_model",
    "detect_engine",
    "gpus",
    "gres_gpus",
    "offerable",
    "parse_gpu_line",
    "run_benchmarks",
    "scontrol_nodes",
    "self_check",
    "standard_labels",
    "verify_offer",
]

#: Labels whose value comes from the self-check: an offer may not claim another value (or, for numbers, more).
MEASURED_LABELS = ("cpu.model", "gpu.model", "gpu.vendor", "gpu.count", "storage.persistent.gb", "storage.ephemeral.gb",
                   "bench.cpu.sha256.mbps", "bench.mem.copy.mbps", "bench.disk.write.mbps")
_NUMERIC_LABELS = frozenset({"gpu.count", "storage.persistent.gb", "storage.ephemeral.gb", "bench.cpu.sha256.mbps",
                             "bench.mem.copy.mbps",
                             "bench.disk.write.mbps"})
_CPU_NOISE_RE = re.compile(r"\((?:R|TM|tm|r)\)|\bCPU\b|\bProcessor\b|@.*$|\d+-Core\b|\bwith\b.*$")


@dataclass(frozen=True)
class Gpu:
    """One GPU as ``nvidia-smi`` reports it."""

    vendor: str
    model: str
    mem_mb: int


@dataclass(frozen=True)
class Benchmarks:
    """The self-check figures (each measured for a fraction of a second)."""

    cpu_sha256_mbps: int
    """SHA-256 throughput of one core, MB/s."""
    mem_copy_mbps: int
    """Memory copy bandwidth (read + write of a 64 MB buffer), MB/s."""
    disk_write_mbps: int
    """Sequential write with fsync to the job folder's file system, MB/s."""
    seconds: float
    """Wall time of the three benchmarks together."""
    where: str = "here"
    """Where they ran: ``here`` or ``srun`` (a compute node)."""


@dataclass(frozen=True)
class SlurmNode:
    """One node of ``scontrol show nodes``."""

    name: str
    cpus: int
    mem_mb: int
    gres: str
    state: str
    features: str = ""


@dataclass(frozen=True)
class HardwareReport:
    """Everything the self-check measured."""

    engine: str
    capacity: Resources
    cpu_model: str
    gpus: tuple[Gpu, ...]
    job_dir: str
    disk_free_gb: int
    benchmarks: Benchmarks
    nodes: tuple[SlurmNode, ...] = field(default_factory=tuple)

    def to_data(self) -> dict[str, object]:
        data = asdict(self)
        data["capacity"] = {"cpus": self.capacity.cpus, "gpus": self.capacity.gpus, "mem_mb": self.capacity.mem_mb}
        return data


# ------------------------------------------------------------------------------------------ detection
def cpu_model(cpuinfo: str | None = None) -> str:
    """This machine's CPU model, shortened to fit one label (``Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz`` →
    ``Intel Xeon Gold 6248``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    raw = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model", "Processor") and value.strip():
            raw = value.strip()
            break
    if not raw:
        import platform

        raw = platform.processor() or platform.machine() or "unknown"
    return short_label(_CPU_NOISE_RE.sub(" ", raw)) or short_label(raw)


def short_label(text: str) -> str:
    """``text`` as a label value: printable, single spaces, at most 32 bytes."""
    clean = " ".join("".join(c for c in text if c.isprintable()).split())
    while len(clean.encode()) > MAX_VALUE_BYTES:
        clean = clean[:-1].rstrip()
    return clean


def gpus(timeout: float = 15.0) -> tuple[Gpu, ...]:
    """The NVIDIA GPUs ``nvidia-smi`` lists (model and memory); none without ``nvidia-smi``."""
    try:
        proc = run_command(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                           timeout=timeout, check=False)
    except CommandError:
        return ()
    if proc.returncode != 0:
        return ()
    return tuple(parse_gpu_line(line) for line in proc.stdout.splitlines() if line.strip())


def parse_gpu_line(line: str) -> Gpu:
    """One line of ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``, the model named
    as Akash providers name it (``capabilities/gpu/vendor/nvidia/model/a100``) so that SDL constraints match:
    ``NVIDIA A100-SXM4-80GB`` → ``a100``, ``NVIDIA GeForce RTX 3090`` → ``rtx3090``, ``NVIDIA RTX A6000`` →
    ``rtxa6000``."""
    name, _, mem = line.rpartition(",")
    if not name:
        name, mem = mem, ""
    kept = []
    for token in re.split(r"[\s-]+", name.strip()):
        if re.fullmatch(r"(?i)nvidia|tesla|geforce|quadro", token):
            continue
        if re.fullmatch(r"(?i)\d+gb|pcie|sxm\d*|hbm\d*e?|nvl|mig.*|\(.*\)", token):
            break
        kept.append(token.lower())
    digits = re.match(r"\s*(\d+)", mem)
    return Gpu("nvidia", short_label("".join(kept)) or "unknown", int(digits.group(1)) if digits else 0)


def gres_gpus(nodes: tuple[SlurmNode, ...]) -> tuple[Gpu, ...]:
    """GPUs that Slurm nodes declare with a type (``Gres=gpu:a100:4``): the login node running the self-check
    often has no ``nvidia-smi`` of its own."""
    found = []
    for node in nodes:
        for kind, count in re.findall(r"(?:^|,)gpu:([A-Za-z][^:,(]*):(\d+)", node.gres):
            model = short_label(re.sub(r"[^a-z0-9]", "", kind.lower())) or "unknown"
            vendor = "amd" if model.startswith(("mi", "radeon")) else "nvidia"
            found += [Gpu(vendor, model, 0)] * int(count)
    return tuple(found)


def scontrol_nodes(text: str) -> tuple[SlurmNode, ...]:
    """The nodes of ``scontrol show nodes -o`` output (one node a line)."""
    nodes = []
    for line in text.splitlines():
        fields: dict[str, str] = {m.group(1): m.group(2) for m in re.finditer(r"(\w+)=(\S*)", line)}
        if "NodeName" not in fields:
            continue
        nodes.append(SlurmNode(fields["NodeName"], _int(fields.get("CPUTot", "0")), _int(fields.get("RealMemory", "0")),
                               fields.get("Gres", ""), fields.get("State", ""), fields.get("AvailableFeatures", "")))
    return tuple(nodes)


def detect_engine(slurm_conf: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> tuple[str, str]:
    """``("slurm", why)`` when ``scontrol show nodes`` answers with at least one node, else ``("local", why)``."""
    if shutil.which("scontrol") is None:
        return "local", "no scontrol on PATH: jobs run as local processes"
    env = dict(os.environ)
    if slurm_conf:
        env["SLURM_CONF"] = str(slurm_conf)
    try:
        proc = run_command(["scontrol", "show", "nodes", "-o"], timeout=timeout, env=env, check=False)
    except CommandError as e:
        return "local", f"scontrol failed ({e}): jobs run as local processes"
    nodes = scontrol_nodes(proc.stdout)
    if proc.returncode != 0 or not nodes:
        why = (proc.stderr.strip() or "no nodes").splitlines()[0]
        return "local", f"scontrol show nodes: {why}: jobs run as local processes"
    return "slurm", f"scontrol show nodes lists {len(nodes)} node(s): {', '.join(n.name for n in nodes[:5])}"


# ------------------------------------------------------------------------------------------ benchmarks
def run_benchmarks(directory: str | os.PathLike[str], *, budget_s: float = 0.3) -> Benchmarks:
    """Times SHA-256, memory copy and an fsync'd write into ``directory`` (each about ``budget_s`` seconds)."""
    t0 = time.perf_counter()
    block = os.urandom(1 << 20)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        for _ in range(8):
            hashlib.sha256(block).digest()
        done += 8
    sha = done / (time.perf_counter() - start)

    buf = bytearray(64 << 20)
    dst = bytearray(len(buf))
    copies, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s or copies < 2:
        dst[:] = buf
        copies += 1
    mem = copies * 2 * len(buf) / (1 << 20) / (time.perf_counter() - start)  # read + write
    del buf, dst

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f".dsq-selfcheck-{os.getpid()}"
    chunk = os.urandom(4 << 20)
    written, start = 0, time.perf_counter()
    try:
        with open(path, "wb") as fh:
            while written < (16 << 20) or (time.perf_counter() - start < budget_s and written < (256 << 20)):
                fh.write(chunk)
                written += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        disk = written / (1 << 20) / (time.perf_counter() - start)
    finally:
        path.unlink(missing_ok=True)
    return Benchmarks(int(sha), int(mem), int(disk), round(time.perf_counter() - t0, 2))


def _benchmarks_in_srun(executor: Executor, directory: Path, timeout: float) -> Benchmarks | None:
    """The benchmarks on a compute node (``srun -n1``), or None when that fails."""
    if not isinstance(executor, SlurmExecutor):
        return None
    try:
        proc = executor.run("srun", "-n1", "-c1", "-J", "dsq-selfcheck", sys.executable, "-m",
                            "dsq_chain.executors.hardware", "bench", str(directory), check=False, timeout=timeout)
    except CommandError:
        return None
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        return Benchmarks(**{**data, "where": "srun"})
    except (ValueError, TypeError, IndexError):
        return None


def self_check(executor: Executor, job_dir: str | os.PathLike[str], *, budget_s: float = 0.3,
               timeout: float = 60.0) -> HardwareReport:
    """Measures what ``executor`` can offer, with ``job_dir`` the folder its jobs' files live in."""
    try:
        capacity = executor.capacity()
    except (ExecutorError, OSError) as e:
        raise ExecutorError(f"the {executor.name} executor cannot report its hardware: {e}") from e
    d = Path(job_dir)
    d.mkdir(parents=True, exist_ok=True)
    bench = None
    nodes: tuple[SlurmNode, ...] = ()
    if isinstance(executor, SlurmExecutor):
        bench = _benchmarks_in_srun(executor, d, timeout)
        try:
            nodes = scontrol_nodes(executor.run("scontrol", "show", "nodes", "-o", check=False).stdout)
        except CommandError:
            nodes = ()
    if bench is None:
        bench = run_benchmarks(d, budget_s=budget_s)
    found = gpus() or gres_gpus(nodes)
    return HardwareReport(executor.name, capacity, cpu_model(), found, str(d.resolve()),
                          shutil.disk_usage(d).free // 10**9, bench, nodes)


# ------------------------------------------------------------------------------------------ labels
def standard_labels(report: HardwareReport, region: str | None = None) -> dict[str, str]:
    """The labels the self-check backs (GPU labels only where GPUs were found; ``region`` as given)."""
    labels = {
        "cpu.model": report.cpu_model,
        "storage.persistent.gb": str(report.disk_free_gb),
        "storage.ephemeral.gb": str(report.disk_free_gb),
        "bench.cpu.sha256.mbps": str(report.benchmarks.cpu_sha256_mbps),
        "bench.mem.copy.mbps": str(report.benchmarks.mem_copy_mbps),
        "bench.disk.write.mbps": str(report.benchmarks.disk_write_mbps),
    }
    if report.gpus:
        labels["gpu.vendor"] = report.gpus[0].vendor
        labels["gpu.model"] = report.gpus[0].model
        labels["gpu.count"] = str(len(report.gpus))
    if region:
        labels["region"] = region
    return parse_labels(labels)


def offerable(executor: Executor, hardware: Resources | None = None) -> Resources:
    """The hardware to register: ``hardware`` (default: all the executor detects); raises InputError when it
    is more than the executor detects."""
    detected = executor.capacity()
    hw = hardware or detected
    if not hw.fits_in(detected):
        raise InputError(
            f"refusing to register {hw.cpus} cpus, {hw.gpus} gpus, {hw.mem_mb} MB: the {executor.name} "
            f"executor detects {detected.cpus} cpus, {detected.gpus} gpus, {detected.mem_mb} MB"
        )
    return hw


def verify_offer(hardware: Resources, labels: Mapping[str, str], report: HardwareReport) -> list[str]:
    """Why an offer claims more than was measured (empty: it does not)."""
    problems = []
    cap = report.capacity
    for what, offered, has in (("cpus", hardware.cpus, cap.cpus), ("gpus", hardware.gpus, cap.gpus),
                               ("memory MB", hardware.mem_mb, cap.mem_mb)):
        if offered > has:
            problems.append(f"{what}: offers {offered}, the {report.engine} engine has {has}")
    measured = standard_labels(report)
    for key in MEASURED_LABELS:
        if key not in labels:
            continue
        claimed = labels[key]
        if key not in measured:
            problems.append(f"label {key}={claimed}: the self-check found none")
        elif key in _NUMERIC_LABELS:
            if not claimed.isdigit() or int(claimed) > int(measured[key]):
                problems.append(f"label {key}={claimed}: measured {measured[key]}")
        elif claimed != measured[key]:
            problems.append(f"label {key}={claimed}: measured {measured[key]}")
    return problems


def _int(text: str) -> int:
    m = re.match(r"\d+", text.strip())
    return int(m.group(0)) if m else 0


def _main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "bench":
        print("usage: python -m dsq_chain.executors.hardware bench DIR", file=sys.stderr)
        return 2
    print(json.dumps(asdict(run_benchmarks(argv[1]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))

