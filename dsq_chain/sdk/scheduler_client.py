"""The meta-scheduler's on-chain side: assign (one job or many in one transaction) and the releases
anyone may trigger."""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils.address import to_checksum_address

from dsq_chain.errors import InputError
from dsq_chain.sdk.chain import Call
from dsq_chain.sdk.client_base import _Client
from dsq_chain.sdk.placement import ChainLabel
from dsq_chain.sdk.receipts import Receipt


class SchedulerClient(_Client):
    """The meta-scheduler's transactions (the account needs the scheduler role)."""

    def assign(self, job_id: int, provider: str, labels: Sequence[ChainLabel] = ()) -> Receipt:
        """Assigns a PENDING job to ``provider``. Raises the contract's ``AccessControlUnauthorizedAccount``,
        ``JobNotFound``, ``InvalidStatus``, ``ProviderNotApproved``, ``ProviderIsPaused``,
        ``InsufficientCapacity``, ``PriceAboveCap``, ``LabelsMismatch``, ``LabelMismatch``."""
        return self._send(self.market.functions.assign(job_id, to_checksum_address(provider), list(labels)))

    def assign_batch(
        self, assignments: Sequence[tuple[int, str, Sequence[ChainLabel]]], *, gas: int | None = None
    ) -> Receipt:
        """Assigns many (job id, provider, on-chain label constraints) in one transaction; entries that no
        longer fit are skipped on chain.

        ``gas``: an explicit gas limit (no estimation round trip; a revert then shows in the receipt and
        raises the same ContractError); None estimates it. Raises InputError (empty), the contract's
        ``AccessControlUnauthorizedAccount``, ``LengthMismatch``."""
        if not assignments:
            raise InputError("assign_batch() needs at least one assignment")
        ids = [a[0] for a in assignments]
        provs = [to_checksum_address(a[1]) for a in assignments]
        labels = [list(a[2]) for a in assignments]
        fn = self.market.functions.assignBatch(ids, provs, labels)
        return self._send(fn if gas is None else Call(fn, gas=gas))

    def timeout_claim(self, job_id: int) -> Receipt:
        """Releases a META_SCHEDULED job whose claim timed out (anyone may). Raises the contract's
        ``JobNotFound``, ``InvalidStatus``, ``ClaimNotExpired``."""
        return self._send(self.market.functions.timeoutClaim(job_id))

    def release_from_banned(self, job_id: int) -> Receipt:
        """Sends a banned provider's META_SCHEDULED/SCHEDULED job back to PENDING (anyone may). Raises the
        contract's ``JobNotFound``, ``InvalidStatus``, ``ProviderNotBanned``."""
        return self._send(self.market.functions.releaseFromBanned(job_id))

    def panic(self, job_id: int) -> Receipt:
        """A provider-side fault seen by the scheduler: the whole escrow goes back to the owner. Raises the
        contract's ``JobNotFound``, ``InvalidStatus``, ``NotAllowedToPanic``."""
        return self._send(self.market.functions.panic(job_id))
