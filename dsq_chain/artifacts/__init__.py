"""Compiled contracts shipped with the SDK: the one source of truth for ABIs and bytecode.

``contracts.json`` is written by :mod:`dsq_chain.artifacts.build` from ``contracts/`` and checked fresh by
``tests/test_build.py``. Nothing in the SDK carries an ABI written by hand.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

ARTIFACTS_PATH = Path(__file__).with_name("contracts.json")


@lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    """The artifact document (compiler settings, enums, contracts)."""
    try:
        doc: dict[str, Any] = json.loads(ARTIFACTS_PATH.read_text())
    except FileNotFoundError as e:  # pragma: no cover - only in a broken checkout
        raise RuntimeError(f"{ARTIFACTS_PATH} is missing: run `python -m dsq_chain.artifacts.build`") from e
    return doc


def abi(contract: str) -> list[dict[str, Any]]:
    """The ABI of ``contract`` (``CreditToken`` or ``JobMarket``)."""
    result: list[dict[str, Any]] = load()["contracts"][contract]["abi"]
    return result


def bytecode(contract: str) -> str:
    """The creation bytecode of ``contract`` as 0x-hex."""
    result: str = load()["contracts"][contract]["bytecode"]
    return result


def runtime_bytecode(contract: str) -> str:
    """The runtime (deployed) code of ``contract`` as 0x-hex, with zeros where immutables go."""
    result: str = load()["contracts"][contract]["deployedBytecode"]
    return result


def immutable_ranges(contract: str) -> list[tuple[int, int]]:
    """(start, length) of the bytes of ``contract``'s runtime code its constructor fills with immutable
    values (addresses, chain-dependent hashes): they differ from deployment to deployment."""
    return [(int(a), int(b)) for a, b in load()["contracts"][contract]["immutableRanges"]]


def constant(name: str) -> int:
    """A public numeric constant of the contracts (``MAX_WORKFLOW_BYTES``, ``MAX_ARRAY_JOBS``, ...)."""
    for values in load().get("constants", {}).values():
        if name in values:
            return int(values[name])
    raise KeyError(f"no public constant {name} in the compiled contracts")
