"""The hot-tier key layout and id validation.

Every key of one thread carries the thread id, encoded by ``encode_thread_id``,
as a Redis Cluster hash tag (``ns:{tid}:msgs``), so all of a thread's keys live
in one slot and each Lua script touches a single slot. Key names are built here
and nowhere else; cold object names use the same encoding (storage/cold.py).
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from storage.errors import InvalidMessage, InvalidThreadId
from storage.limits import DEFAULT_LIMITS, Limits

# The ids of earlier versions: printable ASCII without braces, whitespace or
# slashes. Their keys and object names are the id itself, so the wider id space
# below changes nothing stored for them.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9._:-]*", re.ASCII)
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]|^\.", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_PRINTABLE_ASCII_ID = re.compile(r"[\x21-\x7e]+")  # the common case, checked in C
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]{0,63}", re.ASCII)
_ESCAPE = re.compile(r"%([0-9A-F]{2})")

MAX_THREAD_ID_BYTES = 512
"""The longest thread id any deployment accepts, in UTF-8 bytes."""


def validate_thread_id(thread_id: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return ``thread_id`` if it is a thread id: any string of 1..512 UTF-8 bytes
    (``Limits.max_thread_id_bytes``) without control characters (Unicode category
    Cc: newlines, tabs, NUL, DEL, C1) or lone surrogates. Spaces, slashes, ``@``,
    braces and any other Unicode are allowed; keys and object names encode them."""
    if not isinstance(thread_id, str):
        raise InvalidThreadId(f"thread id must be a string, got {type(thread_id).__name__}")
    if len(thread_id) <= limits.max_thread_id_bytes and _PLAIN_ID.fullmatch(thread_id):
        return thread_id
    try:
        size = len(thread_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidThreadId(
            f"thread id {thread_id[:64]!r} is not valid Unicode (a lone surrogate)"
        ) from None
    if not 1 <= size <= limits.max_thread_id_bytes:
        raise InvalidThreadId(
            f"thread id must be 1..{limits.max_thread_id_bytes} UTF-8 bytes, "
            f"got {size}: {thread_id[:40]!r}"
        )
    if _CONTROL.search(thread_id):
        raise InvalidThreadId(
            f"invalid thread id {thread_id[:64]!r}: control characters (newline, tab, NUL, "
            "DEL, C1) are not allowed"
        )
    return thread_id


def encode_thread_id(thread_id: str) -> str:
    """The id as it appears in Redis keys and cold object names: itself when it is
    a plain id (``[A-Za-z0-9._:-]``, not starting with ``.``), otherwise every
    other character (and a leading ``.``) as ``%XX`` of its UTF-8 bytes. Injective,
    never a brace, slash or whitespace, and no plain id contains ``%``."""
    if _PLAIN_ID.fullmatch(thread_id):
        return thread_id
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode("utf-8")), thread_id)


def decode_thread_id(text: str) -> str | None:
    """The thread id whose ``encode_thread_id`` is ``text``; None for any other text."""
    pieces: list[bytes] = []
    position = 0
    try:
        for match in _ESCAPE.finditer(text):
            pieces.append(text[position : match.start()].encode("utf-8"))
            pieces.append(bytes([int(match[1], 16)]))
            position = match.end()
        pieces.append(text[position:].encode("utf-8"))
        decoded = b"".join(pieces).decode("utf-8")
        validate_thread_id(decoded)
    except (UnicodeError, InvalidThreadId):
        return None
    return decoded if encode_thread_id(decoded) == text else None


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
    """The Redis keys of one thread; all share the hash tag ``{tag}``, where ``tag``
    is ``encode_thread_id(thread_id)``: no id can close the tag early or name
    another id's keys."""

    namespace: str
    thread_id: str
    tag: str

    def _key(self, suffix: str) -> str:
        return f"{self.namespace}:{{{self.tag}}}:{suffix}"

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
        return ThreadKeys(self.namespace, thread_id, encode_thread_id(thread_id))

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
        return decode_thread_id(text[len(head) : -len(tail)])


ACTIVITY_SHARDS = 64
"""Shards of the activity index per namespace."""
TURN_SHARDS = 16
"""Shards of the turn index per namespace (it holds only turns not yet ended)."""
