"""The jobs a scenario brings, in arrival order: drawn from user populations, or read from an SWF trace.

Standard Workload Format (``.swf``, the Parallel Workloads Archive's format): one job per line, 18
whitespace-separated fields, ``;`` starts a comment. Fields used here (1-based): 2 submit time, 3 wait
time, 4 run time, 5 allocated processors, 8 requested processors, 9 requested time, 10 requested memory
(KB per processor), 11 status (1 completed, 0 failed, 5 cancelled), 12 user id. ``-1`` means unknown.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsq_chain.simulation.distributions import chance, sample, sample_int
from dsq_chain.types import LabelConstraint
from dsq_chain.workloads.labels import parse_constraint


class TraceError(ValueError):
    """An SWF line that cannot be read: names the file, the line and the field."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job a user submits: what it needs, pays and does, and what its owner will do to it.

    Times are whole seconds: ``arrival`` absolute, the others relative (``cancel_after`` and each top-up
    offset count from the arrival). ``top_up_when_low`` is the amount the owner adds when the escrow is
    about to run out (0: never).
    """

    seq: int
    owner: str
    arrival: int
    cpus: int
    gpus: int
    mem_mb: int
    runtime: int
    exit_code: int
    max_rate: int
    escrow: int
    labels: tuple[LabelConstraint, ...] = ()
    cancel_after: int | None = None
    top_ups: tuple[tuple[int, int], ...] = ()
    top_up_when_low: int = 0
    population: str = ""


def _quantize(t: float, quantum: int) -> int:
    """``t`` in whole seconds, rounded up to a multiple of ``quantum`` (when > 0)."""
    s = max(0, math.ceil(t))
    return -(-s // quantum) * quantum if quantum > 0 else s


def _escrow(runtime_s: int, rate: int, factor: float) -> int:
    return max(1, math.ceil(runtime_s * rate / 60 * factor))


class _Population:
    """One user population's arrival process and job draws."""

    def __init__(self, index: int, pop: dict[str, Any], seed: int, quantum: int, horizon: int) -> None:
        self.pop = pop
        self.rng = random.Random(seed * 7919 + index)
        self.quantum = quantum
        self.horizon = horizon
        self.owners = [f"{pop['name']}-{i}" for i in range(pop["count"])]
        self.labels = tuple(parse_constraint(text) for text in pop["jobs"].get("labels", []))
        arr = pop["arrivals"]
        self.kind = arr["process"]
        self.t = float(arr.get("start_s", 0))
        self.left = arr.get("max_jobs")

    def next_arrival(self) -> float | None:
        arr = self.pop["arrivals"]
        if self.left is not None and self.left <= 0:
            return None
        if self.kind == "poisson":
            self.t += self.rng.expovariate(arr["rate_per_hour"] / 3600.0)
        else:
            self.t += arr["interval_s"]
        if self.t > self.horizon:
            return None
        if self.left is not None:
            self.left -= 1
        return self.t

    def job(self, seq: int, t: float) -> JobSpec:
        j, rng = self.pop["jobs"], self.rng
        q = self.quantum
        cpus = sample_int(j["cpus"], rng, 1)
        gpus = sample_int(j.get("gpus", 0), rng, 0)
        mem = cpus * sample_int(j.get("mem_mb_per_cpu", 1024), rng, 1)
        runtime = _quantize(sample(j["runtime_s"], rng), q) or max(q, 1)
        cap = max(1, round(cpus * sample(j["price_cap_per_cpu_minute"], rng)
                           + gpus * sample(j.get("price_cap_per_gpu_minute", 0), rng)))
        escrow = _escrow(runtime, cap, sample(j.get("escrow_factor", 1.5), rng))
        exit_code = 1 if chance(j.get("fail_prob", 0.0), rng) else 0
        cancel_after = None
        cancel = self.pop.get("cancel")
        if cancel and chance(cancel["prob"], rng):
            cancel_after = _quantize(sample(cancel["after_s"], rng), q)
        top_ups: tuple[tuple[int, int], ...] = ()
        when_low = 0
        top = self.pop.get("top_up")
        if top and chance(top["prob"], rng):
            amount = max(1, round(escrow * top.get("amount_factor", 1.0)))
            if "after_s" in top:
                top_ups = ((_quantize(sample(top["after_s"], rng), q), amount),)
            else:
                when_low = amount
        owner = self.owners[rng.randrange(len(self.owners))]
        return JobSpec(seq, owner, _quantize(t, q), cpus, gpus, mem, runtime, exit_code, cap, escrow, self.labels,
                       cancel_after, top_ups, when_low, self.pop["name"])


def generate(scenario: dict[str, Any]) -> Iterator[JobSpec]:
    """Every job of ``scenario`` in arrival order (ties in the order drawn); deterministic for its seed."""
    if "trace" in scenario:
        yield from read_swf(scenario["trace"], scenario.get("time_quantum_s", 0), scenario.get("base_dir"))
        return
    quantum = int(scenario.get("time_quantum_s", 0))
    pops = [_Population(i, pop, scenario["seed"], quantum, scenario["duration_s"])
            for i, pop in enumerate(scenario.get("users", []))]
    heap: list[tuple[float, int]] = []
    for i, p in enumerate(pops):
        t = p.next_arrival()
        if t is not None:
            heap.append((t, i))
    heapq.heapify(heap)
    seq = 0
    while heap:
        t, i = heapq.heappop(heap)
        seq += 1
        yield pops[i].job(seq, t)
        nxt = pops[i].next_arrival()
        if nxt is not None:
            heapq.heappush(heap, (nxt, i))


def read_swf(trace: dict[str, Any], quantum: int = 0, base_dir: str | None = None) -> Iterator[JobSpec]:
    """Jobs of an SWF trace (see the module docstring), priced by the trace section of the scenario."""
    path = Path(trace["path"])
    if not path.is_absolute() and base_dir:
        path = Path(base_dir) / path
    scale = float(trace.get("time_scale", 1.0))
    cap_per_cpu = float(trace["price_cap_per_cpu_minute"])
    factor = float(trace.get("escrow_factor", 1.5))
    mem_default = int(trace.get("mem_mb_per_cpu", 1024))
    max_cpus = int(trace.get("max_cpus", 1 << 16))
    limit = trace.get("max_jobs")
    seq = 0
    first: float | None = None
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            text = line.split(";", 1)[0].strip()
            if not text:
                continue
            fields = text.split()
            if len(fields) < 12:
                raise TraceError(f"{path}:{lineno}: expected 18 SWF fields, found {len(fields)}")
            try:
                submit, wait, run = float(fields[1]), float(fields[2]), float(fields[3])
                allocated, requested = int(float(fields[4])), int(float(fields[7]))
                req_time, req_mem, status, uid = float(fields[8]), float(fields[9]), int(fields[10]), fields[11]
            except ValueError as e:
                raise TraceError(f"{path}:{lineno}: a field is not a number: {e}") from None
            cpus = requested if requested > 0 else allocated
            if cpus <= 0 or submit < 0:
                continue  # the archive marks unknown jobs with -1: nothing to simulate
            cpus = min(cpus, max_cpus)
            first = submit if first is None else first
            arrival = _quantize((submit - first) / scale, quantum)
            runtime = _quantize(max(run, 1.0) / scale, quantum) or max(quantum, 1)
            mem = cpus * (max(1, int(req_mem // 1024)) if req_mem > 0 else mem_default)
            cap = max(1, round(cpus * cap_per_cpu))
            paid = _quantize(req_time / scale, quantum) if req_time > 0 else runtime
            cancel_after = None
            if status == 5:  # cancelled: at the end of what it ran, or while still waiting
                cancel_after = _quantize((max(wait, 0.0) + max(run, 0.0)) / scale, quantum)
            seq += 1
            yield JobSpec(seq, f"user{uid}", arrival, cpus, 0, mem, runtime, 0 if status in (1, 5) else 1, cap,
                          _escrow(max(paid, runtime), cap, factor), (), cancel_after, (), 0, "trace")
            if limit is not None and seq >= limit:
                return
