"""A job owner's client: submit (paying with a permit in the same transaction when needed), check
feasibility, top up, cancel, list and wait for jobs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from eth_utils.address import to_checksum_address

from dsq_chain import lifecycle
from dsq_chain.money import Credits
from dsq_chain.sdk.client_base import _Client
from dsq_chain.sdk.permits import PERMIT_TTL, payment_need, permit_typed_data
from dsq_chain.sdk.receipts import Receipt, Submission, submission_of
from dsq_chain.sdk.submission import prepare_submission, top_up_units, workflow_of
from dsq_chain.sdk.waiter import Waiter
from dsq_chain.types import Job, JobStatus, LabelConstraint, Resources

if TYPE_CHECKING:
    from dsq_chain.matching import Explanation
    from dsq_chain.workloads.workflow import Workflow


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

        wf = workflow_of(workflow)
        return check_feasible(self, wf.resources, wf.labels, Credits.of(max_rate, "max_rate"))

    def top_up(self, job_id: int, amount: Credits | str) -> Receipt:
        """Adds ``amount`` of escrow to a non-final job (paid like a submission).

        Raises InputError, and the contract's ``JobNotFound``, ``InvalidStatus``, ``EscrowOverflow``,
        ``ZeroCredits``, ``ERC20InsufficientBalance``, ``ERC2612InvalidSigner``."""
        units = top_up_units(amount)
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
