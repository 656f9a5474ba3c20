"""Failover, a loading Redis and a full Redis: what redis-py raises then reaches the
caller as a transient ``HotStoreUnavailable`` (``HotStoreFull`` when Redis is out of
memory), so a Celery task retries instead of failing for good, and nothing is
written twice or half.

Every error is provoked on real servers: a replica refuses writes (READONLY), a
replica cut off from its master refuses everything (MASTERDOWN), a restarted
server answers LOADING while it reads its AOF, a server at ``maxmemory`` under
``noeviction`` answers OOM, a cluster with a dead master answers CLUSTERDOWN and a
slot being migrated answers TRYAGAIN. The last tests SIGKILL masters of a cluster
with replicas while appends run, and count what the failovers cost: with test-only
timers, and with a real worker at the shipped defaults (Redis's 15 s node timeout,
the shipped task retry policy).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from storage import HotStore, HotStoreFull, HotStoreUnavailable
from storage.cold import FileColdStore
from storage.embedded import EmbeddedRedis, free_port
from storage.tiered import Threads
from tests.cluster import RedisClusterServer
from tests.conftest import msg, redis_contents

NO_RETRY = Retry(NoBackoff(), 0)
"""Clients that give up at once: each test sees the error a task's retry policy sees."""


def wait_for(ready: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def raises_unavailable(action: Callable[[], object], cause: type[BaseException]) -> str:
    """Run ``action``; it must raise ``HotStoreUnavailable`` caused by ``cause``."""
    with pytest.raises(HotStoreUnavailable) as caught:
        action()
    assert caught.value.transient
    assert isinstance(caught.value.__cause__, cause), repr(caught.value.__cause__)
    return str(caught.value)


# -- a replica and a replica without its master -----------------------------------------


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    with EmbeddedRedis(extra_args=["--repl-diskless-sync-delay", "0"]) as primary:
        replica_args = ["--replicaof", "127.0.0.1", str(primary.port)]
        with EmbeddedRedis(extra_args=replica_args) as replica:
            probe = replica.client(decode_responses=True)
            try:
                wait_for(
                    lambda: probe.info("replication")["master_link_status"] == "up",
                    10,
                    "the replica to sync",
                )
            finally:
                probe.close()
            yield primary, replica


def test_writes_to_a_replica_are_transient_and_write_nothing(
    primary_and_replica: tuple[EmbeddedRedis, EmbeddedRedis],
) -> None:
    """A client still pointed at a demoted master (Sentinel failover) gets READONLY."""
    primary, replica = primary_and_replica
    HotStore(primary.client()).create("t1")
    replica_client = replica.client(retry=NO_RETRY)
    wait_for(lambda: replica_client.exists("at:{t1}:meta") == 1, 10, "t1 on the replica")
    hot = HotStore(replica_client)
    before = redis_contents(replica_client)
    # the replica never loaded the scripts: EVALSHA gets NOSCRIPT, redis-py's Script
    # loads it there and runs it again, and only then the script's first write fails
    message = raises_unavailable(
        lambda: hot.append("t1", [msg("m1")]), redis.exceptions.ReadOnlyError
    )
    assert "append" in message
    assert "replica" in message
    raises_unavailable(lambda: hot.create("t2"), redis.exceptions.ReadOnlyError)
    raises_unavailable(lambda: hot.mark_active("t1"), redis.exceptions.ReadOnlyError)
    assert redis_contents(replica_client) == before
    assert hot.info("t1").length == 0  # reads still work on a replica


def test_a_replica_cut_off_from_its_master_is_transient(
    primary_and_replica: tuple[EmbeddedRedis, EmbeddedRedis],
) -> None:
    primary, replica = primary_and_replica
    HotStore(primary.client()).create("t1")
    client = replica.client(retry=NO_RETRY, decode_responses=True)
    wait_for(lambda: client.exists("at:{t1}:meta") == 1, 10, "t1 on the replica")
    client.config_set("replica-serve-stale-data", "no")
    primary.stop()
    wait_for(lambda: client.info("replication")["master_link_status"] == "down", 10, "link down")
    hot = HotStore(client)
    message = raises_unavailable(
        lambda: hot.append("t1", [msg("m1")]), redis.exceptions.MasterDownError
    )
    assert "append" in message
    raises_unavailable(lambda: hot.info("t1"), redis.exceptions.MasterDownError)
    raises_unavailable(lambda: hot.load("t1"), redis.exceptions.MasterDownError)


# -- a restarted Redis still loading its AOF --------------------------------------------

LOADING_ARGS = [
    "--appendonly", "yes",
    "--appendfsync", "everysec",
    # test-only: 100 us per key (a test config of Redis 6+) stretches loading 10,000
    # keys to about a second, and answering clients every 1 KiB read shows LOADING
    "--key-load-delay", "100",
    "--loading-process-events-interval-bytes", "1024",
]  # fmt: skip
FILLER_KEYS = 10_000


@pytest.mark.slow
def test_a_call_during_aof_loading_is_transient_and_succeeds_after(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedRedis(port=port, data_dir=tmp_path, extra_args=LOADING_ARGS) as server:
        client = server.client()
        HotStore(client).create("t1")
        pipe = client.pipeline(transaction=False)
        for n in range(FILLER_KEYS):
            pipe.set(f"filler:{n}", "x")
        pipe.execute()
        client.close()
    restarted = EmbeddedRedis(port=port, data_dir=tmp_path, extra_args=LOADING_ARGS)
    starting = threading.Thread(target=restarted.start)  # start() returns once loaded
    hot = HotStore(redis.Redis(port=port, retry=NO_RETRY, socket_timeout=5))
    loading_errors: list[HotStoreUnavailable] = []
    attempts = 0
    try:
        starting.start()
        deadline = time.monotonic() + 30
        while True:  # the task's retry loop: retry while the error is transient
            attempts += 1
            try:
                result = hot.append("t1", [msg("m1")])
                break
            except HotStoreUnavailable as exc:
                if isinstance(exc.__cause__, redis.exceptions.BusyLoadingError):
                    loading_errors.append(exc)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        starting.join(timeout=30)
        assert loading_errors, f"no call saw the server loading ({attempts} attempts)"
        assert "loading" in str(loading_errors[0])
        assert "append" in str(loading_errors[0])
        assert "retry" in str(loading_errors[0])  # the message says what to do
        assert result.appended_ids + result.skipped_ids == ("m1",)
        assert [m["id"] for m in hot.load("t1")] == ["m1"]
        assert hot.redis.dbsize() == FILLER_KEYS + 3  # meta, msgs and ids of t1
    finally:
        hot.redis.close()
        starting.join(timeout=30)
        restarted.stop()


# -- a full Redis (maxmemory, noeviction) ------------------------------------------------


@pytest.fixture
def full_redis() -> Iterator[EmbeddedRedis]:
    """A Redis under ``noeviction`` (``maxmemory`` is set by ``fill_with_threads``)."""
    with EmbeddedRedis(extra_args=["--maxmemory-policy", "noeviction"]) as server:
        yield server


def fill_with_threads(hot: HotStore, prefix: str, count: int = 100) -> list[str]:
    """Write ``count`` threads of 5 KB, idle since 1970, then set ``maxmemory`` 100 KB
    under what Redis uses: it is full, whatever a call's buffers add for a moment."""
    filled = [f"{prefix}-{n}" for n in range(count)]
    for tid in filled:
        hot.create(tid)
        hot.append(tid, [msg(f"{tid}-m{i}", "x" * 1000) for i in range(5)])
        hot.mark_active(tid, at_ms=1)
    used = int(hot.redis.info("memory")["used_memory"])
    hot.redis.config_set("maxmemory", used - 100_000)
    return filled


def test_a_full_redis_refuses_writes_with_hot_store_full_and_writes_nothing(
    full_redis: EmbeddedRedis,
) -> None:
    client = full_redis.client(retry=NO_RETRY)
    hot = HotStore(client)
    hot.create("kept")
    hot.append("kept", [msg("k1"), msg("k2"), msg("k3")])
    fill_with_threads(hot, "fill")
    before = redis_contents(client)
    for action in (
        lambda: hot.append("kept", [msg("k4")]),
        lambda: hot.create("new"),
        lambda: hot.save_state("kept", {"a": 1}),
    ):
        with pytest.raises(HotStoreFull) as caught:
            action()
        assert isinstance(caught.value, HotStoreUnavailable)
        assert caught.value.transient
        assert isinstance(caught.value.__cause__, redis.exceptions.OutOfMemoryError)
        assert "maxmemory" in str(caught.value)
        assert "flush" in str(caught.value)
        assert redis_contents(client) == before
    # an activity mark is best effort (the reconciler repairs the index): refused, not
    # raised, so an idle flush can go on freeing memory
    hot.mark_active("kept")
    assert redis_contents(client) == before
    # reads in scripts still work; a script whose first write frees memory runs whole
    # (Redis refuses only a script's first write, and only one that adds memory)
    version = hot.info("kept").version
    cut = hot.truncate_from("kept", "k2")
    assert cut.removed_ids == ("k2", "k3")
    assert cut.length == 1
    assert hot.info("kept").version == version + 1


def test_an_idle_flush_frees_a_full_redis(full_redis: EmbeddedRedis, tmp_path: Path) -> None:
    client = full_redis.client(retry=NO_RETRY)
    threads = Threads(HotStore(client), FileColdStore(tmp_path))
    filled = fill_with_threads(threads.hot, "idle")
    with pytest.raises(HotStoreFull):
        threads.hot.create("waiting")
    report = threads.flush_idle(0)
    assert not report.failed, report.failed
    assert set(report.evicted) == set(filled)
    threads.hot.create("waiting")  # room again
    assert [m["id"] for m in threads.load(filled[0])][:1] == [f"{filled[0]}-m0"]


# -- Redis Cluster: a dead master without a replica, a slot being migrated --------------


def master_of(cluster: RedisClusterServer, client: redis.RedisCluster, key: str) -> int:
    node = client.get_node_from_key(key)
    assert node is not None
    assert node.port is not None
    return int(node.port)


def node_ids(cluster: RedisClusterServer, port: int) -> str:
    node = cluster.node_client(port, decode_responses=True)
    try:
        return str(node.execute_command("CLUSTER MYID"))
    finally:
        node.close()


@pytest.fixture
def bare_cluster() -> Iterator[RedisClusterServer]:
    """A cluster of its own (the tests below break it): three masters, no replicas,
    failure detection after 1 s (test-only; the default is 5 s)."""
    with RedisClusterServer(node_timeout_ms=1000) as cluster:
        yield cluster


@pytest.mark.cluster
def test_a_cluster_with_a_failed_master_is_transient(bare_cluster: RedisClusterServer) -> None:
    client = bare_cluster.client(retry=NO_RETRY, socket_timeout=2)
    hot = HotStore(client)
    victim = master_of(bare_cluster, client, hot.keys("dead").meta)
    alive = next(
        f"alive-{n}"
        for n in itertools.count()
        if master_of(bare_cluster, client, hot.keys(f"alive-{n}").meta) != victim
    )
    hot.create(alive)
    bare_cluster.kill(victim)
    survivor = bare_cluster.node_client(
        master_of(bare_cluster, client, hot.keys(alive).meta), decode_responses=True
    )
    try:
        wait_for(lambda: survivor.cluster("INFO")["cluster_state"] == "fail", 15, "state fail")
        # a thread on a healthy master is refused too: the cluster as a whole is down
        message = raises_unavailable(
            lambda: hot.append(alive, [msg("m1")]), redis.exceptions.ClusterDownError
        )
        assert "append" in message
        assert "cluster" in message.lower()
        direct = HotStore(survivor)
        raises_unavailable(
            lambda: direct.append(alive, [msg("m1")]), redis.exceptions.ClusterDownError
        )
        raises_unavailable(lambda: hot.append("dead", [msg("m1")]), redis.ConnectionError)
    finally:
        survivor.close()
        client.close()


@pytest.mark.cluster
def test_a_slot_in_migration_is_transient_and_retries_after(
    bare_cluster: RedisClusterServer,
) -> None:
    client = bare_cluster.client(retry=NO_RETRY)
    hot = HotStore(client)
    hot.create("moving")
    hot.append("moving", [msg("m1")])
    slot = client.keyslot(hot.keys("moving").meta)
    source = master_of(bare_cluster, client, hot.keys("moving").meta)
    target = next(port for port in bare_cluster.ports if port != source)
    nodes = {port: bare_cluster.node_client(port) for port in (source, target)}
    try:
        nodes[target].execute_command(
            "CLUSTER SETSLOT", slot, "IMPORTING", node_ids(bare_cluster, source)
        )
        nodes[source].execute_command(
            "CLUSTER SETSLOT", slot, "MIGRATING", node_ids(bare_cluster, target)
        )
        # some of the thread's keys exist, some not (no lease yet): TRYAGAIN, which
        # redis-py's cluster client retries until its TTL runs out (ClusterError)
        message = raises_unavailable(
            lambda: hot.append("moving", [msg("m2")]), redis.exceptions.ClusterError
        )
        assert "append" in message
        direct = HotStore(nodes[source])
        raises_unavailable(
            lambda: direct.append("moving", [msg("m2")]), redis.exceptions.TryAgainError
        )
        for node in nodes.values():
            node.execute_command("CLUSTER SETSLOT", slot, "STABLE")
        assert hot.append("moving", [msg("m2")]).appended_ids == ("m2",)
        assert [m["id"] for m in hot.load("moving")] == ["m1", "m2"]
    finally:
        for node in nodes.values():
            node.close()
        client.close()


# -- Redis Cluster failover under appends ---------------------------------------------------

PRODUCERS_PER_SHARD = 2
FAILOVERS = 3  # one per shard
APPENDS_BETWEEN = 60  # acknowledged appends before each kill
MIN_AFTER = 20  # appends per producer after the last failover, at least
REPLICATION_LAG_S = 1.0
"""An acknowledged append may be lost only if the old master acknowledged it this
long before it was killed, at most (replication on loopback lags by far less)."""
BUDGET_S = 90.0


@dataclass(frozen=True)
class Ack:
    thread_id: str
    message_id: str
    started: float
    ended: float


@dataclass
class Failover:
    victim: int
    promoted: int
    thread_ids: tuple[str, ...]  # the threads whose slots the victim served
    killed_at: float
    promoted_at: float = 0.0
    script_cached_on_promoted: bool = True


@dataclass
class Run:
    acks: list[Ack] = field(default_factory=list)
    retries: int = 0
    causes: Counter[str] = field(default_factory=Counter)
    errors: list[BaseException] = field(default_factory=list)
    failovers: list[Failover] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[RedisClusterServer]:
    """Three masters with a replica each; ``cluster-node-timeout`` 1 s (test-only:
    it scales the failover timer down from the 5 s default, nothing else)."""
    with RedisClusterServer(replicas=1, node_timeout_ms=1000) as cluster:
        yield cluster


def append_until_acknowledged(threads: Threads, tid: str, mid: str, run: Run) -> None:
    """One append as a retried task would make it: again on every transient error."""
    deadline = time.monotonic() + 30
    delay = 0.02
    started = time.monotonic()
    while True:
        try:
            result = threads.append(tid, [msg(mid)])
            break
        except HotStoreUnavailable as exc:
            with run.lock:
                run.retries += 1
                run.causes[type(exc.__cause__).__name__] += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(0.5, delay * 2)
    assert result.appended_ids + result.skipped_ids == (mid,)
    with run.lock:
        run.acks.append(Ack(tid, mid, started, time.monotonic()))


def fail_over(
    cluster: RedisClusterServer,
    client: redis.RedisCluster,
    hot: HotStore,
    tid_group: tuple[str, ...],
    run: Run,
) -> None:
    """SIGKILL the master of ``tid_group``'s slots, wait for its replica to take over,
    then start the killed node again so that it rejoins as the new replica."""
    roles = cluster.roles()
    victim = master_of(cluster, client, hot.keys(tid_group[0]).meta)
    promoted = next(port for port, master in roles.items() if master == victim)
    failover = Failover(victim, promoted, tid_group, killed_at=time.monotonic())
    cluster.kill(victim)
    with run.lock:
        run.failovers.append(failover)
    cluster.wait_until(lambda: cluster.roles().get(promoted, 0) is None, 30, "the promotion")
    failover.promoted_at = time.monotonic()
    # scripts are not replicated: the new master has none until redis-py reloads one
    node = cluster.node_client(promoted)
    try:
        sha = hot._scripts["append"].sha
        failover.script_cached_on_promoted = bool(node.script_exists(sha)[0])
    finally:
        node.close()
    cluster.restart(victim)
    cluster.wait_until(
        lambda: cluster.roles().get(victim) == promoted and cluster.replicas_in_sync(),
        30,
        "the killed master to rejoin as a replica",
    )


@pytest.mark.cluster
@pytest.mark.chaos
@pytest.mark.slow
def test_appends_survive_master_failovers_exactly_once(
    replicated_cluster: RedisClusterServer,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    cluster = replicated_cluster
    client = cluster.client(socket_timeout=2, socket_connect_timeout=1)
    client.flushall()
    threads = Threads(HotStore(client), FileColdStore(tmp_path / "cold"))
    hot = threads.hot
    by_master: dict[int, list[str]] = {}
    for n in itertools.count():
        tid = f"fo-{n}"
        group = by_master.setdefault(master_of(cluster, client, hot.keys(tid).meta), [])
        if len(group) < PRODUCERS_PER_SHARD:
            group.append(tid)
        if len(by_master) == 3 and all(len(g) == PRODUCERS_PER_SHARD for g in by_master.values()):
            break
    groups = [tuple(g) for g in by_master.values()]
    tids = [tid for group in groups for tid in group]
    for tid in tids:
        threads.open(tid, "new")
    for port in by_master:  # setup only: the threads exist on the replicas before any kill
        node = cluster.node_client(port)
        try:
            assert node.execute_command("WAIT", 1, 5000) == 1
        finally:
            node.close()

    run = Run()
    failovers_done = threading.Event()
    stop = threading.Event()
    started = time.monotonic()

    def produce(tid: str) -> None:
        try:
            after = 0
            for step in itertools.count():
                if stop.is_set() or time.monotonic() - started > BUDGET_S:
                    return
                if failovers_done.is_set():
                    if after >= MIN_AFTER:
                        return
                    after += 1
                append_until_acknowledged(threads, tid, f"{tid}-m{step:05d}", run)
        except BaseException as exc:
            run.errors.append(exc)
            stop.set()

    def kill_masters() -> None:
        try:
            for group in groups[:FAILOVERS]:
                mark = len(run.acks) + APPENDS_BETWEEN
                while len(run.acks) < mark:  # appends are flowing: kill under them
                    if stop.wait(0.02) or time.monotonic() - started > BUDGET_S:
                        return
                fail_over(cluster, client, hot, group, run)
        except BaseException as exc:
            run.errors.append(exc)
            stop.set()
        finally:
            failovers_done.set()

    workers = [threading.Thread(target=produce, args=(tid,)) for tid in tids]
    workers.append(threading.Thread(target=kill_masters))
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=max(1.0, started + BUDGET_S + 60 - time.monotonic()))
        stuck = [w.name for w in workers if w.is_alive()]
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert not run.errors, repr(run.errors)
    assert not stuck, f"{stuck} did not finish"
    assert len(run.failovers) == FAILOVERS

    lost: list[Ack] = []
    for tid in tids:
        stored = [m["id"] for m in threads.load(tid)]
        assert len(stored) == len(set(stored)), f"{tid}: a message is doubled"
        acked = [a for a in run.acks if a.thread_id == tid]
        kept = set(stored)
        assert kept <= {a.message_id for a in acked}, f"{tid}: a message nobody sent"
        missing = [a for a in acked if a.message_id not in kept]
        assert stored == [a.message_id for a in acked if a.message_id in kept], "out of order"
        lost += missing
    for ack in lost:  # only the last moment before a kill of the thread's master
        assert any(
            ack.thread_id in f.thread_ids
            and f.killed_at - REPLICATION_LAG_S <= ack.ended <= f.promoted_at
            for f in run.failovers
        ), f"{ack} was lost outside a failover window"
    figures = {
        "test": "cluster master failover (SIGKILL, replica promoted)",
        "failovers": len(run.failovers),
        "seconds_to_promotion": [round(f.promoted_at - f.killed_at, 2) for f in run.failovers],
        "scripts_cached_on_promoted_master": [f.script_cached_on_promoted for f in run.failovers],
        "acknowledged_appends": len(run.acks),
        "retries": run.retries,
        "retried_causes": dict(run.causes),
        "lost_acknowledged": len(lost),
        "doubled": 0,
        "seconds": round(time.monotonic() - started, 1),
    }
    record_property("figures", figures)
    print("FAILOVER FIGURES", json.dumps(figures))
    assert run.retries > 0, "no append was retried: the failovers hit nothing"
    client.close()


# -- Celery append tasks through a failover at the shipped defaults ------------------------

DEFAULT_NODE_TIMEOUT_MS = 15_000
"""Redis's own ``cluster-node-timeout``: what a production cluster fails over after."""
SEQUENTIAL_PER_SHARD = 4  # producers that wait for each append before the next (order)
BURST_THREADS = 4  # threads on the victim's slots that get one task after another, unawaited
BURST_AT_KILL = 150  # tasks sent at once when the master dies: the most exposed ones
BURST_RATE_S = 0.1  # then one task every 100 ms (a 2-CPU worker keeps up: no queueing)
WARMUP_ACKS = 40  # sequential appends acknowledged before the kill
AFTER_PROMOTION_S = 4.0  # keep sending this long after the replica took over
RESULTS_BUDGET_S = 150.0  # a task's countdowns add up to 121 s at most (1+2+4+8+16+30*3)


@dataclass(frozen=True)
class TaskOutcome:
    task_id: str
    thread_id: str
    message_id: str
    sequential: bool
    sent: float  # time.time()
    status: str = "PENDING"
    done: float = 0.0  # time.time() of date_done
    retries: int = 0
    error: str = ""


def task_result(results: redis.Redis, task_id: str) -> dict[str, object] | None:
    """The stored result of a task (result_extended: status, date_done, retries, ...)."""
    raw = results.get(f"celery-task-meta-{task_id}")
    return None if raw is None else dict(json.loads(raw))


def is_final(meta: dict[str, object] | None) -> bool:
    """A task is done once SUCCESS or FAILURE is stored (RETRY is stored in between)."""
    return meta is not None and meta["status"] in ("SUCCESS", "FAILURE")


def finished(outcome: TaskOutcome, meta: dict[str, object]) -> TaskOutcome:
    from datetime import datetime

    done = datetime.fromisoformat(str(meta["date_done"])).timestamp()
    result = meta.get("result")
    error = "" if meta["status"] == "SUCCESS" else f"{result}"
    return TaskOutcome(
        outcome.task_id,
        outcome.thread_id,
        outcome.message_id,
        outcome.sequential,
        outcome.sent,
        str(meta["status"]),
        done,
        int(str(meta.get("retries") or 0)),
        error,
    )


def retry_lines(log: Path) -> list[dict[str, object]]:
    """The worker's 'task retry after ...' lines (JSON log format)."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and str(record.get("message", "")).startswith("task retry"):
            lines.append(record)
    return lines


@pytest.mark.cluster
@pytest.mark.chaos
@pytest.mark.slow
def test_append_tasks_survive_a_failover_at_the_default_timers(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """A real ``celery worker`` with the shipped retry policy (8 retries, backoff 1 s,
    cap 30 s, equal jitter) and the shipped socket timeouts, its hot tier on a cluster
    failing over at Redis's default 15 s: no append task may give up before the
    replica is promoted, none may be stored twice, and each producer's order holds."""
    import os

    from tasks.local.processes import WorkerProcess, client_app

    queues = ["failover-threads", "failover-default"]
    cold_root = tmp_path / "cold"
    log_path = tmp_path / "worker.log"
    with (
        RedisClusterServer(replicas=1, node_timeout_ms=DEFAULT_NODE_TIMEOUT_MS) as cluster,
        EmbeddedRedis() as broker,
    ):
        client = cluster.client(socket_timeout=5, socket_connect_timeout=5)
        setup = Threads(HotStore(client), FileColdStore(cold_root))
        hot = setup.hot
        names = (f"dt-{n}" for n in itertools.count())
        victim = master_of(cluster, client, hot.keys("dt-burst-0").meta)
        burst_tids: list[str] = []
        sequential: dict[int, list[str]] = {}
        for tid in names:
            port = master_of(cluster, client, hot.keys(tid).meta)
            if port == victim and len(burst_tids) < BURST_THREADS:
                burst_tids.append(tid)
                continue
            group = sequential.setdefault(port, [])
            if len(group) < SEQUENTIAL_PER_SHARD:
                group.append(tid)
            if (
                len(burst_tids) == BURST_THREADS
                and [len(g) for g in sequential.values()] == [SEQUENTIAL_PER_SHARD] * 3
            ):
                break
        seq_tids = [tid for group in sequential.values() for tid in group]
        for tid in seq_tids + burst_tids:
            setup.open(tid, "new")
        for port in sequential:  # setup only: the threads exist on the replicas
            node = cluster.node_client(port)
            try:
                assert node.execute_command("WAIT", 1, 5000) == 1
            finally:
                node.close()
        promoted = next(port for port, master in cluster.roles().items() if master == victim)

        base = f"redis://127.0.0.1:{broker.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_THREADS_")}
        env |= {  # only where the servers are: every timer and retry setting is shipped
            "AGENT_THREADS_BROKER_URL": f"{base}/0",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/1",
            "AGENT_THREADS_REDIS_URL": f"redis://{cluster.nodes[0]}/0",
            "AGENT_THREADS_REDIS_CLUSTER": "1",
            "AGENT_THREADS_COLD_URL": f"file://{cold_root}",
            "AGENT_THREADS_QUEUE": queues[0],
            "AGENT_THREADS_DEFAULT_QUEUE": queues[1],
            "AGENT_THREADS_LOG_FORMAT": "json",
        }
        app = client_app("failover-client", env, queues)
        results = redis.Redis(port=broker.port, db=1)
        worker = WorkerProcess(env, queues, name="failover", concurrency=16, log_path=str(log_path))
        outcomes: list[TaskOutcome] = []
        lock = threading.Lock()
        errors: list[BaseException] = []
        stop_sending = threading.Event()
        killed = threading.Event()
        timeline: dict[str, float] = {}

        def send(tid: str, mid: str, is_sequential: bool) -> TaskOutcome:
            sent = time.time()
            result = app.send_task("threads.append", args=[tid, [msg(mid)]])
            outcome = TaskOutcome(result.id, tid, mid, is_sequential, sent)
            with lock:
                outcomes.append(outcome)
            return outcome

        def produce(tid: str) -> None:
            try:
                for step in itertools.count():
                    if stop_sending.is_set():
                        return
                    outcome = send(tid, f"{tid}-m{step:05d}", True)
                    deadline = time.monotonic() + RESULTS_BUDGET_S
                    while not is_final(task_result(results, outcome.task_id)):
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"no result for {outcome}")
                        time.sleep(0.01)
            except BaseException as exc:
                errors.append(exc)
                stop_sending.set()

        worker.start()
        producers = [threading.Thread(target=produce, args=(tid,)) for tid in seq_tids]
        try:
            worker.wait_ready(app)
            for producer in producers:
                producer.start()
            wait_for(lambda: len(outcomes) >= WARMUP_ACKS + len(seq_tids), 60, "warm-up")
            assert not errors, repr(errors)
            timeline["killed"] = time.time()
            cluster.kill(victim)
            killed.set()
            burst = itertools.count()
            for _ in range(BURST_AT_KILL):
                n = next(burst)
                send(burst_tids[n % BURST_THREADS], f"burst-{n:05d}", False)
            timeline["burst_sent"] = time.time()
            while cluster.roles().get(promoted, 0) is not None:
                if time.time() - timeline["killed"] > 60:
                    raise TimeoutError("no promotion within 60 s")
                n = next(burst)
                send(burst_tids[n % BURST_THREADS], f"burst-{n:05d}", False)
                time.sleep(BURST_RATE_S)
            timeline["promoted"] = time.time()
            until = time.monotonic() + AFTER_PROMOTION_S
            while time.monotonic() < until:
                n = next(burst)
                send(burst_tids[n % BURST_THREADS], f"burst-{n:05d}", False)
                time.sleep(BURST_RATE_S)
            stop_sending.set()
            for producer in producers:
                producer.join(timeout=RESULTS_BUDGET_S + 10)
            timeline["sending_stopped"] = time.time()
            pending = list(outcomes)
            done: list[TaskOutcome] = []
            deadline = time.monotonic() + RESULTS_BUDGET_S
            while pending and time.monotonic() < deadline:
                still = []
                for outcome in pending:
                    meta = task_result(results, outcome.task_id)
                    if meta is None or not is_final(meta):
                        still.append(outcome)
                    else:
                        done.append(finished(outcome, meta))
                pending = still
                if pending:
                    time.sleep(0.2)
            timeline["all_done"] = time.time()
        finally:
            stop_sending.set()
            for producer in producers:
                if producer.is_alive():
                    producer.join(timeout=30)
            worker.stop()
            app.close()
        assert not errors, repr(errors)

        reader = cluster.client(socket_timeout=5, socket_connect_timeout=5)
        store = Threads(HotStore(reader), FileColdStore(cold_root))
        failed = [o for o in done if o.status != "SUCCESS"]
        lost: list[TaskOutcome] = []
        for tid in seq_tids + burst_tids:
            stored = [m["id"] for m in store.load(tid)]
            assert len(stored) == len(set(stored)), f"{tid}: a message is doubled"
            sent = [o for o in done + pending if o.thread_id == tid]
            assert set(stored) <= {o.message_id for o in sent}, f"{tid}: a message nobody sent"
            acked = [o for o in done if o.thread_id == tid and o.status == "SUCCESS"]
            kept = set(stored)
            lost += [o for o in acked if o.message_id not in kept]
            if tid in seq_tids:  # one at a time: stored in the order sent
                in_order = sorted((o for o in acked if o.message_id in kept), key=lambda o: o.sent)
                assert stored == [o.message_id for o in in_order], f"{tid}: out of order"
        retried = retry_lines(log_path)
        killed_at, promoted_at = timeline["killed"], timeline["promoted"]
        during = [o for o in done if killed_at <= o.sent <= promoted_at]
        figures = {
            "test": "celery append tasks through a cluster failover at the default timers",
            "cluster_node_timeout_ms": DEFAULT_NODE_TIMEOUT_MS,
            "retry_policy": "8 retries, backoff 1 s, cap 30 s, equal jitter (shipped)",
            "seconds_to_promotion": round(promoted_at - killed_at, 2),
            "tasks": len(outcomes),
            "tasks_sent_during_failover": len(during),
            "succeeded": sum(o.status == "SUCCESS" for o in done),
            "failed": len(failed),
            "no_result": len(pending),
            "tasks_retried": sum(o.retries > 0 for o in done),
            "retries": sum(o.retries for o in done),
            "retry_log_lines": len(retried),
            "retried_errors": dict(Counter(str(r.get("error")) for r in retried)),
            "most_retries_of_a_success": max(
                (o.retries for o in done if o.status == "SUCCESS"), default=0
            ),
            # near misses: a success on retry 7 or 8 was one or two unlucky jitters away
            # from giving up for good (8 retries of random 0..min(30, 2**n) s)
            "successes_after_7_or_more_retries": sum(
                o.retries >= 7 for o in done if o.status == "SUCCESS"
            ),
            "lost_acknowledged": len(lost),
            "doubled": 0,
            "seconds_from_kill_to_last_result": round(timeline["all_done"] - killed_at, 1),
        }
        if failed:
            figures["failures"] = [
                {
                    "message_id": o.message_id,
                    "sent_s_after_kill": round(o.sent - killed_at, 2),
                    "gave_up_s_after_kill": round(o.done - killed_at, 2),
                    "retries": o.retries,
                    "error": o.error[:200],
                }
                for o in failed[:10]
            ]
        record_property("figures", figures)
        print("FAILOVER AT DEFAULTS FIGURES", json.dumps(figures))
        assert not pending, f"{len(pending)} tasks have no result after {RESULTS_BUDGET_S} s"
        assert not failed, (
            f"{len(failed)} append tasks failed for good during a failover of "
            f"{promoted_at - killed_at:.1f} s: {figures.get('failures')}"
        )
        # the existing test's rule: an acknowledged append may be lost only if the old
        # master acknowledged it in the last moment before it was killed
        for outcome in lost:
            assert (
                outcome.thread_id in burst_tids
                or master_of(cluster, reader, store.hot.keys(outcome.thread_id).meta) == promoted
            ), f"{outcome} was lost on a master that did not fail"
            assert killed_at - REPLICATION_LAG_S <= outcome.done <= promoted_at, (
                f"{outcome} was lost outside the failover window"
            )
        assert figures["retries"], "no task was retried: the failover hit nothing"
        reader.close()
        client.close()
