"""The meta-scheduler's matching core: pure, no chain access.

State model (:class:`ProviderState`, :class:`PendingJob`), fair share
(:class:`FairShare`), scoring (:class:`Weights`, lower scores are better),
the batch matcher (:class:`Matcher`) and its explanations
(:class:`Explanation`). The meta-scheduler builds the state from chain events,
calls :meth:`Matcher.match` and commits the returned assignments.
"""

from dsq_chain.matching.constraints import EXCLUDED, INACTIVE, ConstraintError, Rejection, first_failure
from dsq_chain.matching.explain import Explanation, ProviderVerdict
from dsq_chain.matching.fairshare import FairShare
from dsq_chain.matching.matcher import DEFAULT_HALF_LIFE_S, Matcher
from dsq_chain.matching.model import Assignment, PendingJob, ProviderState, ProviderStats
from dsq_chain.matching.scoring import MarketReference, ScoreBreakdown, Weights, score

__all__ = [
    "DEFAULT_HALF_LIFE_S",
    "EXCLUDED",
    "INACTIVE",
    "Assignment",
    "ConstraintError",
    "Explanation",
    "FairShare",
    "MarketReference",
    "Matcher",
    "PendingJob",
    "ProviderState",
    "ProviderStats",
    "ProviderVerdict",
    "Rejection",
    "ScoreBreakdown",
    "Weights",
    "first_failure",
    "score",
]
