"""Faults around the cold tier: outages, corrupt objects, a crash mid-flush, a big thread."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from storage import ColdStoreError, HotStore, SnapshotCorrupt
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.embedded import EmbeddedRedis, free_port
from storage.errors import ColdStoreUnavailable
from storage.tiered import Threads
from tests.conftest import msg, redis_contents, s3_client_for, without_read_records

REPO = Path(__file__).resolve().parent.parent


def dead_s3(bucket: str) -> S3ColdStore:
    """An S3ColdStore whose endpoint refuses connections (nothing listens there)."""
    client = s3_client_for(f"http://127.0.0.1:{free_port()}", connect_timeout=0.5, read_timeout=0.5)
    return S3ColdStore(client, bucket)


# -- cold tier outage ------------------------------------------------------------------


def test_s3_down_during_flush_surfaces_and_keeps_hot_copy(
    hot: HotStore, s3_bucket: tuple[Any, str], redis_client: redis.Redis
) -> None:
    client, bucket = s3_bucket
    down = Threads(hot, dead_s3(bucket))
    hot.create("t1", state={"s": 1})
    hot.append("t1", [msg("m1"), msg("m2")])
    before = without_read_records(redis_contents(redis_client))
    with pytest.raises(ColdStoreUnavailable) as failure:
        down.flush("t1")
    assert failure.value.transient is True
    assert "t1" in str(failure.value)
    # hot copy untouched, no archive recorded (only the lineage note of what was read)
    assert without_read_records(redis_contents(redis_client)) == before
    up = Threads(hot, S3ColdStore(client, bucket))
    result = up.flush("t1")
    assert (result.status, result.evicted) == ("archived", True)
    assert [m["id"] for m in up.load("t1")] == ["m1", "m2"]


def test_s3_down_during_hydrate_surfaces_and_writes_nothing(
    hot: HotStore, s3_bucket: tuple[Any, str], redis_client: redis.Redis
) -> None:
    client, bucket = s3_bucket
    up = Threads(hot, S3ColdStore(client, bucket))
    up.open("t1", "new")
    up.append("t1", [msg("m1")])
    up.flush("t1")
    before = redis_contents(redis_client)
    with pytest.raises(ColdStoreUnavailable):
        Threads(hot, dead_s3(bucket)).hydrate("t1")
    assert redis_contents(redis_client) == before
    assert up.hydrate("t1").status == "restored"


def test_missing_bucket_is_a_permanent_error(hot: HotStore, s3_bucket: tuple[Any, str]) -> None:
    client, _ = s3_bucket
    threads = Threads(hot, S3ColdStore(client, "no-such-bucket-here"))
    hot.create("t1")
    with pytest.raises(ColdStoreError) as failure:
        threads.flush("t1")
    assert failure.value.transient is False
    assert hot.exists("t1")


# -- corrupt, foreign and truncated archives ------------------------------------------------


def _valid_archive(threads: Threads, cold: ColdStore) -> bytes:
    threads.open("t1", "new")
    threads.append("t1", [msg("m1"), msg("m2")])
    threads.flush("t1")
    assert isinstance(cold, S3ColdStore)
    body: bytes = cold.client.get_object(Bucket=cold.bucket, Key=cold.key("t1"))["Body"].read()
    return body


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: b"PK\x03\x04 a zip file", id="not-gzip"),
        pytest.param(
            lambda raw: gzip.compress(json.dumps({"v": 1, "messages": []}).encode()),
            id="foreign-zeitlich-snapshot",
        ),
        pytest.param(lambda raw: raw[:-12] + bytes(12), id="zeroed-tail"),
        pytest.param(lambda raw: gzip.compress(b"{}"), id="empty-object"),
    ],
)
def test_bad_object_in_s3_raises_snapshot_corrupt_and_leaves_hot_untouched(
    hot: HotStore,
    s3_bucket: tuple[Any, str],
    redis_client: redis.Redis,
    tamper: Any,
) -> None:
    client, bucket = s3_bucket
    cold = S3ColdStore(client, bucket)
    threads = Threads(hot, cold)
    raw = _valid_archive(threads, cold)
    client.put_object(Bucket=bucket, Key=cold.key("t1"), Body=tamper(raw))
    before = redis_contents(redis_client)
    with pytest.raises(SnapshotCorrupt):
        threads.hydrate("t1")
    with pytest.raises(SnapshotCorrupt):
        threads.append("t1", [msg("m3")])
    assert redis_contents(redis_client) == before


def test_archive_of_another_thread_under_this_key_is_refused(
    hot: HotStore, s3_bucket: tuple[Any, str], redis_client: redis.Redis
) -> None:
    client, bucket = s3_bucket
    cold = S3ColdStore(client, bucket)
    threads = Threads(hot, cold)
    _valid_archive(threads, cold)
    threads.open("t2", "new")
    threads.flush("t2")
    client.copy_object(
        Bucket=bucket, Key=cold.key("t2"), CopySource={"Bucket": bucket, "Key": cold.key("t1")}
    )
    with pytest.raises(SnapshotCorrupt, match="belongs to thread 't1'"):
        threads.hydrate("t2")
    assert not hot.exists("t2")


# -- a worker killed between upload and evict --------------------------------------------------


def cold_spec(cold: ColdStore) -> str:
    if isinstance(cold, S3ColdStore):
        return f"s3|{cold.client.meta.endpoint_url}|{cold.bucket}"
    assert isinstance(cold, FileColdStore)
    return f"file|{cold.root}"


def test_flush_killed_between_upload_and_evict_converges(
    redis_server: EmbeddedRedis, threads: Threads, cold: ColdStore
) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg("m1"), msg("m2")])
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.crash_flush", redis_server.url, cold_spec(cold), "t1"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()
    # the upload happened, the hot tier never heard of it, nothing was evicted
    assert cold.head("t1") is not None
    info = threads.hot.info("t1")
    assert (info.cold_version, info.length) == (None, 2)
    threads.append("t1", [msg("m3")])  # a write after the crash
    result = threads.flush("t1")
    assert (result.status, result.evicted, result.version) == ("archived", True, info.version + 1)
    assert [m["id"] for m in threads.load("t1")] == ["m1", "m2", "m3"]


def test_flush_killed_then_retried_without_new_writes_uploads_nothing(
    redis_server: EmbeddedRedis, threads: Threads, cold: ColdStore
) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg("m1")])
    subprocess.run(
        [sys.executable, "-m", "tests.crash_flush", redis_server.url, cold_spec(cold), "t1"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    result = threads.flush("t1")  # the redelivered flush
    assert (result.status, result.size_bytes, result.evicted) == ("unchanged", 0, True)
    assert [m["id"] for m in threads.load("t1")] == ["m1"]


# -- a large thread ------------------------------------------------------------------------------


@pytest.mark.slow
def test_fifty_thousand_messages_flush_and_hydrate_exactly(
    threads: Threads, redis_client: redis.Redis
) -> None:
    threads.open("big", "new", state={"n": 50_000})
    for start in range(0, 50_000, 1000):
        threads.append(
            "big",
            [
                {"id": f"m{i:06d}", "body": {"role": "user", "content": f"message {i} " * 8}}
                for i in range(start, start + 1000)
            ],
        )
    expected = threads.hot.load("big")
    flushed = threads.flush("big")
    assert (flushed.status, flushed.evicted) == ("archived", True)
    assert flushed.size_bytes < len(json.dumps(expected)) / 4  # it is compressed
    assert threads.hydrate("big").status == "restored"
    assert threads.hot.load("big") == expected
    assert threads.hot.load_state("big") == {"n": 50_000}
    assert threads.append("big", [msg("m000000"), msg("m049999"), msg("new")]).appended_ids == (
        "new",
    )
    assert redis_client.keys("*staging*") == []
