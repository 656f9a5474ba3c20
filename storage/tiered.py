"""Threads: one API over the hot tier (Redis) and the cold tier (S3 or files).

The lifecycle of a thread between agent turns: ``flush`` archives it after a
turn and frees Redis; ``hydrate`` restores it before the next turn. Neither may
lose a write that races it:

* flush reads the thread's metadata and version in one script and then only the
  records appended since its archive, in chunks (a rewrite in between is detected
  and read again); it uploads them as one segment and the manifest with
  compare-and-swap (``If-Match`` the etag it last recorded, ``If-None-Match``
  for a first archive; ``storage.archive``) and then evicts in one script *only
  if* the version is still the archived one and no lease is held. An append that lands during the
  upload bumps the version, so the thread stays hot and the next flush
  archives it: nothing is ever deleted that was not archived.
* a stale flush (an older version, e.g. a redelivered task) loses the CAS,
  re-reads the archive, sees a newer version of its own hot copy's history there
  and uploads nothing: the archive never goes back in time. An archive the hot
  copy does not descend from (a Redis rollback) is never overwritten: both are
  merged by message id (``storage.lineage``).
* a delete or prune leaves a tombstone that restores respect, so a hydrate that
  read the archive before it cannot bring the thread back.
* with a cold tier, Redis never expires a thread that is ahead of its archive.
* hydrate restores in one script (large threads are staged in chunks and
  swapped in by that script). If the thread is already hot, nothing happens;
  if the snapshot it read is older than the one this Redis last evicted (the
  hydrate raced a whole hydrate-append-flush cycle), it reads again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from storage.archive import (
    GC_DELAY_MS,
    Layout,
    decode_object,
    plan,
    write_base,
    write_segment,
)
from storage.cold import ColdStore
from storage.errors import (
    AgentThreadsError,
    ColdStoreConflict,
    ColdStoreUnavailable,
    ListRewritten,
    SnapshotCorrupt,
    ThreadExists,
    ThreadNotFound,
)
from storage.hot import ForkTransform, HotStore
from storage.lineage import merge
from storage.records import Message
from storage.results import (
    AppendResult,
    FlushResult,
    FlushSource,
    ForkResult,
    HydrateResult,
    IdleFlushReport,
    Lease,
    PopResult,
    TruncateResult,
    UpsertResult,
    WriteResult,
)
from storage.snapshot import Snapshot
from storage.turns import TurnStore

T = TypeVar("T")
OpenMode = Literal["new", "continue", "fork"]

_CAS_ATTEMPTS = 8
_HYDRATE_ATTEMPTS = 5
_READ_ATTEMPTS = 5
_TIER_ATTEMPTS = 20
WRITE_PIN_MS = 1000
"""Default ``write_pin_ms``: a thread hydrated in order to read or write it is not
evicted for this long, so a flush racing that access cannot evict it again and
again before the access lands."""
IDLE_FAILURE_BACKOFF_SECONDS = 60.0
"""Default backoff of a thread whose idle flush failed: it is tried again that much
later instead of staying at the head of the index."""
IDLE_FLUSH_LOCK_SECONDS = 600.0
"""Default expiry of the idle-flush lock (a crashed holder frees it after this)."""


@dataclass(frozen=True, slots=True)
class Upload:
    """What ``Threads._upload`` left in the cold tier: the archive's etag and version,
    the bytes uploaded (0: the archive already held it), and the merged snapshot when
    the hot copy had diverged from the archive."""

    etag: str
    version: int
    size: int
    merged: Snapshot | None
    gone: bool = False
    """The thread was deleted while it was being flushed: nothing was uploaded."""
    layout: Layout | None = None
    """The parts of the archive ``etag`` names (None: schema 1)."""
    collect: tuple[str, ...] = ()
    """Parts to delete once the flush is recorded (their safety delay is over)."""


class Threads:
    """Tiered threads: ``Threads(HotStore(redis), S3ColdStore(...))``."""

    def __init__(
        self,
        hot: HotStore,
        cold: ColdStore,
        *,
        restore_chunk: int = 2000,
        write_pin_ms: int = WRITE_PIN_MS,
        part_gc_delay_seconds: float = GC_DELAY_MS / 1000,
    ) -> None:
        cold_namespace = getattr(cold, "namespace", None)
        if cold_namespace is not None and cold_namespace != hot.namespace:
            raise ValueError(
                f"the cold store keys archives of namespace {cold_namespace!r} but the hot "
                f"store is namespace {hot.namespace!r}: give both the same namespace"
            )
        # With a cold tier, Redis never expires a write the archive does not hold.
        hot.keep_unarchived = True
        self.hot = hot
        self.cold = cold
        self.restore_chunk = restore_chunk
        self.write_pin_ms = write_pin_ms
        self.part_gc_delay_ms = int(part_gc_delay_seconds * 1000)
        """How long an archive part no manifest references any more is kept (a hydrate
        that read the previous manifest may still fetch it)."""
        self.turns = TurnStore(hot)
        """The turn records (``storage/turns.py``), in the hot tier beside each thread."""

    # -- hot <-> cold ----------------------------------------------------------

    def hydrate(self, thread_id: str, *, pin_ms: int = 0) -> HydrateResult:
        """Make the thread hot: "hot" (it was), "restored" or "absent" (in no tier).

        Idempotent and safe to run concurrently: exactly one restore wins, the
        others see the thread hot. A corrupt snapshot raises ``SnapshotCorrupt``
        and nothing is applied. ``pin_ms`` keeps a restored thread from being
        evicted that long (used when hydrating in order to write).
        """
        for _ in range(_HYDRATE_ATTEMPTS):
            if self.hot.exists(thread_id):
                return HydrateResult("hot")
            found = self.cold.read(thread_id)
            if found is None:
                # Another hydrate may have restored it (and a flush removed the
                # archive's need) between our two reads: check hot once more.
                return HydrateResult("hot" if self.hot.exists(thread_id) else "absent")
            snapshot, etag = found
            self._check_namespace(snapshot)
            outcome = self.hot.restore(snapshot, etag, chunk_size=self.restore_chunk, pin_ms=pin_ms)
            if outcome == "restored":
                self.hot.mark_active(thread_id)
                return HydrateResult("restored", snapshot.version, len(snapshot.records))
            if outcome == "hot":
                return HydrateResult("hot")
            if outcome == "deleted":  # read before a delete or prune: it stays deleted
                return HydrateResult("absent")
            # "stale" or "incomplete": read the archive again
        raise ColdStoreUnavailable(
            f"hydrate of thread {thread_id!r} kept racing newer archives; retry later"
        )

    def flush(
        self,
        thread_id: str,
        *,
        evict: bool = True,
        release_owner: str | None = None,
    ) -> FlushResult:
        """Archive the thread if it changed since the last archive; then evict it
        from Redis if that is safe (see the module docstring).

        ``release_owner`` releases that owner's lease in the same step as the
        eviction check (the end of an agent turn).
        """
        for _ in range(_READ_ATTEMPTS - 1):
            try:
                return self._flush(thread_id, evict, release_owner)
            except ListRewritten:
                continue  # a truncate or replace landed between two chunks: read again
        return self._flush(thread_id, evict, release_owner)

    def _flush(self, thread_id: str, evict: bool, release_owner: str | None) -> FlushResult:
        try:
            source = self.hot.flush_source(thread_id, release_owner=release_owner)
        except ThreadNotFound:
            etag = self.cold.head(thread_id)  # already evicted: the archive is current
            return FlushResult("absent") if etag is None else FlushResult("unchanged", etag=etag)
        if source.snapshot is None:  # the archive already holds this version
            assert source.cold_etag is not None
            upload = Upload(source.cold_etag, source.version, 0, None)
            status = "unchanged"
        else:
            found = self._append_segment(source)
            if found is None:
                snapshot = self.hot.read_snapshot(thread_id, source)
                found = self._upload(snapshot, source.cold_etag, source.layout)
            upload = found
            if upload.gone:
                return FlushResult("absent")
            if upload.merged is not None:
                return self._rebase(source.snapshot, upload, evict, release_owner)
            status = "archived" if upload.size else "unchanged"
        etag, archived, size = upload.etag, upload.version, upload.size
        commit = self.hot.commit_flush(
            thread_id,
            version=archived,
            etag=etag,
            epoch=source.epoch,
            evict=evict,
            release_owner=release_owner,
            layout=upload.layout,
            rewrites=source.rewrites,
        )
        if commit.outcome == "gone" and size and self.cold.head(thread_id) == etag:
            # The thread was deleted (or re-created) while we uploaded: do not let
            # our upload resurrect it.
            self.cold.delete(thread_id)
            return FlushResult("absent")
        self._collect(thread_id, upload.collect)
        if commit.outcome == "evicted":
            self.hot.forget_activity(thread_id)
        return FlushResult(status, archived, etag, commit.outcome == "evicted", size)

    def _append_segment(self, source: FlushSource) -> Upload | None:
        """Archive only what was appended since the archive ``source`` knows: one
        segment and a manifest (``storage.archive.plan``). None when that cannot be
        done (no schema-2 archive, a rewrite since, a new base is due, or the manifest
        changed under us: the whole-snapshot path then sorts it out)."""
        layout, archived, etag = source.layout, source.cold_len, source.cold_etag
        header = source.snapshot
        if layout is None or archived is None or etag is None or header is None:
            return None
        if archived > source.length or layout.count != archived:
            return None
        thread_id = header.thread_id
        new, _, _ = self.hot.read_records(thread_id, source, archived)
        step = plan(layout, archived, source.length, sum(len(r) + 1 for r in new))
        if step.base:
            return None
        if step.start < archived:  # the new segment absorbs the last ones
            older, _, _ = self.hot.read_records(thread_id, source, step.start, stop=archived)
            new = older + new
        since = layout.parts[step.keep].version
        turns = [t for t, version in source.turns if version > since]
        try:
            written = write_segment(
                self.cold,
                header,
                new,
                turns,
                step,
                layout,
                etag,
                now_ms=_now_ms(),
                gc_delay_ms=self.part_gc_delay_ms,
            )
        except ColdStoreConflict:
            return None
        return Upload(
            written.etag,
            source.version,
            written.size,
            None,
            layout=written.layout,
            collect=written.collect,
        )

    def _collect(self, thread_id: str, names: tuple[str, ...]) -> None:
        """Delete parts whose safety delay is over. A failure leaves them for
        ``collect_parts`` (nothing references them)."""
        if names:
            with contextlib.suppress(AgentThreadsError):
                self.cold.delete_parts(thread_id, names)

    def collect_parts(self, thread_id: str, *, older_than_seconds: float | None = None) -> int:
        """Delete the thread's parts that its archive no longer references (a crash
        between an upload and its manifest, a failed deletion) and that are older than
        ``older_than_seconds`` (default ``part_gc_delay_seconds``, so a flush that is
        about to reference its new part, or a hydrate still reading an old manifest's,
        keeps it). Returns how many were deleted."""
        delay = self.part_gc_delay_ms / 1000 if older_than_seconds is None else older_than_seconds
        cutoff = time.time() - delay
        found = self.cold.read_object(thread_id)
        referenced: set[str] = set()
        if found is not None:
            decoded = decode_object(found[0], thread_id)
            if decoded.layout is not None:
                referenced = {p.name for p in decoded.layout.parts}
                referenced |= {g.name for g in decoded.layout.garbage if g.since_ms > cutoff * 1000}
        orphans = [
            p.name
            for p in self.cold.list_parts(thread_id)
            if p.name not in referenced and p.last_modified.timestamp() < cutoff
        ]
        if orphans:
            self.cold.delete_parts(thread_id, orphans)
        return len(orphans)

    def flush_idle(
        self,
        idle_seconds: float,
        *,
        limit: int = 1000,
        concurrency: int = 8,
        failure_backoff_seconds: float = IDLE_FAILURE_BACKOFF_SECONDS,
        lock_seconds: float = IDLE_FLUSH_LOCK_SECONDS,
    ) -> IdleFlushReport:
        """Flush (and evict) threads whose last activity is older than ``idle_seconds``,
        ``concurrency`` at a time.

        Candidates come from the namespace's activity index, never from a key scan.
        One run per namespace at a time: while another holds the lock this one does
        nothing (``locked``). A thread that stays hot (a turn holds its lease, or it
        was written to meanwhile) is kept; one that fails is retried after
        ``failure_backoff_seconds`` (see ``evict_idle``).
        """
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        with self.idle_flush_lock(lock_seconds) as held:
            if not held:
                return IdleFlushReport(0, (), (), (), locked=True)
            candidates = [t for t, _ in self.hot.idle_threads(int(idle_seconds * 1000), limit)]

            def one(thread_id: str) -> tuple[str, str]:
                try:
                    return self.evict_idle(
                        thread_id, idle_seconds, failure_backoff_seconds=failure_backoff_seconds
                    ), thread_id
                except AgentThreadsError as exc:
                    return "failed", f"{thread_id}: {exc}"

            with ThreadPoolExecutor(max_workers=min(concurrency, max(1, len(candidates)))) as pool:
                outcomes = list(pool.map(one, candidates))
        evicted = tuple(t for o, t in outcomes if o == "evicted")
        kept = tuple(t for o, t in outcomes if o == "kept")
        failed = tuple(t for o, t in outcomes if o == "failed")
        return IdleFlushReport(len(candidates), evicted, kept, failed)

    @contextlib.contextmanager
    def idle_flush_lock(self, seconds: float = IDLE_FLUSH_LOCK_SECONDS) -> Iterator[bool]:
        """The namespace's idle-flush singleton lock: yields whether it was taken (and
        releases it after, if it is still ours), so two beats never select at once."""
        token = self.hot.activity.lock(int(seconds * 1000))
        try:
            yield token is not None
        finally:
            if token is not None:
                self.hot.activity.unlock(token)

    def claim_idle(self, idle_seconds: float, limit: int, claim_seconds: float) -> list[str]:
        """Idle candidates, oldest first, each claimed for ``claim_seconds``: their index
        score moves forward so that a later selection (the next beat) skips them while
        their ``evict_idle`` is in flight, and retries them if it got lost. Call it
        holding ``idle_flush_lock``."""
        idle_ms = int(idle_seconds * 1000)
        chosen = [t for t, _ in self.hot.idle_threads(idle_ms, limit)]
        self.hot.activity.push_back(chosen, _now_ms() - idle_ms + int(claim_seconds * 1000))
        return chosen

    def evict_idle(
        self,
        thread_id: str,
        idle_seconds: float,
        *,
        failure_backoff_seconds: float = IDLE_FAILURE_BACKOFF_SECONDS,
    ) -> str:
        """Flush and evict one idle candidate: "evicted" (or already gone) or "kept".

        The index may lag the last write (``HotStore.activity_refresh_ms``), so a
        thread written within ``idle_seconds`` is re-marked at that write and kept
        (a write racing this check is safe: flush only evicts what it archived).
        A failure pushes the thread back by ``failure_backoff_seconds``, then raises.
        """
        idle_ms = int(idle_seconds * 1000)
        now = _now_ms()
        updated = self.hot.last_write_ms(thread_id)
        if updated is not None and updated > now - idle_ms:
            self.hot.mark_active(thread_id, updated)
            return "kept"
        try:
            result = self.flush(thread_id)
        except AgentThreadsError:
            backoff_ms = int(failure_backoff_seconds * 1000)
            self.hot.activity.push_back([thread_id], now - idle_ms + backoff_ms)
            raise
        if result.evicted:  # flush already dropped its index entry
            # an idle thread's archive is at rest: sweep parts a crash left unreferenced
            with contextlib.suppress(AgentThreadsError):
                self.collect_parts(thread_id)
            return "evicted"
        if result.status in ("absent", "unchanged") and not result.version:  # gone already
            self.hot.forget_activity(thread_id)
            return "evicted"
        self.hot.mark_active(thread_id)
        return "kept"

    def _upload(self, snapshot: Snapshot, if_match: str | None, previous: Layout | None) -> Upload:
        """CAS-upload ``snapshot`` (read from the hot copy, which knew the archive
        ``if_match``, laid out as ``previous``) as a new base.

        On a lost CAS the archive is read back. If the hot copy's own history made it
        (``HotStore.descends``: a concurrent or newer flush of this copy), an archive
        of this version or newer means nothing to upload; an older one is replaced.
        If the hot copy diverged from it (a Redis rollback), the archive is never
        overwritten: the merge of both (``storage.lineage.merge``) is uploaded against
        its etag instead, and returned as ``Upload.merged``.
        """
        hot_copy, merged = snapshot, None
        for _ in range(_CAS_ATTEMPTS):
            try:
                written = write_base(
                    self.cold,
                    snapshot,
                    if_match,
                    previous,
                    now_ms=_now_ms(),
                    gc_delay_ms=self.part_gc_delay_ms,
                )
                return Upload(
                    written.etag,
                    snapshot.version,
                    written.size,
                    merged,
                    layout=written.layout,
                    collect=written.collect,
                )
            except ColdStoreConflict:
                current = self.cold.read(snapshot.thread_id)
            if current is None:
                if not self.hot.exists(snapshot.thread_id):
                    # the archive it lost to is gone, and so is the hot copy: deleted
                    return Upload("", snapshot.version, 0, None, gone=True)
                if_match, previous = None, None
                continue
            archived, etag = current
            if archived.epoch != hot_copy.epoch:
                raise ThreadExists(
                    snapshot.thread_id,
                    "the cold archive belongs to another incarnation of this thread id "
                    f"(archive epoch {archived.epoch}, hot epoch {hot_copy.epoch}); "
                    "nothing was overwritten or evicted",
                )
            if self.hot.descends(snapshot.thread_id, archived.version, archived.head, etag):
                if archived.version >= snapshot.version:
                    return Upload(etag, archived.version, 0, None, layout=archived.layout)
            else:
                snapshot = merged = merge(archived, hot_copy, now_ms=int(time.time() * 1000))
            if_match, previous = etag, archived.layout
        raise ColdStoreUnavailable(
            f"flush of thread {snapshot.thread_id!r} lost {_CAS_ATTEMPTS} compare-and-swap "
            "rounds in a row; retry later"
        )

    def _rebase(
        self, hot_copy: Snapshot, upload: Upload, evict: bool, release_owner: str | None
    ) -> FlushResult:
        """After a merge was archived: make it the hot copy too (only if the hot copy is
        still the one merged), then commit the flush as usual. If the hot copy moved on
        meanwhile it keeps its writes and does not adopt the archive, so its next flush
        merges again; the turn it ends is released either way."""
        merged = upload.merged
        assert merged is not None
        thread_id = hot_copy.thread_id
        outcome = self.hot.restore(
            replace(merged, layout=upload.layout),
            upload.etag,
            chunk_size=self.restore_chunk,
            rebase=(hot_copy.version, hot_copy.head),
        )
        if outcome != "rebased":
            if self.hot.deleted_since(thread_id, merged.created_ms):
                if self.cold.head(thread_id) == upload.etag:  # no resurrection
                    self.cold.delete(thread_id)
                return FlushResult("absent")
            if release_owner is not None:
                self.hot.release_lease(thread_id, release_owner)
            return FlushResult("merged", merged.version, upload.etag, False, upload.size)
        commit = self.hot.commit_flush(
            thread_id,
            version=merged.version,
            etag=upload.etag,
            epoch=merged.epoch,
            evict=evict,
            release_owner=release_owner,
        )
        evicted = commit.outcome == "evicted"
        if evicted:
            self.hot.forget_activity(thread_id)
        return FlushResult("merged", merged.version, upload.etag, evicted, upload.size)

    def _check_namespace(self, snapshot: Snapshot) -> None:
        if snapshot.namespace != self.hot.namespace:
            raise SnapshotCorrupt(
                f"snapshot of thread {snapshot.thread_id!r} belongs to namespace "
                f"{snapshot.namespace!r}, not {self.hot.namespace!r} (foreign archive)"
            )

    # -- lifecycle ---------------------------------------------------------------

    def open(
        self,
        thread_id: str,
        mode: OpenMode = "continue",
        *,
        source: str | None = None,
        up_to_id: str | None = None,
        state: Mapping[str, Any] | None = None,
        owner: str | None = None,
        transform: ForkTransform | None = None,
    ) -> str:
        """Make ``thread_id`` ready for a turn; returns what happened.

        * "new": create it; ``ThreadExists`` if it exists in either tier, unless it
          was created by this same ``owner`` (a redelivered turn) -> "existing".
        * "continue": hydrate it -> "hot" | "restored"; ``ThreadNotFound`` if absent.
        * "fork": hydrate ``source`` and fork it (up to ``up_to_id``) -> "forked";
          an existing fork of that source -> "existing"; other content -> ``ThreadExists``.
          ``transform`` maps the copied records before the fork is written (see
          ``HotStore.fork``), so a failed transform leaves no fork behind.
        """
        if mode == "new":
            status = self._open_new(thread_id, state, owner)
            self.hot.mark_active(thread_id)
            return status
        if mode == "continue":
            status = self.hydrate(thread_id).status
            if status == "absent":
                raise ThreadNotFound(thread_id, "open it with mode='new' first")
            return status
        if mode == "fork":
            if source is None:
                raise ValueError("mode='fork' needs source=<thread id>")
            if self.hydrate(thread_id).status != "absent":
                info = self.hot.info(thread_id)
                if info.parent == source and info.fork_point == up_to_id:
                    return "existing"
                raise ThreadExists(thread_id, "it is not a fork of that source at that point")
            created = self._fork(source, thread_id, up_to_id, transform).created
            self.hot.mark_active(thread_id)
            return "forked" if created else "existing"
        raise ValueError(f"unknown open mode {mode!r}: use 'new', 'continue' or 'fork'")

    def _fork(
        self, source: str, thread_id: str, up_to_id: str | None, transform: ForkTransform | None
    ) -> ForkResult:
        """Fork a source that a concurrent flush may evict at any moment: it is
        hydrated pinned (``write_pin_ms``), and if it was hot and is evicted before
        the fork reads it, hydrated again and the fork retried (``_hot``)."""
        if self.hydrate(source, pin_ms=self.write_pin_ms).status == "absent":
            raise ThreadNotFound(source, "the fork source exists in no tier")
        return self._hot(
            source, lambda: self.hot.fork(source, thread_id, up_to_id, transform=transform)
        )

    def _open_new(self, thread_id: str, state: Mapping[str, Any] | None, owner: str | None) -> str:
        def redelivered() -> bool:
            return owner is not None and self.hot.info(thread_id).creator == owner

        if self.hot.exists(thread_id):
            if redelivered():
                return "existing"
            raise ThreadExists(thread_id, "it is hot; use mode='continue'")
        if self.cold.head(thread_id) is not None:
            if self.hydrate(thread_id).status != "absent" and redelivered():
                return "existing"
            raise ThreadExists(thread_id, "it is archived in the cold tier; use mode='continue'")
        if self.hot.create(thread_id, state, creator=owner) or redelivered():
            return "created"
        raise ThreadExists(thread_id, "another caller created it concurrently")

    def delete(self, thread_id: str) -> bool:
        """Delete the thread from both tiers; True if it existed in either. Idempotent."""
        in_cold = self.cold.head(thread_id) is not None
        in_hot = self.hot.delete(thread_id, archived=in_cold)
        self.cold.delete(thread_id)
        self.hot.forget_activity(thread_id)
        return in_hot or in_cold

    # -- tier-transparent operations ---------------------------------------------

    def _hot(self, thread_id: str, action: Callable[[], T]) -> T:
        """Run a hot-tier action; if the thread is cold, hydrate it and run again
        (a flush may evict it again in between: bounded by _TIER_ATTEMPTS)."""
        for _ in range(_TIER_ATTEMPTS):
            try:
                return action()
            except ThreadNotFound:
                if self.hydrate(thread_id, pin_ms=self.write_pin_ms).status == "absent":
                    raise
        return action()

    def append(
        self, thread_id: str, messages: Iterable[Mapping[str, Any]], *, owner: str | None = None
    ) -> AppendResult:
        """``HotStore.append``, hydrating a cold thread first. Exactly once per id,
        also across flush and hydrate (the ledger is archived with the thread)."""
        batch = list(messages)
        # one round trip: the activity index, when due, is marked by the append script
        # (on Redis Cluster, where it is in another slot, by a second call when due)
        return self._hot(
            thread_id, lambda: self.hot.append(thread_id, batch, owner=owner, index=True)
        )

    def get(self, thread_id: str, ids: Iterable[str]) -> dict[str, Message]:
        """``HotStore.get`` (records by id through the ledger), hydrating a cold thread."""
        wanted = list(ids)
        return self._hot(thread_id, lambda: self.hot.get(thread_id, wanted))

    def truncate_from(
        self, thread_id: str, message_id: str, *, owner: str | None = None
    ) -> TruncateResult:
        """``HotStore.truncate_from``; with ``owner``, only while it holds the lease."""
        result = self._hot(
            thread_id, lambda: self.hot.truncate_from(thread_id, message_id, owner=owner)
        )
        self.hot.mark_active(thread_id)
        return result

    def pop(self, thread_id: str, *, owner: str | None = None) -> PopResult:
        """``HotStore.pop`` (remove and return the last record), hydrating a cold thread."""
        result = self._hot(thread_id, lambda: self.hot.pop(thread_id, owner=owner))
        if result.record is not None:
            self.hot.mark_active(thread_id)
        return result

    def replace_all(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        expected_version: int | None = None,
    ) -> WriteResult:
        """``HotStore.replace_all``: any length; ``VersionConflict`` if the thread is no
        longer at ``expected_version``."""
        batch = list(messages)
        result = self._hot(
            thread_id,
            lambda: self.hot.replace_all(thread_id, batch, expected_version=expected_version),
        )
        self.hot.mark_active(thread_id)
        return result

    def put_record(
        self,
        thread_id: str,
        record: Mapping[str, Any],
        *,
        first: bool = False,
        expected_version: int | None = None,
    ) -> WriteResult:
        """``HotStore.put_record`` (set one record by id, e.g. the system prompt)."""
        result = self._hot(
            thread_id,
            lambda: self.hot.put_record(
                thread_id, record, first=first, expected_version=expected_version
            ),
        )
        self.hot.mark_active(thread_id)
        return result

    def upsert(
        self,
        thread_id: str,
        messages: Iterable[Mapping[str, Any]],
        *,
        replace: Collection[str] = (),
    ) -> UpsertResult:
        """``HotStore.upsert`` (append new ids, replace those in ``replace``), hydrating
        a cold thread first; one round trip with the activity index, like ``append``."""
        batch = list(messages)
        return self._hot(
            thread_id, lambda: self.hot.upsert(thread_id, batch, replace=replace, index=True)
        )

    def load(self, thread_id: str, start: int = 0, stop: int = -1) -> list[Message]:
        return self._hot(thread_id, lambda: self.hot.load(thread_id, start, stop))

    def load_state(self, thread_id: str) -> dict[str, Any]:
        return self._hot(thread_id, lambda: self.hot.load_state(thread_id))

    def save_state(self, thread_id: str, state: Mapping[str, Any]) -> int:
        """Save the state slice (hydrating first); returns the thread's version."""
        version = self._hot(thread_id, lambda: self.hot.save_state(thread_id, state)).version
        self.hot.mark_active(thread_id)
        return version

    def acquire_lease(self, thread_id: str, owner: str, ttl_ms: int) -> Lease:
        """One turn at a time per thread; the same owner re-acquires; another gets
        ``LeaseHeld`` (transient). A lease keeps the thread hot: flush never evicts
        a leased thread."""
        lease = self._hot(thread_id, lambda: self.hot.acquire_lease(thread_id, owner, ttl_ms))
        self.hot.mark_active(thread_id)
        return lease

    def release_lease(self, thread_id: str, owner: str) -> bool:
        """Release ``owner``'s lease; False if it does not hold it. Idempotent."""
        return self.hot.release_lease(thread_id, owner)


def _now_ms() -> int:
    return int(time.time() * 1000)
