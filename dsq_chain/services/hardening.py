"""Process hardening for the services that hold a signing key (worker, scheduler).

On Linux any process of the same user may read another's ``/proc/PID/environ`` (where
``DSQ_PRIVATE_KEY`` or ``DSQ_KEYSTORE_PASSWORD`` sit) and, ptrace rules permitting, its memory
(where the decrypted key sits). A local-executor job runs as the worker's user, so it could. Marking
the process non-dumpable makes those files root-owned: other processes of the same user can no
longer read them. Root still can; run jobs under another user (or use Slurm) for a hard boundary.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


def _prctl(option: int, arg: int) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return int(libc.prctl(option, arg, 0, 0, 0))


def forbid_inspection() -> bool:
    """Makes this process non-dumpable (Linux); True when it took effect."""
    return _prctl(_PR_SET_DUMPABLE, 0) == 0 and is_inspectable() is False


def is_inspectable() -> bool | None:
    """Whether processes of the same user may read this one's /proc files (None: not Linux)."""
    state = _prctl(_PR_GET_DUMPABLE, 0)
    return None if state is None else state != 0
