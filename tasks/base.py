"""ThreadTask: the retry policy of every agent-threads task, in one place.

* ``acks_late`` + ``reject_on_worker_lost``: a task whose worker dies is delivered
  again (every threads.* task is idempotent, so that is harmless).
* transient errors (Redis or S3 unreachable, a lost compare-and-swap, a lease held
  by another turn) are retried with exponential backoff and equal jitter, a bounded
  number of times; then the typed error is what the caller sees.
* every other error (invalid input, unknown thread, corrupt snapshot, a lost
  lease, ...) fails at once with its message; it would fail the same way again.

The bounds come from the task's app's ``agent_threads`` settings (``max_retries``,
``retry_backoff``, ``retry_backoff_max``; tasks/settings.py), read at each retry.
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
from celery.utils.quorum_queues import detect_quorum_queues
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
from tasks.settings import retry_policy, settings_of
from tasks.steps import run_step, step_of
from tasks.stores import threads_for

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    HotStoreUnavailable,
    ColdStoreUnavailable,
    ColdStoreConflict,
    LeaseHeld,
    RedisConnectionError,
    RedisTimeoutError,
)


def retry_delay(retries: int, backoff: float, maximum: float) -> float:
    """Seconds before retry ``retries`` (0 = the first): equal jitter over the
    exponential step, so never less than half of it."""
    step = min(maximum, backoff * 2**retries)
    return random.uniform(step / 2, step)  # noqa: S311 - spreading retries, not secrets


# transient errors whose only argument is their message (rebuilt with a note)
_OUTAGES = (HotStoreUnavailable, ColdStoreUnavailable, ColdStoreConflict)


class ThreadTask(Task[Any, Any]):
    """Base class of the threads.* tasks (and a good base for your agent tasks)."""

    agent_threads_task = True
    """Marks agent-threads' tasks for its logs and metrics (tasks/observability)."""
    acks_late = True
    reject_on_worker_lost = True
    autoretry_for = TRANSIENT_ERRORS
    # Celery's own backoff stays off (it offers full jitter only): ``retry`` sets the
    # delay from these with ``retry_delay``.
    retry_backoff = False
    # None: the app's agent_threads settings at each retry; a task may set its own
    max_retries: int | None = None
    backoff_seconds: float | None = None
    backoff_max: float | None = None
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
        policy = retry_policy(self.app)
        limit = max_retries if max_retries is not None else self.retry_limit
        used = self.request.retries
        if countdown is None and eta is None:
            backoff = policy.backoff if self.backoff_seconds is None else self.backoff_seconds
            cap = policy.backoff_max if self.backoff_max is None else self.backoff_max
            countdown = retry_delay(used, backoff, cap)
        if countdown is not None and 0 < countdown < 1 and delays_natively(self.app):
            countdown = 1  # RabbitMQ's native delayed delivery refuses sub-second delays
        if isinstance(exc, _OUTAGES) and limit is not None and used >= limit:
            exc = type(exc)(f"{exc} (gave up after {used} retries)")
        return super().retry(args, kwargs, exc, throw, eta, countdown, limit, **options)

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
            self.settings,
        )

    @property
    def retry_limit(self) -> int:
        """How many times a transient error is retried: the task's own ``max_retries``,
        else the app's ``agent_threads["max_retries"]``."""
        if self.max_retries is not None:
            return int(self.max_retries)
        return retry_policy(self.app).max_retries

    @property
    def threads(self) -> Threads:
        """This worker process's storage for the task's app."""
        return threads_for(self.app)

    @property
    def settings(self) -> dict[str, Any]:
        """The task's app's ``agent_threads`` settings over the defaults."""
        return settings_of(self.app)


def delays_natively(app: Any) -> bool:
    """Whether a countdown on ``app``'s broker goes through RabbitMQ's native delayed
    delivery (quorum queues), which counts whole seconds and refuses ``0 < countdown
    < 1`` with a ValueError: a retry would become a rejected, dropped message."""
    if not str(app.conf.broker_url or "").startswith(("amqp", "pyamqp")):
        return False
    with app.connection_for_write() as connection:
        driver: str = connection.transport.driver_type
    return bool(detect_quorum_queues(app, driver)[0])


def to_json(result: Any) -> Any:
    """A storage result (frozen dataclass) as plain JSON."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return result
