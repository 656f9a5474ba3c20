"""Operator actions behind the ``agent-threads`` command, without any terminal I/O.

Each function takes a ``storage.Threads`` (and, for work sent to the workers, the
Celery app) and returns a typed result that ``tasks/cli.py`` renders as a table,
a summary or JSON:

* ``view_thread``: one consistent view of a thread in whichever tier holds it;
* ``list_hot``: hot threads from the namespace's activity index (never a key scan);
* ``flush_many`` / ``hydrate_many`` (or ``run_on_workers``): many threads, one at a
  time, where the failure of one never stops the rest;
* ``export_snapshot`` / ``read_export`` / ``import_snapshot``: a thread as a
  schema-1 snapshot file and back, exactly;
* ``collect_stats`` and ``prune_cold`` (cold-tier retention).
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from celery import Celery

from storage.cold import ColdObject
from storage.errors import (
    AgentThreadsError,
    SnapshotCorrupt,
    ThreadExists,
    ThreadNotFound,
)
from storage.hot import new_epoch
from storage.keys import validate_thread_id
from storage.records import JSON, Message
from storage.results import ThreadInfo
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
from storage.turns import TurnStatus

# -- durations -----------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90`` or ``90s``, ``30m``, ``2h``, ``7d``, ``1w``, ``500ms``,
    and sums such as ``1h30m``. A bare number is seconds."""
    cleaned = text.strip().lower().replace(" ", "")
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _DURATION.findall(cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise ValueError(
                f"invalid duration {text!r}: use a number of seconds or e.g. 90s, 30m, 2h, 7d, "
                "1h30m"
            ) from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"invalid duration {text!r}: must be a finite number >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1h2m``: the largest two units, for tables."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    remaining = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size or (unit == "s" and not parts):
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(parts[:2])


# -- message summaries -----------------------------------------------------------------------


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _call(name: object, args: object) -> str:
    shown = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return f"→ {name}({shown})"


def _block(block: Any) -> str:
    """One content block / part of the provider formats the adapters store."""
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return json.dumps(block, ensure_ascii=False)
    kind = block.get("type")
    if kind == "tool_use":  # Anthropic
        return _call(block.get("name"), block.get("input"))
    if kind == "tool_result":
        return f"← {block.get('tool_use_id')}: {_content(block.get('content'))}"
    if kind in ("thinking", "redacted_thinking"):
        return "[thinking]"
    if "function_call" in block and isinstance(block["function_call"], dict):  # Google GenAI
        call = block["function_call"]
        return _call(call.get("name"), call.get("args"))
    if "function_response" in block and isinstance(block["function_response"], dict):
        response = block["function_response"]
        return f"← {response.get('name')}: {json.dumps(response.get('response'))}"
    if "text" in block:
        return str(block["text"])
    return f"[{kind or next(iter(block), 'block')}]"


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return " ".join(part for part in (_block(b) for b in content) if part)
    return _block(content)


def summarize_body(body: JSON, width: int = 100) -> tuple[str, str]:
    """(role, one-line summary) of a stored body: text, tool calls and tool results
    of the chat formats the adapters store (plain/scripted, Anthropic, Google GenAI,
    LangChain); anything else as compact JSON."""
    if not isinstance(body, dict):
        return "?", _one_line(json.dumps(body, ensure_ascii=False), width)
    data: Any = body
    role = body.get("role")
    if role is None and isinstance(body.get("data"), dict):  # LangChain {"type", "data"}
        data, role = body["data"], body.get("type")
    pieces = [_content(data.get("content", data.get("parts")))]
    for call in data.get("tool_calls") or []:  # plain chat and LangChain
        if isinstance(call, dict):
            function: dict[str, Any] = call
            if isinstance(call.get("function"), dict):  # OpenAI chat completions
                function = call["function"]
            pieces.append(
                _call(function.get("name"), function.get("args", function.get("arguments")))
            )
    if data.get("tool_call_id"):
        pieces.insert(0, f"← {data['tool_call_id']}:")
    text = " ".join(p for p in pieces if p)
    if not text:
        text = json.dumps(body, ensure_ascii=False)
    return str(role or "?"), _one_line(text, width)


# -- one thread --------------------------------------------------------------------------------

Tier = Literal["hot", "cold"]


@dataclass(frozen=True, slots=True)
class ThreadView:
    """A thread as ``inspect`` shows it; ``snapshot`` is read in one consistent step
    (one script for a hot thread, one object for a cold one)."""

    tier: Tier
    snapshot: Snapshot
    info: ThreadInfo | None
    """Hot only: TTL, lease and the archive the hot copy knows of."""
    archive_etag: str | None
    archive_version: int | None
    turns: list[TurnStatus] = field(default_factory=list)
    """The turn records the hot tier keeps for the thread, oldest first."""

    @property
    def messages(self) -> list[Message]:
        return self.snapshot.messages()

    def to_json(self) -> dict[str, Any]:
        s, info = self.snapshot, self.info
        lease = None
        if info is not None and info.lease_owner:
            lease = {"owner": info.lease_owner, "ttl_ms": info.lease_ttl_ms}
        archive = None
        if self.archive_etag is not None:
            archive = {"version": self.archive_version, "etag": self.archive_etag}
        return {
            "thread_id": s.thread_id,
            "namespace": s.namespace,
            "tier": self.tier,
            "version": s.version,
            "length": len(s.records),
            "epoch": s.epoch,
            "created_ms": s.created_ms,
            "updated_ms": s.updated_ms,
            "parent": s.parent,
            "fork_point": s.fork_point,
            "creator": s.creator,
            "ttl_ms": info.ttl_ms if info else None,
            "lease": lease,
            "archive": archive,
            "state": s.state,
            "retired_ids": list(s.retired_ids),
            "finished_turns": list(s.finished_turns),
            "last_merge": s.last_merge,
            "turns": [turn_json(t) for t in self.turns],
            "messages": self.messages,
        }


def turn_json(turn: TurnStatus) -> dict[str, Any]:
    """A turn record as ``inspect --json`` shows it."""
    return {
        "turn_id": turn.turn_id,
        "state": turn.state,
        "steps": turn.steps,
        "step": turn.step,
        "done": turn.done,
        "attempt": turn.attempt,
        "wakes": turn.wakes,
        "takeovers": turn.takeovers,
        "worker": turn.worker,
        "submitted_ms": turn.submitted_ms,
        "finished_ms": turn.finished_ms,
        "timings_ms": turn.timings,
        "usage": turn.usage,
        "input_tokens": turn.input_tokens,
        "output_tokens": turn.output_tokens,
        "tools": turn.tools,
        "error": turn.error,
    }


def view_thread(store: Threads, thread_id: str) -> ThreadView:
    """The thread in the tier that holds it (hot first); reads a cold archive without
    restoring it. ``ThreadNotFound`` if it is in no tier; ``InvalidThreadId`` first."""
    store.hot.keys(thread_id)  # validate before any I/O
    turns = store.turns.list(thread_id)
    try:
        snapshot = store.hot.snapshot(thread_id)
        info = store.hot.info(thread_id)
    except ThreadNotFound:
        pass  # cold, absent, or evicted just now
    else:
        return ThreadView("hot", snapshot, info, info.cold_etag, info.cold_version, turns)
    found = store.cold.read(thread_id)
    if found is None:
        raise ThreadNotFound(thread_id, "it exists in no tier (neither hot nor archived)")
    snapshot, etag = found
    return ThreadView("cold", snapshot, None, etag, snapshot.version, turns)


# -- hot listing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HotEntry:
    """A thread of the activity index; ``info`` is None when its keys are gone (expired
    by TTL or deleted outside ``Threads``) and only the index entry remains."""

    thread_id: str
    last_active_ms: int
    info: ThreadInfo | None


def list_hot(
    store: Threads, *, limit: int = 50, idle_seconds: float | None = None
) -> list[HotEntry]:
    """Hot threads from the activity index: most recent first, or, with
    ``idle_seconds``, those idle at least that long, oldest first."""
    if idle_seconds is None:
        found = store.hot.active_threads(limit)
    else:
        found = store.hot.idle_threads(int(idle_seconds * 1000), limit)
    entries = []
    for thread_id, at_ms in found:
        try:
            info: ThreadInfo | None = store.hot.info(thread_id)
        except (ThreadNotFound, AgentThreadsError):
            info = None
        entries.append(HotEntry(thread_id, at_ms, info))
    return entries


# -- many threads --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one thread of a bulk operation. ``status`` is the storage
    status ("archived", "unchanged", "absent"; "restored", "hot") or "failed"."""

    thread_id: str
    status: str
    detail: str = ""
    evicted: bool = False


@dataclass(frozen=True, slots=True)
class BulkReport:
    outcomes: tuple[Outcome, ...]

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")


Progress = Callable[[Outcome], None]


def _failure(thread_id: str, exc: BaseException) -> Outcome:
    kind = "" if isinstance(exc, AgentThreadsError) else f"{type(exc).__name__}: "
    return Outcome(thread_id, "failed", f"{kind}{exc}")


def _each(
    ids: Iterable[str], action: Callable[[str], Outcome], progress: Progress | None
) -> BulkReport:
    outcomes = []
    for thread_id in ids:
        try:
            outcome = action(thread_id)
        except Exception as exc:  # one thread's failure never stops the others
            outcome = _failure(thread_id, exc)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return BulkReport(tuple(outcomes))


def flush_many(
    store: Threads, ids: Iterable[str], *, evict: bool = True, progress: Progress | None = None
) -> BulkReport:
    """``Threads.flush`` each thread, in this process."""

    def flush(thread_id: str) -> Outcome:
        result = store.flush(thread_id, evict=evict)
        # version None: the thread was not hot (already evicted, or absent)
        kept = evict and not result.evicted and result.version is not None
        return Outcome(thread_id, result.status, "kept hot" if kept else "", result.evicted)

    return _each(ids, flush, progress)


def hydrate_many(
    store: Threads, ids: Iterable[str], *, progress: Progress | None = None
) -> BulkReport:
    """``Threads.hydrate`` each thread, in this process."""

    def hydrate(thread_id: str) -> Outcome:
        return Outcome(thread_id, store.hydrate(thread_id).status)

    return _each(ids, hydrate, progress)


def run_on_workers(
    app: Celery,
    task_name: str,
    ids: Sequence[str],
    *,
    kwargs: dict[str, Any] | None = None,
    timeout: float = 300.0,
    progress: Progress | None = None,
) -> BulkReport:
    """Send ``task_name`` (``threads.flush`` / ``threads.hydrate``) for every thread at
    once and collect the results as they arrive (in the order sent)."""
    sent = [
        (tid, app.send_task(task_name, args=[tid], kwargs=kwargs or {}, ignore_result=False))
        for tid in ids
    ]
    deadline = time.monotonic() + timeout
    outcomes = []
    for thread_id, result in sent:
        try:
            value = result.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
            if result.failed() or not isinstance(value, dict):
                outcome = Outcome(thread_id, "failed", str(value))
            else:
                status = str(value.get("status", "?"))
                evicted = bool(value.get("evicted", False))
                was_hot = value.get("version") is not None
                kept = task_name == "threads.flush" and not evicted and was_hot
                outcome = Outcome(thread_id, status, "kept hot" if kept else "", evicted)
        except Exception as exc:  # e.g. a timeout: report it, collect the rest
            outcome = _failure(thread_id, exc)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return BulkReport(tuple(outcomes))


# -- export / import ----------------------------------------------------------------------------

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


# -- statistics -------------------------------------------------------------------------------


def _numeric_sum(reply: Any, name: str) -> int | None:
    """A field of an INFO reply; summed over nodes for a cluster's per-node replies."""
    if not isinstance(reply, dict):
        return None
    if name in reply:
        return int(reply[name])
    values = [v[name] for v in reply.values() if isinstance(v, dict) and name in v]
    return sum(int(v) for v in values) if values else None


@dataclass(frozen=True, slots=True)
class Stats:
    namespace: str
    hot_threads: int
    """Threads in the namespace's activity index."""
    leased_threads: int | None
    """Of those, how many a turn holds now (None: more than the scan limit)."""
    redis_used_memory: int | None
    redis_maxmemory: int | None
    redis_keys: int | None
    """Keys in the hot tier's Redis database (every namespace in it)."""
    cold_objects: int | None
    cold_bytes: int | None
    cold_oldest: datetime | None
    cold_newest: datetime | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def collect_stats(store: Threads, *, cold: bool = True, lease_scan_limit: int = 10_000) -> Stats:
    """Counts from the activity index (ZCARD of each shard), INFO memory, DBSIZE and a
    listing of the cold store (skipped with ``cold=False``: it reads every key of the bucket)."""
    client = store.hot.redis
    layout = store.hot.layout
    hot_threads = store.hot.activity_count()
    leased: int | None = None
    if hot_threads <= lease_scan_limit:
        ids = [t for t, _ in store.hot.active_threads(limit=max(1, hot_threads))]
        pipe = client.pipeline(transaction=False)
        for thread_id in ids:
            pipe.exists(layout.thread(thread_id).lease)
        leased = sum(int(n) for n in pipe.execute()) if ids else 0
    memory = client.info("memory")
    dbsize = client.dbsize()
    keys = dbsize if isinstance(dbsize, int) else _numeric_sum({"n": dbsize}, "n")
    objects = size = None
    oldest = newest = None
    if cold:
        objects, size = 0, 0
        for item in store.cold.list():
            objects += 1
            size += item.size
            oldest = item.last_modified if oldest is None else min(oldest, item.last_modified)
            newest = item.last_modified if newest is None else max(newest, item.last_modified)
    return Stats(
        namespace=store.hot.namespace,
        hot_threads=hot_threads,
        leased_threads=leased,
        redis_used_memory=_numeric_sum(memory, "used_memory"),
        redis_maxmemory=_numeric_sum(memory, "maxmemory"),
        redis_keys=keys,
        cold_objects=objects,
        cold_bytes=size,
        cold_oldest=oldest,
        cold_newest=newest,
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- retention ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneReport:
    """``candidates``: archives last written before ``cutoff``; of those, ``in_use``
    were kept (hot, or evicted within the last hour), the rest deleted (or, in a dry
    run, would be)."""

    cutoff: datetime
    dry_run: bool
    candidates: tuple[ColdObject, ...]
    in_use: tuple[str, ...] = ()
    deleted: tuple[ColdObject, ...] = ()
    failed: tuple[tuple[str, str], ...] = field(default=())

    @property
    def deleted_bytes(self) -> int:
        return sum(item.size for item in self.deleted)


def _in_use(store: Threads, thread_id: str) -> bool:
    """Hot now, or evicted so recently that its eviction marker still exists (a thread
    read and evicted again keeps its old archive and modification time)."""
    keys = store.hot.keys(thread_id)
    return bool(store.hot.redis.exists(keys.meta, keys.archived))


def prune_cold(
    store: Threads,
    older_than_seconds: float,
    *,
    now: datetime | None = None,
    prefix: str = "",
    dry_run: bool = False,
    progress: Callable[[ColdObject, str], None] | None = None,
) -> PruneReport:
    """Delete the cold archives last written more than ``older_than_seconds`` before
    ``now`` (default: the current time), except those of threads in use (see
    ``_in_use``), each checked right before its deletion. A thread hydrated after that
    check loses nothing: its hot copy holds everything and its next flush creates a
    new archive. ``progress(item, "deleted" | "would delete" | "in use" | "failed")``.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than_seconds)
    candidates = tuple(
        sorted(
            (item for item in store.cold.list(prefix) if item.last_modified < cutoff),
            key=lambda item: (item.last_modified, item.thread_id),
        )
    )
    in_use, deleted, failed = [], [], []
    for item in candidates:
        try:
            # the tombstone first, atomically with the in-use check: a hydrate that
            # read the archive before it cannot restore the thread after the delete
            if _in_use(store, item.thread_id) or not (
                dry_run or store.hot.tombstone(item.thread_id)
            ):
                in_use.append(item.thread_id)
                status = "in use"
            else:
                if not dry_run:
                    store.cold.delete(item.thread_id)
                deleted.append(item)
                status = "would delete" if dry_run else "deleted"
        except Exception as exc:  # one archive's failure never stops the others
            failed.append((item.thread_id, str(exc)))
            status = "failed"
        if progress is not None:
            progress(item, status)
    return PruneReport(cutoff, dry_run, candidates, tuple(in_use), tuple(deleted), tuple(failed))
