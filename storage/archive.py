"""Cold archives, schema 2: a base plus append-only segments, held together by a manifest.

A thread's archive is its *manifest*, the one object a compare-and-swap protects
(``ColdStore.write_bytes`` with ``If-Match``), at the key schema 1 used for the whole
snapshot. The records live in *parts* beside it (``ColdStore.put_part``), each written
once under a fresh name and never changed:

* one **base**: a schema-1 snapshot (``storage.snapshot``) of records ``[0, n)``, with
  the ledger's retired ids and the finished turns up to then;
* then **segments**, each the records ``[first, first + count)`` appended after the
  part before it, and the turns that finished meanwhile.

The manifest holds the thread's metadata, its state slice, and the list of parts with
each part's size and SHA-256, so every byte read is checked twice: against the
manifest, and by the part's own checksum. An end-of-turn flush uploads one segment
with the new records and a new manifest, whatever the thread's length; ``plan``
decides when a new segment absorbs the last ones (their sizes stay geometric, so a
hydrate fetches a bounded number of parts) and when everything is rewritten as a new
base (the segments outgrew the base). Truncate, replace, a rebase and schema-1
archives (migrated on their next flush) always get a new base.

Parts a new manifest no longer references are listed in it as *garbage* with the time
they were dropped, and deleted only ``gc_delay_ms`` later: a hydrate that read the
previous manifest can still fetch them. A hydrate that finds a part missing anyway
reads the manifest again (``read_archive``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from storage.errors import AgentThreadsError, ColdStoreConflict, SnapshotCorrupt
from storage.keys import validate_message_id, validate_thread_id
from storage.records import encode_state
from storage.snapshot import (
    DEFAULT_LEVELS,
    DEFAULT_MAX_SNAPSHOT_BYTES,
    Compression,
    Snapshot,
    check_records,
    checksum,
    decode_snapshot,
    decompress,
    dumps,
    encode_snapshot,
    identity,
    loads,
)

if TYPE_CHECKING:
    from storage.cold import ColdStore

MANIFEST_FORMAT = "agent-threads/manifest"
SEGMENT_FORMAT = "agent-threads/segment"
SCHEMA = 2
MAX_SEGMENTS = 16
"""At most this many segments after the base: a hydrate fetches at most 17 parts."""
GC_DELAY_MS = 60_000
"""Default delay before an unreferenced part is deleted (well over any hydrate's reads)."""
MAX_GARBAGE = 32
"""Garbage entries a manifest carries at most; older ones are deleted at once (a hydrate
that still wanted one reads the manifest again)."""
_READ_ATTEMPTS = 5
FETCH_THREADS = 8
"""Parts an S3 store fetches at once during a hydrate."""


@dataclass(frozen=True, slots=True)
class Part:
    """One immutable object of an archive: records ``[first, first + count)``."""

    name: str
    kind: Literal["base", "segment"]
    first: int
    count: int
    raw: int
    """Uncompressed bytes of its records (what ``plan`` weighs)."""
    size: int
    """Stored (compressed) bytes."""
    sha256: str
    version: int
    """The thread's version when the part was written."""


@dataclass(frozen=True, slots=True)
class Garbage:
    name: str
    since_ms: int


@dataclass(frozen=True, slots=True)
class Layout:
    """The parts of an archive, in record order (the base first), and its garbage."""

    parts: tuple[Part, ...]
    garbage: tuple[Garbage, ...] = ()

    @property
    def base(self) -> Part:
        return self.parts[0]

    @property
    def segments(self) -> tuple[Part, ...]:
        return self.parts[1:]

    @property
    def count(self) -> int:
        last = self.parts[-1]
        return last.first + last.count

    def to_json(self) -> str:
        return json.dumps(_layout_value(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str, thread_id: str = "?") -> Layout:
        try:
            return _layout_of(json.loads(text), thread_id)
        except ValueError as exc:
            raise SnapshotCorrupt(f"archive layout of {thread_id!r} is not JSON") from exc


def _layout_value(layout: Layout) -> dict[str, Any]:
    return {
        "parts": [
            [p.name, p.kind, p.first, p.count, p.raw, p.size, p.sha256, p.version]
            for p in layout.parts
        ],
        "garbage": [[g.name, g.since_ms] for g in layout.garbage],
    }


def _layout_of(value: Any, thread_id: str) -> Layout:
    try:
        parts = tuple(
            Part(str(n), k, int(f), int(c), int(r), int(s), str(h), int(v))
            for n, k, f, c, r, s, h, v in value["parts"]
        )
        garbage = tuple(Garbage(str(n), int(t)) for n, t in value["garbage"])
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotCorrupt(f"archive layout of {thread_id!r} is malformed: {exc}") from exc
    position = 0
    for index, part in enumerate(parts):
        if part.kind != ("base" if index == 0 else "segment") or part.first != position:
            raise SnapshotCorrupt(f"archive layout of {thread_id!r} has parts out of order")
        if not _valid_part_name(part.name) or part.count < 0:
            raise SnapshotCorrupt(f"archive layout of {thread_id!r} names a bad part")
        position += part.count
    if not parts or not all(_valid_part_name(g.name) for g in garbage):
        raise SnapshotCorrupt(f"archive layout of {thread_id!r} is malformed")
    return Layout(parts, garbage)


def _valid_part_name(name: str) -> bool:
    stem, _, suffix = name.rpartition(".")
    return suffix == "gz" and stem.replace("-", "").isalnum() and len(name) <= 80


def part_name(kind: Literal["base", "segment"], first: int) -> str:
    """A fresh name: parts are written once and never overwritten."""
    prefix = "base" if kind == "base" else "seg"
    return f"{prefix}-{first}-{uuid.uuid4().hex[:16]}.gz"


# -- encoding -------------------------------------------------------------------


def _gzip(raw: bytes) -> bytes:
    """Manifests and segments are small: gzip at the default level, whatever the
    store's compression (which applies to bases)."""
    packer = zlib.compressobj(DEFAULT_LEVELS["gzip"], zlib.DEFLATED, 31)
    return packer.compress(raw) + packer.flush()


def encode_manifest(snapshot: Snapshot, layout: Layout) -> bytes:
    """The manifest of ``snapshot`` (its metadata and state) archived as ``layout``."""
    header: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "schema": SCHEMA,
        **identity(snapshot),
        "head": snapshot.head,
        "count": layout.count,
        "state": snapshot.state,
        "layout": _layout_value(layout),
    }
    if snapshot.last_merge is not None:
        header["last_merge"] = snapshot.last_merge
    header["checksum"] = checksum(header, b"")
    return _gzip(dumps(header))


def encode_segment(
    thread_id: str,
    epoch: str,
    first: int,
    records: Sequence[bytes],
    turns: Iterable[str],
) -> tuple[bytes, int]:
    """A segment object and the raw size of its records."""
    payload = b"\n".join(records)
    header: dict[str, Any] = {
        "format": SEGMENT_FORMAT,
        "thread_id": thread_id,
        "epoch": epoch,
        "first": first,
        "count": len(records),
        "turns": sorted(turns),
    }
    header["checksum"] = checksum(header, payload)
    return _gzip(dumps(header) + b"\n" + payload), len(payload)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A decoded manifest: the snapshot without records, and where the records are."""

    header: Snapshot
    layout: Layout


def decode_object(
    data: bytes, thread_id: str, *, max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES
) -> Snapshot | Manifest:
    """The object at an archive's key: a whole schema-1 snapshot or a schema-2 manifest."""
    raw = decompress(data, max_bytes)
    first_line = raw.partition(b"\n")[0]
    header = loads(first_line, "archive header is not JSON")
    if isinstance(header, dict) and header.get("format") == MANIFEST_FORMAT:
        return _decode_manifest(header, raw, thread_id)
    return decode_snapshot(data, thread_id, max_bytes=max_bytes)


def thread_id_in(data: bytes, *, max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES) -> str | None:
    """The thread id an archive object's header names, or None if it names none;
    the object is decoded and checked in full when it is read."""
    try:
        header = loads(decompress(data, max_bytes).partition(b"\n")[0], "not JSON")
    except AgentThreadsError:
        return None
    found = header.get("thread_id") if isinstance(header, dict) else None
    return found if isinstance(found, str) else None


def _decode_manifest(header: dict[str, Any], raw: bytes, thread_id: str) -> Manifest:
    if header.get("schema") != SCHEMA or b"\n" in raw.strip():
        raise SnapshotCorrupt(f"manifest schema {header.get('schema')!r} is not supported")
    if header.get("thread_id") != thread_id:
        raise SnapshotCorrupt(
            f"manifest belongs to thread {header.get('thread_id')!r}, not {thread_id!r}"
        )
    if header.get("checksum") != checksum(header, b""):
        raise SnapshotCorrupt(f"manifest of {thread_id!r} fails its checksum")
    try:
        validate_thread_id(thread_id)
        state = header["state"]
        encode_state(state)
        strings = [header.get(k) for k in ("parent", "fork_point", "creator")]
        if not all(v is None or isinstance(v, str) for v in strings):
            raise SnapshotCorrupt("lineage fields are malformed")
        last_merge = header.get("last_merge")
        if not (last_merge is None or isinstance(last_merge, dict)):
            raise SnapshotCorrupt("merge record is malformed")
        fields = {k: header[k] for k in ("version", "created_ms", "updated_ms", "count")}
        texts = {k: header[k] for k in ("namespace", "epoch", "head")}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in fields.values()):
            raise SnapshotCorrupt("numeric fields are malformed")
        if not all(isinstance(v, str) for v in texts.values()):
            raise SnapshotCorrupt("text fields are malformed")
        layout = _layout_of(header["layout"], thread_id)
    except (KeyError, TypeError, AgentThreadsError) as exc:
        if isinstance(exc, SnapshotCorrupt):
            raise SnapshotCorrupt(f"manifest of {thread_id!r} is malformed: {exc}") from exc
        raise SnapshotCorrupt(f"manifest of {thread_id!r} is malformed: {exc}") from exc
    if layout.count != fields["count"]:
        raise SnapshotCorrupt(f"manifest of {thread_id!r} counts its records wrong")
    snapshot = Snapshot(
        thread_id=thread_id,
        namespace=texts["namespace"],
        version=fields["version"],
        epoch=texts["epoch"],
        created_ms=fields["created_ms"],
        updated_ms=fields["updated_ms"],
        parent=strings[0],
        fork_point=strings[1],
        creator=strings[2],
        state=state,
        ids=(),
        records=(),
        head=texts["head"],
        last_merge=last_merge,
        layout=layout,
    )
    return Manifest(snapshot, layout)


def decode_segment(
    data: bytes, thread_id: str, part: Part, epoch: str, max_bytes: int
) -> tuple[list[str], list[bytes], list[str]]:
    """The ids, records and finished turns of a segment; ``SnapshotCorrupt`` unless it
    is exactly ``part`` of this thread's incarnation."""
    raw = decompress(data, max_bytes)
    header_line, _, payload = raw.partition(b"\n")
    header = loads(header_line, f"segment {part.name} header is not JSON")
    if not isinstance(header, dict) or header.get("format") != SEGMENT_FORMAT:
        raise SnapshotCorrupt(f"part {part.name} of {thread_id!r} is not a segment")
    expected = (thread_id, epoch, part.first, part.count)
    found = tuple(header.get(k) for k in ("thread_id", "epoch", "first", "count"))
    if found != expected or header.get("checksum") != checksum(header, payload):
        raise SnapshotCorrupt(f"segment {part.name} of {thread_id!r} fails its checks")
    records = payload.split(b"\n") if part.count else []
    if len(records) != part.count:
        raise SnapshotCorrupt(f"segment {part.name} of {thread_id!r} has the wrong count")
    try:
        turns = [validate_message_id(t, what="turn id") for t in header.get("turns", [])]
        ids = [validate_message_id(i) for i in check_records(payload, records, thread_id)]
    except (TypeError, AgentThreadsError) as exc:
        if isinstance(exc, SnapshotCorrupt):
            raise
        raise SnapshotCorrupt(f"segment {part.name} of {thread_id!r} is malformed") from exc
    return ids, records, turns


# -- reading --------------------------------------------------------------------


class _PartMissing(Exception):
    pass


def read_archive(
    store: ColdStore, thread_id: str, *, max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES
) -> tuple[Snapshot, str] | None:
    """The whole archive as a snapshot (with its ``layout``) and the manifest's etag.

    The parts are fetched in parallel and checked against the manifest. A part that is
    missing was collected after a newer manifest replaced this one: read it again.
    """
    for _ in range(_READ_ATTEMPTS):
        found = store.read_object(thread_id)
        if found is None:
            return None
        data, etag = found
        decoded = decode_object(data, thread_id, max_bytes=max_bytes)
        if isinstance(decoded, Snapshot):
            return decoded, etag
        try:
            return _assemble(store, decoded, max_bytes), etag
        except _PartMissing as missing:
            if store.head(thread_id) == etag:
                raise SnapshotCorrupt(
                    f"archive of {thread_id!r} references part {missing} that does not exist"
                ) from None
    raise SnapshotCorrupt(f"archive of {thread_id!r} kept changing while it was read")


def fetch_parts(
    fetch: Callable[[str], bytes | None],
    names: Sequence[str],
    pool: ThreadPoolExecutor | None = None,
) -> dict[str, bytes | None]:
    """``fetch`` every name, on ``pool`` when there is one and more than one name (a
    network store: the round trips overlap; a local disk gains nothing)."""
    if pool is None or len(names) <= 1:
        return {name: fetch(name) for name in names}
    return dict(zip(names, pool.map(fetch, names), strict=True))


def _assemble(store: ColdStore, manifest: Manifest, max_bytes: int) -> Snapshot:
    header, layout = manifest.header, manifest.layout
    thread_id = header.thread_id
    blobs = fetch_parts(
        lambda name: store.get_part(thread_id, name),
        [p.name for p in layout.parts],
        getattr(store, "fetch_pool", None),
    )
    for part in layout.parts:
        data = blobs[part.name]
        if data is None:
            raise _PartMissing(part.name)
        if len(data) != part.size or hashlib.sha256(data).hexdigest() != part.sha256:
            raise SnapshotCorrupt(f"part {part.name} of {thread_id!r} fails its checksum")
    base = decode_snapshot(blobs[layout.base.name] or b"", thread_id, max_bytes=max_bytes)
    if base.epoch != header.epoch or len(base.records) != layout.base.count:
        raise SnapshotCorrupt(f"base of {thread_id!r} does not match its manifest")
    ids, records = list(base.ids), list(base.records)
    turns = set(base.finished_turns)
    for part in layout.segments:
        more_ids, more, more_turns = decode_segment(
            blobs[part.name] or b"", thread_id, part, header.epoch, max_bytes
        )
        ids += more_ids
        records += more
        turns.update(more_turns)
    if len(set(ids)) != len(ids) or set(ids) & set(base.retired_ids):
        raise SnapshotCorrupt(f"archive ledger of {thread_id!r} is inconsistent")
    return replace(
        header,
        ids=tuple(ids),
        records=tuple(records),
        retired_ids=base.retired_ids,
        finished_turns=tuple(sorted(turns)),
    )


# -- writing --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """A manifest that won its compare-and-swap, and the parts now due for deletion."""

    etag: str
    layout: Layout
    size: int
    """Bytes uploaded (parts and manifest)."""
    collect: tuple[str, ...]


def _garbage(
    previous: Layout | None, dropped: Iterable[Part], now_ms: int, delay_ms: int
) -> tuple[tuple[Garbage, ...], tuple[str, ...]]:
    """The garbage a new manifest carries, and the names due for deletion now."""
    old = previous.garbage if previous is not None else ()
    entries = [*old, *(Garbage(p.name, now_ms) for p in dropped)]
    due = [g for g in entries if g.since_ms <= now_ms - delay_ms]
    kept = [g for g in entries if g.since_ms > now_ms - delay_ms]
    if len(kept) > MAX_GARBAGE:
        due += kept[: len(kept) - MAX_GARBAGE]
        kept = kept[len(kept) - MAX_GARBAGE :]
    return tuple(kept), tuple(g.name for g in due)


def _commit(
    store: ColdStore,
    snapshot: Snapshot,
    layout: Layout,
    new_part: tuple[str, bytes] | None,
    if_match: str | None,
    due: tuple[str, ...],
) -> Written:
    """Upload the new part, then the manifest with compare-and-swap; on a lost CAS the
    new part is deleted again, unless the stored manifest is ours after all or
    references it (see ``_references``)."""
    size = 0
    if new_part is not None:
        store.put_part(snapshot.thread_id, *new_part)
        size += len(new_part[1])
    manifest = encode_manifest(snapshot, layout)
    try:
        etag = store.write_bytes(snapshot.thread_id, manifest, if_match)
    except ColdStoreConflict:
        stored = store.read_object(snapshot.thread_id)
        if stored is not None and stored[0] == manifest:
            return Written(stored[1], layout, size + len(manifest), due)
        if new_part is not None and not _references(stored, snapshot.thread_id, new_part[0]):
            store.delete_parts(snapshot.thread_id, [new_part[0]])
        raise
    return Written(etag, layout, size + len(manifest), due)


def _references(stored: tuple[bytes, str] | None, thread_id: str, name: str) -> bool:
    """Whether the stored archive names part ``name``. A conflict may be our own write:
    a client re-sends a conditional PUT whose answer it lost, and the first attempt,
    which landed, makes the re-sent one fail. The manifest there is then ours (the
    caller compares bytes) or one written over ours that keeps our part."""
    if stored is None:
        return False
    try:
        decoded = decode_object(stored[0], thread_id)
    except AgentThreadsError:
        return False
    return isinstance(decoded, Manifest) and any(p.name == name for p in decoded.layout.parts)


def write_base(
    store: ColdStore,
    snapshot: Snapshot,
    if_match: str | None,
    previous: Layout | None,
    *,
    now_ms: int,
    gc_delay_ms: int = GC_DELAY_MS,
) -> Written:
    """Archive ``snapshot`` whole: a new base and a manifest that references only it.
    ``previous`` (the layout of the archive ``if_match`` names) becomes garbage."""
    compression: Compression = store.compression
    data = encode_snapshot(snapshot, compression, store.compression_level)
    name = part_name("base", 0)
    raw = sum(len(r) for r in snapshot.records) + len(snapshot.records)
    part = Part(
        name,
        "base",
        0,
        len(snapshot.records),
        raw,
        len(data),
        hashlib.sha256(data).hexdigest(),
        snapshot.version,
    )
    dropped = previous.parts if previous is not None else ()
    garbage, due = _garbage(previous, dropped, now_ms, gc_delay_ms)
    return _commit(store, snapshot, Layout((part,), garbage), (name, data), if_match, due)


@dataclass(frozen=True, slots=True)
class SegmentPlan:
    """Write records ``[start, end)`` as one segment replacing the segments from
    ``keep`` on; or, when ``base`` is True, rewrite the archive as a new base."""

    base: bool
    start: int = 0
    keep: int = 0


def plan(layout: Layout, archived: int, end: int, new_raw: int) -> SegmentPlan:
    """Where the records ``[archived, end)`` (``new_raw`` bytes) go.

    The new segment absorbs the last segments while they are no larger than what it
    holds, so segment sizes shrink geometrically towards the end: each record is
    rewritten O(log n) times and the count stays small. When the segments outgrow the
    base, or would be more than ``MAX_SEGMENTS``, a new base is cheaper to read.
    """
    if archived != layout.count or end < archived:
        return SegmentPlan(base=True)
    segments = list(layout.segments)
    acc = new_raw
    while segments and segments[-1].raw <= acc:
        acc += segments.pop().raw
    start = segments[-1].first + segments[-1].count if segments else layout.base.count
    total = acc + sum(p.raw for p in segments)
    if len(segments) + 1 > MAX_SEGMENTS or total > max(layout.base.raw, 1):
        return SegmentPlan(base=True)
    return SegmentPlan(base=False, start=start, keep=len(segments))


def write_segment(
    store: ColdStore,
    snapshot: Snapshot,
    records: Sequence[bytes],
    turns: Sequence[str],
    step: SegmentPlan,
    previous: Layout,
    if_match: str,
    *,
    now_ms: int,
    gc_delay_ms: int = GC_DELAY_MS,
) -> Written:
    """Archive the records ``[step.start, step.start + len(records))`` as one segment
    after ``previous``'s first ``step.keep`` segments. ``snapshot`` gives the metadata
    and state (its records are not used)."""
    kept = previous.parts[: 1 + step.keep]
    dropped = previous.parts[1 + step.keep :]
    if not records and not dropped and not turns:
        garbage, due = _garbage(previous, (), now_ms, gc_delay_ms)
        return _commit(store, snapshot, Layout(kept, garbage), None, if_match, due)
    data, raw = encode_segment(snapshot.thread_id, snapshot.epoch, step.start, records, turns)
    name = part_name("segment", step.start)
    part = Part(
        name,
        "segment",
        step.start,
        len(records),
        raw,
        len(data),
        hashlib.sha256(data).hexdigest(),
        snapshot.version,
    )
    garbage, due = _garbage(previous, dropped, now_ms, gc_delay_ms)
    layout = Layout((*kept, part), garbage)
    return _commit(store, snapshot, layout, (name, data), if_match, due)
