"""The Celery app, configured from ``celeryconfig``, and the worker's storage.

Each worker process builds its ``Threads`` (Redis hot tier + cold store) lazily
from the ``agent_threads`` settings on first use, after the pool has forked.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any
from urllib.parse import urlparse

import boto3
import redis
from botocore.config import Config as BotoConfig
from celery import Celery
from celery.result import AsyncResult
from celery.signals import worker_process_init
from celery.utils.quorum_queues import detect_quorum_queues
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from storage import HotStore
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.hot import RedisClient
from storage.keys import KeyLayout
from storage.tiered import Threads
from tasks import logs as _logs  # noqa: F401 - connects the structured-logging signals
from tasks.metrics import InstrumentedThreads
from tasks.preflight import PreflightStep


class AgentThreadsCelery(Celery):
    """Celery, with sub-second countdowns made whole on RabbitMQ's quorum queues:
    native delayed delivery (Celery 5.5+) counts whole seconds and refuses
    ``0 < countdown < 1`` with a ValueError, which turns a retry (``retry_delay``
    draws 0.5-1 s for the first) into a rejected, dropped message."""

    def send_task(self, name: str, *args: Any, **options: Any) -> AsyncResult[Any]:
        countdown = options.get("countdown")
        if countdown is not None and 0 < countdown < 1 and self._delays_natively():
            options["countdown"] = 1
        return super().send_task(name, *args, **options)

    def _delays_natively(self) -> bool:
        with self.connection_for_write() as connection:
            driver: str = connection.transport.driver_type
        return detect_quorum_queues(self, driver)[0]


app = AgentThreadsCelery("agent_threads")
app.config_from_object("celeryconfig")
app.steps["worker"].add(PreflightStep)  # refuse contradictory settings at start-up

DEFAULT_NAMESPACE = KeyLayout().namespace


def cold_store_from_url(
    url: str,
    *,
    s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
    s3_connect_timeout: float = 5.0,
    s3_read_timeout: float = 30.0,
    s3_max_attempts: int = 3,
    s3_sse: str | None = None,
    s3_sse_kms_key_id: str | None = None,
    namespace: str | None = None,
) -> ColdStore:
    """``s3://bucket/prefix`` -> S3ColdStore, ``file:///abs/path`` or ``file://rel/path``
    -> FileColdStore. ``namespace`` keys the archives under ``prefix/<namespace>/``
    (see ``storage.cold.namespaced_prefix``). ``s3_sse`` ("AES256" or "aws:kms", with
    ``s3_sse_kms_key_id``) encrypts every archive written (S3 server-side encryption).

    The S3 client has finite timeouts and few attempts of its own (botocore's
    defaults, 60 s x 5 attempts, would hold a task for minutes on a stalled
    endpoint): the task's retry policy is what waits out an outage."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"cold store URL {url!r} names no bucket: use s3://bucket/prefix")
        config = BotoConfig(
            connect_timeout=s3_connect_timeout,
            read_timeout=s3_read_timeout,
            retries={"mode": "standard", "total_max_attempts": s3_max_attempts},
        )
        client = boto3.client(
            "s3", endpoint_url=s3_endpoint_url, region_name=s3_region, config=config
        )
        prefix = parsed.path.strip("/") or "threads"
        sse = {"ServerSideEncryption": s3_sse} if s3_sse else {}
        if s3_sse_kms_key_id:
            sse["SSEKMSKeyId"] = s3_sse_kms_key_id
        return S3ColdStore(client, parsed.netloc, prefix, sse=sse, namespace=namespace)
    if parsed.scheme == "file":
        return FileColdStore(parsed.netloc + parsed.path, namespace=namespace)
    raise ValueError(f"unsupported cold store URL {url!r}: use s3://bucket/prefix or file:///path")


def hot_redis_from_settings(settings: Mapping[str, Any]) -> RedisClient:
    """The hot tier's Redis client: finite connect and reply timeouts, and only
    ``redis_retries`` immediate retries of its own (redis-py 6+ otherwise retries
    10 times, each after a full socket timeout), so a stalled Redis becomes a
    ``HotStoreUnavailable`` and a task retry instead of a hung worker thread.
    With ``redis_cluster`` the URL names any node of a Redis Cluster."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.01), settings.get("redis_retries", 1))
    options: dict[str, Any] = {
        "socket_timeout": settings.get("redis_socket_timeout", 5.0),
        "socket_connect_timeout": settings.get("redis_connect_timeout", 5.0),
        "socket_keepalive": True,
        "retry": retry,
    }
    if settings.get("redis_cluster"):
        cluster: redis.RedisCluster = redis.RedisCluster.from_url(settings["redis_url"], **options)
        return cluster
    client: redis.Redis = redis.Redis.from_url(settings["redis_url"], **options)
    return client


def build_threads(settings: Mapping[str, Any]) -> Threads:
    """The storage a worker uses, from the ``agent_threads`` settings dict."""
    hot = HotStore(
        hot_redis_from_settings(settings),
        namespace=settings["namespace"],
        ttl_seconds=settings["ttl_seconds"],
        # the index may lag a write by this much; small against the idle time
        activity_refresh_ms=int(settings.get("idle_seconds", 1800) * 1000 / 8),
    )
    cold = cold_store_from_url(
        settings["cold_url"],
        s3_endpoint_url=settings.get("s3_endpoint_url"),
        s3_region=settings.get("s3_region"),
        s3_connect_timeout=settings.get("s3_connect_timeout", 5.0),
        s3_read_timeout=settings.get("s3_read_timeout", 30.0),
        s3_max_attempts=settings.get("s3_max_attempts", 3),
        s3_sse=settings.get("s3_sse"),
        s3_sse_kms_key_id=settings.get("s3_sse_kms_key_id"),
        # Tenants sharing a bucket get their own object keys; the default namespace
        # keeps the documented single-tenant layout prefix/<shard>/<tid>.json.gz.
        namespace=None if hot.namespace == DEFAULT_NAMESPACE else hot.namespace,
    )
    return InstrumentedThreads(hot, cold)  # Threads plus metrics and log lines


@cache
def threads() -> Threads:
    """This process's Threads, built on first use."""
    return build_threads(app.conf.agent_threads)


def configure(*, broker_url: str, result_backend: str, **agent_threads: Any) -> Threads:
    """Point this process's app at other servers (the demo, benchmarks, tests):
    broker and results, plus any ``agent_threads`` settings (``redis_url``,
    ``cold_url``, ...). Returns fresh storage built from the new settings."""
    app.conf.update(
        broker_url=broker_url,
        result_backend=result_backend,
        agent_threads={**app.conf.agent_threads, **agent_threads},
    )
    threads.cache_clear()
    return threads()


def settings() -> Mapping[str, Any]:
    conf: Mapping[str, Any] = app.conf.agent_threads
    return conf


@worker_process_init.connect
def _fresh_storage_in_child(**_: Any) -> None:
    """Never share a Redis connection pool across a fork."""
    threads.cache_clear()
