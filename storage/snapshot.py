"""Cold snapshots (schema 1): one compressed object per thread.

The decompressed object is a sequence of JSON texts, one per line (``zcat
file | jq`` reads it):

1. header: ``{"format": "agent-threads/snapshot", "schema": 1, "thread_id",
   "namespace", "version", "epoch", "created_ms", "updated_ms", "parent",
   "fork_point", "creator", "count", "checksum": "sha256:<hex>"}``
2. index: ``{"state": {...}, "ids": [...], "retired_ids": [...], "turns": [...]}``
3. ``count`` records ``{"id", "body"}``, one per line, byte for byte as stored in Redis.

The checksum covers the header (without its checksum field) and everything
after the header line. Records stay encoded
end to end (Redis -> snapshot -> Redis), so a hydrate restores exactly the
bytes that were flushed and never re-encodes them. Decoding validates
everything (compression, JSON, schema, thread id, checksum, ids, record
framing) before anything is applied; any failure is ``SnapshotCorrupt``.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from storage.errors import AgentThreadsError, SnapshotCorrupt
from storage.keys import validate_message_id, validate_message_ids, validate_thread_id
from storage.records import Message, decode_records, encode_state

if TYPE_CHECKING:
    from storage.archive import Layout

FORMAT = "agent-threads/snapshot"
SCHEMA = 1
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DEFAULT_MAX_SNAPSHOT_BYTES = 2 * 1024**3
"""Decompressed size cap: a hostile object cannot exhaust memory (gzip bomb)."""

Compression = Literal["gzip", "zstd"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One thread as archived: metadata, state, dedup ledger and encoded records."""

    thread_id: str
    namespace: str
    version: int
    epoch: str
    created_ms: int
    updated_ms: int
    parent: str | None
    fork_point: str | None
    creator: str | None
    state: dict[str, Any]
    ids: tuple[str, ...]
    """Message ids in list order: ``ids[i]`` is the id of ``records[i]``."""
    records: tuple[bytes, ...]
    """Encoded ``{"id", "body"}`` records, exactly as stored in Redis."""
    retired_ids: tuple[str, ...] = ()
    """Ids removed by ``replace_all``; still deduplicated after a hydrate."""
    finished_turns: tuple[str, ...] = ()
    """Lease owners (turn ids) whose turn ended; they can never take the lease again."""
    head: str = ""
    """The lineage head of the hot copy this was read from: unique per mutation, so a
    flush can tell an archive of its own history from one of a diverged copy
    ("" in archives written before lineage heads)."""
    last_merge: dict[str, Any] | None = None
    """The last merge of a diverged hot copy with its archive (``storage.lineage``)."""
    layout: Layout | None = field(default=None, compare=False)
    """Where a schema-2 archive keeps these records (``storage.archive``); None for a
    schema-1 archive and for a snapshot read from the hot tier."""

    def messages(self) -> list[Message]:
        return decode_records(self.records)


def dumps(value: object) -> bytes:
    """Compact JSON (UTF-8, no ASCII escaping): headers, indexes and manifests."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def checksum(header: dict[str, Any], payload: bytes) -> str:
    """SHA-256 over the header without its checksum field, a newline, and the payload."""
    digest = hashlib.sha256(dumps({k: v for k, v in header.items() if k != "checksum"}))
    digest.update(b"\n")
    digest.update(payload)
    return "sha256:" + digest.hexdigest()


def loads(data: bytes, failure: str) -> Any:
    """``json.loads`` that turns every failure (deep nesting included) into SnapshotCorrupt."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise SnapshotCorrupt(f"{failure} ({type(exc).__name__})") from exc


def record_prefix(message_id: str) -> bytes:
    if '"' in message_id or "\\" in message_id:  # needs JSON escaping
        return b'{"id":' + json.dumps(message_id, ensure_ascii=False).encode() + b',"body":'
    return b'{"id":"' + message_id.encode() + b'","body":'


def identity(snapshot: Snapshot) -> dict[str, Any]:
    """The header fields every archive object repeats: whose thread, which incarnation,
    which version, and its lineage."""
    return {
        "thread_id": snapshot.thread_id,
        "namespace": snapshot.namespace,
        "version": snapshot.version,
        "epoch": snapshot.epoch,
        "created_ms": snapshot.created_ms,
        "updated_ms": snapshot.updated_ms,
        "parent": snapshot.parent,
        "fork_point": snapshot.fork_point,
        "creator": snapshot.creator,
    }


DEFAULT_LEVELS: dict[str, int] = {"gzip": 3, "zstd": 3}
"""gzip 3 compresses chat JSON ~3:1 at ~3.5x the speed of gzip 6 (measured in bench/tiering.py)."""


def encode_snapshot(
    snapshot: Snapshot, compression: Compression = "gzip", level: int | None = None
) -> bytes:
    """Serialise and compress; records are concatenated as they are, not re-encoded."""
    index = dumps(
        {
            "state": snapshot.state,
            "ids": snapshot.ids,
            "retired_ids": snapshot.retired_ids,
            "turns": snapshot.finished_turns,
        }
    )
    payload = b"\n".join((index, *snapshot.records))
    header: dict[str, Any] = {
        "format": FORMAT,
        "schema": SCHEMA,
        **identity(snapshot),
        "count": len(snapshot.records),
        "head": snapshot.head,
    }
    if snapshot.last_merge is not None:
        header["last_merge"] = snapshot.last_merge
    header["checksum"] = checksum(header, payload)
    raw = dumps(header) + b"\n" + payload
    if compression == "gzip":
        packer = zlib.compressobj(level or DEFAULT_LEVELS["gzip"], zlib.DEFLATED, 31)
        return packer.compress(raw) + packer.flush()
    if compression == "zstd":
        compressor = _zstd().ZstdCompressor(
            level=level or DEFAULT_LEVELS["zstd"], write_checksum=True
        )
        packed: bytes = compressor.compress(raw)
        return packed
    raise ValueError(f"unknown compression {compression!r}: use 'gzip' or 'zstd'")


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise AgentThreadsError(
            "zstd snapshots need the 'zstandard' package: pip install 'agent-threads[zstd]'"
        ) from exc
    return zstandard


def decompress(data: bytes, max_bytes: int) -> bytes:
    try:
        if data[:2] == GZIP_MAGIC:
            unpacker = zlib.decompressobj(31)
            raw = unpacker.decompress(data, max_bytes + 1)
            if len(raw) > max_bytes:
                raise SnapshotCorrupt(f"snapshot expands beyond {max_bytes} bytes")
            if not unpacker.eof:
                raise SnapshotCorrupt("snapshot is truncated (incomplete gzip stream)")
            return raw
        if data[:4] == ZSTD_MAGIC:
            zstandard = _zstd()
            size = zstandard.frame_content_size(data)  # we always write it
            if size < 0:
                raise SnapshotCorrupt("zstd snapshot does not declare its size")
            if size > max_bytes:
                raise SnapshotCorrupt(f"snapshot expands beyond {max_bytes} bytes")
            return bytes(zstandard.ZstdDecompressor().decompress(data, max_output_size=size))
    except (zlib.error, EOFError) as exc:
        raise SnapshotCorrupt(f"snapshot is not valid compressed data: {exc}") from exc
    except SnapshotCorrupt:
        raise
    except Exception as exc:  # zstandard.ZstdError and friends
        if type(exc).__name__.startswith("Zstd"):
            raise SnapshotCorrupt(f"snapshot is not valid zstd data: {exc}") from exc
        raise
    raise SnapshotCorrupt("snapshot is neither gzip nor zstd compressed")


class _Record(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    body: msgspec.Raw


_RECORDS = msgspec.json.Decoder(list[_Record])


def _first_bad(records: Sequence[bytes]) -> int:
    """The position of the first record that is not a ``{"id","body"}`` object."""
    one = msgspec.json.Decoder(_Record)
    for position, record in enumerate(records):
        try:
            one.decode(record)
            record.decode("utf-8")
        except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
            return position
    return 0


def check_records(
    payload: bytes, records: Sequence[bytes], thread_id: str, names: Sequence[str] = ()
) -> list[str]:
    """The ids of ``records`` (lines of ``payload``), each of which must be exactly
    ``{"id":<id>,"body":<JSON>}`` in canonical framing, with valid JSON and UTF-8;
    ``SnapshotCorrupt`` otherwise. One msgspec pass validates every body without
    building it (a hydrate's largest cost with ``json.loads``: 4 ms instead of 22 ms
    for 10,000 records of 600 bytes)."""
    joined = b"[" + b",".join(records) + b"]"
    try:
        payload.decode("utf-8")  # msgspec skips over a Raw body without decoding it
        parsed = _RECORDS.decode(joined)
    except (UnicodeDecodeError, msgspec.DecodeError, RecursionError) as exc:
        bad = _first_bad(records)
        name = repr(names[bad]) if bad < len(names) else f"#{bad}"
        raise SnapshotCorrupt(f"record {name} of {thread_id!r} is malformed: {exc}") from exc
    if len(parsed) != len(records):  # a line holding two values separated by a comma
        raise SnapshotCorrupt(f"records of {thread_id!r} are malformed")
    if msgspec.json.encode(parsed) == joined:  # all canonical: the common case, in C
        return [value.id for value in parsed]
    for position, (record, value) in enumerate(zip(records, parsed, strict=True)):
        prefix = record_prefix(value.id)
        inner = record[len(prefix) : -1].strip(b" \t\r")  # JSON whitespace around the body
        if not (record.startswith(prefix) and record.endswith(b"}") and inner == bytes(value.body)):
            name = names[position] if position < len(names) else value.id
            raise SnapshotCorrupt(f"record {name!r} of {thread_id!r} is malformed")
    return [value.id for value in parsed]


def _field(header: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SnapshotCorrupt(f"snapshot header field {name!r} is missing or malformed")
    return value


def decode_snapshot(
    data: bytes, thread_id: str, *, max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES
) -> Snapshot:
    """Validate and decode; ``SnapshotCorrupt`` unless it is a sound snapshot of ``thread_id``."""
    raw = decompress(data, max_bytes)
    header_line, _, payload = raw.partition(b"\n")
    header = loads(header_line, "snapshot header is not JSON")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotCorrupt("object is not an agent-threads snapshot (foreign format)")
    if header.get("schema") != SCHEMA:
        raise SnapshotCorrupt(
            f"snapshot schema {header.get('schema')!r} is not supported (this version reads "
            f"{SCHEMA})"
        )
    if header.get("thread_id") != thread_id:
        raise SnapshotCorrupt(
            f"snapshot belongs to thread {header.get('thread_id')!r}, not {thread_id!r}"
        )
    if header.get("checksum") != checksum(header, payload):
        raise SnapshotCorrupt(f"snapshot of {thread_id!r} fails its checksum")
    count = _field(header, "count", int)
    lines = payload.split(b"\n")
    if len(lines) != count + 1:
        raise SnapshotCorrupt(
            f"snapshot of {thread_id!r} has {len(lines) - 1} records, not {count}"
        )
    index = loads(lines[0], f"snapshot index of {thread_id!r} is malformed: not JSON")
    try:
        if not isinstance(index["ids"], list) or not isinstance(index["retired_ids"], list):
            raise SnapshotCorrupt("ids and retired_ids must be lists")
        ids = validate_message_ids(index["ids"])
        retired = validate_message_ids(index["retired_ids"])
        turns = index.get("turns", [])
        if not isinstance(turns, list):
            raise SnapshotCorrupt("turns must be a list")
        finished_turns = tuple(validate_message_id(t, what="turn id") for t in turns)
        state = index["state"]
        encode_state(state)
    except (ValueError, KeyError, TypeError, AgentThreadsError) as exc:
        raise SnapshotCorrupt(f"snapshot index of {thread_id!r} is malformed: {exc}") from exc
    if len(ids) != count or len(set(ids)) != count or set(ids) & set(retired):
        raise SnapshotCorrupt(f"snapshot ledger of {thread_id!r} is inconsistent")
    records = tuple(lines[1:])
    found = check_records(payload, records, thread_id, ids)
    for expected, actual in zip(ids, found, strict=True):
        if expected != actual:
            raise SnapshotCorrupt(f"snapshot record {expected!r} of {thread_id!r} is malformed")
    try:
        validate_thread_id(thread_id)
        parent, fork_point, creator = (header.get(k) for k in ("parent", "fork_point", "creator"))
        if not all(v is None or isinstance(v, str) for v in (parent, fork_point, creator)):
            raise SnapshotCorrupt("snapshot lineage fields are malformed")
        head, last_merge = header.get("head", ""), header.get("last_merge")
        if not isinstance(head, str) or not (last_merge is None or isinstance(last_merge, dict)):
            raise SnapshotCorrupt("snapshot lineage head or merge record is malformed")
        return Snapshot(
            thread_id=thread_id,
            namespace=_field(header, "namespace", str),
            version=_field(header, "version", int),
            epoch=_field(header, "epoch", str),
            created_ms=_field(header, "created_ms", int),
            updated_ms=_field(header, "updated_ms", int),
            parent=parent,
            fork_point=fork_point,
            creator=creator,
            state=state,
            ids=ids,
            records=records,
            retired_ids=retired,
            finished_turns=finished_turns,
            head=head,
            last_merge=last_merge,
        )
    except AgentThreadsError as exc:
        if isinstance(exc, SnapshotCorrupt):
            raise
        raise SnapshotCorrupt(f"snapshot of {thread_id!r} is malformed: {exc}") from exc


def decode_last_merge(value: str | None) -> dict[str, Any] | None:
    """The merge record kept as JSON in a hot thread's meta (None when there is none)."""
    if not value:
        return None
    found = json.loads(value)
    return found if isinstance(found, dict) else None
