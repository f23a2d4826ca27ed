"""New blocks by subscription (eth_subscribe newHeads over WebSocket), polling where the node has none."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from dsq_chain.sdk.anvil import AnvilNode
from dsq_chain.sdk.chain import Chain
from dsq_chain.services.heads import HeadWatcher, ws_url


def test_ws_url_keeps_host_port_and_path() -> None:
    assert ws_url("http://127.0.0.1:8545") == "ws://127.0.0.1:8545"
    assert ws_url("https://node.example/rpc/key") == "wss://node.example/rpc/key"
    assert ws_url("ipc:///tmp/anvil.ipc") is None


def test_a_new_block_wakes_the_waiter_at_once(anvil: AnvilNode, chain: Chain) -> None:
    heads = HeadWatcher(anvil.rpc_url)
    try:
        assert heads.start(wait_s=5.0), "Anvil serves WebSocket on its HTTP port: the subscription must come up"
        seen = heads.seq
        t0 = time.monotonic()
        assert heads.wait(seen, 0.2) == seen, "no block was mined: the wait times out unchanged"
        assert time.monotonic() - t0 >= 0.15
        timer = threading.Timer(0.3, chain.mine)
        timer.start()
        t0 = time.monotonic()
        after = heads.wait(seen, 10.0)
        assert after > seen and time.monotonic() - t0 < 5.0
    finally:
        heads.close()


@pytest.fixture
def http_only() -> Iterator[str]:
    """An HTTP server that answers every request with 404: no WebSocket there."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_without_websocket_the_waiter_polls(http_only: str) -> None:
    heads = HeadWatcher(http_only, retry_s=0.1)
    try:
        assert heads.start(wait_s=0.5) is False and not heads.subscribed
        t0 = time.monotonic()
        assert heads.wait(heads.seq, 0.2) == 0
        assert 0.15 <= time.monotonic() - t0 < 2.0
    finally:
        heads.close()
