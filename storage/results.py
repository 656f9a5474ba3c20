"""Typed results of hot-tier operations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.archive import Layout
from storage.records import Message
from storage.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append did. ``skipped_ids`` lists every input occurrence not appended:
    ids the ledger already held and repeats within the batch, in input order."""

    appended_ids: tuple[str, ...]
    skipped_ids: tuple[str, ...]
    length: int
    version: int
    index_due: bool = True
    """The activity index should record this append (its entry is older than
    ``HotStore.activity_refresh_ms``); ``Threads.append`` then marks the thread."""


@dataclass(frozen=True, slots=True)
class UpsertResult:
    """What an upsert did to each record of the batch, in input order: appended (a new
    id), replaced (a ``replace`` id whose record differed) or unchanged (a known id
    not to replace, an identical record, or a retired id)."""

    appended_ids: tuple[str, ...]
    replaced_ids: tuple[str, ...]
    unchanged_ids: tuple[str, ...]
    length: int
    version: int
    index_due: bool = True
    """As ``AppendResult.index_due``."""


@dataclass(frozen=True, slots=True)
class ForkResult:
    """``created`` is False when the fork already existed (a repeated call)."""

    created: bool
    length: int
    version: int


@dataclass(frozen=True, slots=True)
class TruncateResult:
    """``removed_ids`` is empty when the id was not (or no longer) in the thread."""

    removed_ids: tuple[str, ...]
    length: int
    version: int


@dataclass(frozen=True, slots=True)
class PopResult:
    """What a pop removed: the thread's last record (its id may be appended again), or
    None when the thread was empty (nothing changed)."""

    record: Message | None
    length: int
    version: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Result of ``replace_all``; ``changed`` is False when the list was identical."""

    changed: bool
    length: int
    version: int


@dataclass(frozen=True, slots=True)
class StateResult:
    """Result of ``save_state``; ``changed`` is False when the state was identical."""

    changed: bool
    version: int


@dataclass(frozen=True, slots=True)
class Lease:
    """``finished``: this owner's turn already ended, so nothing was acquired (a late
    duplicate of a finished turn must not block the thread)."""

    owner: str
    ttl_ms: int
    renewed: bool
    finished: bool = False


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """One consistent view of a hot thread's metadata."""

    thread_id: str
    length: int
    version: int
    created_ms: int
    updated_ms: int
    parent: str | None
    fork_point: str | None
    cold_version: int | None
    cold_etag: str | None
    creator: str | None
    epoch: str
    lease_owner: str | None
    lease_ttl_ms: int | None
    ttl_ms: int | None
    last_merge: dict[str, Any] | None = None
    """The last merge of a hot copy that had diverged from its archive (a Redis
    rollback), see ``storage.lineage``; None if there was none."""
    """Milliseconds until the hot copy expires; None when it has no expiry."""


@dataclass(frozen=True, slots=True)
class FlushSource:
    """What a flush read from the hot tier in one consistent step."""

    version: int
    epoch: str
    cold_version: int | None
    cold_etag: str | None
    snapshot: Snapshot | None
    """The metadata and state, without records (``HotStore.read_records`` reads them);
    None when the archive already holds this version (nothing to upload)."""
    length: int = 0
    turns: tuple[tuple[str, int], ...] = ()
    """Finished turns recorded after the archive's base, with the version of each."""
    rewrites: str = "0"
    """Meta 'rewrites' at the read: changes whenever the list changes other than at its end."""
    cold_len: int | None = None
    """How many leading records the archive already holds (None: unknown, write a base)."""
    layout: Layout | None = None
    """The parts of the archive ``cold_etag`` names (None: schema 1 or none)."""


@dataclass(frozen=True, slots=True)
class FlushCommit:
    """``outcome``: "evicted", "kept" (a write raced the upload or a lease is held) or
    "gone" (the thread was deleted or replaced while uploading)."""

    outcome: str
    version: int
    lease_owner: str | None


@dataclass(frozen=True, slots=True)
class FlushResult:
    """``status``: "archived" (uploaded), "unchanged" (archive was current), "merged"
    (the hot copy had diverged from its archive, e.g. after a Redis rollback: the
    union of both was archived, see ``storage.lineage``) or "absent"."""

    status: str
    version: int | None = None
    etag: str | None = None
    evicted: bool = False
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class HydrateResult:
    """``status``: "hot" (already hot; nothing done), "restored" or "absent" (in no tier)."""

    status: str
    version: int | None = None
    length: int | None = None


@dataclass(frozen=True, slots=True)
class IdleFlushReport:
    """What ``Threads.flush_idle`` did with the idle candidates it found."""

    candidates: int
    evicted: tuple[str, ...]
    """Archived (if changed) and removed from Redis, or already gone."""
    kept: tuple[str, ...]
    """Still hot: a turn holds the lease, or the thread was written meanwhile."""
    failed: tuple[str, ...]
    """``"<thread id>: <error>"`` for flushes that failed; retried after a backoff."""
    locked: bool = False
    """Another ``flush_idle`` of this namespace was running: this one did nothing."""


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """One bounded run of ``HotStore.reconcile_activity``."""

    scanned: int
    """Keys the SCAN looked at (meta keys and others)."""
    reindexed: int
    """Hot threads that had no index entry and got one (their meta ``updated``)."""
    wrapped: bool
    """Every node's SCAN finished a full pass in this run (the cursor came back to 0)."""
    legacy_migrated: int = 0
    """Entries moved from the single pre-shard index (``ns:activity``) in this run."""
