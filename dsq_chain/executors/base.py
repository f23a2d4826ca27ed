"""The interface between a provider's worker and the engine that runs its jobs.

The worker only ever talks to :class:`Executor`: it renders a job's workflow
into a bash script, wraps it in an :class:`ExecSpec`, calls :meth:`Executor.submit`,
journals the returned executor job id, polls :meth:`Executor.status` and maps
the final :class:`ExecState` to an on-chain outcome with :func:`map_to_chain`.

Executors keep their own state outside the worker's memory (files under a
state directory, the Slurm controller, ...): a worker killed with ``kill -9``
and restarted builds a new executor on the same state and finds, polls,
cancels and extends the jobs the previous process started.

Adding an engine (Kubernetes, a cloud batch service) means subclassing
:class:`Executor` and registering it with
:func:`dsq_chain.executors.register_executor`; the worker does not change.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from dsq_chain.types import JobStatus, Resources

#: Environment variable names accepted in :attr:`ExecSpec.env`.
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

#: Variables of the executor's own environment that jobs inherit. Everything
#: else (private keys, RPC tokens, ...) of the worker's environment is *not*
#: passed to the untrusted job.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "USER", "LOGNAME", "SHELL")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class ExecState(StrEnum):
    """State of a job in an executor (a superset, named after Slurm's)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    UNKNOWN = "UNKNOWN"

    @property
    def is_final(self) -> bool:
        """True once the job has ended; the state then never changes."""
        return self not in _NON_FINAL


_NON_FINAL = frozenset({ExecState.PENDING, ExecState.RUNNING, ExecState.UNKNOWN})

_CHAIN_OUTCOME: dict[ExecState, JobStatus | None] = {
    ExecState.PENDING: None,
    ExecState.RUNNING: None,
    ExecState.UNKNOWN: None,
    ExecState.COMPLETED: JobStatus.FINISHED,
    ExecState.FAILED: JobStatus.FAILED,
    # The user asked for too little memory: their fault, billed like a failure.
    ExecState.OUT_OF_MEMORY: JobStatus.FAILED,
    # The escrow bought this much time and the job used all of it.
    ExecState.TIMEOUT: JobStatus.OUT_OF_CREDITS,
    ExecState.CANCELLED: JobStatus.CANCELED,
    # Provider-side faults: the owner is refunded, the provider is paid nothing.
    ExecState.NODE_FAIL: JobStatus.PANICKED,
    ExecState.BOOT_FAIL: JobStatus.PANICKED,
    ExecState.PREEMPTED: JobStatus.PANICKED,
}


def map_to_chain(state: ExecState) -> JobStatus | None:
    """The on-chain outcome of a job that ended in ``state``; ``None`` while it has not ended.

    ================  ==================  ===========================================
    ExecState         chain JobStatus     why
    ================  ==================  ===========================================
    COMPLETED         FINISHED            exit code 0
    FAILED            FAILED              non-zero exit code / killed by a signal
    OUT_OF_MEMORY     FAILED              the user asked for too little memory
    TIMEOUT           OUT_OF_CREDITS      the time the escrow bought ran out
    CANCELLED         CANCELED            see note below
    NODE_FAIL         PANICKED            provider-side fault: owner refunded
    BOOT_FAIL         PANICKED            provider-side fault: owner refunded
    PREEMPTED         PANICKED            provider-side decision: owner refunded
    PENDING/RUNNING   None                not final
    UNKNOWN           None                not final: the worker decides (retry, then panic)
    ================  ==================  ===========================================

    Note: only the owner can cancel on chain. A ``CANCELLED`` job the worker did
    not cancel itself (an operator's ``scancel``) is a provider-side fault that
    the worker should report as ``PANICKED``.
    """
    return _CHAIN_OUTCOME[state]


@dataclass(frozen=True)
class ExecSpec:
    """What to run, with which resources, for how long.

    ``mem_per_cpu_mb`` may be 0: no memory request (the engine's default applies).
    ``env`` is copied into a read-only mapping; names must be shell identifiers.
    """

    job_id: int
    """The chain job id."""
    script: str
    """A complete bash script, already rendered from the workflow."""
    tasks: int
    cpus_per_task: int
    mem_per_cpu_mb: int
    gpus: int
    time_limit_s: int
    """Hard limit in seconds, >= 1 (Slurm rounds it up to whole minutes)."""
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Extra environment; the executor also sets DSQ_JOB_ID, DSQ_TASKS, ..."""

    def __post_init__(self) -> None:
        checks = (
            (self.job_id >= 0, "job_id must be >= 0"),
            (self.tasks >= 1, "tasks must be >= 1"),
            (self.cpus_per_task >= 1, "cpus_per_task must be >= 1"),
            (self.mem_per_cpu_mb >= 0, "mem_per_cpu_mb must be >= 0"),
            (self.gpus >= 0, "gpus must be >= 0"),
            (self.time_limit_s >= 1, "time_limit_s must be >= 1"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"ExecSpec for job {self.job_id}: {message}")
        if "\0" in self.script:
            raise ValueError(f"ExecSpec for job {self.job_id}: script contains a NUL byte")
        env = dict(self.env)
        for name, value in env.items():
            if not ENV_NAME_RE.match(name):
                raise ValueError(f"ExecSpec for job {self.job_id}: invalid environment variable name {name!r}")
            if not isinstance(value, str) or "\0" in value:
                raise ValueError(
                    f"ExecSpec for job {self.job_id}: environment variable {name} must be a str without NUL"
                )
        object.__setattr__(self, "env", MappingProxyType(env))

    @property
    def resources(self) -> Resources:
        """The job's totals, as the chain counts them."""
        cpus = self.tasks * self.cpus_per_task
        return Resources(cpus=cpus, gpus=self.gpus, mem_mb=cpus * self.mem_per_cpu_mb)

    def job_env(self) -> dict[str, str]:
        """:attr:`env` plus the ``DSQ_*`` variables every executor sets (those win over :attr:`env`)."""
        env = dict(self.env)
        env.update(
            DSQ_JOB_ID=str(self.job_id),
            DSQ_TASKS=str(self.tasks),
            DSQ_CPUS_PER_TASK=str(self.cpus_per_task),
            DSQ_MEM_PER_CPU=str(self.mem_per_cpu_mb),
            DSQ_GPUS=str(self.gpus),
        )
        return env


@dataclass(frozen=True)
class ExecStatus:
    """What an executor knows about one job."""

    state: ExecState
    exit_code: int | None
    """The script's exit status; 128+N when killed by signal N; None when unknown/not ended."""
    started: bool
    """True once the work actually began running (False for a job cancelled while pending)."""
    reason: str = ""
    """Human-readable detail (engine state, reason, signal)."""
    ended_at: float | None = None
    """Unix time the engine saw the job end (the local supervisor's exit time); None when not ended or not known."""

    @property
    def final(self) -> bool:
        return self.state.is_final

    @property
    def chain_status(self) -> JobStatus | None:
        """Shortcut for :func:`map_to_chain` of :attr:`state`."""
        return map_to_chain(self.state)


class ExecutorError(RuntimeError):
    """An executor could not do what was asked; the message says what and why."""


class JobNotFoundError(ExecutorError):
    """The executor has no record of this executor job id."""


class CommandError(ExecutorError):
    """An external command (``sbatch``, ``scontrol``, ...) failed or timed out."""

    def __init__(self, cmd: list[str], returncode: int | None, stderr: str, detail: str = "") -> None:
        self.cmd = cmd
        self.returncode = returncode
        self.stderr = stderr
        shown = " ".join(cmd)
        what = detail or f"exited with code {returncode}"
        super().__init__(f"`{shown}` {what}: {stderr.strip() or '(no stderr)'}")


class Executor(ABC):
    """Runs jobs on one engine. Implementations must keep no essential state in memory."""

    #: Registry name (``"local"``, ``"slurm"``, ...).
    name: str = ""

    @abstractmethod
    def submit(self, spec: ExecSpec) -> str:
        """Start (or queue) a job; returns the executor job id, which the worker journals.

        Each call starts a new execution; :meth:`find` recovers the ids of a chain
        job's executions if the worker died between ``submit`` and its journal write.
        """

    @abstractmethod
    def status(self, exec_id: str) -> ExecStatus:
        """Current state of a job; raises :class:`JobNotFoundError` for ids it never issued."""

    @abstractmethod
    def cancel(self, exec_id: str) -> None:
        """Kill the job (all its processes); no error if it already ended or is unknown."""

    @abstractmethod
    def extend(self, exec_id: str, new_time_limit_s: int) -> None:
        """Set a new absolute time limit (seconds since start) of a pending/running job; no-op once it ended."""

    @abstractmethod
    def logs(self, exec_id: str) -> tuple[Path, Path]:
        """Paths of the job's stdout and stderr (they may not exist before the job starts)."""

    @abstractmethod
    def capacity(self) -> Resources:
        """The hardware this executor can run jobs on, as detected (not as configured by hand)."""

    @abstractmethod
    def features(self) -> frozenset[str]:
        """What it supports, e.g. ``{"gpus"}`` only when GPUs are detected."""

    @abstractmethod
    def find(self, job_id: int) -> list[str]:
        """Executor job ids of every execution of chain job ``job_id`` known to this executor, oldest first."""


# --- helpers shared by the implementations -------------------------------------------------


def deepsquare_env(work: Path, cache: Path, uid: int) -> dict[str, str]:
    """The storage variables a DeepSquare job expects, the same way in every executor.

    ``$STORAGE_PATH`` is the job's own folder ``work/deepsquare`` (input,
    output, the env file); the temporary folders live
    under the executor's ``cache`` and outlive the job: ``user-<uid>`` for one
    user's jobs, ``world`` for everyone's. ``DSQ_PYTHON`` is the worker's
    interpreter, which runs the container and storage tools; ``DSQ_IMAGE_CACHE``
    (``cache/images/user-<uid>``) is where the container tool keeps pulled images,
    once per digest, for every job of that user on this executor.
    """

    storage = work / "deepsquare"
    user, world = cache / "tmp" / f"user-{uid}", cache / "tmp" / "world"
    disk_user, disk_world = cache / "disk" / f"user-{uid}", cache / "disk" / "world"
    images = cache / "images" / f"user-{uid}"  # per user: no job can plant an image for another user's pull
    for folder in (cache, cache / "tmp", cache / "disk", cache / "images"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o711)  # a job user may pass through to its own folders, not list them
    for folder, mode in ((world, 0o1777), (disk_world, 0o1777), (user, 0o700), (disk_user, 0o700), (images, 0o700)):
        folder.mkdir(exist_ok=True)
        folder.chmod(mode)
        if uid != os.getuid() and mode == 0o700:
            os.chown(folder, uid, -1)
    return {
        "DSQ_PYTHON": sys.executable,
        "DSQ_IMAGE_CACHE": str(images),
        "STORAGE_PATH": str(storage),
        "DEEPSQUARE_INPUT": str(storage / "input"),
        "DEEPSQUARE_OUTPUT": str(storage / "output"),
        "DEEPSQUARE_ENV": str(storage / "env"),
        "DEEPSQUARE_TMP": str(user),
        "DEEPSQUARE_SHARED_TMP": str(user),
        "DEEPSQUARE_SHARED_WORLD_TMP": str(world),
        "DEEPSQUARE_DISK_TMP": str(disk_user),
        "DEEPSQUARE_DISK_WORLD_TMP": str(disk_world),
    }


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for jobs: :data:`INHERITED_ENV` from ours, then ``extra``."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.setdefault("PATH", _DEFAULT_PATH)
    if extra:
        env.update(extra)
    return env


def run_command(
    cmd: list[str], *, timeout: float, env: Mapping[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (no shell) and return its result; failures raise :class:`CommandError`.

    ``check=False`` returns non-zero exits instead of raising (a missing binary
    and a timeout still raise).
    """
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as exc:
        raise CommandError(cmd, None, str(exc), detail="could not be started (not installed / not on PATH?)") from exc
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise CommandError(cmd, None, stderr, detail=f"timed out after {timeout:g} s") from exc
    if check and proc.returncode != 0:
        raise CommandError(cmd, proc.returncode, proc.stderr)
    return proc


def detect_gpus(timeout: float = 15.0) -> int:
    """Number of NVIDIA GPUs ``nvidia-smi -L`` lists; 0 without ``nvidia-smi`` or when it fails."""
    try:
        proc = run_command(["nvidia-smi", "-L"], timeout=timeout, check=False)
    except CommandError:
        return 0
    if proc.returncode != 0:
        return 0
    return sum(1 for line in proc.stdout.splitlines() if line.startswith("GPU "))
