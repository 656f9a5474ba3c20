"""Many threads at once (``flush``, ``hydrate``, ``delete``): one at a time here or all
sent to the workers, where the failure of one thread never stops the rest."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery

from storage.errors import AgentThreadsError
from storage.tiered import Threads


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one thread of a bulk operation. ``status`` is the storage
    status ("archived", "unchanged", "absent"; "restored", "hot") or "failed"."""

    thread_id: str
    status: str
    detail: str = ""
    evicted: bool = False


@dataclass(frozen=True, slots=True)
class BulkReport:
    outcomes: tuple[Outcome, ...]

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.status for o in self.outcomes)

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "failed")


Progress = Callable[[Outcome], None]


def _failure(thread_id: str, exc: BaseException) -> Outcome:
    kind = "" if isinstance(exc, AgentThreadsError) else f"{type(exc).__name__}: "
    return Outcome(thread_id, "failed", f"{kind}{exc}")


def _each(
    ids: Iterable[str], action: Callable[[str], Outcome], progress: Progress | None
) -> BulkReport:
    outcomes = []
    for thread_id in ids:
        try:
            outcome = action(thread_id)
        except Exception as exc:  # one thread's failure never stops the others
            outcome = _failure(thread_id, exc)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return BulkReport(tuple(outcomes))


def flush_many(
    store: Threads, ids: Iterable[str], *, evict: bool = True, progress: Progress | None = None
) -> BulkReport:
    """``Threads.flush`` each thread, in this process."""

    def flush(thread_id: str) -> Outcome:
        result = store.flush(thread_id, evict=evict)
        # version None: the thread was not hot (already evicted, or absent)
        kept = evict and not result.evicted and result.version is not None
        return Outcome(thread_id, result.status, "kept hot" if kept else "", result.evicted)

    return _each(ids, flush, progress)


def hydrate_many(
    store: Threads, ids: Iterable[str], *, progress: Progress | None = None
) -> BulkReport:
    """``Threads.hydrate`` each thread, in this process."""

    def hydrate(thread_id: str) -> Outcome:
        return Outcome(thread_id, store.hydrate(thread_id).status)

    return _each(ids, hydrate, progress)


def run_on_workers(
    app: Celery,
    task_name: str,
    ids: Sequence[str],
    *,
    kwargs: dict[str, Any] | None = None,
    timeout: float = 300.0,
    progress: Progress | None = None,
) -> BulkReport:
    """Send ``task_name`` (``threads.flush`` / ``threads.hydrate``) for every thread at
    once and collect the results as they arrive (in the order sent)."""
    sent = [
        (tid, app.send_task(task_name, args=[tid], kwargs=kwargs or {}, ignore_result=False))
        for tid in ids
    ]
    deadline = time.monotonic() + timeout
    outcomes = []
    for thread_id, result in sent:
        try:
            value = result.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
            if result.failed() or not isinstance(value, dict):
                outcome = Outcome(thread_id, "failed", str(value))
            else:
                status = str(value.get("status", "?"))
                evicted = bool(value.get("evicted", False))
                was_hot = value.get("version") is not None
                kept = task_name == "threads.flush" and not evicted and was_hot
                outcome = Outcome(thread_id, status, "kept hot" if kept else "", evicted)
        except Exception as exc:  # e.g. a timeout: report it, collect the rest
            outcome = _failure(thread_id, exc)
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome)
    return BulkReport(tuple(outcomes))
