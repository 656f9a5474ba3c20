"""The embedded redis-server used by the demo, tests and benchmarks."""

from __future__ import annotations

import os

import pytest
import redis

from storage.embedded import EmbeddedRedis, find_redis_server


def test_find_redis_server_returns_an_executable() -> None:
    assert os.access(find_redis_server(), os.X_OK)


def test_embedded_redis_starts_answers_and_stops_cleanly() -> None:
    server = EmbeddedRedis()
    with server:
        assert server.client().ping()
        process = server.process
        assert process is not None
    assert process.returncode is not None
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis(port=server.port, socket_connect_timeout=0.5).ping()


def test_embedded_redis_reports_a_failed_start(tmp_path: object) -> None:
    with pytest.raises(RuntimeError, match="exited at start"):
        EmbeddedRedis(extra_args=["--no-such-option", "1"]).start()
