"""A Redis rollback never makes the archive go backwards.

An asynchronous failover or a restore from an older RDB file can leave the hot copy
behind its archive. A flush whose hot copy does not descend from the archive must
not overwrite it: the two are merged by message id (the archive's records the hot
copy lacks come back, the hot copy's new records follow), the decision is recorded
(``inspect``, the flush status ``merged`` and its metric), and nothing that was ever
archived or acknowledged is lost. The rollback here is real: a redis-server is
stopped and started again on an RDB file saved before the later writes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import HotStore
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tasks.cli.ops.inspect import view_thread
from tasks.observability.metrics import FLUSHES, InstrumentedThreads
from tests.conftest import msg
from tests.servers import MotoServer, s3_client_for


class RollbackRedis:
    """A redis-server that can save an RDB file, stop, and start again on an older one."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server = EmbeddedRedis(data_dir=data_dir)
        self.port = self.server.port

    def start(self) -> None:
        self.server = EmbeddedRedis(port=self.port, data_dir=self.data_dir)
        self.server.start()

    def save(self, to: Path) -> None:
        client = self.server.client()
        try:
            client.save()  # synchronous: the file is complete when it returns
        finally:
            client.close()
        shutil.copy(self.data_dir / "dump.rdb", to)

    def roll_back_to(self, rdb: Path) -> None:
        self.server.stop()  # --save "": stopping writes nothing
        shutil.copy(rdb, self.data_dir / "dump.rdb")
        self.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def rollback(tmp_path: Path) -> Iterator[RollbackRedis]:
    server = RollbackRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["s3", "file"])
def cold_store(request: pytest.FixtureRequest, tmp_path: Path, s3_server: MotoServer) -> ColdStore:
    if request.param == "file":
        return FileColdStore(tmp_path / "cold")
    client = s3_client_for(s3_server.url)
    bucket = f"rollback-{tmp_path.name[-20:].lower().replace('_', '-')}"
    client.create_bucket(Bucket=bucket)
    return S3ColdStore(client, bucket)


def store_on(server: RollbackRedis, cold: ColdStore) -> Threads:
    return InstrumentedThreads(HotStore(server.server.client()), cold)


def archived_ids(cold: ColdStore, tid: str) -> list[str]:
    found = cold.read(tid)
    assert found is not None
    return list(found[0].ids)


def merges() -> float:
    return float(FLUSHES.labels("merged", "false")._value.get()) + float(
        FLUSHES.labels("merged", "true")._value.get()
    )


def test_a_flush_after_an_rdb_rollback_keeps_every_archived_message(
    rollback: RollbackRedis, cold_store: ColdStore, tmp_path: Path
) -> None:
    store = store_on(rollback, cold_store)
    store.open("t", "new")
    store.append("t", [msg("m1"), msg("m2")])
    store.flush("t", evict=False)
    rollback.save(tmp_path / "old.rdb")  # saved before messages 3-5 were archived
    store.append("t", [msg("m3"), msg("m4"), msg("m5")])
    store.flush("t", evict=False)
    assert archived_ids(cold_store, "t") == ["m1", "m2", "m3", "m4", "m5"]

    rollback.roll_back_to(tmp_path / "old.rdb")
    store = store_on(rollback, cold_store)
    assert [m["id"] for m in store.hot.load("t")] == ["m1", "m2"]  # the rollback is real
    before = merges()
    store.append("t", [msg("m6")])
    first = store.flush("t", evict=False)
    second = store.flush("t")
    expected = ["m1", "m2", "m3", "m4", "m5", "m6"]
    assert archived_ids(cold_store, "t") == expected
    assert first.status == "merged"
    assert merges() == before + 1
    assert second.evicted
    store.hydrate("t")
    assert [m["id"] for m in store.load("t")] == expected
    # the decision is visible where an operator looks
    merge = view_thread(store, "t").to_json()["last_merge"]
    assert merge["recovered_ids"] == ["m3", "m4", "m5"]
    assert merge["kept_ids"] == ["m6"]
    # the ledger is whole: none of them can be appended a second time
    assert store.append("t", [msg(i) for i in expected]).appended_ids == ()


def test_a_rolled_back_copy_whose_version_catches_up_is_not_evicted_as_unchanged(
    rollback: RollbackRedis, cold_store: ColdStore, tmp_path: Path
) -> None:
    store = store_on(rollback, cold_store)
    store.open("t", "new")
    store.append("t", [msg("m1")])
    store.flush("t", evict=False)
    rollback.save(tmp_path / "old.rdb")
    for i in (2, 3, 4):
        store.append("t", [msg(f"m{i}")])
    store.flush("t", evict=False)
    archive_version = store.hot.version("t")

    rollback.roll_back_to(tmp_path / "old.rdb")
    store = store_on(rollback, cold_store)
    i = 10
    while store.hot.version("t") < archive_version:  # the same version, other content
        store.append("t", [msg(f"m{i}")])
        i += 1
    store.flush("t")
    store.flush("t")
    kept = [f"m{n}" for n in range(10, i)]
    assert archived_ids(cold_store, "t") == ["m1", "m2", "m3", "m4", *kept]
    assert [m["id"] for m in store.load("t")] == ["m1", "m2", "m3", "m4", *kept]


@pytest.mark.parametrize("newer_evicts", [False, True], ids=["kept-hot", "evicted"])
def test_a_stale_flush_of_the_same_copy_adopts_the_newer_archive(
    rollback: RollbackRedis, cold_store: ColdStore, newer_evicts: bool
) -> None:
    """No rollback: a flush that lost the race to a newer flush of the same hot copy
    uploads nothing and merges nothing, also when that newer flush evicted the copy
    (then it is gone, which is no divergence either; found by the chaos soak, where a
    merge's clean-up then removed the archive)."""
    from tests.test_tiered_races import GatedColdStore, run_in_thread

    store = store_on(rollback, cold_store)
    store.open("t", "new")
    store.append("t", [msg("m1")])
    store.flush("t", evict=False)
    store.append("t", [msg("m2")])
    gated = GatedColdStore(cold_store, pause_after="write_bytes_before")
    slow = Threads(store.hot, gated)
    flush, outcome = run_in_thread(lambda: slow.flush("t", evict=False))
    assert gated.reached.wait(timeout=10)
    store.append("t", [msg("m3")])
    newer = store.flush("t", evict=newer_evicts)
    assert newer.evicted == newer_evicts
    before = merges()
    gated.release()
    flush.join(timeout=30)
    stale = outcome[0]
    assert not isinstance(stale, BaseException), stale
    assert (stale.status, stale.size_bytes, stale.etag) == ("unchanged", 0, newer.etag)
    assert merges() == before
    assert archived_ids(cold_store, "t") == ["m1", "m2", "m3"]
    assert [m["id"] for m in store.load("t")] == ["m1", "m2", "m3"]
