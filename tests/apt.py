"""Installing Debian packages from a test fixture: one apt-get at a time across pytest-xdist workers."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

_LOCK = Path(tempfile.gettempdir()) / "dsq-apt.lock"


class AptUnavailable(Exception):
    """The packages are missing and cannot be installed here (fixtures turn this into a skip)."""


def ensure_installed(packages: Sequence[str], present: Callable[[], bool], what: str, timeout_s: float = 900) -> None:
    """``apt-get install packages`` unless ``present()``; :class:`AptUnavailable` without apt-get or root."""
    if present():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise AptUnavailable(f"{what} is not installed and apt-get is not available to install "
                             f"{' '.join(packages)}")
    if os.geteuid() != 0:
        raise AptUnavailable(f"{what} is not installed and `apt-get install {' '.join(packages)}` needs root")
    _LOCK.touch(exist_ok=True)
    with open(_LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if present():
            return
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in ([apt, "-o", "DPkg::Lock::Timeout=300", "update"],
                    [apt, "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends", *packages]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n"
                                   f"{(proc.stdout + proc.stderr)[-4000:]}")
        if not present():
            raise RuntimeError(f"installed {' '.join(packages)} but {what} is still missing")
