"""The shipped retry policy outlasts the outages users meet: a task retried on a
transient error waits at least about a minute in all before it gives up, however
its jitter falls, which is longer than a Redis Cluster failover at Redis's default
``cluster-node-timeout`` (15 s; promotions measured at 18-21 s in
tests/test_failover.py). With full jitter its eight retries could all wait 0 s.
"""

from __future__ import annotations

import random
from typing import Any

import celery.app.task
import pytest
from celery import Celery

from storage.errors import HotStoreUnavailable, LeaseHeld
from tasks.base import ThreadTask
from tasks.settings import DEFAULTS

DEFAULT_CLUSTER_NODE_TIMEOUT_S = 15.0


def countdowns(
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    settings: dict[str, Any] | None = None,
    **options: Any,
) -> list[float]:
    """The countdown of every retry a ThreadTask task asks for, with the jitter at its
    least favourable (the shortest waits), through Celery's own autoretry. ``settings``
    are set as the app's ``agent_threads`` after the task was defined."""
    app = Celery("retry-policy", set_as_current=False)
    app.conf.task_always_eager = True
    seen: list[float] = []

    def record(
        self: Any,
        args: Any = None,
        kwargs: Any = None,
        exc: Exception | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        assert exc is not None
        seen.append(float(countdown or 0))
        raise exc

    monkeypatch.setattr(celery.app.task.Task, "retry", record)
    monkeypatch.setattr(random, "randrange", lambda *a, **k: 0)  # full jitter's shortest
    monkeypatch.setattr(random, "uniform", lambda a, b: min(a, b))  # any jitter's shortest

    @app.task(base=ThreadTask, bind=True, shared=False, **options)
    def flaky(self: ThreadTask) -> None:
        raise error

    if settings is not None:
        app.conf.agent_threads = settings
    limit = flaky.retry_limit
    for n in range(limit):
        flaky.apply(retries=n)
    return seen


def test_transient_retries_outlast_a_failover_at_the_shipped_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits = countdowns(monkeypatch, HotStoreUnavailable("Redis unavailable during append"))
    assert len(waits) == DEFAULTS["max_retries"] == 8
    assert sum(waits) >= 4 * DEFAULT_CLUSTER_NODE_TIMEOUT_S, waits
    assert waits == sorted(waits)  # still exponential: 0.5, 1, 2, 4, 8, 15, 15, 15


def test_a_turn_waiting_for_the_lease_waits_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    """threads.acquire_lease's own bounds (60 retries, steps capped at 20 s)."""
    waits = countdowns(
        monkeypatch, LeaseHeld("t", "other-turn", 1000), max_retries=60, backoff_max=20
    )
    assert len(waits) == 60
    assert sum(waits) >= 9 * 60, sum(waits)


def test_the_policy_is_read_from_the_apps_config_when_a_task_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A user's app configured after our tasks were imported (its celery.py loads the
    config later) still gets its own policy: nothing is frozen at import time."""
    settings = {"max_retries": 3, "retry_backoff": 2, "retry_backoff_max": 5}
    waits = countdowns(monkeypatch, HotStoreUnavailable("Redis unavailable"), settings)
    assert waits == [1.0, 2.0, 2.5]  # half of 2, 4, min(5, 8): the shortest equal jitter
