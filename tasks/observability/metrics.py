"""Prometheus metrics of a worker, and the storage wrapper that records them.

Off until switched on for an app (``tasks.observability.enable``); with the settings'
``metrics_port`` the worker then serves ``http://<addr>:<port>/metrics`` from its main
process (started once, on ``worker_init``). Importing this module registers the
metrics in prometheus_client's registry and connects nothing (``connect()`` does).
Metric names and labels are in ``docs/observability.md``.

Where the numbers come from:

* ``InstrumentedThreads`` (the worker's ``Threads``): appends (appended and
  skipped ids of every ``AppendResult``, from ``threads.append`` and from agent
  tasks that append their replies), flushes and hydrates by outcome, with latency
  and snapshot size (also the hydrates inside ``append``/``open`` and the flushes
  of ``flush_idle``), leases. It wraps the public ``Threads`` API at the task
  layer; ``storage/`` knows nothing of metrics or logging.
* Celery signals: task duration and in-progress tasks (``task_prerun`` /
  ``task_postrun``), retries by error type (``task_retry``: ``LeaseHeld`` retries
  are the lease waits), failures by error type (``task_failure``).

Pools: the ``threads`` (the default of ``agent-threads worker`` and the compose
file), ``solo``, ``gevent`` and ``eventlet`` pools run tasks in the worker's one
process, so one registry sees everything. The ``prefork`` pool runs tasks in
child processes: set ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode, an empty directory per worker) and the main process serves the
sum over its children; without it a prefork worker serves no metrics and logs a
warning, rather than a page of zeros.
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from celery import Task
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from storage.errors import AgentThreadsError, LeaseHeld, LeaseLost
from storage.results import AppendResult, FlushResult, HydrateResult, IdleFlushReport, Lease
from storage.tiered import Threads
from tasks.observability import observed, observes
from tasks.settings import settings_of

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_SIZE_BUCKETS = tuple(float(4**n * 256) for n in range(12))  # 256 B .. 1 GiB

MESSAGES_APPENDED = Counter(
    "agent_threads_messages_appended",
    "Messages appended to threads (new ids only).",
)
MESSAGES_SKIPPED = Counter(
    "agent_threads_duplicate_messages_skipped",
    "Messages not appended because their id was already in the thread (redelivery, "
    "retry, repeat within a batch).",
)
FLUSHES = Counter(
    "agent_threads_flushes",
    "Flushes by status (archived, unchanged, absent, error) and whether the hot copy was evicted.",
    ["status", "evicted"],
)
FLUSH_SECONDS = Histogram(
    "agent_threads_flush_duration_seconds",
    "Time of one flush (read, upload, evict), by status.",
    ["status"],
    buckets=_LATENCY_BUCKETS,
)
SNAPSHOT_BYTES = Histogram(
    "agent_threads_snapshot_bytes",
    "Size of each snapshot uploaded to the cold tier (encoded, compressed).",
    buckets=_SIZE_BUCKETS,
)
HYDRATES = Counter(
    "agent_threads_hydrates",
    "Hydrates by status (hot, restored, absent, error).",
    ["status"],
)
HYDRATE_SECONDS = Histogram(
    "agent_threads_hydrate_duration_seconds",
    "Time of one hydrate, by status.",
    ["status"],
    buckets=_LATENCY_BUCKETS,
)
LEASES = Counter(
    "agent_threads_leases",
    "Lease operations by outcome (acquired, renewed, finished, held, released, lost).",
    ["outcome"],
)
LEASE_WAITS = Counter(
    "agent_threads_lease_waits",
    "Task retries because another turn held the thread's lease (LeaseHeld).",
)
IDLE_FLUSHED = Counter(
    "agent_threads_idle_flush_threads",
    "Threads looked at by threads.flush_idle, by outcome (evicted, kept, failed).",
    ["outcome"],
)
TASK_RETRIES = Counter(
    "agent_threads_task_retries",
    "Task retries, by task name and error type.",
    ["task", "error"],
)
TASK_FAILURES = Counter(
    "agent_threads_task_failures",
    "Tasks that failed for good, by task name and error type.",
    ["task", "error"],
)
TASK_SECONDS = Histogram(
    "agent_threads_task_duration_seconds",
    "Run time of one task execution, by task name and end state (SUCCESS, FAILURE, RETRY).",
    ["task", "state"],
    buckets=_TASK_BUCKETS,
)
TASKS_IN_PROGRESS = Gauge(
    "agent_threads_tasks_in_progress",
    "Tasks running now, by task name.",
    ["task"],
    multiprocess_mode="livesum",
)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _error_name(error: BaseException | None) -> str:
    if error is None:
        return "unknown"
    return type(error).__name__


class InstrumentedThreads(Threads):
    """``Threads`` that counts and logs what it does (see the module docstring)."""

    def append(
        self, thread_id: str, messages: Iterable[Mapping[str, Any]], *, owner: str | None = None
    ) -> AppendResult:
        try:
            result = super().append(thread_id, messages, owner=owner)
        except LeaseLost as exc:
            LEASES.labels("lost").inc()
            log.warning(
                "lease lost: append refused",
                extra={"thread_id": thread_id, "owner": owner, "holder": exc.holder},
            )
            raise
        MESSAGES_APPENDED.inc(len(result.appended_ids))
        if result.skipped_ids:
            MESSAGES_SKIPPED.inc(len(result.skipped_ids))
            log.info(
                "append skipped duplicate ids",
                extra={
                    "thread_id": thread_id,
                    "appended": len(result.appended_ids),
                    "skipped": len(result.skipped_ids),
                    "version": result.version,
                },
            )
        return result

    def flush(
        self, thread_id: str, *, evict: bool = True, release_owner: str | None = None
    ) -> FlushResult:
        started = time.perf_counter()
        try:
            result = super().flush(thread_id, evict=evict, release_owner=release_owner)
        except Exception:
            FLUSHES.labels("error", "false").inc()
            FLUSH_SECONDS.labels("error").observe(time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started
        FLUSHES.labels(result.status, _flag(result.evicted)).inc()
        FLUSH_SECONDS.labels(result.status).observe(seconds)
        if result.size_bytes:
            SNAPSHOT_BYTES.observe(result.size_bytes)
        kept = evict and not result.evicted and result.version is not None
        log.info(
            f"flush {result.status}{', kept hot' if kept else ''}",
            extra={
                "thread_id": thread_id,
                "status": result.status,
                "version": result.version,
                "bytes": result.size_bytes,
                "evicted": result.evicted,
                "duration_ms": round(seconds * 1000, 2),
            },
        )
        return result

    def hydrate(self, thread_id: str, *, pin_ms: int = 0) -> HydrateResult:
        started = time.perf_counter()
        try:
            result = super().hydrate(thread_id, pin_ms=pin_ms)
        except Exception:
            HYDRATES.labels("error").inc()
            HYDRATE_SECONDS.labels("error").observe(time.perf_counter() - started)
            raise
        seconds = time.perf_counter() - started
        HYDRATES.labels(result.status).inc()
        HYDRATE_SECONDS.labels(result.status).observe(seconds)
        if result.status != "hot":
            log.info(
                f"hydrate {result.status}",
                extra={
                    "thread_id": thread_id,
                    "status": result.status,
                    "version": result.version,
                    "messages": result.length,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
        return result

    def acquire_lease(self, thread_id: str, owner: str, ttl_ms: int) -> Lease:
        try:
            lease = super().acquire_lease(thread_id, owner, ttl_ms)
        except LeaseHeld as exc:
            LEASES.labels("held").inc()
            log.info(
                "lease held by another turn",
                extra={"thread_id": thread_id, "owner": owner, "holder": exc.holder},
            )
            raise
        outcome = "finished" if lease.finished else "renewed" if lease.renewed else "acquired"
        LEASES.labels(outcome).inc()
        log.info(
            f"lease {outcome}",
            extra={"thread_id": thread_id, "owner": owner, "ttl_ms": lease.ttl_ms},
        )
        return lease

    def release_lease(self, thread_id: str, owner: str) -> bool:
        released = super().release_lease(thread_id, owner)
        if released:
            LEASES.labels("released").inc()
        log.info(
            "lease released" if released else "lease not held: nothing to release",
            extra={"thread_id": thread_id, "owner": owner},
        )
        return released

    def flush_idle(self, idle_seconds: float, **options: Any) -> IdleFlushReport:
        report = super().flush_idle(idle_seconds, **options)  # evict_idle counts each thread
        log.info(
            "flush_idle done",
            extra={
                "candidates": report.candidates,
                "evicted": len(report.evicted),
                "kept": len(report.kept),
                "failed": len(report.failed),
                "locked": report.locked,
            },
        )
        return report

    def evict_idle(self, thread_id: str, idle_seconds: float, **options: Any) -> str:
        try:
            outcome = super().evict_idle(thread_id, idle_seconds, **options)
        except AgentThreadsError:
            IDLE_FLUSHED.labels("failed").inc()
            raise
        IDLE_FLUSHED.labels(outcome).inc()
        return outcome


# -- task signals ------------------------------------------------------------------------

_started: contextvars.ContextVar[list[float]] = contextvars.ContextVar("agent_threads_started")


def _task_started(sender: Task[Any, Any] | None = None, **_: Any) -> None:
    if sender is None or not observes(sender, metrics=True):
        return
    TASKS_IN_PROGRESS.labels(sender.name).inc()
    stack = _started.get(None)
    if stack is None:
        stack = []
        _started.set(stack)
    stack.append(time.perf_counter())


def _task_finished(
    sender: Task[Any, Any] | None = None, state: str | None = None, **_: Any
) -> None:
    if sender is None or not observes(sender, metrics=True):
        return
    TASKS_IN_PROGRESS.labels(sender.name).dec()
    stack = _started.get(None)
    if stack:
        TASK_SECONDS.labels(sender.name, state or "UNKNOWN").observe(
            time.perf_counter() - stack.pop()
        )


def _task_retried(
    sender: Task[Any, Any] | None = None,
    request: Any = None,
    reason: Any = None,
    **_: Any,
) -> None:
    if not observes(sender, metrics=True):
        return
    # ``reason`` is Celery's Retry; ``reason.exc`` the error that caused it.
    error = getattr(reason, "exc", None) or (reason if isinstance(reason, BaseException) else None)
    name = sender.name if sender is not None else "unknown"
    TASK_RETRIES.labels(name, _error_name(error)).inc()
    if isinstance(error, LeaseHeld):
        LEASE_WAITS.inc()
    retries = getattr(request, "retries", 0) or 0
    log.warning(
        "task retry after %s",
        _error_name(error),
        extra={
            "error": _error_name(error),
            "attempt": retries + 1,
            "max_retries": getattr(sender, "max_retries", None),
            "countdown_s": getattr(reason, "when", None),
            "reason": str(error) if error is not None else None,
        },
    )


def _task_failed(
    sender: Task[Any, Any] | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    if not observes(sender, metrics=True):
        return
    name = sender.name if sender is not None else "unknown"
    TASK_FAILURES.labels(name, _error_name(exception)).inc()
    log.warning(
        "task failed with %s",
        _error_name(exception),
        extra={"error": _error_name(exception), "reason": str(exception)},
    )


# -- the HTTP endpoint ---------------------------------------------------------------------

_server: Any = None


def multiprocess_dir() -> str | None:
    """prometheus_client's multiprocess directory (its own variable), if set."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _uses_prefork(worker: Any) -> bool:
    from celery.concurrency import get_implementation
    from celery.concurrency.prefork import TaskPool as PreforkPool

    pool = get_implementation(getattr(worker, "pool_cls", None) or "prefork")
    return isinstance(pool, type) and issubclass(pool, PreforkPool)


def _clear_stale_files(directory: str) -> None:
    """Files of earlier runs would add their counts to ours; keep this process's own."""
    own = f"_{os.getpid()}.db"
    for path in Path(directory).glob("*.db"):
        if not path.name.endswith(own):
            path.unlink(missing_ok=True)


def serve(port: int, addr: str = "0.0.0.0", *, prefork: bool = False) -> str:  # noqa: S104
    """Serve ``/metrics`` on ``addr:port`` from this process, once. Returns what
    happened, as a line for the log (logging is not set up yet at ``worker_init``)."""
    global _server
    if _server is not None:
        return f"metrics on http://{addr}:{port}/metrics"
    directory = multiprocess_dir()
    registry: CollectorRegistry = REGISTRY
    if directory:
        _clear_stale_files(directory)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    elif prefork:
        return (
            "metrics off: the prefork pool runs tasks in child processes; set "
            "PROMETHEUS_MULTIPROC_DIR to an empty directory, or use --pool threads"
        )
    try:
        _server = _start_http_server(port, addr, registry)
    except OSError as exc:
        return f"metrics off: cannot listen on {addr}:{port} ({exc})"
    mode = f" (multiprocess: {directory})" if directory else ""
    return f"metrics on http://{addr}:{port}/metrics{mode}"


_report: str | None = None


def _serve_worker_metrics(sender: Any = None, **_: Any) -> None:
    # Before the pool starts: prefork children must not find stale files, and the
    # endpoint is up even while the broker is unreachable.
    global _report
    app = getattr(sender, "app", None)
    if app is None or not observed(app).metrics:
        return
    conf: Mapping[str, Any] = settings_of(app)
    port = int(conf.get("metrics_port") or 0)
    if port:
        addr = str(conf.get("metrics_addr") or "0.0.0.0")  # noqa: S104
        _report = serve(port, addr, prefork=_uses_prefork(sender))


def _log_metrics_endpoint(**_: Any) -> None:
    global _report
    report, _report = _report, None
    if report is not None:
        log.log(logging.INFO if report.startswith("metrics on") else logging.WARNING, report)


def _stop_serving(**_: Any) -> None:
    global _server
    server, _server = _server, None
    if isinstance(server, tuple) and server:
        server[0].shutdown()
        server[0].server_close()


def _pool_child_exits(**_: Any) -> None:
    """A prefork child ends: drop its live gauges from the multiprocess sum."""
    directory = multiprocess_dir()
    if directory:
        mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


def connect() -> None:
    """Connect the receivers (``tasks.observability.enable`` calls this once)."""
    task_prerun.connect(_task_started, weak=False)
    task_postrun.connect(_task_finished, weak=False)
    task_retry.connect(_task_retried, weak=False)
    task_failure.connect(_task_failed, weak=False)
    worker_init.connect(_serve_worker_metrics, weak=False)
    worker_ready.connect(_log_metrics_endpoint, weak=False)
    worker_shutdown.connect(_stop_serving, weak=False)
    worker_process_shutdown.connect(_pool_child_exits, weak=False)
