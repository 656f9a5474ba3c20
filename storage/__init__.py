"""agent-threads storage: the Redis hot tier (``hot.py``, one Lua script per mutation),
the cold tier (``cold.py``: S3 or files; ``archive.py``: a CAS-protected manifest over
a base and append-only segments), and ``tiered.py`` ``Threads``, which moves threads
between them (hydrate, flush, evict, lease, turns). ``aio.py`` is the hot tier for
asyncio code (``AsyncHotStore``, ``AsyncThreads``: the same scripts through the same
pure calls, ``calls.py``).

No Celery and no provider SDK is imported here.
"""

from storage.errors import (
    AgentThreadsError,
    ColdStoreError,
    HotStoreAccessDenied,
    HotStoreFull,
    HotStoreUnavailable,
    InvalidMessage,
    InvalidThreadId,
    LeaseHeld,
    LeaseLost,
    SnapshotCorrupt,
    ThreadExists,
    ThreadNotFound,
    TurnFailed,
    VersionConflict,
)
from storage.hot import HotStore
from storage.keys import KeyLayout, ThreadKeys, validate_message_id, validate_thread_id
from storage.limits import Limits
from storage.records import Message
from storage.results import (
    AppendResult,
    ForkResult,
    Lease,
    PopResult,
    StateResult,
    ThreadInfo,
    TruncateResult,
    WriteResult,
)

__all__ = [
    "AgentThreadsError",
    "AppendResult",
    "ColdStoreError",
    "ForkResult",
    "HotStore",
    "HotStoreAccessDenied",
    "HotStoreFull",
    "HotStoreUnavailable",
    "InvalidMessage",
    "InvalidThreadId",
    "KeyLayout",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "Limits",
    "Message",
    "PopResult",
    "SnapshotCorrupt",
    "StateResult",
    "ThreadExists",
    "ThreadInfo",
    "ThreadKeys",
    "ThreadNotFound",
    "TruncateResult",
    "TurnFailed",
    "VersionConflict",
    "WriteResult",
    "validate_message_id",
    "validate_thread_id",
]
