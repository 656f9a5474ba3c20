"""The cold tier: one archive per thread, its head object written with compare-and-swap.

The object at ``object_key`` is the archive: a schema-2 manifest (``storage.archive``)
or a whole schema-1 snapshot. ``write_bytes(tid, data, if_match=None)`` creates it
only if there is none (S3 ``If-None-Match: *``); ``if_match=etag`` replaces it only
if it still has that etag (S3 ``If-Match``). A lost race raises ``ColdStoreConflict``,
so two writers can never silently overwrite each other. The manifest's parts live
under ``parts_prefix``, each written once under a fresh name (``put_part``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from storage.archive import (
    FETCH_THREADS,
    GC_DELAY_MS,
    Manifest,
    decode_object,
    read_archive,
    thread_id_in,
    write_base,
)
from storage.errors import (
    AgentThreadsError,
    ColdStoreConflict,
    ColdStoreError,
    ColdStoreUnavailable,
)
from storage.keys import (
    decode_thread_id,
    encode_thread_id,
    validate_namespace,
    validate_thread_id,
)
from storage.snapshot import (
    DEFAULT_MAX_SNAPSHOT_BYTES,
    Compression,
    Snapshot,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef


class ColdStore(Protocol):
    """Where evicted threads live. Implementations: ``S3ColdStore``, ``FileColdStore``."""

    compression: Compression
    compression_level: int | None

    def read(self, thread_id: str) -> tuple[Snapshot, str] | None:
        """The whole archive (manifest and parts, or a schema-1 snapshot) and its etag,
        or None if there is none; ``SnapshotCorrupt`` if anything is bad."""
        ...

    def read_object(self, thread_id: str) -> tuple[bytes, str] | None:
        """The raw bytes at the archive's key and their etag, or None."""
        ...

    def head(self, thread_id: str) -> str | None:
        """The etag of the thread's snapshot, or None; reads no content."""
        ...

    def write(self, thread_id: str, snapshot: Snapshot, if_match: str | None) -> str:
        """Store ``snapshot``; create-only when ``if_match`` is None. Returns the new etag."""
        ...

    def write_bytes(self, thread_id: str, data: bytes, if_match: str | None) -> str:
        """Store an encoded manifest or schema-1 snapshot at the archive's key, with the
        compare-and-swap of ``write``."""
        ...

    def put_part(self, thread_id: str, name: str, data: bytes) -> None:
        """Store one part of the archive; create-only (names are never reused)."""
        ...

    def get_part(self, thread_id: str, name: str) -> bytes | None:
        """The bytes of one part, or None if it does not exist."""
        ...

    def delete_parts(self, thread_id: str, names: Iterable[str]) -> None:
        """Remove parts; idempotent."""
        ...

    def list_parts(self, thread_id: str) -> list[PartObject]:
        """Every part stored for the thread, referenced or not."""
        ...

    def delete(self, thread_id: str) -> None:
        """Remove the archive and then all its parts; idempotent."""
        ...

    def list(self, prefix: str = "") -> Iterator[ColdObject]:
        """Every archive whose thread id starts with ``prefix``, in no particular order.

        ``prefix`` filters thread ids, not object keys: the shard directory comes
        first in the key, so every shard is listed either way. Objects that do not
        follow the key layout (foreign files, temporaries, lock files) are skipped.
        """
        ...


def object_key(prefix: str, thread_id: str) -> str:
    """``prefix/<2-hex shard>/<name>.json.gz``: the shard spreads keys over S3
    partitions; the name is ``object_name(thread_id)``."""
    shard = hashlib.sha256(validate_thread_id(thread_id).encode()).hexdigest()[:2]
    name = object_name(thread_id)
    return f"{prefix}/{shard}/{name}.json.gz" if prefix else f"{shard}/{name}.json.gz"


MAX_NAME_LENGTH = 160
"""Longest encoded id used as an object name; file systems allow 255 bytes a name,
and the name gets suffixes (``.json.gz.lock``, temporaries, ``.parts``)."""
_DIGEST = "="  # encode_thread_id writes "=" as %3D, so no other name starts with it


def object_name(thread_id: str) -> str:
    """A thread's object name: ``encode_thread_id(thread_id)`` (the id itself for a
    plain id), or for an encoding over ``MAX_NAME_LENGTH`` characters ``=`` and the
    SHA-256 of the id. A digest-named archive's manifest holds the id, which reads
    check and listings return."""
    name = encode_thread_id(thread_id)
    if len(name) <= MAX_NAME_LENGTH:
        return name
    return _DIGEST + hashlib.sha256(thread_id.encode("utf-8")).hexdigest()


def parts_prefix(prefix: str, thread_id: str) -> str:
    """Where the parts of a thread's archive live: ``<object key minus .json.gz>.parts/``.
    Part names never end in ``.json.gz``, so a listing never takes one for a thread."""
    return object_key(prefix, thread_id)[: -len(_SUFFIX)] + ".parts/"


def namespaced_prefix(prefix: str, namespace: str | None) -> str:
    """The prefix a store keys its objects under: ``prefix/<namespace>`` when a
    namespace is given. Two namespaces (tenants) sharing a bucket or directory then
    never share an object key, so neither can read, overwrite or delete the other's
    archive of the same thread id. Without a namespace: ``prefix`` (the layout of a
    single-namespace deployment)."""
    prefix = prefix.strip("/")
    if namespace is None:
        return prefix
    validate_namespace(namespace)
    return f"{prefix}/{namespace}" if prefix else namespace


_SUFFIX = ".json.gz"


def thread_id_of_key(prefix: str, key: str, read_id: Callable[[str], str | None]) -> str | None:
    """The thread id whose ``object_key`` is ``key``, or None for any other object
    (foreign files, temporaries, a wrong shard). ``read_id(key)`` gives the id a
    digest-named archive holds (one read; only ids too long to be a name)."""
    name = key.rpartition("/")[2]
    if not name.endswith(_SUFFIX):
        return None
    name = name[: -len(_SUFFIX)]
    if name.startswith(_DIGEST):
        found = read_id(key)
        thread_id = found if found is not None and object_name(found) == name else None
    else:
        thread_id = decode_thread_id(name)
    try:
        return thread_id if thread_id is not None and object_key(prefix, thread_id) == key else None
    except AgentThreadsError:  # not a valid thread id
        return None


class PartObject(NamedTuple):
    """One stored part: ``(name, size, last_modified)``."""

    name: str
    size: int
    last_modified: datetime


class ColdObject(NamedTuple):
    """One archive in a cold-store listing: ``(thread_id, size, last_modified)``."""

    thread_id: str
    size: int
    """Bytes stored (compressed)."""
    last_modified: datetime
    """When the archive was last written (timezone-aware, UTC)."""


def write_archive(
    store: ColdStore, thread_id: str, snapshot: Snapshot, if_match: str | None
) -> str:
    """``ColdStore.write``: ``snapshot`` as a new base and manifest; the parts of the
    archive it replaces become garbage (``storage.archive``)."""
    if snapshot.thread_id != thread_id:
        raise ValueError(f"snapshot of {snapshot.thread_id!r} written as {thread_id!r}")
    previous = None
    if if_match is not None:
        found = store.read_object(thread_id)
        if found is not None and found[1] == if_match:
            with contextlib.suppress(AgentThreadsError):
                decoded = decode_object(found[0], thread_id)
                previous = decoded.layout if isinstance(decoded, Manifest) else None
    written = write_base(
        store, snapshot, if_match, previous, now_ms=int(time.time() * 1000), gc_delay_ms=GC_DELAY_MS
    )
    if written.collect:
        store.delete_parts(thread_id, written.collect)
    return written.etag


_TRANSIENT_CODES = {
    "ConditionalRequestConflict",  # 409: a concurrent conditional write is in flight
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
}


def _s3_error(
    exc: Exception, action: str, thread_id: str, *, conditional: bool = False
) -> ColdStoreError:
    """Translate a boto3 failure into a typed error (transient or not)."""
    where = f"S3 {action} of thread {thread_id!r}"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        # 412 is a lost CAS; moto answers 404 for If-Match on a missing key.
        missing_key = status == 404 and code != "NoSuchBucket"
        if status == 412 or code == "PreconditionFailed" or (conditional and missing_key):
            return ColdStoreConflict(f"{where}: the archive changed concurrently ({code})")
        if code in _TRANSIENT_CODES or status >= 500 or status in (408, 409, 429):
            return ColdStoreUnavailable(f"{where} failed, retry later: {code} ({status})")
        return ColdStoreError(f"{where} failed: {code} ({status}): {error.get('Message', '')}")
    return ColdStoreUnavailable(f"{where} failed, retry later: {exc}")


class S3ColdStore:
    """Snapshots in S3 (AWS, MinIO, SeaweedFS, ...) over a boto3 client.

    ``sse`` is passed to ``put_object`` as is, e.g. ``{"ServerSideEncryption":
    "aws:kms", "SSEKMSKeyId": "..."}``. Retries of transport errors are the
    boto3 client's (configure ``retries`` on it); everything else surfaces as
    a typed error. ``namespace`` (the ``HotStore``'s, when several share the
    bucket and prefix) becomes the last segment of ``prefix``, see
    ``namespaced_prefix``.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        prefix: str = "threads",
        *,
        compression: Compression = "gzip",
        compression_level: int | None = None,
        sse: Mapping[str, str] | None = None,
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
        namespace: str | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.namespace = namespace
        self.prefix = namespaced_prefix(prefix, namespace)
        self.compression: Compression = compression
        self.compression_level = compression_level
        self.sse = dict(sse or {})
        self.max_snapshot_bytes = max_snapshot_bytes
        self._bucket_seen = False
        self._pool: ThreadPoolExecutor | None = None

    @property
    def fetch_pool(self) -> ThreadPoolExecutor:
        """The threads a hydrate fetches an archive's parts on, in parallel (boto3
        clients are thread-safe); created on first use, shared by every read."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="cold-fetch")
        return self._pool

    def key(self, thread_id: str) -> str:
        return object_key(self.prefix, thread_id)

    def _check_bucket(self, thread_id: str) -> None:
        """Raise a permanent error if the bucket is missing (checked once per store)."""
        if self._bucket_seen:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            error = _s3_error(exc, "bucket check", thread_id)
            if isinstance(exc, ClientError) and not error.transient:
                raise ColdStoreError(f"S3 bucket {self.bucket!r} is missing or forbidden") from exc
            raise error from exc
        self._bucket_seen = True

    def read(self, thread_id: str) -> tuple[Snapshot, str] | None:
        return read_archive(self, thread_id, max_bytes=self.max_snapshot_bytes)

    def _get(self, key: str, thread_id: str, action: str) -> tuple[bytes, str] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            data = response["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise _s3_error(exc, action, thread_id) from exc
        except BotoCoreError as exc:
            raise _s3_error(exc, action, thread_id) from exc
        return data, response["ETag"]

    def read_object(self, thread_id: str) -> tuple[bytes, str] | None:
        return self._get(self.key(thread_id), thread_id, "read")

    def _id_in(self, key: str) -> str | None:
        found = self._get(key, key, "read")
        return None if found is None else thread_id_in(found[0], max_bytes=self.max_snapshot_bytes)

    def get_part(self, thread_id: str, name: str) -> bytes | None:
        found = self._get(self._part_key(thread_id, name), thread_id, f"read of part {name}")
        return None if found is None else found[0]

    def _part_key(self, thread_id: str, name: str) -> str:
        return parts_prefix(self.prefix, thread_id) + name

    def put_part(self, thread_id: str, name: str, data: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._part_key(thread_id, name),
                Body=data,
                ContentType="application/gzip",
                IfNoneMatch="*",
                **self.sse,  # type: ignore[arg-type]
            )
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, f"write of part {name}", thread_id) from exc

    def delete_parts(self, thread_id: str, names: Iterable[str]) -> None:
        keys: list[ObjectIdentifierTypeDef] = [
            {"Key": self._part_key(thread_id, name)} for name in names
        ]
        for first in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys
            try:
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys[first : first + 1000]}
                )
            except (ClientError, BotoCoreError) as exc:
                raise _s3_error(exc, "delete of parts", thread_id) from exc

    def list_parts(self, thread_id: str) -> list[PartObject]:
        prefix = parts_prefix(self.prefix, thread_id)
        found: list[PartObject] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                for item in page.get("Contents", []):
                    modified = item["LastModified"].astimezone(UTC)
                    found.append(
                        PartObject(item["Key"][len(prefix) :], int(item["Size"]), modified)
                    )
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, "listing of parts", thread_id) from exc
        return found

    def head(self, thread_id: str) -> str | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self.key(thread_id))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                self._check_bucket(thread_id)  # a HEAD 404 does not say what is missing
                return None
            raise _s3_error(exc, "head", thread_id) from exc
        except BotoCoreError as exc:
            raise _s3_error(exc, "head", thread_id) from exc
        return response["ETag"]

    def write(self, thread_id: str, snapshot: Snapshot, if_match: str | None) -> str:
        return write_archive(self, thread_id, snapshot, if_match)

    def write_bytes(self, thread_id: str, data: bytes, if_match: str | None) -> str:
        """Store encoded archive bytes with the same CAS contract as ``write``."""
        condition = {"IfNoneMatch": "*"} if if_match is None else {"IfMatch": if_match}
        conditional = if_match is not None  # only If-Match can 404 on a missing key
        try:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(thread_id),
                Body=data,
                ContentType="application/x-ndjson",
                **condition,  # type: ignore[arg-type]
                **self.sse,  # type: ignore[arg-type]
            )
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, "write", thread_id, conditional=conditional) from exc
        return response["ETag"]

    def delete(self, thread_id: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(thread_id))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, "delete", thread_id) from exc
        self.delete_parts(thread_id, [p.name for p in self.list_parts(thread_id)])

    def list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[ColdObject]:
        """``ColdStore.list`` over ``ListObjectsV2`` pages (``page_size`` keys each)."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=f"{self.prefix}/" if self.prefix else "",
            PaginationConfig={"PageSize": page_size},
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    thread_id = thread_id_of_key(self.prefix, item["Key"], self._id_in)
                    if thread_id is not None and thread_id.startswith(prefix):
                        modified = item["LastModified"].astimezone(UTC)
                        yield ColdObject(thread_id, int(item["Size"]), modified)
        except (ClientError, BotoCoreError) as exc:
            error = _s3_error(exc, "list", "*")
            where = f"s3://{self.bucket}/{self.prefix}"
            raise type(error)(f"S3 listing of {where} failed: {error}") from exc


class FileColdStore:
    """Snapshots as files under ``root``: the embedded default, same CAS contract as S3.

    A write goes to a temporary file, is fsynced and renamed into place (readers
    see the old or the new snapshot, never a torn one); the compare-and-swap
    runs under an exclusive ``flock`` on a per-thread lock file, so it holds
    across threads and processes on one machine. The etag is the content's hash.
    ``namespace``: as for ``S3ColdStore``.
    """

    def __init__(
        self,
        root: str | Path,
        prefix: str = "threads",
        *,
        compression: Compression = "gzip",
        compression_level: int | None = None,
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
        namespace: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.namespace = namespace
        self.prefix = namespaced_prefix(prefix, namespace)
        self.compression: Compression = compression
        self.compression_level = compression_level
        self.max_snapshot_bytes = max_snapshot_bytes

    def path(self, thread_id: str) -> Path:
        return self.root / object_key(self.prefix, thread_id)

    @staticmethod
    def _etag(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'

    def _read_bytes(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ColdStoreUnavailable(f"cannot read {path}: {exc}") from exc

    @contextlib.contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise ColdStoreUnavailable(f"cannot lock {path}: {exc}") from exc
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock)  # closing the descriptor releases the flock

    def read(self, thread_id: str) -> tuple[Snapshot, str] | None:
        return read_archive(self, thread_id, max_bytes=self.max_snapshot_bytes)

    def read_object(self, thread_id: str) -> tuple[bytes, str] | None:
        data = self._read_bytes(self.path(thread_id))
        return None if data is None else (data, self._etag(data))

    def _id_in(self, key: str) -> str | None:
        data = self._read_bytes(self.root / key)
        return None if data is None else thread_id_in(data, max_bytes=self.max_snapshot_bytes)

    def _parts_dir(self, thread_id: str) -> Path:
        return self.root / parts_prefix(self.prefix, thread_id)

    def get_part(self, thread_id: str, name: str) -> bytes | None:
        return self._read_bytes(self._parts_dir(thread_id) / name)

    def put_part(self, thread_id: str, name: str, data: bytes) -> None:
        directory = self._parts_dir(thread_id)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ColdStoreUnavailable(f"cannot create {directory}: {exc}") from exc
        self._replace(directory / name, data, create_only=True)

    def delete_parts(self, thread_id: str, names: Iterable[str]) -> None:
        directory = self._parts_dir(thread_id)
        try:
            for name in names:
                (directory / name).unlink(missing_ok=True)
        except OSError as exc:
            raise ColdStoreUnavailable(f"cannot delete parts in {directory}: {exc}") from exc

    def list_parts(self, thread_id: str) -> list[PartObject]:
        directory = self._parts_dir(thread_id)
        found: list[PartObject] = []
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return found
        except OSError as exc:
            raise ColdStoreUnavailable(f"cannot list {directory}: {exc}") from exc
        for entry in entries:
            if entry.name.startswith("."):  # a temporary of a write in progress
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                found.append(PartObject(entry.name, stat.st_size, modified))
        return found

    def head(self, thread_id: str) -> str | None:
        data = self._read_bytes(self.path(thread_id))
        return None if data is None else self._etag(data)

    def write(self, thread_id: str, snapshot: Snapshot, if_match: str | None) -> str:
        return write_archive(self, thread_id, snapshot, if_match)

    def write_bytes(self, thread_id: str, data: bytes, if_match: str | None) -> str:
        """Store encoded archive bytes with the same CAS contract as ``write``."""
        path = self.path(thread_id)
        with self._locked(path):
            current = self._read_bytes(path)
            current_etag = None if current is None else self._etag(current)
            if current_etag != if_match:
                raise ColdStoreConflict(
                    f"archive of thread {thread_id!r} changed concurrently "
                    f"(expected {if_match or 'none'}, found {current_etag or 'none'})"
                )
            self._replace(path, data)
        return self._etag(data)

    @staticmethod
    def _replace(path: Path, data: bytes, *, create_only: bool = False) -> None:
        """Write ``data`` to a temporary, fsync it and rename it into place: readers see
        the old content or the new, never a torn file. ``create_only``: hard-link it
        into place instead, which fails if ``path`` exists (``ColdStoreConflict``)."""
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            if create_only:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ColdStoreConflict(f"{path} exists already") from None
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                os.replace(tmp, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ColdStoreUnavailable(f"cannot write {path}: {exc}") from exc

    def delete(self, thread_id: str) -> None:
        path = self.path(thread_id)
        with self._locked(path):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise ColdStoreUnavailable(f"cannot delete {path}: {exc}") from exc
            self.delete_parts(thread_id, [p.name for p in self.list_parts(thread_id)])
            with contextlib.suppress(OSError):
                self._parts_dir(thread_id).rmdir()

    def list(self, prefix: str = "") -> Iterator[ColdObject]:
        """``ColdStore.list`` over the shard directories; size and mtime from ``stat``."""
        base = self.root / self.prefix if self.prefix else self.root
        try:
            shards = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ColdStoreUnavailable(f"cannot list {base}: {exc}") from exc
        for shard in shards:
            try:
                entries = list(os.scandir(base / shard))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ColdStoreUnavailable(f"cannot list {base / shard}: {exc}") from exc
            for entry in entries:
                key = (
                    f"{self.prefix}/{shard}/{entry.name}"
                    if self.prefix
                    else f"{shard}/{entry.name}"
                )
                thread_id = thread_id_of_key(self.prefix, key, self._id_in)
                if thread_id is None or not thread_id.startswith(prefix):
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # deleted since the directory was read
                    continue
                modified = datetime.fromtimestamp(stat.st_mtime, UTC)
                yield ColdObject(thread_id, stat.st_size, modified)
