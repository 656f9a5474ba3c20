"""What a namespace holds: hot threads by last activity (``ls``) and the counts of both
tiers (``stats``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.errors import AgentThreadsError, ThreadNotFound
from storage.results import ThreadInfo
from storage.tiered import Threads

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
