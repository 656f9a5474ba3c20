"""Hostile input against a real redis-server: a clear typed error, and nothing written.

Every refused call must raise the documented error (``InvalidThreadId`` or
``InvalidMessage``, both ``AgentThreadsError``; ``ThreadNotFound`` for an unknown
thread) and leave Redis exactly as it was: same keys, same values, no refreshed
expiry, and the seeded thread's version unchanged. A thread with messages and
state exists before every case, so "nothing written" has something to protect.
"""

from __future__ import annotations

import collections
import json
import math
import string
import types
import unicodedata
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from storage import (
    AgentThreadsError,
    HotStore,
    InvalidMessage,
    InvalidThreadId,
    Limits,
    ThreadNotFound,
    validate_message_id,
    validate_thread_id,
)
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.keys import KeyLayout, encode_thread_id
from storage.limits import MIB
from storage.tiered import Threads
from tasks.app import threads as worker_threads
from tests.conftest import msg, redis_contents

SEEDED = "t-seeded"
NEW = "t-new"
MISSING = "t-missing"
SEED_MESSAGES = [msg("m1"), msg("m2"), msg("m3")]
SEED_STATE = {"step": 2, "tasks": ["plan", "act"]}

Operation = Callable[[HotStore, Any], object]


# -- harness -------------------------------------------------------------------


@pytest.fixture
def seeded(hot: HotStore) -> HotStore:
    """The store with one thread holding three messages, a state slice and a version > 1."""
    hot.create(SEEDED)
    hot.append(SEEDED, SEED_MESSAGES)
    hot.save_state(SEEDED, SEED_STATE)
    assert hot.version(SEEDED) == 3
    return hot


def expiries(client: redis.Redis) -> dict[bytes, int]:
    return {key: client.pttl(key) for key in client.keys("*")}


def assert_refused(
    hot: HotStore,
    client: redis.Redis,
    call: Callable[[], object],
    error: type[AgentThreadsError],
    match: str | None = None,
) -> AgentThreadsError:
    """``call`` raises exactly ``error`` and changes nothing in Redis."""
    before = redis_contents(client)
    ttl_before = expiries(client)
    version_before = hot.version(SEEDED)
    with pytest.raises(error, match=match) as caught:
        call()
    assert type(caught.value) is error
    assert isinstance(caught.value, AgentThreadsError)
    assert redis_contents(client) == before
    ttl_after = expiries(client)
    assert ttl_after.keys() == ttl_before.keys()
    # A refreshed expiry would be a write too: every TTL may only have run down.
    assert all(ttl_after[key] <= ttl_before[key] for key in ttl_after)
    assert hot.version(SEEDED) == version_before
    assert hot.load(SEEDED) == SEED_MESSAGES
    assert hot.load_state(SEEDED) == SEED_STATE
    return caught.value


def nested_list(depth: int) -> Any:
    """``depth`` lists inside each other, built iteratively."""
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def nested_dict(depth: int) -> Any:
    """``depth`` objects inside each other, built iteratively."""
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def self_referencing_list() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


class Opaque:
    """A plain object with attributes: not JSON, however simple it looks."""

    def __init__(self) -> None:
        self.role = "user"


# -- hostile thread ids, applied to every operation that takes one -------------

HOSTILE_THREAD_IDS = [
    pytest.param("", id="empty"),
    pytest.param("\t", id="tab"),
    pytest.param("a\nb", id="newline"),
    pytest.param("t-seeded\n", id="trailing-newline"),
    pytest.param("a\rb", id="carriage-return"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x1bb", id="escape-control"),
    pytest.param("a\x7fb", id="del-control"),
    pytest.param("a\x85b", id="c1-next-line"),
    pytest.param("a\x9b2J", id="c1-csi"),
    pytest.param("a\ud800b", id="lone-surrogate"),
    pytest.param("a" * 513, id="513-bytes"),
    pytest.param("\u00e9" * 257, id="514-bytes-in-257-chars"),
    pytest.param("a" * 10_000, id="10000-chars"),
    pytest.param(7, id="int"),
    pytest.param(None, id="none"),
    pytest.param(b"t-seeded", id="bytes-of-existing-id"),
    pytest.param(["t-seeded"], id="list"),
]

ESCAPED_THREAD_IDS = [
    pytest.param("{a}", id="hash-tag-braces"),
    pytest.param("a}b", id="closing-brace"),
    pytest.param("a{b", id="opening-brace"),
    pytest.param("}{t-seeded}", id="brace-naming-another-tag"),
    pytest.param("t-seeded}:msgs", id="key-suffix-injection"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("../t-seeded", id="path-traversal"),
    pytest.param("..", id="dot-dot"),
    pytest.param(".", id="dot"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param(" ", id="space"),
    pytest.param("org/team/chat 1", id="inner-space-and-slashes"),
    pytest.param("t-seeded ", id="trailing-space"),
    pytest.param("user@example.com", id="email"),
    pytest.param("%74-seeded", id="percent-escape-of-seeded"),
    pytest.param("t-seeded%", id="stray-percent"),
    pytest.param("=" + "0" * 64, id="looks-like-a-digest-name"),
    pytest.param("t-se\u0435ded", id="cyrillic-ie-lookalike"),
    pytest.param("\uff54\uff48\uff52\uff45\uff41\uff44", id="fullwidth"),
    pytest.param("\u212a", id="kelvin-sign"),
    pytest.param("a\u200bb", id="zero-width-space"),
    pytest.param("\ufeffa", id="byte-order-mark"),
    pytest.param("a\u202eb", id="rtl-override"),
    pytest.param("a\u00a0b", id="no-break-space"),
    pytest.param("\U0001f468\u200d\U0001f469\u200d\U0001f467", id="emoji-zwj-family"),
    pytest.param("a*b?[c]", id="glob-characters"),
    pytest.param("a" * 129, id="129-chars"),
    pytest.param("a" * 512, id="512-bytes"),
    pytest.param("\u00e9" * 256, id="512-bytes-in-256-chars"),
    pytest.param("/" * 512, id="512-slashes"),
]
"""Ids of the wider id space that once were refused: each is its own thread, in its
own keys and objects, and can name no other thread's."""

THREAD_ID_OPERATIONS: dict[str, Operation] = {
    "create": lambda hot, tid: hot.create(tid),
    "create-with-state": lambda hot, tid: hot.create(tid, state={"a": 1}),
    "append": lambda hot, tid: hot.append(tid, [msg("n1")]),
    "load": lambda hot, tid: hot.load(tid),
    "tail": lambda hot, tid: hot.tail(tid, 2),
    "info": lambda hot, tid: hot.info(tid),
    "exists": lambda hot, tid: hot.exists(tid),
    "fork-source": lambda hot, tid: hot.fork(tid, NEW),
    "fork-destination": lambda hot, tid: hot.fork(SEEDED, tid),
    "fork-destination-up-to": lambda hot, tid: hot.fork(SEEDED, tid, up_to_id="m2"),
    "save-state": lambda hot, tid: hot.save_state(tid, {"a": 1}),
    "load-state": lambda hot, tid: hot.load_state(tid),
    "truncate-from": lambda hot, tid: hot.truncate_from(tid, "m1"),
    "replace-all": lambda hot, tid: hot.replace_all(tid, [msg("n1")]),
    "replace-all-staged": lambda hot, tid: hot.replace_all(
        tid, [msg("n1"), msg("n2")], chunk_size=1
    ),
    "put-record": lambda hot, tid: hot.put_record(tid, msg("n1"), first=True),
    "fork-transform": lambda hot, tid: hot.fork(tid, NEW, transform=lambda records: records),
    "delete": lambda hot, tid: hot.delete(tid),
    "acquire-lease": lambda hot, tid: hot.acquire_lease(tid, "worker-1", 10_000),
    "release-lease": lambda hot, tid: hot.release_lease(tid, "worker-1"),
}


@pytest.mark.parametrize("operation", THREAD_ID_OPERATIONS.values(), ids=THREAD_ID_OPERATIONS)
@pytest.mark.parametrize("thread_id", HOSTILE_THREAD_IDS)
def test_hostile_thread_id_is_refused_before_any_write(
    seeded: HotStore, redis_client: redis.Redis, operation: Operation, thread_id: object
) -> None:
    assert_refused(seeded, redis_client, lambda: operation(seeded, thread_id), InvalidThreadId)


INDEX_PREFIXES = (b"at:activity:{", b"at:turns:{")


@pytest.mark.parametrize("operation", THREAD_ID_OPERATIONS.values(), ids=THREAD_ID_OPERATIONS)
@pytest.mark.parametrize("thread_id", ESCAPED_THREAD_IDS)
def test_escaped_thread_id_writes_only_its_own_keys(
    seeded: HotStore, redis_client: redis.Redis, operation: Operation, thread_id: str
) -> None:
    """Whatever the operation does with an exotic id (it exists, with one message),
    every key it changes is under that id's own hash tag or an index shard."""
    seeded.create(thread_id)
    seeded.append(thread_id, [msg("x1")])
    before = redis_contents(redis_client)
    try:
        operation(seeded, thread_id)
    except InvalidThreadId:
        raise
    except AgentThreadsError:
        pass  # ThreadExists, ListRewritten...: refused for a reason of its own
    after = redis_contents(redis_client)
    own = f"at:{{{encode_thread_id(thread_id)}}}:".encode()
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    fork_target = {k for k in changed if k.startswith(b"at:{t-new}:")}
    assert {k for k in changed if not k.startswith((own, *INDEX_PREFIXES))} <= fork_target
    assert seeded.load(SEEDED) == SEED_MESSAGES
    assert seeded.load_state(SEEDED) == SEED_STATE
    assert seeded.version(SEEDED) == 3
    assert KeyLayout("at").thread_id_of_meta(own + b"meta") == thread_id


def test_fork_onto_itself_is_refused(seeded: HotStore, redis_client: redis.Redis) -> None:
    assert_refused(
        seeded,
        redis_client,
        lambda: seeded.fork(SEEDED, SEEDED),
        InvalidThreadId,
        match=r"cannot fork thread 't-seeded' onto itself",
    )


# -- hostile messages: shape and id --------------------------------------------

HOSTILE_MESSAGES = [
    pytest.param({"body": "x"}, id="missing-id"),
    pytest.param({"id": "n-bad"}, id="missing-body"),
    pytest.param({"id": "n-bad", "body": "x", "role": "user"}, id="extra-key"),
    pytest.param({"id": "n-bad", "body": "x", 1: "y"}, id="extra-non-str-key"),
    pytest.param({"id": 5, "body": "x"}, id="id-int"),
    pytest.param({"id": None, "body": "x"}, id="id-none"),
    pytest.param({"id": ["n-bad"], "body": "x"}, id="id-list"),
    pytest.param({"id": b"n-bad", "body": "x"}, id="id-bytes"),
    pytest.param({"id": True, "body": "x"}, id="id-bool"),
    pytest.param({"id": "", "body": "x"}, id="id-empty"),
    pytest.param({"id": " ", "body": "x"}, id="id-space"),
    pytest.param({"id": "n bad", "body": "x"}, id="id-inner-space"),
    pytest.param({"id": "n\tbad", "body": "x"}, id="id-tab"),
    pytest.param({"id": "n\nbad", "body": "x"}, id="id-newline"),
    pytest.param({"id": "m1\n", "body": "x"}, id="id-existing-plus-newline"),
    pytest.param({"id": "x" * 257, "body": "x"}, id="id-257-chars"),
    pytest.param({"id": "n\u200bbad", "body": "x"}, id="id-zero-width-space"),
    pytest.param({"id": "n\u200dbad", "body": "x"}, id="id-zero-width-joiner"),
    pytest.param({"id": "\ufeffn", "body": "x"}, id="id-byte-order-mark"),
    pytest.param({"id": "n\u202ebad", "body": "x"}, id="id-rtl-override"),
    pytest.param({"id": "n\u00a0bad", "body": "x"}, id="id-no-break-space"),
    pytest.param({"id": "n\u2028bad", "body": "x"}, id="id-line-separator"),
    pytest.param({"id": "n\x00bad", "body": "x"}, id="id-nul"),
    pytest.param({"id": "n\x1bbad", "body": "x"}, id="id-escape-control"),
    pytest.param({"id": "n\x7fbad", "body": "x"}, id="id-del-control"),
    pytest.param({"id": "\ud800", "body": "x"}, id="id-lone-surrogate"),
    pytest.param("n-bad", id="message-is-str"),
    pytest.param(["n-bad", "x"], id="message-is-list"),
    pytest.param(("n-bad", "x"), id="message-is-tuple"),
    pytest.param(None, id="message-is-none"),
    pytest.param(5, id="message-is-int"),
]

BATCH_OPERATIONS: dict[str, Operation] = {
    "append": lambda hot, batch: hot.append(SEEDED, batch),
    "replace-all": lambda hot, batch: hot.replace_all(SEEDED, batch),
}


@pytest.mark.parametrize("operation", BATCH_OPERATIONS.values(), ids=BATCH_OPERATIONS)
@pytest.mark.parametrize("message", HOSTILE_MESSAGES)
def test_hostile_message_refuses_its_whole_batch(
    seeded: HotStore, redis_client: redis.Redis, operation: Operation, message: object
) -> None:
    batch = [msg("n1"), message]
    assert_refused(seeded, redis_client, lambda: operation(seeded, batch), InvalidMessage)


# -- hostile bodies ------------------------------------------------------------

HOSTILE_BODIES = [
    pytest.param({1, 2}, id="set"),
    pytest.param(frozenset({"a"}), id="frozenset"),
    pytest.param(b"bytes", id="bytes"),
    pytest.param(bytearray(b"bytes"), id="bytearray"),
    pytest.param(object(), id="object"),
    pytest.param(Opaque(), id="custom-class"),
    pytest.param(Opaque, id="a-class"),
    pytest.param(1j, id="complex"),
    pytest.param(Decimal("1.5"), id="decimal"),
    pytest.param(range(3), id="range"),
    pytest.param(len, id="function"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="infinity"),
    pytest.param(float("-inf"), id="minus-infinity"),
    pytest.param({"content": [1, 2, float("nan")]}, id="nan-nested"),
    pytest.param({1: "x"}, id="int-key"),
    pytest.param({(1, 2): "x"}, id="tuple-key"),
    pytest.param({None: "x"}, id="none-key"),
    pytest.param({"ok": {True: "x"}}, id="bool-key-nested"),
    pytest.param({"content": {"a", "b"}}, id="set-nested"),
    pytest.param(nested_list(10_000), id="list-10000-deep"),
    pytest.param(nested_dict(10_000), id="dict-10000-deep"),
    pytest.param(nested_list(129), id="list-one-over-max-depth"),
    pytest.param(nested_dict(129), id="dict-one-over-max-depth"),
    pytest.param(self_referencing_list(), id="self-referencing-list"),
    pytest.param("\ud800", id="lone-surrogate"),
    pytest.param({"content": "ok \udfff"}, id="lone-low-surrogate-nested"),
    pytest.param({"\ud800": "x"}, id="lone-surrogate-key"),
    pytest.param("x" * MIB, id="over-1-mib"),
    pytest.param(["\u00e9" * (MIB // 2)], id="over-1-mib-in-utf8-bytes"),
    pytest.param(types.MappingProxyType({"role": "user"}), id="mapping-proxy"),
    pytest.param(collections.UserDict({"role": "user"}), id="user-dict"),
    pytest.param({"n": 10**5000}, id="int-over-4300-digits"),
]


@pytest.mark.parametrize("operation", BATCH_OPERATIONS.values(), ids=BATCH_OPERATIONS)
@pytest.mark.parametrize("body", HOSTILE_BODIES)
def test_hostile_body_refuses_its_whole_batch(
    seeded: HotStore, redis_client: redis.Redis, operation: Operation, body: object
) -> None:
    batch = [msg("n1"), {"id": "n-bad", "body": body}]
    assert_refused(seeded, redis_client, lambda: operation(seeded, batch), InvalidMessage)


def test_body_at_exactly_max_depth_is_accepted_and_truncatable(seeded: HotStore) -> None:
    # The boundary is not off by one: 128 levels are fine, 129 are refused above.
    seeded.append(SEEDED, [{"id": "deep-list", "body": nested_list(128)}])
    seeded.append(SEEDED, [{"id": "deep-dict", "body": nested_dict(128)}])
    assert seeded.load(SEEDED, -2) == [
        {"id": "deep-list", "body": nested_list(128)},
        {"id": "deep-dict", "body": nested_dict(128)},
    ]
    assert seeded.truncate_from(SEEDED, "deep-list").removed_ids == ("deep-list", "deep-dict")


# -- size and batch limits -----------------------------------------------------

SMALL = Limits(max_message_bytes=100, max_batch=3, max_state_bytes=50)
EMPTY_RECORD_BYTES = len(b'{"id":"n1","body":""}')


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param([{"id": "n1", "body": "x" * 80}], id="ascii-one-byte-over"),
        pytest.param([{"id": "n1", "body": "\u00e9" * 40}], id="utf8-counts-bytes-not-chars"),
        pytest.param([{"id": "n1", "body": ["x"] * 30}], id="list-body-over"),
        pytest.param([msg("n1"), msg("n2"), {"id": "n3", "body": "x" * 200}], id="last-over"),
    ],
)
def test_message_over_configured_byte_limit_is_refused(
    seeded: HotStore, redis_client: redis.Redis, batch: list[Any]
) -> None:
    small = HotStore(redis_client, limits=SMALL)
    assert_refused(
        seeded,
        redis_client,
        lambda: small.append(SEEDED, batch),
        InvalidMessage,
        match=r"bytes encoded; the limit is 100",
    )


def test_message_of_exactly_the_byte_limit_is_accepted(
    seeded: HotStore, redis_client: redis.Redis
) -> None:
    small = HotStore(redis_client, limits=SMALL)
    body = "x" * (100 - EMPTY_RECORD_BYTES)
    assert small.append(SEEDED, [{"id": "n1", "body": body}]).appended_ids == ("n1",)


def test_message_over_one_mib_is_refused_with_default_limits(
    seeded: HotStore, redis_client: redis.Redis
) -> None:
    overhead = len(b'{"id":"big","body":""}')
    assert_refused(
        seeded,
        redis_client,
        lambda: seeded.append(SEEDED, [{"id": "big", "body": "x" * (MIB + 1)}]),
        InvalidMessage,
        match=rf"message 'big' is {MIB + 1 + overhead} bytes encoded; the limit is {MIB}",
    )


def test_append_over_default_max_batch_is_refused(
    seeded: HotStore, redis_client: redis.Redis
) -> None:
    """``replace_all`` takes a whole thread of any length (see test_hot_store.py)."""
    batch = [msg(f"n{i}") for i in range(1001)]
    assert_refused(
        seeded,
        redis_client,
        lambda: seeded.append(SEEDED, batch),
        InvalidMessage,
        match=r"batch of 1001 messages is over the limit of 1000",
    )


def test_batch_over_configured_max_batch_is_refused(
    seeded: HotStore, redis_client: redis.Redis
) -> None:
    small = HotStore(redis_client, limits=SMALL)
    assert_refused(
        seeded,
        redis_client,
        lambda: small.append(SEEDED, [msg("n1"), msg("n2"), msg("n3"), msg("n4")]),
        InvalidMessage,
        match=r"batch of 4 messages is over the limit of 3",
    )


LAST_BAD = [
    pytest.param({"id": "n-last", "body": float("nan")}, id="nan-body"),
    pytest.param({"id": "n last", "body": "x"}, id="whitespace-id"),
    pytest.param({"id": "n-last", "body": nested_list(10_000)}, id="deep-body"),
    pytest.param({"id": "n-last", "body": "x" * MIB}, id="oversized-body"),
    pytest.param({"id": "n-last"}, id="missing-body"),
    pytest.param("n-last", id="not-a-mapping"),
]


@pytest.mark.parametrize("operation", BATCH_OPERATIONS.values(), ids=BATCH_OPERATIONS)
@pytest.mark.parametrize("last", LAST_BAD)
@pytest.mark.parametrize("as_generator", [False, True], ids=["list", "generator"])
def test_batch_whose_last_message_is_bad_writes_none_of_it(
    seeded: HotStore,
    redis_client: redis.Redis,
    operation: Operation,
    last: object,
    as_generator: bool,
) -> None:
    good = [msg(f"n{i}") for i in range(10)]
    batch: Any = (m for m in [*good, last]) if as_generator else [*good, last]
    assert_refused(seeded, redis_client, lambda: operation(seeded, batch), InvalidMessage)
    assert not set(redis_client.hkeys(seeded.keys(SEEDED).ids)) & {m["id"].encode() for m in good}


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param("m1", id="str"),
        pytest.param(msg("n1"), id="single-dict"),
        pytest.param(types.MappingProxyType(msg("n1")), id="single-mapping"),
        pytest.param(b"n1", id="bytes"),
        pytest.param(None, id="none"),
        pytest.param(5, id="int"),
        pytest.param(object(), id="object"),
    ],
)
@pytest.mark.parametrize("operation", BATCH_OPERATIONS.values(), ids=BATCH_OPERATIONS)
def test_messages_not_given_as_a_list_are_refused(
    seeded: HotStore, redis_client: redis.Redis, operation: Operation, messages: object
) -> None:
    assert_refused(
        seeded,
        redis_client,
        lambda: operation(seeded, messages),
        InvalidMessage,
        match=r"messages must be a list",
    )


def test_replace_all_with_duplicate_ids_is_refused(
    seeded: HotStore, redis_client: redis.Redis
) -> None:
    assert_refused(
        seeded,
        redis_client,
        lambda: seeded.replace_all(SEEDED, [msg("n1"), msg("n2"), msg("n1", "again")]),
        InvalidMessage,
        match=r"message id 'n1' appears twice",
    )


# -- hostile state -------------------------------------------------------------

HOSTILE_STATES = [
    pytest.param([], id="list"),
    pytest.param([("a", 1)], id="list-of-pairs"),
    pytest.param("{}", id="json-text"),
    pytest.param(b"{}", id="bytes"),
    pytest.param(5, id="int"),
    pytest.param({"a", "b"}, id="set"),
    pytest.param({"x": float("nan")}, id="nan"),
    pytest.param({"x": [float("inf")]}, id="infinity-nested"),
    pytest.param({1: "a"}, id="int-key"),
    pytest.param({(1,): "a"}, id="tuple-key"),
    pytest.param({"x": {1, 2}}, id="set-value"),
    pytest.param({"x": Opaque()}, id="custom-class-value"),
    pytest.param({"x": "\ud800"}, id="lone-surrogate"),
    pytest.param(nested_dict(10_000), id="dict-10000-deep"),
    pytest.param({"x": nested_list(10_000)}, id="list-10000-deep"),
    pytest.param(nested_dict(129), id="one-over-max-depth"),
    pytest.param({"blob": "x" * MIB}, id="over-1-mib"),
    pytest.param({"x": types.MappingProxyType({"a": 1})}, id="nested-mapping-proxy"),
    pytest.param({"n": 10**5000}, id="int-over-4300-digits"),
]


@pytest.mark.parametrize("state", [*HOSTILE_STATES, pytest.param(None, id="none")])
def test_hostile_state_is_refused_by_save_state(
    seeded: HotStore, redis_client: redis.Redis, state: object
) -> None:
    assert_refused(seeded, redis_client, lambda: seeded.save_state(SEEDED, state), InvalidMessage)


@pytest.mark.parametrize("state", HOSTILE_STATES)
def test_hostile_state_refuses_create_and_creates_nothing(
    seeded: HotStore, redis_client: redis.Redis, state: object
) -> None:
    assert_refused(seeded, redis_client, lambda: seeded.create(NEW, state=state), InvalidMessage)
    assert not seeded.exists(NEW)


def test_state_over_configured_byte_limit_is_refused(
    seeded: HotStore, redis_client: redis.Redis
) -> None:
    small = HotStore(redis_client, limits=SMALL)
    assert_refused(
        seeded,
        redis_client,
        lambda: small.save_state(SEEDED, {"blob": "x" * 50}),
        InvalidMessage,
        match=r"state is 61 bytes encoded; the limit is 50",
    )


# -- fork points, truncation points and lease owners ---------------------------

BAD_MESSAGE_IDS = [
    pytest.param("", id="empty"),
    pytest.param("m 1", id="inner-space"),
    pytest.param("m1\n", id="trailing-newline"),
    pytest.param("m\u200b1", id="zero-width-space"),
    pytest.param("m\x001", id="nul"),
    pytest.param("x" * 257, id="257-chars"),
    pytest.param(1, id="int"),
    pytest.param(b"m1", id="bytes"),
]


@pytest.mark.parametrize("up_to_id", BAD_MESSAGE_IDS)
def test_fork_with_malformed_fork_point_is_refused(
    seeded: HotStore, redis_client: redis.Redis, up_to_id: Any
) -> None:
    assert_refused(
        seeded, redis_client, lambda: seeded.fork(SEEDED, NEW, up_to_id=up_to_id), InvalidMessage
    )
    assert not seeded.exists(NEW)


def test_fork_up_to_an_id_not_in_the_source_creates_no_destination(
    seeded: HotStore, redis_client: redis.Redis
) -> None:
    assert_refused(
        seeded,
        redis_client,
        lambda: seeded.fork(SEEDED, NEW, up_to_id="nope"),
        InvalidMessage,
        match=r"message 'nope' is not in thread 't-seeded'",
    )
    assert not seeded.exists(NEW)


@pytest.mark.parametrize("message_id", BAD_MESSAGE_IDS)
def test_truncate_from_malformed_message_id_is_refused(
    seeded: HotStore, redis_client: redis.Redis, message_id: Any
) -> None:
    assert_refused(
        seeded, redis_client, lambda: seeded.truncate_from(SEEDED, message_id), InvalidMessage
    )


BAD_OWNERS = [
    pytest.param(" ", id="space"),
    pytest.param("worker 1", id="inner-space"),
    pytest.param("", id="empty"),
    pytest.param("worker-1\n", id="trailing-newline"),
    pytest.param("\u200b", id="zero-width-space"),
    pytest.param("w" * 257, id="257-chars"),
    pytest.param(5, id="int"),
    pytest.param(None, id="none"),
]


@pytest.mark.parametrize("owner", BAD_OWNERS)
def test_acquire_lease_with_malformed_owner_is_refused(
    seeded: HotStore, redis_client: redis.Redis, owner: Any
) -> None:
    assert_refused(
        seeded,
        redis_client,
        lambda: seeded.acquire_lease(SEEDED, owner, 10_000),
        InvalidMessage,
        match=r"lease owner",
    )


@pytest.mark.parametrize(
    "owner",
    [
        pytest.param(" ", id="space"),
        pytest.param("worker 1", id="inner-space"),
        pytest.param(5, id="int"),
        # "" must not be taken as "no owner": that would bypass another owner's lease.
        pytest.param("", id="empty-must-not-bypass-the-lease"),
    ],
)
def test_append_with_malformed_lease_owner_is_refused(
    seeded: HotStore, redis_client: redis.Redis, owner: Any
) -> None:
    seeded.acquire_lease(SEEDED, "worker-1", 60_000)
    assert_refused(
        seeded,
        redis_client,
        lambda: seeded.append(SEEDED, [msg("n1")], owner=owner),
        InvalidMessage,
        match=r"lease owner",
    )


# -- error messages say what was wrong -----------------------------------------

USEFUL_ERRORS: dict[str, tuple[Operation, type[AgentThreadsError], str]] = {
    "thread-id-named": (
        lambda hot, _: hot.append("a\nb", [msg("n1")]),
        InvalidThreadId,
        r"invalid thread id 'a\\nb': control characters \(newline, tab, NUL, DEL, C1\)",
    ),
    "thread-id-length-limit": (
        lambda hot, _: hot.create("\u00e9" * 257),
        InvalidThreadId,
        r"thread id must be 1\.\.512 UTF-8 bytes, got 514",
    ),
    "thread-id-surrogate": (
        lambda hot, _: hot.create("a\udc00"),
        InvalidThreadId,
        r"is not valid Unicode \(a lone surrogate\)",
    ),
    "thread-id-type": (
        lambda hot, _: hot.load(b"t-seeded"),
        InvalidThreadId,
        r"thread id must be a string, got bytes",
    ),
    "message-id-length-limit": (
        lambda hot, _: hot.append(SEEDED, [{"id": "x" * 257, "body": 1}]),
        InvalidMessage,
        r"message id must be 1\.\.256 characters, got 257",
    ),
    "message-id-named": (
        lambda hot, _: hot.append(SEEDED, [{"id": "n\u200bbad", "body": 1}]),
        InvalidMessage,
        r"invalid message id 'n\\u200bbad'",
    ),
    "extra-field-named": (
        lambda hot, _: hot.append(SEEDED, [{"id": "n-bad", "body": 1, "role": "user"}]),
        InvalidMessage,
        r"message 'n-bad' has unknown fields \['role'\]; put them inside \"body\"",
    ),
    "missing-body-names-id": (
        lambda hot, _: hot.append(SEEDED, [{"id": "n-bad"}]),
        InvalidMessage,
        r"message 'n-bad' has no \"body\"",
    ),
    "nan-names-message": (
        lambda hot, _: hot.append(SEEDED, [msg("n1"), {"id": "n-bad", "body": float("nan")}]),
        InvalidMessage,
        r"message 'n-bad': nan is not valid JSON",
    ),
    "depth-limit": (
        lambda hot, _: hot.append(SEEDED, [{"id": "n-bad", "body": nested_dict(10_000)}]),
        InvalidMessage,
        r"message 'n-bad': nested deeper than 128 levels",
    ),
    "non-json-type-named": (
        lambda hot, _: hot.append(SEEDED, [{"id": "n-bad", "body": {"x": {1, 2}}}]),
        InvalidMessage,
        r"message 'n-bad': set is not a JSON type",
    ),
    "state-size-limit": (
        lambda hot, _: hot.save_state(SEEDED, {"blob": "x" * MIB}),
        InvalidMessage,
        rf"the limit is {MIB}",
    ),
    "state-type": (
        lambda hot, _: hot.save_state(SEEDED, ["a"]),
        InvalidMessage,
        r"state must be a JSON object \(mapping\), got list",
    ),
}


@pytest.mark.parametrize("case", USEFUL_ERRORS.values(), ids=USEFUL_ERRORS)
def test_error_message_names_the_offending_input_or_limit(
    seeded: HotStore,
    redis_client: redis.Redis,
    case: tuple[Operation, type[AgentThreadsError], str],
) -> None:
    operation, error, pattern = case
    assert_refused(seeded, redis_client, lambda: operation(seeded, None), error, match=pattern)


# -- unknown threads -----------------------------------------------------------

UNKNOWN_THREAD_OPERATIONS: dict[str, Operation] = {
    "append": lambda hot, tid: hot.append(tid, [msg("n1")]),
    "load": lambda hot, tid: hot.load(tid),
    "tail": lambda hot, tid: hot.tail(tid, 2),
    "tail-zero": lambda hot, tid: hot.tail(tid, 0),
    "info": lambda hot, tid: hot.info(tid),
    "length": lambda hot, tid: hot.length(tid),
    "version": lambda hot, tid: hot.version(tid),
    "save-state": lambda hot, tid: hot.save_state(tid, {"a": 1}),
    "load-state": lambda hot, tid: hot.load_state(tid),
    "truncate-from": lambda hot, tid: hot.truncate_from(tid, "m1"),
    "replace-all": lambda hot, tid: hot.replace_all(tid, [msg("n1")]),
    "replace-all-staged": lambda hot, tid: hot.replace_all(
        tid, [msg("n1"), msg("n2")], chunk_size=1
    ),
    "put-record": lambda hot, tid: hot.put_record(tid, msg("n1"), first=True),
    "acquire-lease": lambda hot, tid: hot.acquire_lease(tid, "worker-1", 10_000),
    "fork-source": lambda hot, tid: hot.fork(tid, NEW),
    "fork-source-transform": lambda hot, tid: hot.fork(tid, NEW, transform=lambda rs: rs),
    "fork-source-up-to": lambda hot, tid: hot.fork(tid, NEW, up_to_id="m1"),
}


@pytest.mark.parametrize(
    "operation", UNKNOWN_THREAD_OPERATIONS.values(), ids=UNKNOWN_THREAD_OPERATIONS
)
def test_unknown_thread_raises_thread_not_found_and_creates_nothing(
    seeded: HotStore, redis_client: redis.Redis, operation: Operation
) -> None:
    error = assert_refused(
        seeded,
        redis_client,
        lambda: operation(seeded, MISSING),
        ThreadNotFound,
        match=r"thread 't-missing' not found",
    )
    assert isinstance(error, ThreadNotFound)
    assert error.thread_id == MISSING
    assert not seeded.exists(MISSING)
    assert not seeded.exists(NEW)


# -- property tests: the validators accept exactly the documented formats ------

THREAD_ID_ALPHABET = string.ascii_letters + string.digits + "._:-"


def has_documented_thread_id_format(text: str) -> bool:
    """docs/architecture.md (thread ids): 1-512 UTF-8 bytes, no Cc, no lone surrogate."""
    categories = {unicodedata.category(ch) for ch in text}
    return not categories & {"Cc", "Cs"} and 1 <= len(text.encode("utf-8", "surrogatepass")) <= 512


def has_documented_message_id_format(text: str) -> bool:
    """DESIGN.md section 3: 1-256 printable chars, no whitespace.

    Written independently of the implementation: a character is refused when its
    Unicode category is Other (control, format, surrogate, private use,
    unassigned) or Separator (space, line, paragraph), which covers every
    whitespace character too.
    """
    return 1 <= len(text) <= 256 and all(unicodedata.category(ch)[0] not in "CZ" for ch in text)


# Arbitrary text alone almost never looks like an id; mix in the id alphabet,
# near-miss characters, lone surrogates and lengths around the limits.
hostile_chars = st.sampled_from("{}/\\ \t\n\r\x00\x7f\u0430\u200b\u202e\u00a0\uff41\u212a*")
surrogates = st.characters(categories=["Cs"])
thread_id_candidates = st.one_of(
    st.text(),
    st.text(alphabet=THREAD_ID_ALPHABET, max_size=140),
    st.text(alphabet=THREAD_ID_ALPHABET, min_size=508, max_size=516),
    st.text(alphabet="\u00e9\u4e2d\U0001f600", min_size=126, max_size=260),
    st.text(
        alphabet=st.one_of(st.sampled_from(THREAD_ID_ALPHABET), hostile_chars, surrogates),
        max_size=40,
    ),
)
message_id_candidates = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(), min_size=250, max_size=260),
    st.text(alphabet=st.one_of(st.characters(), hostile_chars, surrogates), max_size=20),
    st.text(alphabet=string.printable, max_size=30),
)
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(candidate=thread_id_candidates)
def test_thread_id_is_accepted_exactly_when_it_has_the_documented_format(
    hot: HotStore, redis_client: redis.Redis, candidate: str
) -> None:
    if has_documented_thread_id_format(candidate):
        assert validate_thread_id(candidate) == candidate
        before = set(redis_client.keys("*"))
        hot.create(candidate)
        assert hot.exists(candidate)
        own = hot.keys(candidate)
        added = {k.decode() for k in set(redis_client.keys("*")) - before}
        assert added
        assert added <= {own.meta, own.msgs, own.ids, own.state} | set(hot.layout.activity_shards)
        assert hot.layout.thread_id_of_meta(own.meta) == candidate
        assert hot.delete(candidate)
        return
    before = redis_contents(redis_client)
    with pytest.raises(InvalidThreadId):
        validate_thread_id(candidate)
    with pytest.raises(InvalidThreadId):
        hot.create(candidate)
    assert redis_contents(redis_client) == before


@pytest.fixture
def fuzz_thread(hot: HotStore) -> HotStore:
    hot.create("t-fuzz")
    return hot


@FUZZ
@given(candidate=message_id_candidates)
def test_message_id_is_accepted_exactly_when_it_has_the_documented_format(
    fuzz_thread: HotStore, redis_client: redis.Redis, candidate: str
) -> None:
    if has_documented_message_id_format(candidate):
        assert validate_message_id(candidate) == candidate
        result = fuzz_thread.append("t-fuzz", [{"id": candidate, "body": None}])
        assert candidate in result.appended_ids + result.skipped_ids
        assert {"id": candidate, "body": None} in fuzz_thread.load("t-fuzz")
        return
    before = redis_contents(redis_client)
    with pytest.raises(InvalidMessage):
        validate_message_id(candidate)
    with pytest.raises(InvalidMessage):
        fuzz_thread.append("t-fuzz", [{"id": candidate, "body": None}])
    assert redis_contents(redis_client) == before


def test_state_given_as_any_mapping_is_stored_as_an_object(hot: HotStore) -> None:
    hot.create("t-proxy", state=types.MappingProxyType({"a": 1}))
    assert hot.load_state("t-proxy") == {"a": 1}


# -- property test: a body is stored exactly when it is plain JSON ----------------------


def is_plain_json(value: object, max_depth: int = 128) -> bool:
    """Written independently of storage.records: exact JSON types (lists may be
    tuples), str keys, finite floats, text encodable as UTF-8 (no lone surrogates),
    ints Python can print (<= 4300 digits), at most ``max_depth`` nested containers
    (DESIGN.md / docs: the default limit is 128)."""

    def text_ok(text: str) -> bool:
        return not any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)

    def check(item: object, depth: int) -> bool:
        if item is None or isinstance(item, bool):
            return True
        if type(item) is int:
            return abs(item) < 10**4300  # int -> str is capped at 4300 digits
        if type(item) is float:
            return math.isfinite(item)
        if type(item) is str:
            return text_ok(item)
        if type(item) in (list, tuple, dict):
            if depth > max_depth:
                return False
            if type(item) is dict:
                pairs = item.items()  # type: ignore[attr-defined]
                return all(type(k) is str and text_ok(k) and check(v, depth + 1) for k, v in pairs)
            return all(check(child, depth + 1) for child in item)  # type: ignore[attr-defined]
        return False

    return check(value, 1)


def deeply(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
)
hostile_scalars = st.one_of(
    st.sets(st.integers(0, 3), max_size=2),
    st.frozensets(st.text(max_size=2), max_size=2),
    st.binary(max_size=3),
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
    st.builds(Decimal, st.integers(0, 9)),
    st.builds(Opaque),
    st.just(object()),
    st.integers(4297, 4302).map(lambda digits: -(10**digits)),  # around 4300 digits
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=2),
)
body_keys = st.one_of(
    st.text(max_size=4),
    st.integers(0, 3),
    st.none(),
    st.booleans(),
    st.tuples(st.integers(0, 1)),
    st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=1),
)
leaves = st.one_of(json_scalars, json_scalars, hostile_scalars)
fuzz_bodies = st.one_of(
    st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.tuples(children, children),
            st.dictionaries(body_keys, children, max_size=3),
        ),
        max_leaves=8,
    ),
    # around the depth limit: 126..130 nested lists
    st.builds(deeply, st.integers(126, 130), st.one_of(json_scalars, st.just([]))),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=fuzz_bodies)
def test_body_is_stored_exactly_when_it_is_plain_json(
    fuzz_thread: HotStore, redis_client: redis.Redis, body: object
) -> None:
    before = redis_contents(redis_client)
    event("stored" if is_plain_json(body) else "refused")
    if is_plain_json(body):
        message_id = f"ok-{len(before)}-{fuzz_thread.length('t-fuzz')}"
        fuzz_thread.append("t-fuzz", [{"id": message_id, "body": body}])
        stored = fuzz_thread.tail("t-fuzz", 1)[0]
        assert stored == {"id": message_id, "body": json.loads(json.dumps(body))}
        return
    with pytest.raises(InvalidMessage):
        fuzz_thread.append("t-fuzz", [msg("n-good"), {"id": "n-bad", "body": body}])
    with pytest.raises(InvalidMessage):
        fuzz_thread.replace_all("t-fuzz", [{"id": "n-bad", "body": body}])
    with pytest.raises(InvalidMessage):
        fuzz_thread.save_state("t-fuzz", {"x": body})
    assert redis_contents(redis_client) == before


# -- the tiered API refuses hostile thread ids before touching either tier ---------------

TIERED_OPERATIONS: dict[str, Callable[[Threads, Any], object]] = {
    "open-new": lambda threads, tid: threads.open(tid, "new"),
    "open-continue": lambda threads, tid: threads.open(tid, "continue"),
    "open-fork-destination": lambda threads, tid: threads.open(tid, "fork", source=SEEDED),
    "open-fork-source": lambda threads, tid: threads.open(NEW, "fork", source=tid),
    "append": lambda threads, tid: threads.append(tid, [msg("n1")]),
    "load": lambda threads, tid: threads.load(tid),
    "flush": lambda threads, tid: threads.flush(tid),
    "hydrate": lambda threads, tid: threads.hydrate(tid),
    "delete": lambda threads, tid: threads.delete(tid),
}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


TIERED_HOSTILE = [
    pytest.param(operation, *case.values, id=f"{case.id}-{name}")
    for case in HOSTILE_THREAD_IDS
    for name, operation in TIERED_OPERATIONS.items()
    # source=None means "no source" (a ValueError), not a hostile id
    if not (case.values[0] is None and name == "open-fork-source")
]


@pytest.mark.parametrize(("operation", "thread_id"), TIERED_HOSTILE)
def test_hostile_thread_id_touches_neither_tier(
    seeded: HotStore,
    redis_client: redis.Redis,
    tmp_path: Path,
    operation: Callable[[Threads, Any], object],
    thread_id: object,
) -> None:
    """No file or directory appears in (or, through ``..``, next to) the cold root."""
    root = tmp_path / "cold"
    threads = Threads(seeded, FileColdStore(root))
    seeded_archive = Threads(seeded, threads.cold)
    seeded_archive.flush(SEEDED, evict=False)
    on_disk = files_under(tmp_path)
    assert_refused(seeded, redis_client, lambda: operation(threads, thread_id), InvalidThreadId)
    assert files_under(tmp_path) == on_disk


@pytest.mark.parametrize("thread_id", ESCAPED_THREAD_IDS)
def test_escaped_thread_id_round_trips_through_the_cold_tier(
    seeded: HotStore, cold: ColdStore, tmp_path: Path, thread_id: str
) -> None:
    """Flushed, evicted, listed under its own id, hydrated back and deleted, with the
    seeded thread's archive untouched; files stay under the store's prefix with
    names a file system takes, and S3 keys stay within S3's 1,024 bytes."""
    threads = Threads(seeded, cold)
    threads.flush(SEEDED, evict=False)
    threads.open(thread_id, "new", state={"who": thread_id})
    threads.append(thread_id, [msg("x1"), msg("x2")])
    threads.flush(thread_id)
    assert not seeded.exists(thread_id)
    for prefix in ("", thread_id[:1], thread_id):
        listed = sorted(o.thread_id for o in cold.list(prefix))
        assert listed == sorted(t for t in {SEEDED, thread_id} if t.startswith(prefix))
    if isinstance(cold, FileColdStore):
        base = (tmp_path / "cold" / "threads").resolve()
        for path in (tmp_path / "cold").rglob("*"):
            assert path.resolve().is_relative_to(base)
            assert len(path.name.encode()) <= 255
    else:
        keys = cold.client.list_objects_v2(Bucket=cold.bucket)["Contents"]
        assert all(len(k["Key"].encode()) <= 1024 for k in keys)
    threads.hydrate(thread_id)
    assert threads.load(thread_id) == [msg("x1"), msg("x2")]
    assert threads.load_state(thread_id) == {"who": thread_id}
    assert threads.delete(thread_id)
    assert cold.read(thread_id) is None
    assert [o.thread_id for o in cold.list()] == [SEEDED]
    found = cold.read(SEEDED)
    assert found is not None
    assert found[0].ids == ("m1", "m2", "m3")


# -- the same hostile input through the Celery task threads.append -------------------------


@pytest.fixture
def worker_store(celery_stack: Celery, redis_client: redis.Redis) -> Threads:
    """The embedded worker's own storage, with the seeded thread; an empty bucket."""
    store = worker_threads()
    assert isinstance(store.cold, S3ColdStore)
    listed = store.cold.client.list_objects_v2(Bucket=store.cold.bucket).get("Contents", [])
    for item in listed:
        store.cold.client.delete_object(Bucket=store.cold.bucket, Key=item["Key"])
    store.open(SEEDED, "new", state=SEED_STATE)
    store.append(SEEDED, SEED_MESSAGES)
    return store


CELERY_HOSTILE: dict[str, tuple[Any, Any, type[AgentThreadsError]]] = {
    "thread-id-newline": ("t-seeded\n", [msg("n1")], InvalidThreadId),
    "thread-id-c1-control": ("t-seeded\x9b", [msg("n1")], InvalidThreadId),
    "thread-id-513-bytes": ("a" * 513, [msg("n1")], InvalidThreadId),
    "thread-id-nul": ("t-seeded\x00", [msg("n1")], InvalidThreadId),
    "thread-id-10000-chars": ("a" * 10_000, [msg("n1")], InvalidThreadId),
    "thread-id-int": (7, [msg("n1")], InvalidThreadId),
    "message-id-missing": (SEEDED, [msg("n1"), {"body": "x"}], InvalidMessage),
    "message-id-int": (SEEDED, [msg("n1"), {"id": 5, "body": "x"}], InvalidMessage),
    "message-id-zero-width": (SEEDED, [{"id": "n\u200b1", "body": "x"}], InvalidMessage),
    "body-nan": (SEEDED, [msg("n1"), {"id": "n-bad", "body": float("nan")}], InvalidMessage),
    "body-129-deep": (SEEDED, [{"id": "n-bad", "body": nested_dict(129)}], InvalidMessage),
    "body-over-1-mib": (SEEDED, [{"id": "n-bad", "body": "x" * MIB}], InvalidMessage),
    "messages-not-a-list": (SEEDED, {"id": "n1", "body": "x"}, InvalidMessage),
}


@pytest.mark.parametrize("case", CELERY_HOSTILE.values(), ids=CELERY_HOSTILE)
def test_hostile_append_through_celery_fails_typed_and_writes_nothing(
    worker_store: Threads,
    redis_client: redis.Redis,
    celery_stack: Celery,
    case: tuple[Any, Any, type[AgentThreadsError]],
) -> None:
    thread_id, messages, error = case
    cold = worker_store.cold
    assert isinstance(cold, S3ColdStore)
    before = redis_contents(redis_client)
    objects_before = cold.client.list_objects_v2(Bucket=cold.bucket).get("KeyCount")

    sent = celery_stack.signature(
        "threads.append", kwargs={"thread_id": thread_id, "messages": messages}
    ).apply_async()
    with pytest.raises(error):
        sent.get(timeout=60)

    assert sent.retries == 0, "a permanent error must not be retried"
    assert redis_contents(redis_client) == before
    assert cold.client.list_objects_v2(Bucket=cold.bucket).get("KeyCount") == objects_before
    assert worker_store.load(SEEDED) == SEED_MESSAGES
