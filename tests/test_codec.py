"""The fast codec (msgspec) writes exactly the stdlib's canonical bytes and refuses
exactly what the stdlib path refuses, with the same typed error.

Records are compared byte for byte (dedup, snapshots, lineage), so the reference
here is the encoding every stored record had before: ``json.dumps(v,
ensure_ascii=False, separators=(",", ":"), allow_nan=False)`` in UTF-8, after
``check_json``. Where msgspec would write other bytes (exponent floats, NaN, ints
beyond the stdlib's digit limit, subclasses) ``storage.records`` takes that path.
"""

from __future__ import annotations

import enum
import json
import math
import sys
import uuid
from collections import OrderedDict
from typing import Any

import msgspec
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import HotStore
from storage.errors import InvalidMessage
from storage.limits import DEFAULT_LIMITS, Limits
from storage.records import (
    _DECODER,
    check_json,
    decode_records,
    decode_state,
    encode_message,
    encode_state,
)


def stdlib_record(message_id: str, body: Any, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The record bytes as the stdlib path writes them (or its InvalidMessage)."""
    check_json(body, limits, f"message {message_id!r}")
    try:
        text = json.dumps(
            {"id": message_id, "body": body},
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
        )
        return text.encode("utf-8")
    except ValueError as exc:
        raise InvalidMessage(f"stdlib refused: {exc}") from exc


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except InvalidMessage as exc:
        return ("refused", type(exc))


FLOAT_EDGES = [
    1e16, 1e-07, -0.0, 0.0, 5e-324, 1.7976931348623157e308, 1e-4, 9.999999999999999e-05,
    9999999999999998.0, 1e15, 1e22, -1e-300, 0.1, 2.5e-05, 123456789.123,
]  # fmt: skip
INT_EDGES = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**40)]
TEXT_EDGES = [
    "".join(map(chr, range(0x20))),  # every control character
    '"\\/\x7f', "\u2028\u2029", "\U0001f600 astral \U00010348", "\ufeff\ufffe\uffff", "é中",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(INT_EDGES),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e-3, max_value=1e-3),
    st.sampled_from(FLOAT_EDGES),
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8")),
    st.sampled_from(TEXT_EDGES),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
    ),
    max_leaves=30,
)


@settings(max_examples=600, deadline=None)
@given(body=json_values)
def test_fast_bytes_equal_the_stdlib_bytes_for_any_json(body: Any) -> None:
    assert encode_message({"id": "m1", "body": body}).record == stdlib_record("m1", body)


@settings(max_examples=300, deadline=None)
@given(state=st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_fast_state_bytes_equal_the_stdlib_bytes(state: dict[str, Any]) -> None:
    expected = json.dumps(state, ensure_ascii=False, separators=(",", ":")).encode()
    assert encode_state(state) == expected


@pytest.mark.parametrize("value", FLOAT_EDGES + INT_EDGES + TEXT_EDGES)
def test_edge_scalars_encode_as_the_stdlib_does(value: Any) -> None:
    body = {"v": value, "in": [value, {"deep": value}]}
    assert encode_message({"id": "m1", "body": body}).record == stdlib_record("m1", body)


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Ratio(float):
    pass


class Name(str):
    pass


class Doc(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


@pytest.mark.parametrize(
    "body",
    [
        {"level": Level.HIGH},
        {"r": Ratio(0.5), "tiny": Ratio(1e-9)},
        {Name("k"): Name("v")},
        Doc(a=1, b=[1, 2]),
        OrderedDict(z=1, a=2),
        Items([1, "x", None]),
        (1, (2, 3), []),
        {"big": 2**64, "bigger": -(10**100)},
    ],
)
def test_subclasses_tuples_and_big_ints_encode_as_the_stdlib_does(body: Any) -> None:
    assert encode_message({"id": "m1", "body": body}).record == stdlib_record("m1", body)


REFUSED = [
    float("nan"),
    float("inf"),
    -float("inf"),
    {"x": [1, float("nan")]},
    "lone \ud800 surrogate",
    {"k\udfff": 1},
    {1: "int key"},
    {(1, 2): "tuple key"},
    Colour.RED,
    uuid.UUID(int=7),
    b"bytes",
    {1, 2},
    object(),
    10**5000,  # over the stdlib's 4300-digit limit
]


@pytest.mark.parametrize("body", REFUSED, ids=lambda b: type(b).__name__)
def test_every_refusal_is_the_same_typed_error(body: Any) -> None:
    with pytest.raises(InvalidMessage):
        stdlib_record("m1", body)
    with pytest.raises(InvalidMessage):
        encode_message({"id": "m1", "body": body})
    with pytest.raises(InvalidMessage):
        encode_state({"s": body})


def test_non_finite_floats_are_named_in_the_error() -> None:
    with pytest.raises(InvalidMessage, match=r"nan is not valid JSON \(NaN/Infinity\)"):
        encode_message({"id": "m1", "body": {"a": [1.5, float("nan")]}})


bad_leaves = st.sampled_from(REFUSED[:13])


@settings(max_examples=300, deadline=None)
@given(body=json_values, bad=bad_leaves, where=st.integers(0, 3))
def test_a_refused_leaf_anywhere_is_refused_as_by_the_stdlib(
    body: Any, bad: Any, where: int
) -> None:
    wrapped = [body, bad] if where % 2 else {"a": body, "b": [bad]}
    if where > 1:
        wrapped = {"outer": wrapped}
    assert outcome(encode_message, {"id": "m1", "body": wrapped})[0] == "refused"
    assert outcome(stdlib_record, "m1", wrapped)[0] == "refused"


def nested(depth: int, leaf: Any = 1) -> Any:
    value: Any = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("depth", [1, 4, 5, 6])
@pytest.mark.parametrize("leaf", [1, 1e-9, 2**70, "s", Level.HIGH])
def test_the_depth_limit_is_the_same(depth: int, leaf: Any) -> None:
    limits = Limits(max_depth=5)
    body = nested(depth, leaf)
    fast = outcome(lambda: encode_message({"id": "m", "body": body}, limits).record)
    slow = outcome(stdlib_record, "m", body, limits)
    assert fast == slow


def test_a_hostile_depth_is_refused_without_recursion() -> None:
    body = nested(100_000)
    assert sys.getrecursionlimit() < 100_000
    with pytest.raises(InvalidMessage, match="nested deeper than 128"):
        encode_message({"id": "m", "body": body})


# -- decoding ------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(body=json_values)
def test_fast_decode_equals_json_loads(body: Any) -> None:
    raw = encode_message({"id": "m1", "body": body}).record
    expected = json.loads(raw)
    (decoded,) = decode_records([raw])
    assert decoded == expected
    assert repr(decoded) == repr(expected)  # same types, -0.0, exact big ints
    assert decode_records([raw.decode("utf-8")]) == [expected]


@pytest.mark.parametrize(
    "raw",
    [b'{"a":1e400}', b'"\\ud800"', b'{"a":NaN}', b'{"a":-Infinity}'],
)
def test_what_msgspec_refuses_and_json_loads_reads_is_read_by_json_loads(raw: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        _DECODER.decode(raw)
    expected = json.loads(raw)
    decoded = decode_records([b'{"id":"ok","body":1}', raw])
    assert repr(decoded[1]) == repr(expected) or (
        isinstance(expected, dict) and math.isnan(expected["a"])
    )


def test_decode_state() -> None:
    assert decode_state(None) == {}
    assert decode_state(b'{"n":18446744073709551616,"f":1e-07}') == {
        "n": 18446744073709551616,
        "f": 1e-07,
    }


def test_stored_records_are_the_canonical_bytes(redis_client: redis.Redis) -> None:
    """End to end: what Redis holds is the stdlib's bytes, and loads back equal."""
    hot = HotStore(redis_client)
    hot.create("codec")
    bodies = [{"f": 1e16, "g": 1e-07, "z": -0.0}, {"n": 2**64, "s": "\u2028\x1f\U0001f600"}]
    hot.append("codec", [{"id": f"m{i}", "body": b} for i, b in enumerate(bodies)])
    stored = redis_client.lrange(hot.keys("codec").msgs, 0, -1)
    assert stored == [stdlib_record(f"m{i}", b) for i, b in enumerate(bodies)]
    assert [m["body"] for m in hot.load("codec")] == bodies
    assert hot.get("codec", ["m1"])["m1"]["body"] == bodies[1]
    assert hot.tail("codec", 1)[0]["body"] == bodies[1]
