"""The provider's log server: a job's logs, tail and live follow, for the job's owner only.

``GET /v1/jobs/{id}/logs?expiry=&nonce=&signature=&stream=stdout|stderr&offset=N&follow=0|1`` answers
server-sent events: ``log`` (``{"text", "offset"}``, the byte offset after the text), a comment every
``keepalive_s`` seconds while nothing new was written, and ``end`` once everything was sent (with
``follow``, once the job is final on chain). ``GET /v1/jobs/{id}/logs/request`` hands out the typed data
to sign (:func:`~dsq_chain.sdk.logaccess.log_request`), for browser wallets.

Access: the signature must recover to the job's owner as the chain says, name this provider, expire in
the future but within :data:`~dsq_chain.sdk.logaccess.MAX_TTL_S`, and carry a nonce never used before
(nonces are kept in SQLite until they expire, so a restart does not reopen a replay). Anything else is
401 (no valid, fresh, unused signature) or 403 (signed, but not by the job's owner, or the job is
unknown), with the same body whatever the reason: a stranger learns nothing, not even whether the job
exists. A broken request never stops the server (each request runs in its own thread).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dsq_chain.sdk.logaccess import MAX_TTL_S, log_request, recover_signer
from dsq_chain.types import Job

log = logging.getLogger("dsq.logserver")

_PATH = re.compile(r"/v1/jobs/([0-9]{1,78})/logs(/request)?\Z")
_NONCE = re.compile(r"0x[0-9a-fA-F]{64}\Z")
CHUNK = 64 * 1024
DENIED = b'{"error":"not allowed: sign a fresh request with the job owner\'s key"}'


class Denied(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class NonceBook:
    """Nonces already used, kept until their request expires (SQLite, survives restarts)."""

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("CREATE TABLE IF NOT EXISTS used_nonces (nonce TEXT PRIMARY KEY, expiry INTEGER NOT NULL)")
        self.lock = threading.Lock()

    def use(self, nonce: str, expiry: int) -> bool:
        """True the first time ``nonce`` is seen (while unexpired), False for a replay."""
        with self.lock:
            self.db.execute("DELETE FROM used_nonces WHERE expiry < ?", (int(time.time()) - 1,))
            try:
                self.db.execute("INSERT INTO used_nonces VALUES (?, ?)", (nonce.lower(), expiry))
            except sqlite3.IntegrityError:
                return False
            return True


class LogServer:
    """Serves a provider's job logs to their owners; a library object first (the worker CLI starts it)."""

    def __init__(
        self,
        read_job: Callable[[int], Job],
        logs_of: Callable[[int], tuple[Path, Path]],
        provider: str,
        chain_id: int,
        market: str,
        nonces: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keepalive_s: float = 15.0,
        poll_s: float = 0.2,
        max_streams: int = 64,
    ) -> None:
        self.read_job = read_job
        self.logs_of = logs_of
        self.provider = provider
        self.chain_id = chain_id
        self.market = market
        self.nonces = NonceBook(nonces)
        self.keepalive_s = keepalive_s
        self.poll_s = poll_s
        self.streams = threading.BoundedSemaphore(max_streams)
        self.stopping = threading.Event()
        server = self

        class Handler(_Handler):
            logs = server

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> LogServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="dsq-logserver", daemon=True)
        self._thread.start()
        log.info("serving job logs to their owners at %s", self.url)
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- access --------------------------------------------------------------------------------
    def authorize(self, job_id: int, q: dict[str, str]) -> Job:
        """The job, if ``q`` holds a fresh, unused request signed by its owner; else :class:`Denied`."""
        try:
            expiry = int(q.get("expiry", ""))
        except ValueError:
            raise Denied(401) from None
        nonce, signature = q.get("nonce", ""), q.get("signature", "")
        now = time.time()
        if not (now < expiry <= now + MAX_TTL_S) or not _NONCE.match(nonce) or len(signature) > 200:
            raise Denied(401)
        typed = log_request(self.chain_id, self.market, job_id, self.provider, expiry, nonce)
        try:
            signer = recover_signer(typed, signature)
        except ValueError:
            raise Denied(401) from None
        if not self.nonces.use(nonce, expiry):
            raise Denied(401)
        try:
            job = self.read_job(job_id)
        except Exception:  # unknown job (or the chain cannot say): the same answer as "not yours"
            raise Denied(403) from None
        if job.owner.lower() != signer.lower() or (job.provider or "").lower() != self.provider.lower():
            raise Denied(403)
        return job


class _Handler(BaseHTTPRequestHandler):
    logs: LogServer
    protocol_version = "HTTP/1.1"
    server_version = "dsq-logs"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _cors(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Access-Control-Allow-Methods", "GET, OPTIONS")

    def do_OPTIONS(self) -> None:
        self.send_response(204)
        self._cors()
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self._cors()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # hostile input never stops the server
            log.warning("log request %r failed: %s", self.path[:200], e)
            with contextlib.suppress(OSError):
                self._reply(400, b'{"error":"bad request"}')

    def _get(self) -> None:
        parts = urlsplit(self.path)
        m = _PATH.match(parts.path)
        if m is None:
            self._reply(404, b'{"error":"not found"}')
            return
        job_id = int(m.group(1))
        srv = self.logs
        if m.group(2):  # the typed data to sign, for browser wallets
            typed = log_request(srv.chain_id, srv.market, job_id, srv.provider)
            self._reply(200, json.dumps({"typed_data": typed}).encode())
            return
        q = {k: v[0] for k, v in parse_qs(parts.query).items() if v}
        try:
            job = srv.authorize(job_id, q)
        except Denied as d:
            self._reply(d.status, DENIED)
            return
        stream = 1 if q.get("stream") == "stderr" else 0
        try:
            offset = max(0, int(q.get("offset", "0")))
        except ValueError:
            self._reply(400, b'{"error":"offset must be a whole number of bytes"}')
            return
        if not srv.streams.acquire(blocking=False):
            self._reply(503, b'{"error":"too many log streams open; retry later"}')
            return
        try:
            self._stream(job, stream, offset, q.get("follow") in ("1", "true"))
        finally:
            srv.streams.release()

    def _stream(self, job: Job, stream: int, offset: int, follow: bool) -> None:
        srv = self.logs
        self.send_response(200)
        self._cors()
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        quiet_since = time.monotonic()
        checked = 0.0
        final = job.status.is_final
        while not srv.stopping.is_set():
            sent = False
            path = self._path(job.id, stream)
            if path is not None and path.exists():
                with path.open("rb") as f:
                    f.seek(offset)
                    while data := f.read(CHUNK):
                        text = decoder.decode(data)
                        offset += len(data)
                        pending = len(decoder.getstate()[0])
                        self._event("log", {"text": text, "offset": offset - pending})
                        sent = True
            if sent:
                quiet_since = time.monotonic()
            if not follow or (final and not sent):
                self._event("end", {"offset": offset - len(decoder.getstate()[0])})
                return
            if time.monotonic() - checked > 2.0:  # is the job over? (then one more read, and the end)
                checked = time.monotonic()
                try:
                    final = srv.read_job(job.id).status.is_final
                except Exception as e:  # the chain is away for a moment: keep following
                    log.debug("job %d: cannot read its status: %s", job.id, e)
            if time.monotonic() - quiet_since > srv.keepalive_s:
                self.wfile.write(b": keepalive\n\n")
                self.wfile.flush()
                quiet_since = time.monotonic()
            srv.stopping.wait(srv.poll_s)

    def _path(self, job_id: int, stream: int) -> Path | None:
        try:
            return self.logs.logs_of(job_id)[stream]
        except Exception:  # not started here yet
            return None

    def _event(self, name: str, data: Any) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()
