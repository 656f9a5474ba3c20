"""The hot-tier and tiering conformance suites on a real Redis Cluster (three
masters, redis-py's ``RedisCluster``), and what only a cluster has: forks
between threads in different slots, and one slot per thread.

The suites are not copied: their test functions are collected here as well,
and the ``redis_client`` / ``redis_server`` fixtures below (which override the
single-node ones of conftest.py for this module) make them run on the cluster.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from redis.crc import key_slot

import tests.test_activity
import tests.test_hot_store
import tests.test_tiered
import tests.test_tiered_races
from storage import HotStore, InvalidMessage, ThreadExists, ThreadNotFound
from storage.cold import FileColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tests.cluster import RedisClusterServer
from tests.conftest import msg, redis_contents

pytestmark = pytest.mark.cluster

NOT_ON_CLUSTER = {
    # builds its own client from a single-node EmbeddedRedis; the cluster
    # version is test_cluster_client_with_decode_responses below
    "test_works_with_decode_responses_client",
}


def run_suite_here(module: ModuleType) -> None:
    """Collect ``module``'s tests in this module too, where they run on the cluster."""
    for name, value in vars(module).items():
        if name.startswith("test_") and callable(value) and name not in NOT_ON_CLUSTER:
            globals()[name] = value


run_suite_here(tests.test_hot_store)
run_suite_here(tests.test_tiered)
run_suite_here(tests.test_tiered_races)
run_suite_here(tests.test_activity)


@pytest.fixture
def redis_client(cluster_client: redis.RedisCluster) -> redis.RedisCluster:
    return cluster_client


@pytest.fixture
def redis_server(redis_cluster: RedisClusterServer) -> RedisClusterServer:
    """Tests that open their own clients (``redis_server.client()``) get cluster clients."""
    return redis_cluster


# -- helpers -------------------------------------------------------------------------


def slot_of(hot: HotStore, thread_id: str) -> int:
    return key_slot(hot.keys(thread_id).meta.encode())


def node_of(client: redis.RedisCluster, hot: HotStore, thread_id: str) -> str:
    node = client.get_node_from_key(hot.keys(thread_id).meta)
    return f"{node.host}:{node.port}"


def on_other_nodes(client: redis.RedisCluster, hot: HotStore, *prefixes: str) -> list[str]:
    """One thread id per prefix (``prefix-<n>``), each served by a different primary."""
    chosen: list[str] = []
    for prefix in prefixes:
        for n in itertools.count():
            tid = f"{prefix}-{n}"
            if all(node_of(client, hot, tid) != node_of(client, hot, c) for c in chosen):
                chosen.append(tid)
                break
    return chosen


def same_slot_as(hot: HotStore, thread_id: str, prefix: str) -> str:
    """Another thread id whose keys hash to the same slot as ``thread_id``'s."""
    target = slot_of(hot, thread_id)
    return next(
        f"{prefix}-{n}" for n in itertools.count() if slot_of(hot, f"{prefix}-{n}") == target
    )


def ids_of(records: list[Any]) -> list[str]:
    return [r["id"] for r in records]


@pytest.fixture
def pair(cluster_client: redis.RedisCluster, hot: HotStore) -> tuple[str, str]:
    """A source and a destination thread id on different primaries (so different slots)."""
    src, dst = on_other_nodes(cluster_client, hot, "src", "dst")
    assert slot_of(hot, src) != slot_of(hot, dst)
    return src, dst


# -- one slot per thread ---------------------------------------------------------------


def test_every_key_of_a_thread_lives_in_one_slot_on_one_node(
    redis_cluster: RedisClusterServer, cluster_client: redis.RedisCluster, tmp_path: Path
) -> None:
    threads = Threads(HotStore(cluster_client), FileColdStore(tmp_path))
    threads.open("t1", "new", state={"a": 1})
    threads.append("t1", [msg("m1"), msg("m2")])
    threads.replace_all("t1", [msg("summary")])  # a retired id in the ledger
    threads.acquire_lease("t1", "turn-1", 60_000)
    threads.flush("t1", evict=False, release_owner="turn-1")  # a finished turn
    threads.acquire_lease("t1", "turn-2", 60_000)
    seen: set[bytes] = set()
    for port in redis_cluster.ports:
        node = redis_cluster.node_client(port)
        try:
            found = set(node.keys("*{t1}*"))
            assert not (found and seen), "the thread's keys are spread over two nodes"
            seen |= found
            slots = {node.execute_command("CLUSTER KEYSLOT", key) for key in found}
            assert len(slots) <= 1
        finally:
            node.close()
    keys = threads.hot.keys("t1")
    assert {k.encode() for k in (keys.meta, keys.msgs, keys.ids, keys.state, keys.lease)} <= seen
    assert keys.turns.encode() in seen
    threads.release_lease("t1", "turn-2")
    threads.flush("t1")  # evicted: the archive marker and the finished turns are left
    left = {keys.archived.encode(), keys.turns.encode()}
    assert set(cluster_client.keys("*{t1}*")) == left
    assert {key_slot(key) for key in left} == {slot_of(threads.hot, "t1")}


@pytest.mark.parametrize(
    "thread_id", ["user@example.com/chat 1", "{t1}", "}{", "a}b{c", "\u00e9" * 250]
)
def test_any_thread_id_keeps_its_keys_in_one_slot_and_forks_across_slots(
    redis_cluster: RedisClusterServer,
    cluster_client: redis.RedisCluster,
    tmp_path: Path,
    thread_id: str,
) -> None:
    """Braces in an id can neither split its keys over slots nor pull them into
    another thread's slot (``{t1}`` is not t1); a fork to another slot copies it."""
    threads = Threads(HotStore(cluster_client), FileColdStore(tmp_path))
    threads.open("t1", "new")
    threads.open(thread_id, "new", state={"a": 1})
    threads.append(thread_id, [msg("m1"), msg("m2")])
    keys = threads.hot.keys(thread_id)
    written = set(cluster_client.keys(keys.meta[: -len("meta")] + "*"))
    assert {keys.meta.encode(), keys.msgs.encode(), keys.ids.encode()} <= written
    assert len({key_slot(k) for k in written}) == 1
    assert threads.load("t1") == []
    target = next(
        f"{thread_id}/fork {n}"
        for n in itertools.count()
        if slot_of(threads.hot, f"{thread_id}/fork {n}") != slot_of(threads.hot, thread_id)
    )
    threads.hot.fork(thread_id, target)
    assert ids_of(threads.load(target)) == ["m1", "m2"]
    assert threads.hot.info(target).parent == thread_id
    threads.flush(thread_id)
    assert not threads.hot.exists(thread_id)
    threads.hydrate(thread_id)
    assert ids_of(threads.load(thread_id)) == ["m1", "m2"]


def test_fork_within_one_slot_runs_as_one_script(
    cluster_client: redis.RedisCluster, hot: HotStore
) -> None:
    dst = same_slot_as(hot, "src", "dst")
    hot.create("src", state={"s": 1})
    hot.append("src", [msg("m1"), msg("m2")])
    result = hot.fork("src", dst, up_to_id="m1")
    assert (result.created, result.length, result.version) == (True, 1, 1)
    assert ids_of(hot.load(dst)) == ["m1"]
    assert hot.load_state(dst) == {"s": 1}
    assert hot.fork("src", dst, up_to_id="m1").created is False


# -- fork across slots ------------------------------------------------------------------


def test_fork_across_slots_copies_records_ledger_state_and_parent(
    hot: HotStore, pair: tuple[str, str]
) -> None:
    src, dst = pair
    hot.create(src, state={"plan": ["x"]})
    hot.append(src, [msg("m1"), msg("m2"), msg("m3")])
    result = hot.fork(src, dst)
    assert (result.created, result.length, result.version) == (True, 3, 1)
    assert hot.load(dst) == hot.load(src)
    assert hot.load_state(dst) == {"plan": ["x"]}
    info = hot.info(dst)
    assert (info.parent, info.fork_point, info.version) == (src, None, 1)
    assert info.epoch
    assert info.epoch != hot.info(src).epoch
    assert info.ttl_ms is not None
    assert hot.append(dst, [msg("m2"), msg("m4")]).appended_ids == ("m4",)
    assert ids_of(hot.load(src)) == ["m1", "m2", "m3"]


def test_fork_across_slots_repeated_is_a_noop_that_keeps_later_writes(
    hot: HotStore, pair: tuple[str, str]
) -> None:
    src, dst = pair
    hot.create(src)
    hot.append(src, [msg("m1")])
    assert hot.fork(src, dst).created is True
    hot.append(dst, [msg("d1")])
    hot.append(src, [msg("m2")])
    again = hot.fork(src, dst)
    assert (again.created, again.length, again.version) == (False, 2, 2)
    assert ids_of(hot.load(dst)) == ["m1", "d1"]


def test_fork_across_slots_onto_other_content_raises_and_writes_nothing(
    hot: HotStore, cluster_client: redis.RedisCluster, pair: tuple[str, str]
) -> None:
    src, dst = pair
    hot.create(src)
    hot.append(src, [msg("m1"), msg("m2")])
    hot.create(dst)
    hot.append(dst, [msg("o1")])
    before = redis_contents(cluster_client)
    with pytest.raises(ThreadExists, match=f"'{dst}' already exists: it is a thread"):
        hot.fork(src, dst)
    assert redis_contents(cluster_client) == before
    hot.delete(dst)
    hot.fork(src, dst, up_to_id="m1")
    before = redis_contents(cluster_client)
    with pytest.raises(ThreadExists, match=f"fork of '{src}' at 'm1'"):
        hot.fork(src, dst, up_to_id="m2")
    with pytest.raises(ThreadExists, match=f"fork of '{src}'"):
        hot.fork(src, dst)
    assert redis_contents(cluster_client) == before


def test_fork_across_slots_up_to_id_cuts_records_and_ledger(
    hot: HotStore, pair: tuple[str, str]
) -> None:
    src, dst = pair
    hot.create(src)
    hot.append(src, [msg("old")])
    hot.replace_all(src, [msg("m1")])  # "old" is retired
    hot.append(src, [msg("m2"), msg("m3")])
    result = hot.fork(src, dst, up_to_id="m2")
    assert (result.created, result.length) == (True, 2)
    assert ids_of(hot.load(dst)) == ["m1", "m2"]
    assert hot.info(dst).fork_point == "m2"
    assert hot.append(dst, [msg("m3", "another m3"), msg("old")]).appended_ids == ("m3",)
    assert hot.truncate_from(dst, "m2").removed_ids == ("m2", "m3")


def test_fork_across_slots_of_unknown_source_or_message_writes_nothing(
    hot: HotStore, cluster_client: redis.RedisCluster, pair: tuple[str, str]
) -> None:
    src, dst = pair
    with pytest.raises(ThreadNotFound, match=src):
        hot.fork(src, dst)
    hot.create(src)
    before = redis_contents(cluster_client)
    with pytest.raises(InvalidMessage, match=f"not in thread '{src}'"):
        hot.fork(src, dst, up_to_id="missing")
    assert redis_contents(cluster_client) == before


def test_fork_across_slots_onto_an_archived_thread_is_refused(
    cluster_client: redis.RedisCluster, tmp_path: Path, pair: tuple[str, str]
) -> None:
    src, dst = pair
    threads = Threads(HotStore(cluster_client), FileColdStore(tmp_path))
    threads.open(src, "new")
    threads.open(dst, "new")
    threads.append(dst, [msg("d1")])
    assert threads.flush(dst).evicted
    before = redis_contents(cluster_client)
    with pytest.raises(ThreadExists, match="cold tier"):
        threads.hot.fork(src, dst)
    assert redis_contents(cluster_client) == before
    # through Threads, the archived destination is found and not overwritten
    with pytest.raises(ThreadExists, match="not a fork of that source"):
        threads.open(dst, "fork", source=src)
    assert ids_of(threads.load(dst)) == ["d1"]


def test_fork_across_slots_of_ten_thousand_1kb_messages(
    hot: HotStore, cluster_client: redis.RedisCluster, pair: tuple[str, str]
) -> None:
    src, dst = pair
    hot.create(src, state={"big": True})
    filler = "x" * 1000
    for start in range(0, 10_000, 1000):
        hot.append(src, [msg(f"m{i:05d}", filler) for i in range(start, start + 1000)])
    result = hot.fork(src, dst)  # 2000 records per call: staged in 5 chunks, then swapped
    assert (result.created, result.length) == (True, 10_000)
    assert hot.load(dst) == hot.load(src)
    assert hot.load_state(dst) == {"big": True}
    ledger = cluster_client.hgetall(hot.keys(dst).ids)
    assert len(ledger) == 10_000
    assert int(ledger[b"m09999"]) == 9999
    assert cluster_client.keys("*staging*") == []
    assert hot.fork(src, dst).created is False
    assert hot.append(dst, [msg("m00042"), msg("new")]).appended_ids == ("new",)
    cut = hot.fork(src, f"{dst}-cut", up_to_id="m04999")
    assert cut.length == 5000
    assert ids_of(hot.tail(f"{dst}-cut", 1)) == ["m04999"]


def test_fork_across_slots_staged_in_small_chunks_keeps_retired_ids(
    hot: HotStore, cluster_client: redis.RedisCluster, pair: tuple[str, str]
) -> None:
    src, dst = pair
    hot.create(src, state={"k": "v"})
    hot.append(src, [msg("old-1"), msg("old-2")])
    hot.replace_all(src, [msg(f"m{i}") for i in range(7)])
    result = hot.fork(src, dst, chunk_size=3)  # 3 + 3 + 1 records
    assert (result.created, result.length) == (True, 7)
    assert hot.load(dst) == hot.load(src)
    assert hot.load_state(dst) == {"k": "v"}
    assert hot.append(dst, [msg("old-2"), msg("m6"), msg("m7")]).appended_ids == ("m7",)
    assert cluster_client.keys("*staging*") == []
    assert hot.fork(src, dst, chunk_size=3).created is False
    assert cluster_client.keys("*staging*") == []
    assert hot.fork(src, f"{dst}-cut", up_to_id="m3", chunk_size=2).length == 4
    assert cluster_client.keys("*staging*") == []


def test_concurrent_duplicate_forks_across_slots_create_once(
    redis_cluster: RedisClusterServer, hot: HotStore, pair: tuple[str, str]
) -> None:
    src, dst = pair
    hot.create(src)
    hot.append(src, [msg(f"m{i}") for i in range(50)])
    barrier = threading.Barrier(4)
    outcomes: list[Any] = []

    def fork() -> None:
        client = redis_cluster.client()
        try:
            barrier.wait(timeout=10)
            outcomes.append(HotStore(client).fork(src, dst, chunk_size=20).created)
        except BaseException as exc:  # surfaced below
            outcomes.append(exc)
        finally:
            client.close()

    workers = [threading.Thread(target=fork) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(outcomes, key=repr) == [False, False, False, True]
    assert hot.load(dst) == hot.load(src)


def test_cluster_client_with_decode_responses(
    redis_cluster: RedisClusterServer, pair: tuple[str, str]
) -> None:
    src, dst = pair
    client = redis_cluster.client(decode_responses=True)
    try:
        store = HotStore(client)
        store.create(src, state={"s": "ü"})
        store.append(src, [msg("m1"), msg("m1"), msg("ü-2")])
        assert store.load(src) == [msg("m1"), msg("ü-2")]
        assert store.fork(src, dst).length == 2
        assert store.load(dst) == [msg("m1"), msg("ü-2")]
        assert store.load_state(dst) == {"s": "ü"}
        assert store.fork(src, f"{dst}-staged", chunk_size=1).length == 2
        assert store.info(f"{dst}-staged").parent == src
    finally:
        client.close()


# -- a real worker with its hot tier on the cluster --------------------------------------


def test_worker_runs_turns_and_a_cross_slot_fork_on_the_cluster(
    redis_cluster: RedisClusterServer, cluster_client: redis.RedisCluster, tmp_path: Path
) -> None:
    """A `celery worker` process configured with AGENT_THREADS_REDIS_CLUSTER=1 runs a
    new turn, a continued turn after eviction, and a forking turn into a thread on
    another slot; the broker is a separate single-node Redis."""

    from tasks.client import ThreadClient
    from tasks.local.processes import WorkerProcess, client_app

    queues = ["cluster-threads", "cluster-default"]
    cold_root = tmp_path / "cold"
    with EmbeddedRedis() as broker:
        base = f"redis://127.0.0.1:{broker.port}"
        env = {
            **os.environ,
            "AGENT_THREADS_BROKER_URL": f"{base}/0",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/1",
            "AGENT_THREADS_REDIS_URL": f"redis://{redis_cluster.nodes[0]}/0",
            "AGENT_THREADS_REDIS_CLUSTER": "1",
            "AGENT_THREADS_COLD_URL": f"file://{cold_root}",
            "AGENT_THREADS_QUEUE": queues[0],
            "AGENT_THREADS_DEFAULT_QUEUE": queues[1],
            "AGENT_THREADS_IMPORTS": "tests.agent_tasks",
        }
        app = client_app("cluster-client", env, queues)
        worker = WorkerProcess(env, queues, name="cluster", log_path=str(tmp_path / "worker.log"))
        worker.start()
        try:
            worker.wait_ready(app)
            client = ThreadClient(app, timeout=60, resend_after=30)
            hot = HotStore(cluster_client)
            source = "cl-src"
            fork = next(
                f"cl-fork-{i}"
                for i in itertools.count()
                if slot_of(hot, f"cl-fork-{i}") != slot_of(hot, source)
            )
            agent = app.signature("test.echo_agent")
            client.run_turn(source, [msg("u1")], agent, turn_id="t1", mode="new")
            client.run_turn(source, [msg("u2")], agent, turn_id="t2")
            client.run_turn(fork, [msg("u3")], agent, turn_id="t3", mode="fork", source=source)
            store = Threads(hot, FileColdStore(cold_root))
            assert ids_of(store.load(source)) == ["u1", "t1:reply", "u2", "t2:reply"]
            assert ids_of(store.load(fork)) == [
                "u1",
                "t1:reply",
                "u2",
                "t2:reply",
                "u3",
                "t3:reply",
            ]
            assert store.hot.info(fork).parent == source
        finally:
            worker.stop()
            app.close()


def test_command_line_reads_and_writes_threads_on_the_cluster(
    redis_cluster: RedisClusterServer, cluster_client: redis.RedisCluster, tmp_path: Path
) -> None:
    """ls, stats, inspect, flush, hydrate, export/import and delete through a
    RedisCluster client (per-node INFO, the activity index in its own slot)."""
    from click.testing import CliRunner

    from tasks.cli import main

    cold_root = tmp_path / "cold"
    store = Threads(HotStore(cluster_client), FileColdStore(cold_root))
    store.open("c1", "new", state={"step": 1})
    store.append("c1", [msg("m1"), msg("m2")])
    store.open("c2", "new")
    base = [
        "--redis-url", f"redis://{redis_cluster.nodes[0]}/0", "--redis-cluster",
        "--cold-url", f"file://{cold_root}", "--namespace", "at",
    ]  # fmt: skip

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, [*base, *args], env={"COLUMNS": "150"})
        assert result.exit_code == 0, result.output
        return result.output

    listing = run("ls")
    assert "c1" in listing
    assert "c2" in listing
    assert json.loads(run("stats", "--json"))["hot_threads"] == 2
    assert "tier hot, version" in run("inspect", "c1")
    assert "2 archived" in run("flush", "c1", "c2")
    assert not store.hot.exists("c1")
    assert "tier cold" in run("inspect", "c1")
    exported = tmp_path / "c1.json"
    run("export", "c1", "-o", str(exported))
    run("import", str(exported), "--as", "c3", "--hot")
    assert ids_of(store.load("c3")) == ["m1", "m2"]
    assert "2 restored" in run("hydrate", "c1", "c2")
    assert ids_of(store.load("c1")) == ["m1", "m2"]
    run("delete", "c2", "--yes")
    assert not store.hot.exists("c2")
    assert store.cold.head("c2") is None


def test_activity_shards_spread_over_slots_and_primaries(
    cluster_client: redis.RedisCluster,
) -> None:
    """Appends of one namespace no longer all hit the master of one index key."""
    layout = HotStore(cluster_client).layout
    slots = {key_slot(shard.encode()) for shard in layout.activity_shards}
    assert len(slots) == 64
    other = {
        key_slot(s.encode()) for s in HotStore(cluster_client, namespace="b").layout.activity_shards
    }
    assert slots != other
    nodes = {cluster_client.get_node_from_key(shard).name for shard in layout.activity_shards}
    assert len(nodes) == len(cluster_client.get_primaries())
