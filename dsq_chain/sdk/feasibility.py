"""Before credits are locked: could any approved provider run this job?

The job (resources, label constraints, price cap) is checked against every approved provider's
hardware, labels and prices by the meta-scheduler's own matcher (:mod:`dsq_chain.matching`), so the
verdicts are the ones ``dsq explain`` gives once the job waits. Capacity is taken as the provider's
whole hardware: a job that fits once running jobs end is feasible (it waits; it does not wait forever).
Paused providers count: a pause ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from eth_utils.address import to_checksum_address

from dsq_chain.errors import Infeasible
from dsq_chain.matching import Explanation, Matcher, PendingJob, ProviderState
from dsq_chain.money import Credits
from dsq_chain.sdk.events import EventDecoder, ProviderLabelsSet, normalise_log
from dsq_chain.types import LabelConstraint, Provider, ProviderStatus, Resources


def labels_query(deployment: Any, addresses: Iterable[str]) -> dict[str, Any]:
    """The ``eth_getLogs`` parameters selecting the ``ProviderLabelsSet`` events of ``addresses``."""
    decoder = EventDecoder()
    return {"address": deployment.market, "fromBlock": hex(deployment.block), "toBlock": "latest",
            "topics": [decoder.topics["ProviderLabelsSet"],
                       ["0x" + "0" * 24 + to_checksum_address(a)[2:].lower() for a in sorted(set(addresses))]]}


def fold_labels(raw_logs: Iterable[dict[str, Any]], addresses: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each provider's labels now, folded from its ``ProviderLabelsSet`` logs (raw JSON-RPC logs, in order).

    A value word no label value encodes to counts as absent, as the scheduler's grid state does."""
    from dsq_chain.workloads.labels import decode_value

    out: dict[str, dict[str, str]] = {to_checksum_address(a): {} for a in addresses}
    decoder = EventDecoder()
    for raw in raw_logs:
        ev = decoder.decode(normalise_log(raw))
        if not isinstance(ev, ProviderLabelsSet) or ev.provider not in out:
            continue  # an undecodable log changes no label (the scheduler's grid state skips it too)
        labels = out[ev.provider]
        for key, value in zip(ev.keys, ev.values, strict=True):
            try:
                decoded = None if value == b"\0" * 32 else decode_value(value)
            except ValueError:
                decoded = None
            if decoded is None:
                labels.pop(key, None)
            else:
                labels[key] = decoded
    return out


def provider_labels(client: Any, addresses: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each provider's labels now (one ``eth_getLogs``); ``client`` is any SDK client."""
    wanted = list(addresses)
    if not wanted:
        return {}
    return fold_labels(client.chain.call_rpc("eth_getLogs", [labels_query(client.deployment, wanted)]) or [], wanted)


def explain_submission(
    providers: Sequence[Provider],
    labels: dict[str, dict[str, str]],
    resources: Resources,
    constraints: Sequence[LabelConstraint],
    max_rate: Credits,
    *,
    owner: str,
    now: float = 0.0,
    allowed: Iterable[str] = (),
    excluded: Iterable[str] = (),
) -> Explanation:
    """The matcher's verdict of every approved provider for a job not yet submitted (id 0); ``allowed``
    (direct placement) and ``excluded`` as the submission would carry them."""
    job = PendingJob(0, owner, resources, int(max_rate), tuple(constraints), 0.0,
                     {to_checksum_address(a) for a in excluded}, frozenset(to_checksum_address(a) for a in allowed))
    states = {
        p.address: ProviderState(p.address, p.total, p.total, p.prices, dict(labels.get(p.address, {})), True)
        for p in providers
        if p.status is ProviderStatus.APPROVED
    }
    return Matcher().explain(job, states, now)


def require_placeable(explanation: Explanation) -> Explanation:
    """``explanation`` when some provider could run the job; raises
    :class:`~dsq_chain.errors.Infeasible` naming each provider's reason otherwise."""
    if explanation.error is not None:
        raise Infeasible(f"the job cannot be matched: {explanation.error}", {}, explanation)
    if not explanation.verdicts:
        raise Infeasible("no approved provider yet: nothing could run this job "
                         "(force=True, or dsq submit --force, queues it anyway)", {}, explanation)
    if not explanation.placeable:
        reasons = {v.address: v.rejection.reason for v in explanation.verdicts if v.rejection is not None}
        each = "; ".join(f"{a}: {r}" for a, r in reasons.items())
        raise Infeasible(
            f"no approved provider can run this job ({each}); force=True, or dsq submit --force, queues it anyway",
            reasons, explanation,
        )
    return explanation


def check_feasible(
    client: Any,
    resources: Resources,
    constraints: Sequence[LabelConstraint],
    max_rate: Credits,
    *,
    providers: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> Explanation:
    """The matcher's explanation when at least one approved provider could run the job (``client``: a
    sync SDK client); raises :class:`~dsq_chain.errors.Infeasible` naming each provider's reason otherwise.
    ``providers``/``exclude``: the direct placement the submission carries."""
    approved = [p for p in client.providers() if p.status is ProviderStatus.APPROVED]
    labels = provider_labels(client, (p.address for p in approved))
    return require_placeable(
        explain_submission(approved, labels, resources, constraints, max_rate, owner=client.address,
                           allowed=providers, excluded=exclude))


__all__ = ["check_feasible", "explain_submission", "fold_labels", "labels_query", "provider_labels",
           "require_placeable"]
