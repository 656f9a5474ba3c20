"""Settings that cannot contradict each other: checked when a worker starts.

``check_settings(app.conf)`` lists every contradiction between the turn timers
(lease, heartbeat, reconciler), the Redis broker's visibility timeout, the retry
countdowns and the task time limits, each as a sentence naming the setting (and
its ``AGENT_THREADS_*`` variable) to change. A worker of this app refuses to start
when there is one (``PreflightStep``, a worker bootstep: ``celery -A tasks.app
worker`` and ``agent-threads worker`` alike) and says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import bootsteps

_REDIS_SCHEMES = ("redis://", "rediss://", "sentinel://", "redis+socket://")


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def check_settings(conf: Mapping[str, Any]) -> list[str]:
    """Every contradiction in a Celery app's settings (empty: they fit together)."""
    problems: list[str] = []
    ours: Mapping[str, Any] = conf.get("agent_threads") or {}
    lease = int(ours.get("lease_ttl_ms", 20_000))
    beat = int(ours.get("heartbeat_ms", lease // 4))
    # redis-py retries a timed-out call ``redis_retries`` times: a heartbeat can wait
    # that many socket timeouts more
    attempts = 1 + int(ours.get("redis_retries", 1))
    socket_ms = float(ours.get("redis_socket_timeout", 5.0)) * 1000 * attempts
    if beat < 100:
        problems.append(
            f"heartbeat_ms={beat} (AGENT_THREADS_HEARTBEAT_MS): at least 100 ms, or every "
            "running step writes to Redis continuously"
        )
    if beat * 2 > lease:
        problems.append(
            f"heartbeat_ms={beat} (AGENT_THREADS_HEARTBEAT_MS) must be at most half of "
            f"lease_ttl_ms={lease} (AGENT_THREADS_LEASE_TTL_MS): one missed heartbeat "
            "would lose a running turn's lease"
        )
    if lease <= beat + socket_ms:
        problems.append(
            f"lease_ttl_ms={lease} (AGENT_THREADS_LEASE_TTL_MS) must exceed heartbeat_ms "
            f"({beat}) plus the Redis socket timeouts of one call with its retries "
            f"({socket_ms:.0f} ms: AGENT_THREADS_REDIS_SOCKET_TIMEOUT x (1 + "
            "AGENT_THREADS_REDIS_RETRIES)): a heartbeat that waits them must still renew "
            "the lease in time"
        )
    schedule: Mapping[str, Any] = conf.get("beat_schedule") or {}
    periods = {name: float(e.get("schedule", 0)) for name, e in schedule.items() if _is_number(e)}
    reconcile = periods.get("reconcile-turns")
    if reconcile is not None and reconcile * 1000 > lease:
        problems.append(
            f"the turn reconciler runs every {reconcile:g} s "
            "(AGENT_THREADS_TURN_RECONCILE_EVERY), longer than lease_ttl_ms="
            f"{lease} (AGENT_THREADS_LEASE_TTL_MS): a dead worker's turn would wait for it"
        )
    idle = ours.get("idle_seconds")
    if idle is not None and float(idle) * 1000 <= lease:
        problems.append(
            f"idle_seconds={idle} (AGENT_THREADS_IDLE_SECONDS) must exceed lease_ttl_ms="
            f"{lease} ms (AGENT_THREADS_LEASE_TTL_MS)"
        )
    retries = int(ours.get("max_retries", 8))
    backoff = float(ours.get("retry_backoff", 1))
    backoff_max = float(ours.get("retry_backoff_max", 30))
    if retries < 0:
        problems.append(f"max_retries={retries} (AGENT_THREADS_MAX_RETRIES): use 0 or more")
    if backoff <= 0:
        problems.append(f"retry_backoff={backoff:g} (AGENT_THREADS_RETRY_BACKOFF) must be > 0")
    if backoff_max < backoff:
        problems.append(
            f"retry_backoff_max={backoff_max:g} (AGENT_THREADS_RETRY_BACKOFF_MAX) must be at "
            f"least retry_backoff={backoff:g} (AGENT_THREADS_RETRY_BACKOFF)"
        )
    broker = str(conf.get("broker_url") or "")
    if broker.startswith(_REDIS_SCHEMES):
        options: Mapping[str, Any] = conf.get("broker_transport_options") or {}
        visibility = float(options.get("visibility_timeout", 3600))
        if visibility <= backoff_max:
            problems.append(
                f"visibility_timeout={visibility:g} s (AGENT_THREADS_VISIBILITY_TIMEOUT) must "
                f"exceed the longest retry countdown, retry_backoff_max={backoff_max:g} s "
                "(AGENT_THREADS_RETRY_BACKOFF_MAX): the Redis broker delivers a message a "
                "worker holds for a longer countdown a second time"
            )
        restore = options.get("unacked_restore_interval")
        if restore is not None and float(restore) >= visibility:
            problems.append(
                f"unacked_restore_interval={restore} (AGENT_THREADS_RESTORE_INTERVAL) must be "
                f"shorter than visibility_timeout={visibility:g} s "
                "(AGENT_THREADS_VISIBILITY_TIMEOUT)"
            )
    soft = _seconds(conf.get("task_soft_time_limit"))
    hard = _seconds(conf.get("task_time_limit"))
    if soft is not None and hard is not None and soft >= hard:
        problems.append(
            f"task_soft_time_limit={soft:g} must be shorter than task_time_limit={hard:g}: "
            "the soft limit is the task's chance to stop cleanly before the hard one"
        )
    s3_call = float(ours.get("s3_connect_timeout", 5)) + float(ours.get("s3_read_timeout", 30))
    slowest = socket_ms / 1000 + s3_call * int(ours.get("s3_max_attempts", 3))
    if hard is not None and hard <= slowest:
        problems.append(
            f"task_time_limit={hard:g} s is no longer than one slow storage call ("
            f"{slowest:g} s: Redis with its retries, S3 connect + read timeouts x "
            "AGENT_THREADS_S3_MAX_ATTEMPTS): a flush could be killed every time it runs, and "
            "its turn woken again for ever"
        )
    return problems


def _is_number(entry: Any) -> bool:
    return isinstance(entry, Mapping) and isinstance(entry.get("schedule"), int | float)


class PreflightStep(bootsteps.Step):
    """Worker bootstep: refuse to start with contradictory settings."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        problems = check_settings(parent.app.conf)
        if problems:
            listed = "\n".join(f"  - {p}" for p in problems)
            # SystemExit: the worker ends with status 1 and this message, no traceback
            raise SystemExit(
                f"agent-threads: this worker's settings contradict each other:\n{listed}"
            )
        super().__init__(parent, **kwargs)
