"""The hot tier for asyncio code: ``AsyncHotStore`` and ``AsyncThreads``.

``AsyncHotStore`` runs the same Lua scripts as ``HotStore`` over ``redis.asyncio``
(a single Redis or ``redis.asyncio.cluster.RedisCluster``), through the same calls
(storage/calls.py): each method builds the call, awaits the script, parses the reply,
so both stores validate, refuse and answer alike, and translate redis errors into the
same typed errors (``HotStoreUnavailable`` etc.).

``AsyncThreads`` is ``Threads`` for asyncio code: the hot path on an ``AsyncHotStore``;
a thread that is only in the cold tier is hydrated by the sync ``Threads`` in a worker
thread (``asyncio.to_thread``: boto3 has no asyncio client), then the call runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from storage.calls import (
    ACTIVITY_REFRESH_MS,
    DEFAULT_TTL_SECONDS,
    SCRIPT_NAMES,
    HotCalls,
    OnHotCalls,
    RangeRead,
    ScriptCall,
    redis_error,
    script_source,
)
from storage.errors import HotStoreFull, ThreadExists, ThreadNotFound
from storage.hot import HotStore
from storage.limits import DEFAULT_LIMITS, Limits
from storage.records import Message
from storage.results import (
    AppendResult,
    HydrateResult,
    Lease,
    PopResult,
    StateResult,
    ThreadInfo,
    TruncateResult,
    UpsertResult,
)
from storage.tiered import _TIER_ATTEMPTS, OpenMode, Threads

T = TypeVar("T")
AsyncRedisClient: TypeAlias = "aioredis.Redis | RedisCluster"


class AsyncHotStore(OnHotCalls):
    """``HotStore``'s operations on threads for asyncio code (see the module docstring).

    ``redis`` is a ``redis.asyncio`` client (``Redis`` or ``RedisCluster``); the
    settings are ``HotStore``'s. Beside a ``HotStore`` on the same Redis, build it with
    ``AsyncHotStore.like(hot, redis)``: it then shares that store's settings, among
    them ``keep_unarchived``, which ``Threads`` turns on (an async write must not put
    a TTL on a thread its archive does not hold).
    """

    def __init__(
        self,
        redis: AsyncRedisClient,
        *,
        namespace: str = "at",
        ttl_seconds: int | None = DEFAULT_TTL_SECONDS,
        limits: Limits = DEFAULT_LIMITS,
        archive_marker_ttl_seconds: int = 3600,
        keep_unarchived: bool = False,
        activity_refresh_ms: int = ACTIVITY_REFRESH_MS,
    ) -> None:
        calls = HotCalls(
            namespace=namespace,
            ttl_seconds=ttl_seconds,
            limits=limits,
            archive_marker_ttl_seconds=archive_marker_ttl_seconds,
            keep_unarchived=keep_unarchived,
            activity_refresh_ms=activity_refresh_ms,
        )
        self._bind(redis, calls)

    @classmethod
    def like(cls, hot: HotStore, redis: AsyncRedisClient) -> AsyncHotStore:
        """An asyncio store over ``redis`` that shares ``hot``'s settings (one
        ``HotCalls``): the same namespace, limits, TTL rule and activity refresh."""
        store = cls.__new__(cls)
        store._bind(redis, hot.calls)
        return store

    def _bind(self, redis: AsyncRedisClient, calls: HotCalls) -> None:
        self.redis = redis
        self.calls = calls
        # a standalone Redis runs a script over keys of any slot: append marks the index
        self._index_in_script = not isinstance(redis, RedisCluster)
        # registering computes each script's SHA only; the first call loads it
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }

    async def _redis(self, action: Awaitable[T], what: str) -> T:
        """Await ``action``, turning what redis-py raises into typed errors."""
        try:
            return await action
        except RedisError as exc:
            typed = redis_error(exc, what, self.namespace)
            if typed is None:
                raise
            raise typed from exc

    async def _run(self, call: ScriptCall[T]) -> T:
        """Run one script call built by ``self.calls`` and parse its reply (AsyncScript
        loads the script again if the server does not know it)."""
        script = self._scripts[call.script]
        reply = await self._redis(script(keys=call.keys, args=call.args), call.script)
        return call.parse(reply)

    async def _range(self, read: RangeRead) -> list[Message]:
        """A range of records with the existence check in one MULTI/EXEC (as
        ``HotStore.load``: not a script, which copies every record through Lua)."""

        async def transaction() -> list[Any]:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.exists(read.meta)
                pipe.lrange(read.msgs, read.start, read.stop)
                result: list[Any] = await pipe.execute()
                return result

        exists, records = await self._redis(transaction(), "load")
        return read.parse(exists, records)

    # -- lifecycle ---------------------------------------------------------------

    async def create(
        self,
        thread_id: str,
        state: Mapping[str, Any] | None = None,
        *,
        creator: str | None = None,
    ) -> bool:
        """``HotStore.create``: True if created, False if it already existed."""
        return await self._run(self.calls.create(thread_id, state, creator))

    async def exists(self, thread_id: str) -> bool:
        """Whether the thread is hot."""
        meta = self.keys(thread_id).meta
        return bool(await self._redis(self.redis.exists(meta), "exists"))

    async def delete(
        self, thread_id: str, *, tombstone: bool = True, archived: bool = False
    ) -> bool:
        """``HotStore.delete``: the hot keys only (``AsyncThreads.delete``: both tiers)."""
        return await self._run(self.calls.delete(thread_id, tombstone, archived))

    # -- messages ----------------------------------------------------------------

    async def append(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        owner: str | None = None,
        index: bool = False,
    ) -> AppendResult:
        """``HotStore.append``: exactly once per message id, one script."""
        in_script = index and self._index_in_script
        result = await self._run(self.calls.append(thread_id, messages, owner, in_script))
        if result.index_due and index and not self._index_in_script:
            await self.mark_active(thread_id)
        return result

    async def upsert(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        replace: Collection[str] = (),
        index: bool = False,
    ) -> UpsertResult:
        """``HotStore.upsert``: new ids appended, ids in ``replace`` replaced in place."""
        in_script = index and self._index_in_script
        result = await self._run(self.calls.upsert(thread_id, messages, replace, in_script))
        if result.index_due and index and not self._index_in_script:
            await self.mark_active(thread_id)
        return result

    async def truncate_from(
        self, thread_id: str, message_id: str, *, owner: str | None = None
    ) -> TruncateResult:
        """``HotStore.truncate_from``: drop that message and everything after it."""
        return await self._run(self.calls.truncate(thread_id, message_id, owner))

    async def pop(self, thread_id: str, *, owner: str | None = None) -> PopResult:
        """``HotStore.pop``: remove and return the last record (its id may come again)."""
        return await self._run(self.calls.pop(thread_id, owner))

    # -- reads -------------------------------------------------------------------

    async def load(self, thread_id: str, start: int = 0, stop: int = -1) -> list[Message]:
        """Records from ``start`` to ``stop`` inclusive (negative counts from the end)."""
        return await self._range(self.calls.load(thread_id, start, stop))

    async def tail(self, thread_id: str, n: int) -> list[Message]:
        """The last ``n`` records."""
        read = self.calls.tail(thread_id, n)
        return await (self._range(read) if isinstance(read, RangeRead) else self._run(read))

    async def get(self, thread_id: str, ids: Sequence[str]) -> dict[str, Message]:
        """The records with these ids that the thread holds (through the ledger)."""
        return await self._run(self.calls.get(thread_id, ids))

    async def info(self, thread_id: str) -> ThreadInfo:
        return await self._run(self.calls.info(thread_id))

    async def length(self, thread_id: str) -> int:
        return (await self.info(thread_id)).length

    async def version(self, thread_id: str) -> int:
        return (await self.info(thread_id)).version

    # -- state and lease -----------------------------------------------------------

    async def save_state(self, thread_id: str, state: Mapping[str, Any]) -> StateResult:
        return await self._run(self.calls.save_state(thread_id, state))

    async def load_state(self, thread_id: str) -> dict[str, Any]:
        return await self._run(self.calls.load_state(thread_id))

    async def acquire_lease(self, thread_id: str, owner: str, ttl_ms: int) -> Lease:
        return await self._run(self.calls.acquire_lease(thread_id, owner, ttl_ms))

    async def release_lease(self, thread_id: str, owner: str) -> bool:
        return await self._run(self.calls.release_lease(thread_id, owner))

    # -- the activity index (storage/activity.py) ----------------------------------

    async def mark_active(self, thread_id: str, at_ms: int | None = None) -> None:
        """``ActivityIndex.mark``: a score never moves back; a full Redis may refuse it
        (the reconciler repairs the index)."""
        shard = self.layout.activity_of(self.keys(thread_id).thread_id)
        at = int(time.time() * 1000) if at_ms is None else int(at_ms)
        with contextlib.suppress(HotStoreFull):
            await self._redis(self.redis.zadd(shard, {thread_id: at}, gt=True), "mark_active")


class AsyncThreads:
    """Tiered threads for asyncio code (see the module docstring):
    ``AsyncThreads(threads, AsyncHotStore.like(threads.hot, async_redis))``."""

    def __init__(self, threads: Threads, hot: AsyncHotStore) -> None:
        if hot.namespace != threads.hot.namespace or hot.limits != threads.hot.limits:
            raise ValueError(
                f"the asyncio store (namespace {hot.namespace!r}) and the Threads' hot store "
                f"(namespace {threads.hot.namespace!r}) differ in namespace or limits: build "
                "it with AsyncHotStore.like(threads.hot, async_redis)"
            )
        # With a cold tier, Redis never expires a write the archive does not hold.
        hot.calls.keep_unarchived = True
        self.threads = threads
        self.hot = hot

    async def _hot(self, thread_id: str, action: Callable[[], Awaitable[T]]) -> T:
        """``Threads._hot`` for asyncio: run a hot-tier action; if the thread is only
        cold, hydrate it (pinned, in a worker thread) and run it again."""
        for _ in range(_TIER_ATTEMPTS):
            try:
                return await action()
            except ThreadNotFound:
                pin = self.threads.write_pin_ms
                if (await self.hydrate(thread_id, pin_ms=pin)).status == "absent":
                    raise
        return await action()

    # -- cold-tier work, in a worker thread ------------------------------------------

    async def hydrate(self, thread_id: str, *, pin_ms: int = 0) -> HydrateResult:
        return await asyncio.to_thread(self.threads.hydrate, thread_id, pin_ms=pin_ms)

    async def open(self, thread_id: str, mode: OpenMode = "continue", **options: Any) -> str:
        """``Threads.open``."""
        return await asyncio.to_thread(self.threads.open, thread_id, mode, **options)

    async def delete(self, thread_id: str) -> bool:
        """Delete the thread from both tiers (a tombstone keeps it deleted)."""
        return await asyncio.to_thread(self.threads.delete, thread_id)

    async def ensure(self, thread_id: str) -> str:
        """Make the thread hot, creating it if it is in no tier: "hot", "restored" or
        "created". Safe to race: a concurrent creator's thread is used as it is."""
        for _ in range(_TIER_ATTEMPTS):
            status = (await self.hydrate(thread_id, pin_ms=self.threads.write_pin_ms)).status
            if status != "absent":
                return status
            with contextlib.suppress(ThreadExists):  # created or restored meanwhile: hydrate
                return await self.open(thread_id, "new")
        raise ThreadExists(thread_id, "it kept being created and evicted; retry")

    # -- the hot path ------------------------------------------------------------------

    async def append(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        owner: str | None = None,
    ) -> AppendResult:
        """``Threads.append``: exactly once per id, the activity index in the script."""
        batch = list(messages)
        return await self._hot(
            thread_id, lambda: self.hot.append(thread_id, batch, owner=owner, index=True)
        )

    async def upsert(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        replace: Collection[str] = (),
    ) -> UpsertResult:
        """``Threads.upsert``."""
        batch = list(messages)
        return await self._hot(
            thread_id, lambda: self.hot.upsert(thread_id, batch, replace=replace, index=True)
        )

    async def pop(self, thread_id: str, *, owner: str | None = None) -> PopResult:
        """``Threads.pop``: remove and return the last record."""
        result = await self._hot(thread_id, lambda: self.hot.pop(thread_id, owner=owner))
        if result.record is not None:
            await self.hot.mark_active(thread_id)
        return result

    async def truncate_from(
        self, thread_id: str, message_id: str, *, owner: str | None = None
    ) -> TruncateResult:
        result = await self._hot(
            thread_id, lambda: self.hot.truncate_from(thread_id, message_id, owner=owner)
        )
        await self.hot.mark_active(thread_id)
        return result

    async def load(self, thread_id: str, start: int = 0, stop: int = -1) -> list[Message]:
        return await self._hot(thread_id, lambda: self.hot.load(thread_id, start, stop))

    async def tail(self, thread_id: str, n: int) -> list[Message]:
        return await self._hot(thread_id, lambda: self.hot.tail(thread_id, n))

    async def get(self, thread_id: str, ids: Iterable[str]) -> dict[str, Message]:
        wanted = list(ids)
        return await self._hot(thread_id, lambda: self.hot.get(thread_id, wanted))

    async def info(self, thread_id: str) -> ThreadInfo:
        return await self._hot(thread_id, lambda: self.hot.info(thread_id))
