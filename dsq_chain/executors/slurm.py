"""Executor for providers that run a Slurm cluster: ``sbatch`` / ``scontrol`` / ``sacct`` / ``scancel``.

Each job gets ``<root>/jobs/<chain id>-<token>/`` holding the user's
``script.sh``, the generated ``batch.sh`` (exports the ``DSQ_*`` variables,
then ``exec bash script.sh``), ``stdout``/``stderr``, ``work/`` (the job's
working directory), ``submit.json`` (the exact ``sbatch`` command) and, once
submitted, ``exec_id``; ``<root>/index/<slurm id>`` points back at the
directory. ``root`` must be on a filesystem the compute nodes share.

Resources are passed as ``sbatch`` flags, never read from the user's script:
its own ``#SBATCH`` lines are inert because only ``batch.sh`` is submitted.
``sbatch`` runs with a minimal environment (no ``SBATCH_*``/secrets of the
worker) and ``--no-requeue``: a node failure ends the job as ``NODE_FAIL``
(refund) instead of silently re-running it.

Time: Slurm limits are whole minutes (``time_limit_s`` is rounded up, min 1),
and slurmctld checks them on a fixed 30 s timer (``PERIODIC_TIMEOUT``, not
configurable): a job is killed between 0 and ~30 s (plus ``KillWait``) after
its limit. ``extend`` (``scontrol update TimeLimit=``) needs root, SlurmUser
or a Slurm operator: a plain user may only lower limits.

Status: ``scontrol show job`` while slurmctld remembers the job (``MinJobAge``),
then ``sacct -c`` (job completion file, no slurmdbd needed), then ``sacct``
(slurmdbd).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from dsq_chain.executors.base import (
    CommandError,
    ExecSpec,
    ExecState,
    ExecStatus,
    Executor,
    ExecutorError,
    JobNotFoundError,
    base_env,
    deepsquare_env,
    run_command,
)
from dsq_chain.types import Resources

#: Every Slurm job state (``squeue``/``scontrol``/``sacct`` long names) and what it means here.
SLURM_STATES: Mapping[str, ExecState] = {
    # waiting
    "PENDING": ExecState.PENDING,
    "CONFIGURING": ExecState.PENDING,  # nodes allocated, booting: the work has not begun
    "REQUEUED": ExecState.PENDING,
    "REQUEUE_HOLD": ExecState.PENDING,
    "REQUEUE_FED": ExecState.PENDING,
    "RESV_DEL_HOLD": ExecState.PENDING,
    # running (COMPLETING: the script ended, Slurm is cleaning up; the final state follows)
    "RUNNING": ExecState.RUNNING,
    "COMPLETING": ExecState.RUNNING,
    "SIGNALING": ExecState.RUNNING,
    "STAGE_OUT": ExecState.RUNNING,
    "RESIZING": ExecState.RUNNING,
    "SUSPENDED": ExecState.RUNNING,
    "STOPPED": ExecState.RUNNING,
    # final
    "COMPLETED": ExecState.COMPLETED,
    "FAILED": ExecState.FAILED,
    "SPECIAL_EXIT": ExecState.FAILED,
    "TIMEOUT": ExecState.TIMEOUT,
    "DEADLINE": ExecState.TIMEOUT,
    "CANCELLED": ExecState.CANCELLED,
    "REVOKED": ExecState.CANCELLED,  # federation: a sibling cluster runs it
    "NODE_FAIL": ExecState.NODE_FAIL,
    "BOOT_FAIL": ExecState.BOOT_FAIL,
    "OUT_OF_MEMORY": ExecState.OUT_OF_MEMORY,
    "PREEMPTED": ExecState.PREEMPTED,
}

_SLURM_ID_RE = re.compile(r"^\d+$")
_DIR_RE = re.compile(r"^(\d+)-[0-9a-f]{8}$")
#: Node states (``sinfo %T``) whose hardware does not count as capacity.
#: (A trailing ``*`` means the node does not respond.)
_UNAVAILABLE = ("down", "drain", "fail", "future", "inval", "unknown", "maint", "reboot", "*")
_NOT_RUNNING_MSGS = ("already completing or completed", "invalid job id", "has already finished")


def parse_slurm_state(raw: str) -> ExecState:
    """``"CANCELLED by 0"``, ``"COMPLETING"``, ``"CANCELLED+"`` ... → :class:`ExecState` (UNKNOWN if unheard of)."""
    token = raw.strip().split(" ", 1)[0].rstrip("+").upper()
    return SLURM_STATES.get(token, ExecState.UNKNOWN)


def parse_exit_code(raw: str) -> int | None:
    """Slurm ``"N:S"`` (exit status : signal) → N, or 128+S when killed by signal S; None if absent."""
    m = re.fullmatch(r"\s*(\d+)(?::(\d+))?\s*", raw)
    if not m:
        return None
    code, sig = int(m.group(1)), int(m.group(2) or 0)
    return 128 + sig if sig and not code else code


def slurm_minutes(seconds: int) -> int:
    """A time limit in seconds as Slurm minutes: rounded up, at least 1."""
    return max(1, math.ceil(seconds / 60))


def _fields(line: str, *keys: str) -> dict[str, str]:
    """Values of ``Key=value`` pairs in one ``scontrol -o`` line (values without spaces)."""
    out = {}
    for key in keys:
        m = re.search(rf"(?:^|\s){re.escape(key)}=(\S*)", line)
        if m:
            out[key] = m.group(1)
    return out


class SlurmExecutor(Executor):
    """Submits jobs to Slurm with ``sbatch``.

    ``root``: state directory (shared with the compute nodes). ``slurm_conf``:
    exported as ``SLURM_CONF`` to every command (default: inherited).
    ``partition``/``account``/``qos``/``extra_args``: added to ``sbatch``.
    ``bin_dir``: where the Slurm commands live (default: ``PATH``).
    """

    name = "slurm"

    def __init__(
        self,
        root: Path | str,
        *,
        slurm_conf: Path | str | None = None,
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        extra_args: Sequence[str] = (),
        command_timeout_s: float = 30.0,
        bin_dir: Path | str | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.jobs = self.root / "jobs"
        self.index = self.root / "index"
        self.jobs.mkdir(parents=True, exist_ok=True)
        self.index.mkdir(parents=True, exist_ok=True)
        self.jobs.chmod(0o700)  # the jobs run as this user; nobody else needs their environment or output
        self.slurm_conf = str(Path(slurm_conf).resolve()) if slurm_conf else os.environ.get("SLURM_CONF")
        self.partition = partition
        self.account = account
        self.qos = qos
        self.extra_args = list(extra_args)
        self.command_timeout_s = command_timeout_s
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self._bash = shutil.which("bash") or "/bin/bash"

    # --- command helper -------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment every Slurm command runs with (minimal, plus ``SLURM_CONF``)."""
        return base_env({"SLURM_CONF": self.slurm_conf} if self.slurm_conf else None)

    def run(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run a Slurm command; raises :class:`CommandError` (command, exit code, stderr) on failure."""
        exe = str(self.bin_dir / args[0]) if self.bin_dir else (shutil.which(args[0]) or args[0])
        return run_command([exe, *args[1:]], timeout=timeout or self.command_timeout_s, env=self.env(), check=check)

    # --- Executor API ---------------------------------------------------------------------

    def submit(self, spec: ExecSpec) -> str:
        name = f"{spec.job_id}-{secrets.token_hex(4)}"
        d = self.jobs / name
        tmp = self.jobs / f".{name}.tmp"
        (tmp / "work").mkdir(parents=True)
        (tmp / "script.sh").write_text(spec.script)
        (tmp / "batch.sh").write_text(self.render_batch(spec, d))
        args = self.sbatch_args(spec, d)
        (tmp / "submit.json").write_text(json.dumps({"args": args, "comment": f"dsq:{name}"}, indent=1))
        os.rename(tmp, d)
        try:
            out = self.run(*args).stdout.strip()
        except CommandError:
            adopted = self._adopt(d)  # e.g. a timeout after slurmctld accepted the job
            if adopted:
                return adopted
            raise
        exec_id = out.split(";", 1)[0].strip()
        if not _SLURM_ID_RE.match(exec_id):
            raise ExecutorError(f"sbatch printed {out!r}, expected a job id (--parsable)")
        self._record(d, exec_id)
        return exec_id

    def status(self, exec_id: str) -> ExecStatus:
        self._check_id(exec_id)
        proc = self.run("scontrol", "show", "job", "-o", exec_id, check=False)
        if proc.returncode == 0 and "JobState=" in proc.stdout:
            return self._from_scontrol(proc.stdout)
        if proc.returncode != 0 and "invalid job id" not in proc.stderr.lower():
            raise CommandError(["scontrol", "show", "job", "-o", exec_id], proc.returncode, proc.stderr)
        found = self._from_accounting(exec_id)
        if found is None:
            raise JobNotFoundError(
                f"Slurm job {exec_id} is unknown to slurmctld, to the job completion file (sacct -c) "
                "and to slurmdbd (sacct)"
            )
        return found

    def status_many(self, exec_ids: Sequence[str]) -> dict[str, ExecStatus]:
        """The jobs slurmctld still holds, read with one ``scontrol show job`` (one call per job would cost
        ~30 ms each); the others are left to :meth:`status` (job completion file, accounting)."""
        wanted = {e for e in exec_ids if _SLURM_ID_RE.match(e)}
        if len(wanted) <= 1:
            return super().status_many(list(wanted))
        proc = self.run("scontrol", "show", "job", "-o", check=False)
        out: dict[str, ExecStatus] = {}
        if proc.returncode != 0:
            return out
        for line in proc.stdout.splitlines():
            job = _fields(line, "JobId").get("JobId")
            if job in wanted and "JobState=" in line:
                out[job] = self._from_scontrol(line)
        return out

    def cancel(self, exec_id: str) -> None:
        if not _SLURM_ID_RE.match(exec_id):
            return  # never one of ours: nothing to cancel
        proc = self.run("scancel", exec_id, check=False)
        err = proc.stderr.lower()
        if proc.returncode != 0 and not any(m in err for m in _NOT_RUNNING_MSGS):
            raise CommandError(["scancel", exec_id], proc.returncode, proc.stderr)

    def extend(self, exec_id: str, new_time_limit_s: int) -> None:
        if new_time_limit_s < 1:
            raise ValueError(f"new time limit must be >= 1 s, got {new_time_limit_s}")
        self._check_id(exec_id)
        if self.status(exec_id).final:
            return
        minutes = slurm_minutes(new_time_limit_s)
        cmd = ("scontrol", "update", f"JobId={exec_id}", f"TimeLimit={minutes}")
        proc = self.run(*cmd, check=False)
        if proc.returncode != 0 and not self.status(exec_id).final:
            raise CommandError(list(cmd), proc.returncode, proc.stderr)

    def logs(self, exec_id: str) -> tuple[Path, Path]:
        self._check_id(exec_id)
        d = self._dir_of(exec_id)
        if d is not None:
            return d / "stdout", d / "stderr"
        proc = self.run("scontrol", "show", "job", "-o", exec_id, check=False)
        f = _fields(proc.stdout, "StdOut", "StdErr")
        if proc.returncode == 0 and f.get("StdOut"):
            return Path(f["StdOut"]), Path(f.get("StdErr") or f["StdOut"])
        raise JobNotFoundError(f"no job directory for Slurm job {exec_id} under {self.root}")

    def capacity(self) -> Resources:
        cpus = mem = gpus = disk_mb = 0
        for node in self._nodes():
            cpus += node[1]
            mem += node[2]
            gpus += node[3]
            disk_mb += node[4]
        return Resources(cpus=cpus, gpus=gpus, mem_mb=mem, disk_gb=disk_mb // 1000)

    def features(self) -> frozenset[str]:
        nodes = self._nodes()
        feats = set()
        if any(n[3] for n in nodes):
            feats.add("gpus")
        if len(nodes) > 1:
            feats.add("multinode")
        return frozenset(feats)

    def find(self, job_id: int) -> list[str]:
        found: list[tuple[float, str]] = []
        for d in self.jobs.glob(f"{int(job_id)}-*"):
            if not (_DIR_RE.match(d.name) and d.is_dir()):
                continue
            try:
                exec_id = (d / "exec_id").read_text().strip()
            except FileNotFoundError:
                exec_id = self._adopt(d) or ""
            if exec_id:
                found.append((d.stat().st_mtime, exec_id))
        return [e for _, e in sorted(found)]

    # --- rendering ------------------------------------------------------------------------

    def sbatch_args(self, spec: ExecSpec, d: Path) -> list[str]:
        """The ``sbatch`` command line for ``spec`` with job directory ``d``."""
        args = [
            "sbatch",
            "--parsable",
            f"--job-name=dsq-{spec.job_id}",
            f"--comment=dsq:{d.name}",
            f"--ntasks={spec.tasks}",
            f"--cpus-per-task={spec.cpus_per_task}",
            f"--time={slurm_minutes(spec.time_limit_s)}",
            f"--output={d / 'stdout'}",
            f"--error={d / 'stderr'}",
            f"--chdir={d / 'work'}",
            "--no-requeue",
            "--export=ALL",
        ]
        if spec.mem_per_cpu_mb > 0:
            args.append(f"--mem-per-cpu={spec.mem_per_cpu_mb}")
        if spec.gpus > 0:
            args.append(f"--gpus={spec.gpus}")
        for flag, value in (("--partition", self.partition), ("--account", self.account), ("--qos", self.qos)):
            if value:
                args.append(f"{flag}={value}")
        return [*args, *self.extra_args, str(d / "batch.sh")]

    def render_batch(self, spec: ExecSpec, d: Path) -> str:
        """The submitted batch script: exports, then the user's script (never parsed by sbatch)."""
        lines = [
            "#!/bin/bash",
            f"# dsq-chain job {spec.job_id}: generated by dsq_chain.executors.slurm; flags in submit.json",
        ]
        env = {**spec.job_env(), **deepsquare_env(d / "work", self.root / "cache", os.getuid())}
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
        lines += [
            'export DSQ_EXEC_ID="${SLURM_JOB_ID:-}"',
            f"exec {shlex.quote(self._bash)} {shlex.quote(str(d / 'script.sh'))}",
        ]
        return "\n".join(lines) + "\n"

    # --- internals ------------------------------------------------------------------------

    @staticmethod
    def _check_id(exec_id: str) -> None:
        if not _SLURM_ID_RE.match(exec_id):
            raise JobNotFoundError(f"not a Slurm job id: {exec_id!r}")

    def _record(self, d: Path, exec_id: str) -> None:
        (d / "exec_id").write_text(exec_id + "\n")
        tmp = self.index / f".{exec_id}.tmp"
        tmp.write_text(d.name + "\n")
        os.replace(tmp, self.index / exec_id)

    def _dir_of(self, exec_id: str) -> Path | None:
        try:
            name = (self.index / exec_id).read_text().strip()
        except FileNotFoundError:
            return None
        d = self.jobs / name
        return d if _DIR_RE.match(name) and d.is_dir() else None

    def _adopt(self, d: Path) -> str | None:
        """Find the Slurm id of a job submitted from ``d`` whose id was never recorded (crash, timeout)."""
        m = _DIR_RE.match(d.name)
        if not m:
            return None
        try:
            proc = self.run("squeue", "-h", "-t", "all", "-n", f"dsq-{m.group(1)}", "-o", "%i|%k", check=False)
        except CommandError:
            return None
        for line in proc.stdout.splitlines():
            job, _, comment = line.partition("|")
            if comment.strip() == f"dsq:{d.name}" and _SLURM_ID_RE.match(job.strip()):
                self._record(d, job.strip())
                return job.strip()
        return None

    @staticmethod
    def _from_scontrol(text: str) -> ExecStatus:
        f = _fields(text, "JobState", "Reason", "ExitCode", "NodeList", "EndTime")
        raw = f.get("JobState", "")
        state = parse_slurm_state(raw)
        reason = f"slurm {raw}"
        if f.get("Reason") not in (None, "", "None"):
            reason += f" ({f['Reason']})"
        ran = f.get("NodeList", "") not in ("", "(null)")
        started = state is ExecState.RUNNING or (state.is_final and ran)
        code = parse_exit_code(f.get("ExitCode", "")) if state.is_final else None
        ended = slurm_time(f.get("EndTime", "")) if state.is_final else None
        return ExecStatus(state, code, started, reason, ended_at=ended)

    def _from_accounting(self, exec_id: str) -> ExecStatus | None:
        fmt = ("-P", "-n", "-j", exec_id, "-o", "JobID,State,ExitCode,NodeList,End")
        for cmd in (("sacct", "-c", *fmt), ("sacct", "-X", *fmt)):
            try:
                proc = self.run(*cmd, check=False)
            except CommandError:
                continue
            if proc.returncode != 0:
                continue
            for line in reversed(proc.stdout.splitlines()):
                parts = line.split("|")
                if len(parts) >= 4 and parts[0].strip() == exec_id:
                    state = parse_slurm_state(parts[1])
                    started = state is ExecState.RUNNING or (state.is_final and parts[3] not in ("", "(null)", "None"))
                    code = parse_exit_code(parts[2]) if state.is_final else None
                    ended = slurm_time(parts[4]) if state.is_final and len(parts) > 4 else None
                    return ExecStatus(state, code, started, f"slurm {parts[1]} (accounting)", ended_at=ended)
        return None

    def _nodes(self) -> list[tuple[str, int, int, int, int]]:
        """Usable nodes: (name, cpus, real memory MB, gpus, TmpDisk MB), from ``sinfo``."""
        args = ["sinfo", "-h", "-N", "-o", "%N|%c|%m|%G|%T|%d"]
        if self.partition:
            args += ["-p", self.partition]
        seen: dict[str, tuple[str, int, int, int, int]] = {}
        for line in self.run(*args).stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 6 or parts[0] in seen:
                continue
            name, cpus, mem, gres, state, tmp_disk = parts
            if any(bad in state.lower() for bad in _UNAVAILABLE):
                continue
            seen[name] = (name, _int(cpus), _int(mem), _gres_gpus(gres), _int(tmp_disk))
        return list(seen.values())


def slurm_time(text: str) -> float | None:
    """Seconds since the epoch of a Slurm timestamp (``2026-12-02T12:30:01``, the controller's local
    time, which a provider's worker shares), or None for ``Unknown``/``None``/empty or anything else."""
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def _int(text: str) -> int:
    m = re.match(r"\d+", text.strip())
    return int(m.group(0)) if m else 0


def _gres_gpus(gres: str) -> int:
    """GPUs in a Gres string: ``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:1`` → 2, 4, 3."""
    return sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))
