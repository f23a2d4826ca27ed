"""Is the code at an address the artifacts' contract? Runtime code compared byte for byte, except the
bytes the constructor fills with immutable values.

The compiler leaves zeros where each ``immutable`` goes (``JobMarket.token``, the EIP-712 domain cached
by ``CreditToken``) and the constructor writes the values at deployment, so those bytes differ from
deployment to deployment; every other byte (code, metadata) must be equal. Their ranges come from the
compiler's ``immutableReferences``, shipped in the artifacts. What an immutable holds is checked apart
(:mod:`dsq_chain.sdk.network_deploy` compares the creating transaction's constructor arguments).
"""

from __future__ import annotations

from dsq_chain import artifacts


def code_difference(contract: str, code: bytes) -> str | None:
    """None when ``code`` is ``contract``'s runtime code from the artifacts, immutables aside; else what
    differs, in words."""
    expected = bytes.fromhex(artifacts.runtime_bytecode(contract).removeprefix("0x"))
    if not code:
        return "no code there"
    if len(code) != len(expected):
        return f"{len(code)} bytes of code, {contract} of the artifacts has {len(expected)}"
    masked = bytearray(code)
    for start, length in artifacts.immutable_ranges(contract):
        masked[start:start + length] = expected[start:start + length]
    if masked == expected:
        return None
    first = next(i for i, (a, b) in enumerate(zip(masked, expected, strict=True)) if a != b)
    return f"code differs from {contract} of the artifacts from byte {first} on (outside its immutables)"

