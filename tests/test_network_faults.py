"""Network faults between a real ``celery worker`` and its storage: drops, stalls and
resets on the hot tier's Redis connection and on the S3 endpoint, while producers
append, flush, hydrate and load through ``ThreadClient``.

Topology (all on loopback)::

    test process --(direct)--> broker + results (own redis-server, dbs 1, 2)
    celery worker --(direct)--> broker + results
    celery worker --FaultProxy "redis"--> hot tier (same redis-server, db 0)
    celery worker --FaultProxy "s3"-----> moto S3 server (the session's)
    test process --(direct)--> hot tier and S3, to check what was stored

Why the broker connection stays direct: this module tests the storage side of
the contract (socket timeouts on the storage clients, typed transient errors,
the task retry policy, idempotent scripts and compare-and-swap archives under
late and repeated delivery). Faults on the broker connection exercise kombu's
reconnect logic and the Redis transport's known delivery gap instead, which
``ThreadClient`` covers by re-sending and ``test_worker_crashes.py`` already
tests; they would also drop the retry messages we count. The result backend
shares that direct connection for the same reason.

Every fault window is bounded (timed modes end by themselves; the driver and the
producers stop on deadlines), and the worker, proxies and servers are stopped
in ``finally`` blocks.
"""

from __future__ import annotations

import gc
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.result import AsyncResult

import tasks.service.config as celeryconfig
from storage import HotStore
from storage.cold import S3ColdStore
from storage.embedded import EmbeddedRedis
from storage.errors import ColdStoreUnavailable, HotStoreUnavailable
from storage.tiered import Threads
from tasks.client import ThreadClient
from tasks.local.processes import WorkerProcess, client_app
from tasks.stores import build_threads
from tests.conftest import msg, s3_client_for
from tests.faultproxy import FaultProxy, Flaky
from tests.servers import MotoServer

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

# Short client timeouts and a fast retry policy for the worker under test, through
# the settings this change made configurable (celeryconfig.py's table).
FAST_FAILURE = {
    "AGENT_THREADS_REDIS_SOCKET_TIMEOUT": "1",
    "AGENT_THREADS_REDIS_CONNECT_TIMEOUT": "1",
    "AGENT_THREADS_REDIS_RETRIES": "1",
    "AGENT_THREADS_S3_CONNECT_TIMEOUT": "1",
    "AGENT_THREADS_S3_READ_TIMEOUT": "2",
    "AGENT_THREADS_S3_MAX_ATTEMPTS": "2",
    "AGENT_THREADS_RETRY_BACKOFF": "1",
    "AGENT_THREADS_RETRY_BACKOFF_MAX": "1",
    "AGENT_THREADS_MAX_RETRIES": "30",
}


class WorkerStack:
    """A real ``celery worker`` subprocess on its own queues, the client app that
    talks to it, and a tally of the task retries its results report."""

    def __init__(
        self,
        *,
        name: str,
        broker: EmbeddedRedis,
        hot_url: str,
        cold_url: str,
        s3_endpoint_url: str | None,
        log_path: Path,
        settings: Mapping[str, str] = FAST_FAILURE,
    ) -> None:
        base = f"redis://127.0.0.1:{broker.port}"
        self.queues = [f"{name}-threads", f"{name}-default"]
        env = {
            **os.environ,
            "AGENT_THREADS_BROKER_URL": f"{base}/1",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/2",
            "AGENT_THREADS_REDIS_URL": hot_url,
            "AGENT_THREADS_COLD_URL": cold_url,
            "AGENT_THREADS_S3_ENDPOINT_URL": s3_endpoint_url or "",
            "AGENT_THREADS_QUEUE": self.queues[0],
            "AGENT_THREADS_DEFAULT_QUEUE": self.queues[1],
            **settings,
        }
        self.log_path = log_path
        self.worker = WorkerProcess(
            env, self.queues, name=name, log_path=str(log_path), cwd=str(REPO)
        )
        self.app = client_app(f"{name}-client", env, self.queues)
        self.client = ThreadClient(self.app, timeout=150, resend_after=40)
        self.retries = 0
        self.retried_tasks = 0
        self.retries_by_task: dict[str, int] = {}
        self.skipped_on_retry = 0
        self._lock = threading.Lock()

    def start(self) -> WorkerStack:
        self.worker.start()
        self.worker.wait_ready(self.app, timeout=90)
        return self

    def close(self) -> None:
        try:
            self.worker.stop()
        finally:
            gc.collect()  # AsyncResults unsubscribe when collected: while the server is up
            self.app.close()

    def tally(self, name: str, result: AsyncResult[Any]) -> None:
        retries = int(result.retries or 0)
        with self._lock:
            self.retries += retries
            self.retried_tasks += retries > 0
            self.retries_by_task[name] = self.retries_by_task.get(name, 0) + retries

    def note_skipped(self, count: int) -> None:
        """Messages an append found already stored: an earlier attempt of the same
        task ran on the server although its caller saw an error (late delivery)."""
        with self._lock:
            self.skipped_on_retry += count

    def call(self, name: str, **kwargs: Any) -> Any:
        """Run ``threads.<name>`` to completion (re-sent on a lost delivery) and
        count the retries its result reports."""
        sent: list[AsyncResult[Any]] = []

        def send() -> AsyncResult[Any]:
            sent.append(self.client.send(name, **kwargs))
            return sent[-1]

        value = self.client.deliver(send)
        self.tally(name, sent[-1])
        return value

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no worker log)"


def finishes(action: Callable[[], Any], within: float) -> BaseException | None:
    """Run ``action`` in a thread; the error it raised (None if it returned).
    Fails the test if it is still running after ``within`` seconds (a hang)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=within)
    assert outcome, f"still blocked after {within} s: the client has no usable timeout"
    return outcome[0]


class Net:
    """The servers, proxies and direct storage views of this module."""

    def __init__(self, broker: EmbeddedRedis, s3: MotoServer) -> None:
        self.broker = broker
        self.s3 = s3
        self.bucket = f"net-{uuid.uuid4().hex[:12]}"
        s3_client = s3_client_for(s3.url)
        s3_client.create_bucket(Bucket=self.bucket)
        self.redis_proxy = FaultProxy(("127.0.0.1", broker.port), name="redis", seed=1)
        self.s3_proxy = FaultProxy(("127.0.0.1", s3.port), name="s3", seed=2)
        self.hot_client = broker.client()
        self.direct = Threads(HotStore(self.hot_client), S3ColdStore(s3_client, self.bucket))

    @property
    def proxied_redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_proxy.port}/0"

    @property
    def proxied_s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_proxy.port}"

    def heal(self) -> None:
        for proxy in (self.redis_proxy, self.s3_proxy):
            if proxy.running:
                proxy.heal()


@pytest.fixture(scope="module")
def net(s3_server: MotoServer) -> Iterator[Net]:
    with EmbeddedRedis() as broker:
        setup = Net(broker, s3_server)
        try:
            setup.redis_proxy.start()
            setup.s3_proxy.start()
            yield setup
        finally:
            setup.hot_client.close()
            setup.s3_proxy.stop()
            setup.redis_proxy.stop()


@pytest.fixture
def healed(net: Net) -> Iterator[Net]:
    net.heal()
    try:
        yield net
    finally:
        net.heal()


def test_storage_clients_time_out_on_a_stall_instead_of_hanging(healed: Net) -> None:
    """A stalled endpoint (connection accepted, no answer) surfaces as the typed
    transient error after the configured timeouts, while the stall still lasts."""
    settings = {
        **celeryconfig.agent_threads,
        "redis_url": healed.proxied_redis_url,
        "cold_url": f"s3://{healed.bucket}/threads",
        "s3_endpoint_url": healed.proxied_s3_url,
        "redis_socket_timeout": 0.5,
        "redis_connect_timeout": 0.5,
        "s3_connect_timeout": 0.5,
        "s3_read_timeout": 0.5,
        "s3_max_attempts": 2,
    }
    threads = build_threads(settings)
    threads.hot.redis.ping()  # a pooled connection exists before the stall
    healed.redis_proxy.stall()
    error = finishes(lambda: threads.hot.exists("stalled"), within=30)
    assert isinstance(error, HotStoreUnavailable), error
    assert healed.redis_proxy.mode == "stall"
    healed.s3_proxy.stall()
    error = finishes(lambda: threads.cold.read("stalled"), within=30)
    assert isinstance(error, ColdStoreUnavailable), error
    assert "stalled" in str(error)
    assert healed.s3_proxy.mode == "stall"
    healed.heal()
    assert threads.hot.exists("stalled") is False
    assert threads.cold.read("stalled") is None
    threads.hot.redis.close()


def test_default_client_settings_have_finite_timeouts_and_few_client_retries() -> None:
    threads = build_threads({**celeryconfig.agent_threads, "cold_url": "s3://bucket/threads"})
    assert isinstance(threads.hot.redis, redis.Redis)
    kwargs = threads.hot.redis.connection_pool.connection_kwargs
    assert 0 < kwargs["socket_timeout"] <= 30
    assert 0 < kwargs["socket_connect_timeout"] <= 30
    assert kwargs["retry"].get_retries() <= 3
    cold = threads.cold
    assert isinstance(cold, S3ColdStore)
    config: Any = cold.client.meta.config
    assert 0 < config.connect_timeout <= 30
    assert 0 < config.read_timeout <= 60
    assert config.retries is not None
    assert config.retries["total_max_attempts"] <= 5  # the first try included
    threads.hot.redis.close()


# -- the worker under faults -------------------------------------------------------------

PRODUCERS = 4  # even ones only append (and load), odd ones also flush and hydrate
THREADS_PER_PRODUCER = 2
CYCLE_EVERY = 4  # every 4th append to a thread: load; for odd producers flush + hydrate first
MIN_STEPS = 12
MAX_STEPS = 400
BUDGET_S = 75.0
# (proxy, fault, seconds): each kind on each side, then random faults on both
SCRIPT: list[tuple[str, str, float]] = [
    ("redis", "drop", 1.5),
    ("s3", "drop", 1.5),
    ("redis", "stall", 3.0),
    ("s3", "stall", 3.0),
    ("redis", "reset", 1.0),
    ("s3", "reset", 1.0),
]
PAUSE_S = 0.8
FLAKY_S = 6.0


@pytest.fixture(scope="module")
def stack(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    setup = WorkerStack(
        name="netfaults",
        broker=net.broker,
        hot_url=net.proxied_redis_url,
        cold_url=f"s3://{net.bucket}/threads",
        s3_endpoint_url=net.proxied_s3_url,
        log_path=tmp_path_factory.mktemp("netfaults") / "worker.log",
    )
    try:
        yield setup.start()
    finally:
        net.heal()
        setup.close()


def test_tasks_retry_and_converge_exactly_once_under_redis_and_s3_faults(
    healed: Net, stack: WorkerStack, record_property: Callable[[str, object], None]
) -> None:
    net = healed
    proxies = {"redis": net.redis_proxy, "s3": net.s3_proxy}
    before = {name: proxy.counts() for name, proxy in proxies.items()}
    expected: dict[str, list[str]] = {}
    ops = {"append": 0, "flush": 0, "evicted": 0, "hydrate": 0, "restored": 0, "load": 0}
    ops_lock = threading.Lock()
    faults_done = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []
    flaky_plan: list[tuple[str, str, float]] = []
    started = time.monotonic()

    def count(**deltas: int) -> None:
        with ops_lock:
            for key, delta in deltas.items():
                ops[key] += delta

    def drive_faults() -> None:
        try:
            # start once every thread exists, so the faults hit the steady traffic
            warm_up = time.monotonic() + 30
            while len(expected) < PRODUCERS * THREADS_PER_PRODUCER:
                if stop.wait(0.05) or time.monotonic() > warm_up:
                    return
            for side, kind, seconds in SCRIPT:
                if stop.wait(PAUSE_S):
                    return
                proxy = proxies[side]
                if kind == "drop":
                    proxy.drop(seconds)
                elif kind == "stall":
                    proxy.stall(seconds)
                else:
                    proxy.reset(seconds)
                if stop.wait(seconds):
                    return
            flaky = Flaky(
                list(proxies.values()), seed=2024, gap=(0.3, 0.8), length=(0.3, 1.5), max_faults=8
            )
            with flaky:
                stop.wait(FLAKY_S)
            flaky_plan.extend(flaky.injected)
            if flaky.error is not None:
                raise flaky.error
        except BaseException as exc:
            errors.append(exc)
        finally:
            net.heal()
            faults_done.set()

    def produce(p: int) -> None:
        rng = random.Random(100 + p)
        lifecycle = p % 2 == 1
        tids = [f"net-{p}-{k}" for k in range(THREADS_PER_PRODUCER)]
        try:
            for tid in tids:  # the owner makes a re-sent create answer "existing"
                stack.call("create", thread_id=tid, owner=f"producer-{p}")
                expected[tid] = []
            step = 0
            while step < MAX_STEPS and not stop.is_set():
                if faults_done.is_set() and step >= MIN_STEPS:
                    return
                tid = tids[step % len(tids)]
                have = len(expected[tid])
                batch = [msg(f"{tid}-m{have + j:04d}") for j in range(rng.randint(1, 3))]
                result = stack.call("append", thread_id=tid, messages=batch)
                assert result["appended_ids"] + result["skipped_ids"] == [m["id"] for m in batch]
                stack.note_skipped(len(result["skipped_ids"]))
                expected[tid] += [m["id"] for m in batch]
                count(append=1)
                if (step // len(tids)) % CYCLE_EVERY == CYCLE_EVERY - 1:
                    if lifecycle:
                        flushed = stack.call("flush", thread_id=tid, evict=True)
                        hydrated = stack.call("hydrate", thread_id=tid)
                        assert hydrated["status"] in ("hot", "restored")
                        count(
                            flush=1,
                            evicted=int(bool(flushed["evicted"])),
                            hydrate=1,
                            restored=int(hydrated["status"] == "restored"),
                        )
                    loaded = stack.call("load", thread_id=tid)
                    assert [m["id"] for m in loaded["messages"]] == expected[tid]
                    count(load=1)
                step += 1
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    driver = threading.Thread(target=drive_faults, name="fault-driver")
    producers = [threading.Thread(target=produce, args=(p,)) for p in range(PRODUCERS)]
    try:
        driver.start()
        for producer in producers:
            producer.start()
        deadline = started + BUDGET_S
        for thread in [driver, *producers]:
            thread.join(timeout=max(1.0, deadline - time.monotonic()))
        stuck = [t.name for t in [driver, *producers] if t.is_alive()]
    finally:
        stop.set()
        for thread in [driver, *producers]:
            thread.join(timeout=60)
        net.heal()
    assert not errors, f"{errors!r}\nworker log:\n{stack.log_tail()}"
    assert not stuck, f"{stuck} did not finish within {BUDGET_S} s"

    # The faults are over: archive every thread, check the archive, bring it back.
    for tid, ids in expected.items():
        deadline = time.monotonic() + 30
        while net.direct.hot.exists(tid):  # a thread pinned by its last hydrate stays hot
            assert time.monotonic() < deadline, f"{tid} was never evicted"
            stack.call("flush", thread_id=tid, evict=True)
        found = net.direct.cold.read(tid)
        assert found is not None, f"{tid} is in no tier"
        assert [m["id"] for m in found[0].messages()] == ids
        assert stack.call("hydrate", thread_id=tid)["status"] == "restored"
        loaded = stack.call("load", thread_id=tid)["messages"]
        assert [m["id"] for m in loaded] == ids
        assert [m["id"] for m in net.direct.load(tid)] == ids

    after = {name: proxy.counts() for name, proxy in proxies.items()}
    injected = {
        name: {
            field: getattr(after[name], field) - getattr(before[name], field)
            for field in ("drops", "resets", "stalls", "stalled_connections")
        }
        for name in proxies
    }
    figures = {
        "threads": len(expected),
        "messages": sum(map(len, expected.values())),
        "append_tasks": ops["append"],
        "flush_tasks": ops["flush"],
        "evicted_by_flush": ops["evicted"],
        "hydrate_tasks": ops["hydrate"],
        "restored_by_hydrate": ops["restored"],
        "load_checks": ops["load"],
        "faults_injected": injected,
        "connections_hit": sum(after[n].injected - before[n].injected for n in proxies),
        "fault_episodes": len(SCRIPT) + len(flaky_plan),
        "flaky_plan": flaky_plan,
        "task_retries": stack.retries,
        "tasks_that_retried": stack.retried_tasks,
        "retries_by_task": stack.retries_by_task,
        "messages_skipped_as_already_stored": stack.skipped_on_retry,
        "resent_after_lost_delivery": stack.client.resends,
        "lost": 0,
        "duplicated": 0,
        "seconds": round(time.monotonic() - started, 1),
    }
    record_property("figures", figures)
    print("FAULT FIGURES", json.dumps(figures))
    for name in proxies:
        assert after[name].injected > before[name].injected, f"no fault ever hit {name}"
    assert stack.retries > 0, "no task retried: the faults proved nothing"
