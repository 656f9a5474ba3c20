"""What the group hands its commands: the storage its options select, the service's
app and settings, and the duration option.

The service app (``tasks.app``) is imported when a command first needs it, so importing
the command line (or its operations, as the tests do) creates no Celery app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import click
from celery import Celery

from storage.tiered import Threads
from tasks.cli.ops.durations import parse_duration
from tasks.stores import build_threads


def service_app() -> Celery:
    """The standalone service's Celery app, ``tasks.app.app``."""
    from tasks.app import app

    return app


def service_settings() -> Mapping[str, Any]:
    """The service app's ``agent_threads`` settings (from ``AGENT_THREADS_*``)."""
    from tasks.app import settings

    return settings()


@dataclass
class CommandContext:
    """Setting overrides of the group's options and the storage built from them on
    first use (closed when the command ends)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    built: Threads | None = None

    def store(self) -> Threads:
        if not self.overrides:
            from tasks.app import threads

            return threads()  # this process's storage, from the service config
        if self.built is None:
            self.built = build_threads({**service_settings(), **self.overrides})
        return self.built

    def close(self) -> None:
        if self.built is not None:
            self.built.hot.redis.close()


def current_store() -> Threads:
    """The storage of the command being run."""
    return click.get_current_context().find_object(CommandContext).store()  # type: ignore[union-attr]


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Option callback: 90 (seconds), 90s, 30m, 2h, 7d, 1w, 1h30m -> seconds."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


DURATION: dict[str, Any] = {"metavar": "DURATION", "callback": _duration}
"""Keyword arguments of a ``click.option`` that takes a duration (in seconds)."""
