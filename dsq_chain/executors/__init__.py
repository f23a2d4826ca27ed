"""Executors: how a provider's worker runs jobs (local processes by default, Slurm on clusters).

The worker depends only on :class:`Executor` and :func:`make_executor`; a new
engine (Kubernetes, a cloud batch service) is a subclass registered with
:func:`register_executor`, without touching the worker::

    register_executor("k8s", KubernetesExecutor)
    executor = make_executor("k8s", namespace="dsq")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dsq_chain.executors.base import (
    CommandError,
    ExecSpec,
    ExecState,
    ExecStatus,
    Executor,
    ExecutorError,
    JobNotFoundError,
    map_to_chain,
)
from dsq_chain.executors.local import LocalExecutor
from dsq_chain.executors.slurm import SLURM_STATES, SlurmExecutor, parse_exit_code, parse_slurm_state

__all__ = [
    "SLURM_STATES",
    "CommandError",
    "ExecSpec",
    "ExecState",
    "ExecStatus",
    "Executor",
    "ExecutorError",
    "JobNotFoundError",
    "LocalExecutor",
    "SlurmExecutor",
    "available_executors",
    "make_executor",
    "map_to_chain",
    "parse_exit_code",
    "parse_slurm_state",
    "register_executor",
]

_REGISTRY: dict[str, Callable[..., Executor]] = {
    LocalExecutor.name: LocalExecutor,
    SlurmExecutor.name: SlurmExecutor,
}


def register_executor(name: str, factory: Callable[..., Executor], *, replace: bool = False) -> None:
    """Make ``make_executor(name, **kw)`` build executors with ``factory(**kw)``."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"executor {name!r} is already registered")
    _REGISTRY[name] = factory


def available_executors() -> list[str]:
    """Names :func:`make_executor` accepts."""
    return sorted(_REGISTRY)


def make_executor(name: str, **kw: Any) -> Executor:
    """Build the executor called ``name`` (``"local"``, ``"slurm"``, or a registered one) with ``kw``.

    ``local``: ``root``, ``kill_grace_s``, ``gpu_ids``. ``slurm``: ``root``,
    ``slurm_conf``, ``partition``, ``account``, ``qos``, ``extra_args``.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ExecutorError(
            f"unknown executor {name!r}: available executors are {', '.join(available_executors())}"
        ) from None
    return factory(**kw)
