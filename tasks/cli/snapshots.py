"""``export`` and ``import``: a thread as a schema-1 snapshot file and back, exactly."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import click

from storage.errors import AgentThreadsError
from storage.snapshot import DEFAULT_MAX_SNAPSHOT_BYTES
from tasks.cli import render
from tasks.cli.context import current_store
from tasks.cli.ops.snapshots import (
    ExportFormat,
    ImportIncomplete,
    export_snapshot,
    import_snapshot,
    read_export,
    snapshot_of,
)


@click.command()
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
@render.errors
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
    chosen: ExportFormat = "gzip" if gzip else "jsonl"
    snapshot, tier = snapshot_of(current_store(), thread_id)
    data = export_snapshot(snapshot, chosen)
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
        f"exported thread '{thread_id}' ({tier}, version {snapshot.version}, "
        f"{len(snapshot.records)} messages, {render.size(len(data))} {chosen}) to {output}",
        err=True,
    )


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--as", "as_id", metavar="NEW_ID", help="import under another thread id")
@click.option("--force", is_flag=True, help="replace an existing thread (not one in a turn)")
@click.option("--hot", is_flag=True, help="also restore it into Redis (default: cold tier)")
@click.option(
    "--any-namespace", is_flag=True, help="accept a snapshot exported from another namespace"
)
@render.errors
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
    store = current_store()
    try:
        snapshot = read_export(data)
        result = import_snapshot(
            store, snapshot, as_id=as_id, force=force, any_namespace=any_namespace
        )
    except ImportIncomplete as exc:
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
                f"imported thread '{result.thread_id}' into the cold tier, but restoring it "
                f"into Redis failed: {exc}; the next turn or `agent-threads hydrate` retries"
            ) from exc
    source = f" from '{result.source_id}'" if result.source_id != result.thread_id else ""
    replaced = ", replacing the existing thread" if result.replaced else ""
    click.echo(
        f"imported thread '{result.thread_id}'{source}: version {result.version}, "
        f"{result.length} messages, now {tier}{replaced}"
    )
