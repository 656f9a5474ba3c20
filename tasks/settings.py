"""agent-threads' settings: one dict under the ``agent_threads`` key of a Celery app's
config, over these documented defaults.

A user's app sets what differs from the defaults, in its own config::

    app.conf.agent_threads = {"redis_url": "redis://cache:6379/0", "cold_url": "s3://b/t"}

Everything is read when used (``settings_of(app)``), never frozen at import time, so
a config loaded after the tasks were imported (``config_from_object`` in the user's
``celery.py``) is the one the tasks see. The service deployment builds the same dict
from ``AGENT_THREADS_*`` variables (``tasks/service/config.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from celery import Celery, current_app

KEY = "agent_threads"
"""The one key of the app's config that holds agent-threads' settings."""

DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        # storage
        "redis_url": "redis://127.0.0.1:6379/0",
        "redis_cluster": False,
        "redis_socket_timeout": 5.0,
        "redis_connect_timeout": 5.0,
        "redis_retries": 1,
        "cold_url": "file://./.agent-threads/cold",
        "s3_endpoint_url": None,
        "s3_region": "us-east-1",
        "s3_sse": None,
        "s3_sse_kms_key_id": None,
        "s3_connect_timeout": 5.0,
        "s3_read_timeout": 30.0,
        "s3_max_attempts": 3,
        "namespace": "at",
        "ttl_seconds": 24 * 3600,
        # turns: a step's lease, renewed every heartbeat_ms by the worker running it
        "lease_ttl_ms": 20_000,
        "heartbeat_ms": 5_000,
        "turn_reconcile_limit": 100,
        # idle eviction and the activity index
        "idle_seconds": 30 * 60,
        "idle_flush_limit": 10_000,
        "idle_flush_batch": 100,
        "idle_failure_backoff_seconds": 60.0,
        "idle_claim_seconds": 600,
        "reconcile_max_keys": 10_000,
        # the queue of the threads.* tasks and the beat periods (seconds) install() adds
        "queue": "agent-threads",
        "flush_idle_every": 60.0,
        "turn_reconcile_every": 5.0,
        "reconcile_every": 60.0,
        # the retry policy of every ThreadTask (tasks/base.py)
        "max_retries": 8,
        "retry_backoff": 1.0,
        "retry_backoff_max": 30.0,
        # observability, when switched on (install(app, observability=True))
        "metrics_port": 0,
        "metrics_addr": "0.0.0.0",  # noqa: S104 - a scrape target
        "log_format": "text",
        # LangChain model-turn task: registered model names -> "module:factory"
        "langchain_models": {},
    }
)


def settings_of(app: Celery) -> dict[str, Any]:
    """The app's ``agent_threads`` settings over ``DEFAULTS`` (a fresh dict)."""
    given: Mapping[str, Any] | None = app.conf.get(KEY)
    return {**DEFAULTS, **(given or {})}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a ThreadTask retries a transient error: at most ``max_retries`` times, the
    n-th after a random time between half and all of min(backoff_max, backoff * 2**n) s."""

    max_retries: int
    backoff: float
    backoff_max: float


def retry_policy(app: Celery) -> RetryPolicy:
    conf = settings_of(app)
    return RetryPolicy(
        max_retries=int(conf["max_retries"]),
        backoff=float(conf["retry_backoff"]),
        backoff_max=float(conf["retry_backoff_max"]),
    )


def default_app() -> Celery:
    """The process's current Celery app (the user's, once it is created): what the
    clients and ``agent_turn`` use when no app is given."""
    app: Celery = current_app._get_current_object()  # type: ignore[attr-defined]
    return app
