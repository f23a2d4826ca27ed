"""Starting Anvil: the node handed out is always our own process, even when its port was taken first."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dsq_chain.sdk import anvil
from dsq_chain.sdk.anvil import AnvilError, free_port, start_anvil
from dsq_chain.sdk.chain import Chain


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process listens on (it accepts connections, like a node would)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_an_explicit_port_taken_by_another_listener_is_a_clear_error(taken_port: int) -> None:
    with pytest.raises(AnvilError, match=f"port {taken_port} is taken"):
        start_anvil(taken_port, startup_timeout=10)


def test_an_auto_chosen_port_taken_before_anvil_binds_is_retried(taken_port: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of parallel tests: the free port we probed is taken before Anvil binds it."""
    ports = iter([taken_port])
    monkeypatch.setattr(anvil, "free_port", lambda: next(ports, None) or free_port())
    with start_anvil() as node:
        assert node.port != taken_port
        assert node.process.poll() is None
        assert anvil._listener_is(node.port, node.pid) is True
        assert Chain(node.rpc_url).block_number() == 0


def test_a_second_node_on_a_running_nodes_port_does_not_share_it() -> None:
    with start_anvil() as first:
        first_chain = Chain(first.rpc_url)
        first_chain.call_rpc("evm_mine", [])
        with pytest.raises(AnvilError, match="is taken"):
            start_anvil(first.port, startup_timeout=10)
        assert first.process.poll() is None and first_chain.block_number() == 1
