"""HotStore against a real redis-server: every operation and its error paths."""

from __future__ import annotations

import time

import pytest
import redis

from storage import (
    HotStore,
    InvalidMessage,
    LeaseHeld,
    LeaseLost,
    ThreadExists,
    ThreadNotFound,
    VersionConflict,
)
from storage.records import Message
from tests.conftest import age_expiry, msg, redis_contents


def ids_of(records: list[dict[str, object]] | list[object]) -> list[object]:
    return [r["id"] for r in records]  # type: ignore[index]


# -- create ------------------------------------------------------------------


def test_create_makes_empty_thread_with_version_one(hot: HotStore) -> None:
    assert hot.create("t1") is True
    info = hot.info("t1")
    assert (info.length, info.version, info.parent) == (0, 1, None)
    assert hot.load("t1") == []
    assert hot.load_state("t1") == {}


def test_create_with_state_stores_it(hot: HotStore) -> None:
    hot.create("t1", state={"step": 1, "tasks": ["a"]})
    assert hot.load_state("t1") == {"step": 1, "tasks": ["a"]}


def test_create_twice_never_deletes_or_overwrites(hot: HotStore) -> None:
    hot.create("t1", state={"keep": True})
    hot.append("t1", [msg("m1"), msg("m2")])
    assert hot.create("t1", state={"keep": False}) is False
    assert ids_of(hot.load("t1")) == ["m1", "m2"]
    assert hot.load_state("t1") == {"keep": True}
    assert hot.version("t1") == 2


# -- append ------------------------------------------------------------------


def test_append_dedups_within_one_batch(hot: HotStore) -> None:
    hot.create("t1")
    result = hot.append("t1", [msg("m1"), msg("m2"), msg("m1", "other text")])
    assert result.appended_ids == ("m1", "m2")
    assert result.skipped_ids == ("m1",)
    assert result.length == 2
    assert hot.load("t1") == [msg("m1"), msg("m2")]


def test_reappend_appends_only_new_ids(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("m2")])
    result = hot.append("t1", [msg("m2"), msg("m3")])
    assert result.appended_ids == ("m3",)
    assert result.skipped_ids == ("m2",)
    assert ids_of(hot.load("t1")) == ["m1", "m2", "m3"]


def test_redelivered_batch_changes_nothing_and_keeps_version(hot: HotStore) -> None:
    hot.create("t1")
    first = hot.append("t1", [msg("m1"), msg("m2")])
    again = hot.append("t1", [msg("m1"), msg("m2")])
    assert again.appended_ids == ()
    assert again.skipped_ids == ("m1", "m2")
    assert again.version == first.version
    assert again.length == 2


def test_append_bumps_version_once_per_call(hot: HotStore) -> None:
    hot.create("t1")
    assert hot.append("t1", [msg("a"), msg("b"), msg("c")]).version == 2
    assert hot.append("t1", [msg("d")]).version == 3


def test_empty_append_is_a_noop(hot: HotStore) -> None:
    hot.create("t1")
    result = hot.append("t1", [])
    assert (result.appended_ids, result.length, result.version) == ((), 0, 1)


def test_append_keeps_unicode_and_nested_bodies_exactly(hot: HotStore) -> None:
    body = {"role": "assistant", "content": [{"type": "text", "text": "héllo 👋 \u2028"}], "n": 1.5}
    hot.create("t1")
    hot.append("t1", [{"id": "ü-1", "body": body}])
    assert hot.load("t1") == [{"id": "ü-1", "body": body}]


def test_append_to_unknown_thread_raises_and_creates_nothing(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    with pytest.raises(ThreadNotFound, match="nope"):
        hot.append("nope", [msg("m1")])
    assert redis_client.dbsize() == 0


def test_append_with_lease_owner_requires_that_lease(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("t1")
    hot.acquire_lease("t1", "turn-1", 10_000)
    before = redis_contents(redis_client)
    with pytest.raises(LeaseLost, match="turn-2"):
        hot.append("t1", [msg("m1")], owner="turn-2")
    assert redis_contents(redis_client) == before
    assert hot.append("t1", [msg("m1")], owner="turn-1").appended_ids == ("m1",)


def test_append_with_owner_after_lease_expired_raises_lease_lost(hot: HotStore) -> None:
    hot.create("t1")
    hot.acquire_lease("t1", "turn-1", 50)
    deadline = time.monotonic() + 5
    while hot.info("t1").lease_owner is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(LeaseLost, match="expired or was released"):
        hot.append("t1", [msg("m1")], owner="turn-1")
    assert hot.length("t1") == 0


# -- load / tail / info ------------------------------------------------------


def test_load_ranges_and_tail(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg(f"m{i}") for i in range(10)])
    assert ids_of(hot.load("t1", 2, 4)) == ["m2", "m3", "m4"]
    assert ids_of(hot.load("t1", -2)) == ["m8", "m9"]
    assert ids_of(hot.tail("t1", 3)) == ["m7", "m8", "m9"]
    assert hot.tail("t1", 0) == []
    assert len(hot.tail("t1", 100)) == 10
    assert hot.length("t1") == 10


def test_tail_of_unknown_thread_raises(hot: HotStore) -> None:
    with pytest.raises(ThreadNotFound):
        hot.tail("nope", 0)
    with pytest.raises(ValueError, match="n must be"):
        hot.tail("nope", -1)


def test_info_reports_metadata_and_ttl(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1")])
    info = hot.info("t1")
    assert info.length == 1
    assert info.version == 2
    assert info.created_ms <= info.updated_ms
    assert info.ttl_ms is not None
    assert 0 < info.ttl_ms <= 90 * 24 * 3600 * 1000
    assert info.lease_owner is None


# -- TTL ---------------------------------------------------------------------


def test_a_write_refreshes_ttl_of_all_thread_keys_once_half_of_it_ran(
    redis_client: redis.Redis,
) -> None:
    store = HotStore(redis_client, ttl_seconds=100)
    store.create("t1", state={"a": 1})
    store.append("t1", [msg("m1")])
    keys = store.keys("t1")
    age_expiry(store, "t1", 5_000)  # 95 of the 100 s have run
    store.append("t1", [msg("m1")])  # even a deduplicated append is activity
    for key in (keys.meta, keys.msgs, keys.ids, keys.state):
        assert 5_000 < redis_client.pttl(key) <= 100_000


def test_ttl_none_keeps_keys_without_expiry(redis_client: redis.Redis) -> None:
    store = HotStore(redis_client, ttl_seconds=None)
    store.create("t1")
    store.append("t1", [msg("m1")])
    assert store.info("t1").ttl_ms is None
    assert redis_client.pttl(store.keys("t1").msgs) == -1


def test_zero_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        HotStore(redis.Redis(), ttl_seconds=0)


# -- fork --------------------------------------------------------------------


def test_fork_copies_records_ledger_state_and_records_parent(hot: HotStore) -> None:
    hot.create("src", state={"plan": ["x"]})
    hot.append("src", [msg("m1"), msg("m2"), msg("m3")])
    result = hot.fork("src", "dst")
    assert (result.created, result.length, result.version) == (True, 3, 1)
    assert hot.load("dst") == hot.load("src")
    assert hot.load_state("dst") == {"plan": ["x"]}
    info = hot.info("dst")
    assert (info.parent, info.fork_point) == ("src", None)
    # the copied ledger dedups in the fork
    assert hot.append("dst", [msg("m2"), msg("m4")]).appended_ids == ("m4",)
    # and the source is untouched by writes to the fork
    assert ids_of(hot.load("src")) == ["m1", "m2", "m3"]


def test_fork_up_to_id_includes_that_message_only_up_to_it(hot: HotStore) -> None:
    hot.create("src")
    hot.append("src", [msg("m1"), msg("m2"), msg("m3")])
    hot.fork("src", "dst", up_to_id="m2")
    assert ids_of(hot.load("dst")) == ["m1", "m2"]
    assert hot.info("dst").fork_point == "m2"
    # m3 is not in the fork's ledger, so it can be appended there
    assert hot.append("dst", [msg("m3", "a different m3")]).appended_ids == ("m3",)


def test_fork_is_idempotent_and_never_clobbers_later_writes(hot: HotStore) -> None:
    hot.create("src")
    hot.append("src", [msg("m1")])
    hot.fork("src", "dst")
    hot.append("dst", [msg("d1")])
    hot.append("src", [msg("m2")])
    again = hot.fork("src", "dst")
    assert again.created is False
    assert ids_of(hot.load("dst")) == ["m1", "d1"]


def test_fork_onto_other_thread_raises_thread_exists(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("src")
    hot.create("other")
    hot.append("other", [msg("o1")])
    hot.create("src2")
    hot.fork("src2", "forked")
    before = redis_contents(redis_client)
    with pytest.raises(ThreadExists, match="other"):
        hot.fork("src", "other")
    with pytest.raises(ThreadExists, match="fork of 'src2'"):
        hot.fork("src", "forked")
    assert redis_contents(redis_client) == before


def test_fork_of_same_source_at_other_point_raises_thread_exists(hot: HotStore) -> None:
    hot.create("src")
    hot.append("src", [msg("m1"), msg("m2")])
    hot.fork("src", "dst", up_to_id="m1")
    with pytest.raises(ThreadExists):
        hot.fork("src", "dst", up_to_id="m2")


def test_fork_of_unknown_source_or_message_creates_nothing(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    with pytest.raises(ThreadNotFound):
        hot.fork("nope", "dst")
    hot.create("src")
    before = redis_contents(redis_client)
    with pytest.raises(InvalidMessage, match="not in thread 'src'"):
        hot.fork("src", "dst", up_to_id="missing")
    assert redis_contents(redis_client) == before


def test_fork_of_empty_thread(hot: HotStore) -> None:
    hot.create("src")
    assert hot.fork("src", "dst").length == 0
    assert hot.load("dst") == []


def test_fork_keeps_retired_ids_retired(hot: HotStore) -> None:
    hot.create("src")
    hot.append("src", [msg("old"), msg("m1")])
    hot.replace_all("src", [msg("summary")])
    hot.fork("src", "dst")
    assert hot.append("dst", [msg("old")]).skipped_ids == ("old",)


def test_fork_with_transform_writes_the_transformed_records_and_retires_dropped_ids(
    hot: HotStore,
) -> None:
    hot.create("src", state={"k": "v"})
    hot.append("src", [msg("old"), msg("m1")])
    hot.replace_all("src", [msg("m1"), msg("m2"), msg("m3"), msg("m4")])  # "old" retired

    def keep_odd(records: list[Message]) -> list[Message]:
        return [{"id": r["id"], "body": "kept"} for r in records if r["id"] in ("m1", "m3")]

    result = hot.fork("src", "dst", up_to_id="m3", transform=keep_odd)
    assert (result.created, result.length, result.version) == (True, 2, 1)
    assert hot.load("dst") == [{"id": "m1", "body": "kept"}, {"id": "m3", "body": "kept"}]
    assert hot.load_state("dst") == {"k": "v"}
    info = hot.info("dst")
    assert (info.parent, info.fork_point) == ("src", "m3")
    # dropped ids stay retired in the fork; ids after the fork point are free
    appended = hot.append("dst", [msg("old"), msg("m2"), msg("m4")])
    assert appended.appended_ids == ("m4",)
    assert hot.fork("src", "dst", up_to_id="m3", transform=keep_odd).created is False
    assert hot.load("src") == [msg("m1"), msg("m2"), msg("m3"), msg("m4")]


def test_fork_with_a_failing_or_invalid_transform_writes_nothing(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("src")
    hot.append("src", [msg("m1")])
    before = redis_contents(redis_client)

    def broken(records: list[Message]) -> list[Message]:
        raise RuntimeError("transform failed")

    with pytest.raises(RuntimeError, match="transform failed"):
        hot.fork("src", "dst", transform=broken)
    with pytest.raises(InvalidMessage):
        hot.fork("src", "dst", transform=lambda records: [*records, *records])
    assert redis_contents(redis_client) == before


def test_fork_with_transform_staged_in_chunks(hot: HotStore, redis_client: redis.Redis) -> None:
    hot.create("src")
    hot.append("src", [msg(f"m{i}") for i in range(9)])
    result = hot.fork("src", "dst", transform=lambda rs: rs[::2], chunk_size=2)
    assert (result.created, result.length) == (True, 5)
    assert ids_of(hot.load("dst")) == ["m0", "m2", "m4", "m6", "m8"]
    assert hot.append("dst", [msg("m1"), msg("m9")]).appended_ids == ("m9",)
    assert redis_client.keys("*staging*") == []


# -- truncate_from -------------------------------------------------------------


def test_truncate_from_drops_message_and_rest_and_forgets_their_ids(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("m2"), msg("m3")])
    result = hot.truncate_from("t1", "m2")
    assert result.removed_ids == ("m2", "m3")
    assert result.length == 1
    assert ids_of(hot.load("t1")) == ["m1"]
    # a rewind may append the same ids again, at the right positions
    assert hot.append("t1", [msg("m2", "retry"), msg("m3")]).appended_ids == ("m2", "m3")
    assert hot.truncate_from("t1", "m3").removed_ids == ("m3",)
    assert ids_of(hot.load("t1")) == ["m1", "m2"]


def test_truncate_from_first_message_empties_thread(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("m2")])
    assert hot.truncate_from("t1", "m1").removed_ids == ("m1", "m2")
    assert hot.load("t1") == []
    assert hot.exists("t1")


def test_truncate_from_repeated_or_unknown_id_is_a_noop(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("m2")])
    hot.truncate_from("t1", "m2")
    version = hot.version("t1")
    again = hot.truncate_from("t1", "m2")
    assert (again.removed_ids, again.length, again.version) == ((), 1, version)


def test_truncate_from_unknown_thread_raises(hot: HotStore) -> None:
    with pytest.raises(ThreadNotFound):
        hot.truncate_from("nope", "m1")


def test_truncate_from_with_owner_requires_that_lease_and_writes_nothing(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("m2")])
    hot.acquire_lease("t1", "turn-2", 10_000)
    before = redis_contents(redis_client)
    with pytest.raises(LeaseLost, match="turn-2"):
        hot.truncate_from("t1", "m2", owner="turn-1")
    assert redis_contents(redis_client) == before
    # a repeated rewind whose id is already gone writes nothing, so needs no lease
    assert hot.truncate_from("t1", "gone", owner="turn-1").removed_ids == ()
    assert hot.truncate_from("t1", "m2", owner="turn-2").removed_ids == ("m2",)


# -- replace_all -------------------------------------------------------------------


def test_replace_all_swaps_list_and_rebuilds_ledger(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("m2"), msg("m3")])
    result = hot.replace_all("t1", [msg("summary"), msg("m3")])
    assert result.changed is True
    assert result.length == 2
    assert ids_of(hot.load("t1")) == ["summary", "m3"]
    # retired ids stay deduplicated; the new list's ids are positioned correctly
    assert hot.append("t1", [msg("m1"), msg("m4")]).appended_ids == ("m4",)
    assert hot.truncate_from("t1", "m3").removed_ids == ("m3", "m4")
    assert ids_of(hot.load("t1")) == ["summary"]


def test_replace_all_with_identical_list_changes_nothing(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("m2")])
    version = hot.version("t1")
    result = hot.replace_all("t1", [msg("m1"), msg("m2")])
    assert (result.changed, result.version) == (False, version)


def test_replace_all_with_empty_list(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1")])
    assert hot.replace_all("t1", []).length == 0
    assert hot.load("t1") == []
    assert hot.append("t1", [msg("m1")]).skipped_ids == ("m1",)


def test_replace_all_unknown_thread_raises(hot: HotStore, redis_client: redis.Redis) -> None:
    with pytest.raises(ThreadNotFound):
        hot.replace_all("nope", [msg("m1")])
    assert redis_client.dbsize() == 0
    with pytest.raises(ThreadNotFound):
        hot.replace_all("nope", [msg(f"m{i}") for i in range(5)], chunk_size=2)
    assert redis_client.dbsize() == 0


def test_replace_all_takes_any_length_beyond_the_batch_limit(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("t1")
    hot.append("t1", [msg("old")])
    size = hot.limits.max_batch + 501
    result = hot.replace_all("t1", [msg(f"m{i:05d}") for i in range(size)])
    assert (result.changed, result.length) == (True, size)
    assert ids_of(hot.tail("t1", 1)) == [f"m{size - 1:05d}"]
    assert hot.append("t1", [msg("old"), msg("m00007"), msg("new")]).appended_ids == ("new",)


def test_replace_all_staged_in_chunks_swaps_in_at_once_and_keeps_retired_ids(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("t1")
    hot.append("t1", [msg("old-1"), msg("keep"), msg("old-2")])
    target = [msg("keep"), *(msg(f"m{i}") for i in range(6))]
    result = hot.replace_all("t1", target, chunk_size=3)  # 3 + 3 + 1 records, one swap
    assert (result.changed, result.length) == (True, 7)
    assert hot.load("t1") == target
    assert redis_client.keys("*staging*") == []
    assert hot.append("t1", [msg("old-1"), msg("old-2"), msg("m5"), msg("m6")]).appended_ids == (
        "m6",
    )
    assert hot.truncate_from("t1", "m5").removed_ids == ("m5", "m6")
    version = hot.version("t1")
    same = hot.replace_all("t1", hot.load("t1"), chunk_size=3)
    assert (same.changed, same.version) == (False, version)
    assert redis_client.keys("*staging*") == []


@pytest.mark.parametrize("chunk_size", [2000, 2])
def test_replace_all_with_a_stale_expected_version_raises_and_writes_nothing(
    hot: HotStore, redis_client: redis.Redis, chunk_size: int
) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("m2")])
    read_at = hot.version("t1")
    hot.append("t1", [msg("m3")])  # the write that raced the compaction
    before = redis_contents(redis_client)
    with pytest.raises(VersionConflict) as conflict:
        hot.replace_all(
            "t1", [msg("summary"), msg("m2")], expected_version=read_at, chunk_size=chunk_size
        )
    assert (conflict.value.expected, conflict.value.actual) == (read_at, read_at + 1)
    assert type(conflict.value)(*conflict.value.args).args == conflict.value.args
    assert conflict.value.transient is False
    assert redis_contents(redis_client) == before
    result = hot.replace_all("t1", [msg("summary")], expected_version=read_at + 1)
    assert (result.changed, result.version) == (True, read_at + 2)


# -- put_record --------------------------------------------------------------------


def test_put_record_replaces_in_place_inserts_last_or_first(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("m2")])
    assert hot.put_record("t1", msg("m1", "edited")).length == 2
    assert hot.load("t1") == [msg("m1", "edited"), msg("m2")]
    assert hot.put_record("t1", msg("m3")).length == 3
    assert hot.put_record("t1", msg("sys"), first=True).length == 4
    assert ids_of(hot.load("t1")) == ["sys", "m1", "m2", "m3"]
    # the ledger follows the shift: dedup and truncate still find every record
    assert hot.append("t1", [msg("m1"), msg("sys"), msg("m4")]).appended_ids == ("m4",)
    assert hot.truncate_from("t1", "m2").removed_ids == ("m2", "m3", "m4")
    assert ids_of(hot.load("t1")) == ["sys", "m1"]


def test_put_record_first_moves_an_existing_record_to_the_front(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1"), msg("sys"), msg("m2")])
    result = hot.put_record("t1", msg("sys", "new prompt"), first=True)
    assert (result.changed, result.length) == (True, 3)
    assert hot.load("t1") == [msg("sys", "new prompt"), msg("m1"), msg("m2")]
    assert hot.truncate_from("t1", "m1").removed_ids == ("m1", "m2")
    assert ids_of(hot.load("t1")) == ["sys"]


def test_put_record_that_changes_nothing_keeps_the_version(hot: HotStore) -> None:
    hot.create("t1")
    hot.put_record("t1", msg("sys"), first=True)
    hot.append("t1", [msg("m1")])
    version = hot.version("t1")
    again = hot.put_record("t1", msg("sys"), first=True)
    assert (again.changed, again.length, again.version) == (False, 2, version)
    # nothing to write, so a stale expected version is no conflict (a retried call)
    assert hot.put_record("t1", msg("m1"), expected_version=1).changed is False


def test_put_record_with_a_stale_expected_version_raises_and_writes_nothing(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("t1")
    hot.append("t1", [msg("m1")])
    read_at = hot.version("t1")
    hot.append("t1", [msg("m2")])
    before = redis_contents(redis_client)
    with pytest.raises(VersionConflict):
        hot.put_record("t1", msg("sys"), first=True, expected_version=read_at)
    assert redis_contents(redis_client) == before
    assert hot.put_record("t1", msg("sys"), first=True, expected_version=read_at + 1).changed


def test_put_record_brings_back_an_id_retired_by_a_compaction(hot: HotStore) -> None:
    hot.create("t1")
    hot.append("t1", [msg("sys"), msg("m1")])
    hot.replace_all("t1", [msg("m1")])  # a compaction dropped the system record
    assert hot.append("t1", [msg("sys")]).skipped_ids == ("sys",)  # a late append does not
    hot.put_record("t1", msg("sys", "again"), first=True)  # an explicit put does
    assert hot.load("t1") == [msg("sys", "again"), msg("m1")]


def test_put_record_on_unknown_thread_or_bad_record_raises(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    with pytest.raises(ThreadNotFound):
        hot.put_record("nope", msg("sys"), first=True)
    assert redis_client.dbsize() == 0
    hot.create("t1")
    before = redis_contents(redis_client)
    with pytest.raises(InvalidMessage):
        hot.put_record("t1", {"id": "bad id", "body": {}})
    with pytest.raises(ValueError, match="expected_version"):
        hot.put_record("t1", msg("m1"), expected_version=-1)
    assert redis_contents(redis_client) == before


# -- state -----------------------------------------------------------------------


def test_save_and_load_state(hot: HotStore) -> None:
    hot.create("t1")
    first = hot.save_state("t1", {"tasks": [{"id": 1, "done": False}]})
    assert first.changed is True
    assert hot.load_state("t1") == {"tasks": [{"id": 1, "done": False}]}
    same = hot.save_state("t1", {"tasks": [{"id": 1, "done": False}]})
    assert (same.changed, same.version) == (False, first.version)
    assert hot.save_state("t1", {}).version == first.version + 1
    assert hot.load_state("t1") == {}


def test_state_of_unknown_thread_raises(hot: HotStore) -> None:
    with pytest.raises(ThreadNotFound):
        hot.save_state("nope", {"a": 1})
    with pytest.raises(ThreadNotFound):
        hot.load_state("nope")


# -- delete ----------------------------------------------------------------------


def test_delete_removes_every_key_and_is_idempotent(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("t1", state={"a": 1})
    hot.append("t1", [msg("m1")])
    hot.acquire_lease("t1", "turn-1", 10_000)
    assert hot.delete("t1") is True
    tomb = hot.keys("t1").tomb.encode()
    assert set(redis_client.scan_iter("*")) == {tomb}  # the tombstone, which expires
    assert redis_client.pttl(tomb) > 0
    assert hot.delete("t1") is False
    with pytest.raises(ThreadNotFound):
        hot.load("t1")


# -- lease -----------------------------------------------------------------------


def test_lease_is_exclusive_renewable_and_released_only_by_owner(hot: HotStore) -> None:
    hot.create("t1")
    lease = hot.acquire_lease("t1", "turn-1", 10_000)
    assert (lease.owner, lease.renewed) == ("turn-1", False)
    assert hot.acquire_lease("t1", "turn-1", 10_000).renewed is True
    with pytest.raises(LeaseHeld, match="turn-1") as held:
        hot.acquire_lease("t1", "turn-2", 10_000)
    assert held.value.transient is True
    assert 0 < held.value.ttl_ms <= 10_000
    assert hot.release_lease("t1", "turn-2") is False
    assert hot.info("t1").lease_owner == "turn-1"
    assert hot.release_lease("t1", "turn-1") is True
    assert hot.release_lease("t1", "turn-1") is False
    assert hot.acquire_lease("t1", "turn-2", 10_000).owner == "turn-2"


def test_lease_expires(hot: HotStore) -> None:
    hot.create("t1")
    hot.acquire_lease("t1", "turn-1", 30)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            hot.acquire_lease("t1", "turn-2", 10_000)
            break
        except LeaseHeld:
            time.sleep(0.01)
    assert hot.info("t1").lease_owner == "turn-2"


def test_lease_on_unknown_thread_raises(hot: HotStore) -> None:
    with pytest.raises(ThreadNotFound):
        hot.acquire_lease("nope", "turn-1", 1000)


# -- namespaces and clients ----------------------------------------------------------


def test_namespaces_are_isolated(redis_client: redis.Redis) -> None:
    acme = HotStore(redis_client, namespace="acme")
    other = HotStore(redis_client, namespace="other")
    acme.create("t1")
    acme.append("t1", [msg("m1")])
    with pytest.raises(ThreadNotFound):
        other.load("t1")
    other.create("t1")
    assert other.append("t1", [msg("m1")]).appended_ids == ("m1",)
    assert all(k.startswith((b"acme:", b"other:")) for k in redis_client.keys("*"))


def test_works_with_decode_responses_client(redis_server: object, redis_client: object) -> None:
    from storage.embedded import EmbeddedRedis

    assert isinstance(redis_server, EmbeddedRedis)
    client = redis_server.client(decode_responses=True)
    try:
        store = HotStore(client)
        store.create("t1", state={"s": "ü"})
        store.append("t1", [msg("m1"), msg("m1")])
        assert store.load("t1") == [msg("m1")]
        assert store.load_state("t1") == {"s": "ü"}
        assert store.info("t1").version == 2
    finally:
        client.close()


def test_scripts_are_reloaded_after_script_flush(hot: HotStore, redis_client: redis.Redis) -> None:
    hot.create("t1")
    redis_client.script_flush()
    assert hot.append("t1", [msg("m1")]).appended_ids == ("m1",)
