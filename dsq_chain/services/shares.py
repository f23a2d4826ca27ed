"""Shares of the pending jobs among several active meta-schedulers, so that they do not race each other.

Each active scheduler is started with the addresses of the others (``dsq scheduler run --peer ADDRESS``).
The schedulers of that set that hold the scheduler role on chain (followed through ``RoleGranted`` /
``RoleRevoked``) are sorted by address; job ``j`` belongs first to the one at position ``j mod n``. A
scheduler examines its own share at once and another's only once the job has waited ``takeover_s`` (the
other is gone, or stuck): two live schedulers never send an assignment for the same job, and one alone
still places everything, ``takeover_s`` later for the other's share. Every scheduler computes the same
owner for a job from the chain alone, so they need no channel between them.
"""

from __future__ import annotations

from collections.abc import Iterable

from eth_utils.address import to_checksum_address

from dsq_chain.errors import InputError
from dsq_chain.sdk.events import ChainEvent, RoleGranted, RoleRevoked

#: Default seconds a job of another active scheduler's share waits before this one takes it.
DEFAULT_TAKEOVER_S = 5.0


class Shares:
    """Which of the active schedulers takes a pending job first; a follower handler (role events)."""

    def __init__(self, me: str, peers: Iterable[str] = (), takeover_s: float = DEFAULT_TAKEOVER_S, *,
                 role: bytes = b"") -> None:
        """``role``: the market's ``SCHEDULER_ROLE`` (needed only with ``peers``)."""
        if takeover_s < 0:
            raise InputError(f"takeover must be >= 0 seconds, got {takeover_s!r}")
        self.me = to_checksum_address(me)
        self.peers = frozenset(_address(p) for p in peers) - {self.me}
        self.takeover_s = takeover_s
        self.role = bytes(role)
        self._holders: set[str] = set()
        self._active: tuple[str, ...] = (self.me,)

    @property
    def active(self) -> tuple[str, ...]:
        """The schedulers sharing the jobs now (this one and the peers holding the role), sorted."""
        return self._active

    def on_event(self, event: ChainEvent) -> None:
        if isinstance(event, RoleGranted | RoleRevoked) and bytes(event.role) == self.role:
            account = to_checksum_address(event.account)
            if isinstance(event, RoleGranted):
                self._holders.add(account)
            else:
                self._holders.discard(account)
            self._active = tuple(sorted({self.me, *(self.peers & self._holders)}, key=str.lower))

    def clear(self) -> None:
        """Forget the role holders (a reorg: the events are replayed)."""
        self._holders.clear()
        self._active = (self.me,)

    def owner(self, job_id: int) -> str:
        """The scheduler whose share ``job_id`` is."""
        return self._active[job_id % len(self._active)]

    def delay(self, job_id: int) -> float:
        """Seconds ``job_id`` waits (after becoming examinable) before this scheduler takes it."""
        return 0.0 if len(self._active) == 1 or self.owner(job_id) == self.me else self.takeover_s


def _address(peer: str) -> str:
    try:
        return to_checksum_address(peer)
    except ValueError:
        raise InputError(f"peer {peer!r} is not an address (0x followed by 40 hex digits)") from None
