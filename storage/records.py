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


def check_json(value: object, limits: Limits, what: str) -> None:
    """Raise ``InvalidMessage`` unless ``value`` is plain JSON within ``limits.max_depth``.

    Iterative, so a hostile 10,000-deep body cannot exhaust the Python stack. Only
    containers are pushed; scalar children are checked in place (exact ``type()``
    tests first: this runs for every message written, see bench/hot_store.py).
    NaN and Infinity are left to ``json.dumps(allow_nan=False)``.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    max_depth = limits.max_depth
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is dict:
            children: Iterable[object] = item.values()  # type: ignore[attr-defined]
            for key in item:  # type: ignore[attr-defined]
                if type(key) is not str and not isinstance(key, str):
                    raise InvalidMessage(
                        f"{what}: object keys must be strings, got {type(key).__name__}"
                    )
        elif kind is list or kind is tuple:
            children = item  # type: ignore[assignment]
        elif kind in _FAST_SCALARS or isinstance(item, _SCALARS):
            continue
        elif isinstance(item, dict | list | tuple):
            children = item.values() if isinstance(item, dict) else item
        else:
            raise InvalidMessage(f"{what}: {type(item).__name__} is not a JSON type")
        if depth >= max_depth:
            if any(type(c) not in _FAST_SCALARS for c in children):
                raise InvalidMessage(f"{what}: nested deeper than {max_depth} levels")
            continue
        for child in children:
            if type(child) not in _FAST_SCALARS:
                stack.append((child, depth + 1))


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
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def encode_message(message: object, limits: Limits = DEFAULT_LIMITS) -> EncodedMessage:
    """Validate one ``{"id", "body"}`` mapping and return its id and encoded record."""
    if not isinstance(message, Mapping):
        raise InvalidMessage(
            f'a message must be a mapping {{"id": ..., "body": ...}}, got {type(message).__name__}'
        )
    if "id" not in message:
        raise InvalidMessage('message has no "id"; every message needs a stable id for dedup')
    if "body" not in message:
        raise InvalidMessage(f'message {message["id"]!r} has no "body"')
    extra = set(message) - {"id", "body"}
    if extra:
        raise InvalidMessage(
            f"message {message['id']!r} has unknown fields {sorted(map(str, extra))}; "
            'put them inside "body"'
        )
    message_id = validate_message_id(message["id"], limits)
    check_json(message["body"], limits, f"message {message_id!r}")
    try:
        record = _dumps({"id": message_id, "body": message["body"]})
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
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Iterable):
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
    check_json(state, limits, "state")
    try:
        encoded = _dumps(state)
    except ValueError as exc:
        raise _encode_failure("state", state, exc) from exc
    if len(encoded) > limits.max_state_bytes:
        raise InvalidMessage(
            f"state is {len(encoded)} bytes encoded; the limit is {limits.max_state_bytes}"
        )
    return encoded


def decode_records(raws: Sequence[bytes | str]) -> list[Message]:
    return [json.loads(raw) for raw in raws]


def decode_state(raw: bytes | str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    state: dict[str, Any] = json.loads(raw)
    return state
