"""``ls`` and ``stats``: the hot threads by last activity, and the counts of both tiers."""

from __future__ import annotations

import click
from rich.table import Table

from tasks.cli import render
from tasks.cli.context import DURATION, current_store
from tasks.cli.ops.durations import format_duration
from tasks.cli.ops.overview import collect_stats, list_hot


@click.command("ls")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--idle-longer-than",
    "idle",
    **DURATION,
    default=None,
    help="only threads idle at least this long, oldest first",
)
@click.option("--json", "as_json", is_flag=True)
@render.errors
def list_threads(limit: int, idle: float | None, as_json: bool) -> None:
    """List hot threads by last activity, most recent first (from the namespace's
    activity index: no key scan), with length, version, lease and archive."""
    entries = list_hot(current_store(), limit=limit, idle_seconds=idle)
    if as_json:
        render.echo_json(
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
    console = render.console()
    if not entries:
        console.print("no hot threads" + (" idle that long" if idle is not None else ""))
        return
    table = render.table()
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
            table.add_row(
                e.thread_id, render.ago(e.last_active_ms), "-", "-", "-", "(expired)", "-"
            )
            continue
        ttl = "-" if info.ttl_ms is None else format_duration(info.ttl_ms / 1000)
        archived = "-" if info.cold_version is None else f"v{info.cold_version}"
        table.add_row(
            e.thread_id,
            render.ago(e.last_active_ms),
            str(info.length),
            str(info.version),
            archived,
            info.lease_owner or "",
            ttl,
        )
    console.print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-cold", is_flag=True, help="skip listing the cold store (large buckets)")
@render.errors
def stats(as_json: bool, no_cold: bool) -> None:
    """Hot threads (activity index), leased threads, Redis memory and key count, cold
    archives (count, bytes, oldest and newest; lists the whole cold store)."""
    result = collect_stats(current_store(), cold=not no_cold)
    if as_json:
        render.echo_json(result.to_json())
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    leased = "-" if result.leased_threads is None else str(result.leased_threads)
    maxmemory = f" of {render.size(result.redis_maxmemory)}" if result.redis_maxmemory else ""
    rows = [
        ("namespace", result.namespace),
        ("hot threads", str(result.hot_threads)),
        ("leased threads", leased),
        ("redis used memory", render.size(result.redis_used_memory) + maxmemory),
        ("redis keys (db)", "-" if result.redis_keys is None else str(result.redis_keys)),
    ]
    if result.cold_objects is not None:
        rows += [
            ("cold archives", str(result.cold_objects)),
            ("cold bytes", render.size(result.cold_bytes)),
        ]
        if result.cold_oldest and result.cold_newest:
            rows.append(("cold oldest", result.cold_oldest.strftime("%Y-%m-%dT%H:%M:%SZ")))
            rows.append(("cold newest", result.cold_newest.strftime("%Y-%m-%dT%H:%M:%SZ")))
    for name, value in rows:
        table.add_row(name, value)
    render.console().print(table)
