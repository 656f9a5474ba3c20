"""Races between flush, hydrate and appends, on real OS threads, repeated many times.

Each test runs against both cold stores (S3 over HTTP on moto's server, and
files). Where a race needs a precise interleaving, ``GatedColdStore`` pauses the
real cold store at one point (it delegates every call; nothing is faked).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import redis

from storage import HotStore, ThreadNotFound
from storage.cold import ColdStore, PartObject
from storage.embedded import EmbeddedRedis
from storage.snapshot import Snapshot
from storage.tiered import Threads
from tests.conftest import msg


class GatedColdStore:
    """Delegates to a real ColdStore; ``pause_after`` names a method ("read" or
    "write_bytes") whose next call blocks, after doing its real work, until
    ``release()``; ``reached`` is set when it blocks."""

    def __init__(self, inner: ColdStore, pause_after: str) -> None:
        self.inner = inner
        self.compression = inner.compression
        self.compression_level = inner.compression_level
        self.pause_after = pause_after
        self.reached = threading.Event()
        self._gate = threading.Event()
        self._armed = True

    def release(self) -> None:
        self._gate.set()

    def _maybe_pause(self, name: str) -> None:
        if self._armed and name == self.pause_after:
            self._armed = False
            self.reached.set()
            assert self._gate.wait(timeout=30), "gate never released"

    def read(self, thread_id: str) -> tuple[Snapshot, str] | None:
        found = self.inner.read(thread_id)
        self._maybe_pause("read")
        return found

    def head(self, thread_id: str) -> str | None:
        return self.inner.head(thread_id)

    def write(self, thread_id: str, snapshot: Snapshot, if_match: str | None) -> str:
        raise NotImplementedError("Threads uploads encoded bytes")

    def write_bytes(self, thread_id: str, data: bytes, if_match: str | None) -> str:
        self._maybe_pause("write_bytes_before")
        etag = self.inner.write_bytes(thread_id, data, if_match)
        self._maybe_pause("write_bytes")
        return etag

    def delete(self, thread_id: str) -> None:
        self.inner.delete(thread_id)

    def read_object(self, thread_id: str) -> tuple[bytes, str] | None:
        return self.inner.read_object(thread_id)

    def put_part(self, thread_id: str, name: str, data: bytes) -> None:
        self.inner.put_part(thread_id, name, data)

    def get_part(self, thread_id: str, name: str) -> bytes | None:
        return self.inner.get_part(thread_id, name)

    def delete_parts(self, thread_id: str, names: Iterable[str]) -> None:
        self.inner.delete_parts(thread_id, names)

    def list_parts(self, thread_id: str) -> list[PartObject]:
        return self.inner.list_parts(thread_id)


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def wrapper() -> None:
        try:
            outcome.append(target())
        except BaseException as exc:  # surfaced by the test
            outcome.append(exc)

    thread = threading.Thread(target=wrapper)
    thread.start()
    return thread, outcome


def archived_version(cold: ColdStore, tid: str) -> int:
    found = cold.read(tid)
    assert found is not None
    return found[0].version


# -- appends racing flush(evict=True) ----------------------------------------------------


@pytest.mark.slow
def test_flush_never_loses_appends_that_race_eviction(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, cold: ColdStore
) -> None:
    Threads(HotStore(redis_client), cold).open("race", "new")
    appenders, per_appender = 4, 150
    stop = threading.Event()
    evictions: list[int] = []
    errors: list[BaseException] = []

    def appender(index: int) -> None:
        client = redis_server.client()
        # a short pin, so that the flusher gets to evict between the pauses below
        threads = Threads(HotStore(client), cold, write_pin_ms=20)
        rng = random.Random(index)
        try:
            i = 0
            while i < per_appender:
                size = rng.randint(1, 3)
                batch = [msg(f"a{index}-{j:04d}") for j in range(i, min(i + size, per_appender))]
                threads.append("race", batch)
                i += size
                # mostly back to back, sometimes a pause long enough for a whole flush
                time.sleep(rng.choice((0, 0, 0.001, 0.06)))
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    def flusher() -> None:
        client = redis_server.client()
        threads = Threads(HotStore(client), cold)
        try:
            while not stop.is_set():
                if threads.flush("race").evicted:
                    evictions.append(1)
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    workers = [threading.Thread(target=appender, args=(i,)) for i in range(appenders)]
    flush_thread = threading.Thread(target=flusher)
    flush_thread.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    stop.set()
    flush_thread.join(timeout=60)
    assert not errors, errors

    final = Threads(HotStore(redis_client), cold)
    final.flush("race")
    final.hydrate("race")
    stored = [m["id"] for m in final.load("race")]
    assert len(stored) == len(set(stored)) == appenders * per_appender
    for index in range(appenders):  # each appender's order is kept
        own = [i for i in stored if i.startswith(f"a{index}-")]
        assert own == sorted(own)
    assert len(evictions) > 3, "the flusher never evicted: the race was not exercised"


# -- concurrent flushes of different versions ----------------------------------------------


def test_stale_flush_never_overwrites_a_newer_archive(threads: Threads, cold: ColdStore) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    first = threads.flush("t1", evict=False)
    threads.append("t1", [msg("m2")])  # version 3, archive holds 2
    gated = GatedColdStore(cold, pause_after="write_bytes_before")
    slow = Threads(threads.hot, gated)
    flush_thread, outcome = run_in_thread(lambda: slow.flush("t1"))
    assert gated.reached.wait(timeout=10)  # slow flush read version 3, not uploaded yet
    threads.append("t1", [msg("m3")])  # version 4
    newer = threads.flush("t1", evict=False)
    assert newer.version == 4
    gated.release()
    flush_thread.join(timeout=30)
    stale = outcome[0]
    assert not isinstance(stale, BaseException), stale
    # it lost the CAS, saw the newer archive and uploaded nothing; evicting is
    # then safe because the hot copy is exactly the archived version 4
    assert (stale.version, stale.size_bytes, stale.etag) == (4, 0, newer.etag)
    assert archived_version(cold, "t1") == 4
    assert first.etag != newer.etag
    assert [m["id"] for m in threads.load("t1")] == ["m1", "m2", "m3"]


@pytest.mark.slow
def test_concurrent_flushes_leave_the_archive_at_the_newest_version(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, cold: ColdStore
) -> None:
    Threads(HotStore(redis_client), cold).open("t1", "new")
    errors: list[BaseException] = []
    seen_versions: list[int] = []
    done = threading.Event()

    def flusher() -> None:
        client = redis_server.client()
        threads = Threads(HotStore(client), cold)
        try:
            while not done.is_set():
                threads.flush("t1", evict=False)
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.close()

    def watcher() -> None:
        while not done.is_set():
            found = cold.read("t1")
            if found is not None:
                seen_versions.append(found[0].version)

    workers = [threading.Thread(target=flusher) for _ in range(3)]
    workers.append(threading.Thread(target=watcher))
    for worker in workers:
        worker.start()
    appender = Threads(HotStore(redis_client), cold)
    for i in range(100):
        appender.append("t1", [msg(f"m{i:03d}")])
        time.sleep(0.003)
    time.sleep(0.05)
    done.set()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors, errors
    final = appender.flush("t1", evict=False)
    hot_version = appender.hot.version("t1")
    assert archived_version(cold, "t1") == hot_version == final.version
    assert seen_versions == sorted(seen_versions), "the archive went back in time"
    assert len(set(seen_versions)) > 5, "flushes did not overlap appends"


def test_flush_whose_upload_won_but_committed_last_keeps_the_archive(
    threads: Threads, cold: ColdStore
) -> None:
    """Two flushes of one thread (a redelivered flush task, an error-callback flush):
    the first uploads and pauses; the second loses its CAS, adopts the first's archive
    and evicts. The first then commits on an evicted thread: it must see the eviction
    of its own archive, not a deleted thread, and must not delete the only copy."""
    threads.open("t1", "new")
    threads.append("t1", [msg("m1"), msg("m2")])
    gated = GatedColdStore(cold, pause_after="write_bytes")
    first = Threads(threads.hot, gated)  # type: ignore[arg-type]
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(first.flush("t1")))
    worker.start()
    assert gated.reached.wait(timeout=30)
    second = threads.flush("t1")
    assert second.evicted
    gated.release()
    worker.join(timeout=30)
    assert len(outcome) == 1
    assert (outcome[0].status, outcome[0].evicted) == ("archived", True)
    assert cold.head("t1") is not None
    assert threads.hydrate("t1").status == "restored"
    assert [m["id"] for m in threads.load("t1")] == ["m1", "m2"]


def test_flush_that_crashed_before_commit_converges(threads: Threads, cold: ColdStore) -> None:
    """An upload whose commit never ran (a crash) is recognised by the next flush."""
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    cold.write("t1", threads.hot.snapshot("t1"), None)  # uploaded, but hot never recorded it
    result = threads.flush("t1")
    assert (result.status, result.size_bytes, result.evicted) == ("unchanged", 0, True)
    assert [m["id"] for m in threads.load("t1")] == ["m1"]


# -- hydrate races ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [20, 3000])  # inline restore and staged restore
def test_concurrent_hydrates_restore_once_with_identical_result(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    cold: ColdStore,
    size: int,
) -> None:
    setup = Threads(HotStore(redis_client), cold, restore_chunk=1000)
    setup.open("t1", "new", state={"k": "v"})
    for start in range(0, size, 1000):
        setup.append("t1", [msg(f"m{i:05d}") for i in range(start, min(start + 1000, size))])
    expected = setup.hot.load("t1")
    rounds = 8 if size > 1000 else 25
    for _ in range(rounds):
        assert setup.flush("t1").evicted
        barrier = threading.Barrier(4)
        clients = [redis_server.client() for _ in range(4)]

        def hydrate(client: redis.Redis, barrier: threading.Barrier = barrier) -> str:
            barrier.wait(timeout=10)
            return Threads(HotStore(client), cold, restore_chunk=1000).hydrate("t1").status

        runs = [run_in_thread(lambda c=c: hydrate(c)) for c in clients]  # type: ignore[misc]
        for thread, _ in runs:
            thread.join(timeout=60)
        statuses = sorted(outcome[0] for _, outcome in runs)
        for client in clients:
            client.close()
        assert statuses == ["hot", "hot", "hot", "restored"]
        assert setup.hot.load("t1") == expected
        assert setup.hot.load_state("t1") == {"k": "v"}
        assert redis_client.keys("*staging*") == []


def test_stale_hydrate_never_restores_an_older_archive(threads: Threads, cold: ColdStore) -> None:
    threads.write_pin_ms = 0  # the turn below flushes right after its hydrate
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    threads.flush("t1")
    gated = GatedColdStore(cold, pause_after="read")
    slow = Threads(threads.hot, gated)
    hydrate_thread, outcome = run_in_thread(lambda: slow.hydrate("t1"))
    assert gated.reached.wait(timeout=10)  # the slow hydrate holds the old archive
    # meanwhile a whole turn runs: hydrate, append, flush and evict
    threads.append("t1", [msg("m2")])
    assert threads.flush("t1").evicted
    gated.release()
    hydrate_thread.join(timeout=30)
    assert not isinstance(outcome[0], BaseException), outcome[0]
    assert outcome[0].status == "restored"
    assert [m["id"] for m in threads.hot.load("t1")] == ["m1", "m2"]


# -- forks racing evictions of their source ---------------------------------------------


@pytest.mark.slow
def test_forks_never_fail_while_flushes_keep_evicting_their_source(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, cold: ColdStore
) -> None:
    setup = Threads(HotStore(redis_client), cold)
    setup.open("src", "new")
    setup.append("src", [msg(f"m{i}") for i in range(20)])
    expected = setup.hot.load("src")
    stop = threading.Event()
    evictions: list[int] = []

    def flusher() -> None:
        client = redis_server.client()
        try:
            threads = Threads(HotStore(client), cold)
            while not stop.is_set():
                if threads.flush("src").evicted:
                    evictions.append(1)
        finally:
            client.close()

    flush_thread, flush_outcome = run_in_thread(flusher)
    # a short pin, so that evictions land between the forks' hydrates and forks
    forker = Threads(HotStore(redis_client), cold, write_pin_ms=2)
    failures: list[ThreadNotFound] = []
    forks = 0
    try:
        deadline = time.monotonic() + 60
        while (forks < 40 or len(evictions) < 20) and time.monotonic() < deadline:
            try:
                status = forker.open(f"f{forks}", "fork", source="src")
            except ThreadNotFound as exc:
                failures.append(exc)
            else:
                assert status == "forked"
                assert forker.hot.load(f"f{forks}") == expected
            forks += 1
    finally:
        stop.set()
        flush_thread.join(timeout=30)
    assert flush_outcome == [None]
    assert failures == []
    assert len(evictions) >= 20, "the flusher never raced the forks"
