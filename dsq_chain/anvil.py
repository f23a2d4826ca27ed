"""Start and stop a local Anvil node (the embedded default chain).

Prefers an ``anvil`` on PATH (Foundry users), else the binary npm's ``@foundry-rs/anvil`` ships in
``node_modules``. The process is started directly (not through the npm wrapper) so its PID is ours.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account

from .errors import DsqError

#: Anvil's default mnemonic; its accounts are public test keys, never use them on a real network.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


class AnvilError(DsqError):
    """Anvil could not be found or started."""


def find_anvil(root: Path | None = None) -> Path:
    """The anvil binary: ``$DSQ_ANVIL``, ``anvil`` on PATH, or npm's copy under ``node_modules``."""
    env = os.environ.get("DSQ_ANVIL")
    if env:
        return Path(env)
    on_path = shutil.which("anvil")
    if on_path and "node_modules" not in on_path:
        return Path(on_path)
    roots = [root] if root else []
    here = Path(__file__).resolve().parent.parent
    roots += [here, Path.cwd(), *Path.cwd().parents]
    for r in roots:
        candidate = r / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
        if candidate.is_file():
            return candidate
    raise AnvilError("anvil not found: install Foundry, or run `npm ci` in the dsq-chain checkout")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dev_keys(n: int = 10) -> list[str]:
    """Private keys (0x-hex) of Anvil's first ``n`` default accounts."""
    Account.enable_unaudited_hdwallet_features()
    return [
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}").key.to_0x_hex() for i in range(n)
    ]


@dataclass
class AnvilNode:
    """A running Anvil process. Use as a context manager or call :meth:`stop`."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path | None = None
    args: list[str] = field(default_factory=list)

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the node by PID (SIGTERM, then SIGKILL); with --dump-state the state is written on exit."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self) -> AnvilNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_anvil(
    port: int | None = None,
    *,
    accounts: int = 20,
    block_time: float | None = None,
    mixed_mining: bool = False,
    dump_state: Path | None = None,
    load_state: Path | None = None,
    log_path: Path | None = None,
    extra_args: list[str] | None = None,
    startup_timeout: float = 20.0,
) -> AnvilNode:
    """Starts Anvil on ``port`` (a free one by default) and waits until it answers RPC.

    ``mixed_mining`` keeps automine and adds an empty block every ``block_time`` (default 1) seconds.
    """
    binary = find_anvil()
    port = port or free_port()
    args = [str(binary), "--port", str(port), "--host", "127.0.0.1", "--accounts", str(accounts),
            "--mnemonic", DEV_MNEMONIC, "--silent"]
    if mixed_mining:
        # Transactions are still mined at once, and an empty block every second keeps chain time
        # moving like a real chain's (with automine alone, time stands still between transactions).
        args += ["--block-time", str(block_time or 1), "--mixed-mining"]
    elif block_time:
        args += ["--block-time", str(block_time)]
    if dump_state:
        args += ["--dump-state", str(dump_state)]
    if load_state:
        args += ["--load-state", str(load_state)]
    args += extra_args or []
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    node = AnvilNode(port, proc, log_path, args)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AnvilError(f"anvil exited with code {proc.returncode} at start ({' '.join(args)})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return node
        except OSError:
            time.sleep(0.05)
    node.stop()
    raise AnvilError(f"anvil did not answer on port {port} within {startup_timeout:.0f} s")
