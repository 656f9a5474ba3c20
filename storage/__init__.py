"""agent-threads storage: the Redis hot tier (and, later, the S3 cold tier).

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
