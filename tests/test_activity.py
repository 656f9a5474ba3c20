"""The activity index: a hot thread is always findable by the idle flusher.

The interleavings that used to lose a thread from the index are replayed
deterministically (a hook runs the racing calls at the exact point), then once
more on real OS threads. These tests also run on the Redis Cluster
(tests/test_cluster.py), where the index's shards live in other slots than the
threads they list.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import redis

from storage import HotStore
from storage.cold import ColdStore
from storage.tiered import Threads
from tests.conftest import backdate, msg


def indexed(hot: HotStore) -> dict[str, int]:
    """Every entry of the namespace's activity index."""
    return dict(hot.active_threads(limit=100_000))


def reset_command_stats(client: redis.Redis | redis.RedisCluster) -> None:
    if isinstance(client, redis.RedisCluster):
        client.config_resetstat(target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        client.config_resetstat()


def commands_called(client: redis.Redis | redis.RedisCluster, command: str) -> int:
    """How often ``command`` ran since ``reset_command_stats`` (over every primary)."""
    if isinstance(client, redis.RedisCluster):
        per_node = client.info("commandstats", target_nodes=redis.RedisCluster.PRIMARIES)
        nodes = list(per_node.values())
    else:
        nodes = [client.info("commandstats")]
    return sum(int(node.get(f"cmdstat_{command}", {}).get("calls", 0)) for node in nodes)


# -- forget must not erase a thread that came back -------------------------------------


class RacingForget(HotStore):
    """A HotStore whose first ``forget_activity`` lets ``race`` run first: the flush
    evicted the thread, and another worker hydrates and appends before the
    flush's removal from the index reaches Redis."""

    race: Any = None

    def forget_activity(self, thread_id: str) -> None:
        race, self.race = self.race, None
        if race is not None:
            race()
        super().forget_activity(thread_id)


def test_forget_after_eviction_keeps_a_thread_another_worker_brought_back(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    hot = RacingForget(redis_client)
    threads = Threads(hot, cold)
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])

    def other_worker() -> None:
        assert threads.hydrate("t1").status == "restored"
        threads.append("t1", [msg("m2")])

    hot.race = other_worker
    assert threads.flush("t1").evicted
    assert hot.exists("t1")
    assert "t1" in indexed(hot)
    assert threads.flush_idle(0).evicted == ("t1",)  # so the idle flusher finds it
    assert [m["id"] for m in threads.load("t1")] == ["m1", "m2"]


def test_forget_of_a_thread_really_gone_removes_it(threads: Threads) -> None:
    threads.open("t1", "new")
    threads.flush("t1")
    threads.hot.forget_activity("t1")
    assert indexed(threads.hot) == {}


def test_marks_never_move_a_score_back(hot: HotStore) -> None:
    hot.create("t1")
    hot.mark_active("t1", at_ms=5_000)
    hot.mark_active("t1", at_ms=1_000)  # a late, slower worker
    assert indexed(hot) == {"t1": 5_000}
    hot.mark_active("t1", at_ms=9_000)
    assert indexed(hot) == {"t1": 9_000}


# -- the reconciler finds what a crash left out ---------------------------------------


def test_a_write_whose_index_entry_was_lost_is_found_by_the_reconciler(threads: Threads) -> None:
    hot = threads.hot
    crashed = ["crashed", "user@example.com/chat {1}", "%63rashed"]
    for thread_id in crashed:  # a worker died between the write and its index entry
        hot.create(thread_id)
        hot.append(thread_id, [msg("m1")])
    threads.open("fine", "new")
    assert set(indexed(hot)) == {"fine"}
    report = hot.reconcile_activity(max_keys=1_000)
    assert (report.reindexed, report.wrapped) == (3, True)
    assert report.scanned >= 4
    assert set(indexed(hot)) == {*crashed, "fine"}
    assert indexed(hot)["crashed"] == hot.info("crashed").updated_ms
    assert hot.reconcile_activity(max_keys=1_000).reindexed == 0
    assert set(crashed) <= set(threads.flush_idle(0).evicted)


def test_reconciler_work_per_run_is_bounded_and_resumes_from_its_cursor(hot: HotStore) -> None:
    for i in range(300):
        hot.create(f"t{i}")
    runs, reindexed = 0, 0
    while True:
        report = hot.reconcile_activity(max_keys=50)
        runs, reindexed = runs + 1, reindexed + report.reindexed
        assert report.scanned <= 200  # SCAN's COUNT is a hint: a little over the bound
        if report.wrapped:
            break
        assert runs < 100, "the reconciler never finished a pass"
    assert runs > 1
    assert reindexed == 300
    assert len(indexed(hot)) == 300


def test_reconciler_migrates_the_legacy_single_index_and_drops_it(
    hot: HotStore, redis_client: redis.Redis
) -> None:
    hot.create("old-1")
    hot.create("old-2")
    legacy = f"{hot.namespace}:activity"
    redis_client.zadd(legacy, {"old-1": 1_000, "old-2": 2_000, "gone": 3_000})
    hot.reconcile_activity(max_keys=1_000)
    assert not redis_client.exists(legacy)
    assert indexed(hot) == {"old-1": 1_000, "old-2": 2_000}


# -- sharding and the due flag --------------------------------------------------------


def test_index_is_sharded_by_thread_id(hot: HotStore) -> None:
    layout = hot.layout
    shards = layout.activity_shards
    assert len(shards) == 64
    assert len(set(shards)) == 64
    tids = [f"t{i}" for i in range(200)]
    assert len({layout.activity_of(t) for t in tids}) > 32
    assert all(layout.activity_of(t) in shards for t in tids)
    assert layout.activity_of("t1") == layout.activity_of("t1")
    for tid in tids[:3]:
        hot.create(tid)
        hot.mark_active(tid, at_ms=1_000)
        assert hot.redis.zscore(layout.activity_of(tid), tid) == 1_000
    assert hot.activity_count() == 3


def test_most_appends_of_a_burst_do_not_touch_the_index(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    threads = Threads(HotStore(redis_client, activity_refresh_ms=60_000), cold)
    threads.open("t1", "new")
    reset_command_stats(redis_client)
    results = [threads.append("t1", [msg(f"m{i}")]) for i in range(50)]
    assert commands_called(redis_client, "zadd") == 1
    assert [r.index_due for r in results] == [True] + [False] * 49
    assert "t1" in indexed(threads.hot)


def test_an_append_is_due_again_once_the_refresh_interval_passed(redis_client: redis.Redis) -> None:
    hot = HotStore(redis_client, activity_refresh_ms=1)
    hot.create("t1")
    first = hot.append("t1", [msg("m1")])
    deadline = time.monotonic() + 5
    while True:
        later = hot.append("t1", [msg("m1")])
        if later.index_due or time.monotonic() > deadline:
            break
    assert first.index_due
    assert later.index_due


def test_idle_flush_keeps_a_thread_written_after_its_index_entry(threads: Threads) -> None:
    """The index may lag by up to ``activity_refresh_ms``: the real last write decides."""
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    threads.hot.mark_active("t1", at_ms=1)  # GT: no effect; force an old entry instead
    backdate(threads.hot, "t1", 1_000, meta=False)
    report = threads.flush_idle(60)
    assert (report.candidates, report.evicted, report.kept) == (1, (), ("t1",))
    assert threads.hot.exists("t1")
    assert indexed(threads.hot)["t1"] == threads.hot.info("t1").updated_ms  # re-marked


# -- flush_idle: failures, the lock, concurrency --------------------------------------


class FailingFlush(Threads):
    """Threads whose flush of the ids in ``failing`` raises a typed cold-tier error."""

    failing: frozenset[str] = frozenset()

    def flush(self, thread_id: str, **kwargs: Any) -> Any:
        if thread_id in self.failing:
            from storage.errors import ColdStoreUnavailable

            raise ColdStoreUnavailable(f"S3 down for {thread_id!r}")
        return super().flush(thread_id, **kwargs)


def test_a_failing_thread_is_pushed_back_and_does_not_block_the_others(
    hot: HotStore, cold: ColdStore
) -> None:
    threads = FailingFlush(hot, cold)
    threads.failing = frozenset({"bad"})
    for i, tid in enumerate(("bad", "good-1", "good-2")):
        threads.open(tid, "new")
        backdate(hot, tid, 1_000 + i)  # "bad" is the oldest: the head of the index
    first = threads.flush_idle(60, limit=1)
    assert (first.evicted, len(first.failed)) == ((), 1)
    assert "S3 down" in first.failed[0]
    assert threads.flush_idle(60, limit=1).evicted == ("good-1",)
    assert threads.flush_idle(60, limit=1).evicted == ("good-2",)
    assert threads.flush_idle(60).candidates == 0  # "bad" waits out its backoff
    assert hot.exists("bad")
    assert indexed(hot)["bad"] > time.time() * 1000 - 60_000


class SlowFlush(Threads):
    """Threads whose first flush waits on ``gate`` (after setting ``inside``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inside, self.gate = threading.Event(), threading.Event()

    def flush(self, thread_id: str, **kwargs: Any) -> Any:
        if not self.inside.is_set():
            self.inside.set()
            assert self.gate.wait(timeout=30)
        return super().flush(thread_id, **kwargs)


def test_two_idle_flushes_at_once_the_second_does_nothing(hot: HotStore, cold: ColdStore) -> None:
    threads = SlowFlush(hot, cold)
    for tid in ("a", "b", "c"):
        threads.open(tid, "new")
        backdate(hot, tid, 1_000)
    reports: list[Any] = []
    first = threading.Thread(target=lambda: reports.append(threads.flush_idle(60, concurrency=1)))
    first.start()
    try:
        assert threads.inside.wait(timeout=30)
        second = threads.flush_idle(60)
        assert second.locked
        assert (second.candidates, second.evicted) == (0, ())
    finally:
        threads.gate.set()
        first.join(timeout=30)
    assert sorted(reports[0].evicted) == ["a", "b", "c"]
    assert not reports[0].locked
    assert threads.flush_idle(60).candidates == 0  # the lock was released


def test_idle_flush_runs_flushes_concurrently(hot: HotStore, cold: ColdStore) -> None:
    threads = SlowFlush(hot, cold)
    threads.inside.set()  # no gate: count the flushes in flight instead
    in_flight, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()
    real_flush = Threads.flush

    def flush(thread_id: str, **kwargs: Any) -> Any:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            if peak[0] >= 4:
                release.set()
        release.wait(timeout=10)
        try:
            return real_flush(threads, thread_id, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    threads.flush = flush  # type: ignore[method-assign]
    for i in range(8):
        threads.open(f"t{i}", "new")
        backdate(hot, f"t{i}", 1_000)
    report = threads.flush_idle(60, concurrency=4)
    assert len(report.evicted) == 8
    assert peak[0] == 4


# -- on real threads -----------------------------------------------------------------


def test_every_hot_thread_stays_in_the_index_under_racing_appends_hydrates_and_idle_flushes(
    hot: HotStore, cold: ColdStore
) -> None:
    threads = Threads(hot, cold, write_pin_ms=0)
    tids = [f"r{i}" for i in range(6)]
    for tid in tids:
        threads.open(tid, "new")
    stop = threading.Event()
    errors: list[BaseException] = []

    counts = {"append": 0, "restored": 0, "flush_idle": 0}

    def forever(step: Any) -> Any:
        def run() -> None:
            rng = random.Random()
            n = 0
            while not stop.is_set():
                try:
                    step(rng, n)
                except BaseException as exc:  # surfaced below
                    errors.append(exc)
                    return
                n += 1

        return threading.Thread(target=run)

    def append(name: str) -> Any:
        def step(rng: random.Random, n: int) -> None:
            threads.append(rng.choice(tids), [msg(f"{name}-{n}")])
            counts["append"] += 1
            # a thread written every few ms is never idle enough to evict (a flush now
            # takes a part and a manifest upload): leave gaps for evictions to land
            stop.wait(rng.uniform(0, 0.01))

        return forever(step)

    def hydrate(rng: random.Random, n: int) -> None:
        if threads.hydrate(rng.choice(tids)).status == "restored":
            counts["restored"] += 1

    def flush_idle(rng: random.Random, n: int) -> None:
        threads.flush_idle(0)
        counts["flush_idle"] += 1

    workers = [
        append("a"),
        append("b"),
        forever(hydrate),
        forever(flush_idle),
        forever(lambda rng, n: threads.flush(rng.choice(tids))),
    ]
    for worker in workers:
        worker.start()
    enough = {"append": 200, "restored": 20, "flush_idle": 40}
    deadline = time.monotonic() + 15
    while any(counts[k] < n for k, n in enough.items()) and not errors:
        if time.monotonic() > deadline:
            break
        stop.wait(0.05)
    stop.set()
    for worker in workers:
        worker.join(timeout=60)
    assert errors == []
    assert counts["restored"] >= 5, f"the race hardly ran: {counts}"
    hot_now = {tid for tid in tids if hot.exists(tid)}
    missing = hot_now - set(indexed(hot))
    assert missing == set(), f"hot threads the idle flusher cannot find: {sorted(missing)}"
