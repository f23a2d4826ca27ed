"""The worker's heartbeat: a small JSON file in its state directory, rewritten every few seconds while its loop
runs, so that ``dsq provider doctor`` (or any monitor) can tell a live worker from a hung or stopped one."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HEARTBEAT_FILE", "Heartbeat", "read_heartbeat", "write_heartbeat"]

HEARTBEAT_FILE = "heartbeat.json"


@dataclass(frozen=True)
class Heartbeat:
    """The last beat: when (Unix time), whose worker, and whether it reached the chain."""

    time: float
    address: str
    chain_up: bool
    pid: int

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.time


def write_heartbeat(state_dir: Path, address: str, chain_up: bool) -> None:
    """Atomically replaces ``state_dir/heartbeat.json``."""
    path = Path(state_dir) / HEARTBEAT_FILE
    tmp = path.with_name(f".{HEARTBEAT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"time": time.time(), "address": address, "chain_up": chain_up, "pid": os.getpid()}))
    os.replace(tmp, path)


def read_heartbeat(state_dir: Path) -> Heartbeat | None:
    """The last heartbeat in ``state_dir``; None when there is none (or it is not one)."""
    try:
        data = json.loads((Path(state_dir) / HEARTBEAT_FILE).read_text())
        return Heartbeat(float(data["time"]), str(data["address"]), bool(data["chain_up"]), int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
