"""A thread as a schema-1 snapshot file (``export``) and back (``import``), exactly."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from typing import Literal

from storage.errors import AgentThreadsError, SnapshotCorrupt, ThreadExists
from storage.hot import new_epoch
from storage.keys import validate_thread_id
from storage.snapshot import (
    DEFAULT_MAX_SNAPSHOT_BYTES,
    FORMAT,
    GZIP_MAGIC,
    ZSTD_MAGIC,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)
from storage.tiered import Threads
from tasks.cli.ops.inspect import Tier, view_thread

ExportFormat = Literal["jsonl", "gzip"]


def snapshot_of(store: Threads, thread_id: str) -> tuple[Snapshot, Tier]:
    """The thread as a snapshot, hot (read in one script) or cold."""
    view = view_thread(store, thread_id)
    return view.snapshot, view.tier


def export_snapshot(snapshot: Snapshot, fmt: ExportFormat = "jsonl") -> bytes:
    """The snapshot file: "jsonl" is the snapshot uncompressed (a header line with the
    checksum, an index line, one record per line: ``jq`` reads it); "gzip" is the
    compressed object exactly as a gzip cold store holds it. Either is decoded
    again before it is returned, so an export that would not import never leaves."""
    packed = encode_snapshot(snapshot, "gzip", 1 if fmt == "jsonl" else None)
    if decode_snapshot(packed, snapshot.thread_id) != snapshot:
        raise SnapshotCorrupt(f"export of thread {snapshot.thread_id!r} does not round-trip")
    return zlib.decompress(packed, 31) if fmt == "jsonl" else packed


def _leading_bytes(data: bytes, limit: int = 1 << 20) -> bytes:
    """The start of the uncompressed snapshot (enough for its header line)."""
    try:
        if data[:2] == GZIP_MAGIC:
            return zlib.decompressobj(31).decompress(data, limit)
        if data[:4] == ZSTD_MAGIC:
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(data)
            return bytes(reader.read(limit))
    except Exception as exc:  # zlib.error, zstandard.ZstdError, ImportError
        raise SnapshotCorrupt(f"not valid compressed data: {exc}") from exc
    return data[:limit]


def read_export(data: bytes, *, max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES) -> Snapshot:
    """Validate and decode an export ("jsonl" or a gzip/zstd snapshot): format, schema,
    thread id, checksum, ledger and record framing. ``SnapshotCorrupt`` otherwise."""
    if not data:
        raise SnapshotCorrupt("the file is empty")
    header_line = _leading_bytes(data).partition(b"\n")[0]
    try:
        header = json.loads(header_line)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotCorrupt(
            "not an agent-threads snapshot (foreign or damaged file: the first line must be "
            f'a header with "format": "{FORMAT}")'
        )
    thread_id = header.get("thread_id")
    try:
        validate_thread_id(thread_id)
    except AgentThreadsError as exc:
        raise SnapshotCorrupt(f"snapshot header names no valid thread id: {exc}") from exc
    assert isinstance(thread_id, str)
    compressed = data[:2] == GZIP_MAGIC or data[:4] == ZSTD_MAGIC
    if not compressed:
        if len(data) > max_bytes:
            raise SnapshotCorrupt(f"snapshot is larger than {max_bytes} bytes")
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)
        data = packer.compress(data) + packer.flush()
    return decode_snapshot(data, thread_id, max_bytes=max_bytes)


class ImportRefused(AgentThreadsError):
    """An import was refused before anything was written (see the message)."""


class ImportIncomplete(AgentThreadsError):
    """A forced import replaced the archive but could not drop the old hot copy."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    thread_id: str
    source_id: str
    version: int
    length: int
    replaced: bool
    """True when --force replaced an existing thread."""
    etag: str


def import_snapshot(
    store: Threads,
    snapshot: Snapshot,
    *,
    as_id: str | None = None,
    force: bool = False,
    any_namespace: bool = False,
) -> ImportResult:
    """Store a validated snapshot as the cold archive of ``as_id`` (default: its own id).

    Refused, with nothing written, when the snapshot is of another namespace (unless
    ``any_namespace``) or the id exists in either tier (unless ``force``; even then
    not while a turn holds its lease). The archive is written first, create-only or
    by compare-and-swap on the etag seen (a failed write changes nothing); a forced
    import then drops the old hot copy, which would shadow the archive
    (``ImportIncomplete`` if that fails: run it again). Under another id the copy is
    a new incarnation (a new epoch); everything else is kept exactly.
    """
    target = as_id or snapshot.thread_id
    store.hot.keys(target)  # InvalidThreadId before any I/O
    if snapshot.namespace != store.hot.namespace:
        if not any_namespace:
            raise ImportRefused(
                f"snapshot of thread {snapshot.thread_id!r} belongs to namespace "
                f"{snapshot.namespace!r}, not {store.hot.namespace!r}; nothing was written "
                "(pass --any-namespace to import it into this namespace)"
            )
        snapshot = replace(snapshot, namespace=store.hot.namespace)
    source_id = snapshot.thread_id
    if target != source_id:
        snapshot = replace(snapshot, thread_id=target, epoch=new_epoch())
    in_hot = store.hot.exists(target)
    etag = store.cold.head(target)
    if (in_hot or etag is not None) and not force:
        where = "hot" if in_hot else "archived in the cold tier"
        raise ThreadExists(target, f"it is {where}; nothing was written (--force replaces it)")
    if in_hot:
        holder = store.hot.info(target).lease_owner
        if holder:
            raise ImportRefused(
                f"thread {target!r} is leased by turn {holder!r}; nothing was written "
                "(wait for the turn to finish, then import with --force)"
            )
    data = encode_snapshot(snapshot, store.cold.compression, store.cold.compression_level)
    store.hot.clear_tombstone(target)  # an import may bring back a deleted thread
    new_etag = store.cold.write_bytes(target, data, etag)  # create-only, or CAS on what we saw
    if in_hot:  # a forced replace: the old hot copy would shadow the new archive
        try:
            store.hot.delete(target, tombstone=False)  # the archive replaces it
            store.hot.forget_activity(target)
        except AgentThreadsError as exc:
            raise ImportIncomplete(
                f"the archive of thread {target!r} was replaced, but its old hot copy could "
                f"not be dropped ({exc}); run the import with --force again"
            ) from exc
    replaced = in_hot or etag is not None
    return ImportResult(
        target, source_id, snapshot.version, len(snapshot.records), replaced, new_etag
    )
