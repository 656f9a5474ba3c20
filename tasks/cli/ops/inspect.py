"""One thread as ``inspect`` shows it, read in one consistent step from either tier."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from storage.errors import ThreadNotFound
from storage.records import Message
from storage.results import ThreadInfo
from storage.snapshot import Snapshot
from storage.tiered import Threads
from storage.turns import TurnStatus

Tier = Literal["hot", "cold"]


@dataclass(frozen=True, slots=True)
class ThreadView:
    """A thread as ``inspect`` shows it; ``snapshot`` is read in one consistent step
    (one script for a hot thread, one object for a cold one)."""

    tier: Tier
    snapshot: Snapshot
    info: ThreadInfo | None
    """Hot only: TTL, lease and the archive the hot copy knows of."""
    archive_etag: str | None
    archive_version: int | None
    turns: list[TurnStatus] = field(default_factory=list)
    """The turn records the hot tier keeps for the thread, oldest first."""

    @property
    def messages(self) -> list[Message]:
        return self.snapshot.messages()

    def to_json(self) -> dict[str, Any]:
        s, info = self.snapshot, self.info
        lease = None
        if info is not None and info.lease_owner:
            lease = {"owner": info.lease_owner, "ttl_ms": info.lease_ttl_ms}
        archive = None
        if self.archive_etag is not None:
            archive = {"version": self.archive_version, "etag": self.archive_etag}
        return {
            "thread_id": s.thread_id,
            "namespace": s.namespace,
            "tier": self.tier,
            "version": s.version,
            "length": len(s.records),
            "epoch": s.epoch,
            "created_ms": s.created_ms,
            "updated_ms": s.updated_ms,
            "parent": s.parent,
            "fork_point": s.fork_point,
            "creator": s.creator,
            "ttl_ms": info.ttl_ms if info else None,
            "lease": lease,
            "archive": archive,
            "state": s.state,
            "retired_ids": list(s.retired_ids),
            "finished_turns": list(s.finished_turns),
            "last_merge": s.last_merge,
            "turns": [turn_json(t) for t in self.turns],
            "messages": self.messages,
        }


def turn_json(turn: TurnStatus) -> dict[str, Any]:
    """A turn record as ``inspect --json`` shows it."""
    return {
        "turn_id": turn.turn_id,
        "state": turn.state,
        "steps": turn.steps,
        "step": turn.step,
        "done": turn.done,
        "attempt": turn.attempt,
        "wakes": turn.wakes,
        "takeovers": turn.takeovers,
        "worker": turn.worker,
        "submitted_ms": turn.submitted_ms,
        "finished_ms": turn.finished_ms,
        "timings_ms": turn.timings,
        "usage": turn.usage,
        "input_tokens": turn.input_tokens,
        "output_tokens": turn.output_tokens,
        "tools": turn.tools,
        "error": turn.error,
    }


def view_thread(store: Threads, thread_id: str) -> ThreadView:
    """The thread in the tier that holds it (hot first); reads a cold archive without
    restoring it. ``ThreadNotFound`` if it is in no tier; ``InvalidThreadId`` first."""
    store.hot.keys(thread_id)  # validate before any I/O
    turns = store.turns.list(thread_id)
    try:
        snapshot = store.hot.snapshot(thread_id)
        info = store.hot.info(thread_id)
    except ThreadNotFound:
        pass  # cold, absent, or evicted just now
    else:
        return ThreadView("hot", snapshot, info, info.cold_etag, info.cold_version, turns)
    found = store.cold.read(thread_id)
    if found is None:
        raise ThreadNotFound(thread_id, "it exists in no tier (neither hot nor archived)")
    snapshot, etag = found
    return ThreadView("cold", snapshot, None, etag, snapshot.version, turns)
