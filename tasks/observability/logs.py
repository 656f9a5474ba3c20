"""Structured worker logs: every line names its task, thread and turn.

A task's context (task id and name, thread id, turn id) is kept in a contextvar
from ``task_prerun`` to ``task_postrun``, in the thread (or greenlet, or pool
process) that runs the task, so concurrent tasks of a threads-pool worker never
see each other's ids. ``TaskContextFilter`` copies it onto every log record and
the formatters write it:

* ``log_format="json"``: one JSON object per line (python-json-logger);
* ``"text"``: ``key=value`` text (logfmt), readable by people and by Loki/Vector.

Nothing happens at import: ``connect()`` (called by ``tasks.observability.enable``)
connects the receivers, which act for the apps switched on (see there).

Fields appear when known: ``thread_id`` (the task's ``thread_id`` argument),
``task_id``, ``task`` (its name), ``turn_id`` (the ``agent_turn`` the task is a
step of: the ``turn_id`` keyword of the run step, the header ``agent_turn`` puts
on every step, or the lease owner of a lease-bearing step). Lines Celery writes
for a task outside its run ("Task ... received") carry its task id and name.

Both formatters redact what looks like a secret (a URL's password, ``...secret=``,
``...token=``, AWS access key ids, bearer tokens, Anthropic keys) from every line,
as a safety net: nothing in agent-threads logs its settings unredacted.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from celery import Task
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    task_postrun,
    task_prerun,
    worker_ready,
)
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from tasks.observability import OFF, log_format, observed, observes
from tasks.settings import settings_of
from tasks.steps import TURN_HEADER

CONTEXT_FIELDS = ("thread_id", "task_id", "task", "turn_id")
"""The fields ``TaskContextFilter`` adds to records, in output order."""

_TURN_KWARGS = ("turn_id", "release_owner", "owner")
"""Keyword arguments that name the turn of a step: the run step's ``turn_id``; the
lease owner of acquire_lease / append / flush steps (``agent_turn`` uses the turn
id as the lease owner)."""


@dataclass(frozen=True, slots=True)
class TaskContext:
    task_id: str | None = None
    task: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None


_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "agent_threads_task_context", default=None
)
_tokens: contextvars.ContextVar[list[contextvars.Token[TaskContext | None]]] = (
    contextvars.ContextVar("agent_threads_task_context_tokens")
)


def current_context() -> TaskContext | None:
    """The context of the task running in this thread (None outside a task)."""
    return _current.get()


@functools.cache
def _parameter_names(task_name: str, task: Task[Any, Any]) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(task.run).parameters)
    except (TypeError, ValueError):
        return ()


def _argument(
    name: str, task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> Any:
    if name in kwargs:
        return kwargs[name]
    names = _parameter_names(task.name, task)
    if name in names:
        index = names.index(name)
        if index < len(args):
            return args[index]
    return None


def context_of(
    task: Task[Any, Any], task_id: str | None, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> TaskContext:
    """The log context of one task run, from its request and arguments."""
    thread_id = _argument("thread_id", task, args, kwargs)
    turn_id = task.request.get(TURN_HEADER) if task.request is not None else None
    for name in _TURN_KWARGS:
        if turn_id is not None:
            break
        turn_id = _argument(name, task, args, kwargs)
    return TaskContext(
        task_id=task_id,
        task=task.name,
        thread_id=thread_id if isinstance(thread_id, str) else None,
        turn_id=turn_id if isinstance(turn_id, str) else None,
    )


def _enter_task(
    sender: Task[Any, Any] | None = None,
    task_id: str | None = None,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    if not observes(sender):
        return
    assert sender is not None
    token = _current.set(context_of(sender, task_id, args or (), kwargs or {}))
    stack = _tokens.get(None)
    if stack is None:
        stack = []
        _tokens.set(stack)
    stack.append(token)


def _leave_task(sender: Task[Any, Any] | None = None, **_: Any) -> None:
    stack = _tokens.get(None)
    if observes(sender) and stack:
        _current.reset(stack.pop())


# -- records ---------------------------------------------------------------------------


METADATA_TASKS = frozenset(
    f"threads.{name}"
    for name in (
        "create", "append", "fork", "truncate", "replace", "save_state", "hydrate",
        "flush", "delete", "acquire_lease", "release_lease", "flush_idle",
        "evict_idle", "reconcile_activity",
    )
)  # fmt: skip
"""Tasks whose results are ids, versions and statuses: their results are logged as
they are. Any other task's result (``threads.load``, agent and model turns) may hold
conversation content and is logged as its size only."""


def _without_content(record: logging.LogRecord) -> None:
    """Celery's "Task ... succeeded in ...: <result>" line: keep the result only for
    tasks that return metadata, so message bodies never reach the log."""
    args = record.args
    content = isinstance(args, Mapping) and args.get("name") not in METADATA_TASKS
    if content and isinstance(args, Mapping) and "return_value" in args:
        size = len(str(args["return_value"]))
        record.args = {**args, "return_value": f"<result of {size} characters, not logged>"}


class TaskContextFilter(logging.Filter):
    """Adds ``thread_id``, ``task_id``, ``task``, ``turn_id`` (when known) to every
    record, and keeps conversation content out of Celery's result lines; attach it
    to handlers (a logger's filters miss propagated records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _without_content(record)
        context = _current.get()
        if context is not None:
            for field in CONTEXT_FIELDS:
                value = getattr(context, field)
                if value is not None and field not in record.__dict__:
                    record.__dict__[field] = value
        else:
            # Celery's own lines about a task outside its run ("received") carry
            # the task in ``data``.
            data = record.__dict__.get("data")
            if isinstance(data, Mapping) and isinstance(data.get("id"), str):
                record.__dict__.setdefault("task_id", data["id"])
                if isinstance(data.get("name"), str):
                    record.__dict__.setdefault("task", data["name"])
        return True


# -- redaction -----------------------------------------------------------------------

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<secret>[^@\s/]+)@")
_SECRET_VALUE = re.compile(
    r"""(?ix)
    (?P<head>\b[\w-]*?
        (?:password|passwd|secret(?:_access)?(?:_key)?|api[_-]?key|access[_-]?token
          |auth[_-]?token|session[_-]?token|security[_-]?token|token|signature|credential)
        \b["']?\s*[:=]\s*["']?)
    (?P<secret>[^\s"',;&}]+)
    """
)
_BEARER = re.compile(r"(?i)\b(?P<head>bearer\s+)(?P<secret>[\w.~+/=-]+)")
_KNOWN_KEYS = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b|\bsk-ant-[\w-]+")
_SECRET_QUERY_KEYS = re.compile(
    r"(?i)password|passwd|secret|api[_-]?key|token|signature|credential"
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a secret replaced by ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>:***@", text)
    text = _SECRET_VALUE.sub(r"\g<head>***", text)
    text = _BEARER.sub(r"\g<head>***", text)
    return _KNOWN_KEYS.sub("***", text)


def redact_url(url: str | None) -> str | None:
    """A URL safe to log: its password and secret-looking query values are ``***``."""
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if _SECRET_QUERY_KEYS.search(k) else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# -- formatters ------------------------------------------------------------------------

_STANDARD_ATTRS = frozenset(RESERVED_ATTRS) | {"message", "asctime", "data", "taskName"}
"""LogRecord attributes that are not "extra" fields (``data`` is Celery's copy of a
task's arguments and traceback: too large and too sensitive for every line)."""


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")


_JSON_HEAD = ("ts", "level", "logger", "process", "message")


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: ts, level, logger, process, message, the context
    fields, any ``extra=`` fields, and ``exc_info`` (the traceback) if any."""

    def __init__(self) -> None:
        super().__init__(["message"], reserved_attrs=sorted(_STANDARD_ATTRS))

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = _timestamp(record)
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["process"] = record.processName
        super().add_fields(log_data, record, message_dict)
        # message, then the context fields, then the line's own extras
        rest = {k: log_data.pop(k) for k in list(log_data) if k not in _JSON_HEAD}
        log_data.update((f, rest.pop(f)) for f in CONTEXT_FIELDS if f in rest)
        log_data.update(rest)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


_BARE_VALUE = re.compile(r"[^\s\"=\\]+")


def _logfmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if text and _BARE_VALUE.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``key=value`` text (logfmt): ts, level, logger, process, the context fields,
    msg, then any ``extra=`` fields (None ones left out, booleans as true/false);
    a traceback follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        pairs: list[tuple[str, Any]] = [
            ("ts", _timestamp(record)),
            ("level", record.levelname),
            ("logger", record.name),
            ("process", record.processName),
        ]
        pairs += [(f, record.__dict__[f]) for f in CONTEXT_FIELDS if f in record.__dict__]
        pairs.append(("msg", record.message))
        pairs += [
            (key, value)
            for key, value in record.__dict__.items()
            if key not in _STANDARD_ATTRS
            and key not in CONTEXT_FIELDS
            and not key.startswith("_")
            and value is not None
        ]
        line = " ".join(f"{key}={_logfmt(value)}" for key, value in pairs)
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return redact(line)


def formatter_for(log_format: str) -> logging.Formatter:
    """``"json"`` -> JSON lines; anything else -> key=value text."""
    if log_format.strip().lower() == "json":
        return JsonLineFormatter()
    return KeyValueFormatter()


def install(logger: logging.Logger, log_format: str) -> None:
    """Give every handler of ``logger`` the structured formatter and the context filter."""
    formatter = formatter_for(log_format)
    for handler in logger.handlers:
        handler.setFormatter(formatter)
        if not any(isinstance(f, TaskContextFilter) for f in handler.filters):
            handler.addFilter(TaskContextFilter())


def _structure_celery_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """After Celery set up its handlers (root and ``celery.task``), keep them (file,
    level, stdout redirection) and replace only their format, adding the context."""
    chosen = log_format()
    if logger is not None and chosen is not None:
        install(logger, chosen)


def _log_settings(sender: Any = None, **_: Any) -> None:
    """One line with the worker's storage settings, URLs redacted."""
    app = getattr(sender, "app", None)
    if app is None or observed(app) == OFF:
        return
    conf = settings_of(app)
    logging.getLogger(__name__).info(
        "agent-threads worker ready",
        extra={
            "hot_url": redact_url(conf.get("redis_url")),
            "cold_url": redact_url(conf.get("cold_url")),
            "s3_endpoint_url": redact_url(conf.get("s3_endpoint_url")),
            "namespace": conf.get("namespace"),
            "metrics_port": conf.get("metrics_port") or "off",
        },
    )


def connect() -> None:
    """Connect the receivers (``tasks.observability.enable`` calls this once)."""
    task_prerun.connect(_enter_task, weak=False)
    task_postrun.connect(_leave_task, weak=False)
    after_setup_logger.connect(_structure_celery_logs, weak=False)
    after_setup_task_logger.connect(_structure_celery_logs, weak=False)
    worker_ready.connect(_log_settings, weak=False)
