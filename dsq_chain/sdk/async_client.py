"""A job owner's client for asyncio applications, on web3's ``AsyncWeb3``.

:class:`AsyncGridClient` mirrors :class:`~dsq_chain.sdk.client.GridClient` (same checks before sending,
same amounts, receipts and exceptions), with every chain call awaited::

    client = await AsyncGridClient.connect(rpc_url, "deployment.json", key)
    [job_id] = await client.submit("job.yaml", credits="2", max_rate="0.5")
    job = await client.wait_for(job_id)

Transactions are signed by the client's :class:`~dsq_chain.sdk.signers.Signer` and sent one at a
time (nonces are read from the node, under a lock, so concurrent tasks of one client do not collide).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Self, cast

from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError, TimeExhausted
from web3.types import TxReceipt

from dsq_chain import artifacts, lifecycle
from dsq_chain.errors import ChainUnavailable, InputError, TransactionFailed
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import GAS_ADDEND, GAS_MARGIN, fee_fields
from dsq_chain.sdk.chain import _decode as _decoded
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import ChainEvent, EventDecoder, JobSettled, JobSubmitted, normalise_log, sort_events
from dsq_chain.sdk.job_events import JOB_EVENTS
from dsq_chain.sdk.permits import PERMIT_TTL, payment_need, permit_typed_data
from dsq_chain.sdk.receipts import Receipt, Submission, Withdrawal, receipt_of, submission_of, withdrawal_of
from dsq_chain.sdk.signers import Signer, SignerLike, as_signer
from dsq_chain.sdk.submission import prepare_submission, top_up_units
from dsq_chain.sdk.views import bill_of, job_from_view, provider_from_view
from dsq_chain.sdk.waiter import Waiter
from dsq_chain.types import Job, JobStatus, LabelConstraint, Provider, ProviderStatus, Resources

if TYPE_CHECKING:
    from dsq_chain.matching import Explanation
    from dsq_chain.workloads.workflow import Workflow


def _topic(n: int) -> str:
    return "0x" + n.to_bytes(32, "big").hex()


class AsyncGridClient:
    """A job owner's view of the grid for asyncio code (see the module docstring)."""

    def __init__(self, w3: AsyncWeb3[Any], deployment: Deployment, signer: SignerLike | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.signer: Signer = as_signer(signer)
        self.token = w3.eth.contract(address=deployment.token, abi=artifacts.abi("CreditToken"))  # type: ignore[call-overload]
        self.market = w3.eth.contract(address=deployment.market, abi=artifacts.abi("JobMarket"))  # type: ignore[call-overload]
        self._lock = asyncio.Lock()
        self._domain: dict[str, str] | None = None

    @classmethod
    async def connect(
        cls, rpc_url: str, deployment: Deployment | str | os.PathLike[str], signer: SignerLike | None = None
    ) -> Self:
        """A client for the deployment at ``rpc_url`` (``signer`` as for ``GridClient.connect``; None:
        read-only). Raises InputError (wrong chain id, bad key or file) and ChainUnavailable."""
        dep = deployment if isinstance(deployment, Deployment) else Deployment.load(deployment)
        w3 = AsyncWeb3(AsyncWeb3.AsyncHTTPProvider(rpc_url))
        try:
            chain_id = await w3.eth.chain_id
        except (TimeoutError, OSError) as e:
            raise ChainUnavailable(f"RPC node at {rpc_url} unreachable: {e.__class__.__name__}") from e
        except Exception as e:  # aiohttp's connection errors are not OSErrors
            raise ChainUnavailable(f"RPC node at {rpc_url} unreachable: {e.__class__.__name__}") from e
        if chain_id != dep.chain_id:
            raise InputError(f"chain id {chain_id} at {rpc_url} != deployment's {dep.chain_id}")
        return cls(w3, dep, signer)

    @property
    def address(self) -> str:
        """The address this client acts for (the zero address for a read-only client)."""
        return self.signer.address

    async def close(self) -> None:
        """Closes the client's HTTP sessions (aiohttp warns of an unclosed session at exit otherwise). A call
        after it opens a new one. ``async with await AsyncGridClient.connect(...) as client:`` closes on
        leaving the block."""
        disconnect = getattr(self.w3.provider, "disconnect", None)
        if disconnect is not None:
            await disconnect()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- reads ------------------------------------------------------------------------------------
    async def _call(self, fn: Any, label: str) -> Any:
        try:
            return await fn.call({"from": self.address})
        except (ContractCustomError, ContractLogicError, ContractPanicError) as e:
            raise _decoded(e, label) from None

    async def job(self, job_id: int) -> Job:
        """The job's record with its bill (see ``GridClient.job``). Raises ``errors.JobNotFound``."""
        job = job_from_view(await self._call(self.market.functions.getJob(job_id), f"getJob({job_id})"))
        settled = None
        if job.status.is_final:
            logs = [e for e in await self._logs([self._event_topic("JobSettled"), _topic(job_id)])
                    if isinstance(e, JobSettled)]
            settled = logs[-1] if logs else None
        so_far = None
        if job.status is JobStatus.RUNNING:
            so_far = int(await self.market.functions.billSoFar(job_id).call())
        return bill_of(job, settled, so_far)

    async def jobs(self, job_ids: Iterable[int]) -> list[Job]:
        """Several jobs, read concurrently."""
        return list(await asyncio.gather(*(self.job(i) for i in job_ids)))

    async def jobs_of(self, owner: str | None = None) -> list[Job]:
        """Every job submitted by ``owner`` (default: this account), jobs of arrays included."""
        padded = "0x" + "0" * 24 + to_checksum_address(owner or self.address)[2:].lower()
        ids: list[int] = []
        for ev in await self._logs([self._event_topic("JobSubmitted"), None, padded]):
            if isinstance(ev, JobSubmitted):
                ids.extend(ev.job_ids)
        return await self.jobs(ids)

    async def events(self, job_id: int) -> list[ChainEvent]:
        """Every event about ``job_id``, its array's submission included (see ``GridClient.events``)."""
        job = job_from_view(await self._call(self.market.functions.getJob(job_id), f"getJob({job_id})"))
        own = [self._event_topic(n) for n in JOB_EVENTS if n != "JobSubmitted"]
        events = await self._logs([own, _topic(job_id)])
        events += await self._logs([self._event_topic("JobSubmitted"), _topic(job.head_id or job_id)])
        return sort_events(events)

    async def balance(self, account: str | None = None) -> Credits:
        """The withdrawable internal balance of ``account`` (default: this client's)."""
        fn = self.market.functions.balanceOf(to_checksum_address(account or self.address))
        return Credits(units=int(await fn.call()))

    async def token_balance(self, account: str | None = None) -> Credits:
        """The credit tokens ``account`` (default: this client's) holds."""
        fn = self.token.functions.balanceOf(to_checksum_address(account or self.address))
        return Credits(units=int(await fn.call()))

    async def providers(self) -> list[Provider]:
        """Every provider that ever registered, in id order."""
        n = int(await self.market.functions.providerCount().call())
        addrs = await asyncio.gather(*(self.market.functions.providerAt(i).call() for i in range(1, n + 1)))
        views = await asyncio.gather(*(self.market.functions.getProvider(a).call() for a in addrs))
        return [provider_from_view(v) for v in views]

    async def check(
        self, workflow: Workflow | bytes | str | os.PathLike[str], *, max_rate: Credits | str
    ) -> Explanation:
        """The feasibility check of ``submit`` alone (see ``GridClient.check``). Raises ``errors.Infeasible``."""
        sub = prepare_submission(workflow, Credits(1), max_rate)
        return await self._feasible(sub.workflow.resources, sub.workflow.labels, sub.max_rate)

    async def _feasible(self, resources: Resources, labels: Sequence[LabelConstraint], cap: Credits) -> Explanation:
        from dsq_chain.sdk.feasibility import explain_submission, fold_labels, labels_query, require_placeable

        providers = [p for p in await self.providers() if p.status is ProviderStatus.APPROVED]
        addresses = [p.address for p in providers]
        raw = await self._raw_logs(labels_query(self.deployment, addresses)) if addresses else []
        folded = fold_labels(raw, addresses)
        return require_placeable(explain_submission(providers, folded, resources, labels, cap, owner=self.address))

    # -- transactions -----------------------------------------------------------------------------
    async def submit(
        self,
        workflow: Workflow | bytes | str | os.PathLike[str],
        *,
        credits: Credits | str,
        max_rate: Credits | str,
        count: int = 1,
        force: bool = False,
        resources: Resources | None = None,
        labels: Sequence[LabelConstraint] | None = None,
    ) -> Submission:
        """``GridClient.submit``, awaited: same checks (feasibility unless ``force``), same payment
        (internal balance, then a permit). Raises what it raises: InputError, ``errors.Infeasible``, and
        the contract's ``ZeroCredits``, ``ZeroPriceCap``, ``InvalidResources``, ``EscrowOverflow``,
        ``ERC20InsufficientBalance``, ``ERC2612InvalidSigner``, ..."""
        sub = prepare_submission(workflow, credits, max_rate, count, resources, labels)
        if not force:
            await self._feasible(sub.workflow.resources, sub.workflow.labels, sub.max_rate)
        permit = await self._permit_for(sub.total)
        fn = (self.market.functions.submit(*sub.args) if permit is None
              else self.market.functions.submitWithPermit(*sub.args, permit))
        return submission_of(await self._transact(fn, "submit"))

    async def top_up(self, job_id: int, amount: Credits | str) -> Receipt:
        """``GridClient.top_up``, awaited. Raises InputError, the contract's ``JobNotFound``,
        ``InvalidStatus``, ``EscrowOverflow``."""
        units = top_up_units(amount)
        permit = await self._permit_for(units)
        fn = (self.market.functions.topUp(job_id, int(units)) if permit is None
              else self.market.functions.topUpWithPermit(job_id, int(units), permit))
        return receipt_of(await self._transact(fn, f"topUp({job_id})"))

    async def cancel(self, job_id: int) -> Receipt:
        """``GridClient.cancel``, awaited. Raises the contract's ``JobNotFound``, ``NotJobOwner``,
        ``InvalidStatus``."""
        return receipt_of(await self._transact(self.market.functions.cancel(job_id), f"cancel({job_id})"))

    async def withdraw(self) -> Withdrawal:
        """``GridClient.withdraw``, awaited. Raises ``errors.NothingToWithdraw``."""
        return withdrawal_of(await self._transact(self.market.functions.withdraw(), "withdraw()"))

    async def wait_for(
        self,
        job: int | Job,
        statuses: Iterable[JobStatus] = lifecycle.FINAL,
        *,
        timeout: float = 60.0,
        poll: float = 0.1,
        progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """``GridClient.wait_for``, awaited (other tasks run while it polls). Raises TimeoutError."""
        waiter = Waiter(job, statuses, timeout, progress)
        while (done := waiter.seen(await self.job(waiter.job_id))) is None:
            await asyncio.sleep(poll)
        return done

    # -- plumbing ---------------------------------------------------------------------------------
    def _event_topic(self, name: str) -> str:
        return EventDecoder().topics[name]

    async def _raw_logs(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        resp = await self.w3.provider.make_request("eth_getLogs", [params])  # type: ignore[arg-type]
        if "error" in resp:
            raise TransactionFailed(f"eth_getLogs: {resp['error']}")
        return list(resp.get("result") or [])

    async def _logs(self, topics: list[Any]) -> list[ChainEvent]:
        params = {"address": self.deployment.market, "fromBlock": hex(self.deployment.block), "toBlock": "latest",
                  "topics": topics}
        decoder = EventDecoder()
        return sort_events([decoder.decode(normalise_log(raw)) for raw in await self._raw_logs(params)])

    async def _permit_for(self, total: int) -> tuple[int, int, int, bytes, bytes] | None:
        balance = await self.balance()
        if total <= balance:
            return None
        allowance = int(await self.token.functions.allowance(self.address, self.market.address).call())
        need = payment_need(self.address, total, balance, await self.token_balance(), allowance)
        if need is None:
            return None
        block = await self.w3.eth.get_block("latest")
        deadline = int(block["timestamp"]) + PERMIT_TTL
        nonce = int(await self.token.functions.nonces(self.address).call())
        if self._domain is None:  # the token's EIP-712 name and version, as it reports them (ERC-5267)
            _fields, name, version, *_ = await self.token.functions.eip712Domain().call()
            self._domain = {"name": str(name), "version": str(version)}
        typed = permit_typed_data(self._domain, await self.w3.eth.chain_id, self.token.address, self.address,
                                  self.market.address, need, nonce, deadline)
        v, r, s = self.signer.sign_typed_data(typed)
        return (need, deadline, v, r, s)

    async def _transact(self, fn: Any, label: str, *, timeout: float = 120.0) -> TxReceipt:
        """Estimates (a revert raises its ContractError), signs, sends and waits for one transaction."""
        if self.signer.address == "0x0000000000000000000000000000000000000000":
            raise InputError(f"{label}: this client is read-only: connect with a key, a keystore or a signer")
        data = fn._encode_transaction_data()
        tx: dict[str, Any] = {"from": self.address, "to": fn.address, "data": data, "value": 0}
        try:
            gas = await self.w3.eth.estimate_gas(cast(Any, tx), "pending")
        except (ContractCustomError, ContractLogicError, ContractPanicError) as e:
            raise _decoded(e, label) from None
        async with self._lock:
            nonce = await self.w3.eth.get_transaction_count(cast(Any, self.address), "pending")
            block = await self.w3.eth.get_block("latest")
            base_fee = block.get("baseFeePerGas")
            price = await (self.w3.eth.gas_price if base_fee is None else self.w3.eth.max_priority_fee)
            fees = fee_fields(None if base_fee is None else int(base_fee), price)
            signed = self.signer.sign_transaction({
                "to": fn.address, "data": data, "value": 0, "nonce": nonce, "chainId": await self.w3.eth.chain_id,
                "gas": int(gas * GAS_MARGIN) + GAS_ADDEND, **fees,
            })
            tx_hash = await self.w3.eth.send_raw_transaction(HexBytes(signed))
        try:
            receipt = await self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout, poll_latency=0.05)
        except TimeExhausted:
            raise TransactionFailed(f"{label} not mined within {timeout:.0f} s") from None
        if receipt["status"] != 1:
            try:
                await fn.call({"from": self.address}, block_identifier=receipt["blockNumber"] - 1)
            except (ContractCustomError, ContractLogicError, ContractPanicError) as e:
                raise _decoded(e, label) from None
            raise TransactionFailed(f"{label} reverted in block {receipt['blockNumber']}")
        return receipt


__all__ = ["AsyncGridClient"]
