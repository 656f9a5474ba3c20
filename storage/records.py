"""Message records and the state slice: validation and JSON encoding.

A stored record is the JSON object ``{"id": str, "body": JSON}``. Everything is
checked here, before any I/O, so a bad message never leaves a partial write:
the id format, the body being plain JSON (str keys, finite numbers, bounded
nesting), valid UTF-8, and the configured size limits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeAlias, TypedDict

import msgspec

from storage.errors import InvalidMessage
from storage.keys import validate_message_id
from storage.limits import DEFAULT_LIMITS, Limits

JSON: TypeAlias = "dict[str, JSON] | list[JSON] | str | int | float | bool | None"


class Message(TypedDict):
    """One stored message: a caller-chosen id (the dedup key) and a JSON body."""

    id: str
    body: JSON


class EncodedMessage(NamedTuple):
    id: str
    record: bytes


_SCALARS = (str, int, float, bool, type(None))
_FAST_SCALARS = frozenset(_SCALARS)
_LEAVES = frozenset((str, bool, type(None)))
"""Scalars the fast codec writes exactly as the stdlib does, whatever their value."""
_INT_LIMIT = 10**4000
"""Larger ints take the stdlib path: it refuses ints over 4300 digits (the default
``sys.set_int_max_str_digits``), which msgspec would encode."""

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


def _float_exact(value: float) -> bool:
    """Whether msgspec writes ``value`` as ``repr`` does: it differs below 1e-4 and
    from 1e16 up (exponent form), and writes NaN/Infinity as null (False for those)."""
    return value == 0.0 or 1e-4 <= abs(value) < 1e16


def _scan(value: object, limits: Limits, what: str) -> bool:
    """``check_json``'s walk; also True if msgspec encodes ``value`` to the stdlib's
    bytes (exact types only, ints and floats in the ranges it writes alike)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    max_depth = limits.max_depth
    exact = True
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            children: Iterable[object] = item.values()  # type: ignore[attr-defined]
            for key in item:  # type: ignore[attr-defined]
                if type(key) is not str:
                    if not isinstance(key, str):
                        raise InvalidMessage(
                            f"{what}: object keys must be strings, got {type(key).__name__}"
                        )
                    exact = False
        elif kind is list or kind is tuple:
            children = item  # type: ignore[assignment]
        elif kind in _LEAVES:
            continue
        elif kind is float:
            exact = exact and _float_exact(item)  # type: ignore[arg-type]
            continue
        elif kind is int:
            exact = exact and -_INT_LIMIT < item < _INT_LIMIT  # type: ignore[operator]
            continue
        elif isinstance(item, _SCALARS):  # subclasses (IntEnum, str subclasses): stdlib
            exact = False
            continue
        elif isinstance(item, dict | list | tuple):
            exact = False
            children = item.values() if isinstance(item, dict) else item
        else:
            raise InvalidMessage(f"{what}: {type(item).__name__} is not a JSON type")
        if depth >= max_depth:
            if any(type(c) not in _FAST_SCALARS for c in children):
                raise InvalidMessage(f"{what}: nested deeper than {max_depth} levels")
            stack.extend((c, depth + 1) for c in children if type(c) in (int, float))
            continue
        for child in children:
            child_kind = type(child)
            if child_kind in _LEAVES:
                continue
            if child_kind is float:
                exact = exact and _float_exact(child)  # type: ignore[arg-type]
            elif child_kind is int:
                exact = exact and -_INT_LIMIT < child < _INT_LIMIT  # type: ignore[operator]
            else:
                stack.append((child, depth + 1))
    return exact


def check_json(value: object, limits: Limits, what: str) -> None:
    """Raise ``InvalidMessage`` unless ``value`` is plain JSON within ``limits.max_depth``.

    Iterative, so a hostile 10,000-deep body cannot exhaust the Python stack. Only
    containers (and ints/floats, whose range decides the codec) are pushed; other
    scalars are checked in place (exact ``type()`` tests first: this runs for every
    message written, see bench/hot_store.py). NaN and Infinity are left to the encode.
    """
    _scan(value, limits, what)


def _non_finite(value: object) -> float | None:
    """The first NaN/Infinity in ``value`` (only called to explain a failed encode)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


def _encode_failure(what: str, value: object, exc: ValueError) -> InvalidMessage:
    bad = _non_finite(value)
    if bad is not None:
        return InvalidMessage(f"{what}: {bad} is not valid JSON (NaN/Infinity)")
    # lone surrogates (UnicodeEncodeError), ints over 4300 digits
    return InvalidMessage(f"{what} cannot be encoded ({exc})")


def _dumps(value: object) -> bytes:
    """The canonical bytes: the stdlib's compact UTF-8 JSON (records compare byte for byte)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _encode(value: object, exact: bool) -> bytes:
    """``_dumps(value)``, through msgspec when ``_scan`` found it writes the same bytes
    (about 10x faster); the stdlib raises the errors (``ValueError``) either way."""
    if exact:
        try:
            return _ENCODER.encode(value)
        except (UnicodeEncodeError, RecursionError):  # lone surrogates; the stdlib says
            pass
    return _dumps(value)


def encode_message(message: object, limits: Limits = DEFAULT_LIMITS) -> EncodedMessage:
    """Validate one ``{"id", "body"}`` mapping and return its id and encoded record."""
    if type(message) is not dict and not isinstance(message, Mapping):  # dict: no ABC check
        raise InvalidMessage(
            f'a message must be a mapping {{"id": ..., "body": ...}}, got {type(message).__name__}'
        )
    if "id" not in message:
        raise InvalidMessage('message has no "id"; every message needs a stable id for dedup')
    if "body" not in message:
        raise InvalidMessage(f'message {message["id"]!r} has no "body"')
    extra = set(message) - {"id", "body"} if len(message) != 2 else ()
    if extra:
        raise InvalidMessage(
            f"message {message['id']!r} has unknown fields {sorted(map(str, extra))}; "
            'put them inside "body"'
        )
    message_id = validate_message_id(message["id"], limits)
    exact = _scan(message["body"], limits, f"message {message_id!r}")
    try:
        record = _encode(
            {"id": message_id, "body": message["body"]}, exact and type(message_id) is str
        )
    except ValueError as exc:
        raise _encode_failure(f"message {message_id!r}", message["body"], exc) from exc
    if len(record) > limits.max_message_bytes:
        raise InvalidMessage(
            f"message {message_id!r} is {len(record)} bytes encoded; "
            f"the limit is {limits.max_message_bytes}"
        )
    return EncodedMessage(message_id, record)


def encode_batch(
    messages: Iterable[object],
    limits: Limits = DEFAULT_LIMITS,
    *,
    unique: bool = False,
    whole_thread: bool = False,
) -> list[EncodedMessage]:
    """Validate and encode a batch; all-or-nothing. ``unique`` refuses repeated ids.
    ``whole_thread``: the batch is a thread's whole list (replace_all, a transformed
    fork), which the caller writes in chunks, so ``limits.max_batch`` does not apply."""
    if type(messages) is not list and (
        isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Iterable)
    ):
        raise InvalidMessage("messages must be a list of {id, body} mappings")
    batch = list(messages)
    if len(batch) > limits.max_batch and not whole_thread:
        raise InvalidMessage(
            f"batch of {len(batch)} messages is over the limit of {limits.max_batch}; split it"
        )
    encoded = [encode_message(message, limits) for message in batch]
    if unique:
        seen: set[str] = set()
        for item in encoded:
            if item.id in seen:
                raise InvalidMessage(f"message id {item.id!r} appears twice in the list")
            seen.add(item.id)
    return encoded


def encode_state(state: object, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Validate and encode a state slice (a JSON object)."""
    if not isinstance(state, Mapping):
        raise InvalidMessage(f"state must be a JSON object (mapping), got {type(state).__name__}")
    state = dict(state)
    exact = _scan(state, limits, "state")
    try:
        encoded = _encode(state, exact)
    except ValueError as exc:
        raise _encode_failure("state", state, exc) from exc
    if len(encoded) > limits.max_state_bytes:
        raise InvalidMessage(
            f"state is {len(encoded)} bytes encoded; the limit is {limits.max_state_bytes}"
        )
    return encoded


def _loads(raw: bytes | str) -> Any:
    """One record or state: msgspec (exact ints of any size, floats as ``float()``
    rounds them), else the stdlib for what msgspec refuses and the stdlib reads
    (an exponent beyond the float range; a record not written by this module)."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return json.loads(raw)


def decode_records(raws: Sequence[bytes | str]) -> list[Message]:
    """Records as ``json.loads`` reads them. One decode per record: joining 10,000
    records into one array to parse once cost more than it saved (the copy)."""
    try:
        return [_DECODER.decode(raw) for raw in raws]
    except (msgspec.DecodeError, RecursionError):
        return [_loads(raw) for raw in raws]


def decode_state(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    state: dict[str, Any] = _loads(raw)
    return state
