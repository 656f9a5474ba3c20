"""The ``agent-threads`` command: run workers and beat, look at threads, move them
between tiers, export and import them, and apply cold-tier retention.

Settings come from the ``AGENT_THREADS_*`` environment variables (read by
``tasks/service/config.py``, see there); the storage options of the group (``--redis-url``,
``--cold-url``, ``--namespace``, ``--s3-endpoint-url``) read the same variables
and override them for one command. ``demo`` needs none: without
``AGENT_THREADS_REDIS_URL`` it starts an embedded redis-server, and without
``AGENT_THREADS_COLD_URL`` it archives to ``./.agent-threads/cold``.

Output is rich tables and progress bars on a terminal and plain text otherwise
(pipes, logs, CI); ``--json`` gives machine-readable output where it makes sense.
Exit status: 0 on success, 1 on an error or if any thread of a bulk command
failed, 2 on a usage error. The logic lives in ``tasks/ops.py``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from adapters.base import reply_id
from storage.cold import ColdObject
from storage.embedded import EmbeddedRedis
from storage.errors import AgentThreadsError
from storage.snapshot import DEFAULT_MAX_SNAPSHOT_BYTES
from storage.tiered import Threads
from storage.turns import TurnStatus
from tasks import ops
from tasks.app import app, configure, settings, threads
from tasks.client import ThreadClient
from tasks.local.processes import WorkerProcess
from tasks.stores import build_threads
from tasks.turns import Evict, Mode, agent_turn

P = ParamSpec("P")
R = TypeVar("R")

# -- plumbing: storage for this command, consoles, errors, durations ---------------------


@dataclass
class _Context:
    """What the group passes to its commands: setting overrides and the storage built
    from them on first use (closed when the command ends)."""

    overrides: dict[str, Any] = field(default_factory=dict)
    built: Threads | None = None

    def store(self) -> Threads:
        if not self.overrides:
            return threads()  # this process's storage, from the service config
        if self.built is None:
            self.built = build_threads({**settings(), **self.overrides})
        return self.built

    def close(self) -> None:
        if self.built is not None:
            self.built.hot.redis.close()


def _store() -> Threads:
    return click.get_current_context().find_object(_Context).store()  # type: ignore[union-attr]


def _console(*, stderr: bool = False) -> Console:
    """Rich on a terminal; plain, wide enough text when piped (COLUMNS wins)."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "120"))
    return Console(file=stream, highlight=False, width=width, soft_wrap=False)


def _errors(command: Callable[P, R]) -> Callable[P, R]:
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


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Option callback: 90 (seconds), 90s, 30m, 2h, 7d, 1w, 1h30m -> seconds."""
    if value is None:
        return None
    try:
        return ops.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


DURATION: dict[str, Any] = {"metavar": "DURATION", "callback": _duration}


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def _when(ms: int) -> str:
    """``2024-05-01T10:00:00Z (3h2m ago)``."""
    if not ms:
        return "-"
    at = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{at} ({_ago(ms)} ago)"


def _ago(ms: int) -> str:
    return ops.format_duration(max(0.0, time.time() - ms / 1000))


def _table() -> Table:
    return Table(box=box.SIMPLE, show_edge=False, header_style="bold", pad_edge=False)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group()
@click.option(
    "--redis-url", envvar="AGENT_THREADS_REDIS_URL", metavar="URL", help="the hot tier's Redis"
)
@click.option(
    "--cold-url",
    envvar="AGENT_THREADS_COLD_URL",
    metavar="URL",
    help="s3://bucket/prefix or file:///path",
)
@click.option("--s3-endpoint-url", envvar="AGENT_THREADS_S3_ENDPOINT_URL", metavar="URL")
@click.option(
    "--namespace", envvar="AGENT_THREADS_NAMESPACE", metavar="NS", help="hot-tier key prefix"
)
@click.option(
    "--redis-cluster/--no-redis-cluster",
    envvar="AGENT_THREADS_REDIS_CLUSTER",
    default=None,
    help="the hot tier is a Redis Cluster (--redis-url names any node)",
)
@click.pass_context
def main(
    ctx: click.Context,
    redis_url: str | None,
    cold_url: str | None,
    s3_endpoint_url: str | None,
    namespace: str | None,
    redis_cluster: bool | None,
) -> None:
    """agent-threads: crash-safe conversation threads for AI agents on Celery.

    Storage options default to the AGENT_THREADS_* environment variables (see
    tasks/service/config.py). Durations are 90 (seconds), 90s, 30m, 2h, 7d or 1h30m.
    """
    given = {
        "redis_url": redis_url,
        "cold_url": cold_url,
        "s3_endpoint_url": s3_endpoint_url,
        "namespace": namespace,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v}
    if redis_cluster is not None:
        overrides["redis_cluster"] = redis_cluster
    state = _Context(overrides)
    ctx.obj = state
    ctx.call_on_close(state.close)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker for the thread tasks and your agent tasks.

    Extra arguments go to `celery worker` (e.g. --concurrency 8 --pool prefork). The
    pool defaults to threads: the tasks wait on Redis, S3 and model APIs, and one
    process keeps one connection pool and one metrics registry.
    """
    queues = f"{settings()['queue']},{app.conf.task_default_queue}"
    chosen = any(a in ("-P", "--pool") or a.startswith("--pool=") for a in ctx.args)
    pool = [] if chosen else ["--pool", "threads"]
    app.worker_main(["worker", "-Q", queues, "-l", "INFO", *pool, *ctx.args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Start Celery beat: it sends threads.flush_idle every AGENT_THREADS_FLUSH_IDLE_EVERY
    seconds (archives threads idle longer than AGENT_THREADS_IDLE_SECONDS).

    Run exactly one beat per deployment (same as `celery -A tasks.app beat`). Extra
    arguments go to `celery beat` (e.g. --schedule /var/lib/agent-threads/beat).
    """
    app.start(["beat", "-l", "INFO", *ctx.args])


# -- inspect ---------------------------------------------------------------------------------


def _tier(store: Threads, thread_id: str) -> str:
    if store.hot.exists(thread_id):
        return "hot"
    return "cold" if store.cold.head(thread_id) else "absent"


def _tier_after_turn(store: Threads, thread_id: str) -> str:
    tier = _tier(store, thread_id)
    if tier != "hot":
        return tier
    info = store.hot.info(thread_id)
    if info.cold_version == info.version:
        return f"hot, archived (cold v{info.cold_version} = hot v{info.version})"
    return f"hot, archive behind (cold v{info.cold_version}, hot v{info.version})"


def _archive_line(view: ops.ThreadView) -> str:
    if view.archive_etag is None:
        return "none (never flushed)"
    line = f"v{view.archive_version} etag {view.archive_etag}"
    if view.tier == "cold":
        return line
    behind = view.archive_version is not None and view.archive_version < view.snapshot.version
    return line + (f" (behind: hot is v{view.snapshot.version})" if behind else " (current)")


def _turns_table(turns: Sequence[TurnStatus]) -> Table:
    """The last turns: state, where they are, what they cost."""
    table = _table()
    for name in ("turn", "state", "step", "runs/wakes", "ms", "tokens in/out", "tools"):
        table.add_column(name, no_wrap=name != "turn", overflow="fold")
    for turn in turns:
        step = turn.steps[turn.step] if isinstance(turn.step, int) else str(turn.step or "-")
        error = f" ({turn.error.get('type')})" if turn.error else ""
        tools = ", ".join(f"{c} x{t.get('runs', 0)}" for c, t in turn.tools.items())
        table.add_row(
            turn.turn_id,
            turn.state + error,
            step,
            f"{turn.attempt}/{turn.wakes}",
            str(turn.duration_ms if turn.duration_ms is not None else sum(turn.timings.values())),
            f"{turn.input_tokens}/{turn.output_tokens}",
            tools or "-",
        )
    return table


def _render_thread(console: Console, view: ops.ThreadView, last: int | None) -> None:
    s, info = view.snapshot, view.info
    count = len(s.records)
    console.print(
        f"thread {s.thread_id!r}: tier {view.tier}, version {s.version}, "
        f"{count} message{'' if count == 1 else 's'}"
    )
    props = Table.grid(padding=(0, 2))
    props.add_column(style="bold")
    props.add_column()
    props.add_row("namespace", s.namespace)
    props.add_row("created", _when(s.created_ms))
    props.add_row("updated", _when(s.updated_ms))
    if info is not None:
        ttl = "no expiry" if info.ttl_ms is None else ops.format_duration(info.ttl_ms / 1000)
        props.add_row("hot TTL", ttl)
        lease = "none"
        if info.lease_owner:
            left = ops.format_duration((info.lease_ttl_ms or 0) / 1000)
            lease = f"{info.lease_owner} ({left} left)"
        props.add_row("lease", lease)
    props.add_row("archive", _archive_line(view))
    if s.parent:
        props.add_row("fork of", f"{s.parent} at {s.fork_point or 'its end'}")
    if s.creator:
        props.add_row("creator", s.creator)
    props.add_row("epoch", s.epoch)
    if s.retired_ids:
        props.add_row("retired ids", f"{len(s.retired_ids)} (removed by replace_all)")
    if s.finished_turns:
        props.add_row("finished turns", ", ".join(s.finished_turns[-5:]))
    if s.last_merge:
        m = s.last_merge
        props.add_row(
            "last merge",
            f"hot v{m.get('hot_version')} had diverged from archive v{m.get('archive_version')}: "
            f"{m.get('recovered')} archived messages recovered, {m.get('kept')} hot ones kept",
        )
    console.print(props)
    if view.turns:
        console.print()
        console.print(_turns_table(view.turns[-5:]))

    messages = view.messages
    shown = messages if not last else messages[-last:]
    first = len(messages) - len(shown)
    rows = [
        (str(position), record["id"], ops.summarize_body(record["body"], width=20)[0])
        for position, record in enumerate(shown, start=first)
    ]
    # Size the columns up front so the content column gets what is left of the line
    # (rich would otherwise squeeze ids and roles to make room for long content).
    widths = [max((len(row[i]) for row in rows), default=1) for i in range(3)]
    widths[1] = min(widths[1], 40)
    content_width = max(20, console.width - sum(widths) - 3 * 3 - 1)
    table = _table()
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("id", overflow="fold", min_width=widths[1], max_width=40)
    table.add_column("role", no_wrap=True, min_width=widths[2])
    table.add_column("content", overflow="ellipsis", no_wrap=True)
    for (number, message_id, role), record in zip(rows, shown, strict=True):
        text = ops.summarize_body(record["body"], content_width)[1]
        table.add_row(number, message_id, role, text)
    if messages:
        console.print()
        console.print(table)
    if first:
        console.print(f"(the first {first} of {count} messages not shown; --last 0 shows all)")
    console.print("state: " + json.dumps(s.state, indent=2, ensure_ascii=False))


@main.command()
@click.argument("thread_id")
@click.option("--json", "as_json", is_flag=True, help="print everything as one JSON object")
@click.option(
    "--last",
    type=click.IntRange(min=0),
    default=None,
    help="show only the last N messages (0: all; default 50 in the table, all with --json)",
)
@_errors
def inspect(thread_id: str, as_json: bool, last: int | None) -> None:
    """Show a thread: tier (hot/cold), version, TTL, lease, archive version and etag,
    fork parent, messages and state. A cold thread is read from its archive without
    restoring it. Exits 1 if the id is invalid or the thread exists in no tier."""
    view = ops.view_thread(_store(), thread_id)
    if as_json:
        out = view.to_json()
        if last:
            out["messages"] = out["messages"][-last:]
        _echo_json(out)
        return
    _render_thread(_console(), view, 50 if last is None else last)


# -- ls / stats --------------------------------------------------------------------------------


@main.command("ls")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--idle-longer-than",
    "idle",
    **DURATION,
    default=None,
    help="only threads idle at least this long, oldest first",
)
@click.option("--json", "as_json", is_flag=True)
@_errors
def list_threads(limit: int, idle: float | None, as_json: bool) -> None:
    """List hot threads by last activity, most recent first (from the namespace's
    activity index: no key scan), with length, version, lease and archive."""
    entries = ops.list_hot(_store(), limit=limit, idle_seconds=idle)
    if as_json:
        _echo_json(
            [
                {
                    "thread_id": e.thread_id,
                    "last_active_ms": e.last_active_ms,
                    "hot": e.info is not None,
                    "length": e.info.length if e.info else None,
                    "version": e.info.version if e.info else None,
                    "cold_version": e.info.cold_version if e.info else None,
                    "lease_owner": e.info.lease_owner if e.info else None,
                    "ttl_ms": e.info.ttl_ms if e.info else None,
                }
                for e in entries
            ]
        )
        return
    console = _console()
    if not entries:
        console.print("no hot threads" + (" idle that long" if idle is not None else ""))
        return
    table = _table()
    for name, justify in (
        ("thread", "left"),
        ("idle", "right"),
        ("length", "right"),
        ("version", "right"),
        ("archived", "right"),
        ("lease", "left"),
        ("ttl", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for e in entries:
        info = e.info
        if info is None:
            table.add_row(e.thread_id, _ago(e.last_active_ms), "-", "-", "-", "(expired)", "-")
            continue
        ttl = "-" if info.ttl_ms is None else ops.format_duration(info.ttl_ms / 1000)
        archived = "-" if info.cold_version is None else f"v{info.cold_version}"
        table.add_row(
            e.thread_id,
            _ago(e.last_active_ms),
            str(info.length),
            str(info.version),
            archived,
            info.lease_owner or "",
            ttl,
        )
    console.print(table)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-cold", is_flag=True, help="skip listing the cold store (large buckets)")
@_errors
def stats(as_json: bool, no_cold: bool) -> None:
    """Hot threads (activity index), leased threads, Redis memory and key count, cold
    archives (count, bytes, oldest and newest; lists the whole cold store)."""
    result = ops.collect_stats(_store(), cold=not no_cold)
    if as_json:
        _echo_json(result.to_json())
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    leased = "-" if result.leased_threads is None else str(result.leased_threads)
    maxmemory = f" of {_size(result.redis_maxmemory)}" if result.redis_maxmemory else ""
    rows = [
        ("namespace", result.namespace),
        ("hot threads", str(result.hot_threads)),
        ("leased threads", leased),
        ("redis used memory", _size(result.redis_used_memory) + maxmemory),
        ("redis keys (db)", "-" if result.redis_keys is None else str(result.redis_keys)),
    ]
    if result.cold_objects is not None:
        rows += [
            ("cold archives", str(result.cold_objects)),
            ("cold bytes", _size(result.cold_bytes)),
        ]
        if result.cold_oldest and result.cold_newest:
            rows.append(("cold oldest", result.cold_oldest.strftime("%Y-%m-%dT%H:%M:%SZ")))
            rows.append(("cold newest", result.cold_newest.strftime("%Y-%m-%dT%H:%M:%SZ")))
    for name, value in rows:
        table.add_row(name, value)
    _console().print(table)


# -- flush / hydrate (one or many) ----------------------------------------------------------


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[ops.Outcome], None]]:
    """A progress bar on stderr (drawn only on a terminal)."""
    console = _console(stderr=True)
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("", total=total)
        yield lambda outcome: progress.update(task, advance=1, description=outcome.thread_id)


def _summarize(verb: str, report: ops.BulkReport, statuses: Sequence[str]) -> None:
    counts = report.counts
    total = len(report.outcomes)
    rare = [s for s in counts if s not in (*statuses, "failed")]  # e.g. "merged"
    parts = [f"{counts.get(s, 0)} {s}" for s in (*statuses, *rare, "failed")]
    line = f"{verb}: {total} thread{'' if total == 1 else 's'}: " + ", ".join(parts)
    if verb == "flush":
        evicted = sum(1 for o in report.outcomes if o.evicted)
        kept = sum(1 for o in report.outcomes if o.detail == "kept hot")
        line += f" ({evicted} evicted, {kept} kept hot)"
    click.echo(line)
    for outcome in report.failed:
        click.echo(f"  failed {outcome.thread_id}: {outcome.detail}", err=True)
    if report.failed:
        sys.exit(1)


def _unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(i for i in ids if i))


def _ids_from_file(path: str) -> list[str]:
    """One thread id per line; blank lines and ``#`` comments are skipped; ``-`` is stdin."""
    stream = click.open_file(path, "r", encoding="utf-8")
    with stream:
        lines = [line.split("#", 1)[0].strip() for line in stream]
    return [line for line in lines if line]


@main.command("flush-idle")
@click.option(
    "--older-than",
    "older_than",
    **DURATION,
    default=None,
    help="idle time (default AGENT_THREADS_IDLE_SECONDS)",
)
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
    help="flushes in flight at once",
)  # fmt: skip
@_errors
def flush_idle(older_than: float | None, limit: int, concurrency: int) -> None:
    """Archive and evict threads idle longer than --older-than, as the beat task does
    (a thread whose turn holds its lease stays hot). Exits 1 if any flush failed;
    does nothing while another idle flush of the namespace runs (the beat's)."""
    idle = settings()["idle_seconds"] if older_than is None else older_than
    report = _store().flush_idle(idle, limit=limit, concurrency=concurrency)
    if report.locked:
        click.echo("another idle flush of this namespace is running: nothing done")
        return
    click.echo(
        f"{report.candidates} idle, {len(report.evicted)} evicted, {len(report.kept)} kept hot, "
        f"{len(report.failed)} failed"
    )
    for failure in report.failed:
        click.echo(f"  failed: {failure}", err=True)
    if report.failed:
        sys.exit(1)


_VIA_WORKERS = click.option(
    "--via-workers",
    is_flag=True,
    help="send threads.* tasks to the Celery workers (their storage settings) and wait",
)


@main.command()
@click.argument("thread_ids", nargs=-1)
@click.option("--all-idle", is_flag=True, help="every thread idle longer than --older-than")
@click.option(
    "--older-than",
    **DURATION,
    default=None,
    help="with --all-idle (default AGENT_THREADS_IDLE_SECONDS)",
)
@click.option("--limit", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--keep-hot", is_flag=True, help="archive only; do not evict from Redis")
@_VIA_WORKERS
@_errors
def flush(
    thread_ids: tuple[str, ...],
    all_idle: bool,
    older_than: float | None,
    limit: int,
    keep_hot: bool,
    via_workers: bool,
) -> None:
    """Archive threads to the cold tier (upload only if changed) and evict them from
    Redis unless a turn holds their lease. Prints archived / unchanged / absent /
    failed counts; one thread's failure does not stop the others; exits 1 if any failed.
    """
    if bool(thread_ids) == all_idle:
        raise click.UsageError("give thread ids or --all-idle (not both)")
    store = _store()
    if all_idle:
        idle = settings()["idle_seconds"] if older_than is None else older_than
        ids = [tid for tid, _ in store.hot.idle_threads(int(idle * 1000), limit)]
    else:
        ids = _unique(thread_ids)
    with _progress("flush", len(ids)) as advance:
        if via_workers:
            kwargs = {"evict": not keep_hot}
            report = ops.run_on_workers(app, "threads.flush", ids, kwargs=kwargs, progress=advance)
        else:
            report = ops.flush_many(store, ids, evict=not keep_hot, progress=advance)
    _summarize("flush", report, ("archived", "unchanged", "absent"))


@main.command()
@click.argument("thread_ids", nargs=-1)
@click.option(
    "--from-file",
    "from_file",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="thread ids, one per line ('-': stdin)",
)
@_VIA_WORKERS
@_errors
def hydrate(thread_ids: tuple[str, ...], from_file: str | None, via_workers: bool) -> None:
    """Restore archived threads into Redis (a hot thread is left as it is). Prints
    restored / hot / absent / failed counts; exits 1 if any failed."""
    ids = list(thread_ids) + (_ids_from_file(from_file) if from_file else [])
    if not ids:
        raise click.UsageError("give thread ids or --from-file")
    ids = _unique(ids)
    with _progress("hydrate", len(ids)) as advance:
        if via_workers:
            report = ops.run_on_workers(app, "threads.hydrate", ids, progress=advance)
        else:
            report = ops.hydrate_many(_store(), ids, progress=advance)
    _summarize("hydrate", report, ("restored", "hot", "absent"))


# -- delete ---------------------------------------------------------------------------------


@main.command()
@click.argument("thread_ids", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@_errors
def delete(thread_ids: tuple[str, ...], yes: bool) -> None:
    """Delete threads from both tiers (hot keys and cold archive). Asks first unless
    --yes. Exits 1 if any deletion failed."""
    ids = _unique(thread_ids)
    if not yes:
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        click.confirm(f"Delete {len(ids)} thread(s) from both tiers ({shown})?", abort=True)
    store = _store()

    def remove(thread_id: str) -> ops.Outcome:
        return ops.Outcome(thread_id, "deleted" if store.delete(thread_id) else "absent")

    with _progress("delete", len(ids)) as advance:
        outcomes = []
        for thread_id in ids:
            try:
                outcome = remove(thread_id)
            except Exception as exc:  # one thread's failure never stops the others
                outcome = ops.Outcome(thread_id, "failed", str(exc))
            outcomes.append(outcome)
            advance(outcome)
    _summarize("delete", ops.BulkReport(tuple(outcomes)), ("deleted", "absent"))


# -- export / import ----------------------------------------------------------------------------


@main.command()
@click.argument("thread_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="file to write (default: stdout)",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "gzip"]),
    default=None,
    help="jsonl (default) or gzip (default when the file name ends in .gz)",
)
@_errors
def export(thread_id: str, output: str, fmt: str | None) -> None:
    """Write a thread (hot or cold) as a schema-1 snapshot.

    jsonl (the default): the snapshot uncompressed, JSON lines: a header (thread id,
    namespace, version, epoch, lineage, record count, sha256 checksum), an index
    (state, message ids, retired ids, finished turns), then one {"id", "body"}
    record per line, byte for byte as stored. Readable with jq; editing it breaks
    the checksum, so import refuses it. gzip: the same, compressed exactly like a
    cold-store object (prefix/<shard>/<tid>.json.gz). The export is decoded and
    checked before it is written; a file is written atomically.
    """
    gzip = fmt == "gzip" or (fmt is None and output.endswith(".gz"))
    chosen: ops.ExportFormat = "gzip" if gzip else "jsonl"
    snapshot, tier = ops.snapshot_of(_store(), thread_id)
    data = ops.export_snapshot(snapshot, chosen)
    if output == "-":
        stream = sys.stdout.buffer
        if chosen == "gzip" and stream.isatty():
            raise click.UsageError("refusing to write gzip data to a terminal: use -o FILE")
        stream.write(data)
        stream.flush()
        return
    target = Path(output)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise click.ClickException(f"cannot write {output}: {exc}") from exc
    click.echo(
        f"exported thread {thread_id!r} ({tier}, version {snapshot.version}, "
        f"{len(snapshot.records)} messages, {_size(len(data))} {chosen}) to {output}",
        err=True,
    )


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--as", "as_id", metavar="NEW_ID", help="import under another thread id")
@click.option("--force", is_flag=True, help="replace an existing thread (not one in a turn)")
@click.option("--hot", is_flag=True, help="also restore it into Redis (default: cold tier)")
@click.option(
    "--any-namespace", is_flag=True, help="accept a snapshot exported from another namespace"
)
@_errors
def import_(file: str, as_id: str | None, force: bool, hot: bool, any_namespace: bool) -> None:
    """Restore a thread from an `export` file (jsonl or gzip, detected; '-': stdin).

    The file is validated first (format, schema, thread id, checksum, ledger,
    record framing, namespace); a corrupt or foreign file is refused and nothing is
    written. An existing thread (hot or cold) is not replaced without --force. The
    thread is written as its cold archive (the next turn or `hydrate` restores it;
    --hot does it now): records byte for byte, ids, retired ids, state, finished
    turns and version exactly as exported. Under --as it is a copy with a new epoch.
    """
    try:
        with click.open_file(file, "rb") as stream:
            data = stream.read(DEFAULT_MAX_SNAPSHOT_BYTES + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read {file}: {exc}") from exc
    store = _store()
    try:
        snapshot = ops.read_export(data)
        result = ops.import_snapshot(
            store, snapshot, as_id=as_id, force=force, any_namespace=any_namespace
        )
    except ops.ImportIncomplete as exc:
        raise click.ClickException(f"import incomplete: {exc}") from exc
    except AgentThreadsError as exc:
        message = str(exc)
        if "nothing was written" not in message:
            message += "; nothing was written"
        raise click.ClickException(f"import refused: {message}") from exc
    tier = "cold"
    if hot:
        try:
            tier = "hot" if store.hydrate(result.thread_id).status != "absent" else tier
        except AgentThreadsError as exc:
            raise click.ClickException(
                f"imported thread {result.thread_id!r} into the cold tier, but restoring it "
                f"into Redis failed: {exc}; the next turn or `agent-threads hydrate` retries"
            ) from exc
    source = f" from {result.source_id!r}" if result.source_id != result.thread_id else ""
    replaced = ", replacing the existing thread" if result.replaced else ""
    click.echo(
        f"imported thread {result.thread_id!r}{source}: version {result.version}, "
        f"{result.length} messages, now {tier}{replaced}"
    )


# -- retention ---------------------------------------------------------------------------------


def _as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint="--as-of") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@main.command("cold-prune")
@click.option("--older-than", **DURATION, required=True, help="e.g. 30d")
@click.option("--dry-run", is_flag=True, help="list what would be deleted; delete nothing")
@click.option("--prefix", default="", help="only thread ids starting with this")
@click.option(
    "--as-of",
    metavar="TIME",
    default=None,
    help="judge ages as of this ISO time instead of now (preview a later run)",
)
@click.option("--json", "as_json", is_flag=True)
@_errors
def cold_prune(
    older_than: float, dry_run: bool, prefix: str, as_of: str | None, as_json: bool
) -> None:
    """Retention: delete cold archives last written more than --older-than ago.

    Age is the archive's last write (S3 LastModified, file mtime): a thread that was
    only read since keeps its old archive. So a thread in use is never pruned: one
    that is hot now, or was evicted so recently that its eviction marker still
    exists (one hour by default). Each is checked right before its archive is
    deleted; a thread hydrated after that check loses nothing (its hot copy is
    complete and its next flush writes a new archive). Lists the whole cold store.
    Exits 1 if any deletion failed.
    """
    console = _console()
    rows: list[tuple[ColdObject, str]] = []
    report = ops.prune_cold(
        _store(),
        older_than,
        now=_as_of(as_of),
        prefix=prefix,
        dry_run=dry_run,
        progress=lambda item, status: rows.append((item, status)),
    )
    if as_json:
        _echo_json(
            {
                "cutoff": report.cutoff.isoformat(),
                "dry_run": dry_run,
                "archives": [
                    {
                        "thread_id": item.thread_id,
                        "size": item.size,
                        "last_modified": item.last_modified.isoformat(),
                        "status": status,
                    }
                    for item, status in rows
                ],
                "deleted_bytes": report.deleted_bytes,
            }
        )
    else:
        if rows:
            table = _table()
            for name in ("thread", "size", "last modified", "age", ""):
                table.add_column(name)
            now = (report.cutoff.timestamp() + older_than) * 1000
            for item, status in rows:
                age = ops.format_duration(now / 1000 - item.last_modified.timestamp())
                modified = item.last_modified.strftime("%Y-%m-%dT%H:%M:%SZ")
                table.add_row(item.thread_id, _size(item.size), modified, age, status)
            console.print(table)
        verb = "would delete" if dry_run else "deleted"
        cutoff = report.cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(
            f"cold-prune: {len(report.candidates)} archives last written before {cutoff}: "
            f"{verb} {len(report.deleted)} ({_size(report.deleted_bytes)}), "
            f"kept {len(report.in_use)} in use, {len(report.failed)} failed"
        )
    for thread_id, error in report.failed:
        click.echo(f"  failed {thread_id}: {error}", err=True)
    if report.failed:
        sys.exit(1)


# -- demo ---------------------------------------------------------------------------------


@contextmanager
def _demo_settings() -> Iterator[dict[str, str]]:
    """AGENT_THREADS_* for the demo: the user's, else an embedded redis-server and a
    file cold store under ./.agent-threads/cold."""
    cold = os.environ.get("AGENT_THREADS_COLD_URL") or (
        "file://" + str(Path(".agent-threads/cold").resolve())
    )
    given = os.environ.get("AGENT_THREADS_REDIS_URL")
    if given:
        click.echo(f"using Redis at {given}")
        yield {
            "AGENT_THREADS_REDIS_URL": given,
            "AGENT_THREADS_BROKER_URL": app.conf.broker_url,
            "AGENT_THREADS_RESULT_BACKEND": app.conf.result_backend,
            "AGENT_THREADS_COLD_URL": cold,
        }
        return
    with EmbeddedRedis() as server:
        click.echo(f"started embedded redis-server on 127.0.0.1:{server.port}")
        base = f"redis://127.0.0.1:{server.port}"
        yield {
            "AGENT_THREADS_REDIS_URL": f"{base}/0",
            "AGENT_THREADS_BROKER_URL": f"{base}/1",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/2",
            "AGENT_THREADS_COLD_URL": cold,
        }
        click.echo("stopped embedded redis-server")


def _configure(settings: Mapping[str, str]) -> Threads:
    return configure(
        broker_url=settings["AGENT_THREADS_BROKER_URL"],
        result_backend=settings["AGENT_THREADS_RESULT_BACKEND"],
        redis_url=settings["AGENT_THREADS_REDIS_URL"],
        cold_url=settings["AGENT_THREADS_COLD_URL"],
    )


def _print_turn(title: str, client: ThreadClient, thread_id: str, turn_id: str) -> None:
    status = client.wait_turn(thread_id, turn_id, timeout=120)
    click.echo(f"\n{title}  ({status.state} in {status.duration_ms} ms end to end)")
    for name in status.steps:
        click.echo(f"  {status.timings.get(name, 0):6d} ms  {name}")
    tools = ", ".join(f"{call} x{t.get('runs', 0)}" for call, t in status.tools.items())
    click.echo(
        f"  model calls: {len(status.usage)}, tokens in/out: {status.input_tokens}/"
        f"{status.output_tokens}; tool runs: {tools or 'none'}"
    )


@main.command()
@click.option("--thread", "thread_id", default="demo-trip", show_default=True)
@click.option(
    "--model",
    "provider",
    type=click.Choice(["scripted", "anthropic"]),
    default="scripted",
    show_default=True,
    help="scripted: offline; anthropic: the real API (needs ANTHROPIC_API_KEY)",
)
@click.option(
    "--evict",
    type=click.Choice(["idle", "turn"]),
    default="idle",
    show_default=True,
    help="idle: threads stay hot between turns until the idle flush; turn: evicted "
    "at the end of every turn",
)
def demo(thread_id: str, provider: str, evict: Evict) -> None:
    """Three agent turns (one forked) through a real Celery worker with the offline
    scripted model (or Claude). Each turn opens the thread (hydrating it if cold),
    appends, runs and archives it; with --evict idle the threads stay hot until the
    idle flush at the end evicts them, with --evict turn every turn evicts."""
    if provider == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise click.ClickException("--model anthropic needs ANTHROPIC_API_KEY in the environment")
    with _demo_settings() as settings:
        store = _configure(settings)
        fork_id = f"{thread_id}-alt"
        for tid in (thread_id, fork_id):
            store.delete(tid)
        worker = WorkerProcess(
            {**os.environ, **settings},
            [app.conf.agent_threads["queue"], app.conf.task_default_queue],
            name=f"demo-{uuid.uuid4().hex[:6]}",
        )  # fmt: skip
        worker.start()
        try:
            worker.wait_ready(app)
            click.echo(f"started a celery worker (pid {worker.process and worker.process.pid})")
            _run_demo(store, thread_id, fork_id, provider, evict)
        finally:
            worker.stop()
            click.echo("stopped the celery worker")
            app.close()


def _run_demo(store: Threads, thread_id: str, fork_id: str, provider: str, evict: Evict) -> None:
    client = ThreadClient(app)
    if provider == "anthropic":
        model_name = os.environ.get("AGENT_THREADS_ANTHROPIC_MODEL", "claude-sonnet-4-5")
        model = app.signature(
            "adapters.anthropic.run_turn", kwargs={"model": model_name, "max_tokens": 300}
        )
    else:
        model = app.signature("demo.scripted_agent", kwargs={"think_ms": 50})

    def user(mid: str, text: str) -> dict[str, Any]:
        return {"id": mid, "body": {"role": "user", "content": text}}

    system = {"id": "system", "body": {"role": "system", "content": "You are a travel agent."}}
    turns: list[tuple[str, str, list[dict[str, Any]], Mode]] = [
        ("turn 1 (new)", thread_id, [system, user("u1", "A train from Zurich to Milan?")], "new"),
        ("turn 2 (continue)", thread_id, [user("u2", "Book the first one.")], "continue"),
    ]
    for title, tid, messages, mode in turns:
        turn_id = f"{tid}:{title.split()[1]}"
        client.turn(tid, messages, model, turn_id=turn_id, mode=mode, evict=evict)
        _print_turn(title, client, tid, turn_id)
        click.echo(f"  tier after the turn: {_tier_after_turn(store, tid)}")
    fork_turn = f"{fork_id}:3"
    client.turn(
        fork_id,
        [user("u2-alt", "Is there a later train?")],
        model,
        turn_id=fork_turn,
        mode="fork",
        source=thread_id,
        up_to_id=reply_id(f"{thread_id}:1", 1),  # turn 1's answer, after its tool calls
        evict=evict,
    )
    _print_turn("turn 3 (fork of turn 1)", client, fork_id, fork_turn)
    click.echo(f"  tier after the turn: {_tier_after_turn(store, fork_id)}")
    if evict == "idle":  # what the beat's idle flusher does once the threads are idle
        report = store.flush_idle(0)
        click.echo(f"\nidle flush: {len(report.evicted)} evicted, {len(report.kept)} kept hot")
    click.echo("")
    for tid in (thread_id, fork_id):
        _render_thread(_console(), ops.view_thread(store, tid), 50)
        click.echo("")
    click.echo("\nredelivery check: sending turn 2 again with the same turn id ...")
    agent_turn(thread_id, turns[1][2], model, turn_id=f"{thread_id}:2").apply_async()
    time.sleep(2)  # its steps find the turn finished and do nothing
    count = len(store.load(thread_id))
    click.echo(f"  the thread still has {count} messages: nothing was doubled")


if __name__ == "__main__":
    main(sys.argv[1:])
