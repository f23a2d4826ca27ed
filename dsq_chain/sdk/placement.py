"""A job's placement as on-chain label constraints: ``@provider == ADDR`` allows a provider,
``@provider != ADDR`` excludes one (the chain enforces both); :func:`placement_of` reads them back."""

from __future__ import annotations

from collections.abc import Sequence

from eth_utils.address import to_checksum_address

from dsq_chain.errors import InputError

#: An on-chain label constraint, as the contract takes it: (keccak of the key, operator, value word).
ChainLabel = tuple[bytes, int, bytes]

#: The label key reserved for a job's placement: ``@provider == ADDR`` allows, ``@provider != ADDR`` excludes.
PLACEMENT_KEY = "@provider"


def placement_labels(providers: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[ChainLabel]:
    """The on-chain constraints of a job's placement: the providers allowed to run it (any of them;
    none = any provider) and those excluded."""
    from eth_utils.crypto import keccak

    key = keccak(text=PLACEMENT_KEY)
    rows: list[ChainLabel] = []
    for op, addresses in ((0, providers), (1, exclude)):
        for a in addresses:
            try:
                word = bytes.fromhex(to_checksum_address(a)[2:]).rjust(32, b"\0")
            except ValueError:
                raise InputError(f"placement: {a!r} is not a provider address") from None
            rows.append((key, op, word))
    return rows


def placement_of(chain_labels: Sequence[ChainLabel]) -> tuple[frozenset[str], frozenset[str]]:
    """(allowed, excluded) provider addresses named by a job's on-chain constraints."""
    from eth_utils.crypto import keccak

    key = keccak(text=PLACEMENT_KEY)
    allowed: set[str] = set()
    excluded: set[str] = set()
    for k, op, value in chain_labels:
        if bytes(k) == key and op in (0, 1):
            (allowed if op == 0 else excluded).add(to_checksum_address(bytes(value)[-20:]))
    return frozenset(allowed), frozenset(excluded)
