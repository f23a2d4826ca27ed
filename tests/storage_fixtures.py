"""Real storage servers on loopback for the transfer tests: an S3-protocol server and an HTTP server.

``tests/conftest.py`` imports the fixtures, so every test module can use them.

* ``s3_server``: ``moto_server`` (``moto[server]`` from the dev extra) on ``127.0.0.1`` with a
  free port, once per session; ``s3_auth_server``: one that checks credentials and refuses all.
  ``s3_env`` points ``AWS_ENDPOINT_URL`` and test credentials at ``s3_server`` for one test;
  ``s3_bucket`` makes a fresh bucket.
* ``http_server``: a small threaded HTTP server over a temp folder: GET serves files, PUT stores
  the body and answers the file's URL (as transfer.sh does), any path under ``/forbidden/``
  answers 403.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.processes import stop_process
from tests.slurm_cluster import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        """Variables that point boto3 (and :mod:`dsq_chain.executors.storage`) at this server."""
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def stop(self) -> None:
        stop_process(self.proc)

    def workflow_s3(self, bucket: str) -> dict[str, str]:
        """A workflow's ``s3`` fields (all but ``path``) that name ``bucket`` on this server with the test key."""
        return {
            "region": S3_ENV["AWS_DEFAULT_REGION"], "bucketUrl": f"s3://{bucket}", "endpointUrl": self.endpoint,
            "accessKeyId": S3_ENV["AWS_ACCESS_KEY_ID"], "secretAccessKey": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        }  # fmt: skip

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip


def _moto_server() -> str:
    here = Path(sys.executable).parent / "moto_server"
    found = str(here) if here.exists() else shutil.which("moto_server")
    if not found:
        raise RuntimeError("moto_server is missing: install the dev extra (pip install -e '.[dev]', moto[server])")
    return found


def start_moto(log: Path, *, enforce_auth: bool = False) -> S3Server:
    """Start ``moto_server`` on a free loopback port; ``enforce_auth``: every request must be signed by a
    key moto's IAM knows (none: any key is refused with InvalidAccessKeyId)."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0") if enforce_auth else None
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [_moto_server(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
        )  # fmt: skip
    server = S3Server(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(server.endpoint + "/", timeout=2).close()
            return server
        except urllib.error.HTTPError:
            return server  # answering, if only to refuse
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto_server did not answer on {server.endpoint}") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 server that checks credentials (and knows none: every key is refused)."""
    server = start_moto(tmp_path_factory.mktemp("moto-auth") / "moto.log", enforce_auth=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point this test's environment at the S3 server; returns the variables set."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server.env()


@pytest.fixture
def s3_bucket(s3_server: S3Server, s3_env: dict[str, str]) -> str:
    """A new, empty bucket's name."""
    name = f"dsq-{secrets.token_hex(6)}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@dataclass
class HttpServer:
    url: str
    root: Path
    puts: list[str]


def _handler(root: Path, puts: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _target(self) -> Path | None:
            if self.path.startswith("/forbidden/"):
                self.send_error(403, "Forbidden")
                return None
            rel = urllib.request.url2pathname(self.path.split("?", 1)[0]).lstrip("/")
            target = (root / rel).resolve()
            if root.resolve() not in target.parents:
                self.send_error(400, "Bad path")
                return None
            return target

        def do_GET(self) -> None:
            target = self._target()
            if target is None:
                return
            if not target.is_file():
                self.send_error(404, "Not Found")
                return
            data = target.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            target = self._target()
            if target is None:
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            puts.append(self.path)
            answer = f"http://{self.headers.get('Host')}{self.path}\n".encode()
            self.send_response(201)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    return Handler


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HttpServer]:
    root = tmp_path / "http-root"
    root.mkdir()
    puts: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(root, puts))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpServer(f"http://127.0.0.1:{server.server_address[1]}", root, puts)
    finally:
        server.shutdown()
        server.server_close()
