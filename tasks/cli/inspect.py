"""``inspect``: one thread in whichever tier holds it, its turns, messages and state."""

from __future__ import annotations

import json
from collections.abc import Sequence

import click
from rich.console import Console
from rich.table import Table

from storage.turns import TurnStatus
from tasks.cli import render
from tasks.cli.context import current_store
from tasks.cli.ops.durations import format_duration
from tasks.cli.ops.inspect import ThreadView, view_thread
from tasks.cli.ops.summaries import summarize_body


def _archive_line(view: ThreadView) -> str:
    if view.archive_etag is None:
        return "none (never flushed)"
    line = f"v{view.archive_version} etag {view.archive_etag}"
    if view.tier == "cold":
        return line
    behind = view.archive_version is not None and view.archive_version < view.snapshot.version
    return line + (f" (behind: hot is v{view.snapshot.version})" if behind else " (current)")


def _turns_table(turns: Sequence[TurnStatus]) -> Table:
    """The last turns: state, where they are, what they cost."""
    table = render.table()
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


def render_thread(console: Console, view: ThreadView, last: int | None) -> None:
    """The thread as ``inspect`` prints it: its properties, last turns, last ``last``
    messages (all if 0) and state."""
    s, info = view.snapshot, view.info
    count = len(s.records)
    console.print(
        f"thread '{s.thread_id}': tier {view.tier}, version {s.version}, "
        f"{count} message{'' if count == 1 else 's'}"
    )
    props = Table.grid(padding=(0, 2))
    props.add_column(style="bold")
    props.add_column()
    props.add_row("namespace", s.namespace)
    props.add_row("created", render.when(s.created_ms))
    props.add_row("updated", render.when(s.updated_ms))
    if info is not None:
        ttl = "no expiry" if info.ttl_ms is None else format_duration(info.ttl_ms / 1000)
        props.add_row("hot TTL", ttl)
        lease = "none"
        if info.lease_owner:
            left = format_duration((info.lease_ttl_ms or 0) / 1000)
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
        (str(position), record["id"], summarize_body(record["body"], width=20)[0])
        for position, record in enumerate(shown, start=first)
    ]
    # Size the columns up front so the content column gets what is left of the line
    # (rich would otherwise squeeze ids and roles to make room for long content).
    widths = [max((len(row[i]) for row in rows), default=1) for i in range(3)]
    widths[1] = min(widths[1], 40)
    content_width = max(20, console.width - sum(widths) - 3 * 3 - 1)
    table = render.table()
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("id", overflow="fold", min_width=widths[1], max_width=40)
    table.add_column("role", no_wrap=True, min_width=widths[2])
    table.add_column("content", overflow="ellipsis", no_wrap=True)
    for (number, message_id, role), record in zip(rows, shown, strict=True):
        text = summarize_body(record["body"], content_width)[1]
        table.add_row(number, message_id, role, text)
    if messages:
        console.print()
        console.print(table)
    if first:
        console.print(f"(the first {first} of {count} messages not shown; --last 0 shows all)")
    console.print("state: " + json.dumps(s.state, indent=2, ensure_ascii=False))


@click.command()
@click.argument("thread_id")
@click.option("--json", "as_json", is_flag=True, help="print everything as one JSON object")
@click.option(
    "--last",
    type=click.IntRange(min=0),
    default=None,
    help="show only the last N messages (0: all; default 50 in the table, all with --json)",
)
@render.errors
def inspect(thread_id: str, as_json: bool, last: int | None) -> None:
    """Show a thread: tier (hot/cold), version, TTL, lease, archive version and etag,
    fork parent, messages and state. A cold thread is read from its archive without
    restoring it. Exits 1 if the id is invalid or the thread exists in no tier."""
    view = view_thread(current_store(), thread_id)
    if as_json:
        out = view.to_json()
        if last:
            out["messages"] = out["messages"][-last:]
        render.echo_json(out)
        return
    render_thread(render.console(), view, 50 if last is None else last)
