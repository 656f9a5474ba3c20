"""HotStore: the Redis hot tier. Every mutation is exactly one Lua script call
(range reads are one MULTI/EXEC transaction, see ``load``; a fork between two
Redis Cluster slots is one script per slot, see ``_fork_by_copy``).

Each public method validates its input in Python (raising a typed error before
any I/O), makes one script call, and turns the script's reply into a typed
result or a typed error. Scripts read and check first and write last, so a
refused call writes nothing.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from functools import cache
from importlib import resources
from typing import Any, TypeAlias

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterError,
    MasterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from storage.activity import ActivityIndex
from storage.archive import Layout
from storage.errors import (
    HotStoreAccessDenied,
    HotStoreFull,
    HotStoreUnavailable,
    InvalidMessage,
    InvalidThreadId,
    LeaseHeld,
    LeaseLost,
    ListRewritten,
    ThreadExists,
    ThreadNotFound,
    VersionConflict,
)
from storage.keys import KeyLayout, ThreadKeys, validate_message_id, validate_thread_id
from storage.limits import DEFAULT_LIMITS, Limits
from storage.records import (
    Message,
    decode_records,
    decode_state,
    encode_batch,
    encode_message,
    encode_state,
)
from storage.results import (
    AppendResult,
    FlushCommit,
    FlushSource,
    ForkResult,
    Lease,
    ReconcileReport,
    StateResult,
    ThreadInfo,
    TruncateResult,
    UpsertResult,
    WriteResult,
)
from storage.snapshot import Snapshot, decode_last_merge

RedisClient: TypeAlias = "redis.Redis | redis.RedisCluster"
ForkTransform: TypeAlias = Callable[[list[Message]], Iterable[Mapping[str, Any]]]
"""Maps the records a fork copies to the records the fork gets (pure: it may run again)."""

DEFAULT_TTL_SECONDS = 90 * 24 * 3600
STAGING_TTL_MS = 10 * 60 * 1000
"""Staging keys of an interrupted large hydrate or fork expire after this long."""
_READ_ATTEMPTS = 5
CHUNK_RECORDS = 2000
"""Records written by one script call; a larger restore or cross-slot fork is staged."""
CHUNK_BYTES = 8 * 1024 * 1024
"""Record bytes per script call: chunks stop here too, so one call never carries
``CHUNK_RECORDS`` records of up to 1 MiB each."""
ACTIVITY_REFRESH_MS = 60_000
"""Default ``activity_refresh_ms``: an append asks for an index write at most this often."""

_SCRIPT_NAMES = (
    "create",
    "append",
    "info",
    "fork",
    "fork_read",
    "fork_write",
    "truncate",
    "replace",
    "put_record",
    "upsert",
    "save_state",
    "load_state",
    "delete",
    "acquire_lease",
    "release_lease",
    "flush_read",
    "flush_commit",
    "restore",
    "tombstone",
    "get",
    "turn_submit",
    "turn_begin",
    "turn_heartbeat",
    "turn_end",
    "turn_wake",
    "turn_note",
)


_SCRIPT_PARTS: dict[str, tuple[str, ...]] = {
    # the source and destination halves of a fork, the same across slots or not
    "fork": ("_fork",),
    "fork_read": ("_fork",),
    "fork_write": ("_fork",),
    # the turn record (storage/turns.py)
    **{name: ("_turn",) for name in _SCRIPT_NAMES if name.startswith("turn_")},
}
"""Shared Lua parts (``lua/_<part>.lua``) a script needs after the prelude."""


@cache
def script_source(name: str) -> str:
    """The Lua source of one operation: the shared prelude, the shared parts it
    uses (``_SCRIPT_PARTS``), then its own file."""
    folder = resources.files("storage") / "lua"
    parts = ("_prelude", *_SCRIPT_PARTS.get(name, ()), name)
    return "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in parts)


def new_epoch() -> str:
    """A random id for one incarnation of a thread (create or fork); kept across tiers."""
    return uuid.uuid4().hex


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A flat HGETALL reply as a dict of str."""
    return {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


def _flat(value: Any) -> list[Any]:
    """An HGETALL reply as a flat list (redis-py turns a pipeline's into a dict)."""
    if isinstance(value, dict):
        return [item for pair in value.items() for item in pair]
    return list(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _ledger_order(thread_id: str, length: int, flat: list[Any]) -> tuple[list[str], list[str]]:
    """A ledger (flat HGETALL of id -> position) as (ids in list order, retired ids)."""
    ids: list[str | None] = [None] * length
    retired: list[str] = []
    for message_id, position in _pairs(flat).items():
        if int(position) < 0:
            retired.append(message_id)
        elif int(position) < length:
            ids[int(position)] = message_id
        # else: appended after the read that fixed ``length``
    ordered = [i for i in ids if i is not None]
    if len(ordered) != length:
        raise RuntimeError(f"ledger of thread {thread_id!r} does not cover its list")
    return ordered, sorted(retired)


def _expected(version: int | None) -> str:
    """``expected_version`` as a script argument ('' = no check)."""
    if version is None:
        return ""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"expected_version must be an int >= 0 or None, got {version!r}")
    return str(version)


def _spans(records: Sequence[str | bytes], chunk_size: int) -> list[tuple[int, int]]:
    """``[first, end)`` ranges of at most ``chunk_size`` records and about
    ``CHUNK_BYTES`` each (at least one record each): one range means one call."""
    ends = list(itertools.accumulate(map(len, records)))  # bytes up to and with record i
    spans, first = [], 0
    while first < len(records):
        before = ends[first - 1] if first else 0
        # the first record past the byte budget (at least one record per span)
        by_bytes = bisect.bisect_right(ends, before + CHUNK_BYTES, lo=first + 1)
        end = max(first + 1, min(first + chunk_size, by_bytes, len(records)))
        spans.append((first, end))
        first = end
    return spans or [(0, 0)]


class HotStore:
    """Threads in Redis: ordered records, a dedup ledger, a state slice, a lease.

    ``redis`` is a redis-py client (``Redis`` or ``RedisCluster``), with or
    without ``decode_responses``. ``ttl_seconds`` is refreshed on every write
    to all of a thread's keys; ``None`` keeps threads until deleted or flushed.
    ``archive_marker_ttl_seconds``: after an eviction a small marker
    (``ns:{tid}:archived``) remains this long, so a hydrate that read an older
    archive before the eviction can never restore it; it must exceed the
    longest hydrate (default one hour); a delete's tombstone lives as long.
    ``keep_unarchived``: a cold tier archives this store (``Threads`` turns it on):
    the TTL runs only while a thread equals its archive, so Redis never expires a
    write the archive does not hold. Off (a hot tier alone), the TTL is the retention.
    ``activity_refresh_ms``: an append reports ``index_due`` (and ``Threads.append``
    writes the activity index: ``append(index=True)``) only if the index was last
    written for the thread at least this long ago; the index may lag
    the last write by this much (the workers set it to an eighth of the idle time).
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        namespace: str = "at",
        ttl_seconds: int | None = DEFAULT_TTL_SECONDS,
        limits: Limits = DEFAULT_LIMITS,
        archive_marker_ttl_seconds: int = 3600,
        keep_unarchived: bool = False,
        activity_refresh_ms: int = ACTIVITY_REFRESH_MS,
    ) -> None:
        if ttl_seconds is not None and ttl_seconds < 1:
            raise ValueError("ttl_seconds must be >= 1 or None")
        if archive_marker_ttl_seconds < 1:
            raise ValueError("archive_marker_ttl_seconds must be >= 1")
        if activity_refresh_ms < 0:
            raise ValueError("activity_refresh_ms must be >= 0")
        self.redis = redis
        self.layout = KeyLayout(namespace)
        self.limits = limits
        self._expiry_ms = 0 if ttl_seconds is None else ttl_seconds * 1000
        self.keep_unarchived = keep_unarchived
        self._marker_ttl_ms = archive_marker_ttl_seconds * 1000
        self.activity_refresh_ms = activity_refresh_ms
        self.activity = ActivityIndex(redis, self.layout, self._redis_call)
        # a standalone Redis runs a script over keys of any slot: append marks the index
        self._index_in_script = not isinstance(redis, RedisCluster)
        self._scripts: dict[str, Script] = {
            name: redis.register_script(script_source(name)) for name in _SCRIPT_NAMES
        }

    @property
    def _ttl_ms(self) -> int:
        """The scripts' expiry argument (``touch`` in _prelude.lua): negative when the
        TTL may only run on archived threads."""
        return -self._expiry_ms if self.keep_unarchived else self._expiry_ms

    @property
    def namespace(self) -> str:
        return self.layout.namespace

    def keys(self, thread_id: str) -> ThreadKeys:
        """The validated keys of ``thread_id``."""
        return self.layout.thread(validate_thread_id(thread_id, self.limits))

    def _call(self, name: str, keys: list[str], args: Iterable[Any] = ()) -> Any:
        return self._redis_call(lambda: self._scripts[name](keys=keys, args=list(args)), name)

    def _evalsha(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """``self._scripts[name](keys, args)`` without redis-py's ``Script.__call__``
        (its per-call import and argument copies cost a tenth of a 1-message append)."""
        script = self._scripts[name]
        try:
            return self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or other server: Script loads it again
            return script(keys=keys, args=args)

    def _checked(self, thread_id: str, reply: Any) -> list[Any]:
        """Raise the typed error for a script's refusal; return the 'ok' reply."""
        status = _text(reply[0])
        if status == "ok":
            return list(reply)
        if status == "not_found":
            raise ThreadNotFound(thread_id)
        raise RuntimeError(f"unexpected script reply {reply!r} for thread {thread_id!r}")

    def _checked_any(self, thread_id: str, reply: Any) -> list[Any]:
        """Like ``_checked``, but any status other than not_found is an answer."""
        if _text(reply[0]) == "not_found":
            raise ThreadNotFound(thread_id)
        return list(reply)

    # -- lifecycle ---------------------------------------------------------

    def create(
        self,
        thread_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        creator: str | None = None,
    ) -> bool:
        """Create an empty thread; True if created, False if it already existed.

        Never deletes or overwrites: a redelivered create of a live thread is a
        no-op (the given ``state`` is only used for a new thread). ``creator``
        (e.g. a turn id) is recorded so a redelivery can recognise its own thread.
        A thread evicted to the cold tier raises ``ThreadExists`` (hydrate it).
        """
        keys = self.keys(thread_id)
        if creator is not None:
            validate_message_id(creator, self.limits, what="creator")
        encoded = b"" if state is None else encode_state(state, self.limits)
        args = [self._ttl_ms, "0" if state is None else "1", encoded, new_epoch(), creator or ""]
        reply = self._call("create", keys.data, args)
        if _text(reply[0]) == "archived":
            raise ThreadExists(thread_id, "it is archived in the cold tier; hydrate it instead")
        return bool(self._checked(thread_id, reply)[1])

    def exists(self, thread_id: str) -> bool:
        meta = self.keys(thread_id).meta
        return bool(self._redis_call(lambda: self.redis.exists(meta)))

    def delete(self, thread_id: str, *, tombstone: bool = True, archived: bool = False) -> bool:
        """Delete every hot key of the thread and leave a tombstone (see
        ``ThreadKeys.tomb``) if it was hot, evicted, or ``archived`` (the caller saw
        its archive); ``tombstone=False``: an import replacing the hot copy by its
        archive. True if it existed hot. Idempotent."""
        ttl = self._marker_ttl_ms if tombstone else 0
        args = [ttl, "1" if archived else "0"]
        return bool(self._call("delete", self.keys(thread_id).data, args))

    def tombstone(self, thread_id: str) -> bool:
        """Tombstone a thread that is not in use (not hot, no eviction marker) before its
        archive is pruned; False, and nothing written, if it is in use."""
        return bool(self._call("tombstone", self.keys(thread_id).data, [self._marker_ttl_ms]))

    def deleted_since(self, thread_id: str, created_ms: int) -> bool:
        """Whether a delete or prune tombstoned the incarnation created at ``created_ms``."""
        tomb = self.keys(thread_id).tomb
        found = self._redis_call(lambda: self.redis.get(tomb))
        return found is not None and int(found) >= created_ms

    def clear_tombstone(self, thread_id: str) -> None:
        """Let archives of deleted incarnations be restored again (an operator's import)."""
        tomb = self.keys(thread_id).tomb
        self._redis_call(lambda: self.redis.delete(tomb))

    def descends(self, thread_id: str, version: int, head: str, etag: str) -> bool:
        """Whether the archive ``(version, head, etag)`` was made from this hot copy's own
        history: it is the archive the copy knows, or a state a flush read from it
        (``read:<version>``, see flush_read.lua), or the copy is gone (evicted by a
        newer flush of it). False for a copy that diverged (a Redis rollback)."""
        meta = self.keys(thread_id).meta
        found = self._redis_call(
            lambda: self.redis.hmget(meta, "cold_etag", "version", "head", f"read:{version}")
        )
        cold_etag, current, current_head, read = (None if v is None else _text(v) for v in found)
        if current is None:
            # the copy is gone: a newer flush of it evicted it (its archive is this one
            # or later) or it was deleted; there is nothing of it to keep or merge
            return True
        if not head:  # an archive written before lineage heads: only its etag can tell
            return cold_etag == etag
        return (
            cold_etag == etag
            or read == head
            or (current is not None and int(current) == version and current_head == head)
        )

    # -- messages ----------------------------------------------------------

    def append(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        owner: str | None = None,
        index: bool = False,
    ) -> AppendResult:
        """Append messages whose ids the thread has not seen, exactly once each.

        With ``owner``, the append is refused with ``LeaseLost`` (nothing
        written) unless that owner holds the thread's lease. ``index``: also mark
        the activity index when it is due (``index_due``): in the same script on a
        standalone Redis, so the append stays one round trip; on Redis Cluster the
        index lives in other slots and is marked after the script.
        """
        keys = self.keys(thread_id)
        if owner is not None:
            validate_message_id(owner, self.limits, what="lease owner")
        batch = encode_batch(messages, self.limits)
        script_keys = keys.data
        member = ""
        if index and self._index_in_script:
            script_keys = [*script_keys, self.layout.activity_of(thread_id)]
            member = thread_id
        args: list[Any] = [self._ttl_ms, owner or "", self.activity_refresh_ms, member]
        for item in batch:
            args += item
        reply = self._redis_call(lambda: self._evalsha("append", script_keys, args), "append")
        if _text(reply[0]) == "lease_lost":
            raise LeaseLost(thread_id, owner or "", _text(reply[1]) or None)
        _, flags, length, version, due = self._checked(thread_id, reply)
        flags = _text(flags)
        if "0" in flags:
            appended = tuple(m.id for m, f in zip(batch, flags, strict=True) if f == "1")
            skipped = tuple(m.id for m, f in zip(batch, flags, strict=True) if f == "0")
        else:  # the usual case: everything was new
            appended, skipped = tuple(m.id for m in batch), ()
        if due and index and not member:
            self.mark_active(thread_id)
        return AppendResult(
            appended_ids=appended,
            skipped_ids=skipped,
            length=int(length),
            version=int(version),
            index_due=bool(due),
        )

    def load(self, thread_id: str, start: int = 0, stop: int = -1) -> list[Message]:
        """Records from ``start`` to ``stop`` inclusive (negative counts from the end).

        A MULTI/EXEC transaction, not a script: the existence check and the range
        are read atomically either way, but a script copies every record through
        Lua (10,000 records took 150 ms inside Redis against 2 ms for LRANGE).
        """
        keys = self.keys(thread_id)

        def read() -> list[Any]:
            pipe = self.redis.pipeline(transaction=True)
            pipe.exists(keys.meta)
            pipe.lrange(keys.msgs, int(start), int(stop))
            result: list[Any] = pipe.execute()
            return result

        exists, records = self._redis_call(read)
        if not exists:
            raise ThreadNotFound(thread_id)
        return decode_records(records)

    def get(self, thread_id: str, ids: Sequence[str]) -> dict[str, Message]:
        """The records with these ids that the thread holds (id -> record), found
        through the ledger: O(len(ids)), whatever the thread's length."""
        for message_id in ids:
            validate_message_id(message_id, self.limits)
        if not ids:
            self.info(thread_id)  # still refuse an unknown thread
            return {}
        reply = self._checked(thread_id, self._call("get", self.keys(thread_id).data, ids))
        found = [(i, raw) for i, raw in zip(ids, reply[1:], strict=True) if raw]
        return {r["id"]: r for r in decode_records([raw for _, raw in found])}

    def tail(self, thread_id: str, n: int) -> list[Message]:
        """The last ``n`` records."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if n == 0:
            self.info(thread_id)  # still refuse an unknown thread
            return []
        return self.load(thread_id, -n, -1)

    def info(self, thread_id: str) -> ThreadInfo:
        reply = self._checked(thread_id, self._call("info", self.keys(thread_id).data))
        _, length, flat, lease_owner, lease_pttl, meta_pttl = reply
        meta = _pairs(flat)
        owner = _text(lease_owner) or None
        return ThreadInfo(
            thread_id=thread_id,
            length=int(length),
            version=int(meta.get("version", 0)),
            created_ms=int(meta.get("created", 0)),
            updated_ms=int(meta.get("updated", 0)),
            parent=meta.get("parent") or None,
            fork_point=meta.get("fork_point") or None,
            cold_version=_optional_int(meta.get("cold_version")),
            cold_etag=meta.get("cold_etag") or None,
            creator=meta.get("creator") or None,
            epoch=meta.get("epoch", ""),
            lease_owner=owner,
            lease_ttl_ms=int(lease_pttl) if owner else None,
            ttl_ms=int(meta_pttl) if int(meta_pttl) >= 0 else None,
            last_merge=decode_last_merge(meta.get("last_merge")),
        )

    def length(self, thread_id: str) -> int:
        return self.info(thread_id).length

    def version(self, thread_id: str) -> int:
        return self.info(thread_id).version

    def fork(
        self,
        source_id: str,
        dest_id: str,
        up_to_id: str | None = None,
        *,
        chunk_size: int = CHUNK_RECORDS,
        transform: ForkTransform | None = None,
    ) -> ForkResult:
        """Copy ``source_id`` (up to and including ``up_to_id``) into a new thread.

        Records, dedup ledger and state are copied in one script and the parent
        recorded. Repeating the same fork returns the existing copy
        (``created=False``); a destination with other content raises
        ``ThreadExists``. On Redis Cluster, threads in different slots take one
        script per slot (see ``_fork_by_copy``), with the same results;
        ``chunk_size`` bounds the records one call of that path writes.
        ``transform`` maps the copied records before anything is written (that
        path too), so the fork exists transformed or not at all; ids it drops stay
        retired in the fork's ledger.
        """
        src = self.keys(source_id)
        dst = self.keys(dest_id)
        if source_id == dest_id:
            raise InvalidThreadId(f"cannot fork thread {source_id!r} onto itself")
        point = "" if up_to_id is None else validate_message_id(up_to_id, self.limits)
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if transform is None and self._one_slot(src, dst):
            args = [self._ttl_ms, source_id, point, new_epoch()]
            reply = self._call("fork", dst.data + src.data, args)
        else:
            reply = self._fork_by_copy(source_id, src, dst, point, chunk_size, transform)
        status = _text(reply[0])
        if status == "archived":
            raise ThreadExists(dest_id, "it is archived in the cold tier; hydrate it first")
        if status == "no_message":
            raise InvalidMessage(f"message {up_to_id!r} is not in thread {source_id!r}")
        if status == "exists":
            parent, fork_point = _text(reply[1]), _text(reply[2])
            origin = (
                f"a fork of {parent!r} at {fork_point or 'its end'!r}" if parent else "a thread"
            )
            raise ThreadExists(dest_id, f"it is {origin}; delete it or fork to another id")
        if status == "incomplete":
            raise HotStoreUnavailable(
                f"the staged copy of {source_id!r} into {dest_id!r} expired or was evicted "
                "before the swap; nothing was written, retry the fork"
            )
        _, created, length, version = self._checked(source_id, reply)
        return ForkResult(created=bool(created), length=int(length), version=int(version))

    def _one_slot(self, first: ThreadKeys, second: ThreadKeys) -> bool:
        """Whether one script may touch both threads (always, outside Redis Cluster)."""
        if not isinstance(self.redis, redis.RedisCluster):
            return True
        return key_slot(first.meta.encode()) == key_slot(second.meta.encode())

    def _fork_by_copy(
        self,
        source_id: str,
        src: ThreadKeys,
        dst: ThreadKeys,
        point: str,
        chunk_size: int,
        transform: ForkTransform | None,
    ) -> list[Any]:
        """A fork as one script per thread (across Redis Cluster slots, or with a
        transform); returns a reply shaped like fork.lua's.

        fork_read.lua reads the source consistently (records up to the cut, their
        ledger entries, retired ids, state); ``transform`` maps the records;
        fork_write.lua applies the destination rules of fork.lua (shared in
        _fork.lua) and writes. A source
        write that lands between the two is not part of the fork, as if it came
        after a single-script fork. A large fork is staged in chunks under the
        destination's staging keys and swapped in by fork_write.lua, so no reader
        sees a partial fork and a repeat or a concurrent duplicate is still a no-op.
        """
        read = self._call("fork_read", src.data, [point])
        if _text(read[0]) != "ok":
            return list(read)
        _, records, ledger, state = read
        ids, retired = _ledger_order(source_id, len(records), ledger)
        if transform is not None:
            ids, records, retired = self._transformed(ids, records, retired, transform)
        staging = dst.staging(uuid.uuid4().hex)
        header = [self._ttl_ms, source_id, point, new_epoch()]
        spans = _spans(records, chunk_size)
        if len(spans) == 1:
            args = [*header, "inline", len(records), state, *ids, *records, *retired]
            return list(self._call("fork_write", dst.data + staging, args))
        try:
            if not self._stage(dst, staging, ids, records, retired, spans):
                return ["incomplete"]
            args = [*header, "staged", len(records), state]
            return list(self._call("fork_write", dst.data + staging, args))
        finally:
            self._discard(staging)

    def _transformed(
        self,
        ids: list[str],
        records: list[Any],
        retired: list[str],
        transform: ForkTransform,
    ) -> tuple[list[str], list[bytes], list[str]]:
        """The fork's ids, records and retired ids after ``transform``: ids it drops
        join the retired ones, so a late redelivery cannot bring them into the fork."""
        batch = encode_batch(
            transform(decode_records(records)), self.limits, unique=True, whole_thread=True
        )
        kept = [m.id for m in batch]
        dropped = (set(ids) | set(retired)) - set(kept)
        return kept, [m.record for m in batch], sorted(dropped)

    def truncate_from(
        self, thread_id: str, message_id: str, *, owner: str | None = None
    ) -> TruncateResult:
        """Drop ``message_id`` and everything after it; their ids may be appended again.

        An id not in the thread (e.g. a repeated call) changes nothing. With
        ``owner``, a truncate that would remove something is refused with
        ``LeaseLost`` (nothing written) unless that owner holds the lease.
        """
        keys = self.keys(thread_id)
        mid = validate_message_id(message_id, self.limits)
        if owner is not None:
            validate_message_id(owner, self.limits, what="lease owner")
        reply = self._call("truncate", keys.data, [self._ttl_ms, mid, owner or ""])
        if _text(reply[0]) == "lease_lost":
            raise LeaseLost(thread_id, owner or "", _text(reply[1]) or None)
        _, removed, length, version = self._checked(thread_id, reply)
        return TruncateResult(
            removed_ids=tuple(_text(i) for i in removed), length=int(length), version=int(version)
        )

    def replace_all(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        expected_version: int | None = None,
        chunk_size: int = CHUNK_RECORDS,
    ) -> WriteResult:
        """Atomically replace the whole list (compaction or edits), of any length.

        Ids that leave the list stay known to the ledger, so a late redelivery
        of an old append cannot bring them back. Ids must be unique. With
        ``expected_version`` (the version the caller read), a thread changed since
        then raises ``VersionConflict`` and nothing is written. Lists over
        ``chunk_size`` records (or ``CHUNK_BYTES``) are staged in chunks and
        swapped in by the replace script, like a large restore.
        """
        keys = self.keys(thread_id)
        batch = encode_batch(messages, self.limits, unique=True, whole_thread=True)
        expected = _expected(expected_version)
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        ids, records = [m.id for m in batch], [m.record for m in batch]
        staging = keys.staging(uuid.uuid4().hex)
        spans = _spans(records, chunk_size)
        header = [self._ttl_ms, expected, "inline" if len(spans) == 1 else "staged", len(batch)]
        if len(spans) == 1:
            reply = self._call("replace", keys.data + staging, [*header, *ids, *records])
            return self._written(thread_id, expected_version, reply)
        try:
            if not self._stage(keys, staging, ids, records, (), spans):
                reply = ["incomplete"]
            else:
                reply = self._call("replace", keys.data + staging, header)
        finally:
            self._discard(staging)
        return self._written(thread_id, expected_version, reply)

    def put_record(
        self,
        thread_id: str,
        record: Mapping[str, Any],
        *,
        first: bool = False,
        expected_version: int | None = None,
    ) -> WriteResult:
        """Set the record with ``record["id"]`` in one script: replace it in place if
        the thread has it (``first``: and move it to the front), else insert it
        (``first``: at the front, else at the end). An identical record changes
        nothing. A retired id is inserted again (an explicit write, not a late
        redelivery). ``expected_version`` as in ``replace_all``.
        """
        keys = self.keys(thread_id)
        item = encode_message(record, self.limits)
        expected = _expected(expected_version)
        args = [self._ttl_ms, expected, "1" if first else "0", item.id, item.record]
        return self._written(thread_id, expected_version, self._call("put_record", keys.data, args))

    def upsert(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        replace: Collection[str] = (),
        index: bool = False,
    ) -> UpsertResult:
        """Write records by id in one script: an id the thread has never seen is
        appended; a known id is skipped (the first write wins) unless it is in
        ``replace``, then its record is replaced in place if it differs (the last write
        wins). Retired ids are skipped either way. Ids must be unique in the batch and
        every id in ``replace`` must be in it. ``index`` as in ``append``.

        A replacement is a rewrite of the list (the next flush uploads a new base),
        an append is not; see docs/storage.md.
        """
        keys = self.keys(thread_id)
        batch = encode_batch(messages, self.limits, unique=True)
        replacing = set(replace)
        stray = replacing - {item.id for item in batch}
        if stray:
            raise InvalidMessage(
                f"replace names ids that are not in the batch: {sorted(map(str, stray))[:5]}"
            )
        script_keys = keys.data
        member = ""
        if index and self._index_in_script:
            script_keys = [*script_keys, self.layout.activity_of(thread_id)]
            member = thread_id
        args: list[Any] = [self._ttl_ms, self.activity_refresh_ms, member]
        for item in batch:
            args += ("r" if item.id in replacing else "i", item.id, item.record)
        reply = self._redis_call(lambda: self._evalsha("upsert", script_keys, args), "upsert")
        _, flags, length, version, due = self._checked(thread_id, reply)
        flags = _text(flags)
        by_flag: dict[str, list[str]] = {"0": [], "1": [], "2": []}
        for item, flag in zip(batch, flags, strict=True):
            by_flag[flag].append(item.id)
        if due and index and not member:
            self.mark_active(thread_id)
        return UpsertResult(
            appended_ids=tuple(by_flag["1"]),
            replaced_ids=tuple(by_flag["2"]),
            unchanged_ids=tuple(by_flag["0"]),
            length=int(length),
            version=int(version),
            index_due=bool(due),
        )

    def _written(self, thread_id: str, expected: int | None, reply: Any) -> WriteResult:
        """The ``WriteResult`` of a replace or put_record reply, or its typed error."""
        status = _text(reply[0])
        if status == "conflict":
            raise VersionConflict(thread_id, expected or 0, int(reply[1]))
        if status == "incomplete":
            raise HotStoreUnavailable(
                f"the staged list of thread {thread_id!r} expired before the swap; "
                "nothing was written, retry the replace"
            )
        _, changed, length, version = self._checked(thread_id, reply)
        return WriteResult(changed=bool(changed), length=int(length), version=int(version))

    # -- state -------------------------------------------------------------

    def save_state(self, thread_id: str, state: Mapping[str, Any]) -> StateResult:
        """Replace the thread's JSON state slice (an identical state is a no-op)."""
        keys = self.keys(thread_id)
        encoded = encode_state(state, self.limits)
        _, changed, version = self._checked(
            thread_id, self._call("save_state", keys.data, [self._ttl_ms, encoded])
        )
        return StateResult(changed=bool(changed), version=int(version))

    def load_state(self, thread_id: str) -> dict[str, Any]:
        """The thread's state slice; ``{}`` when none was saved."""
        reply = self._checked(thread_id, self._call("load_state", self.keys(thread_id).data))
        return decode_state(reply[1] or None)

    # -- lease -------------------------------------------------------------

    def acquire_lease(self, thread_id: str, owner: str, ttl_ms: int) -> Lease:
        """Take the thread's lease for ``owner``; the same owner re-acquires (renews).

        Another holder raises ``LeaseHeld`` (transient: retry with backoff).
        """
        keys = self.keys(thread_id)
        validate_message_id(owner, self.limits, what="lease owner")
        if ttl_ms < 1:
            raise ValueError("ttl_ms must be >= 1")
        reply = self._call("acquire_lease", keys.data, [owner, int(ttl_ms)])
        if _text(reply[0]) == "held":
            raise LeaseHeld(thread_id, _text(reply[1]), int(reply[2]))
        if _text(reply[0]) == "finished":
            return Lease(owner=owner, ttl_ms=0, renewed=False, finished=True)
        _, renewed = self._checked(thread_id, reply)
        return Lease(owner=owner, ttl_ms=int(ttl_ms), renewed=bool(renewed))

    def release_lease(self, thread_id: str, owner: str) -> bool:
        """Release the lease if ``owner`` holds it; True if released. Idempotent."""
        keys = self.keys(thread_id)
        validate_message_id(owner, self.limits, what="lease owner")
        return bool(self._call("release_lease", keys.data, [owner]))

    # -- activity index (sharded ZSETs outside the threads' slots: storage/activity.py) --

    def mark_active(self, thread_id: str, at_ms: int | None = None) -> None:
        """Record activity on a thread (now, by default); a score never moves back."""
        self.activity.mark(thread_id, at_ms)

    def forget_activity(self, thread_id: str) -> None:
        """Drop the thread from the index, unless it is hot again (then it stays)."""
        self.activity.forget(thread_id)

    def idle_threads(self, idle_ms: int, limit: int = 1000) -> list[tuple[str, int]]:
        """Threads whose last recorded activity is older than ``idle_ms``, oldest first."""
        return self.activity.idle(idle_ms, limit)

    def active_threads(self, limit: int = 100) -> list[tuple[str, int]]:
        """The most recently active threads, newest first."""
        return self.activity.active(limit)

    def activity_count(self) -> int:
        """Threads in the activity index."""
        return self.activity.count()

    def reconcile_activity(self, *, max_keys: int = 10_000) -> ReconcileReport:
        """Re-index hot threads that have no index entry (a crash between a write and
        its mark); SCANs about ``max_keys`` keys per call, resuming where the last
        call stopped. Needs the SCAN command (see docs/reliability.md on ACLs)."""
        return self.activity.reconcile(max_keys)

    def last_write_ms(self, thread_id: str) -> int | None:
        """The thread's meta ``updated`` (ms); None when it is not hot."""
        meta = self.keys(thread_id).meta
        updated = self._redis_call(lambda: self.redis.hget(meta, "updated"), "last_write_ms")
        return None if updated is None else int(updated)

    def _redis_call(self, action: Callable[[], Any], what: str = "a call") -> Any:
        """Run ``action``, turning what redis-py raises into typed errors (the table
        is in docs/reliability.md, "Failover and a full Redis")."""
        try:
            return action()
        except (AuthenticationError, AuthorizationError, NoPermissionError) as exc:
            # before ConnectionError: a wrong password is one, but retrying cannot help
            raise HotStoreAccessDenied(
                f"Redis refused {what} in namespace {self.namespace!r}: {exc}"
            ) from exc
        except OutOfMemoryError as exc:
            raise HotStoreFull(
                f"Redis is full (maxmemory under noeviction) and refused {what}; nothing "
                f"was written: run an idle flush (agent-threads flush --all-idle) or raise "
                f"maxmemory, then retry: {exc}"
            ) from exc
        except BusyLoadingError as exc:  # before ConnectionError, which it is
            raise HotStoreUnavailable(
                f"Redis is loading its data set (a restart) during {what}; retry when "
                f"it has loaded: {exc}"
            ) from exc
        except (ReadOnlyError, MasterDownError) as exc:
            raise HotStoreUnavailable(
                f"Redis answered {what} from a replica ({exc}): a failover is under way "
                "or the client points at a replica; retry once a master serves it"
            ) from exc
        except (ClusterError, SlotNotCoveredError, TryAgainError) as exc:
            # ClusterDownError is a ClusterError; redis-py reports MOVED, ASK and
            # TRYAGAIN it could not follow in time as ClusterError("TTL exhausted")
            raise HotStoreUnavailable(
                f"Redis Cluster could not serve {what} (a failover or a slot migration "
                f"is under way); retry when the cluster is ok: {exc}"
            ) from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise HotStoreUnavailable(f"Redis unavailable during {what}; retry: {exc}") from exc

    # -- tiering (the hot halves of Threads.flush / Threads.hydrate) -----------

    def flush_source(
        self, thread_id: str, *, force: bool = False, release_owner: str | None = None
    ) -> FlushSource:
        """Read everything a flush needs but the records in one script (they follow in
        chunks: ``read_records``); nothing when the archive already holds this version
        (unless ``force``). ``release_owner`` (the turn this flush ends) is first
        recorded as a finished turn, so the archive carries it."""
        keys = self.keys(thread_id)
        if release_owner is not None:
            validate_message_id(release_owner, self.limits, what="lease owner")
        args = ["1" if force else "0", release_owner or ""]
        reply = self._checked_any(thread_id, self._call("flush_read", keys.data, args))
        meta = _pairs(reply[1])
        source = FlushSource(
            version=int(meta["version"]),
            epoch=meta.get("epoch", ""),
            cold_version=_optional_int(meta.get("cold_version")),
            cold_etag=meta.get("cold_etag") or None,
            snapshot=None,
        )
        if _text(reply[0]) == "unchanged":
            return source
        header = Snapshot(
            thread_id=thread_id,
            namespace=self.namespace,
            version=source.version,
            epoch=source.epoch,
            created_ms=int(meta.get("created", 0)),
            updated_ms=int(meta.get("updated", 0)),
            parent=meta.get("parent") or None,
            fork_point=meta.get("fork_point") or None,
            creator=meta.get("creator") or None,
            state=decode_state(reply[3] or None),
            ids=(),
            records=(),
            head=meta.get("head", ""),
            last_merge=decode_last_merge(meta.get("last_merge")),
        )
        turns = _pairs(reply[4])
        layout = meta.get("cold_parts")
        return replace(
            source,
            snapshot=header,
            length=int(reply[2]),
            turns=tuple(sorted((t, int(v)) for t, v in turns.items())),
            rewrites=meta.get("rewrites", "0"),
            cold_len=_optional_int(meta.get("cold_len")),
            layout=Layout.from_json(layout, thread_id) if layout else None,
        )

    def read_records(
        self,
        thread_id: str,
        source: FlushSource,
        start: int,
        *,
        stop: int | None = None,
        whole: bool = False,
    ) -> tuple[list[bytes], list[Any], list[Any]]:
        """The records ``[start, stop)`` (``stop``: ``source.length``) in chunks of
        ``CHUNK_RECORDS``, each one pipeline that also checks the list was not rewritten
        since ``source`` was read (else ``ListRewritten``: read again). ``whole``: also the
        ledger and every finished turn, read with the first chunk."""
        keys = self.keys(thread_id)
        records: list[bytes] = []
        ledger: list[Any] = []
        finished: list[Any] = []
        end = source.length if stop is None else stop
        first = start
        while True:
            last = min(first + CHUNK_RECORDS, end) - 1

            def chunk(first: int = first, last: int = last) -> list[Any]:
                # Not MULTI (a full Redis refuses EXEC, and an idle flush must free it):
                # the check comes after the reads, and 'rewrites' only grows, so an
                # unchanged value means nothing rewrote the list since flush_read.
                pipe = self.redis.pipeline(transaction=False)
                if last >= first:
                    pipe.lrange(keys.msgs, first, last)
                if whole and first == start:
                    pipe.hgetall(keys.ids)
                    pipe.hkeys(keys.turns)
                pipe.hmget(keys.meta, "epoch", "rewrites")
                result: list[Any] = pipe.execute()
                return result

            reply = self._redis_call(chunk, "read_records")
            epoch, rewrites = (None if v is None else _text(v) for v in reply[-1])
            if epoch != source.epoch or (rewrites or "0") != source.rewrites:
                raise ListRewritten(thread_id)
            if last >= first:
                records += [r.encode() if isinstance(r, str) else bytes(r) for r in reply[0]]
            if whole and first == start:
                ledger, finished = _flat(reply[-3]), list(reply[-2])
            first = last + 1
            if first >= end:
                break
        if len(records) != end - start:
            raise ListRewritten(thread_id)
        return records, ledger, finished

    def snapshot(self, thread_id: str) -> Snapshot:
        """The whole hot thread as a snapshot (``ThreadNotFound`` if it is not hot)."""
        for attempt in range(_READ_ATTEMPTS):
            source = self.flush_source(thread_id, force=True)
            try:
                return self.read_snapshot(thread_id, source)
            except ListRewritten:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def read_snapshot(self, thread_id: str, source: FlushSource) -> Snapshot:
        """The whole thread as ``source`` saw it (records, ledger, finished turns)."""
        assert source.snapshot is not None
        records, ledger, finished = self.read_records(thread_id, source, 0, whole=True)
        ids, retired = _ledger_order(thread_id, len(records), ledger)
        return replace(
            source.snapshot,
            ids=tuple(ids),
            records=tuple(records),
            retired_ids=tuple(retired),
            finished_turns=tuple(sorted(_text(t) for t in finished)),
        )

    def commit_flush(
        self,
        thread_id: str,
        *,
        version: int,
        etag: str,
        epoch: str,
        evict: bool,
        release_owner: str | None = None,
        layout: Layout | None = None,
        rewrites: str = "",
    ) -> FlushCommit:
        """Record an uploaded archive; release ``release_owner``'s lease; evict only if
        the version is still ``version``, the epoch unchanged and no lease is held.
        ``layout`` (the archive's parts) is recorded with it, and its record count as
        already archived if the list saw no rewrite since ``rewrites`` was read."""
        keys = self.keys(thread_id)
        args = [
            version,
            etag,
            epoch,
            "1" if evict else "0",
            release_owner or "",
            self._marker_ttl_ms,
            self._ttl_ms,
            "" if layout is None else layout.count,
            "" if layout is None else layout.to_json(),
            "" if layout is None else layout.base.version,
            rewrites,
        ]
        reply = self._call("flush_commit", keys.data, args)
        outcome = _text(reply[0])
        if outcome == "gone":
            return FlushCommit(outcome, version, None)
        holder = _text(reply[2]) if outcome == "kept" else ""
        return FlushCommit(outcome, int(reply[1]), holder or None)

    def restore(
        self,
        snapshot: Snapshot,
        etag: str,
        *,
        chunk_size: int = CHUNK_RECORDS,
        pin_ms: int = 0,
        rebase: tuple[int, str] | None = None,
    ) -> str:
        """Make ``snapshot`` the hot thread atomically: "restored", "hot" (already
        hot, nothing written), "stale" (older than the archive last evicted here),
        "deleted" (a delete or prune tombstoned its incarnation) or "incomplete"
        (staging expired; start over).

        Up to ``chunk_size`` records (and ``CHUNK_BYTES``) go in the one restore
        script; larger threads are staged in chunks under keys no reader looks
        at, then swapped in by the restore script, so a reader never sees a
        half-restored thread.
        ``pin_ms`` keeps the restored thread from eviction that long.
        ``rebase=(version, head)`` replaces the hot copy instead, only if it is still
        at that version and lineage head: "rebased", or "moved" (nothing written).
        """
        keys = self.keys(snapshot.thread_id)
        staging = keys.staging(uuid.uuid4().hex)
        count = len(snapshot.records)
        spans = _spans(snapshot.records, chunk_size)
        state = encode_state(snapshot.state, self.limits) if snapshot.state else b""
        merge = "" if snapshot.last_merge is None else json.dumps(snapshot.last_merge)
        header = [
            self._ttl_ms,
            "inline" if len(spans) == 1 else "staged",
            count,
            snapshot.version,
            snapshot.epoch,
            etag,
            snapshot.created_ms,
            snapshot.updated_ms,
            snapshot.parent or "",
            snapshot.fork_point or "",
            snapshot.creator or "",
            "1" if state else "0",
            state,
            pin_ms,
            snapshot.head,
            "" if rebase is None else rebase[0],
            "" if rebase is None else rebase[1],
            merge,
            "" if snapshot.layout is None else snapshot.layout.to_json(),
            "" if snapshot.layout is None else snapshot.layout.base.version,
            len(snapshot.finished_turns),
            *snapshot.finished_turns,
        ]
        if len(spans) == 1:
            args = [*header, *snapshot.ids, *snapshot.records, *snapshot.retired_ids]
            return _text(self._call("restore", keys.data + staging, args)[0])
        try:
            ids, records, retired = snapshot.ids, snapshot.records, snapshot.retired_ids
            if not self._stage(keys, staging, ids, records, retired, spans):
                return "incomplete"
            return _text(self._call("restore", keys.data + staging, header)[0])
        finally:
            self._discard(staging)

    def _stage(
        self,
        keys: ThreadKeys,
        staging: list[str],
        ids: Sequence[str],
        records: Sequence[str | bytes],
        retired: Sequence[str],
        spans: list[tuple[int, int]],
    ) -> bool:
        """Write ``records`` and their ledger into ``staging`` (keys of ``keys``'s
        slot, fresh and read by nobody until a script swaps them in) in one pipeline
        of plain commands: no script copies the records through Lua. False
        if the staging list does not end up holding every record (it expired)."""
        s_msgs, s_ids = staging

        def stage() -> list[Any]:
            pipe = self.redis.pipeline(transaction=False)
            for first, end in spans:  # one round trip, commands of bounded size
                pipe.rpush(s_msgs, *records[first:end])
            for first, end in spans:
                ledger = dict(zip(ids[first:end], range(first, end), strict=True))
                pipe.hset(s_ids, mapping=ledger)  # type: ignore[arg-type]
            if retired:
                pipe.hset(s_ids, mapping=dict.fromkeys(retired, -1))
            pipe.pexpire(s_msgs, STAGING_TTL_MS)
            pipe.pexpire(s_ids, STAGING_TTL_MS)
            result: list[Any] = pipe.execute()
            return result

        lengths = self._redis_call(stage, "stage")[: len(spans)]
        return bool(lengths) and int(lengths[-1]) == len(records)

    def _discard(self, staging: list[str]) -> None:
        """Delete staging keys; a no-op after a successful swap. Failing to reach
        Redis here is not an error of its own: the keys expire by themselves."""
        with contextlib.suppress(RedisError):
            self.redis.delete(*staging)
