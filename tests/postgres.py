"""A real PostgreSQL 15 for tests: ``postgres_url`` (session fixture) gives a fresh database URL.

The fixture installs Debian's ``postgresql`` with apt when ``initdb`` is missing (skips, saying why,
only without apt-get or root), creates a cluster in a fresh ``/tmp/dsq-pg-*`` folder owned by the
``postgres`` user, starts it on its own port on 127.0.0.1 (socket in that folder), and stops it and
removes the folder at the end. Each test asking for ``pg_url`` gets a database of its own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apt import AptUnavailable, ensure_packages
from tests.slurm_cluster import free_port


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        cmd = ("runuser", "-u", "postgres", "--", *cmd)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def running_postgres() -> Iterator[str]:
    """A PostgreSQL server for the duration of the block: yields ``postgresql://postgres@127.0.0.1:PORT``.

    Raises :class:`AptUnavailable` when it is missing and cannot be installed, or cannot run here.
    """
    ensure_packages(["postgresql"], lambda: _bin_dir() is not None and shutil.which("runuser") is not None)
    bindir = _bin_dir()
    assert bindir is not None
    if os.geteuid() != 0:
        raise AptUnavailable("PostgreSQL runs as the postgres user here: run as root to start it")
    base = Path(tempfile.mkdtemp(prefix="dsq-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    port = free_port()
    proc = _as_postgres(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
    if proc.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {proc.stdout}{proc.stderr}")
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    proc = _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "pg.log"), "-w",
                        "start")
    if proc.returncode != 0:
        log = (base / "pg.log").read_text() if (base / "pg.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}\n{log}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """URL prefix ``postgresql://postgres@127.0.0.1:PORT`` of a running server for the test session."""
    try:
        with running_postgres() as url:
            yield url
    except AptUnavailable as e:
        pytest.skip(str(e))


def create_database(server: str) -> str:
    import psycopg

    name = "dsq_" + uuid.uuid4().hex[:12]
    for _ in range(50):
        try:
            with psycopg.connect(server + "/postgres", autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            return f"{server}/{name}"
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise RuntimeError(f"PostgreSQL at {server} does not answer")


@pytest.fixture
def pg_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return create_database(postgres_server)
