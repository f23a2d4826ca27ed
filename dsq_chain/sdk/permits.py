"""Paying the market: how much of a payment a permit must cover, and the EIP-712 message of the
credit token's EIP-2612 permit. The sync and async clients both pay this way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsq_chain.errors import InputError
from dsq_chain.money import Credits

#: Seconds a signed permit stays valid.
PERMIT_TTL = 3600


def payment_need(owner: str, total: int, balance: int, tokens: int, allowance: int) -> int | None:
    """How much a permit must let the market take for a payment of ``total`` (None: no permit needed).

    The internal ``balance`` is spent first; the rest comes from tokens, by allowance or permit.
    Raises InputError when the tokens do not cover the rest."""
    need = max(0, total - balance)
    if need == 0:
        return None
    if tokens < need:
        raise InputError(f"{owner} holds {Credits(units=tokens)} credits in tokens but this needs "
                         f"{Credits(units=need)} more")
    return None if allowance >= need else need


def permit_typed_data(
    domain: Mapping[str, str], chain_id: int, token: str, owner: str, spender: str, value: int, nonce: int,
    deadline: int,
) -> dict[str, Any]:
    """The EIP-712 message of an EIP-2612 permit of the credit token (``domain``: its name and version)."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "domain": {**domain, "chainId": chain_id, "verifyingContract": token},
        "message": {"owner": owner, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline},
    }
