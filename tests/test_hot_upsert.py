"""HotStore.upsert against a real redis-server and a real Redis Cluster: records written
by id in one script, first write wins unless the id is to be replaced (last write wins)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from storage import HotStore, InvalidMessage, ThreadNotFound
from storage.cold import FileColdStore
from storage.tiered import Threads
from tests.conftest import msg, redis_contents


@pytest.fixture(params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
def client(request: pytest.FixtureRequest) -> redis.Redis | redis.RedisCluster:
    """Each test runs on a standalone Redis and on a three-master Redis Cluster."""
    name = "redis_client" if request.param == "redis" else "cluster_client"
    found: redis.Redis | redis.RedisCluster = request.getfixturevalue(name)
    return found


@pytest.fixture
def store(client: redis.Redis | redis.RedisCluster) -> HotStore:
    return HotStore(client)


def ids_of(records: list[object]) -> list[object]:
    return [r["id"] for r in records]  # type: ignore[index]


def test_upsert_appends_new_ids_and_keeps_the_first_write_of_known_ones(
    store: HotStore,
) -> None:
    store.create("t1")
    store.append("t1", [msg("m1")])
    result = store.upsert("t1", [msg("m1", "second write"), msg("m2"), msg("m3")])
    assert result.appended_ids == ("m2", "m3")
    assert result.unchanged_ids == ("m1",)
    assert result.replaced_ids == ()
    assert result.length == 3
    assert store.load("t1") == [msg("m1"), msg("m2"), msg("m3")]


def test_upsert_replaces_listed_ids_in_place_and_the_last_write_wins(store: HotStore) -> None:
    store.create("t1")
    store.upsert("t1", [msg("m1"), msg("m2"), msg("m3")])
    version = store.version("t1")
    result = store.upsert("t1", [msg("m2", "v2"), msg("m4")], replace={"m2"})
    assert (result.replaced_ids, result.appended_ids) == (("m2",), ("m4",))
    assert result.version == version + 1  # one mutation, one version
    result = store.upsert("t1", [msg("m2", "v3")], replace={"m2"})
    assert result.replaced_ids == ("m2",)
    assert store.load("t1") == [msg("m1"), msg("m2", "v3"), msg("m3"), msg("m4")]
    # the ledger still points at every record: dedup and reads by id follow the edit
    assert store.get("t1", ["m2"]) == {"m2": msg("m2", "v3")}
    assert store.append("t1", [msg("m2"), msg("m5")]).appended_ids == ("m5",)


def test_upsert_that_changes_nothing_writes_nothing_and_keeps_the_version(
    store: HotStore,
) -> None:
    store.create("t1")
    store.upsert("t1", [msg("m1"), msg("m2")], replace={"m2"})
    version = store.version("t1")
    again = store.upsert("t1", [msg("m1"), msg("m2")], replace={"m2"})
    assert again.unchanged_ids == ("m1", "m2")
    assert (again.version, again.length) == (version, 2)


def test_upsert_never_brings_back_an_id_a_rewrite_retired(store: HotStore) -> None:
    store.create("t1")
    store.upsert("t1", [msg("m1"), msg("m2")])
    store.replace_all("t1", [msg("m2")])  # m1 is retired
    result = store.upsert("t1", [msg("m1", "late"), msg("m3")], replace={"m1"})
    assert result.unchanged_ids == ("m1",)
    assert ids_of(store.load("t1")) == ["m2", "m3"]  # type: ignore[arg-type]


def test_only_a_replacement_counts_as_a_rewrite_of_the_list(store: HotStore) -> None:
    # An append keeps the archive's records a prefix of the list (the next flush
    # uploads one segment); an edit in place does not (the next flush writes a base).
    store.create("t1")
    store.upsert("t1", [msg("m1")])
    before = store.flush_source("t1", force=True).rewrites
    store.upsert("t1", [msg("m1", "ignored"), msg("m2")])
    assert store.flush_source("t1", force=True).rewrites == before
    store.upsert("t1", [msg("m1", "edited")], replace={"m1"})
    assert store.flush_source("t1", force=True).rewrites != before


def test_upsert_refuses_repeated_ids_stray_replace_ids_and_bad_records_writing_nothing(
    store: HotStore, client: redis.Redis | redis.RedisCluster
) -> None:
    store.create("t1")
    store.upsert("t1", [msg("m1")])
    before = redis_contents(client)
    with pytest.raises(InvalidMessage, match="twice"):
        store.upsert("t1", [msg("m2"), msg("m2", "other")])
    with pytest.raises(InvalidMessage, match="not in the batch"):
        store.upsert("t1", [msg("m2")], replace={"m9"})
    with pytest.raises(InvalidMessage):
        store.upsert("t1", [{"id": "has space", "body": {}}])
    assert redis_contents(client) == before


def test_upsert_on_an_unknown_thread_raises_and_writes_nothing(
    store: HotStore, client: redis.Redis | redis.RedisCluster
) -> None:
    with pytest.raises(ThreadNotFound):
        store.upsert("nope", [msg("m1")])
    assert redis_contents(client) == {}


def test_upsert_dedups_after_flush_and_hydrate_through_threads(
    client: redis.Redis | redis.RedisCluster, tmp_path: Path
) -> None:
    threads = Threads(HotStore(client), FileColdStore(tmp_path))
    threads.open("t1", "new")
    threads.upsert("t1", [msg("m1"), msg("s1")], replace={"s1"})
    assert threads.flush("t1").evicted
    result = threads.upsert("t1", [msg("m1", "redelivered"), msg("s1", "v2")], replace={"s1"})
    assert (result.unchanged_ids, result.replaced_ids) == (("m1",), ("s1",))
    assert threads.load("t1") == [msg("m1"), msg("s1", "v2")]


def test_upsert_with_index_marks_the_activity_index(store: HotStore) -> None:
    store.create("t1")  # a bare create marks nothing
    store.upsert("t1", [msg("m1")], index=True)
    assert "t1" in {t for t, _ in store.active_threads()}
