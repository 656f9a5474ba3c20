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
from celery import Celery
from celery.signals import worker_process_init

from storage import HotStore
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.tiered import Threads

app = Celery("agent_threads")
app.config_from_object("celeryconfig")


def cold_store_from_url(
    url: str, *, s3_endpoint_url: str | None = None, s3_region: str | None = None
) -> ColdStore:
    """``s3://bucket/prefix`` -> S3ColdStore, ``file:///abs/path`` or ``file://rel/path``
    -> FileColdStore."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"cold store URL {url!r} names no bucket: use s3://bucket/prefix")
        client = boto3.client("s3", endpoint_url=s3_endpoint_url, region_name=s3_region)
        return S3ColdStore(client, parsed.netloc, parsed.path.strip("/") or "threads")
    if parsed.scheme == "file":
        return FileColdStore(parsed.netloc + parsed.path)
    raise ValueError(f"unsupported cold store URL {url!r}: use s3://bucket/prefix or file:///path")


def build_threads(settings: Mapping[str, Any]) -> Threads:
    """The storage a worker uses, from the ``agent_threads`` settings dict."""
    hot = HotStore(
        redis.Redis.from_url(settings["redis_url"]),
        namespace=settings["namespace"],
        ttl_seconds=settings["ttl_seconds"],
    )
    cold = cold_store_from_url(
        settings["cold_url"],
        s3_endpoint_url=settings.get("s3_endpoint_url"),
        s3_region=settings.get("s3_region"),
    )
    return Threads(hot, cold)


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
