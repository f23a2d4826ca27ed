"""Translated SDL jobs against a live grid: explained provider by provider, then submitted."""

from __future__ import annotations

import json
from dataclasses import dataclass

from dsq_chain.errors import InputError
from dsq_chain.matching import Explanation, PendingJob
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Wallet
from dsq_chain.sdk.client import GridClient
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.services.scheduler import MetaScheduler
from dsq_chain.workloads import workflow as wfmod
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


def explain(wallet: Wallet, deployment: Deployment, translation: Translation) -> dict[str, Explanation]:
    """For each translated service, each approved provider's verdict ("why no bid"), from the chain's events."""
    sched = MetaScheduler(wallet, deployment)
    out: dict[str, Explanation] = {}
    for i, job in enumerate(translation.jobs):
        wf = workflow_of(job)
        pending = PendingJob(-1 - i, wallet.address, wf.resources, job.max_rate, wf.labels, 0.0, set())
        out[job.service] = sched.explain_pending(pending)
    return out


def submit(client: GridClient, translation: Translation, credits: int, *, force: bool = False) -> list[Submitted]:
    """Submits every translated job (``credits`` units of escrow per job). Nothing at all is submitted when a
    part of the SDL was refused, or (unless ``force``) when no approved provider could run one of its services:
    the error carries each provider's verdict."""
    if translation.refused:
        reasons = "; ".join(f"{path}: {why}" for path, why in translation.refused.items())
        raise InputError(f"{translation.source} is not submitted, nothing was locked: {reasons}")
    if not translation.jobs:
        raise InputError(f"{translation.source} has no service to run")
    flows = [(job, workflow_of(job)) for job in translation.jobs]  # every one checked before the first is sent
    if not force:
        for service, expl in explain(client.wallet, client.deployment, translation).items():
            if not any(v.placeable for v in expl.verdicts):
                raise InputError(f"{translation.source}: no approved provider can run service {service} now, "
                                 f"nothing was locked (--force submits anyway):\n{expl}")
    out: list[Submitted] = []
    for job, wf in flows:
        ids = list(client.submit(wf, credits=Credits(units=credits), max_rate=Credits(units=job.max_rate),
                                 count=job.count, force=force))
        out.append(Submitted(job.service, ids, wf.hash()))
    return out
