"""The hot-tier key layout and id validation.

Every key of one thread carries the thread id as a Redis Cluster hash tag
(``ns:{tid}:msgs``), so all of a thread's keys live in one slot and each Lua
script touches a single slot. Key names are built here and nowhere else.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from storage.errors import InvalidMessage, InvalidThreadId
from storage.limits import DEFAULT_LIMITS, Limits

# No braces (hash tags), no whitespace, no slashes: ids are safe in Redis keys,
# S3 object keys and file names alike. A leading "." is refused so that an id
# can never be "." or ".." or a hidden file.
_THREAD_ID = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9._:-]*", re.ASCII)
_PRINTABLE_ASCII_ID = re.compile(r"[\x21-\x7e]+")  # the common case, checked in C
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]{0,63}", re.ASCII)


def validate_thread_id(thread_id: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return ``thread_id`` if it is 1..128 chars of ``[A-Za-z0-9._:-]`` not starting with ``.``."""
    if not isinstance(thread_id, str):
        raise InvalidThreadId(f"thread id must be a string, got {type(thread_id).__name__}")
    if not 1 <= len(thread_id) <= limits.max_thread_id_length:
        raise InvalidThreadId(
            f"thread id must be 1..{limits.max_thread_id_length} characters, "
            f"got {len(thread_id)}: {thread_id[:40]!r}"
        )
    if not _THREAD_ID.fullmatch(thread_id):
        raise InvalidThreadId(
            f"invalid thread id {thread_id[:64]!r}: use only A-Z a-z 0-9 . _ : - "
            "and do not start with '.'"
        )
    return thread_id


def validate_message_id(
    message_id: object, limits: Limits = DEFAULT_LIMITS, *, what: str = "message id"
) -> str:
    """Return ``message_id`` if it is 1..256 printable characters without whitespace."""
    if not isinstance(message_id, str):
        raise InvalidMessage(f"{what} must be a string, got {type(message_id).__name__}")
    if not 1 <= len(message_id) <= limits.max_message_id_length:
        raise InvalidMessage(
            f"{what} must be 1..{limits.max_message_id_length} characters, "
            f"got {len(message_id)}: {message_id[:40]!r}"
        )
    if _PRINTABLE_ASCII_ID.fullmatch(message_id):
        return message_id
    # isprintable() is False for control, format (zero-width, bidi) and separator
    # characters; isspace() catches the remaining whitespace such as " ".
    if not message_id.isprintable() or any(ch.isspace() for ch in message_id):
        raise InvalidMessage(
            f"invalid {what} {message_id[:64]!r}: use printable characters without whitespace"
        )
    return message_id


@functools.cache
def _printable_ids(max_length: int) -> re.Pattern[str]:
    one = rf"[\x21-\x7e]{{1,{max_length}}}"
    return re.compile(rf"{one}(?:\n{one})*")


def validate_message_ids(
    ids: Sequence[object], limits: Limits = DEFAULT_LIMITS, *, what: str = "message id"
) -> tuple[str, ...]:
    """``validate_message_id`` of each, with one C-level match for the common case
    (printable ASCII ids: a 10,000-message archive's ledger)."""
    if all(type(i) is str for i in ids):
        joined = "\n".join(ids)  # type: ignore[arg-type]
        # the count: an id holding the separator must not pass as two
        if not ids or (
            joined.count("\n") == len(ids) - 1
            and _printable_ids(limits.max_message_id_length).fullmatch(joined)
        ):
            return tuple(ids)  # type: ignore[arg-type]
    return tuple(validate_message_id(i, limits, what=what) for i in ids)


def validate_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is 1..64 of ``[A-Za-z0-9._:-]``, not starting with ``.``/``:``."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise InvalidThreadId(
            f"invalid namespace {namespace!r}: use 1..64 of A-Z a-z 0-9 . _ : - "
            "starting with a letter, digit or '_'"
        )
    return namespace


@dataclass(frozen=True, slots=True)
class ThreadKeys:
    """The Redis keys of one thread; all share the hash tag ``{thread_id}``."""

    namespace: str
    thread_id: str

    def _key(self, suffix: str) -> str:
        return f"{self.namespace}:{{{self.thread_id}}}:{suffix}"

    @property
    def msgs(self) -> str:
        """LIST of JSON records ``{"id", "body"}`` in order."""
        return self._key("msgs")

    @property
    def ids(self) -> str:
        """HASH message id -> list position (-1: retired by ``replace_all``); the dedup ledger."""
        return self._key("ids")

    @property
    def meta(self) -> str:
        """HASH of thread metadata; its existence is the thread's existence."""
        return self._key("meta")

    @property
    def state(self) -> str:
        """STRING holding the JSON state slice."""
        return self._key("state")

    @property
    def lease(self) -> str:
        """STRING holding the current lease owner, with a PX expiry."""
        return self._key("lease")

    @property
    def archived(self) -> str:
        """HASH {version, etag, epoch} of the cold archive, kept after eviction so a
        stale hydrate can never restore an older archive over a newer one."""
        return self._key("archived")

    @property
    def turns(self) -> str:
        """HASH lease owner -> finished ms: turns that ended and may not take the lease again.
        Kept after eviction as long as the archive marker (a late duplicate of the turn
        whose flush evicted the thread must still find it finished after a restore)."""
        return self._key("turns")

    @property
    def runs(self) -> str:
        """HASH of the thread's turn records (storage/turns.py): turn id -> record JSON
        (maintained by the turn scripts), ``spec:<turn id>`` -> how to re-wake it (until
        it ends), ``#seq`` and ``#<n>`` -> the n-th submitted turn id (pruning)."""
        return self._key("runs")

    @property
    def tomb(self) -> str:
        """STRING: ms of the last delete (or prune) of this id. A restore of an
        incarnation created before then is refused, so a hydrate that read the archive
        before the delete cannot bring the thread back; it expires with the marker."""
        return self._key("tomb")

    def staging(self, token: str) -> list[str]:
        """LIST and HASH a large hydrate fills in chunks before one script swaps them in."""
        return [self._key(f"staging:{token}:msgs"), self._key(f"staging:{token}:ids")]

    @property
    def data(self) -> list[str]:
        """The keys a script receives, in the fixed order every script expects."""
        return [
            self.meta,
            self.msgs,
            self.ids,
            self.state,
            self.lease,
            self.archived,
            self.turns,
            self.tomb,
            self.runs,
        ]


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """Builds :class:`ThreadKeys` for one namespace (one tenant or application)."""

    namespace: str = "at"

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)

    def thread(self, thread_id: str) -> ThreadKeys:
        return ThreadKeys(self.namespace, thread_id)

    @property
    def activity_shards(self) -> list[str]:
        """The activity index: ZSETs thread id -> last recorded activity (ms), one per
        shard, each in its own slot (the tag names namespace and shard), so appends of
        one namespace spread over the cluster. ``flush_idle`` reads them, never a scan."""
        return [self._shard(i) for i in range(ACTIVITY_SHARDS)]

    def activity_of(self, thread_id: str) -> str:
        """The activity shard that lists ``thread_id`` (a stable hash of the id)."""
        return self._shard(zlib.crc32(thread_id.encode("utf-8")) % ACTIVITY_SHARDS)

    def _shard(self, index: int) -> str:
        return f"{self.namespace}:activity:{{{self.namespace}:a{index:02d}}}"

    @property
    def turn_shards(self) -> list[str]:
        """The turn index: ZSETs ``[thread id, turn id]`` (JSON) -> when to look at the
        turn again (ms), one per shard in its own slot; the turn reconciler reads them."""
        return [self._turn_shard(i) for i in range(TURN_SHARDS)]

    def turns_of(self, thread_id: str) -> str:
        """The turn-index shard that lists the turns of ``thread_id``."""
        return self._turn_shard(zlib.crc32(thread_id.encode("utf-8")) % TURN_SHARDS)

    def _turn_shard(self, index: int) -> str:
        return f"{self.namespace}:turns:{{{self.namespace}:t{index:02d}}}"

    @property
    def legacy_activity(self) -> str:
        """The single activity ZSET of earlier versions; the reconciler migrates and drops it."""
        return f"{self.namespace}:activity"

    @property
    def activity_cursor(self) -> str:
        """HASH node -> SCAN cursor of the activity reconciler."""
        return f"{self.namespace}:activity-cursor"

    @property
    def idle_flush_lock(self) -> str:
        """STRING token of the one ``flush_idle`` running in this namespace, with PX expiry."""
        return f"{self.namespace}:idle-flush-lock"

    @property
    def meta_pattern(self) -> str:
        """SCAN MATCH pattern of every thread's meta key (the existence markers)."""
        return f"{self.namespace}:{{*}}:meta"

    def thread_id_of_meta(self, key: str | bytes) -> str | None:
        """The thread id in a meta key found by ``meta_pattern``; None for another key."""
        text = key.decode("utf-8") if isinstance(key, bytes) else key
        head, tail = f"{self.namespace}:{{", "}:meta"
        if not (text.startswith(head) and text.endswith(tail)):
            return None
        thread_id = text[len(head) : -len(tail)]
        return thread_id if thread_id and "{" not in thread_id else None


ACTIVITY_SHARDS = 64
"""Shards of the activity index per namespace."""
TURN_SHARDS = 16
"""Shards of the turn index per namespace (it holds only turns not yet ended)."""
