"""The services' key cannot be read from /proc by a job of the same user (Linux)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import dsq_chain.services.hardening as hardening

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and prctl are Linux")

#: Run both processes as this unprivileged user when the suite runs as root (root may read any /proc file).
NOBODY = 65534
SECRET = "0x" + "ab" * 32
SOURCE = Path(hardening.__file__).read_text()


def _as_same_unprivileged_user() -> Callable[[], None] | None:
    if os.geteuid() != 0:
        return None

    def drop() -> None:
        os.setgid(NOBODY)
        os.setgroups([])
        os.setuid(NOBODY)

    return drop


@functools.cache
def _python() -> str:
    """An interpreter the unprivileged user may run (the checkout and pyenv may be closed to it)."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            subprocess.run([candidate, "-I", "-c", "pass"], check=True, cwd="/", timeout=30,
                           preexec_fn=_as_same_unprivileged_user())
        except (OSError, subprocess.SubprocessError):
            continue
        return candidate
    pytest.skip("no Python interpreter the unprivileged user may run")


@pytest.fixture
def service() -> Iterator[Callable[[bool], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(harden: bool) -> subprocess.Popen[str]:
        code = SOURCE + (
            "\nimport sys, time\n"
            f"ok = forbid_inspection() if {harden} else True\n"
            "print('ready' if ok else 'failed', flush=True)\n"
            "time.sleep(60)\n"
        )
        proc = subprocess.Popen([_python(), "-I", "-c", code], stdout=subprocess.PIPE, text=True, cwd="/",
                                env={"DSQ_PRIVATE_KEY": SECRET, "PATH": "/usr/bin:/bin"},
                                preexec_fn=_as_same_unprivileged_user())
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def _read_environ_as_same_user(pid: int) -> str:
    """What another process of the service's user gets when it reads the service's environment."""
    probe = (f"try:\n    print(open('/proc/{pid}/environ').read().replace(chr(0), ' '))\n"
             "except PermissionError as e:\n    print('denied', e.errno)\n")
    return subprocess.run([_python(), "-I", "-c", probe], capture_output=True, text=True, check=True, cwd="/",
                          preexec_fn=_as_same_unprivileged_user()).stdout


def test_a_same_user_process_reads_the_key_of_an_unhardened_service(service: Callable[..., subprocess.Popen[str]]
                                                                     ) -> None:
    """The threat is real: without hardening a job of the same user reads the key."""
    proc = service(False)
    assert SECRET in _read_environ_as_same_user(proc.pid)


def test_a_hardened_service_keeps_its_key_from_same_user_processes(service: Callable[..., subprocess.Popen[str]]
                                                                    ) -> None:
    proc = service(True)
    seen = _read_environ_as_same_user(proc.pid)
    assert SECRET not in seen and seen.startswith("denied")


def test_the_services_harden_themselves_before_reading_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """`dsq worker run` / `dsq scheduler run` make themselves non-dumpable before their settings (and key) load."""
    from dsq_chain.cli import services

    order: list[str] = []

    class Loaded(Exception):
        pass

    def load_settings(ctx: object) -> None:
        order.append("settings")
        raise Loaded

    def harden() -> bool:
        order.append("harden")
        return True

    monkeypatch.setattr(services, "forbid_inspection", harden)
    monkeypatch.setattr(services, "settings", load_settings)
    with pytest.raises(Loaded):
        services._service_setup(None, verbose=False)  # type: ignore[arg-type]
    assert order == ["harden", "settings"]
