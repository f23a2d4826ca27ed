"""dsq-chain: a decentralized HPC grid — contracts, SDK, meta-scheduler and provider worker.

The public face, one screen. Names are imported on first use, so ``import dsq_chain`` stays cheap
(a job's supervisor imports a module of this package with no third-party code loaded).

A dApp starts with::

    from dsq_chain import GridClient, Credits, Workflow, JobStatus, errors
    grid = GridClient.connect("http://127.0.0.1:8545", "deployment.json", private_key)
    [job_id] = grid.submit("job.yaml", credits=Credits("2"), max_rate=Credits("0.5"))

(``docs/sdk.md`` is the guide; ``docs/api.md`` the reference.)

Layers, lowest first (``docs/architecture.md``; ``tests/test_layers.py`` enforces one-way imports):

- ``types``, ``errors``, ``artifacts`` — enums, records, contract errors, the compiled ABI
- ``workloads`` — the formats users bring (workflows, label expressions); pure
- ``matching`` — the matcher: constraints, scoring, fair share, explanations; pure
- ``executors`` — how a provider runs a job (local processes, Slurm)
- ``sdk`` — chain access: clients, events, deployment, local devnet
- ``services`` — long-running: follower, grid state, scheduler, worker, journal
- ``cli``, ``demo`` — wiring only
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AdminClient",
    "AsyncGridClient",
    "Chain",
    "Credits",
    "Deployment",
    "EventFollower",
    "GridClient",
    "Job",
    "JobStatus",
    "MetaScheduler",
    "Prices",
    "ProviderClient",
    "ProviderWorker",
    "Receipt",
    "Resources",
    "SchedulerClient",
    "Wallet",
    "Workflow",
    "deploy",
    "errors",
    "signers",
]

_WHERE = {
    "AdminClient": "dsq_chain.sdk.client",
    "AsyncGridClient": "dsq_chain.sdk.async_client",
    "Credits": "dsq_chain.money",
    "Job": "dsq_chain.types",
    "Receipt": "dsq_chain.sdk.receipts",
    "GridClient": "dsq_chain.sdk.client",
    "ProviderClient": "dsq_chain.sdk.client",
    "SchedulerClient": "dsq_chain.sdk.client",
    "Chain": "dsq_chain.sdk.chain",
    "Wallet": "dsq_chain.sdk.chain",
    "Deployment": "dsq_chain.sdk.deployment",
    "deploy": "dsq_chain.sdk.deployment",
    "EventFollower": "dsq_chain.services.follower",
    "MetaScheduler": "dsq_chain.services.scheduler",
    "ProviderWorker": "dsq_chain.services.worker",
    "JobStatus": "dsq_chain.types",
    "Prices": "dsq_chain.types",
    "Resources": "dsq_chain.types",
    "Workflow": "dsq_chain.workloads.workflow",
}

if TYPE_CHECKING:
    from dsq_chain import errors
    from dsq_chain.money import Credits
    from dsq_chain.sdk import signers
    from dsq_chain.sdk.async_client import AsyncGridClient
    from dsq_chain.sdk.chain import Chain, Wallet
    from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient, SchedulerClient
    from dsq_chain.sdk.deployment import Deployment, deploy
    from dsq_chain.sdk.receipts import Receipt
    from dsq_chain.services.follower import EventFollower
    from dsq_chain.services.scheduler import MetaScheduler
    from dsq_chain.services.worker import ProviderWorker
    from dsq_chain.types import Job, JobStatus, Prices, Resources
    from dsq_chain.workloads.workflow import Workflow


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("dsq_chain.errors")
    if name == "signers":
        return importlib.import_module("dsq_chain.sdk.signers")
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'dsq_chain' has no attribute {name!r}")
    return getattr(importlib.import_module(where), name)


def __dir__() -> list[str]:
    return sorted(__all__)
