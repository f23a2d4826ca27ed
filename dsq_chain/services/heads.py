"""New blocks by subscription: a service waits for the node's next block instead of polling blindly.

:class:`HeadWatcher` subscribes to ``newHeads`` (``eth_subscribe`` over WebSocket: Anvil, Geth, Reth and
most L2 nodes serve it, Anvil on the same port as HTTP) in a background thread and wakes whoever waits in
:meth:`HeadWatcher.wait` the moment a block arrives. Where the node offers no WebSocket, or the link
drops, ``wait`` simply times out: the caller's polling goes on as before, and the thread tries to
subscribe again now and then. Nothing here is trusted: a head only says "look now"; what changed is
read from the chain by the caller (the event follower).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.parse
from typing import Any

log = logging.getLogger("dsq.heads")

#: Seconds between attempts to (re)subscribe after a failure.
RETRY_S = 5.0


def ws_url(rpc_url: str) -> str | None:
    """The WebSocket URL of an HTTP(S) RPC URL on the same host and port (None for other schemes)."""
    parts = urllib.parse.urlsplit(rpc_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    return None if scheme is None else urllib.parse.urlunsplit((scheme, *parts[1:]))


class HeadWatcher:
    """Counts the node's new blocks as they are announced; see the module docstring."""

    def __init__(self, rpc_url: str, *, connect_timeout_s: float = 2.0, retry_s: float = RETRY_S) -> None:
        self.url = ws_url(rpc_url)
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        self._cond = threading.Condition()
        self._seq = 0
        self._subscribed = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    @property
    def subscribed(self) -> bool:
        """Whether blocks currently arrive by subscription (False: the caller is polling)."""
        return self._subscribed

    @property
    def seq(self) -> int:
        """How many heads arrived so far."""
        return self._seq

    def start(self, wait_s: float = 1.0) -> bool:
        """Starts the background subscription; returns whether it was up within ``wait_s`` seconds."""
        if self.url is None or self._thread is not None:
            return self._subscribed
        self._thread = threading.Thread(target=self._follow, name="dsq-heads", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + wait_s
        with self._cond:
            while not self._subscribed and time.monotonic() < deadline and self._thread.is_alive():
                self._cond.wait(0.05)
        return self._subscribed

    def wait(self, seen: int, timeout: float) -> int:
        """Waits until a head newer than ``seen`` (a value of :attr:`seq`) arrives, at most ``timeout``
        seconds; returns :attr:`seq` (unchanged on a timeout: poll anyway)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._seq == seen and not self._closed.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._seq

    def close(self) -> None:
        self._closed.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to close
                conn.close()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)

    # ------------------------------------------------------------------ the thread

    def _follow(self) -> None:
        while not self._closed.is_set():
            try:
                self._subscribe_and_read()
            except Exception as e:  # node down, no WebSocket, a broken frame: poll meanwhile, retry later
                if not self._closed.is_set():
                    log.debug("no newHeads subscription at %s (%s): polling", self.url, e)
            finally:
                self._set_subscribed(False)
                self._conn = None
            self._closed.wait(self.retry_s)

    def _subscribe_and_read(self) -> None:
        from websockets.sync.client import connect

        assert self.url is not None
        with connect(self.url, open_timeout=self.connect_timeout_s, close_timeout=1,
                     max_size=2**20) as conn:
            self._conn = conn
            conn.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}))
            answer = json.loads(conn.recv(timeout=self.connect_timeout_s))
            if not isinstance(answer, dict) or not isinstance(answer.get("result"), str):
                raise ConnectionError(f"eth_subscribe refused: {str(answer)[:200]}")
            self._set_subscribed(True)
            log.info("following new blocks by subscription at %s", self.url)
            while not self._closed.is_set():
                conn.recv()  # any notification: a new head (its content is not needed, nor trusted)
                with self._cond:
                    self._seq += 1
                    self._cond.notify_all()

    def _set_subscribed(self, value: bool) -> None:
        with self._cond:
            if self._subscribed != value:
                self._subscribed = value
                self._cond.notify_all()
