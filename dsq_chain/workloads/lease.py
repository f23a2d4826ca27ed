"""An Akash lease as a grid job's external reference: the deployment owner (20 bytes) and its ``dseq``.

Akash owners are bech32 ``akash1...`` addresses of 20-byte accounts. The reference a job carries in its
submission event is those 20 bytes, the ``dseq`` as 8 big-endian bytes and 4 zero bytes (the layout of
:func:`dsq_chain.sdk.client.external_ref`), so a console finds the grid jobs of a lease by
``(owner, dseq)`` in the index, and :func:`parse_lease_ref` gives the ``akash1...`` owner back.
"""

from __future__ import annotations

from dsq_chain.errors import InputError

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
HRP = "akash"


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def _expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert(data: list[int], frm: int, to: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << to) - 1
    for value in data:
        acc = (acc << frm) | value
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad and bits:
        out.append((acc << (to - bits)) & maxv)
    elif not pad and (bits >= frm or (acc << (to - bits)) & maxv):
        return None
    return out


def decode_owner(owner: str) -> bytes:
    """The 20 account bytes of an ``akash1...`` address (or of a ``0x`` hex one); raises InputError."""
    if owner.lower().startswith("0x") and len(owner) == 42:
        try:
            return bytes.fromhex(owner[2:])
        except ValueError:
            raise InputError(f"{owner!r} is not a hex address") from None
    text = owner.lower()
    if text != owner and owner.upper() != owner:
        raise InputError(f"{owner!r}: mixed case is not a bech32 address")
    hrp, sep, rest = text.rpartition("1")
    if not sep or hrp != HRP or len(rest) < 7 or any(c not in _CHARSET for c in rest):
        raise InputError(f"{owner!r} is not an akash1... address")
    data = [_CHARSET.index(c) for c in rest]
    if _polymod(_expand(hrp) + data) != 1:
        raise InputError(f"{owner!r}: bad bech32 checksum")
    raw = _convert(data[:-6], 5, 8, False)
    if raw is None or len(raw) != 20:
        raise InputError(f"{owner!r} does not hold a 20-byte account")
    return bytes(raw)


def encode_owner(account: bytes) -> str:
    """The ``akash1...`` address of 20 account bytes."""
    data = _convert(list(account), 8, 5, True) or []
    check = _polymod(_expand(HRP) + data + [0] * 6) ^ 1
    data += [(check >> 5 * (5 - i)) & 31 for i in range(6)]
    return HRP + "1" + "".join(_CHARSET[d] for d in data)


def lease_ref(owner: str, dseq: int) -> bytes:
    """The 32-byte external reference of the Akash deployment ``(owner, dseq)``."""
    if not 0 <= dseq < 2**64:
        raise InputError(f"dseq must be 0..2**64-1, got {dseq}")
    return decode_owner(owner) + dseq.to_bytes(8, "big") + b"\0" * 4


def parse_lease_ref(ref: bytes) -> tuple[str, int] | None:
    """``(akash1 owner, dseq)`` of a reference :func:`lease_ref` made; None for any other bytes."""
    if len(ref) != 32 or ref[28:] != b"\0" * 4 or not any(ref):
        return None
    return encode_owner(ref[:20]), int.from_bytes(ref[20:28], "big")
