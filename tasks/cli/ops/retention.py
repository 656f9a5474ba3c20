"""Cold-tier retention (``cold-prune``): delete old archives, never those of threads in use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from storage.cold import ColdObject
from storage.tiered import Threads


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
