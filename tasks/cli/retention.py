"""``cold-prune``: cold-tier retention, deleting archives last written long ago."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click

from storage.cold import ColdObject
from tasks.cli import render
from tasks.cli.context import DURATION, current_store
from tasks.cli.ops.durations import format_duration
from tasks.cli.ops.retention import prune_cold


def _as_of(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}", param_hint="--as-of") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@click.command("cold-prune")
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
@render.errors
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
    console = render.console()
    rows: list[tuple[ColdObject, str]] = []
    report = prune_cold(
        current_store(),
        older_than,
        now=_as_of(as_of),
        prefix=prefix,
        dry_run=dry_run,
        progress=lambda item, status: rows.append((item, status)),
    )
    if as_json:
        render.echo_json(
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
            table = render.table()
            for name in ("thread", "size", "last modified", "age", ""):
                table.add_column(name)
            now = (report.cutoff.timestamp() + older_than) * 1000
            for item, status in rows:
                age = format_duration(now / 1000 - item.last_modified.timestamp())
                modified = item.last_modified.strftime("%Y-%m-%dT%H:%M:%SZ")
                table.add_row(item.thread_id, render.size(item.size), modified, age, status)
            console.print(table)
        verb = "would delete" if dry_run else "deleted"
        cutoff = report.cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(
            f"cold-prune: {len(report.candidates)} archives last written before {cutoff}: "
            f"{verb} {len(report.deleted)} ({render.size(report.deleted_bytes)}), "
            f"kept {len(report.in_use)} in use, {len(report.failed)} failed"
        )
    for thread_id, error in report.failed:
        click.echo(f"  failed {thread_id}: {error}", err=True)
    if report.failed:
        sys.exit(1)
