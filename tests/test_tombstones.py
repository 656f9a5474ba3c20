"""Deletes and prunes cannot be undone by a hydrate that raced them, and a prune
never loses a live thread.

``GatedColdStore`` pauses the real cold store at one point so each interleaving
runs deterministically; the race tests run the same operations on real threads.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from storage import HotStore
from storage.cold import ColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tasks.cli.ops.retention import prune_cold
from tests.conftest import msg
from tests.test_tiered_races import GatedColdStore, run_in_thread

FUTURE = datetime.now(UTC) + timedelta(days=1)
"""``prune_cold(now=FUTURE, older_than_seconds=0)`` treats every archive as old."""


def archived_thread(threads: Threads, tid: str, n: int = 3) -> None:
    threads.open(tid, "new")
    threads.append(tid, [msg(f"{tid}-m{i}") for i in range(n)])
    assert threads.flush(tid).evicted


def in_no_tier(threads: Threads, tid: str) -> bool:
    return not threads.hot.exists(tid) and threads.cold.head(tid) is None


def test_a_hydrate_that_read_the_archive_before_a_delete_does_not_restore_it(
    threads: Threads, cold: ColdStore
) -> None:
    archived_thread(threads, "t")
    gated = GatedColdStore(cold, pause_after="read")
    slow = Threads(threads.hot, gated)
    hydrate, outcome = run_in_thread(lambda: slow.hydrate("t"))
    assert gated.reached.wait(timeout=10)  # the hydrate holds the archive's content
    assert threads.delete("t")
    gated.release()
    hydrate.join(timeout=30)
    assert not isinstance(outcome[0], BaseException), outcome
    assert outcome[0].status == "absent"
    assert in_no_tier(threads, "t")
    # the id can be used again, and the new thread is restored normally
    threads.open("t", "new")
    threads.append("t", [msg("fresh")])
    threads.flush("t")
    assert threads.hydrate("t").status == "restored"
    assert [m["id"] for m in threads.load("t")] == ["fresh"]


def test_a_flush_that_read_before_a_delete_does_not_resurrect_the_thread(
    threads: Threads, cold: ColdStore
) -> None:
    threads.open("t", "new")
    threads.append("t", [msg("m1")])
    gated = GatedColdStore(cold, pause_after="write_bytes_before")
    slow = Threads(threads.hot, gated)
    flush, outcome = run_in_thread(lambda: slow.flush("t"))
    assert gated.reached.wait(timeout=10)  # read the thread, not uploaded yet
    threads.delete("t")
    gated.release()
    flush.join(timeout=30)
    assert not isinstance(outcome[0], BaseException), outcome
    assert in_no_tier(threads, "t")
    assert threads.hydrate("t").status == "absent"


class CountingWrites(GatedColdStore):
    """``GatedColdStore`` that counts the uploads that went through."""

    def __init__(self, inner: ColdStore, pause_after: str) -> None:
        super().__init__(inner, pause_after)
        self.uploads = 0

    def write_bytes(self, thread_id: str, data: bytes, if_match: str | None) -> str:
        etag = super().write_bytes(thread_id, data, if_match)
        self.uploads += 1
        return etag


def test_a_flush_that_loses_its_cas_to_a_delete_uploads_nothing(
    threads: Threads, cold: ColdStore
) -> None:
    threads.open("t", "new")
    threads.append("t", [msg("m1")])
    threads.flush("t", evict=False)  # archived: the next flush replaces it by CAS
    threads.append("t", [msg("m2")])
    gated = CountingWrites(cold, pause_after="write_bytes_before")
    slow = Threads(threads.hot, gated)
    flush, outcome = run_in_thread(lambda: slow.flush("t"))
    assert gated.reached.wait(timeout=10)
    threads.delete("t")  # both tiers, while the flush holds the thread's content
    gated.release()
    flush.join(timeout=30)
    assert not isinstance(outcome[0], BaseException), outcome
    assert outcome[0].status == "absent"
    assert gated.uploads == 0  # the archive it lost to is gone: nothing is re-created
    assert in_no_tier(threads, "t")


def short_marker_threads(client: redis.Redis, cold: ColdStore) -> Threads:
    """Eviction markers that expire in a second, so prune treats evicted threads as
    unused without a test waiting an hour (the default marker TTL)."""
    return Threads(HotStore(client, archive_marker_ttl_seconds=1), cold)


def wait_marker_gone(threads: Threads, tid: str) -> None:
    keys = threads.hot.keys(tid)
    deadline = time.monotonic() + 10
    while threads.hot.redis.exists(keys.archived):
        assert time.monotonic() < deadline, "the eviction marker never expired"
        time.sleep(0.05)


def test_a_hydrate_that_read_the_archive_before_a_prune_does_not_restore_it(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    threads = short_marker_threads(redis_client, cold)
    archived_thread(threads, "old")
    wait_marker_gone(threads, "old")
    gated = GatedColdStore(cold, pause_after="read")
    slow = Threads(threads.hot, gated)
    hydrate, outcome = run_in_thread(lambda: slow.hydrate("old"))
    assert gated.reached.wait(timeout=10)
    report = prune_cold(threads, 0, now=FUTURE)
    assert [item.thread_id for item in report.deleted] == ["old"]
    gated.release()
    hydrate.join(timeout=30)
    assert not isinstance(outcome[0], BaseException), outcome
    assert outcome[0].status == "absent"
    assert in_no_tier(threads, "old")


class HydrateBeforeDelete:
    """A cold store whose ``delete`` first lets a hydrate of the thread run to the end:
    the interleaving prune-checks → hydrate restores → prune deletes the archive."""

    def __init__(self, inner: ColdStore, hydrate: threading.Thread) -> None:
        self.inner = inner
        self.compression = inner.compression
        self.compression_level = inner.compression_level
        self.hydrate = hydrate

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def delete(self, thread_id: str) -> None:
        self.hydrate.start()
        self.hydrate.join(timeout=30)
        self.inner.delete(thread_id)


def test_a_prune_never_loses_a_thread_hydrated_in_the_middle_of_it(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    threads = short_marker_threads(redis_client, cold)
    archived_thread(threads, "live")
    wait_marker_gone(threads, "live")
    hydrated: list[str] = []
    hydrate = threading.Thread(target=lambda: hydrated.append(threads.hydrate("live").status))
    pruning = Threads(threads.hot, HydrateBeforeDelete(cold, hydrate))  # type: ignore[arg-type]
    prune_cold(pruning, 0, now=FUTURE)
    assert hydrated, "the hydrate never ran"
    # Whatever the prune decided, the thread is either gone from both tiers (pruned,
    # and the hydrate said so) or kept whole; never hot without its archive, which
    # the next flush would evict as "unchanged" and lose.
    threads.flush("live")
    if hydrated == ["absent"]:
        assert in_no_tier(threads, "live")
    else:
        assert [m["id"] for m in threads.load("live")] == [f"live-m{i}" for i in range(3)]


@pytest.mark.slow
def test_deletes_racing_hydrates_and_appends_never_bring_a_thread_back(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, cold: ColdStore
) -> None:
    rounds = 40
    errors: list[BaseException] = []
    for r in range(rounds):
        tid = f"race-{r}"
        archived_thread(Threads(HotStore(redis_client), cold), tid, n=2)
        start = threading.Barrier(3)

        def hydrator(tid: str = tid, start: threading.Barrier = start) -> None:
            client = redis_server.client()
            try:
                start.wait()
                for _ in range(5):
                    Threads(HotStore(client), cold).hydrate(tid)
            except BaseException as exc:
                errors.append(exc)
            finally:
                client.close()

        def deleter(tid: str = tid, start: threading.Barrier = start) -> None:
            client = redis_server.client()
            try:
                start.wait()
                Threads(HotStore(client), cold).delete(tid)
            except BaseException as exc:
                errors.append(exc)
            finally:
                client.close()

        workers = [threading.Thread(target=f) for f in (hydrator, hydrator, deleter)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        store = Threads(HotStore(redis_client), cold)
        store.flush(tid)
        assert store.hydrate(tid).status == "absent", f"round {r}: the deleted thread came back"
        assert in_no_tier(store, tid)
    assert not errors, errors
