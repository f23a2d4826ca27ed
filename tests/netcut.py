"""A TCP relay on loopback whose link can be cut and restored: a provider's ISP going down, for real sockets.

:class:`LinkCut` listens on a free loopback port and relays every connection to ``upstream`` (a node's
port). :meth:`LinkCut.cut` closes every open connection and refuses new ones (each is accepted and closed at
once: the client sees its requests fail, as when its uplink is down); :meth:`LinkCut.restore` relays again.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class LinkCut:
    """A cuttable TCP relay from ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream>``; see the module docstring."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.up = True
        #: Connections refused while the link was cut.
        self.refused = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="linkcut-accept").start()

    def cut(self) -> None:
        """Drops every open connection; new ones are refused until :meth:`restore`."""
        with self._lock:
            self.up = False
            for s in self._open:
                _close(s)
            self._open.clear()

    def restore(self) -> None:
        with self._lock:
            self.up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._server)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                if not self.up:
                    self.refused += 1
                    _close(client)
                    continue
            try:
                node = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open |= {client, node}
            for a, b in ((client, node), (node, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True, name="linkcut-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
