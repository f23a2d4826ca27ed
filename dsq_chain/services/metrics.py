"""Prometheus metrics of the services, each on its own registry (several services may share a process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from dsq_chain.services.journal import Entry, Phase
from dsq_chain.types import ReportAction


class SchedulerMetrics:
    """Pending jobs, matches, commit latency and errors of the meta-scheduler."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.pending = Gauge("dsq_scheduler_pending_jobs", "Jobs waiting for a provider", registry=r)
        self.submitted = Counter("dsq_scheduler_jobs_submitted", "Jobs seen submitted", registry=r)
        self.matches = Counter("dsq_scheduler_matches", "Assignments committed on chain", registry=r)
        self.commit_latency = Histogram(
            "dsq_scheduler_commit_latency_seconds", "Time to commit one batch of assignments", registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.errors = Counter("dsq_scheduler_errors", "Errors by kind", ["kind"], registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)


class WorkerMetrics:
    """Jobs by status, claim and report latency and chain errors of a provider worker."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("dsq_worker_jobs", "Jobs in the journal by status", ["status"], registry=r)
        self.claim_latency = Histogram("dsq_worker_claim_latency_seconds", "Assignment seen -> claim mined", registry=r)
        self.report_latency = Histogram("dsq_worker_report_latency_seconds", "Executor change -> report mined",
                                        registry=r)
        self.chain_errors = Counter("dsq_worker_chain_errors", "Chain errors by kind", ["kind"], registry=r)
        self.refused = Counter("dsq_worker_refused", "Jobs refused, by reason", ["reason"], registry=r)

    def journal_counts(self, counts: dict[str, int]) -> None:
        """Jobs by journal phase (``counts``: phase name -> jobs; a phase not in it has none)."""
        for phase in Phase:
            self.jobs.labels(status=phase.value).set(0)
        for phase_name, n in counts.items():
            self.jobs.labels(status=phase_name).set(n)

    def reported(self, action: ReportAction, entry: Entry | None, elapsed: float) -> None:
        """A report mined: a claim's latency runs from when the assignment was seen (``entry.seen_at``)."""
        if action is ReportAction.CLAIM:
            if entry:
                self.claim_latency.observe(max(0.0, time.time() - entry.seen_at))
        else:
            self.report_latency.observe(elapsed)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
