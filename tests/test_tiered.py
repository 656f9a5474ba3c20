"""Threads over a real redis-server and a real cold store (S3 over HTTP, and files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from storage import (
    HotStore,
    LeaseHeld,
    LeaseLost,
    SnapshotCorrupt,
    ThreadExists,
    ThreadNotFound,
    VersionConflict,
)
from storage.cold import ColdStore, FileColdStore
from storage.tiered import Threads
from tests.conftest import backdate, msg


def ids_of(records: list[dict[str, object]] | list[object]) -> list[object]:
    return [r["id"] for r in records]  # type: ignore[index]


def make_thread(threads: Threads, tid: str = "t1", n: int = 3) -> None:
    threads.open(tid, "new", state={"step": 1})
    threads.append(tid, [msg(f"m{i}") for i in range(n)])


# -- flush -------------------------------------------------------------------------


def test_flush_archives_and_evicts_every_hot_key(
    threads: Threads, redis_client: redis.Redis, cold: ColdStore
) -> None:
    make_thread(threads)
    result = threads.flush("t1")
    assert (result.status, result.evicted, result.version) == ("archived", True, 2)
    assert result.size_bytes > 0
    assert cold.head("t1") == result.etag
    keys = threads.hot.keys("t1")
    assert redis_client.exists(keys.meta, keys.msgs, keys.ids, keys.state, keys.lease) == 0


def test_flush_without_evict_keeps_thread_hot_and_records_the_archive(threads: Threads) -> None:
    make_thread(threads)
    result = threads.flush("t1", evict=False)
    assert (result.status, result.evicted) == ("archived", False)
    info = threads.hot.info("t1")
    assert (info.cold_version, info.cold_etag) == (info.version, result.etag)


def test_flush_of_unchanged_thread_uploads_nothing(threads: Threads, cold: ColdStore) -> None:
    make_thread(threads)
    first = threads.flush("t1", evict=False)
    again = threads.flush("t1", evict=False)
    assert (again.status, again.etag, again.size_bytes) == ("unchanged", first.etag, 0)
    evicted = threads.flush("t1")
    assert (evicted.status, evicted.evicted) == ("unchanged", True)
    assert cold.head("t1") == first.etag


def test_flush_of_absent_thread(threads: Threads) -> None:
    assert threads.flush("nope").status == "absent"


def test_flush_of_evicted_thread_reports_the_current_archive(threads: Threads) -> None:
    make_thread(threads)
    first = threads.flush("t1")
    again = threads.flush("t1")
    assert (again.status, again.etag, again.evicted, again.size_bytes) == (
        "unchanged",
        first.etag,
        False,
        0,
    )


def test_flush_keeps_a_leased_thread_hot(threads: Threads) -> None:
    make_thread(threads)
    threads.acquire_lease("t1", "turn-1", 60_000)
    result = threads.flush("t1")
    assert (result.status, result.evicted) == ("archived", False)
    assert threads.hot.exists("t1")


def test_flush_with_release_owner_ends_the_turn_and_evicts(threads: Threads) -> None:
    make_thread(threads)
    threads.acquire_lease("t1", "turn-1", 60_000)
    other = threads.flush("t1", release_owner="turn-2")
    assert other.evicted is False
    result = threads.flush("t1", release_owner="turn-1")
    # the end of turn-1 is itself a change: the archive must carry it
    assert (result.status, result.evicted) == ("archived", True)
    assert not threads.hot.exists("t1")


def test_a_turn_ended_by_an_evicting_flush_stays_finished_after_hydrate(
    threads: Threads,
) -> None:
    make_thread(threads)
    threads.acquire_lease("t1", "turn-1", 60_000)
    threads.append("t1", [msg("reply")], owner="turn-1")
    assert threads.flush("t1", release_owner="turn-1").evicted
    keys = threads.hot.keys("t1")
    threads.hot.redis.delete(keys.archived, keys.turns)  # as after the marker's TTL
    assert threads.hydrate("t1").status == "restored"
    late = threads.acquire_lease("t1", "turn-1", 60_000)  # a redelivered chain step
    assert late.finished
    assert threads.hot.info("t1").lease_owner is None
    again = threads.flush("t1", release_owner="turn-1")  # a redelivered flush
    assert (again.status, again.evicted) == ("unchanged", True)


def test_a_turn_that_changed_nothing_is_still_archived_as_finished(threads: Threads) -> None:
    make_thread(threads)
    assert threads.flush("t1", evict=False).status == "archived"
    threads.acquire_lease("t1", "turn-1", 60_000)
    assert threads.flush("t1", release_owner="turn-1").status == "archived"
    threads.hydrate("t1")
    assert threads.acquire_lease("t1", "turn-1", 60_000).finished


# -- hydrate -----------------------------------------------------------------------


def test_flush_then_hydrate_restores_records_ledger_state_version(threads: Threads) -> None:
    make_thread(threads, n=5)
    threads.hot.replace_all("t1", [msg("summary"), msg("m4")])  # m0..m3 retired
    threads.acquire_lease("t1", "turn-1", 60_000)
    threads.release_lease("t1", "turn-1")
    before = threads.hot.info("t1")
    records = threads.hot.load("t1")
    threads.flush("t1")
    result = threads.hydrate("t1")
    assert (result.status, result.version, result.length) == ("restored", before.version, 2)
    assert threads.hot.load("t1") == records
    assert threads.hot.load_state("t1") == {"step": 1}
    after = threads.hot.info("t1")
    assert (after.version, after.created_ms, after.epoch) == (
        before.version,
        before.created_ms,
        before.epoch,
    )
    assert after.cold_version == before.version
    # archived ids, current and retired, are still deduplicated after the round trip
    appended = threads.append("t1", [msg("m4"), msg("m1"), msg("summary"), msg("new")])
    assert appended.appended_ids == ("new",)
    assert appended.skipped_ids == ("m4", "m1", "summary")


def test_hydrate_of_hot_thread_is_a_noop(threads: Threads) -> None:
    make_thread(threads)
    version = threads.hot.version("t1")
    assert threads.hydrate("t1").status == "hot"
    assert threads.hot.version("t1") == version


def test_hydrate_of_unknown_thread_is_absent_and_writes_nothing(
    threads: Threads, redis_client: redis.Redis
) -> None:
    assert threads.hydrate("nope").status == "absent"
    assert redis_client.dbsize() == 0


def test_large_thread_is_restored_through_staging_in_chunks(
    threads: Threads, redis_client: redis.Redis
) -> None:
    threads.open("big", "new")
    for start in range(0, 5000, 1000):
        threads.append("big", [msg(f"m{i:05d}") for i in range(start, start + 1000)])
    records = threads.hot.load("big")
    threads.flush("big")
    threads.restore_chunk = 700  # 5000 records -> 8 staged chunks, then one swap
    assert threads.hydrate("big").status == "restored"
    assert threads.hot.load("big") == records
    assert redis_client.keys("*staging*") == []
    ledger = redis_client.hgetall(threads.hot.keys("big").ids)
    assert len(ledger) == 5000
    assert int(ledger[b"m04999"]) == 4999


def test_tier_transparent_operations_hydrate_a_cold_thread(threads: Threads) -> None:
    make_thread(threads)
    threads.flush("t1")
    assert ids_of(threads.load("t1")) == ["m0", "m1", "m2"]
    threads.flush("t1")
    assert threads.load_state("t1") == {"step": 1}
    threads.flush("t1")
    assert threads.append("t1", [msg("m3")]).appended_ids == ("m3",)
    threads.flush("t1")
    assert threads.acquire_lease("t1", "turn-9", 1000).owner == "turn-9"
    threads.flush("t1")  # leased: archived but kept hot
    assert threads.save_state("t1", {"step": 2}) > 0
    with pytest.raises(ThreadNotFound):
        threads.append("nope", [msg("m1")])


# -- snapshot validation on hydrate --------------------------------------------------


def test_corrupt_archive_raises_and_leaves_hot_tier_untouched(
    threads: Threads, cold: ColdStore, redis_client: redis.Redis
) -> None:
    make_thread(threads)
    result = threads.flush("t1")
    assert result.etag is not None
    cold.write_bytes("t1", b"\x1f\x8b not really gzip", result.etag)
    before = sorted(redis_client.keys("*"))
    with pytest.raises(SnapshotCorrupt):
        threads.hydrate("t1")
    assert sorted(redis_client.keys("*")) == before
    assert not threads.hot.exists("t1")


def test_snapshot_of_another_namespace_is_refused(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    tenant_a = Threads(HotStore(redis_client, namespace="tenant-a"), cold)
    tenant_b = Threads(HotStore(redis_client, namespace="tenant-b"), cold)
    make_thread(tenant_a)
    tenant_a.flush("t1")
    with pytest.raises(SnapshotCorrupt, match="namespace 'tenant-a'"):
        tenant_b.hydrate("t1")
    assert not tenant_b.hot.exists("t1")


# -- open ----------------------------------------------------------------------------


def test_open_new_refuses_an_id_that_exists_hot_or_cold(threads: Threads, cold: ColdStore) -> None:
    assert threads.open("t1", "new", state={"a": 1}) == "created"
    with pytest.raises(ThreadExists, match="hot"):
        threads.open("t1", "new")
    threads.flush("t1")
    with pytest.raises(ThreadExists, match="cold"):
        threads.open("t1", "new")
    assert cold.head("t1") is not None
    # and nothing was overwritten
    assert threads.load_state("t1") == {"a": 1}


def test_open_new_redelivered_by_same_owner_is_idempotent(threads: Threads) -> None:
    assert threads.open("t1", "new", owner="turn-1") == "created"
    threads.append("t1", [msg("m1")])
    assert threads.open("t1", "new", owner="turn-1") == "existing"
    threads.flush("t1")
    assert threads.open("t1", "new", owner="turn-1") == "existing"
    assert ids_of(threads.hot.load("t1")) == ["m1"]
    with pytest.raises(ThreadExists):
        threads.open("t1", "new", owner="turn-2")


def test_open_continue_hydrates_or_refuses_unknown(threads: Threads) -> None:
    make_thread(threads)
    assert threads.open("t1", "continue") == "hot"
    threads.flush("t1")
    assert threads.open("t1", "continue") == "restored"
    with pytest.raises(ThreadNotFound, match="mode='new'"):
        threads.open("nope", "continue")


def test_fork_of_a_cold_source_hydrates_it_first(threads: Threads) -> None:
    make_thread(threads, n=4)
    threads.flush("t1")
    assert threads.open("f1", "fork", source="t1", up_to_id="m1") == "forked"
    assert ids_of(threads.hot.load("f1")) == ["m0", "m1"]
    assert threads.hot.info("f1").parent == "t1"
    assert threads.open("f1", "fork", source="t1", up_to_id="m1") == "existing"
    # a flushed fork is found in the cold tier on redelivery, not forked again
    threads.append("f1", [msg("f-only")])
    threads.flush("f1")
    assert threads.open("f1", "fork", source="t1", up_to_id="m1") == "existing"
    assert ids_of(threads.hot.load("f1")) == ["m0", "m1", "f-only"]
    with pytest.raises(ThreadExists):
        threads.open("f1", "fork", source="t1")
    with pytest.raises(ThreadNotFound):
        threads.open("f2", "fork", source="nope")


class FlushBeforeFork(HotStore):
    """The real HotStore; right before its next fork, ``flusher`` flushes the source,
    as a concurrent ``flush_idle`` may between ``open``'s hydrate and its fork."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.flusher: Threads | None = None
        self.flushed: list[bool] = []

    def fork(self, source_id: str, dest_id: str, *args: Any, **kwargs: Any) -> Any:
        if self.flusher is not None:
            flusher, self.flusher = self.flusher, None
            self.flushed = [flusher.flush(source_id).evicted]
        return super().fork(source_id, dest_id, *args, **kwargs)


def test_fork_of_a_hot_source_evicted_before_the_fork_hydrates_it_again(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    hot = FlushBeforeFork(redis_client)
    threads = Threads(hot, cold)
    make_thread(threads)
    hot.flusher = Threads(HotStore(redis_client), cold)
    assert threads.open("f1", "fork", source="t1", up_to_id="m1") == "forked"
    assert hot.flushed == [True]  # the source really was evicted in between
    assert ids_of(threads.hot.load("f1")) == ["m0", "m1"]


def test_fork_pins_a_cold_source_it_hydrates_so_a_flush_cannot_evict_it(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    hot = FlushBeforeFork(redis_client)
    threads = Threads(hot, cold, write_pin_ms=60_000)
    make_thread(threads)
    threads.flush("t1")
    hot.flusher = Threads(HotStore(redis_client), cold)
    assert threads.open("f1", "fork", source="t1") == "forked"
    assert hot.flushed == [False]  # kept hot by the pin
    assert ids_of(threads.hot.load("f1")) == ["m0", "m1", "m2"]


def test_fork_with_transform_of_a_cold_source(threads: Threads) -> None:
    make_thread(threads, n=4)
    threads.flush("t1")
    status = threads.open("f1", "fork", source="t1", transform=lambda records: records[1:])
    assert status == "forked"
    assert ids_of(threads.hot.load("f1")) == ["m1", "m2", "m3"]
    assert threads.hot.load_state("f1") == {"step": 1}
    assert threads.open("f1", "fork", source="t1", transform=lambda records: []) == "existing"
    assert ids_of(threads.hot.load("f1")) == ["m1", "m2", "m3"]


def test_conditional_and_owned_writes_reach_a_cold_thread(threads: Threads) -> None:
    make_thread(threads)
    version = threads.hot.version("t1")
    threads.flush("t1")
    with pytest.raises(VersionConflict):
        threads.replace_all("t1", [msg("summary")], expected_version=version - 1)
    threads.flush("t1")
    result = threads.replace_all("t1", [msg("summary"), msg("m2")], expected_version=version)
    assert (result.changed, result.version) == (True, version + 1)
    threads.flush("t1")
    assert threads.put_record("t1", msg("sys"), first=True).length == 3
    threads.flush("t1")
    threads.acquire_lease("t1", "turn-1", 60_000)
    threads.flush("t1")
    with pytest.raises(LeaseLost):
        threads.truncate_from("t1", "m2", owner="turn-2")
    assert threads.truncate_from("t1", "m2", owner="turn-1").removed_ids == ("m2",)
    assert ids_of(threads.load("t1")) == ["sys", "summary"]


def test_open_rejects_unknown_mode_and_fork_without_source(threads: Threads) -> None:
    with pytest.raises(ValueError, match="unknown open mode"):
        threads.open("t1", "overwrite")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source"):
        threads.open("t1", "fork")


def test_hot_create_refuses_to_shadow_an_evicted_thread(threads: Threads) -> None:
    make_thread(threads)
    threads.flush("t1")
    with pytest.raises(ThreadExists, match="hydrate"):
        threads.hot.create("t1")
    threads.hot.create("other")
    with pytest.raises(ThreadExists, match="cold tier"):
        threads.hot.fork("other", "t1")


# -- lease -----------------------------------------------------------------------------


def test_lease_is_exclusive_across_tiers(threads: Threads) -> None:
    make_thread(threads)
    threads.flush("t1")
    threads.acquire_lease("t1", "turn-1", 60_000)
    with pytest.raises(LeaseHeld):
        threads.acquire_lease("t1", "turn-2", 60_000)
    assert threads.acquire_lease("t1", "turn-1", 60_000).renewed is True
    assert threads.release_lease("t1", "turn-2") is False
    assert threads.release_lease("t1", "turn-1") is True


# -- delete ------------------------------------------------------------------------------


def only_the_tombstone_left(client: redis.Redis, threads: Threads, tid: str) -> bool:
    """A delete leaves nothing but its tombstone, which expires by itself."""
    tomb = threads.hot.keys(tid).tomb.encode()
    return set(client.scan_iter("*")) == {tomb} and client.pttl(tomb) > 0


def test_delete_removes_both_tiers(
    threads: Threads, cold: ColdStore, redis_client: redis.Redis
) -> None:
    make_thread(threads)
    threads.flush("t1")
    threads.hydrate("t1")
    threads.append("t1", [msg("hot-only")])
    assert threads.delete("t1") is True
    assert cold.head("t1") is None
    assert only_the_tombstone_left(redis_client, threads, "t1")
    assert threads.delete("t1") is False
    assert threads.hydrate("t1").status == "absent"
    assert threads.open("t1", "new") == "created"


def test_delete_of_evicted_thread_removes_marker_so_the_id_can_be_reused(
    threads: Threads, redis_client: redis.Redis
) -> None:
    make_thread(threads)
    threads.flush("t1")
    assert redis_client.exists(threads.hot.keys("t1").archived) == 1
    assert threads.delete("t1") is True
    assert only_the_tombstone_left(redis_client, threads, "t1")
    threads.hot.create("t1")


# -- idle flush ----------------------------------------------------------------------------


def test_flush_idle_evicts_idle_threads_and_keeps_busy_ones(
    threads: Threads, redis_client: redis.Redis
) -> None:
    for tid in ("idle-1", "idle-2", "busy", "leased"):
        make_thread(threads, tid)
    threads.acquire_lease("leased", "turn-1", 60_000)
    old = 1_000  # ms since the epoch: long ago
    for tid in ("idle-1", "idle-2", "leased"):
        backdate(threads.hot, tid, old)
    report = threads.flush_idle(idle_seconds=60)
    assert report.candidates == 3
    assert sorted(report.evicted) == ["idle-1", "idle-2"]
    assert report.kept == ("leased",)
    assert report.failed == ()
    assert not threads.hot.exists("idle-1")
    assert threads.hot.exists("busy")
    assert threads.hot.exists("leased")
    active = dict(threads.hot.active_threads())
    assert set(active) == {"busy", "leased"}
    assert threads.flush_idle(idle_seconds=60).candidates == 0
    assert [m["id"] for m in threads.load("idle-1")] == ["m0", "m1", "m2"]


def test_activity_index_follows_writes_evictions_and_deletes(threads: Threads) -> None:
    make_thread(threads)
    assert [tid for tid, _ in threads.hot.active_threads()] == ["t1"]
    threads.flush("t1")
    assert threads.hot.active_threads() == []
    threads.hydrate("t1")
    assert [tid for tid, _ in threads.hot.active_threads()] == ["t1"]
    threads.delete("t1")
    assert threads.hot.active_threads() == []


def test_threads_refuse_a_cold_store_of_another_namespace(hot: HotStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'tenant-b'"):
        Threads(hot, FileColdStore(tmp_path, namespace="tenant-b"))
    assert Threads(hot, FileColdStore(tmp_path, namespace=hot.namespace)).cold is not None
