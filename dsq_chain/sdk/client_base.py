"""What every client shares: a wallet bound to the deployment's contracts (:meth:`_Client.connect`),
and what every role reads — jobs with their bills, a job's events, providers, balances — or may do:
withdraw its internal balance."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Self, cast

from eth_utils.address import to_checksum_address
from web3.types import TxReceipt

from dsq_chain.errors import InputError
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Call, Chain, Wallet, node_errors
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import ChainEvent
from dsq_chain.sdk.job_events import job_events, settlements
from dsq_chain.sdk.receipts import Receipt, Withdrawal, receipt_of, withdrawal_of
from dsq_chain.sdk.signers import SignerLike
from dsq_chain.sdk.views import bill_of, job_from_view, provider_from_view
from dsq_chain.types import Job, JobStatus, Provider


class _Client:
    """Shared plumbing: a wallet bound to the deployment's contracts."""

    def __init__(self, wallet: Wallet, deployment: Deployment) -> None:
        self.wallet = wallet
        self.deployment = deployment
        self.token, self.market = deployment.contracts(wallet.chain)
        self._domain: dict[str, str] | None = None

    @classmethod
    def connect(
        cls, rpc_url: str, deployment: Deployment | str | os.PathLike[str], signer: SignerLike | None = None
    ) -> Self:
        """A client for the deployment (a :class:`Deployment` or its JSON file) at ``rpc_url``.

        ``signer``: a private key, an eth-account ``LocalAccount``, a
        :class:`~dsq_chain.sdk.signers.Signer` (``signers.from_keystore(path, password)``, a remote
        signer, ``signers.ApeSigner(ape_account)``), or None for a read-only client.

        Raises InputError (bad key, wrong chain id, unreadable deployment file) and ChainUnavailable."""
        dep = deployment if isinstance(deployment, Deployment) else Deployment.load(deployment)
        return cls(Chain(rpc_url).wallet(signer), dep)

    @property
    def address(self) -> str:
        """The address this client acts for (the zero address for a read-only client)."""
        return self.wallet.address

    @property
    def chain(self) -> Chain:
        """The node connection (raw JSON-RPC, block time, Anvil helpers)."""
        return self.wallet.chain

    @property
    def read_only(self) -> bool:
        """True when this client has no signer (it reads; sending raises InputError)."""
        return self.wallet.read_only

    def _writable(self, what: str) -> None:
        if self.read_only:
            raise InputError(f"{what}: this client is read-only: connect with a key, a keystore or a signer "
                             "to send transactions")

    def _send(self, fn: Any) -> Receipt:
        return receipt_of(self.wallet.transact(fn))

    def _raw(self, fn: Any) -> TxReceipt:
        return self.wallet.transact(fn)

    # -- reads shared by every role ------------------------------------------------------------
    def job(self, job_id: int) -> Job:
        """The job's on-chain record, with its bill: ``billed``/``refunded`` once settled, ``billed`` so
        far while RUNNING. Raises ``errors.JobNotFound`` for unknown ids."""
        job = job_from_view(self.wallet.check(Call(self.market.functions.getJob(job_id))))
        return self._with_bills([job])[0]

    def jobs(self, job_ids: Iterable[int]) -> list[Job]:
        """Several jobs (with their bills), read in one JSON-RPC batch. Raises ``errors.JobNotFound``
        for unknown ids, ChainUnavailable when the node is unreachable."""
        ids = list(job_ids)
        if not ids:
            return []
        results = self._batch([self.market.functions.getJob(i) for i in ids])
        return self._with_bills([job_from_view(cast(Sequence[Any], r)) for r in results])

    def _with_bills(self, jobs: list[Job]) -> list[Job]:
        """``jobs`` with ``billed``/``refunded`` from their settlements (final) or ``billSoFar`` (RUNNING)."""
        final = [j.id for j in jobs if j.status.is_final]
        settled = settlements(self.chain, self.deployment, final) if final else {}
        running = [j.id for j in jobs if j.status is JobStatus.RUNNING]
        so_far = dict(zip(running, self._batch([self.market.functions.billSoFar(i) for i in running]), strict=True))
        return [bill_of(j, settled.get(j.id), int(so_far[j.id]) if j.id in so_far else None) for j in jobs]

    def job_count(self) -> int:
        """How many jobs were ever submitted (ids run from 1 to this)."""
        return int(self.market.functions.jobCount().call())

    def events(self, job_id: int) -> list[ChainEvent]:
        """Every event about ``job_id``, oldest first: its submission (the array's, for a job inside
        one), assignments, status changes, releases, top-ups and settlement. Raises ``errors.JobNotFound``."""
        job = job_from_view(self.wallet.check(Call(self.market.functions.getJob(job_id))))
        return job_events(self.chain, self.deployment, job_id, job.head_id)

    def provider(self, address: str) -> Provider:
        """A provider's registration (status, hardware, free capacity, prices). Raises
        ``errors.ProviderNotRegistered`` for an unknown address."""
        view = self.wallet.check(Call(self.market.functions.getProvider(to_checksum_address(address))))
        return provider_from_view(view)

    def providers(self) -> list[Provider]:
        """Every provider that ever registered, in id order."""
        n = int(self.market.functions.providerCount().call())
        addrs = self._batch([self.market.functions.providerAt(i) for i in range(1, n + 1)])
        return [provider_from_view(cast(Sequence[Any], v))
                for v in self._batch([self.market.functions.getProvider(a) for a in addrs])]

    def _batch(self, calls: list[Any], size: int = 500) -> list[Any]:
        """The results of many view calls, in JSON-RPC batches of ``size``."""
        out: list[Any] = []
        for start in range(0, len(calls), size):
            with node_errors(self.chain.rpc_url), self.chain.w3.batch_requests() as batch:
                for fn in calls[start:start + size]:
                    batch.add(fn)
                out.extend(batch.execute())
        return out

    def balance(self, account: str | None = None) -> Credits:
        """The withdrawable internal balance (refunds, earnings) of ``account`` (default: this client's)."""
        return Credits(units=int(self.market.functions.balanceOf(to_checksum_address(account or self.address)).call()))

    def credits(self, account: str | None = None) -> Credits:
        """Same as :meth:`balance` (the name older code uses)."""
        return self.balance(account)

    def token_balance(self, account: str | None = None) -> Credits:
        """The credit tokens ``account`` (default: this client's) holds in its wallet."""
        return Credits(units=int(self.token.functions.balanceOf(to_checksum_address(account or self.address)).call()))

    def withdraw(self) -> Withdrawal:
        """Withdraws this account's internal balance as tokens; the receipt carries the ``amount``.

        Raises ``errors.NothingToWithdraw`` when the balance is zero."""
        return withdrawal_of(self._raw(self.market.functions.withdraw()))
