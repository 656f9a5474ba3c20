"""A worker refuses settings that contradict each other (tasks/preflight.py): the
rules one by one, and real `celery worker` / `agent-threads worker` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storage.embedded import EmbeddedRedis
from tasks.app import app
from tasks.preflight import check_settings

REPO = Path(__file__).resolve().parent.parent


def conf(**agent_threads: Any) -> dict[str, Any]:
    """The shipped settings with some ``agent_threads`` values changed."""
    settings = {key: app.conf[key] for key in ("broker_url", "broker_transport_options")}
    settings["beat_schedule"] = dict(app.conf.beat_schedule)
    settings["agent_threads"] = {**app.conf.agent_threads, **agent_threads}
    return settings


def test_the_shipped_defaults_fit_together() -> None:
    assert check_settings(app.conf) == []
    assert check_settings(conf()) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"heartbeat_ms": 15_000}, "AGENT_THREADS_HEARTBEAT_MS"),
        ({"heartbeat_ms": 50}, "AGENT_THREADS_HEARTBEAT_MS"),
        ({"lease_ttl_ms": 6_000, "heartbeat_ms": 2_000}, "AGENT_THREADS_REDIS_SOCKET_TIMEOUT"),
        ({"idle_seconds": 10}, "AGENT_THREADS_IDLE_SECONDS"),
        ({"max_retries": -1}, "AGENT_THREADS_MAX_RETRIES"),
        ({"retry_backoff": 0}, "AGENT_THREADS_RETRY_BACKOFF"),
        ({"retry_backoff": 8, "retry_backoff_max": 4}, "AGENT_THREADS_RETRY_BACKOFF_MAX"),
    ],
)
def test_each_contradiction_names_the_setting_to_change(change: dict[str, Any], named: str) -> None:
    problems = check_settings(conf(**change))
    assert problems
    assert any(named in p for p in problems), problems


def test_a_reconciler_slower_than_the_lease_is_refused() -> None:
    settings = conf()
    settings["beat_schedule"]["reconcile-turns"] = {"schedule": 60.0}
    assert any("AGENT_THREADS_TURN_RECONCILE_EVERY" in p for p in check_settings(settings))


def test_a_visibility_timeout_under_the_retry_countdowns_is_refused_on_redis_only() -> None:
    settings = conf()
    settings["broker_transport_options"] = {"visibility_timeout": 10}
    assert any("AGENT_THREADS_VISIBILITY_TIMEOUT" in p for p in check_settings(settings))
    settings["broker_url"] = "amqp://guest:guest@127.0.0.1:5672//"  # no visibility timeout
    assert check_settings(settings) == []
    settings["broker_url"] = "redis://127.0.0.1:6379/1"
    settings["broker_transport_options"] = {
        "visibility_timeout": 60,
        "unacked_restore_interval": 90,
    }
    assert any("AGENT_THREADS_RESTORE_INTERVAL" in p for p in check_settings(settings))


def test_time_limits_must_leave_room_for_the_storage_calls() -> None:
    settings = conf()
    settings.update(task_soft_time_limit=600, task_time_limit=300)
    assert any("task_soft_time_limit" in p for p in check_settings(settings))
    settings.update(task_soft_time_limit=None, task_time_limit=300)
    assert check_settings(settings) == []
    settings.update(task_time_limit=100)  # under 115 s: Redis 2 x 5 s + S3 3 x (5 + 30) s
    assert any("task_time_limit" in p for p in check_settings(settings))


def run_worker(command: list[str], redis_server: EmbeddedRedis, **env: str) -> Any:
    base = f"redis://127.0.0.1:{redis_server.port}"
    environment = {
        **os.environ,
        "AGENT_THREADS_BROKER_URL": f"{base}/1",
        "AGENT_THREADS_RESULT_BACKEND": f"{base}/2",
        **env,
    }
    return subprocess.run(
        command, env=environment, cwd=str(REPO), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "celery", "-A", "tasks.app", "worker", "-l", "WARNING"],
        [sys.executable, "-m", "tasks.cli", "worker"],
    ],
    ids=["celery-worker", "agent-threads-worker"],
)
def test_a_worker_with_contradictory_settings_refuses_to_start(
    command: list[str], redis_server: EmbeddedRedis
) -> None:
    done = run_worker(command, redis_server, AGENT_THREADS_HEARTBEAT_MS="15000")
    assert done.returncode != 0
    assert "AGENT_THREADS_HEARTBEAT_MS" in done.stderr
    assert "Traceback" not in done.stderr  # the reason, not a stack
