"""Per-job supervisor of the local executor (standard library only).

Run as ``python _supervise.py --detach JOBDIR...``. The local executor starts it
once per batch of jobs: it forks one supervisor per job, detached from the
worker (own session, double fork), so that a job survives the worker's death
and any later executor instance can find it from the files in ``JOBDIR`` alone
(one interpreter start serves the batch; each job keeps a process of its own):

==============  ======================================================  ==========
file            content                                                 written by
==============  ======================================================  ==========
``spec.json``   resources, full environment, kill grace, GPU ids, user  submit
``script.sh``   the job's bash script                                   submit
``limit``       time limit in seconds since start (rewritten by extend) submit, extend
``cancel``      present once a cancel was requested                     cancel
``lock``        ``flock``-ed by the live supervisor for its lifetime    supervisor
``supervisor``  JSON: pid, start ticks, boot id of the supervisor       supervisor
``job``         JSON: pid (= process group = session id), start ticks,  supervisor
                boot id, wall-clock start of the job's ``bash``
``state``       JSON: final state, exit code, reason, started, ended    supervisor (last)
``stdout``/``stderr``  the job's output;  ``work/``: its working directory
==============  ======================================================  ==========

Liveness of the supervisor is the ``flock`` on ``lock``: the kernel releases it
when the process dies, whatever the reason, so pid reuse cannot fool it. The
supervisor does not import the ``dsq_chain`` package: it runs with any Python 3
from its file path, whatever the worker's ``sys.path``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

SPEC = "spec.json"
SCRIPT = "script.sh"
LIMIT = "limit"
CANCEL = "cancel"
LOCK = "lock"
SUPERVISOR = "supervisor"
JOB = "job"
STATE = "state"
STDOUT = "stdout"
STDERR = "stderr"
WORK = "work"
LOG = "supervisor.log"

#: How often the supervisor looks at the cancel and limit files (the script's exit is seen at once).
POLL_S = 0.2
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id (pids and start ticks only mean something within one boot)."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """``(state, pgrp, session, start_ticks)`` of a live process, or None."""
    fields = _stat_fields(str(pid))
    # fields[0] is field 3 of proc(5): state; 5 pgrp; 6 session; 22 starttime.
    return None if fields is None else (fields[0].decode(), int(fields[2]), int(fields[3]), int(fields[19]))


def _stat_fields(pid: str) -> list[bytes] | None:
    """The fields of ``/proc/PID/stat`` after the command name (raw reads: a job's end scans all of /proc)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return raw[raw.rindex(b")") + 2 :].split()
    except ValueError:
        return None


def process_matches(pid: int, start_ticks: int, boot: str) -> bool:
    """True if ``pid`` is still the very process recorded (same boot, same start time, not a zombie)."""
    if boot != boot_id():
        return False
    st = proc_stat(pid)
    return st is not None and st[3] == start_ticks and st[0] not in "ZX"


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid``."""
    members = []
    wanted = str(sid).encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        if fields is not None and len(fields) > 3 and fields[3] == wanted and fields[0] not in (b"Z", b"X"):
            members.append(int(name))
    return members


def kill_session(sid: int, sig: int) -> None:
    """Send ``sig`` to the job's process group and to any member of its session that left the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, sig)
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (write a temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_limit(path: Path, default: float) -> float:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return default


class Supervisor:
    """Runs one job's script, enforces its time limit, honours cancels, records the end."""

    def __init__(self, jobdir: Path) -> None:
        self.dir = jobdir
        self.signalled: int | None = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signalled = signum

    def record(self, state: str, exit_code: int | None, reason: str, started: bool) -> None:
        write_atomic(
            self.dir / STATE,
            json.dumps(
                {"state": state, "exit_code": exit_code, "reason": reason, "started": started, "ended_at": time.time()}
            ),
        )

    def stop(self, proc: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM the whole job, SIGKILL whatever is left after ``grace`` seconds."""
        kill_session(proc.pid, signal.SIGTERM)
        kill_session(proc.pid, signal.SIGCONT)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not session_members(proc.pid):
                break
            time.sleep(POLL_S)
        kill_session(proc.pid, signal.SIGKILL)
        proc.wait()

    def run(self) -> int:
        lock_fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another supervisor owns this job
        if (self.dir / STATE).exists() or (self.dir / JOB).exists():
            return 0  # this job already ran (or began to): never run it twice
        me = proc_stat(os.getpid())
        write_atomic(
            self.dir / SUPERVISOR,
            json.dumps({"pid": os.getpid(), "start_ticks": me[3] if me else 0, "boot_id": boot_id()}),
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if (self.dir / CANCEL).exists():
            self.record("CANCELLED", None, "cancelled before it started", started=False)
            return 0
        spec = read_json(self.dir / SPEC) or {}
        env = {str(k): str(v) for k, v in dict(spec.get("env", {})).items()}
        grace = float(spec.get("grace_s", 10.0))
        limit = read_limit(self.dir / LIMIT, float(spec.get("time_limit_s", 1)))
        user = spec.get("user")  # [uid, gid]: run the job as another user, out of reach of this process
        as_user: dict[str, Any] = {"user": int(user[0]), "group": int(user[1]), "extra_groups": []} if user else {}
        try:
            with open(self.dir / STDOUT, "ab") as out, open(self.dir / STDERR, "ab") as err:
                proc = subprocess.Popen(
                    [str(spec.get("bash", "/bin/bash")), str(self.dir / SCRIPT)],
                    cwd=self.dir / WORK,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                    **as_user,
                )
        except OSError as exc:
            self.record("FAILED", None, f"could not start the script: {exc}", started=False)
            return 0
        t0 = time.monotonic()
        st = proc_stat(proc.pid)
        write_atomic(
            self.dir / JOB,
            json.dumps(
                {"pid": proc.pid, "start_ticks": st[3] if st else 0, "boot_id": boot_id(), "started_at": time.time()}
            ),
        )
        try:
            return self._watch(proc, t0, limit, grace)
        except BaseException:
            kill_session(proc.pid, signal.SIGKILL)
            self.record("NODE_FAIL", None, "supervisor error: " + traceback.format_exc(limit=3), started=True)
            raise

    def _watch(self, proc: subprocess.Popen[bytes], t0: float, limit: float, grace: float) -> int:
        try:
            pidfd: int | None = os.pidfd_open(proc.pid)  # readable once the script exits: no busy polling
        except (AttributeError, OSError):
            pidfd = None
        while True:
            wait_s = max(0.0, min(POLL_S, limit - (time.monotonic() - t0)))
            if pidfd is not None:
                select.select([pidfd], [], [], wait_s)
                rc = proc.poll()
            else:
                try:
                    rc = proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    rc = None
            if rc is not None:
                break
            if self.signalled is not None:
                name = signal.Signals(self.signalled).name
                self.stop(proc, grace)
                self.record("NODE_FAIL", _exit_code(proc.returncode), f"supervisor received {name}", started=True)
                return 0
            if (self.dir / CANCEL).exists():
                self.stop(proc, grace)
                self.record("CANCELLED", _exit_code(proc.returncode), "cancelled", started=True)
                return 0
            limit = read_limit(self.dir / LIMIT, limit)
            if time.monotonic() - t0 >= limit:
                self.stop(proc, grace)
                self.record("TIMEOUT", _exit_code(proc.returncode), f"time limit of {limit:g} s reached", started=True)
                return 0
        # The script ended: like Slurm, end whatever it left behind in its session.
        if session_members(proc.pid):
            kill_session(proc.pid, signal.SIGKILL)
        code = _exit_code(rc)
        if self.signalled is not None and rc < 0:
            name = signal.Signals(self.signalled).name
            self.record("NODE_FAIL", code, f"job and supervisor killed ({name}): host shutting down?", started=True)
        elif rc == 0:
            self.record("COMPLETED", 0, "exit code 0", started=True)
        elif rc > 0:
            self.record("FAILED", code, f"exit code {rc}", started=True)
        else:
            self.record("FAILED", code, f"killed by signal {_signame(-rc)}", started=True)
        return 0


def _exit_code(rc: int | None) -> int | None:
    """Shell convention: a death by signal N is exit code 128+N."""
    if rc is None:
        return None
    return rc if rc >= 0 else 128 - rc


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def main(argv: list[str]) -> int:
    detach = "--detach" in argv
    dirs = [Path(a).resolve() for a in argv if a != "--detach"]
    if not dirs or (len(dirs) > 1 and not detach):
        print("usage: _supervise.py JOBDIR | _supervise.py --detach JOBDIR...", file=sys.stderr)
        return 2
    if not detach:
        return Supervisor(dirs[0]).run()
    # One interpreter start for the whole batch: each job still gets a supervisor process of its own, forked
    # from this one, so a supervisor's death touches its own job only. This process then exits: the worker
    # reaps it at once and the supervisors are re-parented to init.
    # The children wait for the last fork (the pipe's end) before they start: forking goes at full speed, and
    # the worker waiting for this process is not held up by the jobs it starts.
    sys.stdout.flush()
    sys.stderr.flush()
    gate_r, gate_w = os.pipe()
    for jobdir in dirs:
        if os.fork() == 0:
            os.close(gate_w)
            _supervise_forked(jobdir, gate_r)
    return 0


def _supervise_forked(jobdir: Path, gate: int) -> None:
    """In a child forked by :func:`main`: supervise one job, its output to the job's own log; never returns."""
    code = 1
    try:
        os.read(gate, 1)  # end of file once the parent forked every supervisor and exited
        os.close(gate)
        fd = os.open(jobdir / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.chdir(jobdir)
        code = Supervisor(jobdir).run()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
