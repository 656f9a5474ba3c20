"""The standalone service's Celery config (``agent-threads worker``, ``celery -A
tasks.app``, docker-compose): every value comes from an ``AGENT_THREADS_*``
environment variable; this module and the CLI are the only places that read them.
A user's own Celery app does not use this module: it sets ``app.conf.agent_threads``
(``tasks/settings.py``, same keys and defaults) and calls ``tasks.install(app)``.

| variable | default | what |
|---|---|---|
| AGENT_THREADS_BROKER_URL | redis://127.0.0.1:6379/1 | Celery broker (Redis or RabbitMQ) |
| AGENT_THREADS_RESULT_BACKEND | redis://127.0.0.1:6379/2 | Celery result backend |
| AGENT_THREADS_REDIS_URL | redis://127.0.0.1:6379/0 | the hot tier |
| AGENT_THREADS_COLD_URL | file://./.agent-threads/cold | s3://bucket/prefix or file:///path |
| AGENT_THREADS_S3_ENDPOINT_URL | (AWS) | e.g. http://minio:9000 |
| AGENT_THREADS_S3_REGION | us-east-1 | |
| AGENT_THREADS_S3_SSE | (bucket default) | server-side encryption: `AES256` or `aws:kms` |
| AGENT_THREADS_S3_SSE_KMS_KEY_ID | (AWS managed key) | KMS key id/ARN when `S3_SSE=aws:kms` |
| AGENT_THREADS_REDIS_CLUSTER | 0 | 1: the hot tier is a Redis Cluster (REDIS_URL names any node) |
| AGENT_THREADS_REDIS_SOCKET_TIMEOUT | 5 | seconds a hot-tier Redis reply may take (then a retry) |
| AGENT_THREADS_REDIS_CONNECT_TIMEOUT | 5 | seconds to connect to the hot-tier Redis |
| AGENT_THREADS_REDIS_RETRIES | 1 | redis-py's own immediate retries (a stale pooled connection) |
| AGENT_THREADS_S3_CONNECT_TIMEOUT | 5 | seconds to connect to the S3 endpoint |
| AGENT_THREADS_S3_READ_TIMEOUT | 30 | seconds an S3 socket read may wait |
| AGENT_THREADS_S3_MAX_ATTEMPTS | 3 | boto3's own attempts per S3 call, the first one included |
| AGENT_THREADS_NAMESPACE | at | hot-tier key prefix (one per tenant/app) |
| AGENT_THREADS_TTL_SECONDS | 86400 | hot-tier expiry, refreshed on every write |
| AGENT_THREADS_LEASE_TTL_MS | 20000 | a turn's lease and step claim, renewed while a step runs |
| AGENT_THREADS_HEARTBEAT_MS | 5000 | how often a running step renews them |
| AGENT_THREADS_TURN_RECONCILE_EVERY | 5 | beat period of threads.reconcile_turns (seconds) |
| AGENT_THREADS_IDLE_SECONDS | 1800 | flush_idle archives threads idle this long |
| AGENT_THREADS_FLUSH_IDLE_EVERY | 60 | beat period of threads.flush_idle (seconds) |
| AGENT_THREADS_IDLE_FLUSH_LIMIT | 10000 | threads one flush_idle run claims and fans out |
| AGENT_THREADS_IDLE_FLUSH_BATCH | 100 | threads.evict_idle tasks per Celery group |
| AGENT_THREADS_IDLE_FAILURE_BACKOFF | 60 | seconds before a failed idle flush is retried |
| AGENT_THREADS_RECONCILE_EVERY | 60 | beat period of threads.reconcile_activity (seconds) |
| AGENT_THREADS_RECONCILE_MAX_KEYS | 10000 | keys one reconcile run SCANs (over all nodes) |
| AGENT_THREADS_VISIBILITY_TIMEOUT | 3600 | Redis broker redelivery delay, see below |
| AGENT_THREADS_RESTORE_INTERVAL | 10 | Redis broker: sweep period (s) for tasks of dead workers |
| AGENT_THREADS_QUEUE_TYPE | quorum | RabbitMQ broker: `quorum` or `classic` queues, see below |
| AGENT_THREADS_QUEUE | agent-threads | the queue of the threads.* tasks |
| AGENT_THREADS_DEFAULT_QUEUE | celery | the queue of other tasks (your agent tasks) |
| AGENT_THREADS_IMPORTS | (none) | comma-separated modules with your agent tasks |
| AGENT_THREADS_METRICS_PORT | 0 (off) | worker's Prometheus /metrics port (docs/observability.md) |
| AGENT_THREADS_METRICS_ADDR | 0.0.0.0 | address the metrics endpoint listens on |
| AGENT_THREADS_LOG_FORMAT | text | worker log lines: `text` (key=value) or `json` (JSON lines) |
| AGENT_THREADS_MAX_RETRIES | 8 | task retries of a transient error before the caller gets it |
| AGENT_THREADS_RETRY_BACKOFF | 1 | retry delay factor (s): half to all of backoff*2**n, capped |
| AGENT_THREADS_RETRY_BACKOFF_MAX | 30 | cap of the retry delay (seconds) |

Timeouts: the storage clients never wait forever. A Redis or S3 endpoint that
accepts a connection but stops answering (a network partition, a stalled
proxy) makes the call fail after the socket timeout with a transient error,
and the task is retried with backoff (``MAX_RETRIES``, ``RETRY_BACKOFF``,
``RETRY_BACKOFF_MAX``, read from the app's settings at each retry). The clients'
own retries are kept few: the task's retries are the ones that wait out an
outage. ``REDIS_SOCKET_TIMEOUT`` must exceed the slowest script (a restore
of your largest thread).

``visibility_timeout``: with ``acks_late`` a message is acknowledged only after its
task finished; if a worker dies, the Redis broker hands the message to another
worker once it has been unacknowledged this long. Turns do not wait for it: a
turn step's heartbeat stops when its worker dies, and ``threads.reconcile_turns``
(every ``TURN_RECONCILE_EVERY`` s) re-wakes it within about one lease
(``LEASE_TTL_MS``); the late redelivery is then dropped. It must exceed the retry
countdowns (a message a worker holds for its countdown longer than this is
delivered twice): the worker checks that at start-up.

RabbitMQ (an ``amqp://`` broker URL) needs neither: it requeues a dead worker's
unacknowledged messages when its connection closes. Our queues are quorum queues
(replicated, durable) unless ``QUEUE_TYPE=classic``; a countdown or ETA (a retry)
then travels through Celery's native delayed delivery (the ``celery_delayed_*``
queues the worker declares), which needs topic exchanges. Publishes are confirmed.
An existing queue or exchange keeps its type: switching needs new ones
(docs/operations.md, "Broker: Redis or RabbitMQ").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
_QUEUE_TYPES = ("quorum", "classic")


def _env(name: str, default: str) -> str:
    return os.environ.get(f"AGENT_THREADS_{name}", default)


def broker_settings(url: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The settings that depend on the kind of broker ``url`` names (Redis or
    RabbitMQ), from the ``AGENT_THREADS_*`` variables in ``env``. Every kind sets
    the same keys, so an app configured for one broker can be updated to the other
    (``tasks.local.processes.client_app``)."""

    def get(name: str, default: str) -> str:
        return env.get(f"AGENT_THREADS_{name}", default)

    if url.split(":", 1)[0] in _AMQP_SCHEMES:
        queue_type = get("QUEUE_TYPE", "quorum")
        if queue_type not in _QUEUE_TYPES:
            raise ValueError(f"AGENT_THREADS_QUEUE_TYPE={queue_type!r}: use 'quorum' or 'classic'")
        return {
            "broker_transport_options": {"confirm_publish": True},
            "task_default_queue_type": queue_type,
            "task_create_missing_queue_type": queue_type,  # the task_routes queues
            # native delayed delivery routes by topic; a direct exchange would make a
            # worker hold every countdown task in memory until it is due
            "task_default_exchange_type": "topic",
            "task_create_missing_queue_exchange_type": "topic",
        }
    visibility_timeout = int(get("VISIBILITY_TIMEOUT", "3600"))
    return {
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout,
            # sweep for tasks of dead workers every N seconds (kombu's default is ~100 s)
            "unacked_restore_interval": int(get("RESTORE_INTERVAL", "10")),
            "unacked_restore_throttle": 1,
            # a worker killed during a sweep holds the sweep lock until it expires
            "unacked_mutex_expire": min(300, max(5, visibility_timeout)),
        },
        # Celery's defaults
        "task_default_queue_type": "classic",
        "task_create_missing_queue_type": "classic",
        "task_default_exchange_type": "direct",
        "task_create_missing_queue_exchange_type": None,
    }


broker_url = _env("BROKER_URL", "redis://127.0.0.1:6379/1")
result_backend = _env("RESULT_BACKEND", "redis://127.0.0.1:6379/2")
broker_connection_retry_on_startup = True
# broker_transport_options, task_default_queue_type, ... (one setting per key)
globals().update(broker_settings(broker_url, os.environ))
# RabbitMQ: no global QoS on quorum queues; countdowns go through the delayed queues
worker_detect_quorum_queues = True
broker_native_delayed_delivery_queue_type = "quorum"

# JSON only, in and out: a pickled message is rejected, never executed.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
result_extended = True  # keep task names and arguments with results (CLI, demo timings)
result_expires = 24 * 3600

# Redelivery after a worker crash: acknowledge after the task ran, one message at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_cancel_long_running_tasks_on_connection_loss = True

# the threads.* tasks' queue is agent_threads["queue"]; install() adds the route and
# the beat entries (idle flush, turn and activity reconcilers) from these settings
task_default_queue = _env("DEFAULT_QUEUE", "celery")
imports = (
    "tasks.local.demo",
    *(m.strip() for m in _env("IMPORTS", "").split(",") if m.strip()),
)

# agent-threads' own settings (tasks/settings.py: the same keys and defaults)
agent_threads = {
    "redis_url": _env("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "cold_url": _env("COLD_URL", "file://./.agent-threads/cold"),
    "s3_endpoint_url": _env("S3_ENDPOINT_URL", "") or None,
    "s3_region": _env("S3_REGION", "us-east-1"),
    "s3_sse": _env("S3_SSE", "") or None,
    "s3_sse_kms_key_id": _env("S3_SSE_KMS_KEY_ID", "") or None,
    "namespace": _env("NAMESPACE", "at"),
    "ttl_seconds": int(_env("TTL_SECONDS", str(24 * 3600))),
    # a turn's lease and the claim of its running step: renewed every heartbeat_ms by
    # the worker running the step, so a dead worker's turn is re-woken within a lease
    "lease_ttl_ms": int(_env("LEASE_TTL_MS", "20000")),
    "heartbeat_ms": int(_env("HEARTBEAT_MS", "5000")),
    "turn_reconcile_limit": 100,  # due turns per index shard per reconcile run
    "idle_seconds": int(_env("IDLE_SECONDS", str(30 * 60))),
    "idle_flush_limit": int(_env("IDLE_FLUSH_LIMIT", "10000")),
    "idle_flush_batch": int(_env("IDLE_FLUSH_BATCH", "100")),
    "idle_failure_backoff_seconds": float(_env("IDLE_FAILURE_BACKOFF", "60")),
    # how long a claimed idle thread is skipped while its evict_idle task is in flight
    "idle_claim_seconds": 600,
    "reconcile_max_keys": int(_env("RECONCILE_MAX_KEYS", "10000")),
    "queue": _env("QUEUE", "agent-threads"),
    "flush_idle_every": float(_env("FLUSH_IDLE_EVERY", "60")),
    "turn_reconcile_every": float(_env("TURN_RECONCILE_EVERY", "5")),
    "reconcile_every": float(_env("RECONCILE_EVERY", "60")),
    # observability (tasks/observability/metrics.py, tasks/observability/logs.py)
    "metrics_port": int(_env("METRICS_PORT", "0") or "0"),
    "metrics_addr": _env("METRICS_ADDR", "0.0.0.0"),  # noqa: S104 - a scrape target
    "log_format": _env("LOG_FORMAT", "text"),
    "redis_cluster": _env("REDIS_CLUSTER", "0").lower() in ("1", "true", "yes"),
    "redis_socket_timeout": float(_env("REDIS_SOCKET_TIMEOUT", "5")),
    "redis_connect_timeout": float(_env("REDIS_CONNECT_TIMEOUT", "5")),
    "redis_retries": int(_env("REDIS_RETRIES", "1")),
    "s3_connect_timeout": float(_env("S3_CONNECT_TIMEOUT", "5")),
    "s3_read_timeout": float(_env("S3_READ_TIMEOUT", "30")),
    "s3_max_attempts": int(_env("S3_MAX_ATTEMPTS", "3")),
    # the retry policy of the threads.* tasks (tasks/base.py)
    "max_retries": int(_env("MAX_RETRIES", "8")),
    "retry_backoff": float(_env("RETRY_BACKOFF", "1")),
    "retry_backoff_max": float(_env("RETRY_BACKOFF_MAX", "30")),
}
