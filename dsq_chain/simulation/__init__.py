"""The market simulator (layer 6): users and providers over simulated time, matched by the grid's own
:class:`~dsq_chain.matching.Matcher` and billed by :mod:`dsq_chain.billing`.

    from dsq_chain.simulation import load, simulate
    summary = simulate(load("examples/scenarios/small.yaml"), "runs/small")

See ``docs/simulation.md``.
"""

from dsq_chain.simulation.engine import Counters, Recorder, SimJob, Simulation
from dsq_chain.simulation.run import simulate, sweep
from dsq_chain.simulation.scenario import ScenarioError, load, parse_sweep, validate
from dsq_chain.simulation.workload import JobSpec, TraceError, generate, read_swf

__all__ = [
    "Counters",
    "JobSpec",
    "Recorder",
    "ScenarioError",
    "SimJob",
    "Simulation",
    "TraceError",
    "generate",
    "load",
    "parse_sweep",
    "read_swf",
    "simulate",
    "sweep",
    "validate",
]
