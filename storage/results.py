"""Typed results of hot-tier operations."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What an append did. ``skipped_ids`` lists every input occurrence not appended:
    ids the ledger already held and repeats within the batch, in input order."""

    appended_ids: tuple[str, ...]
    skipped_ids: tuple[str, ...]
    length: int
    version: int


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
    owner: str
    ttl_ms: int
    renewed: bool


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
    lease_owner: str | None
    lease_ttl_ms: int | None
    ttl_ms: int | None
    """Milliseconds until the hot copy expires; None when it has no expiry."""
