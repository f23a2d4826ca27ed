"""Typed clients over the contracts: what dApps, the CLI and the services call.

* :class:`GridClient` — a job owner: submit (with permit, in one transaction), top up, cancel, read, wait.
* :class:`ProviderClient` — a provider: register, update, pause, claim/refuse/start/finish (single or
  batched), withdraw.
* :class:`SchedulerClient` — the meta-scheduler's on-chain side: assign, batch assign.
* :class:`AdminClient` — approve/ban/remove providers, grant the scheduler role, mint credits.

Connect with :meth:`~dsq_chain.sdk.client_base._Client.connect` (a key, a keystore signer, a LocalAccount, any
:class:`~dsq_chain.sdk.signers.Signer`, or nothing for a read-only client). Amounts are
:class:`~dsq_chain.money.Credits`. Every transaction method returns a typed
:class:`~dsq_chain.sdk.receipts.Receipt` (hash, block, gas used, decoded events).

Bad input raises :class:`~dsq_chain.errors.InputError` before anything is sent; a revert raises the
exception named after the contract's custom error (a subclass of web3's ``ContractLogicError``).

This module is where applications import them from; each lives in a module of its own:
``client_base`` (the connection and the reads every role shares), ``grid_client``, ``provider_client``,
``scheduler_client``, ``admin_client``, and the pieces they are made of — ``submission`` (checks
before submitting), ``placement`` (direct placement as label constraints), ``permits`` (paying with an
EIP-2612 permit), ``views`` (the contract's view tuples as records), ``waiter`` (``wait_for``), and
``receipts.skipped_entries``.
"""

from __future__ import annotations

from dsq_chain.sdk.admin_client import AdminClient
from dsq_chain.sdk.client_base import _Client
from dsq_chain.sdk.grid_client import GridClient
from dsq_chain.sdk.permits import PERMIT_TTL, payment_need, permit_typed_data
from dsq_chain.sdk.placement import PLACEMENT_KEY, ChainLabel, placement_labels, placement_of
from dsq_chain.sdk.provider_client import UINT40_MAX, ProviderClient
from dsq_chain.sdk.receipts import skipped_entries
from dsq_chain.sdk.scheduler_client import SchedulerClient
from dsq_chain.sdk.signers import ZERO_ADDRESS
from dsq_chain.sdk.submission import (
    MAX_ARRAY_JOBS,
    MAX_JOB_LABELS,
    MAX_WORKFLOW_BYTES,
    UINT56_MAX,
    UINT64_MAX,
    PreparedSubmission,
    _job_request,
    external_ref,
    prepare_submission,
)
from dsq_chain.sdk.views import bill_of, job_from_view, provider_from_view
from dsq_chain.sdk.waiter import Waiter

__all__ = [
    "MAX_ARRAY_JOBS",
    "MAX_JOB_LABELS",
    "MAX_WORKFLOW_BYTES",
    "PERMIT_TTL",
    "PLACEMENT_KEY",
    "UINT40_MAX",
    "UINT56_MAX",
    "UINT64_MAX",
    "ZERO_ADDRESS",
    "AdminClient",
    "ChainLabel",
    "GridClient",
    "PreparedSubmission",
    "ProviderClient",
    "SchedulerClient",
    "Waiter",
    "_Client",
    "_job_request",
    "bill_of",
    "external_ref",
    "job_from_view",
    "payment_need",
    "permit_typed_data",
    "placement_labels",
    "placement_of",
    "prepare_submission",
    "provider_from_view",
    "skipped_entries",
]
