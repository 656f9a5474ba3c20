"""The pure half of the hot tier: input -> script call, script reply -> typed result.

``HotStore`` (redis-py) and ``AsyncHotStore`` (redis.asyncio, storage/aio.py) run the
same Lua scripts. Everything about an operation that is not I/O lives here, once:
validating its input (a typed error before any I/O), the keys and argv of its one
script call, and turning the reply into a typed result or a typed error. A store
method is then "build the call, run it, parse the reply", so the two cannot drift.
``redis_error`` is the one table from what redis-py raises to the storage errors.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Generic, TypeVar

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from storage.errors import (
    AgentThreadsError,
    HotStoreAccessDenied,
    HotStoreFull,
    HotStoreUnavailable,
    InvalidMessage,
    LeaseHeld,
    LeaseLost,
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
    Lease,
    PopResult,
    StateResult,
    ThreadInfo,
    TruncateResult,
    UpsertResult,
    WriteResult,
)
from storage.snapshot import decode_last_merge

R = TypeVar("R")

DEFAULT_TTL_SECONDS = 90 * 24 * 3600
ACTIVITY_REFRESH_MS = 60_000
"""Default ``activity_refresh_ms``: an append asks for an index write at most this often."""

SCRIPT_NAMES = (
    "create",
    "append",
    "info",
    "fork",
    "fork_read",
    "fork_write",
    "truncate",
    "pop",
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

SCRIPT_PARTS: dict[str, tuple[str, ...]] = {
    # the source and destination halves of a fork, the same across slots or not
    "fork": ("_fork",),
    "fork_read": ("_fork",),
    "fork_write": ("_fork",),
    # the turn record (storage/turns.py)
    **{name: ("_turn",) for name in SCRIPT_NAMES if name.startswith("turn_")},
}
"""Shared Lua parts (``lua/_<part>.lua``) a script needs after the prelude."""


@cache
def script_source(name: str) -> str:
    """The Lua source of one operation: the shared prelude, the shared parts it
    uses (``SCRIPT_PARTS``), then its own file."""
    folder = resources.files("storage") / "lua"
    parts = ("_prelude", *SCRIPT_PARTS.get(name, ()), name)
    return "\n".join((folder / f"{part}.lua").read_text(encoding="utf-8") for part in parts)


def new_epoch() -> str:
    """A random id for one incarnation of a thread (create or fork); kept across tiers."""
    return uuid.uuid4().hex


def text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def pairs(flat: list[Any]) -> dict[str, str]:
    """A flat HGETALL reply as a dict of str."""
    return {text(k): text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


def optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def expected_arg(version: int | None) -> str:
    """``expected_version`` as a script argument ('' = no check)."""
    if version is None:
        return ""
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"expected_version must be an int >= 0 or None, got {version!r}")
    return str(version)


def redis_error(exc: Exception, what: str, namespace: str) -> AgentThreadsError | None:
    """The typed error for what redis-py (sync or asyncio) raised during ``what``; None
    for anything else (a script error, a bug), which the caller re-raises as it is.
    The table is in docs/reliability.md, "Failover and a full Redis"."""
    # before ConnectionError: a wrong password is one, but retrying cannot help
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError):
        return HotStoreAccessDenied(f"Redis refused {what} in namespace {namespace!r}: {exc}")
    if isinstance(exc, OutOfMemoryError):
        return HotStoreFull(
            f"Redis is full (maxmemory under noeviction) and refused {what}; nothing "
            f"was written: run an idle flush (agent-threads flush --all-idle) or raise "
            f"maxmemory, then retry: {exc}"
        )
    if isinstance(exc, BusyLoadingError):  # before ConnectionError, which it is
        return HotStoreUnavailable(
            f"Redis is loading its data set (a restart) during {what}; retry when "
            f"it has loaded: {exc}"
        )
    if isinstance(exc, ReadOnlyError | MasterDownError):
        return HotStoreUnavailable(
            f"Redis answered {what} from a replica ({exc}): a failover is under way "
            "or the client points at a replica; retry once a master serves it"
        )
    if isinstance(exc, ClusterError | SlotNotCoveredError | TryAgainError):
        # ClusterDownError is a ClusterError; redis-py reports MOVED, ASK and
        # TRYAGAIN it could not follow in time as ClusterError("TTL exhausted")
        return HotStoreUnavailable(
            f"Redis Cluster could not serve {what} (a failover or a slot migration "
            f"is under way); retry when the cluster is ok: {exc}"
        )
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return HotStoreUnavailable(f"Redis unavailable during {what}; retry: {exc}")
    return None


def checked(thread_id: str, reply: Any) -> list[Any]:
    """Raise the typed error for a script's refusal; return the 'ok' reply."""
    status = text(reply[0])
    if status == "ok":
        return list(reply)
    if status == "not_found":
        raise ThreadNotFound(thread_id)
    raise RuntimeError(f"unexpected script reply {reply!r} for thread {thread_id!r}")


def checked_any(thread_id: str, reply: Any) -> list[Any]:
    """Like ``checked``, but any status other than not_found is an answer."""
    if text(reply[0]) == "not_found":
        raise ThreadNotFound(thread_id)
    return list(reply)


def _lease_checked(thread_id: str, owner: str | None, reply: Any) -> list[Any]:
    """``checked``, with the 'lease_lost' refusal of a write made as ``owner``."""
    if text(reply[0]) == "lease_lost":
        raise LeaseLost(thread_id, owner or "", text(reply[1]) or None)
    return checked(thread_id, reply)


def parse_written(thread_id: str, expected: int | None, reply: Any) -> WriteResult:
    """The ``WriteResult`` of a replace or put_record reply, or its typed error."""
    status = text(reply[0])
    if status == "conflict":
        raise VersionConflict(thread_id, expected or 0, int(reply[1]))
    if status == "incomplete":
        raise HotStoreUnavailable(
            f"the staged list of thread {thread_id!r} expired before the swap; "
            "nothing was written, retry the replace"
        )
    _, changed, length, version = checked(thread_id, reply)
    return WriteResult(changed=bool(changed), length=int(length), version=int(version))


def parse_info(thread_id: str, reply: Any) -> ThreadInfo:
    _, length, flat, lease_owner, lease_pttl, meta_pttl = checked(thread_id, reply)
    meta = pairs(flat)
    owner = text(lease_owner) or None
    return ThreadInfo(
        thread_id=thread_id,
        length=int(length),
        version=int(meta.get("version", 0)),
        created_ms=int(meta.get("created", 0)),
        updated_ms=int(meta.get("updated", 0)),
        parent=meta.get("parent") or None,
        fork_point=meta.get("fork_point") or None,
        cold_version=optional_int(meta.get("cold_version")),
        cold_etag=meta.get("cold_etag") or None,
        creator=meta.get("creator") or None,
        epoch=meta.get("epoch", ""),
        lease_owner=owner,
        lease_ttl_ms=int(lease_pttl) if owner else None,
        ttl_ms=int(meta_pttl) if int(meta_pttl) >= 0 else None,
        last_merge=decode_last_merge(meta.get("last_merge")),
    )


@dataclass(frozen=True, slots=True)
class ScriptCall(Generic[R]):
    """One script call: ``storage/lua/<script>.lua`` over ``keys`` with ``args``;
    ``parse`` turns its reply into the operation's result or raises its typed error."""

    script: str
    keys: list[str]
    args: list[Any]
    parse: Callable[[Any], R]


@dataclass(frozen=True, slots=True)
class RangeRead:
    """A range of a thread's records read with its existence check in one MULTI/EXEC
    (``HotStore.load``: not a script, which would copy every record through Lua)."""

    thread_id: str
    meta: str
    msgs: str
    start: int
    stop: int

    def parse(self, exists: Any, records: Sequence[bytes | str]) -> list[Message]:
        if not exists:
            raise ThreadNotFound(self.thread_id)
        return decode_records(records)


class OnHotCalls:
    """The settings a store reads from its ``HotCalls`` (``HotStore``, ``AsyncHotStore``)."""

    calls: HotCalls

    @property
    def namespace(self) -> str:
        return self.calls.namespace

    @property
    def layout(self) -> KeyLayout:
        return self.calls.layout

    @property
    def limits(self) -> Limits:
        return self.calls.limits

    def keys(self, thread_id: str) -> ThreadKeys:
        """The validated keys of ``thread_id``."""
        return self.calls.keys(thread_id)


class HotCalls:
    """The settings of one hot tier and the script calls they make (see the module
    docstring). ``HotStore`` documents the settings; a ``HotStore`` and an
    ``AsyncHotStore`` over the same Redis share one ``HotCalls``
    (``AsyncHotStore.like``), so both write with the same TTL rule."""

    def __init__(
        self,
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
        self.layout = KeyLayout(namespace)
        self.limits = limits
        self.expiry_ms = 0 if ttl_seconds is None else ttl_seconds * 1000
        self.keep_unarchived = keep_unarchived
        self.marker_ttl_ms = archive_marker_ttl_seconds * 1000
        self.activity_refresh_ms = activity_refresh_ms

    @property
    def ttl_ms(self) -> int:
        """The scripts' expiry argument (``touch`` in _prelude.lua): negative when the
        TTL may only run on archived threads."""
        return -self.expiry_ms if self.keep_unarchived else self.expiry_ms

    @property
    def namespace(self) -> str:
        return self.layout.namespace

    def keys(self, thread_id: str) -> ThreadKeys:
        """The validated keys of ``thread_id``."""
        return self.layout.thread(validate_thread_id(thread_id, self.limits))

    def _owner(self, owner: str | None) -> str:
        if owner is not None:
            validate_message_id(owner, self.limits, what="lease owner")
        return owner or ""

    # -- lifecycle ---------------------------------------------------------------

    def create(
        self, thread_id: str, state: Mapping[str, Any] | None, creator: str | None
    ) -> ScriptCall[bool]:
        keys = self.keys(thread_id)
        if creator is not None:
            validate_message_id(creator, self.limits, what="creator")
        encoded = b"" if state is None else encode_state(state, self.limits)
        args = [self.ttl_ms, "0" if state is None else "1", encoded, new_epoch(), creator or ""]

        def parse(reply: Any) -> bool:
            if text(reply[0]) == "archived":
                raise ThreadExists(thread_id, "it is archived in the cold tier; hydrate it instead")
            return bool(checked(thread_id, reply)[1])

        return ScriptCall("create", keys.data, args, parse)

    def delete(self, thread_id: str, tombstone: bool, archived: bool) -> ScriptCall[bool]:
        ttl = self.marker_ttl_ms if tombstone else 0
        args = [ttl, "1" if archived else "0"]
        return ScriptCall("delete", self.keys(thread_id).data, args, bool)

    def tombstone(self, thread_id: str) -> ScriptCall[bool]:
        return ScriptCall("tombstone", self.keys(thread_id).data, [self.marker_ttl_ms], bool)

    # -- messages ----------------------------------------------------------------

    def append(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        owner: str | None,
        index_in_script: bool,
    ) -> ScriptCall[AppendResult]:
        """``index_in_script``: the script marks the activity index when it is due (a
        standalone Redis); else the caller marks it after when ``index_due``."""
        keys = self.keys(thread_id)
        lease_owner = self._owner(owner)
        batch = encode_batch(messages, self.limits)
        script_keys = keys.data
        member = ""
        if index_in_script:
            script_keys = [*script_keys, self.layout.activity_of(thread_id)]
            member = thread_id
        args: list[Any] = [self.ttl_ms, lease_owner, self.activity_refresh_ms, member]
        for item in batch:
            args += item

        def parse(reply: Any) -> AppendResult:
            _, flags, length, version, due = _lease_checked(thread_id, owner, reply)
            flags = text(flags)
            if "0" in flags:
                appended = tuple(m.id for m, f in zip(batch, flags, strict=True) if f == "1")
                skipped = tuple(m.id for m, f in zip(batch, flags, strict=True) if f == "0")
            else:  # the usual case: everything was new
                appended, skipped = tuple(m.id for m in batch), ()
            return AppendResult(
                appended_ids=appended,
                skipped_ids=skipped,
                length=int(length),
                version=int(version),
                index_due=bool(due),
            )

        return ScriptCall("append", script_keys, args, parse)

    def upsert(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        replace: Collection[str],
        index_in_script: bool,
    ) -> ScriptCall[UpsertResult]:
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
        if index_in_script:
            script_keys = [*script_keys, self.layout.activity_of(thread_id)]
            member = thread_id
        args: list[Any] = [self.ttl_ms, self.activity_refresh_ms, member]
        for item in batch:
            args += ("r" if item.id in replacing else "i", item.id, item.record)

        def parse(reply: Any) -> UpsertResult:
            _, flags, length, version, due = checked(thread_id, reply)
            by_flag: dict[str, list[str]] = {"0": [], "1": [], "2": []}
            for item, flag in zip(batch, text(flags), strict=True):
                by_flag[flag].append(item.id)
            return UpsertResult(
                appended_ids=tuple(by_flag["1"]),
                replaced_ids=tuple(by_flag["2"]),
                unchanged_ids=tuple(by_flag["0"]),
                length=int(length),
                version=int(version),
                index_due=bool(due),
            )

        return ScriptCall("upsert", script_keys, args, parse)

    def put_record(
        self,
        thread_id: str,
        record: Mapping[str, Any],
        first: bool,
        expected_version: int | None,
    ) -> ScriptCall[WriteResult]:
        keys = self.keys(thread_id)
        item = encode_message(record, self.limits)
        expected = expected_arg(expected_version)
        args = [self.ttl_ms, expected, "1" if first else "0", item.id, item.record]
        return ScriptCall(
            "put_record",
            keys.data,
            args,
            lambda reply: parse_written(thread_id, expected_version, reply),
        )

    def truncate(
        self, thread_id: str, message_id: str, owner: str | None
    ) -> ScriptCall[TruncateResult]:
        keys = self.keys(thread_id)
        mid = validate_message_id(message_id, self.limits)
        args = [self.ttl_ms, mid, self._owner(owner)]

        def parse(reply: Any) -> TruncateResult:
            _, removed, length, version = _lease_checked(thread_id, owner, reply)
            return TruncateResult(
                removed_ids=tuple(text(i) for i in removed),
                length=int(length),
                version=int(version),
            )

        return ScriptCall("truncate", keys.data, args, parse)

    def pop(self, thread_id: str, owner: str | None) -> ScriptCall[PopResult]:
        keys = self.keys(thread_id)
        args = [self.ttl_ms, self._owner(owner)]

        def parse(reply: Any) -> PopResult:
            _, raw, length, version = _lease_checked(thread_id, owner, reply)
            record = decode_records([raw])[0] if raw else None
            return PopResult(record=record, length=int(length), version=int(version))

        return ScriptCall("pop", keys.data, args, parse)

    # -- reads -------------------------------------------------------------------

    def info(self, thread_id: str) -> ScriptCall[ThreadInfo]:
        return ScriptCall(
            "info", self.keys(thread_id).data, [], lambda reply: parse_info(thread_id, reply)
        )

    def _exists_then(self, thread_id: str, empty: R) -> ScriptCall[R]:
        """The info script as an existence check that answers ``empty``: a read of
        nothing still refuses an unknown thread."""

        def parse(reply: Any) -> R:
            checked(thread_id, reply)
            return empty

        return ScriptCall("info", self.keys(thread_id).data, [], parse)

    def get(self, thread_id: str, ids: Sequence[str]) -> ScriptCall[dict[str, Message]]:
        for message_id in ids:
            validate_message_id(message_id, self.limits)
        if not ids:
            return self._exists_then(thread_id, {})
        wanted = list(ids)

        def parse(reply: Any) -> dict[str, Message]:
            values = checked(thread_id, reply)[1:]
            found = [raw for _, raw in zip(wanted, values, strict=True) if raw]
            return {r["id"]: r for r in decode_records(found)}

        return ScriptCall("get", self.keys(thread_id).data, wanted, parse)

    def load(self, thread_id: str, start: int = 0, stop: int = -1) -> RangeRead:
        keys = self.keys(thread_id)
        return RangeRead(thread_id, keys.meta, keys.msgs, int(start), int(stop))

    def tail(self, thread_id: str, n: int) -> RangeRead | ScriptCall[list[Message]]:
        """The last ``n`` records (``n == 0``: only the existence check)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        if n == 0:
            return self._exists_then(thread_id, [])
        return self.load(thread_id, -n, -1)

    # -- state and lease ---------------------------------------------------------

    def save_state(self, thread_id: str, state: Mapping[str, Any]) -> ScriptCall[StateResult]:
        keys = self.keys(thread_id)
        encoded = encode_state(state, self.limits)

        def parse(reply: Any) -> StateResult:
            _, changed, version = checked(thread_id, reply)
            return StateResult(changed=bool(changed), version=int(version))

        return ScriptCall("save_state", keys.data, [self.ttl_ms, encoded], parse)

    def load_state(self, thread_id: str) -> ScriptCall[dict[str, Any]]:
        return ScriptCall(
            "load_state",
            self.keys(thread_id).data,
            [],
            lambda reply: decode_state(checked(thread_id, reply)[1] or None),
        )

    def acquire_lease(self, thread_id: str, owner: str, ttl_ms: int) -> ScriptCall[Lease]:
        keys = self.keys(thread_id)
        validate_message_id(owner, self.limits, what="lease owner")
        if ttl_ms < 1:
            raise ValueError("ttl_ms must be >= 1")

        def parse(reply: Any) -> Lease:
            if text(reply[0]) == "held":
                raise LeaseHeld(thread_id, text(reply[1]), int(reply[2]))
            if text(reply[0]) == "finished":
                return Lease(owner=owner, ttl_ms=0, renewed=False, finished=True)
            _, renewed = checked(thread_id, reply)
            return Lease(owner=owner, ttl_ms=int(ttl_ms), renewed=bool(renewed))

        return ScriptCall("acquire_lease", keys.data, [owner, int(ttl_ms)], parse)

    def release_lease(self, thread_id: str, owner: str) -> ScriptCall[bool]:
        keys = self.keys(thread_id)
        validate_message_id(owner, self.limits, what="lease owner")
        return ScriptCall("release_lease", keys.data, [owner], bool)
