"""RabbitMQ as the broker: a real ``celery worker`` on a fresh vhost runs the threads.*
tasks and retries, all on quorum queues; results and the hot tier stay in Redis
(the session's redis-server, dbs 6 and 7).

Skipped where rabbitmq-server is not installed (``tests/conftest.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from storage import HotStore
from storage.embedded import EmbeddedRedis
from tasks.client import ThreadClient
from tasks.local.processes import WorkerProcess, client_app
from tasks.service.config import broker_settings
from tests.conftest import msg
from tests.rabbitmq import DELAY_LEVELS, RabbitMQServer, Vhost, message_counts
from tests.soak import without_model_sdks

REPO = Path(__file__).resolve().parent.parent
QUEUES = ["mq-threads", "mq-default"]
RESULTS_DB, HOT_DB = 6, 7
TIMEOUT = 60


@dataclass
class Stack:
    server: RabbitMQServer
    vhost: Vhost
    app: Celery
    client: ThreadClient
    hot: HotStore


@pytest.fixture
def stack(
    rabbitmq_server: RabbitMQServer,
    rabbitmq_vhost: Vhost,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
) -> Iterator[Stack]:
    base = f"redis://127.0.0.1:{redis_server.port}"
    env = {
        **os.environ,
        "AGENT_THREADS_BROKER_URL": rabbitmq_vhost.url,
        "AGENT_THREADS_RESULT_BACKEND": f"{base}/{RESULTS_DB}",
        "AGENT_THREADS_REDIS_URL": f"{base}/{HOT_DB}",
        "AGENT_THREADS_COLD_URL": f"file://{tmp_path / 'cold'}",
        "AGENT_THREADS_QUEUE": QUEUES[0],
        "AGENT_THREADS_DEFAULT_QUEUE": QUEUES[1],
        "AGENT_THREADS_IMPORTS": "tests.agent_tasks",
    }
    env = without_model_sdks(env, tmp_path / "worker-site")
    worker = WorkerProcess(
        env, QUEUES, name="mq", log_path=str(tmp_path / "worker.log"), cwd=str(REPO)
    )
    app = client_app("mq-client", env, QUEUES)
    hot_client = redis.Redis.from_url(f"{base}/{HOT_DB}")
    try:
        worker.start().wait_ready(app)
        yield Stack(
            rabbitmq_server,
            rabbitmq_vhost,
            app,
            ThreadClient(app, timeout=TIMEOUT, resend_after=TIMEOUT),
            HotStore(hot_client),
        )
    finally:
        worker.kill()  # a warm shutdown on RabbitMQ waits out the event loop's 10 s poll
        app.close()
        hot_client.flushdb()
        hot_client.close()
        results = redis.Redis.from_url(f"{base}/{RESULTS_DB}")
        results.flushdb()
        results.close()


def test_threads_tasks_run_on_quorum_queues(stack: Stack) -> None:
    stack.client.call("create", thread_id="chat")
    appended = stack.client.call("append", thread_id="chat", messages=[msg("u1"), msg("u2")])
    assert appended["appended_ids"] == ["u1", "u2"]
    loaded = stack.client.call("load", thread_id="chat")
    assert [m["id"] for m in loaded["messages"]] == ["u1", "u2"]
    assert stack.client.resends == 0

    types = stack.server.list_queues(stack.vhost.name, "type")
    assert {q: types.get(q) for q in QUEUES} == dict.fromkeys(QUEUES, "quorum")
    # the delay levels of native delayed delivery, declared by the worker
    delayed = {q: t for q, t in types.items() if q.startswith("celery_delayed_")}
    assert delayed == dict.fromkeys(DELAY_LEVELS, "quorum")


def test_retries_wait_their_countdown_in_the_delayed_queues(stack: Stack) -> None:
    # test.flaky_agent (default queue) fails twice with a transient error: ThreadTask's
    # retries draw 0.5-1 s, then 1-2 s (a sub-second countdown is sent as 1 s)
    stack.client.call("create", thread_id="t1")
    stack.client.call("acquire_lease", thread_id="t1", owner="turn-1")
    started = time.monotonic()
    flaky = stack.app.signature(
        "test.flaky_agent", kwargs={"thread_id": "t1", "turn_id": "turn-1", "failures": 2}
    ).apply_async()
    assert flaky.get(timeout=TIMEOUT) == {"attempts": 3}
    assert flaky.retries == 2
    assert time.monotonic() - started >= 2.0
    assert [m["id"] for m in stack.hot.load("t1")] == ["turn-1:reply"]

    # a countdown: the message waits in a delay queue on the broker, not in the worker
    started = time.monotonic()
    later = stack.app.send_task("threads.load", kwargs={"thread_id": "t1"}, countdown=3)
    waiting = message_counts(stack.vhost.url, [*DELAY_LEVELS, *QUEUES])
    assert sum(waiting[q] for q in DELAY_LEVELS) == 1
    assert sum(waiting[q] for q in QUEUES) == 0
    assert [m["id"] for m in later.get(timeout=TIMEOUT)["messages"]] == ["turn-1:reply"]
    assert time.monotonic() - started >= 3.0


def test_queue_settings_follow_the_broker_url() -> None:
    amqp_url, redis_url = "amqp://guest:guest@127.0.0.1:5672//", "redis://127.0.0.1:6379/1"
    quorum = broker_settings(amqp_url, {})
    assert quorum["task_default_queue_type"] == quorum["task_create_missing_queue_type"]
    assert quorum["task_default_queue_type"] == "quorum"
    assert quorum["task_create_missing_queue_exchange_type"] == "topic"
    assert "visibility_timeout" not in quorum["broker_transport_options"]
    classic = broker_settings(amqp_url, {"AGENT_THREADS_QUEUE_TYPE": "classic"})
    assert classic["task_create_missing_queue_type"] == "classic"
    with pytest.raises(ValueError, match="AGENT_THREADS_QUEUE_TYPE='stream'"):
        broker_settings(amqp_url, {"AGENT_THREADS_QUEUE_TYPE": "stream"})
    redis_broker = broker_settings(redis_url, {"AGENT_THREADS_VISIBILITY_TIMEOUT": "3"})
    assert redis_broker["broker_transport_options"]["visibility_timeout"] == 3
    assert redis_broker.keys() == quorum.keys()  # one app can be switched to the other
