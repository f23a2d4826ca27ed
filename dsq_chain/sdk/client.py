"""Typed clients over the contracts: what dApps, the CLI and the services call.

* :class:`GridClient` — a job owner: submit (with permit, in one transaction), top up, cancel, read, wait.
* :class:`ProviderClient` — a provider: register, update, pause, claim/refuse/start/finish (single or
  batched), withdraw.
* :class:`SchedulerClient` — the meta-scheduler's on-chain side: assign, batch assign.
* :class:`AdminClient` — approve/ban/remove providers, grant the scheduler role, mint credits.

Connect with :meth:`~_Client.connect` (a key, a keystore signer, a LocalAccount, any
:class:`~dsq_chain.sdk.signers.Signer`, or nothing for a read-only client). Amounts are
:class:`~dsq_chain.money.Credits`. Every transaction method returns a typed
:class:`~dsq_chain.sdk.receipts.Receipt` (hash, block, gas used, decoded events).

Bad input raises :class:`~dsq_chain.errors.InputError` before anything is sent; a revert raises the
exception named after the contract's custom error (a subclass of web3's ``ContractLogicError``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self, cast

from eth_utils.address import to_checksum_address
from web3.logs import DISCARD
from web3.types import TxReceipt

from dsq_chain import artifacts, lifecycle
from dsq_chain.errors import ContractError, InputError, decode_revert
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Call, Chain, Wallet, node_errors
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.sdk.events import ChainEvent, JobSettled
from dsq_chain.sdk.job_events import job_events, settlements
from dsq_chain.sdk.receipts import Receipt, Submission, Withdrawal, receipt_of, submission_of, withdrawal_of
from dsq_chain.sdk.signers import SignerLike
from dsq_chain.types import (
    Job,
    JobStatus,
    LabelConstraint,
    Prices,
    Provider,
    ProviderStatus,
    ReportAction,
    Resources,
)

if TYPE_CHECKING:
    from dsq_chain.matching import Explanation
    from dsq_chain.workloads.workflow import Workflow

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
MAX_WORKFLOW_BYTES = artifacts.constant("MAX_WORKFLOW_BYTES")
MAX_JOB_LABELS = artifacts.constant("MAX_JOB_LABELS")
MAX_ARRAY_JOBS = artifacts.constant("MAX_ARRAY_JOBS")
UINT56_MAX = 2**56 - 1
UINT64_MAX = 2**64 - 1
UINT40_MAX = 2**40 - 1
#: Seconds a signed permit stays valid.
PERMIT_TTL = 3600

ChainLabel = tuple[bytes, int, bytes]


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


class GridClient(_Client):
    """A job owner's view of the grid."""

    def submit(
        self,
        workflow: Workflow | bytes | str | os.PathLike[str],
        *,
        credits: Credits | str,
        max_rate: Credits | str,
        count: int = 1,
        force: bool = False,
        resources: Resources | None = None,
        labels: Sequence[LabelConstraint] | None = None,
        providers: Sequence[str] = (),
        exclude: Sequence[str] = (),
        external_ref: bytes = b"",
    ) -> Submission:
        """Submits ``count`` jobs running ``workflow``, each with ``credits`` of escrow and a price cap of
        ``max_rate`` per minute. Pays from the internal balance first, then with an EIP-2612 permit in
        the same transaction. Returns the receipt, which reads as the list of job ids.

        ``workflow`` is a :class:`~dsq_chain.workloads.workflow.Workflow`, a path to a workflow file, or
        its YAML/JSON text: resources, labels and the canonical bytes come from it. Canonical bytes
        (``Workflow.canonical()``) are accepted too; ``resources``/``labels``, when given, must agree
        with them. Unless ``force``, the job is first checked against every approved provider
        (resources, labels, price cap, placement) with the meta-scheduler's matcher. ``providers``
        (direct placement) lists the only providers allowed to run the jobs, ``exclude`` providers that
        must not; the chain enforces both. ``external_ref`` (up to 32 bytes, e.g. :func:`external_ref`
        or an Akash lease from :mod:`dsq_chain.akash`) travels in the submission event only.

        Raises InputError (bad amounts, a workflow that does not parse or disagrees), WorkflowError,
        ``errors.Infeasible`` (no approved provider could run it: the reason per provider), and the
        contract's ``ZeroCredits``, ``ZeroPriceCap``, ``InvalidResources``, ``EmptyWorkflow``,
        ``WorkflowTooLarge``, ``TooManyJobLabels``, ``InvalidArrayCount``, ``EscrowOverflow``,
        ``ERC20InsufficientBalance``, ``ERC2612ExpiredSignature``, ``ERC2612InvalidSigner``."""
        sub = prepare_submission(workflow, credits, max_rate, count, resources, labels,
                                 providers=providers, exclude=exclude, external_ref=external_ref)
        self._writable("submit")
        if not force:
            from dsq_chain.sdk.feasibility import check_feasible

            check_feasible(self, sub.workflow.resources, sub.workflow.labels, sub.max_rate,
                           providers=providers, exclude=exclude)
        fn = self._with_payment(
            sub.total,
            lambda: self.market.functions.submit(*sub.args),
            lambda permit: self.market.functions.submitWithPermit(*sub.args, permit),
        )
        return submission_of(self._raw(fn))

    def check(
        self, workflow: Workflow | bytes | str | os.PathLike[str], *, max_rate: Credits | str
    ) -> Explanation:
        """What :meth:`submit` checks before sending, alone: the matcher's
        :class:`~dsq_chain.matching.Explanation` (placeable providers best first). Raises
        ``errors.Infeasible`` naming each approved provider's reason when none could run the job."""
        from dsq_chain.sdk.feasibility import check_feasible

        wf = _workflow_of(workflow)
        return check_feasible(self, wf.resources, wf.labels, Credits.of(max_rate, "max_rate"))

    def top_up(self, job_id: int, amount: Credits | str) -> Receipt:
        """Adds ``amount`` of escrow to a non-final job (paid like a submission).

        Raises InputError, and the contract's ``JobNotFound``, ``InvalidStatus``, ``EscrowOverflow``,
        ``ZeroCredits``, ``ERC20InsufficientBalance``, ``ERC2612InvalidSigner``."""
        units = Credits.of(amount, "amount")
        if not 0 < units <= UINT64_MAX:
            raise InputError(f"top-up amount must be positive and at most {Credits(units=UINT64_MAX)}, got {units}")
        self._writable("top_up")
        return self._send(self._with_payment(
            units,
            lambda: self.market.functions.topUp(job_id, int(units)),
            lambda permit: self.market.functions.topUpWithPermit(job_id, int(units), permit),
        ))

    def cancel(self, job_id: int) -> Receipt:
        """Cancels this account's job: full refund before it runs, billed up to now while RUNNING.

        Raises the contract's ``JobNotFound``, ``NotJobOwner``, ``InvalidStatus`` (already final)."""
        return self._send(self.market.functions.cancel(job_id))

    def jobs_of(self, owner: str | None = None) -> list[Job]:
        """Every job submitted by ``owner`` (default: this account), jobs of arrays included, oldest first."""
        owner = to_checksum_address(owner or self.address)
        logs = self.market.events.JobSubmitted().get_logs(
            from_block=self.deployment.block, argument_filters={"owner": owner}
        )
        ranges = [(int(log["args"]["firstJobId"]), int(log["args"]["count"])) for log in logs]
        ids = [i for first, count in ranges for i in range(first, first + count)]
        return self.jobs(ids)

    def wait_for(
        self,
        job: int | Job,
        statuses: Iterable[JobStatus] = lifecycle.FINAL,
        *,
        timeout: float = 60.0,
        poll: float = 0.1,
        progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Polls until the job is in one of ``statuses`` (default: any final one) and returns it.

        ``progress`` is called with the job each time its status changes (the first read included).
        Raises TimeoutError naming the last status, ``errors.JobNotFound`` for an unknown id."""
        waiter = Waiter(job, statuses, timeout, progress)
        while (done := waiter.seen(self.job(waiter.job_id))) is None:
            time.sleep(poll)
        return done

    # -- payment -------------------------------------------------------------------------------
    def _with_payment(self, total: int, plain: Any, with_permit: Any) -> Any:
        """The call paying ``total``: plain when balance/allowance cover it, else with a fresh permit."""
        balance = self.credits()
        if total <= balance:
            return plain()
        allowance = int(self.token.functions.allowance(self.address, self.market.address).call())
        need = payment_need(self.address, total, balance, self.token_balance(), allowance)
        return plain() if need is None else with_permit(self.sign_permit(need))

    def _permit_domain(self) -> dict[str, str]:
        """The token's EIP-712 name and version, as the token itself reports them (ERC-5267), read once."""
        if self._domain is None:
            _fields, name, version, *_ = self.token.functions.eip712Domain().call()
            self._domain = {"name": str(name), "version": str(version)}
        return self._domain

    def sign_permit(self, value: Credits | int, deadline: int | None = None) -> tuple[int, int, int, bytes, bytes]:
        """An EIP-2612 permit for the market to take ``value`` (Credits, or base units), valid until
        ``deadline`` (default: an hour of chain time), as the contract's PermitSig tuple."""
        deadline = deadline if deadline is not None else self.chain.timestamp() + PERMIT_TTL
        nonce = int(self.token.functions.nonces(self.address).call())
        typed = permit_typed_data(self._permit_domain(), self.chain.chain_id, self.token.address, self.address,
                                  self.market.address, int(value), nonce, deadline)
        v, r, sig_s = self.wallet.signer.sign_typed_data(typed)
        return (int(value), deadline, v, r, sig_s)


def payment_need(owner: str, total: int, balance: int, tokens: int, allowance: int) -> int | None:
    """How much a permit must let the market take for a payment of ``total`` (None: no permit needed).

    The internal ``balance`` is spent first; the rest comes from tokens, by allowance or permit.
    Raises InputError when the tokens do not cover the rest."""
    need = max(0, total - balance)
    if need == 0:
        return None
    if tokens < need:
        raise InputError(f"{owner} holds {Credits(units=tokens)} credits in tokens but this needs "
                         f"{Credits(units=need)} more")
    return None if allowance >= need else need


def permit_typed_data(
    domain: Mapping[str, str], chain_id: int, token: str, owner: str, spender: str, value: int, nonce: int,
    deadline: int,
) -> dict[str, Any]:
    """The EIP-712 message of an EIP-2612 permit of the credit token (``domain``: its name and version)."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "domain": {**domain, "chainId": chain_id, "verifyingContract": token},
        "message": {"owner": owner, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline},
    }


class ProviderClient(_Client):
    """A provider's side: registration and job reports. Prices are :class:`~dsq_chain.types.Prices` of
    :class:`~dsq_chain.money.Credits` per minute."""

    def register(self, hardware: Resources, prices: Prices, labels: Mapping[str, str] | None = None, *,
                 persistent_gb: int = 0) -> Receipt:
        """Registers this account as a provider (PENDING until the admin approves it); ``persistent_gb``
        declares persistent storage beside the scratch disk of ``hardware``.

        Raises InputError, LabelExpressionError, and the contract's ``ProviderAlreadyRegistered``,
        ``InvalidHardware``, ``ZeroCpuPrice``, ``TooManyLabels``, ``LengthMismatch``."""
        from dsq_chain.workloads.labels import encode_value, parse_labels

        parsed = parse_labels(labels or {})
        _check_hardware(hardware)
        _check_prices(prices)
        return self._send(
            self.market.functions.registerProvider(
                _hardware(hardware, persistent_gb), prices.units, list(parsed),
                [encode_value(v) for v in parsed.values()]
            )
        )

    def update_hardware(self, hardware: Resources, *, persistent_gb: int = 0) -> Receipt:
        """Declares new hardware totals. Raises InputError, the contract's ``ProviderNotRegistered``,
        ``InvalidHardware``, ``CapacityInUse`` (below what running jobs hold)."""
        _check_hardware(hardware)
        return self._send(self.market.functions.updateHardware(_hardware(hardware, persistent_gb)))

    def update_prices(self, prices: Prices) -> Receipt:
        """New prices for future assignments. Raises InputError, the contract's ``ProviderNotRegistered``,
        ``ZeroCpuPrice``."""
        _check_prices(prices)
        return self._send(self.market.functions.updatePrices(prices.units))

    def set_labels(self, labels: Mapping[str, str], remove: Iterable[str] = ()) -> Receipt:
        """Sets (or, for ``remove``, deletes) label values. Raises LabelExpressionError, the contract's
        ``ProviderNotRegistered``, ``TooManyLabels``, ``LengthMismatch``."""
        from dsq_chain.workloads.labels import encode_value, parse_labels

        parsed = parse_labels(labels)
        keys = list(parsed) + list(remove)
        values = [encode_value(v) for v in parsed.values()] + [b"\0" * 32 for _ in remove]
        return self._send(self.market.functions.setLabels(keys, values))

    def pause(self) -> Receipt:
        """Takes no new jobs until :meth:`resume`. Raises the contract's ``ProviderNotRegistered``."""
        return self._send(self.market.functions.pause())

    def resume(self) -> Receipt:
        """Takes jobs again. Raises the contract's ``ProviderNotRegistered``."""
        return self._send(self.market.functions.resume())

    def info(self) -> Provider:
        """This provider's registration. Raises the contract's ``ProviderNotRegistered``."""
        return self.provider(self.address)

    def claim(self, job_id: int) -> Receipt:
        """Accepts an assigned job (META_SCHEDULED → SCHEDULED). Raises the contract's ``JobNotFound``,
        ``InvalidStatus``, ``NotAssignedProvider``."""
        return self._send(self.market.functions.claim(job_id))

    def refuse(self, job_id: int) -> Receipt:
        """Gives an assigned or claimed job back (→ PENDING). Raises the contract's ``JobNotFound``,
        ``InvalidStatus``, ``NotAssignedProvider``."""
        return self._send(self.market.functions.refuse(job_id))

    def start(self, job_id: int) -> Receipt:
        """Reports the job RUNNING (billing starts). Raises the contract's ``JobNotFound``,
        ``InvalidStatus``, ``NotAssignedProvider``."""
        return self._send(self.market.functions.start(job_id))

    def finish(self, job_id: int, exit_code: int) -> Receipt:
        """Reports the end (FINISHED for exit 0, else FAILED) and settles the bill. Raises InputError
        (exit code beyond int32), the contract's ``JobNotFound``, ``InvalidStatus``, ``NotAssignedProvider``."""
        return self._send(self.market.functions.finish(job_id, _exit_code(exit_code)))

    def report_out_of_credits(self, job_id: int) -> Receipt:
        """Ends a RUNNING job whose escrow ran out (anyone may). Raises the contract's ``JobNotFound``,
        ``InvalidStatus``, ``EscrowNotExhausted``."""
        return self._send(self.market.functions.reportOutOfCredits(job_id))

    def panic(self, job_id: int) -> Receipt:
        """A provider-side fault: the whole escrow goes back to the owner. Raises the contract's
        ``JobNotFound``, ``InvalidStatus``, ``NotAllowedToPanic``."""
        return self._send(self.market.functions.panic(job_id))

    def report(self, reports: Sequence[tuple[int, ReportAction, int] | tuple[int, ReportAction, int, int]]
               ) -> Receipt:
        """Many reports of this provider's jobs in one transaction: (job id, action, exit code), or
        (job id, action, exit code, end time) where a FINISH's end time (unix seconds, 0 = now) is when
        the engine saw the job end: the chain bills up to it (never past the report's block).
        An entry the chain cannot apply is skipped (see :func:`skipped_entries`), the others land.
        Raises InputError (empty, bad exit code)."""
        if not reports:
            raise InputError("report() needs at least one (job id, action, exit code)")
        rows = [_report_row(r) for r in reports]
        return self._send(self.market.functions.report(rows))


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


# ---------------------------------------------------------------------------------- conversions
def job_from_view(v: Sequence[Any]) -> Job:
    """A ``JobView`` tuple from the contract as a :class:`Job`."""
    (jid, owner, status, provider, escrow, rate, since, max_rate, cpus, gpus, mem, disk, labels_hash, head) = v
    return Job(
        id=int(jid),
        owner=to_checksum_address(owner),
        status=JobStatus(status),
        resources=Resources(int(cpus), int(gpus), int(mem), int(disk)),
        max_rate=Credits(units=int(max_rate)),
        escrow=Credits(units=int(escrow)),
        provider=None if provider == ZERO_ADDRESS else to_checksum_address(provider),
        rate=Credits(units=int(rate)),
        since=int(since),
        labels_hash=bytes(labels_hash),
        head_id=int(head),
    )


def provider_from_view(v: Sequence[Any]) -> Provider:
    addr, pid, status, paused, total, free, prices = v
    return Provider(
        address=to_checksum_address(addr),
        id=int(pid),
        status=ProviderStatus(status),
        paused=bool(paused),
        total=Resources(*map(int, total)),
        free=Resources(*map(int, free)),
        prices=Prices.from_units(*map(int, prices)),
        persistent_gb=int(total[4]),
    )


class Waiter:
    """What ``wait_for`` does with each read of the job (sync and async clients alike)."""

    def __init__(self, job: int | Job, statuses: Iterable[JobStatus], timeout: float,
                 progress: Callable[[Job], None] | None) -> None:
        self.job_id = job.id if isinstance(job, Job) else int(job)
        self.wanted = frozenset(statuses)
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.progress = progress
        self.last: JobStatus | None = None

    def seen(self, current: Job) -> Job | None:
        """``current`` when it is in a wanted status, else None (poll again); reports status changes to
        ``progress``; raises TimeoutError naming the last status once the deadline passed."""
        if self.progress is not None and current.status is not self.last:
            self.progress(current)
        self.last = current.status
        if current.status in self.wanted:
            return current
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"job {self.job_id} still {current.status.name} after {self.timeout:.0f} s")
        return None


@dataclass(frozen=True)
class PreparedSubmission:
    """A submission checked before sending: the workflow, amounts and the contract call's arguments."""

    workflow: Workflow
    escrow: Credits
    max_rate: Credits
    count: int
    args: tuple[Any, ...]  # (request, labels, workflow bytes, count) of submit / submitWithPermit

    @property
    def total(self) -> Credits:
        """The escrow of every job of the array together."""
        return Credits(units=self.escrow * self.count)


def prepare_submission(
    workflow: Workflow | bytes | str | os.PathLike[str],
    credits: Credits | str,
    max_rate: Credits | str,
    count: int = 1,
    resources: Resources | None = None,
    labels: Sequence[LabelConstraint] | None = None,
    *,
    providers: Sequence[str] = (),
    exclude: Sequence[str] = (),
    external_ref: bytes = b"",
) -> PreparedSubmission:
    """Everything :meth:`GridClient.submit` checks without the chain: amounts, the workflow (and that
    ``resources``/``labels``, when given, agree with it), limits. Raises InputError, WorkflowError."""
    from dsq_chain.workloads.labels import on_chain  # the label encoding lives with the label parser

    escrow = Credits.of(credits, "credits")
    cap = Credits.of(max_rate, "max_rate")
    wf = _workflow_of(workflow)
    if resources is not None and resources != wf.resources:
        raise InputError(f"resources={resources} disagree with the workflow's, which asks for {wf.resources}: "
                         "pass the Workflow alone and its resources are used")
    if labels is not None and tuple(labels) != wf.labels:
        raise InputError(f"labels={[str(c) for c in labels]} disagree with the workflow's "
                         f"{[str(c) for c in wf.labels]}: pass the Workflow alone and its labels are used")
    raw = wf.canonical()
    chain_labels = on_chain(wf.labels) + placement_labels(providers, exclude)
    request = _job_request(wf.resources, cap, escrow, external_ref)
    _check_submission(raw, chain_labels, count)
    return PreparedSubmission(wf, escrow, cap, count, (request, chain_labels, raw, count))


def bill_of(job: Job, settled: JobSettled | None, so_far: int | None) -> Job:
    """``job`` with ``billed``/``refunded`` from its ``JobSettled`` event, or the bill so far."""
    from dataclasses import replace

    if settled is not None:
        return replace(job, billed=Credits(units=settled.billed), refunded=Credits(units=settled.refunded))
    if so_far is not None:
        return replace(job, billed=Credits(units=so_far))
    return job


def _workflow_of(workflow: Workflow | bytes | str | os.PathLike[str]) -> Workflow:
    """A Workflow from itself, a file path, YAML/JSON text or canonical bytes (which must parse)."""
    from dsq_chain.workloads import workflow as wfmod

    if isinstance(workflow, wfmod.Workflow):
        return workflow
    if isinstance(workflow, (bytes, bytearray, memoryview)):
        try:
            return wfmod.from_canonical(bytes(workflow))
        except wfmod.WorkflowError as e:
            raise InputError(f"workflow bytes are not a canonical workflow (Workflow.canonical()): {e}; "
                             "pass the Workflow, its file or its text instead") from None
    if isinstance(workflow, os.PathLike):
        return wfmod.load(workflow)
    if isinstance(workflow, str):
        one_line = "\n" not in workflow and len(workflow) < 4096
        if one_line and Path(workflow).is_file():
            return wfmod.load(workflow)
        if one_line and workflow.strip().endswith((".yaml", ".yml", ".json")):
            raise InputError(f"workflow file {workflow} not found")
        return wfmod.loads(workflow)
    raise InputError(f"workflow must be a Workflow, a path, YAML/JSON text or canonical bytes, got "
                     f"{type(workflow).__name__}")


def _job_request(
    res: Resources, max_rate: int, credits: int, external_ref: bytes = b""
) -> tuple[int, int, int, int, int, int, bytes]:
    if not 1 <= res.cpus < 2**16:
        raise InputError(f"cpus must be 1..65535, got {res.cpus}")
    if not 0 <= res.gpus < 2**8:
        raise InputError(f"gpus must be 0..255, got {res.gpus}")
    if not 1 <= res.mem_mb < 2**32:
        raise InputError(f"memory must be 1..{2**32 - 1} MB, got {res.mem_mb}")
    if not 0 < max_rate <= UINT56_MAX:
        raise InputError(f"price cap (max_rate) must be positive and at most {Credits(units=UINT56_MAX)} per "
                         f"minute, got {Credits(units=max_rate)}")
    if not 0 < credits <= UINT64_MAX:
        raise InputError(f"credits must be positive and at most {Credits(units=UINT64_MAX)}, "
                         f"got {Credits(units=credits)}")
    if not 0 <= res.disk_gb < 2**16:
        raise InputError(f"scratch disk must be 0..65535 GB per job, got {res.disk_gb}")
    if len(external_ref) > 32:
        raise InputError(f"an external reference is at most 32 bytes, got {len(external_ref)}")
    return (res.cpus, res.gpus, res.mem_mb, int(max_rate), int(credits), res.disk_gb, external_ref.rjust(32, b"\0"))


def _check_submission(workflow: bytes, labels: Sequence[ChainLabel], count: int) -> None:
    if not workflow:
        raise InputError("the workflow is empty")
    if len(workflow) > MAX_WORKFLOW_BYTES:
        raise InputError(f"the workflow is {len(workflow)} bytes; the limit is {MAX_WORKFLOW_BYTES}")
    if len(labels) > MAX_JOB_LABELS:
        raise InputError(f"{len(labels)} label constraints; the limit is {MAX_JOB_LABELS}")
    if not 1 <= count <= MAX_ARRAY_JOBS:
        raise InputError(f"a job array holds 1..{MAX_ARRAY_JOBS} jobs, got {count}")


def _check_hardware(hw: Resources) -> None:
    if hw.cpus < 1 or hw.mem_mb < 1 or hw.gpus < 0 or not 0 <= hw.disk_gb < 2**32:
        raise InputError(f"hardware needs >= 1 cpu, > 0 MB memory and 0..2**32-1 GB disk, got {hw}")


def _check_prices(p: Prices) -> None:
    if not isinstance(p, Prices):
        raise InputError(f"prices must be a Prices record (Prices(Credits('0.001'), ...)), got {type(p).__name__}")
    if p.per_cpu_minute <= 0:
        raise InputError(f"the price per cpu-minute must be positive, got {p.per_cpu_minute}")
    for name, value in zip(("per_cpu_minute", "per_gpu_minute", "per_gb_minute"), p.units, strict=True):
        if not 0 <= value <= UINT40_MAX:
            raise InputError(f"prices.{name} must be 0..{Credits(units=UINT40_MAX)} credits per minute, "
                             f"got {Credits(units=value)}")


def _hardware(hw: Resources, persistent_gb: int = 0) -> tuple[int, int, int, int, int]:
    if not 0 <= persistent_gb < 2**32:
        raise InputError(f"persistent storage must be 0..2**32-1 GB, got {persistent_gb}")
    return (hw.cpus, hw.gpus, hw.mem_mb, hw.disk_gb, persistent_gb)


#: The label key reserved for a job's placement: ``@provider == ADDR`` allows, ``@provider != ADDR`` excludes.
PLACEMENT_KEY = "@provider"


def placement_labels(providers: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[ChainLabel]:
    """The on-chain constraints of a job's placement: the providers allowed to run it (any of them;
    none = any provider) and those excluded."""
    from eth_utils.crypto import keccak

    key = keccak(text=PLACEMENT_KEY)
    rows: list[ChainLabel] = []
    for op, addresses in ((0, providers), (1, exclude)):
        for a in addresses:
            try:
                word = bytes.fromhex(to_checksum_address(a)[2:]).rjust(32, b"\0")
            except ValueError:
                raise InputError(f"placement: {a!r} is not a provider address") from None
            rows.append((key, op, word))
    return rows


def placement_of(chain_labels: Sequence[ChainLabel]) -> tuple[frozenset[str], frozenset[str]]:
    """(allowed, excluded) provider addresses named by a job's on-chain constraints."""
    from eth_utils.crypto import keccak

    key = keccak(text=PLACEMENT_KEY)
    allowed: set[str] = set()
    excluded: set[str] = set()
    for k, op, value in chain_labels:
        if bytes(k) == key and op in (0, 1):
            (allowed if op == 0 else excluded).add(to_checksum_address(bytes(value)[-20:]))
    return frozenset(allowed), frozenset(excluded)


def external_ref(owner: str, dseq: int) -> bytes:
    """A 32-byte external reference for an Akash deployment: the owner's address then the dseq (uint64)."""
    if not 0 <= dseq < 2**64:
        raise InputError(f"dseq must be 0..2**64-1, got {dseq}")
    return bytes.fromhex(to_checksum_address(owner)[2:]) + dseq.to_bytes(8, "big") + b"\0" * 4


def skipped_entries(market: Any, receipt: Receipt | TxReceipt) -> dict[int, ContractError]:
    """The entries of an ``assignBatch`` or ``report`` transaction the chain skipped: job id -> the
    error the single call would have raised (from the ``EntrySkipped`` events of ``receipt``)."""
    raw = receipt.raw if isinstance(receipt, Receipt) else receipt
    out: dict[int, ContractError] = {}
    for ev in market.events.EntrySkipped().process_receipt(cast(TxReceipt, raw), errors=DISCARD):
        out[int(ev["args"]["jobId"])] = decode_revert(bytes(ev["args"]["reason"]))
    return out


def _report_row(r: Sequence[int]) -> tuple[int, int, int, int]:
    if len(r) not in (3, 4):
        raise InputError(f"a report is (job id, action, exit code[, end time]), got {r!r}")
    end = int(r[3]) if len(r) == 4 else 0
    if not 0 <= end < 2**64:
        raise InputError(f"end time must be 0..2**64-1 unix seconds, got {end}")
    return (int(r[0]), int(r[1]), _exit_code(int(r[2])), end)


def _exit_code(code: int) -> int:
    if not -(2**31) <= code < 2**31:
        raise InputError(f"exit code {code} does not fit int32")
    return code
