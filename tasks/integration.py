"""``install(app)``: agent-threads in the user's own Celery app.

The thread tasks are ``shared_task``s: any app of a process that imports
``tasks.threads`` has them. ``install`` imports them (and the model-turn tasks whose
SDK is installed), routes ``threads.*`` to agent-threads' queue, adds the beat
entries (idle flush, turn reconciler, activity reconciler), adds the worker bootstep
that refuses contradictory settings, and switches logs and metrics on if asked::

    app = Celery("myproj")
    app.config_from_object("celeryconfig")   # may set app.conf.agent_threads = {...}
    tasks.install(app)

It can be called before or after the app's config is loaded: the routes and beat
entries are merged into the config once it is (the app's own entries win).
"""

from __future__ import annotations

import importlib
from typing import Any

from celery import Celery

from tasks.observability import Scope, enable
from tasks.preflight import PreflightStep
from tasks.settings import settings_of

BEAT_ENTRIES = {
    "flush-idle-threads": ("threads.flush_idle", "flush_idle_every"),
    "reconcile-turns": ("threads.reconcile_turns", "turn_reconcile_every"),
    "reconcile-activity-index": ("threads.reconcile_activity", "reconcile_every"),
}
"""Beat entry name -> (task, the setting that holds its period in seconds)."""

MODEL_MODULES = (
    "tasks.models.anthropic",
    "tasks.models.google",
    "tasks.models.langchain",
    "tasks.models.openai",
)
"""Model-turn tasks; each module registers its task only if its SDK is installed."""


def install(
    app: Celery,
    *,
    beat: bool = True,
    preflight: bool = True,
    logs: bool | str = False,
    metrics: bool = False,
    observe: Scope = "ours",
) -> Celery:
    """Register agent-threads' tasks, routes and beat entries in ``app``.

    ``logs``: re-format the worker's log handlers as structured lines (True: the
    settings' ``log_format``; or "text" / "json"). ``metrics``: record Prometheus
    metrics (served by the worker on the settings' ``metrics_port`` when set). Both
    observe only agent-threads' tasks (``ThreadTask`` subclasses) unless
    ``observe="all"``. Returns ``app``."""
    importlib.import_module("tasks.threads")
    for module in MODEL_MODULES:
        importlib.import_module(module)
    if preflight and PreflightStep not in app.steps["worker"]:
        app.steps["worker"].add(PreflightStep)
    if logs or metrics:
        log_format = logs if isinstance(logs, str) else ("text" if logs else None)
        enable(app, logs=log_format, metrics=metrics, scope=observe)
        if logs is True:  # the format the app's settings name, once they are loaded
            _when_configured(app, _log_format_from_settings)
    _when_configured(app, lambda configured: _merge_config(configured, beat=beat))
    return app


def _when_configured(app: Celery, apply: Any) -> None:
    if app.configured:  # type: ignore[attr-defined]
        apply(app)
        return

    def on_configure(sender: Celery, **_: Any) -> None:
        apply(sender)

    app.on_after_configure.connect(on_configure, weak=False)


def _log_format_from_settings(app: Celery) -> None:
    from tasks.observability import observed

    switched = observed(app)
    enable(
        app,
        logs=str(settings_of(app)["log_format"]),
        metrics=switched.metrics,
        scope=switched.scope,
    )


def _merge_config(app: Celery, *, beat: bool) -> None:
    conf = app.conf
    ours = {"threads.*": {"queue": settings_of(app)["queue"]}}
    routes = conf.task_routes
    if not routes:
        conf.task_routes = ours
    elif isinstance(routes, dict):
        conf.task_routes = {**ours, **routes}
    elif isinstance(routes, list | tuple):
        conf.task_routes = [*routes, ours]  # the app's routers are asked first
    else:
        conf.task_routes = [routes, ours]
    if beat:
        settings = settings_of(app)
        schedule = dict(conf.beat_schedule or {})
        for entry, (task, period) in BEAT_ENTRIES.items():
            schedule.setdefault(entry, {"task": task, "schedule": float(settings[period])})
        conf.beat_schedule = schedule
