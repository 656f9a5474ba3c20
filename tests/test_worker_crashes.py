"""Real `celery worker` processes SIGKILLed while append and turn tasks are in flight.

Every test runs on both brokers (``broker``): Redis (database 3, with a 3 s
visibility timeout so that it hands an unacknowledged task to the restarted worker
within seconds) and RabbitMQ (a fresh vhost, quorum queues; it requeues a dead
worker's tasks when its connection drops). The worker runs in its own process group
on separate Redis databases (results 4, hot tier 5) and queues.
A killer thread SIGKILLs the worker 0.5-2 s after it came up and starts a new one.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from storage import HotStore
from storage.cold import FileColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tasks.client import ThreadClient
from tasks.local.processes import BeatProcess, WorkerProcess, client_app
from tests.conftest import msg
from tests.rabbitmq import Vhost
from tests.soak import without_model_sdks

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

RESULT_TIMEOUT = 120
QUEUES = ["crash-threads", "crash-default"]


class Crashes:
    """A worker, the app that talks to it, and the storage it writes, for one test."""

    def __init__(
        self, server: EmbeddedRedis, broker_url: str | None, cold_root: Path, log_path: Path
    ) -> None:
        """``broker_url``: RabbitMQ's; None for the Redis broker on ``server``."""
        base = f"redis://127.0.0.1:{server.port}"
        self.broker = "redis" if broker_url is None else "rabbitmq"
        self.hot_url = f"{base}/5"
        env = {
            **os.environ,
            "AGENT_THREADS_BROKER_URL": broker_url or f"{base}/3",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/4",
            "AGENT_THREADS_REDIS_URL": self.hot_url,
            "AGENT_THREADS_COLD_URL": f"file://{cold_root}",
            "AGENT_THREADS_QUEUE": QUEUES[0],
            "AGENT_THREADS_DEFAULT_QUEUE": QUEUES[1],
            "AGENT_THREADS_IMPORTS": "tests.agent_tasks",
            # the turn timers scaled down 10x from the defaults, in their proportions
            # (lease 20 s, heartbeat and reconciler every quarter lease):
            # test_durable_turns.py runs the same kills at the defaults themselves
            "AGENT_THREADS_LEASE_TTL_MS": "2000",
            "AGENT_THREADS_HEARTBEAT_MS": "500",
            "AGENT_THREADS_TURN_RECONCILE_EVERY": "0.5",
            "AGENT_THREADS_REDIS_SOCKET_TIMEOUT": "0.5",  # 5 s at the defaults
            "AGENT_THREADS_RETRY_BACKOFF_MAX": "2",  # under the 3 s visibility timeout
        }
        if broker_url is None:
            env["AGENT_THREADS_VISIBILITY_TIMEOUT"] = "3"
            env["AGENT_THREADS_RESTORE_INTERVAL"] = "1"
        env = without_model_sdks(env, log_path.parent / "worker-site")
        self.worker = WorkerProcess(env, QUEUES, log_path=str(log_path), cwd=str(REPO))
        # the beat runs apart from the workers (as in production) and is never killed:
        # its turn reconciler re-wakes the turns whose worker died
        self.beat = BeatProcess(
            env, str(log_path.parent / "beat-schedule"), log_path=str(log_path), cwd=str(REPO)
        )
        self.app = client_app("crash-client", env, QUEUES)
        self.client = ThreadClient(self.app, timeout=RESULT_TIMEOUT, resend_after=12)
        self.hot_client = redis.Redis.from_url(self.hot_url)
        self.threads = Threads(HotStore(self.hot_client), FileColdStore(cold_root))
        self.kills = 0
        self._stop = threading.Event()
        self._killer: threading.Thread | None = None

    def start_killing(self, seed: int) -> None:
        rng = random.Random(seed)

        def killer() -> None:
            while True:
                self.worker.wait_ready(self.app)
                if self._stop.wait(rng.uniform(0.5, 2.0)):
                    return
                self.worker.kill()
                self.kills += 1
                self.worker.start()

        self._killer = threading.Thread(target=killer, daemon=True)
        self._killer.start()

    def stop_killing(self) -> None:
        self._stop.set()
        if self._killer is not None:
            self._killer.join(timeout=10)

    def close(self) -> None:
        self.stop_killing()
        self.worker.kill()
        self.beat.stop()
        self.app.close()
        for db in (3, 4, 5):  # leave the session's server clean for other tests
            client = redis.Redis.from_url(self.hot_url.rsplit("/", 1)[0] + f"/{db}")
            client.flushdb()
            client.close()
        self.hot_client.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str | None:
    """None: the Redis broker (db 3 of the session's server); else a fresh RabbitMQ vhost."""
    if request.param == "redis":
        return None
    vhost: Vhost = request.getfixturevalue("rabbitmq_vhost")
    return vhost.url


@pytest.fixture
def crashes(
    broker_url: str | None, redis_server: EmbeddedRedis, tmp_path: Path
) -> Iterator[Crashes]:
    setup = Crashes(redis_server, broker_url, tmp_path / "cold", tmp_path / "worker.log")
    setup.worker.start()
    setup.beat.start()
    try:
        yield setup
    finally:
        setup.close()


def run_producers(count: int, produce: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrapped(index: int) -> None:
        try:
            produce(index)
        except BaseException as exc:
            errors.append(exc)

    producers = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join(timeout=600)
    return errors


def test_appends_survive_worker_sigkills_exactly_once_in_producer_order(
    crashes: Crashes, record_property: Callable[[str, object], None]
) -> None:
    crashes.client.call("create", thread_id="chat")
    producers, min_batches, min_kills, budget_s = 3, 40, 6, 25.0
    sent = [0]
    started = time.monotonic()
    crashes.start_killing(seed=7)

    def enough(batches: int) -> bool:
        if time.monotonic() - started > budget_s:
            return True
        return batches >= min_batches and crashes.kills >= min_kills

    def produce(p: int) -> None:
        rng = random.Random(p)
        i = batches = 0
        while not enough(batches):
            batches += 1
            size = rng.randint(1, 3)
            batch = [msg(f"p{p}-{j:05d}") for j in range(i, i + size)]
            i += size
            sent[0] += 1
            # per-producer order: wait for each batch before sending the next
            crashes.client.call("append", thread_id="chat", messages=batch)

    errors = run_producers(producers, produce)
    crashes.stop_killing()
    assert not errors, errors
    stored = [m["id"] for m in crashes.threads.load("chat")]
    duplicates = len(stored) - len(set(stored))
    assert duplicates == 0
    for p in range(producers):
        own = [i for i in stored if i.startswith(f"p{p}-")]
        assert own == sorted(own), f"producer {p}'s order was broken"
        assert own == [f"p{p}-{j:05d}" for j in range(len(own))], f"producer {p} lost a message"
    assert crashes.kills >= 5, "the worker was hardly killed: the test proved little"
    figures = {
        "append_tasks": sent[0],
        "messages": len(stored),
        "kills": crashes.kills,
        "lost": 0,
        "duplicated": duplicates,
        "resent_after_lost_delivery": crashes.client.resends,
        "broker": crashes.broker,
        "seconds": round(time.monotonic() - started, 1),
    }
    record_property("figures", figures)
    print(f"\ncrash figures (appends): {figures}")


def test_turns_survive_worker_sigkills_with_exactly_one_reply_each(
    crashes: Crashes, record_property: Callable[[str, object], None]
) -> None:
    thread_ids, min_turns, min_kills, budget_s = ["a", "b", "c", "d"], 4, 6, 45.0
    agent = crashes.app.signature("test.scripted_turn", kwargs={"think_ms": 300})
    done: dict[str, int] = {}
    started = time.monotonic()
    crashes.start_killing(seed=11)

    def produce(index: int) -> None:
        tid = thread_ids[index]
        n = 0
        while time.monotonic() - started < budget_s and (
            n < min_turns or crashes.kills < min_kills
        ):
            crashes.client.run_turn(
                tid,
                [msg(f"{tid}-u{n:03d}")],
                agent,
                turn_id=f"{tid}-t{n:03d}",
                mode="new" if n == 0 else "continue",
            )
            n += 1
        done[tid] = n

    errors = run_producers(len(thread_ids), produce)
    crashes.stop_killing()
    assert not errors, errors
    reruns = repeated_calls = 0
    for tid in thread_ids:
        expected = []
        for n in range(done[tid]):
            turn = f"{tid}-t{n:03d}"
            expected += [f"{tid}-u{n:03d}", f"{turn}:0:assistant"]
            runs = int(crashes.hot_client.get(f"test:runs:{turn}") or 0)
            calls = int(crashes.hot_client.get(f"test:calls:{turn}") or 0)
            assert 1 <= calls <= runs  # a re-run after the reply was stored calls no model
            reruns += runs - 1
            repeated_calls += calls - 1
        assert [m["id"] for m in crashes.threads.load(tid)] == expected
        assert crashes.threads.hot.info(tid).lease_owner is None
    assert crashes.kills >= 5, "the worker was hardly killed: the test proved little"
    figures = {
        "turns": sum(done.values()),
        "kills": crashes.kills,
        "turn_runs_repeated_after_a_kill": reruns,
        "model_calls_repeated (killed mid-call)": repeated_calls,
        "replies_lost": 0,
        "replies_doubled": 0,
        "turns_resent_after_lost_delivery": crashes.client.resends,
        "broker": crashes.broker,
        "seconds": round(time.monotonic() - started, 1),
    }
    record_property("figures", figures)
    print(f"\ncrash figures (turns): {figures}")
