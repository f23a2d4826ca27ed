"""The default executor: each job is a bash process group on this machine.

Every job gets a directory ``<root>/jobs/<exec_id>/`` (layout in
:mod:`dsq_chain.executors._supervise`) and a small supervisor process, detached
from the worker, that runs the script in its own session, enforces the time
limit (SIGTERM to the whole group, SIGKILL after ``kill_grace_s``), honours
cancel requests and writes the outcome atomically. The executor object keeps
nothing in memory: a new instance on the same ``root`` (after the worker was
killed with ``kill -9`` and restarted) finds, polls, cancels and extends every
job from the files alone.

Lost supervisor: if the supervisor died without recording the job's end (host
reboot, OOM killer, ``kill -9``), :meth:`LocalExecutor.status` kills whatever
is left of the job and records ``NODE_FAIL``: the job did not fail by itself,
the provider's machinery lost it, so the owner is refunded (``PANICKED`` on
chain) rather than billed for a ``FAILED`` run.

Not isolated by default: jobs run as the worker's user, so a job could kill its
supervisor or write its job directory (a dead supervisor or a forged ``state``
reads as a provider-side fault: a full refund). With ``job_user`` (the worker
runs as root) each job runs as that user instead: it can neither signal its
supervisor nor write anything in its job directory but ``work/``. CPUs and
memory are not fenced either way (``DSQ_*`` variables tell the script what it
may use) and a process that calls ``setsid`` escapes the kill; use Slurm (or a
container executor) for isolation. Jobs do not inherit the worker's
environment, only :data:`dsq_chain.executors.base.INHERITED_ENV`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dsq_chain.executors import _supervise as sv
from dsq_chain.executors.base import (
    ExecSpec,
    ExecState,
    ExecStatus,
    Executor,
    ExecutorError,
    JobNotFoundError,
    base_env,
    deepsquare_env,
    detect_gpus,
)
from dsq_chain.types import Resources

_EXEC_ID_RE = re.compile(r"^(\d+)-[0-9a-f]{8}$")
_SUPERVISOR_PY = Path(sv.__file__).resolve()
#: A job whose supervisor has not shown up this long after submit is considered lost.
LAUNCH_GRACE_S = 30.0
_CGROUP_ROOT = Path("/sys/fs/cgroup")


class LocalExecutor(Executor):
    """Runs jobs as local processes, each under its own detached supervisor.

    ``root``: state directory (created). ``kill_grace_s``: seconds between
    SIGTERM and SIGKILL on timeout/cancel. ``gpu_ids``: GPU indices to hand out
    (default: those ``nvidia-smi -L`` lists). ``python``: interpreter for the
    supervisors.
    """

    name = "local"

    def __init__(
        self,
        root: Path | str,
        *,
        kill_grace_s: float = 10.0,
        gpu_ids: Sequence[int] | None = None,
        python: str = sys.executable,
        job_user: str | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.jobs = self.root / "jobs"
        self.job_user = _job_user(job_user, self.root) if job_user else None
        self.jobs.mkdir(parents=True, exist_ok=True)
        # Specs hold the users' environment, outputs their results. A job user may pass through
        # (to its own work directory) but not list the jobs.
        self.jobs.chmod(0o711 if self.job_user else 0o700)
        self.kill_grace_s = float(kill_grace_s)
        self.python = python
        self._gpu_ids = list(gpu_ids) if gpu_ids is not None else None
        self._bash = shutil.which("bash") or "/bin/bash"

    # --- Executor API ---------------------------------------------------------------------

    def submit(self, spec: ExecSpec) -> str:
        exec_id = f"{spec.job_id}-{secrets.token_hex(4)}"
        final = self.jobs / exec_id
        with self._gpu_lock(spec.gpus > 0):
            gpu_ids = self._allocate_gpus(spec.gpus)
            tmp = self.jobs / f".{exec_id}.tmp"
            (tmp / sv.WORK).mkdir(parents=True)
            env = base_env(spec.job_env())
            env["DSQ_EXEC_ID"] = exec_id
            uid = self.job_user[1] if self.job_user else os.getuid()
            env.update(deepsquare_env(final / sv.WORK, self.root / "cache", uid))
            if self.job_user:
                name, uid, gid = self.job_user
                env.update(HOME=str(final / sv.WORK), USER=name, LOGNAME=name)
                os.chown(tmp / sv.WORK, uid, gid)
                (tmp / sv.WORK).chmod(0o700)
                tmp.chmod(0o711)
            if gpu_ids:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
            (tmp / sv.SCRIPT).write_text(spec.script)
            (tmp / sv.LIMIT).write_text(str(spec.time_limit_s))
            (tmp / sv.STDOUT).touch(0o600)
            (tmp / sv.STDERR).touch(0o600)
            doc = {
                "job_id": spec.job_id,
                "tasks": spec.tasks,
                "cpus_per_task": spec.cpus_per_task,
                "mem_per_cpu_mb": spec.mem_per_cpu_mb,
                "gpus": spec.gpus,
                "gpu_ids": gpu_ids,
                "time_limit_s": spec.time_limit_s,
                "grace_s": self.kill_grace_s,
                "bash": self._bash,
                "env": env,
                "user": list(self.job_user[1:]) if self.job_user else None,
                "submitted_at": time.time(),
            }
            (tmp / sv.SPEC).write_text(json.dumps(doc, indent=1))
            (tmp / sv.SPEC).chmod(0o600)
            if self.job_user:
                (tmp / sv.SCRIPT).chmod(0o644)  # bash runs as the job user and reads it
            os.rename(tmp, final)
        self._launch(final)
        return exec_id

    def status(self, exec_id: str) -> ExecStatus:
        d = self._dir(exec_id)
        for _ in range(5):
            done = self._final(d)
            if done is not None:
                return done
            if self._supervisor_alive(d):
                if (d / sv.JOB).exists():
                    return ExecStatus(ExecState.RUNNING, None, True, "running")
                return ExecStatus(ExecState.PENDING, None, False, "starting")
            done = self._final(d)  # it may have ended between the two looks
            if done is not None:
                return done
            if not (d / sv.SUPERVISOR).exists():
                if self._age(d) < LAUNCH_GRACE_S:
                    return ExecStatus(ExecState.PENDING, None, False, "supervisor starting")
                reason = "the job's supervisor never started: provider-side fault"
            else:
                reason = (
                    "the job's supervisor died without recording its end (host reboot, OOM killer, kill -9): "
                    "provider-side fault"
                )
            self._finalize_lost(d, ExecState.NODE_FAIL, reason)
            # recorded (the loop returns it), or a supervisor took the lock meanwhile (the loop sees it alive)
        return ExecStatus(ExecState.UNKNOWN, None, (d / sv.JOB).exists(), "job state keeps changing")

    def cancel(self, exec_id: str) -> None:
        try:
            d = self._dir(exec_id)
        except JobNotFoundError:
            return
        if (d / sv.STATE).exists():
            return
        sv.write_atomic(d / sv.CANCEL, "cancel requested\n")
        deadline = time.monotonic() + self._stop_timeout(d)
        while time.monotonic() < deadline:
            if (d / sv.STATE).exists():
                return
            if not self._supervisor_alive(d):
                # No supervisor owns the job right now: record the cancel ourselves (under the lock, so a
                # supervisor starting later sees the state and exits without running anything).
                self._finalize_lost(d, ExecState.CANCELLED, "cancelled (no supervisor was running it)")
                if (d / sv.STATE).exists():
                    return
            time.sleep(0.05)
        raise ExecutorError(f"local job {exec_id} did not stop within {self._stop_timeout(d):g} s of cancel")

    def extend(self, exec_id: str, new_time_limit_s: int) -> None:
        if new_time_limit_s < 1:
            raise ValueError(f"new time limit must be >= 1 s, got {new_time_limit_s}")
        d = self._dir(exec_id)
        if (d / sv.STATE).exists():
            return
        sv.write_atomic(d / sv.LIMIT, f"{int(new_time_limit_s)}\n")

    def logs(self, exec_id: str) -> tuple[Path, Path]:
        d = self._dir(exec_id)
        return d / sv.STDOUT, d / sv.STDERR

    def capacity(self) -> Resources:
        cpus = len(os.sched_getaffinity(0))
        mem_mb = _meminfo_total_mb()
        cg_cpus, cg_mem = _cgroup_limits()
        if cg_cpus is not None:
            cpus = max(1, min(cpus, cg_cpus))
        if cg_mem is not None:
            mem_mb = min(mem_mb, cg_mem)
        # Scratch disk: what is free on the file system that holds the job folders.
        disk_gb = shutil.disk_usage(self.root).free // 10**9
        return Resources(cpus=cpus, gpus=len(self._gpus()), mem_mb=mem_mb, disk_gb=disk_gb)

    def features(self) -> frozenset[str]:
        return frozenset({"gpus"}) if self._gpus() else frozenset()

    def find(self, job_id: int) -> list[str]:
        found = []
        for d in self.jobs.glob(f"{int(job_id)}-*"):
            if _EXEC_ID_RE.match(d.name) and d.is_dir():
                found.append((d.stat().st_mtime, d.name))
        return [name for _, name in sorted(found)]

    # --- extras ---------------------------------------------------------------------------

    def job_dir(self, exec_id: str) -> Path:
        """The job's directory (its working directory is ``work/`` inside)."""
        return self._dir(exec_id)

    def remove(self, exec_id: str) -> None:
        """Delete an ended job's directory; refuses while it is not final."""
        if not self.status(exec_id).final:
            raise ExecutorError(f"local job {exec_id} has not ended: cancel it first")
        shutil.rmtree(self._dir(exec_id))

    # --- internals ------------------------------------------------------------------------

    def _dir(self, exec_id: str) -> Path:
        if not _EXEC_ID_RE.match(exec_id):
            raise JobNotFoundError(f"not a local executor job id: {exec_id!r}")
        d = self.jobs / exec_id
        if not d.is_dir():
            raise JobNotFoundError(f"no local job {exec_id} under {self.jobs}")
        return d

    def _launch(self, d: Path) -> None:
        """Start the detached supervisor and wait until the job's script runs (or already ended)."""
        with open(d / sv.LOG, "ab") as log:
            proc = subprocess.run(
                # -I -S: the supervisor needs the standard library only; skipping site (a venv's .pth
                # files) starts it in about a third of the time, and no PYTHON* variable reaches it.
                [self.python, "-I", "-S", str(_SUPERVISOR_PY), "--detach", str(d)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=d,
                # The supervisor is the job's parent: it must not hold the worker's secrets either
                # (a job could read them from /proc/$PPID/environ). The job's env comes from spec.json.
                env=base_env(),
                start_new_session=True,
                close_fds=True,
                timeout=60,
                check=False,
            )
        if proc.returncode != 0:
            raise ExecutorError(
                f"supervisor for {d.name} failed to start (exit {proc.returncode}): {self._log_tail(d)}"
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (d / sv.JOB).exists() or (d / sv.STATE).exists():
                return
            time.sleep(0.01)
        raise ExecutorError(f"supervisor for {d.name} did not start within 20 s: {self._log_tail(d)}")

    @staticmethod
    def _log_tail(d: Path) -> str:
        try:
            return (d / sv.LOG).read_text()[-2000:].strip() or "(empty supervisor.log)"
        except OSError:
            return "(no supervisor.log)"

    @staticmethod
    def _final(d: Path) -> ExecStatus | None:
        doc = sv.read_json(d / sv.STATE)
        if doc is None:
            return None
        try:
            state = ExecState(str(doc.get("state")))
        except ValueError:
            state = ExecState.UNKNOWN
        code = doc.get("exit_code")
        ended = doc.get("ended_at")
        return ExecStatus(
            state=state,
            exit_code=int(code) if isinstance(code, int) else None,
            started=bool(doc.get("started", False)),
            reason=str(doc.get("reason", "")),
            ended_at=float(ended) if isinstance(ended, (int, float)) else None,
        )

    @staticmethod
    def _supervisor_alive(d: Path) -> bool:
        """True while a supervisor holds the job's lock (the kernel drops it when the process dies)."""
        try:
            fd = os.open(d / sv.LOCK, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @staticmethod
    def _age(d: Path) -> float:
        try:
            return time.time() - (d / sv.SPEC).stat().st_mtime
        except OSError:
            return math.inf

    def _stop_timeout(self, d: Path) -> float:
        spec = sv.read_json(d / sv.SPEC) or {}
        return float(spec.get("grace_s", self.kill_grace_s)) + 10.0

    def _finalize_lost(self, d: Path, state: ExecState, reason: str) -> bool:
        """Record the end of a job no supervisor owns; kill what is left of it first.

        Returns False when a supervisor holds the job's lock after all (nothing recorded).
        """
        fd = os.open(d / sv.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a supervisor is alive after all
            if (d / sv.STATE).exists():
                return True
            job = sv.read_json(d / sv.JOB)
            if job is not None and job.get("boot_id") == sv.boot_id():
                pid = int(job.get("pid", 0))
                if pid > 1 and (
                    sv.process_matches(pid, int(job.get("start_ticks", -1)), str(job.get("boot_id")))
                    or sv.session_members(pid)
                ):
                    sv.kill_session(pid, signal.SIGKILL)
            sv.write_atomic(
                d / sv.STATE,
                json.dumps(
                    {
                        "state": str(state),
                        "exit_code": None,
                        "reason": reason,
                        "started": job is not None,
                        "ended_at": time.time(),
                    }
                ),
            )
            return True
        finally:
            os.close(fd)

    @contextmanager
    def _gpu_lock(self, needed: bool) -> Iterator[None]:
        if not needed:
            yield
            return
        fd = os.open(self.root / ".gpus.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _gpus(self) -> list[int]:
        if self._gpu_ids is None:
            self._gpu_ids = list(range(detect_gpus()))
        return self._gpu_ids

    def _allocate_gpus(self, n: int) -> list[int]:
        if n == 0:
            return []
        gpus = self._gpus()
        if n > len(gpus):
            raise ExecutorError(f"job needs {n} GPU(s), this machine has {len(gpus)}")
        busy: set[int] = set()
        for d in self.jobs.iterdir():
            if not _EXEC_ID_RE.match(d.name) or (d / sv.STATE).exists():
                continue
            spec = sv.read_json(d / sv.SPEC) or {}
            ids = spec.get("gpu_ids") or []
            if ids and not self.status(d.name).final:
                busy.update(int(i) for i in ids)
        free = [g for g in gpus if g not in busy]
        if n > len(free):
            raise ExecutorError(f"job needs {n} GPU(s), {len(free)} of {len(gpus)} free")
        return free[:n]


def _job_user(name: str, root: Path) -> tuple[str, int, int]:
    """(name, uid, gid) of the user jobs run as; checks that it can be switched to and reach ``root``."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ExecutorError(f"job user {name!r} does not exist on this machine") from None
    if os.geteuid() != 0:
        raise ExecutorError(f"running jobs as {name!r} needs the worker to run as root (it runs as uid {os.geteuid()})")
    if entry.pw_uid == 0:
        raise ExecutorError(f"job user {name!r} is root: jobs would reach their supervisors")
    for d in (root, *root.parents):
        if d.exists() and not d.stat().st_mode & 0o001:
            raise ExecutorError(
                f"job user {name!r} cannot pass through {d} (mode {d.stat().st_mode & 0o777:o}): "
                "allow it (chmod o+x) or put the worker's state directory elsewhere"
            )
    return name, entry.pw_uid, entry.pw_gid


def _meminfo_total_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise ExecutorError("MemTotal not found in /proc/meminfo")


def _cgroup_limits() -> tuple[int | None, int | None]:
    """(cpus, mem MB) limits of our cgroup (v2 or v1) and its ancestors; None where unlimited/unknown."""
    cpus: int | None = None
    mem: int | None = None

    def take_min(cur: int | None, new: int) -> int:
        return new if cur is None else min(cur, new)

    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, rel = parts[1].split(","), parts[2].lstrip("/")
        if parts[0] == "0" and parts[1] == "":
            bases = [_CGROUP_ROOT]
        elif "memory" in controllers or "cpu" in controllers:
            bases = [_CGROUP_ROOT / c for c in controllers if c in ("memory", "cpu")]
        else:
            continue
        for base in bases:
            for d in _ancestors(base, rel):
                mem_raw = _read(d / "memory.max") or _read(d / "memory.limit_in_bytes")
                if mem_raw and mem_raw.isdigit() and int(mem_raw) < 2**60:
                    mem = take_min(mem, int(mem_raw) // 2**20)
                quota = _cpu_quota(d)
                if quota is not None:
                    cpus = take_min(cpus, quota)
    return cpus, mem


def _ancestors(base: Path, rel: str) -> list[Path]:
    out = [base]
    cur = base
    for part in [p for p in rel.split("/") if p]:
        cur = cur / part
        out.append(cur)
    return [d for d in out if d.is_dir()]


def _cpu_quota(d: Path) -> int | None:
    v2 = _read(d / "cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
        if quota.isdigit() and period.isdigit() and int(period) > 0:
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
    if q and p and q.isdigit() and p.isdigit() and int(p) > 0:
        return max(1, math.ceil(int(q) / int(p)))
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
