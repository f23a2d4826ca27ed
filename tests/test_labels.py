"""Label expressions: parsing, matching, on-chain encoding, and their agreement with the contract's rules."""

from __future__ import annotations

import re

import pytest
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dsq_chain.errors import LabelMismatch
from dsq_chain.sdk.chain import Call
from dsq_chain.types import CREDIT_UNIT, LabelConstraint, LabelOp
from dsq_chain.workloads.labels import (
    LabelExpressionError,
    chain_compare,
    check,
    decode_value,
    encode_key,
    encode_value,
    on_chain,
    parse_constraint,
    parse_labels,
    to_chain,
)
from tests.grid import Grid

FUZZ = settings(max_examples=200, deadline=None)
DIGITS = re.compile(r"[0-9]+")


# --------------------------------------------------------------------------- parse_constraint


@pytest.mark.parametrize(
    ("text", "key", "op", "value"),
    [
        ("gpu.model == A100", "gpu.model", LabelOp.EQ, "A100"),
        ("gpu.model==A100", "gpu.model", LabelOp.EQ, "A100"),
        ("  os != windows  ", "os", LabelOp.NE, "windows"),
        ("mem.gb>=24", "mem.gb", LabelOp.GE, "24"),
        ("mem.gb <= 24", "mem.gb", LabelOp.LE, "24"),
        ("cuda.version > 11.8", "cuda.version", LabelOp.GT, "11.8"),
        ("temp < -10", "temp", LabelOp.LT, "-10"),
        ("zone in eu-west,eu-north", "zone", LabelOp.IN, "eu-west,eu-north"),
        ("zone in eu-west , eu-north", "zone", LabelOp.IN, "eu-west,eu-north"),
        ("in in a", "in", LabelOp.IN, "a"),
        ("vendor/gpu-model_2 == Tesla V100", "vendor/gpu-model_2", LabelOp.EQ, "Tesla V100"),
        ("k" * 64 + " == x", "k" * 64, LabelOp.EQ, "x"),
        ("n == " + "9" * 60, "n", LabelOp.EQ, "9" * 60),
    ],
)
def test_parse_constraint(text: str, key: str, op: LabelOp, value: str) -> None:
    assert parse_constraint(text) == LabelConstraint(key, op, value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "a label key"),
        ("== A100", "a label key"),
        (".gpu == A100", "a label key"),
        ("gpu.model = A100", "use == to compare"),
        ("gpu.model A100", "an operator"),
        ("gpu.model", "an operator"),
        ("zonein eu-west", "an operator"),
        ("zone in", "a value after the operator in"),
        ("zone IN eu-west", "an operator"),
        ("gpu.model ==", "a value after the operator =="),
        ("gpu.model === A100", "not another operator character"),
        ("mem.gb >= lots", "a number after >="),
        ("mem.gb < 1e3", "a number after <"),
        ("zone in a,,b", "without empty items"),
        ("zone in a,", "without empty items"),
        ("k" * 65 + " == x", "at most 64 characters"),
        ("gpu model == A100", "an operator"),
        ("gpu.model == " + "x" * 33, "32-byte limit"),
        ("n == " + "9" * 73, "below 2**240"),
        ("gpu.model == A\x00100", "control characters"),
        ("gpu.model == A\udc00", "lone surrogate"),
    ],
)
def test_parse_constraint_errors(text: str, expected: str) -> None:
    with pytest.raises(LabelExpressionError) as info:
        parse_constraint(text)
    assert expected in info.value.expected
    assert repr(text) in str(info.value), "the message names the expression"
    assert "\n" not in str(info.value)


def test_error_is_a_value_error_that_survives_pickling() -> None:
    import pickle

    err = LabelExpressionError("a = b", "an operator")
    assert isinstance(err, ValueError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err) == "label expression 'a = b': expected an operator"
    assert str(LabelExpressionError("plain message")) == "plain message"


def test_parse_constraint_rejects_non_strings() -> None:
    with pytest.raises(LabelExpressionError):
        parse_constraint(42)  # type: ignore[arg-type]


def test_constraint_str_round_trips() -> None:
    for text in ["mem.gb>=24", "zone in a , b", "gpu.model==A100"]:
        c = parse_constraint(text)
        assert parse_constraint(str(c)) == c


# --------------------------------------------------------------------------- parse_labels


def test_parse_labels_from_strings_and_mapping() -> None:
    expected = {"gpu.model": "A100", "mem.gb": "80", "zone": "eu west"}
    assert parse_labels(["gpu.model=A100", "mem.gb = 80", "zone=eu west"]) == expected
    assert parse_labels(expected) == expected
    assert parse_labels([]) == {}
    assert parse_labels(["formula=a=b"]) == {"formula": "a=b"}


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["gpu.model"], "key=value"),
        (["gpu.model="], "non-empty value"),
        (["=A100"], "label key"),
        (["gpu model=A100"], "label key"),
        (["a=1", "a=2"], "each key once"),
        (["name=" + "x" * 33], "32-byte limit"),
        (["name=" + "é" * 17], "32-byte limit"),
        (["tab=a\tb"], "control characters"),
        ({"k": 5}, "string key and a string value"),
        ({"k": " v"}, "without leading or trailing whitespace"),
        ([7], "key=value"),
    ],
)
def test_parse_labels_errors(items: object, expected: str) -> None:
    with pytest.raises(LabelExpressionError) as info:
        parse_labels(items)  # type: ignore[arg-type]
    assert expected in info.value.expected


def test_parse_labels_rejects_a_single_string() -> None:
    with pytest.raises(LabelExpressionError, match="not a single string"):
        parse_labels("gpu.model=A100")


def test_parse_labels_accepts_32_bytes_exactly() -> None:
    assert parse_labels(["name=" + "é" * 16]) == {"name": "é" * 16}


# --------------------------------------------------------------------------- check


def _check(expression: str, labels: dict[str, str]) -> str | None:
    return check(parse_constraint(expression), labels)


def test_check_reasons_read_as_documented() -> None:
    assert _check("gpu.model == A100", {"gpu.model": "RTX3090"}) == "label gpu.model == A100: provider has RTX3090"
    assert _check("gpu.model == A100", {}) == "label gpu.model == A100: provider has no gpu.model"
    assert _check("mem.gb >= 24", {"mem.gb": "16"}) == "label mem.gb >= 24: provider has 16"
    assert _check("mem.gb >= 24", {"mem.gb": "lots"}) == "label mem.gb >= 24: provider value lots is not a number"
    assert (
        _check("zone in eu-west,eu-north", {"zone": "us-east"})
        == "label zone in eu-west,eu-north: provider has us-east"
    )


@pytest.mark.parametrize(
    ("expression", "labels", "ok"),
    [
        ("gpu.model == A100", {"gpu.model": "A100"}, True),
        ("gpu.model == A100", {"gpu.model": "a100"}, False),
        ("gpu.model != A100", {"gpu.model": "A100"}, False),
        ("gpu.model != A100", {"gpu.model": "H100"}, True),
        ("gpu.model != A100", {}, True),
        ("mem.gb >= 24", {}, False),
        ("mem.gb >= 24", {"mem.gb": "100"}, True),  # numeric, not lexicographic ("100" < "24" as text)
        ("mem.gb > 24", {"mem.gb": "24"}, False),
        ("mem.gb <= 24", {"mem.gb": "024"}, True),
        ("mem.gb < 24", {"mem.gb": "9"}, True),
        ("mem.gb == 24", {"mem.gb": "024"}, True),  # whole numbers compare by value, as on chain
        ("cuda.version >= 11.8", {"cuda.version": "12.1"}, True),
        ("cuda.version >= 11.8", {"cuda.version": "11.10"}, False),  # numbers, not versions
        ("cuda.version < 12", {"cuda.version": "11.8"}, False),  # on chain: both sides whole numbers
        ("temp > -5", {"temp": "-4.5"}, True),
        ("zone in eu-west,eu-north", {"zone": "eu-north"}, True),
        ("zone in eu-west,eu-north", {}, False),
        ("n in 1,2", {"n": "02"}, True),
    ],
)
def test_check(expression: str, labels: dict[str, str], ok: bool) -> None:
    reason = _check(expression, labels)
    assert (reason is None) is ok, reason
    if reason is not None:
        assert reason.startswith(f"label {parse_constraint(expression)}: provider ")


def test_check_explains_values_the_chain_cannot_order() -> None:
    reason = _check("mem.gb >= 24", {"mem.gb": "24.5"})
    assert (
        reason == "label mem.gb >= 24: provider value 24.5 is not a whole number >= 0, which the on-chain check needs"
    )


# --------------------------------------------------------------------------- encoding


def test_encode_key_is_keccak_of_the_utf8_key() -> None:
    assert encode_key("gpu.model") == keccak(b"gpu.model")
    assert len(encode_key("gpu.model")) == 32
    with pytest.raises(LabelExpressionError):
        encode_key("bad key")


def test_encode_value_numbers_and_text() -> None:
    assert encode_value("24") == (2**240 + 24).to_bytes(32, "big")
    assert encode_value("0") == (2**240).to_bytes(32, "big")
    assert encode_value("007") == encode_value("7")
    assert encode_value("A100") == b"A100" + bytes(28)
    assert encode_value("x" * 32) == b"x" * 32
    assert encode_value("2.5") == b"2.5" + bytes(29)  # not a whole number: text
    assert encode_value("-3") == b"-3" + bytes(30)


@pytest.mark.parametrize("value", ["", "x" * 33, "9" * 73, str(2**240), " a", "a\x00", "\x00"])
def test_encode_value_errors(value: str) -> None:
    with pytest.raises(LabelExpressionError):
        encode_value(value)


def test_encode_value_names_the_32_byte_limit() -> None:
    with pytest.raises(LabelExpressionError, match="32-byte limit") as info:
        encode_value("y" * 40)
    assert "y" * 40 in str(info.value)


def test_largest_number_encodes() -> None:
    top = str(2**240 - 1)
    assert decode_value(encode_value(top)) == top


@pytest.mark.parametrize(
    "raw",
    [
        bytes(32),  # the zero word: absent
        bytes(31),
        (2**241).to_bytes(32, "big"),  # numeric marker missing
        (5).to_bytes(32, "big"),
        b"12" + bytes(30),  # digits must be numeric words
        b"a\x00b" + bytes(29),  # NUL inside text
        b"\xff" + bytes(31),  # not UTF-8
        b" a" + bytes(30),
    ],
)
def test_decode_value_errors(raw: bytes) -> None:
    with pytest.raises(LabelExpressionError):
        decode_value(raw)


def test_to_chain_and_on_chain() -> None:
    eq = parse_constraint("gpu.model == A100")
    ge = parse_constraint("mem.gb >= 24")
    ge_decimal = parse_constraint("cuda.version >= 11.8")
    ge_negative = parse_constraint("temp >= -5")
    inside = parse_constraint("zone in a,b")
    ne_number = parse_constraint("n != 2.5")
    assert to_chain(eq) == (encode_key("gpu.model"), int(LabelOp.EQ), encode_value("A100"))
    assert to_chain(ge) == (encode_key("mem.gb"), int(LabelOp.GE), encode_value("24"))
    assert to_chain(ne_number) == (encode_key("n"), int(LabelOp.NE), b"2.5" + bytes(29))
    assert to_chain(ge_decimal) is None
    assert to_chain(ge_negative) is None
    assert to_chain(inside) is None
    assert on_chain([inside, eq, ge_decimal, ge]) == [to_chain(eq), to_chain(ge)]


def test_chain_compare() -> None:
    assert chain_compare(LabelOp.GE, encode_value("24"), encode_value("100"))
    assert not chain_compare(LabelOp.GE, encode_value("24"), encode_value("2"))
    assert not chain_compare(LabelOp.GE, encode_value("24"), bytes(32))
    assert not chain_compare(LabelOp.LT, encode_value("24"), encode_value("abc"))
    assert chain_compare(LabelOp.NE, encode_value("A100"), bytes(32))
    with pytest.raises(ValueError):
        chain_compare(LabelOp.IN, encode_value("a"), encode_value("a"))


# --------------------------------------------------------------------------- properties

keys = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}", fullmatch=True)
words = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters=",=<>!"), min_size=1)
values = st.one_of(
    st.integers(0, 10**6).map(str),
    st.integers(-50, 50).map(str),
    st.integers(0, 2**240 - 1).map(str),
    st.decimals(-1000, 1000, places=2).map(str),
    st.sampled_from(["0", "007", "24", "24.0", "24.5", "A100", "RTX3090", "eu-west", "-0", "+5", ".5"]),
    words.filter(lambda w: len(w.encode()) <= 32),
)


def _valid_value(value: str) -> bool:
    try:
        encode_value(value)
    except LabelExpressionError:
        return False
    return True


valid_values = values.filter(_valid_value)
ops = st.sampled_from([op for op in LabelOp if op is not LabelOp.IN])


@st.composite
def constraints(draw: st.DrawFn) -> LabelConstraint:
    op = draw(st.sampled_from(list(LabelOp)))
    if op is LabelOp.IN:
        return parse_constraint(f"{draw(keys)} in {','.join(draw(st.lists(valid_values, min_size=1, max_size=4)))}")
    value = draw(valid_values)
    if op in (LabelOp.LT, LabelOp.LE, LabelOp.GT, LabelOp.GE):
        value = draw(st.one_of(st.integers(0, 10**6).map(str), st.sampled_from(["24", "11.8", "-3", "0"])))
    return parse_constraint(f"{draw(keys)} {op.symbol} {value}")


@FUZZ
@given(constraints(), st.one_of(st.none(), valid_values))
def test_chain_compare_mirrors_the_encoding(c: LabelConstraint, have: str | None) -> None:
    """The Python mirror of the contract's comparison agrees with the matcher (the contract itself: below)."""
    labels = {} if have is None else {c.key: have}
    encoded = to_chain(c)
    if encoded is None:
        return
    _, op, required = encoded
    actual = bytes(32) if have is None else encode_value(have)
    assert (check(c, labels) is None) == chain_compare(op, required, actual)


@settings(FUZZ, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(constraints(), st.one_of(st.none(), valid_values))
def test_check_agrees_with_the_contract_on_anvil(grid: Grid, c: LabelConstraint, have: str | None) -> None:
    """For every constraint the chain checks, the matcher's verdict is the deployed contract's (no reverted batch).

    The provider carries the label (or not); a job carries the constraint; ``assign`` is run with ``eth_call``
    from the scheduler: it succeeds or reverts with LabelMismatch exactly when the matcher says so.
    """
    encoded = to_chain(c)
    if encoded is None:
        return  # checked off-chain only (``in``, ordering against text): the matcher alone decides
    provider = grid.spare
    labels = {} if have is None else {c.key: have}
    provider.set_labels(labels, remove=[] if have is not None else [c.key])
    job_id = grid.submit(labels=(c,), credits=CREDIT_UNIT)
    call = Call(grid.scheduler.market.functions.assign(job_id, provider.address, [encoded]))
    try:
        grid.scheduler.wallet.check(call)
        chain_ok = True
    except LabelMismatch:
        chain_ok = False
    assert (check(c, labels) is None) == chain_ok, f"matcher and contract disagree on {c} with {labels}"
    event(f"contract {'accepts' if chain_ok else 'rejects'}")


@FUZZ
@given(valid_values)
def test_encode_decode_round_trip(value: str) -> None:
    word = encode_value(value)
    assert len(word) == 32 and word != bytes(32)
    decoded = decode_value(word)
    assert encode_value(decoded) == word
    assert decoded == (str(int(value)) if DIGITS.fullmatch(value) else value)


@FUZZ
@given(constraints())
def test_str_of_a_constraint_parses_back(c: LabelConstraint) -> None:
    assert parse_constraint(str(c)) == c


@FUZZ
@given(st.text(max_size=200))
def test_parse_constraint_fuzz_text(text: str) -> None:
    try:
        c = parse_constraint(text)
    except LabelExpressionError:
        return
    assert parse_constraint(str(c)) == c


@FUZZ
@given(st.from_regex(r"\s*[A-Za-z0-9._/ -]{1,70}\s*(==|!=|<=|>=|<|>| in |=|!|in)\s*[^\n]{0,40}", fullmatch=True))
def test_parse_constraint_fuzz_near_valid(text: str) -> None:
    try:
        c = parse_constraint(text)
    except LabelExpressionError:
        return
    assert c.key in text


@FUZZ
@given(st.binary(max_size=40))
def test_decode_value_fuzz(raw: bytes) -> None:
    try:
        value = decode_value(raw)
    except LabelExpressionError:
        return
    assert encode_value(value) == raw


@FUZZ
@given(
    st.one_of(st.lists(st.text(max_size=50), max_size=5), st.dictionaries(st.text(max_size=20), st.text(max_size=40)))
)
def test_parse_labels_fuzz(items: list[str] | dict[str, str]) -> None:
    try:
        labels = parse_labels(items)
    except LabelExpressionError:
        return
    for key, value in labels.items():
        assert len(encode_key(key)) == 32
        assert decode_value(encode_value(value)) == (str(int(value)) if DIGITS.fullmatch(value) else value)
