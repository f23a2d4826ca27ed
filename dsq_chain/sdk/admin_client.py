"""The deployment admin's client: approve, ban and remove providers, grant the scheduler role, mint and
sweep credits, set the claim timeout."""

from __future__ import annotations

from eth_utils.address import to_checksum_address

from dsq_chain.errors import InputError
from dsq_chain.money import Credits
from dsq_chain.sdk.client_base import _Client
from dsq_chain.sdk.receipts import Receipt


class AdminClient(_Client):
    """The deployment admin's actions."""

    def approve(self, provider: str) -> Receipt:
        """Approves a registered provider. Raises the contract's ``AccessControlUnauthorizedAccount``,
        ``ProviderNotRegistered``."""
        return self._send(self.market.functions.approveProvider(to_checksum_address(provider)))

    def ban(self, provider: str) -> Receipt:
        """Bans a provider (its jobs not yet started go back to PENDING). Raises the contract's
        ``AccessControlUnauthorizedAccount``, ``ProviderNotRegistered``."""
        return self._send(self.market.functions.banProvider(to_checksum_address(provider)))

    def remove(self, provider: str) -> Receipt:
        """Removes an idle provider. Raises the contract's ``AccessControlUnauthorizedAccount``,
        ``ProviderNotRegistered``, ``ProviderBusy``."""
        return self._send(self.market.functions.removeProvider(to_checksum_address(provider)))

    def grant_scheduler(self, account: str) -> Receipt:
        """Gives ``account`` the scheduler role. Raises the contract's ``AccessControlUnauthorizedAccount``."""
        role = self.market.functions.SCHEDULER_ROLE().call()
        return self._send(self.market.functions.grantRole(role, to_checksum_address(account)))

    def revoke_scheduler(self, account: str) -> Receipt:
        """Takes the scheduler role back. Raises the contract's ``AccessControlUnauthorizedAccount``."""
        role = self.market.functions.SCHEDULER_ROLE().call()
        return self._send(self.market.functions.revokeRole(role, to_checksum_address(account)))

    def mint(self, to: str, amount: Credits | str) -> Receipt:
        """Mints ``amount`` of credit tokens to ``to``. Raises InputError, the contract's
        ``AccessControlUnauthorizedAccount``, ``SupplyCapExceeded``."""
        units = Credits.of(amount, "amount")
        if units <= 0:
            raise InputError(f"mint amount must be positive, got {units}")
        return self._send(self.token.functions.mint(to_checksum_address(to), int(units)))

    def sweep(self, to: str) -> Credits:
        """Sends the credits the market holds above what it owes (sent to it by mistake) to ``to``; returns
        the amount. Raises InputError when there is nothing to sweep."""
        surplus = self.token_balance(self.market.address) - int(self.market.functions.owed().call())
        if surplus <= 0:
            raise InputError("the market holds no credits above its escrows and balances")
        self._send(self.market.functions.sweep(to_checksum_address(to)))
        return Credits(units=surplus)

    def set_claim_timeout(self, seconds: int) -> Receipt:
        """How long a provider has to claim an assignment. Raises InputError, the contract's
        ``AccessControlUnauthorizedAccount``."""
        if not 0 < seconds < 2**32:
            raise InputError(f"claim timeout must be 1..2**32-1 seconds, got {seconds}")
        return self._send(self.market.functions.setClaimTimeout(seconds))
