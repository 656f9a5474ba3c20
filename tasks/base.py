"""ThreadTask: the retry policy of every agent-threads task, in one place.

* ``acks_late`` + ``reject_on_worker_lost``: a task whose worker dies is delivered
  again (every threads.* task is idempotent, so that is harmless).
* transient errors (Redis or S3 unreachable, a lost compare-and-swap, a lease held
  by another turn) are retried with exponential backoff and equal jitter, a bounded
  number of times; then the typed error is what the caller sees.
* every other error (invalid input, unknown thread, corrupt snapshot, a lost
  lease, ...) fails at once with its message; it would fail the same way again.

The bounds come from the ``agent_threads`` settings (``AGENT_THREADS_MAX_RETRIES``,
``_RETRY_BACKOFF``, ``_RETRY_BACKOFF_MAX``), read once when this module is imported.
The delay before retry n is a random time between half and all of
min(backoff_max, backoff * 2**n) seconds ("equal jitter", see ``retry_delay``):
spread out like full jitter, but the retries of one task always span at least
half their exponential sum, ~60 s at the defaults, so a Redis failover (15 s of
``cluster-node-timeout`` by default) never uses them all up. Full jitter (Celery's
``retry_jitter``) can draw eight waits of 0 s.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

from celery import Task
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from storage.errors import (
    AgentThreadsError,
    ColdStoreConflict,
    ColdStoreUnavailable,
    HotStoreUnavailable,
    LeaseHeld,
)
from storage.tiered import Threads
from tasks import app as app_module
from tasks.steps import run_step, step_of

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    HotStoreUnavailable,
    ColdStoreUnavailable,
    ColdStoreConflict,
    LeaseHeld,
    RedisConnectionError,
    RedisTimeoutError,
)


_POLICY = app_module.settings()


def retry_delay(retries: int, backoff: float, maximum: float) -> float:
    """Seconds before retry ``retries`` (0 = the first): equal jitter over the
    exponential step, so never less than half of it."""
    step = min(maximum, backoff * 2**retries)
    return random.uniform(step / 2, step)  # noqa: S311 - spreading retries, not secrets


# transient errors whose only argument is their message (rebuilt with a note)
_OUTAGES = (HotStoreUnavailable, ColdStoreUnavailable, ColdStoreConflict)


class ThreadTask(Task[Any, Any]):
    """Base class of the threads.* tasks (and a good base for your agent tasks)."""

    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = TRANSIENT_ERRORS
    # Celery's own backoff stays off (it offers full jitter only): ``retry`` sets the
    # delay from these with ``retry_delay``.
    retry_backoff = False
    backoff_seconds = float(_POLICY.get("retry_backoff", 1))  # 1, 2, 4, ... capped
    retry_backoff_max = int(_POLICY.get("retry_backoff_max", 30))
    max_retries = int(_POLICY.get("max_retries", 8))
    # expected failures are logged without a traceback
    throws = (AgentThreadsError,)
    # a turn's opening step stores no result (tasks/turns.py); its failure must still
    # reach the turn's result, which the caller waits for
    store_errors_even_if_ignored = True

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Exception | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: Any = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        """Celery's retry, with the policy's delay (``retry_delay``) when none is given;
        when the retries are used up, an outage error says so."""
        limit = self.max_retries if max_retries is None else max_retries
        used = self.request.retries
        if countdown is None and eta is None:
            countdown = retry_delay(used, self.backoff_seconds, self.retry_backoff_max)
        if isinstance(exc, _OUTAGES) and limit is not None and used >= limit:
            exc = type(exc)(f"{exc} (gave up after {used} retries)")
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A step of an ``agent_turn`` runs as the holder of its claim in the turn
        record, with a heartbeat (``tasks/steps.py``); any other call runs as is."""
        step = step_of(self.request)
        if step is None:
            return super().__call__(*args, **kwargs)
        # the worker's tracer has pushed this request; run the body inside it
        return run_step(
            self,
            self.threads,
            step,
            lambda: self.run(*args, **kwargs),
            kwargs,
            app_module.settings(),
        )

    @property
    def threads(self) -> Threads:
        return app_module.threads()


def to_json(result: Any) -> Any:
    """A storage result (frozen dataclass) as plain JSON."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return result
