"""Typed errors of agent-threads.

Every error names the thread (where there is one) and says what to do about it.
``transient`` tells a retry policy (the Celery base task) whether trying the
same call again later can succeed; permanent errors must fail at once.

Errors built from fields keep those fields as ``args`` and format the message in
``__str__``, so ``type(e)(*e.args)`` rebuilds the same error: that is how
Celery's JSON result backend carries an error back to the caller.
"""

from __future__ import annotations


class AgentThreadsError(Exception):
    """Base class of every error agent-threads raises on purpose."""

    transient: bool = False


class InvalidThreadId(AgentThreadsError, ValueError):
    """The thread id (or namespace) is not of the documented format."""


class InvalidMessage(AgentThreadsError, ValueError):
    """A message, batch or state slice is malformed or over a configured limit."""


class ThreadNotFound(AgentThreadsError, LookupError):
    """The thread does not exist in the tier that was asked."""

    def __init__(self, thread_id: str, hint: str = "create it or hydrate it first") -> None:
        super().__init__(thread_id, hint)
        self.thread_id = thread_id
        self.hint = hint

    def __str__(self) -> str:
        return f"thread {self.thread_id!r} not found; {self.hint}"


class ThreadExists(AgentThreadsError):
    """The thread already exists with other content; nothing was overwritten."""

    def __init__(self, thread_id: str, detail: str) -> None:
        super().__init__(thread_id, detail)
        self.thread_id = thread_id
        self.detail = detail

    def __str__(self) -> str:
        return f"thread {self.thread_id!r} already exists: {self.detail}"


class LeaseHeld(AgentThreadsError):
    """Another owner holds the thread's lease; retry after it expires or is released."""

    transient = True

    def __init__(self, thread_id: str, holder: str, ttl_ms: int) -> None:
        super().__init__(thread_id, holder, ttl_ms)
        self.thread_id = thread_id
        self.holder = holder
        self.ttl_ms = ttl_ms

    def __str__(self) -> str:
        return (
            f"thread {self.thread_id!r} is leased by {self.holder!r} for another "
            f"{self.ttl_ms} ms; retry later or wait for that turn to finish"
        )


class LeaseLost(AgentThreadsError):
    """The caller wrote as a lease owner but no longer holds the lease; nothing was written."""

    def __init__(self, thread_id: str, owner: str, holder: str | None) -> None:
        super().__init__(thread_id, owner, holder)
        self.thread_id = thread_id
        self.owner = owner
        self.holder = holder

    def __str__(self) -> str:
        now = f"it is held by {self.holder!r}" if self.holder else "it has expired or was released"
        return (
            f"owner {self.owner!r} does not hold the lease on thread {self.thread_id!r} "
            f"({now}); nothing was written; re-acquire the lease before writing"
        )


class TurnFailed(AgentThreadsError):
    """An agent turn ended as failed; ``error_type`` and ``message`` are the typed
    error of the step that failed (from the turn record)."""

    def __init__(self, thread_id: str, turn_id: str, error_type: str, message: str) -> None:
        super().__init__(thread_id, turn_id, error_type, message)
        self.thread_id = thread_id
        self.turn_id = turn_id
        self.error_type = error_type
        self.message = message

    def __str__(self) -> str:
        return (
            f"turn {self.turn_id!r} of thread {self.thread_id!r} failed: "
            f"{self.error_type}: {self.message}"
        )


class VersionConflict(AgentThreadsError):
    """A conditional write (``expected_version``) found the thread at another version:
    something changed it since the caller read it; nothing was written."""

    def __init__(self, thread_id: str, expected: int, actual: int) -> None:
        super().__init__(thread_id, expected, actual)
        self.thread_id = thread_id
        self.expected = expected
        self.actual = actual

    def __str__(self) -> str:
        return (
            f"thread {self.thread_id!r} is at version {self.actual}, not the expected "
            f"{self.expected}: it changed since it was read; nothing was written; "
            "read it again and redo the change"
        )


class SnapshotCorrupt(AgentThreadsError):
    """A cold snapshot failed validation; nothing was applied from it."""


class ColdStoreError(AgentThreadsError):
    """The cold store failed in a way that retrying the same call will not fix."""


class ColdStoreUnavailable(ColdStoreError):
    """The cold store could not be reached, timed out, or asked to retry (S3 409/5xx)."""

    transient = True


class ColdStoreConflict(ColdStoreError):
    """A conditional write lost: the archive changed since the etag the writer knew (S3 412)."""

    transient = True


class HotStoreUnavailable(AgentThreadsError):
    """Redis could not be reached, timed out, or cannot serve writes for a while (a
    failover, a replica, a cluster slot moving, loading its data set): nothing was
    written, or the write may be retried (it is idempotent)."""

    transient = True


class ListRewritten(AgentThreadsError):
    """A flush reading a thread's records in chunks saw the list rewritten (truncate,
    replace) between chunks; nothing was uploaded. ``Threads.flush`` reads again."""

    transient = True

    def __init__(self, thread_id: str) -> None:
        super().__init__(thread_id)
        self.thread_id = thread_id

    def __str__(self) -> str:
        return f"thread {self.thread_id!r} was rewritten while a flush read it; retry"


class HotStoreFull(HotStoreUnavailable):
    """Redis reached ``maxmemory`` under ``noeviction`` and refused a write; nothing
    was written. Transient: an idle flush (``agent-threads flush --all-idle``)
    evicts archived threads and frees memory; else raise ``maxmemory``."""


class HotStoreAccessDenied(AgentThreadsError):
    """Redis refused the credentials or a command or key (ACL ``NOPERM``, a wrong
    password): retrying cannot help; fix the user's password, key pattern or commands."""
