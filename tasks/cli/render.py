"""Terminal output shared by the commands: consoles, tables, sizes and times, JSON, and
typed storage errors turned into a one-line message with exit status 1."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table

from storage.errors import AgentThreadsError
from tasks.cli.ops.durations import format_duration

P = ParamSpec("P")
R = TypeVar("R")


def console(*, stderr: bool = False) -> Console:
    """Rich on a terminal; plain, wide enough text when piped (COLUMNS wins). Markup
    and emoji codes are off: thread ids and message text are printed as given."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "120"))
    return Console(
        file=stream, highlight=False, markup=False, emoji=False, width=width, soft_wrap=False
    )


def errors(command: Callable[P, R]) -> Callable[P, R]:
    """Typed storage errors become a one-line message and exit status 1."""

    @wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except AgentThreadsError as exc:
            raise click.ClickException(str(exc)) from exc
        except ValueError as exc:  # e.g. an unsupported cold store URL
            raise click.ClickException(str(exc)) from exc

    return run


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def when(ms: int) -> str:
    """``2024-05-01T10:00:00Z (3h2m ago)``."""
    if not ms:
        return "-"
    at = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{at} ({ago(ms)} ago)"


def ago(ms: int) -> str:
    return format_duration(max(0.0, time.time() - ms / 1000))


def table() -> Table:
    return Table(box=box.SIMPLE, show_edge=False, header_style="bold", pad_edge=False)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))
