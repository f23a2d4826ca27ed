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

from dsq_chain.errors import DsqError

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
    here = Path(__file__).resolve().parents[2]
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
    # A free port can be taken by someone else between our probe and Anvil's bind (tests start nodes
    # in parallel). Then our Anvil exits and another process answers on that port: never hand that
    # one out. With an auto-chosen port, try again on a new one.
    attempts = 1 if port else 5
    for attempt in range(attempts):
        chosen = port or free_port()
        try:
            return _launch(binary, chosen, accounts, block_time, mixed_mining, dump_state, load_state,
                           log_path, extra_args, startup_timeout)
        except _PortTaken:
            if attempt == attempts - 1:
                raise AnvilError(f"port {chosen} is taken by another process") from None
    raise AssertionError("unreachable")


class _PortTaken(Exception):
    """Our Anvil could not bind: another process owns the port."""


def _launch(
    binary: Path,
    port: int,
    accounts: int,
    block_time: float | None,
    mixed_mining: bool,
    dump_state: Path | None,
    load_state: Path | None,
    log_path: Path | None,
    extra_args: list[str] | None,
    startup_timeout: float,
) -> AnvilNode:
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
            if _port_in_use(port):
                raise _PortTaken(port)
            raise AnvilError(f"anvil exited with code {proc.returncode} at start ({' '.join(args)})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                pass
        except OSError:
            time.sleep(0.05)
            continue
        owner = _listener_is(port, proc.pid)
        if owner is None:  # no /proc: our process must outlive the answer to count as the listener
            time.sleep(0.2)
            owner = proc.poll() is None
        if owner:
            return node
        node.stop()
        raise _PortTaken(port)
    node.stop()
    raise AnvilError(f"anvil did not answer on port {port} within {startup_timeout:.0f} s")


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _listener_is(port: int, pid: int) -> bool | None:
    """Whether process ``pid`` owns the socket listening on 127.0.0.1:``port`` (None: cannot tell)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False
