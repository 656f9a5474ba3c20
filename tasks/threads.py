"""The thread tasks (names are public and stable; JSON in, JSON out).

Each task validates, calls ``storage.Threads`` once and returns plain JSON; the
exception is ``threads.open_turn``, the opening step of an agent turn, which runs
open, acquire_lease and append, each idempotent. Every task is idempotent, so a
redelivery after a worker crash or a retry is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from celery import Task, group, shared_task
from celery.utils.log import get_task_logger

from storage.records import JSON
from storage.tiered import OpenMode
from tasks.base import TRANSIENT_ERRORS, ThreadTask, to_json
from tasks.turns import turn_canvas

log = get_task_logger(__name__)


P = ParamSpec("P")
R = TypeVar("R")


def thread_task(
    name: str, **options: Any
) -> Callable[[Callable[Concatenate[ThreadTask, P], R]], Task[P, R]]:
    """A bound ``shared_task`` (every app of the process has it) under its public name,
    with the ThreadTask retry policy."""
    decorator: Callable[[Callable[Concatenate[ThreadTask, P], R]], Task[P, R]] = shared_task(
        name=name, base=ThreadTask, bind=True, **options
    )
    return decorator


@thread_task("threads.create")
def create(
    self: ThreadTask,
    thread_id: str,
    state: dict[str, Any] | None = None,
    owner: str | None = None,
) -> JSON:
    """Create a new thread ("created"); its redelivery finds it ("existing").
    ``ThreadExists`` if another caller's thread has this id, hot or cold."""
    status = self.threads.open(thread_id, "new", state=state, owner=owner or self.request.id)
    return {"thread_id": thread_id, "status": status}


@thread_task("threads.append")
def append(
    self: ThreadTask, thread_id: str, messages: list[dict[str, Any]], owner: str | None = None
) -> JSON:
    result = to_json(self.threads.append(thread_id, messages, owner=owner))
    return {"thread_id": thread_id, **result}


@thread_task("threads.load")
def load(self: ThreadTask, thread_id: str, start: int = 0, stop: int = -1) -> JSON:
    messages: Any = self.threads.load(thread_id, start, stop)
    return {"thread_id": thread_id, "messages": messages}


@thread_task("threads.save_state")
def save_state(self: ThreadTask, thread_id: str, state: dict[str, Any]) -> JSON:
    return {"thread_id": thread_id, "version": self.threads.save_state(thread_id, state)}


@thread_task("threads.load_state")
def load_state(self: ThreadTask, thread_id: str) -> JSON:
    return {"thread_id": thread_id, "state": self.threads.load_state(thread_id)}


@thread_task("threads.fork")
def fork(self: ThreadTask, source_id: str, thread_id: str, up_to_id: str | None = None) -> JSON:
    """Fork ``source_id`` (hydrating it if cold) into ``thread_id``: "forked", or
    "existing" when that fork was already made (a redelivery)."""
    status = self.threads.open(thread_id, "fork", source=source_id, up_to_id=up_to_id)
    return {"thread_id": thread_id, "source_id": source_id, "status": status}


@thread_task("threads.truncate")
def truncate(self: ThreadTask, thread_id: str, message_id: str, owner: str | None = None) -> JSON:
    """With ``owner``, a truncate that would cut something needs that owner's lease."""
    result = self.threads.truncate_from(thread_id, message_id, owner=owner)
    return {"thread_id": thread_id, **to_json(result)}


@thread_task("threads.replace")
def replace(
    self: ThreadTask,
    thread_id: str,
    messages: list[dict[str, Any]],
    expected_version: int | None = None,
) -> JSON:
    """Any length; with ``expected_version``, ``VersionConflict`` if the thread changed."""
    result = self.threads.replace_all(thread_id, messages, expected_version=expected_version)
    return {"thread_id": thread_id, **to_json(result)}


@thread_task("threads.hydrate")
def hydrate(self: ThreadTask, thread_id: str) -> JSON:
    return {"thread_id": thread_id, **to_json(self.threads.hydrate(thread_id))}


@thread_task("threads.flush")
def flush(
    self: ThreadTask, thread_id: str, evict: bool = True, release_owner: str | None = None
) -> JSON:
    result = self.threads.flush(thread_id, evict=evict, release_owner=release_owner)
    return {"thread_id": thread_id, **to_json(result)}


@thread_task("threads.delete")
def delete(self: ThreadTask, thread_id: str) -> JSON:
    return {"thread_id": thread_id, "deleted": self.threads.delete(thread_id)}


# A turn may wait behind another turn for minutes: more, longer retries than the
# default policy (LeaseHeld is transient).
@thread_task("threads.acquire_lease", max_retries=60, backoff_max=20)
def acquire_lease(self: ThreadTask, thread_id: str, owner: str, ttl_ms: int | None = None) -> JSON:
    lease = self.threads.acquire_lease(thread_id, owner, ttl_ms or self.settings["lease_ttl_ms"])
    return {"thread_id": thread_id, **to_json(lease)}


# The opening of an agent turn (tasks/turns.py): it waits behind another turn's lease
# as acquire_lease does.
@thread_task("threads.open_turn", max_retries=60, backoff_max=20)
def open_turn(
    self: ThreadTask,
    thread_id: str,
    owner: str,
    messages: list[dict[str, Any]],
    mode: OpenMode = "continue",
    source_id: str | None = None,
    up_to_id: str | None = None,
    state: dict[str, Any] | None = None,
    ttl_ms: int | None = None,
) -> JSON:
    """Open the thread for turn ``owner`` (create | hydrate | fork), take the turn's
    lease and append the turn's new messages. Idempotent under redelivery: the open
    finds its own thread, the same owner re-acquires its lease, append skips the ids
    it has; another turn's lease is a ``LeaseHeld`` retry. A permanent failure after
    the lease releases it (the turn fails without a cleanup step)."""
    opened = self.threads.open(
        thread_id, mode, source=source_id, up_to_id=up_to_id, state=state, owner=owner
    )
    lease = self.threads.acquire_lease(thread_id, owner, ttl_ms or self.settings["lease_ttl_ms"])
    if lease.finished:  # a late duplicate of a turn that ended: its messages are in
        return {"thread_id": thread_id, "opened": opened, "lease": to_json(lease)}
    try:
        appended = self.threads.append(thread_id, messages, owner=owner)
    except TRANSIENT_ERRORS:
        raise  # retried with the lease held: the same owner re-acquires it
    except Exception:
        self.threads.release_lease(thread_id, owner)
        raise
    return {
        "thread_id": thread_id,
        "opened": opened,
        "lease": to_json(lease),
        **to_json(appended),
    }


@thread_task("threads.release_lease")
def release_lease(self: ThreadTask, thread_id: str, owner: str) -> JSON:
    return {"thread_id": thread_id, "released": self.threads.release_lease(thread_id, owner)}


@thread_task("threads.flush_idle")
def flush_idle(
    self: ThreadTask, idle_seconds: float | None = None, limit: int | None = None
) -> JSON:
    """Beat task: claim threads idle longer than ``idle_seconds`` (at most ``limit``)
    and fan them out as ``threads.evict_idle`` tasks, in groups of ``idle_flush_batch``.
    One run per namespace at a time (a lock): a second beat's run does nothing. It does
    not wait for the evictions (a task must not block on other tasks)."""
    conf = self.settings
    idle = conf["idle_seconds"] if idle_seconds is None else idle_seconds
    most = conf.get("idle_flush_limit", 10_000) if limit is None else limit
    batch = max(1, int(conf.get("idle_flush_batch", 100)))
    with self.threads.idle_flush_lock() as held:
        if not held:
            log.info("flush_idle: another run holds the namespace's lock; nothing to do")
            return {"locked": True, "candidates": 0, "batches": 0}
        claim = conf.get("idle_claim_seconds", 600)
        chosen = self.threads.claim_idle(idle, most, claim)
        batches = [chosen[i : i + batch] for i in range(0, len(chosen), batch)]
        for ids in batches:
            group(evict_idle.s(thread_id, idle) for thread_id in ids).apply_async()
    return {"locked": False, "candidates": len(chosen), "batches": len(batches)}


@thread_task("threads.evict_idle", ignore_result=True)
def evict_idle(self: ThreadTask, thread_id: str, idle_seconds: float) -> JSON:
    """Flush and evict one idle thread unless it was written within ``idle_seconds``:
    "evicted" or "kept". A failure pushes the thread back in the index (backoff)."""
    backoff = float(self.settings.get("idle_failure_backoff_seconds", 60))
    outcome = self.threads.evict_idle(thread_id, idle_seconds, failure_backoff_seconds=backoff)
    return {"thread_id": thread_id, "outcome": outcome}


@thread_task("threads.reconcile_activity")
def reconcile_activity(self: ThreadTask, max_keys: int | None = None) -> JSON:
    """Beat task: re-index hot threads missing from the activity index (a worker died
    between a write and its index entry), scanning about ``max_keys`` keys per run."""
    most = self.settings.get("reconcile_max_keys", 10_000) if max_keys is None else max_keys
    report = self.threads.hot.reconcile_activity(max_keys=most)
    if report.reindexed:
        log.warning(
            "reconcile_activity: %d hot threads were missing from the index", report.reindexed
        )
    summary: JSON = to_json(report)
    return summary


@thread_task("threads.reconcile_turns")
def reconcile_turns(self: ThreadTask, limit_per_shard: int | None = None) -> JSON:
    """Beat task: re-wake the turns whose step stopped (its worker's heartbeat ended,
    its message was lost, it was never started): each is sent again from the step
    that did not finish. Atomic per turn (``TurnStore.reconcile``): two runs at once,
    or a run racing a slow but living worker, never wake a turn twice."""
    most = (
        self.settings.get("turn_reconcile_limit", 100)
        if limit_per_shard is None
        else limit_per_shard
    )
    report = self.threads.turns.reconcile(limit_per_shard=most)
    for wake in report.woken:
        log.warning(
            "reconcile_turns: re-waking turn %s of thread %s at step %s (wake %d)",
            wake.turn_id,
            wake.thread_id,
            wake.step,
            wake.status.wakes,
        )
        turn_canvas(wake.spec, wake.step, self.app, recorded=True).apply_async()
    return {
        "due": report.due,
        "woken": [[w.thread_id, w.turn_id, w.step] for w in report.woken],
        "later": report.later,
        "gone": report.gone,
    }
