"""Install Debian packages a test fixture needs, once, with apt-get (one apt at a time across xdist workers).

``ensure_packages(["skopeo", "umoci"], present=lambda: ...)`` returns at once when ``present()``
is true; otherwise it runs ``apt-get update`` (at most once per process) and ``apt-get install``
under a file lock. Raises :class:`AptUnavailable` (fixtures turn it into a skip with its reason)
only when installing is impossible here (no ``apt-get``, not root), and ``RuntimeError`` with
apt's output when the installation fails.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

_LOCK = Path(tempfile.gettempdir()) / "dsq-apt.lock"
_updated = False


class AptUnavailable(Exception):
    """Packages are missing and cannot be installed here (the fixture turns this into a skip)."""


def ensure_packages(packages: Sequence[str], present: Callable[[], bool], *, timeout_s: float = 900) -> None:
    """Install ``packages`` with apt-get unless ``present()`` says they are already there."""
    global _updated
    if present():
        return
    names = " ".join(packages)
    apt = shutil.which("apt-get")
    if apt is None:
        raise AptUnavailable(f"{names} not installed and apt-get is not available to install them")
    if os.geteuid() != 0:
        raise AptUnavailable(f"{names} not installed and installing with apt-get needs root: apt-get install {names}")
    _LOCK.touch(exist_ok=True)
    with open(_LOCK) as lock:  # pytest-xdist workers: one apt at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if present():
            return
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = [apt, "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends", *packages]
        steps = [install] if _updated else [[apt, "-o", "DPkg::Lock::Timeout=300", "update"], install]
        for cmd in steps:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"
                )
            _updated = _updated or cmd is not install
        if not present():
            raise RuntimeError(f"installed {names} but what the tests need is still missing")
