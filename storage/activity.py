"""The activity index: which threads are hot and when each was last active.

One ZSET per shard (``KeyLayout.activity_shards``), outside the threads' slots, so
writing it is a second round trip after a thread's own script. It is therefore
kept *eventually* right, with three rules that keep a hot thread findable by the
idle flusher whatever interleaves between those round trips:

* marks only move forward (``ZADD GT``): a late, slow writer never makes a busy
  thread look idle;
* a thread is forgotten only if it is really gone: remove, then check its meta key,
  and put it back if it exists (a flush that evicted it raced a hydrate);
* a bounded SCAN on the beat (``reconcile``) re-indexes hot threads a crash left
  out of the index (between a write and its mark).
"""

from __future__ import annotations

import contextlib
import heapq
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from storage.calls import script_source
from storage.errors import HotStoreFull
from storage.keys import KeyLayout
from storage.results import ReconcileReport

RedisCall = Callable[[Callable[[], Any], str], Any]
_DONE = "done"
"""A node's reconciler cursor once it finished the current pass."""


def now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class ActivityIndex:
    """The sharded activity index of one namespace (see the module docstring).

    ``call`` runs one Redis action and translates connection and ACL errors into
    the storage errors (``HotStore._redis_call``)."""

    def __init__(
        self, client: redis.Redis | redis.RedisCluster, layout: KeyLayout, call: RedisCall
    ) -> None:
        self.redis = client
        self.layout = layout
        self._call = call
        self._release = client.register_script(script_source("release_lock"))

    def _best_effort(self, action: Callable[[], Any], what: str) -> None:
        """An index write that a full Redis (``HotStoreFull``) may refuse: the index is
        repaired by the reconciler, and refusing it must not stop an idle flush from
        freeing memory."""
        with contextlib.suppress(HotStoreFull):
            self._call(action, what)

    def _pipeline(self) -> Any:
        # not transactional: on Redis Cluster the shards are in different slots
        return self.redis.pipeline(transaction=False)

    # -- writes --------------------------------------------------------------------

    def mark(self, thread_id: str, at_ms: int | None = None) -> None:
        """Record activity at ``at_ms`` (now by default), never moving a score back."""
        at = now_ms() if at_ms is None else int(at_ms)
        shard = self.layout.activity_of(thread_id)
        self._best_effort(lambda: self.redis.zadd(shard, {thread_id: at}, gt=True), "mark_active")

    def forget(self, thread_id: str) -> None:
        """Drop the thread's entry unless it is hot: remove, then re-add it (now) if its
        meta key exists, so a flush's late removal never erases a thread that another
        worker restored meanwhile (that worker's mark may have landed before it)."""
        shard = self.layout.activity_of(thread_id)
        meta = self.layout.thread(thread_id).meta

        def forget() -> None:
            self.redis.zrem(shard, thread_id)
            if self.redis.exists(meta):
                self.redis.zadd(shard, {thread_id: now_ms()}, gt=True)

        self._best_effort(forget, "forget_activity")

    def push_back(self, thread_ids: list[str], at_ms: int) -> None:
        """Move the entries of ``thread_ids`` forward to ``at_ms`` if they still exist:
        a claim of an idle flush in flight, or the backoff of one that failed."""
        if not thread_ids:
            return

        def push() -> None:
            pipe = self._pipeline()
            for thread_id in thread_ids:
                pipe.zadd(self.layout.activity_of(thread_id), {thread_id: at_ms}, xx=True, gt=True)
            pipe.execute()

        self._best_effort(push, "push_back")

    # -- reads ---------------------------------------------------------------------

    def idle(self, idle_ms: int, limit: int) -> list[tuple[str, int]]:
        """Entries older than ``idle_ms``, oldest first, at most ``limit`` (all shards)."""
        cutoff = now_ms() - idle_ms

        def read() -> list[Any]:
            pipe = self._pipeline()
            for shard in self.layout.activity_shards:
                pipe.zrangebyscore(shard, "-inf", cutoff, start=0, num=limit, withscores=True)
            result: list[Any] = pipe.execute()
            return result

        per_shard = self._call(read, "idle_threads")
        merged = heapq.merge(*per_shard, key=lambda item: item[1])
        return [(_text(t), int(s)) for t, s in list(merged)[:limit]]

    def active(self, limit: int) -> list[tuple[str, int]]:
        """The most recent entries, newest first, at most ``limit`` (all shards)."""

        def read() -> list[Any]:
            pipe = self._pipeline()
            for shard in self.layout.activity_shards:
                pipe.zrevrange(shard, 0, limit - 1, withscores=True)
            result: list[Any] = pipe.execute()
            return result

        per_shard = self._call(read, "active_threads")
        merged = heapq.merge(*per_shard, key=lambda item: -item[1])
        return [(_text(t), int(s)) for t, s in list(merged)[:limit]]

    def count(self) -> int:
        def read() -> list[Any]:
            pipe = self._pipeline()
            for shard in self.layout.activity_shards:
                pipe.zcard(shard)
            result: list[Any] = pipe.execute()
            return result

        return sum(int(n) for n in self._call(read, "activity_count"))

    # -- the singleton lock of flush_idle ----------------------------------------

    def lock(self, ttl_ms: int) -> str | None:
        """Take the namespace's idle-flush lock for ``ttl_ms``; its token, or None if
        another flush_idle holds it. A full Redis refuses the lock: then "" (go on
        without it: two idle flushes at once are harmless, one that cannot run to free
        memory is not)."""
        token = uuid.uuid4().hex
        key = self.layout.idle_flush_lock
        try:
            taken = self._call(lambda: self.redis.set(key, token, nx=True, px=ttl_ms), "lock")
        except HotStoreFull:
            return ""
        return token if taken else None

    def unlock(self, token: str) -> bool:
        if not token:  # taken without a lock (see ``lock``)
            return False
        key = self.layout.idle_flush_lock
        return bool(self._call(lambda: self._release(keys=[key], args=[token]), "unlock"))

    # -- the reconciler ----------------------------------------------------------

    def reconcile(self, max_keys: int) -> ReconcileReport:
        """Re-index hot threads missing from the index: SCAN every primary for meta keys
        from a cursor kept in Redis, about ``max_keys`` keys per run over all nodes."""
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        migrated = self._migrate_legacy(max_keys)
        cursor_key = self.layout.activity_cursor
        nodes = self._nodes()
        cursors = self._call(lambda: self.redis.hgetall(cursor_key), "reconcile_activity")
        cursors = {_text(k): _text(v) for k, v in cursors.items()}
        # A pass covers every primary: a node that finished its pass waits ("done")
        # until all have, so nodes of different sizes still complete one pass together.
        pending = [(name, node) for name, node in nodes if cursors.get(name) != _DONE]
        budget = max(1, math.ceil(max_keys / max(1, len(pending))))
        scanned = reindexed = 0
        for name, node in pending:
            start = int(cursors.get(name) or 0)
            seen, added, done = self._reconcile_node(name, node, start, budget)
            scanned, reindexed = scanned + seen, reindexed + added
            if done:
                cursors[name] = _DONE
        wrapped = all(cursors.get(name) == _DONE for name, _ in nodes)
        if wrapped:  # the next run starts a new pass
            self._call(lambda: self.redis.delete(cursor_key), "reconcile_activity")
        return ReconcileReport(scanned, reindexed, wrapped, migrated)

    def _nodes(self) -> list[tuple[str, Any]]:
        if isinstance(self.redis, redis.RedisCluster):
            primaries: list[Any] = self.redis.get_primaries()  # type: ignore[no-untyped-call]
            return [(node.name, node) for node in primaries]
        return [("redis", None)]

    def _scan(self, node: Any, cursor: int, count: int) -> tuple[int, list[Any]]:
        match = self.layout.meta_pattern
        if node is None:
            reply: Any = self.redis.scan(cursor, match=match, count=count)
        else:
            reply = self.redis.scan(cursor, match=match, count=count, target_nodes=node)
        next_cursor, keys = reply
        if isinstance(next_cursor, dict):  # RedisCluster: {node name: cursor}
            next_cursor = next(iter(next_cursor.values()))
        return int(next_cursor), list(keys)

    def _reconcile_node(
        self, name: str, node: Any, start: int, budget: int
    ) -> tuple[int, int, bool]:
        """Scan one node from cursor ``start`` for about ``budget`` keys; (keys scanned,
        re-indexed, whether its pass is complete)."""
        cursor_key = self.layout.activity_cursor

        def run() -> tuple[int, int, bool]:
            cursor = start
            scanned = reindexed = 0
            while True:
                count = min(1000, budget - scanned)
                cursor, keys = self._scan(node, cursor, count)
                scanned += count
                reindexed += self._reindex(keys)
                if cursor == 0 or scanned >= budget:
                    break
            self.redis.hset(cursor_key, name, _DONE if cursor == 0 else cursor)
            return scanned, reindexed, cursor == 0

        result: tuple[int, int, bool] = self._call(run, "reconcile_activity")
        return result

    def _reindex(self, meta_keys: list[Any]) -> int:
        """Add the threads of ``meta_keys`` that have no entry, at their meta ``updated``."""
        tids = [t for t in map(self.layout.thread_id_of_meta, meta_keys) if t is not None]
        if not tids:
            return 0
        pipe = self._pipeline()
        for tid in tids:
            pipe.zscore(self.layout.activity_of(tid), tid)
            pipe.hget(self.layout.thread(tid).meta, "updated")
        replies = pipe.execute()
        missing = [
            (tid, int(updated or now_ms()))
            for tid, score, updated in zip(tids, replies[::2], replies[1::2], strict=True)
            if score is None
        ]
        if missing:
            pipe = self._pipeline()
            for tid, at in missing:
                pipe.zadd(self.layout.activity_of(tid), {tid: at}, gt=True)
            pipe.execute()
        return len(missing)

    def _migrate_legacy(self, max_entries: int) -> int:
        """Move up to ``max_entries`` entries of the pre-shard index into the shards
        (hot threads only, their old scores); the key disappears with its last entry."""
        legacy = self.layout.legacy_activity

        def run() -> int:
            entries: list[Any] = self.redis.zrange(legacy, 0, max_entries - 1, withscores=True)
            if not entries:
                return 0
            pipe = self._pipeline()
            for tid, _ in entries:
                pipe.exists(self.layout.thread(_text(tid)).meta)
            alive = pipe.execute()
            pipe = self._pipeline()
            for (tid, score), exists in zip(entries, alive, strict=True):
                if exists:
                    name = _text(tid)
                    pipe.zadd(self.layout.activity_of(name), {name: int(score)}, gt=True)
            pipe.zrem(legacy, *(tid for tid, _ in entries))
            pipe.execute()
            return len(entries)

        migrated: int = self._call(run, "reconcile_activity")
        return migrated
