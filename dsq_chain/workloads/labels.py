"""Label expressions ``key op value``: parsing, matching and on-chain encoding.

A job requires things of a provider with constraints such as ``gpu.model == A100``,
``mem.gb>=24`` or ``zone in eu-west,eu-north``; a provider advertises labels
``key=value``. This module parses both, decides whether a provider's labels
satisfy a constraint (with a human reason when they do not), and encodes keys,
values and constraints as the 32-byte words the job market contract compares.

Semantics, shared by :func:`check` (off-chain, the matcher) and the contract
(on-chain, mirrored by :func:`chain_compare`):

* ``==``, ``!=`` and ``in`` compare *canonical values*: two whole numbers
  (decimal digits only) are equal when their values are (``007 == 7``);
  anything else is compared as text (so ``12.0`` is not ``12``; the chain sees
  the two differently too).
* ``<``, ``<=``, ``>``, ``>=`` compare numbers (integers or decimals, exactly);
  the required value must be a number. When it is a non-negative whole number
  the constraint is also enforced on chain, which only orders non-negative
  whole numbers: the provider's value must then be one as well.
* A missing label fails every operator except ``!=``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import Decimal

from eth_utils.crypto import keccak

from dsq_chain.types import LabelConstraint, LabelOp

__all__ = [
    "MAX_VALUE_BYTES",
    "LabelExpressionError",
    "chain_compare",
    "check",
    "decode_value",
    "encode_key",
    "encode_value",
    "is_label_key",
    "on_chain",
    "parse_constraint",
    "parse_labels",
    "to_chain",
]

#: Longest textual label value: it must fit in one 32-byte word.
MAX_VALUE_BYTES = 32
#: Marker bit of a numeric word: ``2**240 + n`` for a whole number ``n < 2**240``.
_NUMERIC_BASE = 2**240
_ZERO_WORD = bytes(32)

_KEY_PATTERN = "[A-Za-z0-9][A-Za-z0-9._/-]{0,63}"
_KEY_RE = re.compile(_KEY_PATTERN + r"\Z")
_KEY_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_UINT_RE = re.compile(r"[0-9]+\Z")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
# Longest first, so that "<=" is not read as "<" followed by "=...".
_SYMBOL_OPS = ("==", "!=", "<=", ">=", "<", ">")
_OPS_TEXT = "one of == != < <= > >= in"
_ORDERING = frozenset({LabelOp.LT, LabelOp.LE, LabelOp.GT, LabelOp.GE})


class LabelExpressionError(ValueError):
    """A label key, value or expression is malformed.

    ``expression`` is the offending text and ``expected`` says what was
    expected instead; ``str()`` combines both on one line. Raised with one
    argument, it is a plain message (``expected`` is then empty).
    """

    def __init__(self, expression: str, expected: str | None = None) -> None:
        self.expression = expression
        self.expected = expected or ""
        super().__init__(expression if expected is None else f"label expression {expression!r}: expected {expected}")


# --------------------------------------------------------------------------- validation


def _check_key(key: str, expression: str) -> str:
    if not _KEY_RE.match(key):
        raise LabelExpressionError(
            expression, f"a label key matching {_KEY_PATTERN} (letters, digits, . _ / -; at most 64 characters)"
        )
    return key


def _bad_char(value: str) -> str | None:
    """Describe the first character a label value may not contain, if any."""
    for ch in value:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            return f"control character U+{code:04X}"
        if 0xD800 <= code <= 0xDFFF:
            return f"lone surrogate U+{code:04X}"
    return None


def _check_value(value: str, expression: str) -> str:
    """Validate one label value (a provider's, or one alternative of a constraint)."""
    if not value:
        raise LabelExpressionError(expression, "a non-empty value")
    if value != value.strip():
        raise LabelExpressionError(expression, "a value without leading or trailing whitespace")
    bad = _bad_char(value)
    if bad is not None:
        raise LabelExpressionError(expression, f"a value without control characters, got {bad}")
    if _UINT_RE.match(value):
        digits = value.lstrip("0")
        if len(digits) > 73 or int(digits or "0") >= _NUMERIC_BASE:
            raise LabelExpressionError(expression, "a whole number below 2**240")
    elif len(value.encode("utf-8")) > MAX_VALUE_BYTES:
        raise LabelExpressionError(
            expression, f"a value of at most {MAX_VALUE_BYTES} bytes of UTF-8 (the 32-byte limit)"
        )
    return value


def is_label_key(key: str) -> bool:
    """True when ``key`` is a valid label key (what a job can name in a constraint)."""
    return _KEY_RE.match(key) is not None


def _is_uint(value: str) -> bool:
    return _UINT_RE.match(value) is not None


def _number(value: str) -> Decimal | None:
    """The exact number a value spells (integer or decimal), or None."""
    if len(value) > 100 or not _NUMBER_RE.match(value):
        return None
    return Decimal(value)


def _same(a: str, b: str) -> bool:
    """Canonical equality: whole numbers by value, everything else as text."""
    if _is_uint(a) and _is_uint(b):
        return a.lstrip("0") == b.lstrip("0")
    return a == b


# --------------------------------------------------------------------------- parsing


def _split_operator(rest: str, expression: str) -> tuple[LabelOp, str]:
    """Split what follows the key into operator and (unstripped) value."""
    body = rest.lstrip()
    for symbol in _SYMBOL_OPS:
        if body.startswith(symbol):
            return LabelOp.from_symbol(symbol), body[len(symbol) :]
    if rest[:1].isspace() and body.startswith("in") and (len(body) == 2 or body[2].isspace()):
        return LabelOp.IN, body[2:]
    hint = " (use == to compare)" if body.startswith("=") else ""
    raise LabelExpressionError(expression, f"an operator ({_OPS_TEXT}) after the key{hint}")


def parse_constraint(text: str) -> LabelConstraint:
    """Parse ``key op value`` (e.g. ``gpu.model == A100``, ``mem.gb>=24``, ``zone in eu-west,eu-north``).

    Whitespace around symbolic operators is optional; ``in`` needs whitespace on
    both sides and takes a comma-separated list of alternatives. Ordering
    operators need a numeric value. Raises :class:`LabelExpressionError`.
    """
    if not isinstance(text, str):
        raise LabelExpressionError(repr(text), "a string 'key op value'")
    stripped = text.strip()
    match = _KEY_PREFIX_RE.match(stripped)
    if match is None:
        raise LabelExpressionError(text, f"a label key ({_KEY_PATTERN}) followed by an operator and a value")
    key = _check_key(match.group(), text)
    op, raw_value = _split_operator(stripped[match.end() :], text)
    value = raw_value.strip()
    if not value:
        raise LabelExpressionError(text, f"a value after the operator {op.symbol}")
    if value[0] in "=<>!":
        raise LabelExpressionError(text, f"a value after the operator {op.symbol}, not another operator character")
    if op is LabelOp.IN:
        alternatives = [item.strip() for item in value.split(",")]
        if any(not item for item in alternatives):
            raise LabelExpressionError(text, "a comma-separated list of values without empty items")
        for item in alternatives:
            _check_value(item, text)
        value = ",".join(alternatives)
    else:
        _check_value(value, text)
        if op in _ORDERING and _number(value) is None:
            raise LabelExpressionError(text, f"a number after {op.symbol} (ordering operators compare numbers)")
    return LabelConstraint(key, op, value)


def parse_labels(items: Iterable[str] | Mapping[str, str]) -> dict[str, str]:
    """Validate a provider's labels, given as ``key=value`` strings or as a mapping.

    Keys follow the key syntax; values are non-empty, without surrounding
    whitespace or control characters, and fit one 32-byte word on chain.
    Duplicate keys are errors. Raises :class:`LabelExpressionError`.
    """
    if isinstance(items, (str, bytes)):
        raise LabelExpressionError(repr(items), "a list of 'key=value' strings or a mapping, not a single string")
    pairs: list[tuple[str, str, str]] = []
    if isinstance(items, Mapping):
        for key, value in items.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise LabelExpressionError(f"{key!r}: {value!r}", "a string key and a string value")
            pairs.append((key, value, f"{key}={value}"))
    else:
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise LabelExpressionError(str(item), "a label 'key=value'")
            key, _, value = item.partition("=")
            pairs.append((key.strip(), value.strip(), item))
    labels: dict[str, str] = {}
    for key, value, text in pairs:
        _check_key(key, text)
        _check_value(value, text)
        if key in labels:
            raise LabelExpressionError(text, f"each key once, but {key} is given twice")
        labels[key] = value
    return labels


# --------------------------------------------------------------------------- matching


def _check_ordering(constraint: LabelConstraint, actual: str, prefix: str) -> str | None:
    have = _number(actual)
    if have is None:
        return f"{prefix}: provider value {actual} is not a number"
    if _is_uint(constraint.value) and not _is_uint(actual):
        return f"{prefix}: provider value {actual} is not a whole number >= 0, which the on-chain check needs"
    want = Decimal(constraint.value)
    ok = {
        LabelOp.LT: have < want,
        LabelOp.LE: have <= want,
        LabelOp.GT: have > want,
        LabelOp.GE: have >= want,
    }[constraint.op]
    return None if ok else f"{prefix}: provider has {actual}"


def check(constraint: LabelConstraint, labels: Mapping[str, str]) -> str | None:
    """None when ``labels`` satisfy ``constraint``, else a human reason.

    Reasons read like ``label gpu.model == A100: provider has RTX3090`` or
    ``label gpu.model == A100: provider has no gpu.model``. For constraints
    that :func:`to_chain` encodes, the verdict is exactly the contract's.
    """
    prefix = f"label {constraint}"
    actual = labels.get(constraint.key)
    if actual is None:
        return None if constraint.op is LabelOp.NE else f"{prefix}: provider has no {constraint.key}"
    if constraint.op in _ORDERING:
        return _check_ordering(constraint, actual, prefix)
    if constraint.op is LabelOp.IN:
        ok = any(_same(actual, alternative) for alternative in constraint.value.split(","))
    elif constraint.op is LabelOp.EQ:
        ok = _same(actual, constraint.value)
    else:
        ok = not _same(actual, constraint.value)
    return None if ok else f"{prefix}: provider has {actual}"


# --------------------------------------------------------------------------- on-chain encoding


def encode_key(key: str) -> bytes:
    """The 32-byte on-chain key: ``keccak256(utf8(key))``."""
    return keccak(text=_check_key(key, key))


def encode_value(value: str) -> bytes:
    """The 32-byte on-chain word of a label value.

    A whole number ``n < 2**240`` (decimal digits only) becomes ``2**240 + n``;
    any other value its UTF-8 bytes, left-aligned and zero-padded (1..32 bytes).
    The zero word means "absent" and is never produced.
    """
    _check_value(value, value)
    if _is_uint(value):
        return (_NUMERIC_BASE + int(value)).to_bytes(32, "big")
    return value.encode("utf-8").ljust(32, b"\0")


def decode_value(raw: bytes) -> str:
    """Inverse of :func:`encode_value` (whole numbers come back without leading zeros).

    Raises :class:`LabelExpressionError` for words no value encodes to,
    including the zero word ("absent").
    """
    shown = "0x" + bytes(raw).hex()
    if len(raw) != 32:
        raise LabelExpressionError(shown, "a 32-byte word")
    if raw[0] == 0:
        number = int.from_bytes(raw, "big")
        if not _NUMERIC_BASE <= number < 2 * _NUMERIC_BASE:
            raise LabelExpressionError(shown, "a numeric word 2**240 + n or a text word (the zero word means absent)")
        return str(number - _NUMERIC_BASE)
    text_bytes = bytes(raw).rstrip(b"\0")
    try:
        value = text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise LabelExpressionError(shown, "UTF-8 text padded with zero bytes") from None
    if _is_uint(value):
        raise LabelExpressionError(shown, "whole numbers in numeric form, not as text")
    _check_value(value, shown)
    return value


def to_chain(c: LabelConstraint) -> tuple[bytes, int, bytes] | None:
    """``(encode_key, int(op), encode_value)`` of a constraint, or None when it is checked off-chain only.

    ``in`` and ordering constraints whose value is not a non-negative whole
    number are left to the matcher.
    """
    if c.op is LabelOp.IN or (c.op in _ORDERING and not _is_uint(c.value)):
        return None
    return encode_key(c.key), int(c.op), encode_value(c.value)


def on_chain(constraints: Iterable[LabelConstraint]) -> list[tuple[bytes, int, bytes]]:
    """The on-chain encodings of the constraints :func:`to_chain` accepts, in order."""
    encoded = (to_chain(c) for c in constraints)
    return [e for e in encoded if e is not None]


def chain_compare(op: int, required: bytes, actual: bytes) -> bool:
    """Mirror of the contract's comparison of a provider's word ``actual`` (zero if absent).

    ``EQ``/``NE`` compare the words; ordering operators need both words
    numeric (top byte 0, not zero) and compare them as uint256.
    """
    label_op = LabelOp(op)
    if len(required) != 32 or len(actual) != 32:
        raise ValueError("label words are 32 bytes long")
    if label_op is LabelOp.EQ:
        return actual == required
    if label_op is LabelOp.NE:
        return actual != required
    if label_op is LabelOp.IN:
        raise ValueError("the in operator is not checked on chain")
    if actual[0] != 0 or required[0] != 0 or actual == _ZERO_WORD or required == _ZERO_WORD:
        return False
    a, r = int.from_bytes(actual, "big"), int.from_bytes(required, "big")
    return {LabelOp.LT: a < r, LabelOp.LE: a <= r, LabelOp.GT: a > r, LabelOp.GE: a >= r}[label_op]
