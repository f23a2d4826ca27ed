"""Running the dashboard: uvicorn in the foreground (``dsq dashboard``) or in a thread (tests, the demo)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI


class DashboardServer:
    """The app served by uvicorn on ``host:port`` in a background thread; port 0 picks a free one."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                     timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(self.config)
        self._thread = threading.Thread(target=self.server.run, name="dsq-dashboard", daemon=True)

    def start(self, timeout: float = 15.0) -> DashboardServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
