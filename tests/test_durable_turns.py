"""Durable turns at the shipped default timer settings, with real worker processes.

The worker (with its beat, ``-B``) runs with celeryconfig's defaults: no test-only
visibility timeout, lease, heartbeat or reconciler period. Each test SIGKILLs it
at a point of a turn, or loses a message, and checks that every fire-and-forget
turn still finishes exactly once: one reply, each tool result once, each tool run
once unless the kill hit inside it. Recovery times are printed and recorded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection

from storage import HotStore
from storage.cold import FileColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from storage.turns import TurnStatus
from tasks.app import settings
from tasks.client import ThreadClient
from tasks.local.processes import WorkerProcess, client_app
from tests.conftest import msg
from tests.soak import without_model_sdks

REPO = Path(__file__).resolve().parent.parent
QUEUES = ["durable-threads", "durable-default"]
NAMESPACE = "durable"
BROKER_DB, RESULTS_DB, HOT_DB = 6, 7, 8
SLOW_FLUSH = "flush-"
"""Threads whose first flush waits 120 s after its upload (tests/agent_tasks.py)."""

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


class DefaultsStack:
    """A worker with its beat at the default settings, the app that talks to it, and
    the storage it writes."""

    def __init__(self, server: EmbeddedRedis, broker_url: str, tmp_path: Path) -> None:
        base = f"redis://127.0.0.1:{server.port}"
        self.broker_url = broker_url
        self.broker = "redis"
        self.hot_url = f"{base}/{HOT_DB}"
        self.flush_dbs = [f"{base}/{db}" for db in (BROKER_DB, RESULTS_DB, HOT_DB)]
        env = {
            **os.environ,
            "AGENT_THREADS_BROKER_URL": broker_url,
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/{RESULTS_DB}",
            "AGENT_THREADS_REDIS_URL": self.hot_url,
            "AGENT_THREADS_NAMESPACE": NAMESPACE,
            "AGENT_THREADS_COLD_URL": f"file://{tmp_path / 'cold'}",
            "AGENT_THREADS_QUEUE": QUEUES[0],
            "AGENT_THREADS_DEFAULT_QUEUE": QUEUES[1],
            "AGENT_THREADS_IMPORTS": "tests.agent_tasks",
            "AGENT_THREADS_TEST_SLOW_FLUSH": f"{SLOW_FLUSH}:120",
        }
        for name in list(env):  # the shipped defaults, whatever the caller's shell says
            if name.startswith("AGENT_THREADS_") and name.endswith(
                ("_TTL_MS", "HEARTBEAT_MS", "VISIBILITY_TIMEOUT", "RECONCILE_EVERY", "INTERVAL")
            ):
                del env[name]
        env = without_model_sdks(env, tmp_path / "worker-site")
        self.worker = WorkerProcess(
            env,
            QUEUES,
            name="durable",
            concurrency=6,
            log_path=str(tmp_path / "worker.log"),
            cwd=str(REPO),
            beat_schedule=str(tmp_path / "beat-schedule"),
        )
        self.app = client_app("durable-client", env, QUEUES)
        self.client = ThreadClient(self.app, timeout=240)
        self.hot_client = redis.Redis.from_url(self.hot_url)
        hot = HotStore(self.hot_client, namespace=NAMESPACE)
        self.threads = Threads(hot, FileColdStore(tmp_path / "cold", namespace=NAMESPACE))

    def count(self, key: str) -> int:
        return int(self.hot_client.get(key) or 0)

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not happen within {timeout} s")
            time.sleep(0.05)

    def ids(self, thread_id: str) -> list[str]:
        self.threads.hydrate(thread_id)  # the turn's flush evicted it
        return [m["id"] for m in self.threads.load(thread_id)]

    def purge_queues(self) -> int:
        """Delete every message waiting in the broker's queues (a lost delivery)."""
        purged = 0
        with Connection(self.broker_url) as connection:
            channel = connection.default_channel
            for queue in QUEUES:
                try:
                    purged += int(channel.queue_purge(queue) or 0)
                except Exception:  # noqa: S112 - a queue not declared yet holds nothing
                    continue
        return purged

    def close(self) -> None:
        self.worker.kill()
        self.app.close()
        for url in self.flush_dbs:
            client = redis.Redis.from_url(url)
            client.flushdb()
            client.close()
        self.hot_client.close()


@pytest.fixture
def stack(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[DefaultsStack]:
    """On the Redis broker (for what does not depend on the broker)."""
    broker = f"redis://127.0.0.1:{redis_server.port}/{BROKER_DB}"
    setup = DefaultsStack(redis_server, broker, tmp_path)
    try:
        yield setup
    finally:
        setup.close()


@pytest.fixture(params=["redis", "rabbitmq"])
def brokers_stack(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis, tmp_path: Path
) -> Iterator[DefaultsStack]:
    """On the Redis broker, then on RabbitMQ (quorum queues, a fresh vhost)."""
    yield from _stack(request, str(request.param), redis_server, tmp_path)


@pytest.fixture
def rabbitmq_stack(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis, tmp_path: Path
) -> Iterator[DefaultsStack]:
    yield from _stack(request, "rabbitmq", redis_server, tmp_path)


def _stack(
    request: pytest.FixtureRequest, broker_name: str, redis_server: EmbeddedRedis, tmp_path: Path
) -> Iterator[DefaultsStack]:
    if broker_name == "redis":
        broker = f"redis://127.0.0.1:{redis_server.port}/{BROKER_DB}"
    else:
        broker = request.getfixturevalue("rabbitmq_vhost").url
    setup = DefaultsStack(redis_server, broker, tmp_path)
    setup.broker = broker_name
    try:
        yield setup
    finally:
        setup.close()


def tool_turn(stack: DefaultsStack, **kwargs: Any) -> Any:
    return stack.app.signature("test.tool_turn", kwargs=kwargs)


def expected_ids(thread_id: str, turn_id: str, tool_calls: int) -> list[str]:
    ids = [f"{thread_id}-u"]
    for n in range(tool_calls):
        ids += [f"{turn_id}:{n}:assistant", f"{turn_id}:tool:{turn_id}-c{n}"]
    return [*ids, f"{turn_id}:{tool_calls}:assistant"]


def finished(stack: DefaultsStack, thread_id: str, turn_id: str) -> TurnStatus:
    status = stack.client.wait_turn(thread_id, turn_id, timeout=240)
    assert status.state == "finished", status
    return status


def test_defaults_are_what_celeryconfig_ships() -> None:
    """The tests in this module run at these settings: if they change, so do the tests."""
    conf = settings()
    assert conf["lease_ttl_ms"] == 20_000
    assert conf["heartbeat_ms"] == 5_000


def test_turns_killed_in_a_model_call_a_tool_and_the_flush_finish_once_at_the_defaults(
    brokers_stack: DefaultsStack, record_property: Callable[[str, object], None]
) -> None:
    """Three fire-and-forget turns, each caught by one SIGKILL of the worker at a
    different point; the worker (and its beat) is restarted and nobody re-sends."""
    stack = brokers_stack
    stack.worker.start()
    stack.worker.wait_ready(stack.app)
    turns = {  # thread -> (tool calls, the test agent's timings)
        "model": (0, {"first_think_ms": 120_000}),
        "tool": (2, {"first_tool_ms": 120_000}),
        f"{SLOW_FLUSH}1": (1, {}),
    }
    for thread_id, (calls, timing) in turns.items():
        agent = tool_turn(stack, tool_calls=calls, **timing)
        stack.client.turn(
            thread_id, [msg(f"{thread_id}-u")], agent, turn_id=f"{thread_id}-t", mode="new"
        )
    stack.wait_for("the model call", lambda: stack.count("test:calls:model-t") >= 1)
    stack.wait_for("the tool call", lambda: stack.count("test:tool:tool-t-c0") >= 1)
    stack.wait_for("the flush", lambda: stack.count(f"test:flushes:{SLOW_FLUSH}1") >= 1)
    stack.worker.kill()
    killed = time.time()
    stack.worker.start()
    recovery = {}
    for thread_id, (calls, _) in turns.items():
        turn_id = f"{thread_id}-t"
        status = finished(stack, thread_id, turn_id)
        assert status.finished_ms is not None
        recovery[thread_id] = round(status.finished_ms / 1000 - killed, 1)
        assert stack.ids(thread_id) == expected_ids(thread_id, turn_id, calls)
        assert status.wakes >= 1  # the reconciler, not a redelivery, finished it
    # a model call or a tool the kill interrupted ran again; nothing else did
    assert stack.count("test:calls:model-t") == 2
    assert stack.count("test:tool:tool-t-c0") == 2  # killed inside this tool
    assert stack.count("test:tool:tool-t-c1") == 1
    assert stack.count("test:calls:tool-t") == 3  # three replies, none asked twice
    assert stack.count(f"test:tool:{SLOW_FLUSH}1-t-c0") == 1
    assert stack.count(f"test:calls:{SLOW_FLUSH}1-t") == 2
    figures = {"broker": stack.broker, "recovery_seconds_after_the_kill": recovery, "kills": 1}
    record_property("figures", figures)
    print(f"\ndurable turns at the defaults: {figures}")


def lose_a_turn(stack: DefaultsStack, thread_id: str) -> None:
    """Record and send a turn while no worker runs, then delete its message from the
    queue (the Redis broker's delivery gap)."""
    agent = tool_turn(stack, tool_calls=1)
    stack.client.turn(
        thread_id, [msg(f"{thread_id}-u")], agent, turn_id=f"{thread_id}-t", mode="new"
    )
    stack.wait_for("the message", lambda: stack.purge_queues() >= 1, timeout=10)


def check_lost_turn(stack: DefaultsStack, thread_id: str, started: float) -> dict[str, Any]:
    status = finished(stack, thread_id, f"{thread_id}-t")
    assert stack.ids(thread_id) == expected_ids(thread_id, f"{thread_id}-t", 1)
    assert status.wakes == 1  # the reconciler sent it again; nobody else did
    assert stack.count(f"test:runs:{thread_id}-t") == 1
    assert status.finished_ms is not None
    seconds = round(status.finished_ms / 1000 - started, 1)
    return {"broker": stack.broker, "seconds_from_worker_start_to_finished": seconds}


def test_a_long_step_a_waiting_client_and_a_lost_message_at_the_defaults(
    stack: DefaultsStack, record_property: Callable[[str, object], None]
) -> None:
    """Three turns on one worker at the defaults, at once (no kill):

    * ``long``: its model call takes 3 leases; it keeps the lease (no wake, no
      takeover, every step run once, the heartbeat beat all along);
    * ``waited``: ``run_turn`` with ``resend_after`` a third of each of its steps:
      it waits on the record, so the model is called once per reply, each tool once;
    * ``lost``: its message was deleted before any worker ran: the reconciler."""
    lease_ms = int(settings()["lease_ttl_ms"])
    lose_a_turn(stack, "lost")
    started = time.time()
    stack.worker.start()
    stack.worker.wait_ready(stack.app)
    agent = tool_turn(stack, tool_calls=1, first_think_ms=3 * lease_ms)
    stack.client.turn("long", [msg("long-u")], agent, turn_id="long-t", mode="new")

    client = ThreadClient(stack.app, timeout=240, resend_after=1.0)
    agent = tool_turn(stack, tool_calls=2, think_ms=3000, tool_ms=3000)
    client.run_turn("waited", [msg("waited-u")], agent, turn_id="waited-t", mode="new")
    assert stack.ids("waited") == expected_ids("waited", "waited-t", 2)
    assert stack.count("test:runs:waited-t") == 1
    assert stack.count("test:calls:waited-t") == 3
    assert [stack.count(f"test:tool:waited-t-c{n}") for n in range(2)] == [1, 1]
    assert client.resends == 0

    figures = check_lost_turn(stack, "lost", started)

    status = finished(stack, "long", "long-t")
    assert stack.ids("long") == expected_ids("long", "long-t", 1)
    assert stack.count("test:calls:long-t") == 2  # two replies, each asked once
    assert stack.count("test:tool:long-t-c0") == 1
    assert (status.wakes, status.takeovers) == (0, 0)
    assert status.attempt == len(status.steps)  # every step ran once
    assert int(status.record.get("beats", 0)) >= 3 * lease_ms // settings()["heartbeat_ms"] - 1
    record_property("figures", figures)
    print(f"\nlost message: {figures}")


def test_a_turn_whose_message_rabbitmq_lost_is_finished_by_the_reconciler(
    rabbitmq_stack: DefaultsStack, record_property: Callable[[str, object], None]
) -> None:
    """RabbitMQ has no delivery gap, but a queue can be purged or a message dropped by
    a policy: the same recovery as on the Redis broker."""
    lose_a_turn(rabbitmq_stack, "lost")
    started = time.time()
    rabbitmq_stack.worker.start()
    figures = check_lost_turn(rabbitmq_stack, "lost", started)
    record_property("figures", figures)
    print(f"\nlost message: {figures}")
