"""Typed clients over the contracts: what dApps, the CLI and the services call.

* :class:`GridClient` — a job owner: submit (with permit, in one transaction), top up, cancel, read, wait.
* :class:`ProviderClient` — a provider: register, update, pause, claim/refuse/start/finish (single or
  batched), withdraw.
* :class:`SchedulerClient` — the meta-scheduler's on-chain side: assign, batch assign.
* :class:`AdminClient` — approve/ban/remove providers, grant the scheduler role, mint credits.

Bad input raises :class:`~dsq_chain.errors.InputError` before anything is sent; a revert raises the
exception named after the contract's custom error.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address
from web3.logs import DISCARD
from web3.types import TxReceipt

from dsq_chain import artifacts, lifecycle
from dsq_chain.errors import InputError
from dsq_chain.sdk.chain import Call, Chain, Wallet, node_errors
from dsq_chain.sdk.deployment import Deployment
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
    def connect(cls, rpc_url: str, private_key: str, deployment: Deployment) -> Any:
        return cls(Chain(rpc_url).wallet(private_key), deployment)

    @property
    def address(self) -> str:
        return self.wallet.address

    @property
    def chain(self) -> Chain:
        return self.wallet.chain

    def _send(self, fn: Any) -> TxReceipt:
        return self.wallet.transact(fn)

    # -- reads shared by every role ------------------------------------------------------------
    def job(self, job_id: int) -> Job:
        """The job's on-chain record; unknown ids raise ``errors.JobNotFound``."""
        return job_from_view(self.wallet.check(Call(self.market.functions.getJob(job_id))))

    def jobs(self, job_ids: Iterable[int]) -> list[Job]:
        """Several jobs, read in one JSON-RPC batch."""
        ids = list(job_ids)
        if not ids:
            return []
        w3 = self.chain.w3
        with node_errors(self.chain.rpc_url), w3.batch_requests() as batch:
            for i in ids:
                batch.add(self.market.functions.getJob(i))
            results = batch.execute()
        return [job_from_view(cast(Sequence[Any], r)) for r in results]

    def job_count(self) -> int:
        return int(self.market.functions.jobCount().call())

    def provider(self, address: str) -> Provider:
        view = self.market.functions.getProvider(to_checksum_address(address)).call()
        return provider_from_view(view)

    def providers(self) -> list[Provider]:
        """Every provider that ever registered, in id order."""
        n = int(self.market.functions.providerCount().call())
        addrs = [self.market.functions.providerAt(i).call() for i in range(1, n + 1)]
        return [self.provider(a) for a in addrs]

    def credits(self, account: str | None = None) -> int:
        """Internal market balance (refunds, earnings) of ``account`` (default: this wallet)."""
        return int(self.market.functions.balanceOf(to_checksum_address(account or self.address)).call())

    def token_balance(self, account: str | None = None) -> int:
        return int(self.token.functions.balanceOf(to_checksum_address(account or self.address)).call())

    def withdraw(self) -> int:
        """Withdraws this wallet's internal balance as tokens; returns the amount."""
        amount = self.credits()
        if amount == 0:
            raise InputError(f"{self.address} has no credits to withdraw")
        self._send(self.market.functions.withdraw())
        return amount


class GridClient(_Client):
    """A job owner's view of the grid."""

    def submit(
        self,
        workflow: bytes,
        *,
        resources: Resources,
        credits: int,
        max_rate: int,
        labels: Sequence[LabelConstraint] = (),
        count: int = 1,
        check_providers: bool = True,
    ) -> list[int]:
        """Submits ``count`` jobs running ``workflow`` (canonical bytes) with ``credits`` units of escrow
        each. Pays from the internal balance first, then with a permit in the same transaction.
        Returns the job ids."""
        from dsq_chain.workloads.labels import on_chain  # the label encoding lives with the label parser

        chain_labels = on_chain(labels)
        request = _job_request(resources, max_rate, credits)
        _check_submission(workflow, chain_labels, count)
        if check_providers:
            self._check_placeable(resources)
        total = credits * count
        fn = self._with_payment(
            total,
            lambda: self.market.functions.submit(request, chain_labels, workflow, count),
            lambda permit: self.market.functions.submitWithPermit(request, chain_labels, workflow, count, permit),
        )
        receipt = self._send(fn)
        first = self.market.events.JobSubmitted().process_receipt(receipt, errors=DISCARD)[0]["args"]["firstJobId"]
        return list(range(int(first), int(first) + count))

    def top_up(self, job_id: int, amount: int) -> None:
        """Adds ``amount`` units of escrow to a non-final job."""
        if not 0 < amount <= UINT64_MAX:
            raise InputError(f"top-up amount must be a positive number of credit units, got {amount}")
        fn = self._with_payment(
            amount,
            lambda: self.market.functions.topUp(job_id, amount),
            lambda permit: self.market.functions.topUpWithPermit(job_id, amount, permit),
        )
        self._send(fn)

    def cancel(self, job_id: int) -> None:
        self._send(self.market.functions.cancel(job_id))

    def jobs_of(self, owner: str | None = None) -> list[Job]:
        """Every job submitted by ``owner`` (default: this wallet), from the submission events."""
        owner = to_checksum_address(owner or self.address)
        logs = self.market.events.JobSubmitted().get_logs(
            from_block=self.deployment.block, argument_filters={"owner": owner}
        )
        ranges = [(int(log["args"]["firstJobId"]), int(log["args"]["count"])) for log in logs]
        ids = [i for first, count in ranges for i in range(first, first + count)]
        return self.jobs(ids)

    def wait_for(
        self, job_id: int, statuses: Iterable[JobStatus] = lifecycle.FINAL, *, timeout: float = 60.0, poll: float = 0.1
    ) -> Job:
        """Polls until the job is in one of ``statuses``; raises TimeoutError naming the last status."""
        wanted = frozenset(statuses)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.status in wanted:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.status.name} after {timeout:.0f} s")
            time.sleep(poll)

    # -- payment -------------------------------------------------------------------------------
    def _with_payment(self, total: int, plain: Any, with_permit: Any) -> Any:
        """The call paying ``total``: plain when balance/allowance cover it, else with a fresh permit."""
        need = max(0, total - self.credits())
        if need == 0:
            return plain()
        have = self.token_balance()
        if have < need:
            raise InputError(f"{self.address} holds {have} credit units but this needs {need} more")
        allowance = int(self.token.functions.allowance(self.address, self.market.address).call())
        if allowance >= need:
            return plain()
        return with_permit(self.sign_permit(need))

    def _permit_domain(self) -> dict[str, str]:
        """The token's EIP-712 name and version, as the token itself reports them (ERC-5267), read once."""
        if self._domain is None:
            _fields, name, version, *_ = self.token.functions.eip712Domain().call()
            self._domain = {"name": str(name), "version": str(version)}
        return self._domain

    def sign_permit(self, value: int, deadline: int | None = None) -> tuple[int, int, int, bytes, bytes]:
        """An EIP-2612 permit for the market to take ``value`` units (as the PermitSig tuple)."""
        deadline = deadline if deadline is not None else self.chain.timestamp() + PERMIT_TTL
        nonce = int(self.token.functions.nonces(self.address).call())
        typed = {
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
            "domain": {
                **self._permit_domain(),
                "chainId": self.chain.chain_id,
                "verifyingContract": self.token.address,
            },
            "message": {
                "owner": self.address,
                "spender": self.market.address,
                "value": value,
                "nonce": nonce,
                "deadline": deadline,
            },
        }
        signed = self.wallet.account.sign_message(encode_typed_data(full_message=typed))
        return (value, deadline, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big"))

    def _check_placeable(self, res: Resources) -> None:
        approved = [p for p in self.providers() if p.status is ProviderStatus.APPROVED]
        if not approved:
            raise InputError(
                "no approved provider yet: nothing could run this job "
                "(dsq submit --force, or check_providers=False, queues it anyway)"
            )
        if not any(res.fits_in(p.total) for p in approved):
            biggest = max(approved, key=lambda p: (p.total.cpus, p.total.gpus, p.total.mem_mb)).total
            raise InputError(
                f"no approved provider has {res.cpus} cpus, {res.gpus} gpus and {res.mem_mb} MB "
                f"(largest: {biggest.cpus} cpus, {biggest.gpus} gpus, {biggest.mem_mb} MB)"
            )


class ProviderClient(_Client):
    """A provider's side: registration and job reports."""

    def register(self, hardware: Resources, prices: Prices, labels: Mapping[str, str] | None = None) -> None:
        from dsq_chain.workloads.labels import encode_value, parse_labels

        parsed = parse_labels(labels or {})
        _check_hardware(hardware)
        _check_prices(prices)
        self._send(
            self.market.functions.registerProvider(
                _hardware(hardware), _prices(prices), list(parsed), [encode_value(v) for v in parsed.values()]
            )
        )

    def update_hardware(self, hardware: Resources) -> None:
        _check_hardware(hardware)
        self._send(self.market.functions.updateHardware(_hardware(hardware)))

    def update_prices(self, prices: Prices) -> None:
        _check_prices(prices)
        self._send(self.market.functions.updatePrices(_prices(prices)))

    def set_labels(self, labels: Mapping[str, str], remove: Iterable[str] = ()) -> None:
        from dsq_chain.workloads.labels import encode_value, parse_labels

        parsed = parse_labels(labels)
        keys = list(parsed) + list(remove)
        values = [encode_value(v) for v in parsed.values()] + [b"\0" * 32 for _ in remove]
        self._send(self.market.functions.setLabels(keys, values))

    def pause(self) -> None:
        self._send(self.market.functions.pause())

    def resume(self) -> None:
        self._send(self.market.functions.resume())

    def info(self) -> Provider:
        return self.provider(self.address)

    def claim(self, job_id: int) -> None:
        self._send(self.market.functions.claim(job_id))

    def refuse(self, job_id: int) -> None:
        self._send(self.market.functions.refuse(job_id))

    def start(self, job_id: int) -> None:
        self._send(self.market.functions.start(job_id))

    def finish(self, job_id: int, exit_code: int) -> None:
        self._send(self.market.functions.finish(job_id, _exit_code(exit_code)))

    def report_out_of_credits(self, job_id: int) -> None:
        self._send(self.market.functions.reportOutOfCredits(job_id))

    def panic(self, job_id: int) -> None:
        self._send(self.market.functions.panic(job_id))

    def report(self, reports: Sequence[tuple[int, ReportAction, int]]) -> TxReceipt:
        """Many reports of this provider's jobs in one transaction: (job id, action, exit code)."""
        if not reports:
            raise InputError("report() needs at least one (job id, action, exit code)")
        rows = [(int(j), int(a), _exit_code(c)) for j, a, c in reports]
        return self._send(self.market.functions.report(rows))


class SchedulerClient(_Client):
    """The meta-scheduler's transactions."""

    def assign(self, job_id: int, provider: str, labels: Sequence[ChainLabel] = ()) -> None:
        self._send(self.market.functions.assign(job_id, to_checksum_address(provider), list(labels)))

    def assign_batch(
        self, assignments: Sequence[tuple[int, str, Sequence[ChainLabel]]], *, gas: int | None = None
    ) -> TxReceipt:
        """Assigns many (job id, provider, on-chain label constraints) in one transaction.

        ``gas``: an explicit gas limit (no estimation round trip; a revert then shows in the receipt and
        raises the same ContractError); None estimates it."""
        if not assignments:
            raise InputError("assign_batch() needs at least one assignment")
        ids = [a[0] for a in assignments]
        provs = [to_checksum_address(a[1]) for a in assignments]
        labels = [list(a[2]) for a in assignments]
        fn = self.market.functions.assignBatch(ids, provs, labels)
        return self._send(fn if gas is None else Call(fn, gas=gas))

    def timeout_claim(self, job_id: int) -> None:
        self._send(self.market.functions.timeoutClaim(job_id))

    def panic(self, job_id: int) -> None:
        self._send(self.market.functions.panic(job_id))


class AdminClient(_Client):
    """The deployment admin's actions."""

    def approve(self, provider: str) -> None:
        self._send(self.market.functions.approveProvider(to_checksum_address(provider)))

    def ban(self, provider: str) -> None:
        self._send(self.market.functions.banProvider(to_checksum_address(provider)))

    def remove(self, provider: str) -> None:
        self._send(self.market.functions.removeProvider(to_checksum_address(provider)))

    def grant_scheduler(self, account: str) -> None:
        role = self.market.functions.SCHEDULER_ROLE().call()
        self._send(self.market.functions.grantRole(role, to_checksum_address(account)))

    def revoke_scheduler(self, account: str) -> None:
        role = self.market.functions.SCHEDULER_ROLE().call()
        self._send(self.market.functions.revokeRole(role, to_checksum_address(account)))

    def mint(self, to: str, amount: int) -> None:
        if amount <= 0:
            raise InputError(f"mint amount must be positive, got {amount}")
        self._send(self.token.functions.mint(to_checksum_address(to), amount))

    def set_claim_timeout(self, seconds: int) -> None:
        if not 0 < seconds < 2**32:
            raise InputError(f"claim timeout must be 1..2**32-1 seconds, got {seconds}")
        self._send(self.market.functions.setClaimTimeout(seconds))


# ---------------------------------------------------------------------------------- conversions
def job_from_view(v: Sequence[Any]) -> Job:
    """A ``JobView`` tuple from the contract as a :class:`Job`."""
    (jid, owner, status, provider, escrow, rate, since, max_rate, cpus, gpus, mem, wf_hash, labels_hash, head) = v
    return Job(
        id=int(jid),
        owner=to_checksum_address(owner),
        status=JobStatus(status),
        resources=Resources(int(cpus), int(gpus), int(mem)),
        max_rate=int(max_rate),
        escrow=int(escrow),
        provider=None if provider == ZERO_ADDRESS else to_checksum_address(provider),
        rate=int(rate),
        since=int(since),
        workflow_hash=bytes(wf_hash),
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
        prices=Prices(*map(int, prices)),
    )


def _job_request(res: Resources, max_rate: int, credits: int) -> tuple[int, int, int, int, int]:
    if not 1 <= res.cpus < 2**16:
        raise InputError(f"cpus must be 1..65535, got {res.cpus}")
    if not 0 <= res.gpus < 2**8:
        raise InputError(f"gpus must be 0..255, got {res.gpus}")
    if not 1 <= res.mem_mb < 2**32:
        raise InputError(f"memory must be 1..{2**32 - 1} MB, got {res.mem_mb}")
    if not 0 < max_rate <= UINT56_MAX:
        raise InputError(f"price cap (max rate) must be a positive number of credit units per minute, got {max_rate}")
    if not 0 < credits <= UINT64_MAX:
        raise InputError(f"credits must be a positive number of credit units, got {credits}")
    return (res.cpus, res.gpus, res.mem_mb, max_rate, credits)


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
    if hw.cpus < 1 or hw.mem_mb < 1 or hw.gpus < 0:
        raise InputError(f"hardware needs >= 1 cpu and > 0 MB memory, got {hw}")


def _check_prices(p: Prices) -> None:
    if p.per_cpu_minute <= 0:
        raise InputError("the price per cpu-minute must be positive")
    values = (p.per_cpu_minute, p.per_gpu_minute, p.per_gb_minute)
    if min(values) < 0 or max(values) > UINT40_MAX:
        raise InputError(f"prices must be 0..{UINT40_MAX} credit units per minute, got {p}")


def _hardware(hw: Resources) -> tuple[int, int, int]:
    return (hw.cpus, hw.gpus, hw.mem_mb)


def _prices(p: Prices) -> tuple[int, int, int]:
    return (p.per_cpu_minute, p.per_gpu_minute, p.per_gb_minute)


def _exit_code(code: int) -> int:
    if not -(2**31) <= code < 2**31:
        raise InputError(f"exit code {code} does not fit int32")
    return code
