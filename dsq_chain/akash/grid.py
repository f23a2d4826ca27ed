"""Translated SDL jobs against a live grid: explained provider by provider, then submitted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from eth_utils.address import to_checksum_address

from dsq_chain.errors import InputError
from dsq_chain.matching import Explanation, PendingJob
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Wallet
from dsq_chain.sdk.client import GridClient
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.workloads import workflow as wfmod
from dsq_chain.workloads.lease import lease_ref
from dsq_chain.workloads.sdl import TranslatedJob, Translation


@dataclass(frozen=True)
class Submitted:
    """The grid jobs one translated service became."""

    service: str
    job_ids: list[int]
    workflow_hash: bytes


def workflow_of(job: TranslatedJob) -> wfmod.Workflow:
    """The checked grid workflow of a translated job (raises ``WorkflowError`` naming what is wrong)."""
    return wfmod.loads(json.dumps(job.workflow))


def explain(wallet: Wallet, deployment: Deployment, translation: Translation, *,
            providers: Sequence[str] = (), exclude: Sequence[str] = ()) -> dict[str, Explanation]:
    """For each translated service, each approved provider's verdict ("why no bid"), from the chain's events;
    ``providers`` (direct placement) and ``exclude`` as :func:`submit` would send them."""
    sched = MetaScheduler(wallet, deployment)
    allowed = frozenset(to_checksum_address(p) for p in providers)
    out: dict[str, Explanation] = {}
    for i, job in enumerate(translation.jobs):
        wf = workflow_of(job)
        pending = PendingJob(-1 - i, wallet.address, wf.resources, job.max_rate, wf.labels, 0.0,
                             {to_checksum_address(p) for p in exclude}, allowed)
        out[job.service] = sched.explain_pending(pending)
    return out


def submit(client: GridClient, translation: Translation, credits: int, *, force: bool = False,
           providers: Sequence[str] = (), exclude: Sequence[str] = (),
           lease: tuple[str, int] | None = None) -> list[Submitted]:
    """Submits every translated job (``credits`` units of escrow per job). Nothing at all is submitted when a
    part of the SDL was refused, or (unless ``force``) when no approved provider could run one of its services:
    the error carries each provider's verdict. ``providers`` places the jobs directly (an Akash direct bid),
    ``exclude`` keeps providers out (the chain enforces both); ``lease`` ``(owner, dseq)`` ties every job to
    the Akash deployment (in the submission event, found by consoles through the index)."""
    if translation.refused:
        reasons = "; ".join(f"{path}: {why}" for path, why in translation.refused.items())
        raise InputError(f"{translation.source} is not submitted, nothing was locked: {reasons}")
    if not translation.jobs:
        raise InputError(f"{translation.source} has no service to run")
    flows = [(job, workflow_of(job)) for job in translation.jobs]  # every one checked before the first is sent
    if not force:
        verdicts = explain(client.wallet, client.deployment, translation, providers=providers, exclude=exclude)
        for service, expl in verdicts.items():
            if not any(v.placeable for v in expl.verdicts):
                raise InputError(f"{translation.source}: no approved provider can run service {service} now, "
                                 f"nothing was locked (--force submits anyway):\n{expl}")
    ref = lease_ref(*lease) if lease is not None else b""
    out: list[Submitted] = []
    for job, wf in flows:
        ids = list(client.submit(wf, credits=Credits(units=credits), max_rate=Credits(units=job.max_rate),
                                 count=job.count, force=True, providers=providers, exclude=exclude,
                                 external_ref=ref))
        out.append(Submitted(job.service, ids, wf.hash()))
    return out
