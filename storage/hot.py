"""HotStore: the Redis hot tier. Every mutation is exactly one Lua script call
(range reads are one MULTI/EXEC transaction, see ``load``; a fork between two
Redis Cluster slots is one script per slot, see ``_fork_by_copy``).

Each public method validates its input in Python (raising a typed error before
any I/O), makes one script call, and turns the script's reply into a typed
result or a typed error. Scripts read and check first and write last, so a
refused call writes nothing. The validation, the argv and the reply parsing of the
single-script operations live in storage/calls.py, shared with the asyncio store
(storage/aio.py): here they are only run.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeAlias, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from storage.activity import ActivityIndex
from storage.archive import Layout
from storage.calls import ACTIVITY_REFRESH_MS as ACTIVITY_REFRESH_MS
from storage.calls import DEFAULT_TTL_SECONDS as DEFAULT_TTL_SECONDS
from storage.calls import (
    SCRIPT_NAMES,
    HotCalls,
    OnHotCalls,
    RangeRead,
    ScriptCall,
    checked,
    checked_any,
    expected_arg,
    optional_int,
    pairs,
    parse_written,
    redis_error,
    text,
)
from storage.calls import new_epoch as new_epoch
from storage.calls import script_source as script_source
from storage.errors import (
    HotStoreUnavailable,
    InvalidMessage,
    InvalidThreadId,
    ListRewritten,
    ThreadExists,
)
from storage.keys import ThreadKeys, validate_message_id
from storage.limits import DEFAULT_LIMITS, Limits
from storage.records import Message, decode_records, decode_state, encode_batch, encode_state
from storage.results import (
    AppendResult,
    FlushCommit,
    FlushSource,
    ForkResult,
    Lease,
    PopResult,
    ReconcileReport,
    StateResult,
    ThreadInfo,
    TruncateResult,
    UpsertResult,
    WriteResult,
)
from storage.snapshot import Snapshot, decode_last_merge

R = TypeVar("R")
RedisClient: TypeAlias = "redis.Redis | redis.RedisCluster"
ForkTransform: TypeAlias = Callable[[list[Message]], Iterable[Mapping[str, Any]]]
"""Maps the records a fork copies to the records the fork gets (pure: it may run again)."""

STAGING_TTL_MS = 10 * 60 * 1000
"""Staging keys of an interrupted large hydrate or fork expire after this long."""
_READ_ATTEMPTS = 5
CHUNK_RECORDS = 2000
"""Records written by one script call; a larger restore or cross-slot fork is staged."""
CHUNK_BYTES = 8 * 1024 * 1024
"""Record bytes per script call: chunks stop here too, so one call never carries
``CHUNK_RECORDS`` records of up to 1 MiB each."""


def _flat(value: Any) -> list[Any]:
    """An HGETALL reply as a flat list (redis-py turns a pipeline's into a dict)."""
    if isinstance(value, dict):
        return [item for pair in value.items() for item in pair]
    return list(value)


def _ledger_order(thread_id: str, length: int, flat: list[Any]) -> tuple[list[str], list[str]]:
    """A ledger (flat HGETALL of id -> position) as (ids in list order, retired ids)."""
    ids: list[str | None] = [None] * length
    retired: list[str] = []
    for message_id, position in pairs(flat).items():
        if int(position) < 0:
            retired.append(message_id)
        elif int(position) < length:
            ids[int(position)] = message_id
        # else: appended after the read that fixed ``length``
    ordered = [i for i in ids if i is not None]
    if len(ordered) != length:
        raise RuntimeError(f"ledger of thread {thread_id!r} does not cover its list")
    return ordered, sorted(retired)


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


class HotStore(OnHotCalls):
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
        self.redis = redis
        self.calls = HotCalls(
            namespace=namespace,
            ttl_seconds=ttl_seconds,
            limits=limits,
            archive_marker_ttl_seconds=archive_marker_ttl_seconds,
            keep_unarchived=keep_unarchived,
            activity_refresh_ms=activity_refresh_ms,
        )
        """Input -> script call, reply -> result (storage/calls.py); also the settings."""
        self.activity = ActivityIndex(redis, self.layout, self._redis_call)
        # a standalone Redis runs a script over keys of any slot: append marks the index
        self._index_in_script = not isinstance(redis, RedisCluster)
        self._scripts: dict[str, Script] = {
            name: redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }

    @property
    def keep_unarchived(self) -> bool:
        return self.calls.keep_unarchived

    @keep_unarchived.setter
    def keep_unarchived(self, value: bool) -> None:
        self.calls.keep_unarchived = value

    @property
    def activity_refresh_ms(self) -> int:
        return self.calls.activity_refresh_ms

    @activity_refresh_ms.setter
    def activity_refresh_ms(self, value: int) -> None:
        self.calls.activity_refresh_ms = value

    @property
    def _ttl_ms(self) -> int:
        return self.calls.ttl_ms

    @property
    def _marker_ttl_ms(self) -> int:
        return self.calls.marker_ttl_ms

    def _run(self, call: ScriptCall[R]) -> R:
        """Run one script call built by ``self.calls`` and parse its reply."""
        return call.parse(self._call(call.script, call.keys, call.args))

    def _range(self, read: RangeRead) -> list[Message]:
        """A range of records and the existence check, read atomically.

        A MULTI/EXEC transaction, not a script: the existence check and the range
        are read atomically either way, but a script copies every record through
        Lua (10,000 records took 150 ms inside Redis against 2 ms for LRANGE).
        """

        def transaction() -> list[Any]:
            pipe = self.redis.pipeline(transaction=True)
            pipe.exists(read.meta)
            pipe.lrange(read.msgs, read.start, read.stop)
            result: list[Any] = pipe.execute()
            return result

        exists, records = self._redis_call(transaction, "load")
        return read.parse(exists, records)

    def _call(self, name: str, keys: list[str], args: Iterable[Any] = ()) -> Any:
        """One script call, redis errors typed: every script of this store runs here."""
        argv = args if isinstance(args, list) else list(args)
        return self._redis_call(lambda: self._evalsha(name, keys, argv), name)

    def _evalsha(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """``self._scripts[name](keys, args)`` without redis-py's ``Script.__call__``
        (its per-call import and argument copies cost a tenth of a 1-message append)."""
        script = self._scripts[name]
        try:
            return self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or other server: Script loads it again
            return script(keys=keys, args=args)

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
        return self._run(self.calls.create(thread_id, state, creator))

    def exists(self, thread_id: str) -> bool:
        meta = self.keys(thread_id).meta
        return bool(self._redis_call(lambda: self.redis.exists(meta)))

    def delete(self, thread_id: str, *, tombstone: bool = True, archived: bool = False) -> bool:
        """Delete every hot key of the thread and leave a tombstone (see
        ``ThreadKeys.tomb``) if it was hot, evicted, or ``archived`` (the caller saw
        its archive); ``tombstone=False``: an import replacing the hot copy by its
        archive. True if it existed hot. Idempotent."""
        return self._run(self.calls.delete(thread_id, tombstone, archived))

    def tombstone(self, thread_id: str) -> bool:
        """Tombstone a thread that is not in use (not hot, no eviction marker) before its
        archive is pruned; False, and nothing written, if it is in use."""
        return self._run(self.calls.tombstone(thread_id))

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
        cold_etag, current, current_head, read = (None if v is None else text(v) for v in found)
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
        result = self._run(
            self.calls.append(thread_id, messages, owner, index and self._index_in_script)
        )
        if result.index_due and index and not self._index_in_script:
            self.mark_active(thread_id)
        return result

    def load(self, thread_id: str, start: int = 0, stop: int = -1) -> list[Message]:
        """Records from ``start`` to ``stop`` inclusive (negative counts from the end), with
        the existence check, atomically (one MULTI/EXEC: see ``_range``)."""
        return self._range(self.calls.load(thread_id, start, stop))

    def get(self, thread_id: str, ids: Sequence[str]) -> dict[str, Message]:
        """The records with these ids that the thread holds (id -> record), found
        through the ledger: O(len(ids)), whatever the thread's length."""
        return self._run(self.calls.get(thread_id, ids))

    def tail(self, thread_id: str, n: int) -> list[Message]:
        """The last ``n`` records."""
        read = self.calls.tail(thread_id, n)
        return self._range(read) if isinstance(read, RangeRead) else self._run(read)

    def info(self, thread_id: str) -> ThreadInfo:
        return self._run(self.calls.info(thread_id))

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
        status = text(reply[0])
        if status == "archived":
            raise ThreadExists(dest_id, "it is archived in the cold tier; hydrate it first")
        if status == "no_message":
            raise InvalidMessage(f"message {up_to_id!r} is not in thread {source_id!r}")
        if status == "exists":
            parent, fork_point = text(reply[1]), text(reply[2])
            origin = (
                f"a fork of {parent!r} at {fork_point or 'its end'!r}" if parent else "a thread"
            )
            raise ThreadExists(dest_id, f"it is {origin}; delete it or fork to another id")
        if status == "incomplete":
            raise HotStoreUnavailable(
                f"the staged copy of {source_id!r} into {dest_id!r} expired or was evicted "
                "before the swap; nothing was written, retry the fork"
            )
        _, created, length, version = checked(source_id, reply)
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
        if text(read[0]) != "ok":
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
        return self._run(self.calls.truncate(thread_id, message_id, owner))

    def pop(self, thread_id: str, *, owner: str | None = None) -> PopResult:
        """Remove and return the last record (``record`` None: the thread was empty,
        nothing changed); its id may be appended again. One script (pop.lua), a rewrite
        of the list like ``truncate_from``. ``owner`` as in ``truncate_from``."""
        return self._run(self.calls.pop(thread_id, owner))

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
        expected = expected_arg(expected_version)
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        ids, records = [m.id for m in batch], [m.record for m in batch]
        staging = keys.staging(uuid.uuid4().hex)
        spans = _spans(records, chunk_size)
        header = [self._ttl_ms, expected, "inline" if len(spans) == 1 else "staged", len(batch)]
        if len(spans) == 1:
            reply = self._call("replace", keys.data + staging, [*header, *ids, *records])
            return parse_written(thread_id, expected_version, reply)
        try:
            if not self._stage(keys, staging, ids, records, (), spans):
                reply = ["incomplete"]
            else:
                reply = self._call("replace", keys.data + staging, header)
        finally:
            self._discard(staging)
        return parse_written(thread_id, expected_version, reply)

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
        return self._run(self.calls.put_record(thread_id, record, first, expected_version))

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
        in_script = index and self._index_in_script
        result = self._run(self.calls.upsert(thread_id, messages, replace, in_script))
        if result.index_due and index and not self._index_in_script:
            self.mark_active(thread_id)
        return result

    # -- state -------------------------------------------------------------

    def save_state(self, thread_id: str, state: Mapping[str, Any]) -> StateResult:
        """Replace the thread's JSON state slice (an identical state is a no-op)."""
        return self._run(self.calls.save_state(thread_id, state))

    def load_state(self, thread_id: str) -> dict[str, Any]:
        """The thread's state slice; ``{}`` when none was saved."""
        return self._run(self.calls.load_state(thread_id))

    # -- lease -------------------------------------------------------------

    def acquire_lease(self, thread_id: str, owner: str, ttl_ms: int) -> Lease:
        """Take the thread's lease for ``owner``; the same owner re-acquires (renews).

        Another holder raises ``LeaseHeld`` (transient: retry with backoff).
        """
        return self._run(self.calls.acquire_lease(thread_id, owner, ttl_ms))

    def release_lease(self, thread_id: str, owner: str) -> bool:
        """Release the lease if ``owner`` holds it; True if released. Idempotent."""
        return self._run(self.calls.release_lease(thread_id, owner))

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
        except RedisError as exc:
            typed = redis_error(exc, what, self.namespace)
            if typed is None:
                raise
            raise typed from exc

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
        reply = checked_any(thread_id, self._call("flush_read", keys.data, args))
        meta = pairs(reply[1])
        source = FlushSource(
            version=int(meta["version"]),
            epoch=meta.get("epoch", ""),
            cold_version=optional_int(meta.get("cold_version")),
            cold_etag=meta.get("cold_etag") or None,
            snapshot=None,
        )
        if text(reply[0]) == "unchanged":
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
        turns = pairs(reply[4])
        layout = meta.get("cold_parts")
        return replace(
            source,
            snapshot=header,
            length=int(reply[2]),
            turns=tuple(sorted((t, int(v)) for t, v in turns.items())),
            rewrites=meta.get("rewrites", "0"),
            cold_len=optional_int(meta.get("cold_len")),
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
            epoch, rewrites = (None if v is None else text(v) for v in reply[-1])
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
            finished_turns=tuple(sorted(text(t) for t in finished)),
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
        outcome = text(reply[0])
        if outcome == "gone":
            return FlushCommit(outcome, version, None)
        holder = text(reply[2]) if outcome == "kept" else ""
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
            return text(self._call("restore", keys.data + staging, args)[0])
        try:
            ids, records, retired = snapshot.ids, snapshot.records, snapshot.retired_ids
            if not self._stage(keys, staging, ids, records, retired, spans):
                return "incomplete"
            return text(self._call("restore", keys.data + staging, header)[0])
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
