"""The standalone service's Celery app: ``agent-threads worker``, ``celery -A tasks.app``.

Configured from ``AGENT_THREADS_CONFIG_MODULE`` (default ``tasks.service.config``, which
reads the ``AGENT_THREADS_*`` variables; docker-compose points it at the repository's
``celeryconfig.py``), with agent-threads installed and its logs and metrics switched on
from those settings. Importing this module creates the service's app; nothing else in
the package imports it, so a user's own app (``tasks.install``) never meets it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from celery import Celery

from storage.tiered import Threads
from tasks.integration import install
from tasks.settings import settings_of
from tasks.stores import forget_threads, threads_for

CONFIG_MODULE = os.environ.get("AGENT_THREADS_CONFIG_MODULE", "tasks.service.config")

app = Celery("agent_threads")
app.config_from_object(CONFIG_MODULE)
install(app, logs=True, metrics=True)


class _ServiceThreads:
    """``threads()``: the service app's storage in this process (``cache_clear()``
    builds it again after its settings changed)."""

    def __call__(self) -> Threads:
        return threads_for(app)

    def cache_clear(self) -> None:
        forget_threads(app)


threads = _ServiceThreads()


def settings() -> Mapping[str, Any]:
    """The service app's ``agent_threads`` settings (over the defaults)."""
    return settings_of(app)


def configure(*, broker_url: str, result_backend: str, **agent_threads: Any) -> Threads:
    """Point the service app at other servers (the demo, benchmarks, tests): broker and
    results, plus any ``agent_threads`` settings (``redis_url``, ``cold_url``, ...).
    Returns fresh storage built from the new settings."""
    app.conf.update(
        broker_url=broker_url,
        result_backend=result_backend,
        agent_threads={**(app.conf.get("agent_threads") or {}), **agent_threads},
    )
    threads.cache_clear()
    return threads()
