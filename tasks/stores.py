"""The storage of a Celery app's workers, built from its ``agent_threads`` settings.

``threads_for(app)`` builds each process's ``Threads`` (Redis hot tier + cold store)
on first use and again in a forked child (a Redis connection pool must never be
shared across a fork), so it is safe under every pool and needs no signal hook.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

import boto3
import redis
from botocore.config import Config as BotoConfig
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from storage import HotStore
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.hot import RedisClient
from storage.keys import KeyLayout
from storage.tiered import Threads
from tasks.observability import OFF, observed
from tasks.settings import DEFAULTS, settings_of

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


def build_threads(settings: Mapping[str, Any], *, instrumented: bool = False) -> Threads:
    """The storage a worker uses, from an ``agent_threads`` settings dict (missing
    keys take ``DEFAULTS``). ``instrumented``: with metrics and log lines per call
    (``tasks.observability.metrics.InstrumentedThreads``)."""
    settings = {**DEFAULTS, **settings}
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
    if instrumented:
        from tasks.observability.metrics import InstrumentedThreads

        return InstrumentedThreads(hot, cold)
    return Threads(hot, cold)


_built: weakref.WeakKeyDictionary[Celery, tuple[int, Threads]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def threads_for(app: Celery) -> Threads:
    """This process's storage for ``app``, built on first use (and again after a fork)."""
    entry = _built.get(app)
    if entry is not None and entry[0] == os.getpid():
        return entry[1]
    with _lock:
        entry = _built.get(app)
        if entry is None or entry[0] != os.getpid():
            built = build_threads(settings_of(app), instrumented=observed(app) != OFF)
            entry = _built[app] = (os.getpid(), built)
    return entry[1]


def forget_threads(app: Celery) -> None:
    """Build ``app``'s storage again on next use (after its settings changed)."""
    with _lock:
        entry = _built.pop(app, None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].hot.redis.close()
