"""An OpenAI Agents SDK ``Session`` on agent-threads: ``AgentThreadsSession``.

One session is one agent-threads thread whose id is the session id, in the namespace
of the ``Threads`` given; each item is one record, ``{"id": <message id>, "body":
<the item's JSON>}``, in the order it was added (docs/integrations.md has the
mapping). The hot path is ``redis.asyncio`` (``storage.aio``): ``add_items`` is one
append script (the activity index included), ``get_items`` one MULTI/EXEC range
read, ``pop_item`` one pop script. A session evicted to the cold tier is hydrated
transparently on its next access, by the sync ``Threads`` in a worker thread;
``clear_session`` deletes the thread from both tiers.

Dedup rule: an item's message id comes from the provider's identity of the item, so
a redelivered or retried ``add_items`` never stores it twice:

1. an ``*_output`` item (``function_call_output``, ``computer_call_output``, ...)
   with a ``call_id``: ``out:<type>:<call_id>`` (one output per call);
2. else an item with an ``id`` (``msg_...``, ``fc_...``, ``rs_...``) other than the
   SDK's placeholder ``__fake_id__``: ``id:<id>``;
3. else an item with a ``call_id`` (a tool call from a provider that assigns no item
   id): ``call:<type>:<call_id>``;
4. else (user input, an item without identity): a fresh ``new:<uuid4>``, so such an
   item sent twice is stored twice.

A derived id longer than the store's limit (256) or not printable becomes
``sha:<sha256 of it>``. An item whose id the session holds is skipped (the first
write wins); ``pop_item`` forgets the popped item's id, so it may be added again.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar, cast

from agents.items import TResponseInputItem
from agents.memory.session_settings import (
    SessionSettings,
    coerce_session_settings,
    resolve_session_limit,
)
from agents.models.fake_id import FAKE_RESPONSES_ID

from storage.aio import AsyncHotStore, AsyncThreads
from storage.errors import InvalidMessage, ThreadNotFound
from storage.keys import validate_message_id
from storage.records import Message, encode_batch
from storage.tiered import Threads

T = TypeVar("T")
_ATTEMPTS = 5


class InvalidSessionItem(InvalidMessage):
    """``add_items`` got something other than a list of item dicts, or an item that is
    not plain JSON or is over the store's limits: nothing was written."""


async def _settled(mutation: Awaitable[T]) -> T:
    """Await a write to its end even if the caller is cancelled meanwhile (then raise
    the cancellation): the caller never leaves a pop or an append half-observed."""
    task = asyncio.ensure_future(mutation)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError as exc:
            cancelled = cancelled or exc
    if cancelled is not None:
        raise cancelled
    return task.result()


class AgentThreadsSession:
    """An Agents SDK ``Session`` (``agents.memory.Session``) on agent-threads.

    ``threads`` is the sync ``storage.tiered.Threads`` (its cold tier hydrates an
    evicted session, in a worker thread); ``hot`` an ``AsyncHotStore`` on the same
    Redis, built once with ``AsyncHotStore.like(threads.hot, async_redis)``.
    ``session_settings`` as for the SDK's sessions: ``limit`` is the default of
    ``get_items``. The session id is the thread id (``InvalidThreadId`` if the store
    refuses it).
    """

    session_settings: SessionSettings | None = None

    def __init__(
        self,
        session_id: str,
        threads: Threads,
        hot: AsyncHotStore,
        *,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        hot.keys(session_id)  # InvalidThreadId before any I/O
        self.session_id = session_id
        self.session_settings = (
            coerce_session_settings(session_settings)
            if session_settings is not None
            else SessionSettings()
        )
        self.threads = AsyncThreads(threads, hot)

    # -- item ids --------------------------------------------------------------------

    def _message_id(self, item: Mapping[str, Any]) -> str:
        """The record id of ``item`` (the dedup rule of the module docstring)."""
        kind = item.get("type")
        kind = kind if isinstance(kind, str) else ""
        call_id, item_id = item.get("call_id"), item.get("id")
        if kind.endswith("_output") and isinstance(call_id, str) and call_id:
            derived = f"out:{kind}:{call_id}"
        elif isinstance(item_id, str) and item_id and item_id != FAKE_RESPONSES_ID:
            derived = f"id:{item_id}"
        elif isinstance(call_id, str) and call_id:
            derived = f"call:{kind}:{call_id}"
        else:
            return f"new:{uuid.uuid4().hex}"
        try:
            return validate_message_id(derived, self.threads.hot.limits)
        except InvalidMessage:  # too long, or whitespace in a provider id: still stable
            return f"sha:{hashlib.sha256(derived.encode('utf-8', 'surrogatepass')).hexdigest()}"

    def _records(self, items: Sequence[TResponseInputItem]) -> list[Message]:
        if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
            raise InvalidSessionItem(
                f"add_items takes a list of items (dicts), got {type(items).__name__} "
                f"for session {self.session_id!r}"
            )
        records: list[Message] = []
        for position, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise InvalidSessionItem(
                    f"item {position} of add_items for session {self.session_id!r} is a "
                    f"{type(item).__name__}, not a dict; nothing was written: pass "
                    "Responses input items such as {'role': 'user', 'content': ...}"
                )
            body = cast(Any, item)
            records.append({"id": self._message_id(item), "body": body})
        return records

    # -- the Session protocol ------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The latest ``limit`` items (default ``session_settings.limit``; None: all) in
        chronological order; ``[]`` for ``limit <= 0`` or a session never written."""
        wanted = resolve_session_limit(limit, self.session_settings)
        if wanted is not None and wanted <= 0:
            return []
        try:
            if wanted is None:
                records = await self.threads.load(self.session_id)
            else:
                records = await self.threads.tail(self.session_id, wanted)
        except ThreadNotFound:
            return []
        return [cast(TResponseInputItem, record["body"]) for record in records]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items`` in order, each exactly once by its derived id; a session in
        no tier is created. Bad input raises ``InvalidSessionItem`` (``InvalidMessage``)
        before anything is written."""
        records = self._records(items)
        if not records:
            return
        step = self.threads.hot.limits.max_batch
        if len(records) > step:  # several appends: refuse a bad item before the first
            try:
                encode_batch(records, self.threads.hot.limits, whole_thread=True)
            except InvalidMessage as exc:
                raise InvalidSessionItem(str(exc)) from exc
        for first in range(0, len(records), step):
            await _settled(self._append(records[first : first + step]))

    async def _append(self, records: list[Message]) -> None:
        for _ in range(_ATTEMPTS):
            try:
                await self.threads.append(self.session_id, records)
                return
            except InvalidMessage as exc:
                raise InvalidSessionItem(str(exc)) from exc
            except ThreadNotFound:  # in no tier: the first write creates it
                await self.threads.ensure(self.session_id)
        await self.threads.append(self.session_id, records)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the latest item (None if the session is empty); its id is
        forgotten, so adding it again stores it again."""
        try:
            result = await _settled(self.threads.pop(self.session_id))
        except ThreadNotFound:
            return None
        return None if result.record is None else cast(TResponseInputItem, result.record["body"])

    async def clear_session(self) -> None:
        """Delete the session from both tiers (a tombstone keeps any archive read before
        the delete from coming back); the next ``add_items`` starts it afresh."""
        await _settled(self.threads.delete(self.session_id))
