"""The key layout: hash-tagged, one Cluster slot per thread, names only from storage/keys.py."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from storage import HotStore, InvalidThreadId, KeyLayout
from tests.conftest import msg


def test_keys_follow_documented_layout() -> None:
    keys = KeyLayout("at").thread("chat-42")
    assert keys.msgs == "at:{chat-42}:msgs"
    assert keys.ids == "at:{chat-42}:ids"
    assert keys.meta == "at:{chat-42}:meta"
    assert keys.state == "at:{chat-42}:state"
    assert keys.lease == "at:{chat-42}:lease"


@pytest.mark.parametrize("thread_id", ["t", "chat-42", "user:7:session.3", "A_b-C:d.e", "x" * 128])
def test_all_keys_of_a_thread_share_one_cluster_slot(thread_id: str) -> None:
    keys = KeyLayout("tenant-a").thread(thread_id)
    slots = {key_slot(k.encode()) for k in keys.data}
    assert slots == {key_slot(thread_id.encode())}


def test_every_key_a_thread_writes_is_in_its_slot(hot: HotStore, redis_client: redis.Redis) -> None:
    hot.create("t1", state={"a": 1})
    hot.append("t1", [msg("m1")])
    hot.acquire_lease("t1", "turn", 10_000)
    hot.fork("t1", "t2")
    for thread_id in ("t1", "t2"):
        written = redis_client.keys(f"at:{{{thread_id}}}:*")
        assert len(written) >= 4
        assert {key_slot(k) for k in written} == {key_slot(thread_id.encode())}
    assert len(redis_client.keys("*")) == len(redis_client.keys("at:{t[12]}:*"))


@pytest.mark.parametrize("namespace", ["", "{x}", "a b", ".hidden", ":x", "n" * 65, "a/b"])
def test_invalid_namespace_is_refused(namespace: str) -> None:
    with pytest.raises(InvalidThreadId, match="namespace"):
        KeyLayout(namespace)


def test_every_error_rebuilds_from_its_args_as_celery_does() -> None:
    from storage import errors

    samples = [
        errors.ThreadNotFound("t1"),
        errors.ThreadExists("t1", "it is hot"),
        errors.LeaseHeld("t1", "turn-1", 500),
        errors.LeaseLost("t1", "turn-2", None),
        errors.InvalidMessage("bad"),
        errors.ColdStoreUnavailable("down"),
    ]
    for error in samples:
        rebuilt = type(error)(*error.args)
        assert str(rebuilt) == str(error)
        assert "t1" in str(error) or isinstance(
            error, errors.InvalidMessage | errors.ColdStoreError
        )
