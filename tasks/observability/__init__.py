"""Structured logs (``logs.py``) and Prometheus metrics (``metrics.py``) of workers.

Both are off until switched on for an app: by ``tasks.install(app, logs=..., metrics=...)``
or by the service (``agent-threads worker``, ``celery -A tasks.app``), which switches
them on from its settings. Importing these modules connects nothing; ``enable``
connects the Celery signal receivers once per process, and they act only for the apps
switched on, and there only for agent-threads' own tasks (``ThreadTask`` subclasses:
the threads.* tasks, the model turns, your agents built on it) unless
``observe="all"``. Structured logging re-formats the worker's log handlers, so only
the worker command (or an explicit ``logs=``) asks for it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Literal

from celery import Celery, Task

Scope = Literal["ours", "all"]


@dataclass(frozen=True, slots=True)
class Observed:
    """What is switched on for one app."""

    logs: str | None = None
    """The log format ("text" or "json") the worker's handlers get; None: untouched."""
    metrics: bool = False
    """Metrics are recorded (and served on the settings' ``metrics_port`` if set)."""
    scope: Scope = "ours"


OFF = Observed()
_apps: weakref.WeakKeyDictionary[Celery, Observed] = weakref.WeakKeyDictionary()
_connected = False
_lock = threading.Lock()


def observed(app: Celery) -> Observed:
    return _apps.get(app, OFF)


def observes(task: Task[Any, Any] | None, *, metrics: bool = False) -> bool:
    """Whether the receivers record ``task`` (logs context, or metrics with ``metrics``)."""
    if task is None:
        return False
    switched = _apps.get(task.app)
    if switched is None or (metrics and not switched.metrics):
        return False
    return switched.scope == "all" or bool(getattr(task, "agent_threads_task", False))


def log_format() -> str | None:
    """The log format asked for by an app of this process (the worker's), if any."""
    for switched in list(_apps.values()):
        if switched.logs:
            return switched.logs
    return None


def enable(app: Celery, *, logs: str | None, metrics: bool, scope: Scope = "ours") -> None:
    """Switch logs and/or metrics on for ``app`` and connect the receivers (once)."""
    global _connected
    if scope not in ("ours", "all"):
        raise ValueError(f"observe={scope!r}: use 'ours' or 'all'")
    if logs is not None and logs not in ("text", "json"):
        raise ValueError(f"log format {logs!r}: use 'text' or 'json'")
    _apps[app] = Observed(logs=logs, metrics=metrics, scope=scope)
    with _lock:
        if _connected:
            return
        from tasks.observability import logs as log_receivers
        from tasks.observability import metrics as metric_receivers

        log_receivers.connect()
        metric_receivers.connect()
        _connected = True
