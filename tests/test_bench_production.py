"""bench.production measures what it says: its byte counters count exactly what the
cold tier wrote, and its turn ends with the thread hot (or evicted) and unleased."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import FileWriteCounter, S3PutCounter, message
from bench.production import turn
from storage import HotStore
from storage.cold import FileColdStore, S3ColdStore
from storage.tiered import Threads


def _objects(client: Any, bucket: str) -> dict[str, tuple[str, int]]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["Size"]) for o in listed}


def test_s3_put_counter_counts_every_byte_the_flushes_upload(
    hot: HotStore, s3_bucket: tuple[Any, str]
) -> None:
    client, bucket = s3_bucket
    counter = S3PutCounter(client)
    threads = Threads(hot, S3ColdStore(client, bucket))
    threads.open("t", "new")
    before: dict[str, tuple[str, int]] = {}
    for k in range(3):
        counted = counter.total
        threads.append("t", [message(n) for n in range(4 * k, 4 * k + 4)])
        assert threads.flush("t", evict=False).status == "archived"
        after = _objects(client, bucket)
        written = sum(
            size for key, (etag, size) in after.items() if before.get(key) != (etag, size)
        )
        assert counter.total - counted == written > 0
        before = after
    counted = counter.total
    assert threads.flush("t", evict=False).status == "unchanged"
    assert counter.total == counted


def test_file_write_counter_counts_new_and_replaced_files_once(
    hot: HotStore, tmp_path: Path
) -> None:
    root = tmp_path / "cold"
    root.mkdir()
    counter = FileWriteCounter(root)
    threads = Threads(hot, FileColdStore(root))
    threads.open("t", "new")
    for k in range(3):
        threads.append("t", [message(n) for n in range(4 * k, 4 * k + 4)])
        flushed = threads.flush("t", evict=False)
        assert counter.delta() >= flushed.size_bytes > 0
    assert threads.flush("t", evict=False).status == "unchanged"
    assert counter.delta() == 0
    (root / "extra").write_bytes(b"x" * 10)
    assert counter.delta() == 10
    assert counter.delta() == 0


def test_turn_keeps_the_thread_hot_or_evicts_it_and_always_releases_the_lease(
    hot: HotStore, tmp_path: Path
) -> None:
    threads = Threads(hot, FileColdStore(tmp_path / "cold"))
    threads.open("t", "new")
    turn(threads, "t", "turn-1", [message(0), message(1)], evict=False)
    assert hot.exists("t")
    assert hot.info("t").lease_owner is None
    turn(threads, "t", "turn-2", [message(2), message(3), message(4)], evict=True)
    assert not hot.exists("t")
    turn(threads, "t", "turn-3", [message(5), message(6)], evict=False)
    assert [m["id"] for m in threads.load("t")] == [message(n)["id"] for n in range(7)]
    assert hot.info("t").lease_owner is None
