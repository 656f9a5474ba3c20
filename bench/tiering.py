"""Benchmark: Threads.flush / Threads.hydrate against the raw I/O they cannot beat.

Run with ``python -m bench.tiering [--quick] [--profile]`` from the repository
root. It starts its own redis-server (``storage.embedded.EmbeddedRedis``) and
an S3 endpoint (moto's server over HTTP, ``tests.servers.MotoServer``) and
always stops both. For each thread size and each cold store (``S3ColdStore`` on
moto, ``FileColdStore`` in a temporary directory) it prints our time, the
"physical floor" measured in the same run with the same bytes, and the ratio.

One repeat (a "cycle") is: append one message (untimed, so the next flush
really uploads), ``Threads.flush`` (archive + evict), ``Threads.hydrate``
(restore), and the floor's mirror image on a raw Redis list and a raw object:

* flush floor: ``LRANGE`` of the same records, join + gzip (same level, and the
  output is checked to be byte-identical to our snapshot), one ``put_object``
  of those bytes (file store: write + fsync + rename + fsync of the directory),
  ``DEL`` of the list;
* hydrate floor: ``get_object`` (file store: read), gunzip, split, and one
  pipeline of ``RPUSH`` commands (chunks of ``restore_chunk`` records).

Our work that the floor skips: the dedup ledger (read as HGETALL on flush,
written as HSET on hydrate), checksums, header/index JSON, validation of every
id and record on decode, compare-and-swap, the atomic staging + swap scripts.

Method: ``time.perf_counter_ns`` around the call only, the garbage collector
collected before and paused during each timed call, one warm-up cycle per
(store, size) (it also makes the first, create-only upload), ours and floor
alternating which goes first every cycle; medians are reported. Message bodies
are seeded-random ~1 KB chat turns (user text, assistant text + tool call, tool
output with log lines and ids), so compression ratios are realistic.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import platform
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import boto3
import redis
import zstandard
from botocore.config import Config

from storage import HotStore
from storage.cold import ColdStore, FileColdStore, S3ColdStore
from storage.embedded import EmbeddedRedis
from storage.records import encode_batch
from storage.snapshot import (
    DEFAULT_LEVELS,
    Compression,
    Snapshot,
    decode_snapshot,
    encode_snapshot,
)
from storage.tiered import Threads
from tests.servers import MotoServer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUILD_BATCH = 1000
"""Messages per append while building a thread (the default ``Limits.max_batch``)."""

RESTORE_CHUNK = 2000
"""``Threads(restore_chunk=...)``; the floor pipelines RPUSH in chunks of the same size."""

PROFILE_SIZE = 50_000
"""Thread size profiled by ``--profile`` (in quick mode too)."""

GZIP_LEVEL = DEFAULT_LEVELS["gzip"]  # what storage.snapshot uses
ZSTD_LEVEL = DEFAULT_LEVELS["zstd"]


@dataclass(frozen=True)
class Mode:
    sizes: tuple[int, ...]
    cycles: dict[int, int]  # timed flush+hydrate cycles per size (plus one warm-up)
    codec: dict[int, int]  # timed encode/decode repeats per size


QUICK = Mode(
    sizes=(100, 1_000),
    cycles={100: 5, 1_000: 3},
    codec={100: 20, 1_000: 5},
)
FULL = Mode(
    sizes=(100, 1_000, 10_000, 50_000),
    cycles={100: 15, 1_000: 10, 10_000: 7, 50_000: 5},
    codec={100: 50, 1_000: 20, 10_000: 7, 50_000: 5},
)


# -- realistic chat messages ------------------------------------------------------

_VOCABULARY = (
    "the a to of and is in that it for on with as this be are was we you i not can "
    "will have from or by an at if but so do use should would could one all more when "
    "which there their what about then than them into only also just like next first "
    "because after before where need make check look run set get see found service "
    "deployment cluster pod container image build test tests failing passed error "
    "errors warning timeout retry retries latency p95 p99 throughput memory cpu disk "
    "queue worker workers request requests response database index query schema "
    "migration table column row transaction lock connection pool cache redis postgres "
    "kafka topic partition consumer producer offset config value values helm chart "
    "readiness liveness probe restart restarts crash loop log logs trace span metric "
    "dashboard alert incident rollback release branch commit merge review patch diff "
    "function method class module package import dependency version upgrade python "
    "typescript handler endpoint api client server token auth user users customer "
    "invoice payment payments order orders refund checkout cart inventory shipment "
    "report summary analysis plan step steps option options tradeoff risk cost budget "
    "seconds minutes hours yesterday today week limit threshold increase decrease "
    "slow fast stable flaky intermittent regression root cause fix fixed workaround "
    "I'll let's here's it's doesn't isn't can't we're you're that's"
)
_WORDS = tuple(_VOCABULARY.split())
_WEIGHTS = [1.0 / (rank + 1) ** 0.9 for rank in range(len(_WORDS))]  # roughly Zipfian
_TOOLS = ("search_repository", "read_file", "run_query", "kubectl", "http_get", "grep_logs")
_PATHS = ("deploy/helm", "services/payments", "services/orders", "lib/db", "infra/k8s", "docs")
_LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
_EPOCH = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)


def _words(rng: random.Random, low: int, high: int) -> str:
    text = " ".join(rng.choices(_WORDS, weights=_WEIGHTS, k=rng.randint(low, high)))
    return text[:1].upper() + text[1:] + "."


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"


def chat_body(n: int) -> dict[str, Any]:
    """Turn ``n`` of a conversation: deterministic, varied, about 1 KB encoded."""
    rng = random.Random(n)
    when = _EPOCH + timedelta(seconds=7 * n + rng.random())
    metadata_ = {
        "turn_id": f"turn_{_hex(rng, 16)}",
        "created_at": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "trace_id": _hex(rng, 32),
    }
    kind = n % 3
    if kind == 0:
        return {
            "role": "user",
            "content": [{"type": "text", "text": _words(rng, 110, 190)}],
            "metadata": {**metadata_, "user": f"u_{_hex(rng, 6)}", "channel": "slack"},
        }
    if kind == 1:
        path = f"{rng.choice(_PATHS)}/{rng.choice(_WORDS)}_{rng.randint(1, 99)}.py"
        return {
            "role": "assistant",
            "content": [
                {"type": "text", "text": _words(rng, 60, 110)},
                {
                    "type": "tool_use",
                    "id": f"toolu_01{_hex(rng, 22)}",
                    "name": rng.choice(_TOOLS),
                    "input": {
                        "query": _words(rng, 3, 8),
                        "paths": [path],
                        "max_results": rng.choice((5, 10, 20, 50)),
                    },
                },
            ],
            "model": "claude-sonnet-4-5-20250929",
            "stop_reason": "tool_use",
            "usage": {
                "input_tokens": rng.randint(2_000, 120_000),
                "output_tokens": rng.randint(20, 900),
                "cache_read_input_tokens": rng.randint(0, 100_000),
            },
            "metadata": {**metadata_, "latency_ms": rng.randint(300, 9_000)},
        }
    lines = []
    for _ in range(rng.randint(5, 9)):
        stamp = (when + timedelta(milliseconds=rng.randint(0, 60_000))).strftime("%H:%M:%S.%f")
        lines.append(
            f"{stamp[:-3]} {rng.choice(_LEVELS)} pod={rng.choice(_WORDS)}-{_hex(rng, 5)} "
            f"req={_hex(rng, 12)} {_words(rng, 4, 10)} ({rng.randint(1, 5000)} ms)"
        )
    return {
        "role": "tool",
        "tool_use_id": f"toolu_01{_hex(rng, 22)}",
        "content": [{"type": "text", "text": "\n".join(lines)}],
        "is_error": rng.random() < 0.05,
        "metadata": metadata_,
    }


def message(n: int) -> dict[str, Any]:
    return {"id": f"msg_{n:07d}_{_hex(random.Random(-n - 1), 12)}", "body": chat_body(n)}


# -- timing ------------------------------------------------------------------------


def timed(op: Callable[[], object]) -> tuple[int, Any]:
    """``(ns, result)`` of one call, with the garbage collector paused."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        result = op()
        elapsed = time.perf_counter_ns() - t0
    finally:
        gc.enable()
    return elapsed, result


def median_ms(samples: Sequence[int]) -> float:
    return statistics.median(samples) / 1e6


# -- the floor's raw object I/O ------------------------------------------------------


class RawObject(Protocol):
    """Unconditional put/get of one object: no CAS, no decoding."""

    def put(self, data: bytes) -> None: ...

    def get(self) -> bytes: ...


class RawS3Object:
    def __init__(self, client: S3Client, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key

    def put(self, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data)

    def get(self) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()


class RawFile:
    """write + fsync + rename + fsync(directory): the durability FileColdStore gives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def get(self) -> bytes:
        return self.path.read_bytes()


def gzip_bytes(raw: bytes) -> bytes:
    packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return packer.compress(raw) + packer.flush()


def gunzip_bytes(data: bytes) -> bytes:
    return zlib.decompressobj(31).decompress(data)


# -- report rows ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    store: str
    messages: int
    measure: str
    ours: float
    floor: float
    ratio: str

    @staticmethod
    def time(store: str, messages: int, measure: str, ours: float, floor: float) -> Row:
        return Row(store, messages, measure, ours, floor, f"{ours / floor:.2f}x")

    @staticmethod
    def size(store: str, messages: int, measure: str, packed: float, raw: float) -> Row:
        """A size row: ``ours`` is the compressed size, ``floor`` the raw record bytes,
        ``ratio`` the compression ratio raw : compressed."""
        return Row(store, messages, measure, packed, raw, f"{raw / packed:.2f}:1")


def _number(value: float, integer: bool) -> str:
    if integer:
        return f"{value:,.0f}"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def table(rows: list[Row]) -> str:
    header = ("store", "messages", "measure", "ours", "floor", "ratio")
    cells = [header]
    for row in rows:
        integer = "bytes" in row.measure and "/msg" not in row.measure
        cells.append(
            (
                row.store,
                f"{row.messages:,}",
                row.measure,
                _number(row.ours, integer),
                _number(row.floor, integer),
                row.ratio,
            )
        )
    widths = [max(len(cell[col]) for cell in cells) for col in range(len(header))]
    left = {0, 2}
    lines = []
    for index, cell in enumerate(cells):
        lines.append(
            "  ".join(
                cell[c].ljust(widths[c]) if c in left else cell[c].rjust(widths[c])
                for c in range(len(header))
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- the measures ----------------------------------------------------------------------


@dataclass
class Store:
    name: str
    cold: ColdStore
    raw: Callable[[str], RawObject]
    """The floor's raw object for a thread id."""


class Bench:
    def __init__(self, client: redis.Redis, mode: Mode) -> None:
        self.r = client
        self.mode = mode
        self.hot = HotStore(client, namespace="bench", ttl_seconds=None)

    def build(self, tid: str, size: int) -> list[bytes]:
        """Create ``tid`` with ``size`` messages; returns their encoded records."""
        self.hot.create(tid, {"model": "claude-sonnet-4-5", "step": 0})
        records: list[bytes] = []
        for first in range(0, size, BUILD_BATCH):
            batch = [message(n) for n in range(first, min(size, first + BUILD_BATCH))]
            self.hot.append(tid, batch)
            records += [item.record for item in encode_batch(batch)]
        return records

    def push(self, key: str, records: Sequence[bytes]) -> None:
        """One pipeline (one round trip) of RPUSH commands of RESTORE_CHUNK records each."""
        pipe = self.r.pipeline(transaction=False)
        for first in range(0, len(records), RESTORE_CHUNK):
            pipe.rpush(key, *records[first : first + RESTORE_CHUNK])
        pipe.execute()

    def floor_flush(self, raw_key: str, prefix: bytes, raw_object: RawObject) -> bytes:
        listed: list[bytes] = self.r.lrange(raw_key, 0, -1)  # type: ignore[assignment]
        data = gzip_bytes(b"\n".join((prefix, *listed)))
        raw_object.put(data)
        self.r.delete(raw_key)
        return data

    def floor_hydrate(self, raw_key: str, raw_object: RawObject) -> None:
        lines = gunzip_bytes(raw_object.get()).split(b"\n")
        self.push(raw_key, lines[2:])  # after the header and index lines

    def tier(self, store: Store, size: int) -> tuple[list[Row], Snapshot]:
        """Flush and hydrate cycles of one thread, with the floor's mirror image."""
        threads = Threads(self.hot, store.cold, restore_chunk=RESTORE_CHUNK)
        tid = f"tier-{store.name}-{size}"
        raw_key = f"floor:{{{tid}}}:msgs"
        raw_object = store.raw(tid)
        records = self.build(tid, size)
        self.push(raw_key, records)
        flush_ns: dict[str, list[int]] = {"ours": [], "floor": []}
        hydrate_ns: dict[str, list[int]] = {"ours": [], "floor": []}
        for cycle in range(self.mode.cycles[size] + 1):  # cycle 0 is the warm-up
            extra = message(size + cycle)
            self.hot.append(tid, [extra])
            self.r.rpush(raw_key, encode_batch([extra])[0].record)
            source = self.hot.snapshot(tid)
            # what a whole-snapshot flush uploads (the floor); ours uploads a base once,
            # then one segment and a manifest per cycle (bench.production measures that)
            expected = encode_snapshot(source, "gzip")
            prefix = b"\n".join(gunzip_bytes(expected).split(b"\n", 2)[:2])  # header, index
            count = len(source.records)
            for who in ("ours", "floor") if cycle % 2 == 0 else ("floor", "ours"):
                if who == "ours":
                    flush_time, flushed = timed(partial(threads.flush, tid))
                    assert (flushed.status, flushed.evicted) == ("archived", True), flushed
                    assert flushed.size_bytes > 0
                    hydrate_time, hydrated = timed(partial(threads.hydrate, tid))
                    assert (hydrated.status, hydrated.length) == ("restored", count), hydrated
                else:
                    flush_time, uploaded = timed(
                        partial(self.floor_flush, raw_key, prefix, raw_object)
                    )
                    assert uploaded == expected, "the floor must upload the very same bytes"
                    hydrate_time, _ = timed(partial(self.floor_hydrate, raw_key, raw_object))
                    assert self.r.llen(raw_key) == count
                if cycle:  # the warm-up is not recorded
                    flush_ns[who].append(flush_time)
                    hydrate_ns[who].append(hydrate_time)

        snapshot = self.hot.snapshot(tid)
        threads.delete(tid)
        self.r.delete(raw_key)
        rows = [
            Row.time(
                store.name,
                size,
                "flush (ms)",
                median_ms(flush_ns["ours"]),
                median_ms(flush_ns["floor"]),
            ),
            Row.time(
                store.name,
                size,
                "hydrate (ms)",
                median_ms(hydrate_ns["ours"]),
                median_ms(hydrate_ns["floor"]),
            ),
        ]
        return rows, snapshot

    def codec(self, size: int, snapshot: Snapshot) -> list[Row]:
        """Snapshot sizes, and encode/decode alone against bare (de)compression."""
        n = len(snapshot.records)
        repeats = self.mode.codec[size]
        record_bytes = sum(len(r) for r in snapshot.records)
        zstd_c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        zstd_d = zstandard.ZstdDecompressor()
        packers: dict[Compression, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
            "gzip": (gzip_bytes, gunzip_bytes),
            "zstd": (zstd_c.compress, zstd_d.decompress),
        }
        rows: list[Row] = []
        for compression, (pack, unpack) in packers.items():
            data = encode_snapshot(snapshot, compression)
            raw = unpack(data)
            if compression == "gzip":  # zstd frames may differ in optional fields only
                assert pack(raw) == data, "the floor must gzip exactly as storage.snapshot does"
            samples: dict[str, list[int]] = {k: [] for k in ("enc", "pack", "dec", "unpack")}
            for i in range(repeats + 1):
                pairs: list[tuple[str, Callable[[], object]]] = [
                    ("enc", partial(encode_snapshot, snapshot, compression)),
                    ("pack", partial(pack, raw)),
                    ("dec", partial(decode_snapshot, data, snapshot.thread_id)),
                    ("unpack", partial(unpack, data)),
                ]
                for name, op in pairs if i % 2 == 0 else reversed(pairs):
                    ns, _ = timed(op)
                    if i:  # the first round is the warm-up
                        samples[name].append(ns)
            rows += [
                Row.size("codec", size, f"{compression} snapshot (bytes)", len(data), record_bytes),
                Row.size(
                    "codec", size, f"{compression} bytes/msg", len(data) / n, record_bytes / n
                ),
                Row.time(
                    "codec",
                    size,
                    f"{compression} encode (ms)",
                    median_ms(samples["enc"]),
                    median_ms(samples["pack"]),
                ),
                Row.time(
                    "codec",
                    size,
                    f"{compression} decode (ms)",
                    median_ms(samples["dec"]),
                    median_ms(samples["unpack"]),
                ),
            ]
        return rows

    def profile(self, store: Store, size: int, top: int) -> str:
        """cProfile of one flush and one hydrate of a ``size``-message thread."""
        threads = Threads(self.hot, store.cold, restore_chunk=RESTORE_CHUNK)
        tid = f"profile-{store.name}-{size}"
        self.build(tid, size)
        threads.flush(tid)  # the create-only first upload
        threads.hydrate(tid)
        self.hot.append(tid, [message(size)])
        out = io.StringIO()
        for name, op in (("flush", threads.flush), ("hydrate", threads.hydrate)):
            profiler = cProfile.Profile()
            t0 = time.perf_counter()
            profiler.runcall(op, tid)
            elapsed = time.perf_counter() - t0
            out.write(f"\n== cProfile: {store.name} {name} of {size:,} messages ")
            out.write(f"({elapsed * 1000:,.0f} ms under the profiler), top {top} by cumtime\n")
            stats = pstats.Stats(profiler, stream=out)
            stats.strip_dirs().sort_stats("cumulative").print_stats(top)
        threads.delete(tid)
        return out.getvalue()


# -- main ------------------------------------------------------------------------------


def s3_client(url: str) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - moto's dummy credentials
        # no retries: a retried request would hide inside a timing
        config=Config(retries={"mode": "standard", "max_attempts": 1}),
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def machine_facts(client: redis.Redis, server: EmbeddedRedis, tmp: str) -> Iterator[str]:
    info = client.info("server")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    yield f"Python {platform.python_version()} ({sys.implementation.name}), {platform.platform()}"
    yield f"CPUs: {os.cpu_count()} (usable by this process: {affinity}), {platform.machine()}"
    yield f"redis-server {info['redis_version']} ({server.binary})"
    yield (
        f"redis-py {redis.__version__} (hiredis: "
        f"{'yes' if redis.utils.HIREDIS_AVAILABLE else 'no'}), boto3 {_version('boto3')}, "
        f"botocore {_version('botocore')}, moto {_version('moto')} (server, HTTP on loopback), "
        f"zstandard {zstandard.__version__}"
    )
    yield f"file cold store and file floor in {tmp}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiering", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="sizes 100 and 1,000 only (< 30 s)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"also cProfile one flush and one hydrate of a {PROFILE_SIZE:,}-message thread (S3)",
    )
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    started = time.perf_counter()

    rows: list[Row] = []
    profile = ""
    redis_server = EmbeddedRedis()
    s3_server = MotoServer()
    tmp = tempfile.TemporaryDirectory(prefix="agent-threads-bench-")
    try:
        redis_server.start()
        s3_server.start()
        client = redis.Redis(host="127.0.0.1", port=redis_server.port, max_connections=1)
        try:
            s3 = s3_client(s3_server.url)
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            s3.create_bucket(Bucket=bucket)
            root = Path(tmp.name)
            stores = [
                Store(
                    "s3",
                    S3ColdStore(s3, bucket),
                    lambda tid: RawS3Object(s3, bucket, f"floor/{tid}.json.gz"),
                ),
                Store(
                    "file",
                    FileColdStore(root / "cold"),
                    lambda tid: RawFile(root / "floor" / f"{tid}.json.gz"),
                ),
            ]
            for line in machine_facts(client, redis_server, tmp.name):
                print(line)
            cycles = ", ".join(f"{s:,} msgs: {c}" for s, c in mode.cycles.items())
            print(
                f"mode {'quick' if args.quick else 'full'}: median of timed cycles ({cycles}), "
                "after one warm-up cycle; one Redis connection over loopback; "
                f"restore_chunk {RESTORE_CHUNK}"
            )
            print()
            sys.stdout.flush()

            bench = Bench(client, mode)
            for size in mode.sizes:
                snapshot: Snapshot | None = None
                for store in stores:
                    tier_rows, snapshot = bench.tier(store, size)
                    rows += tier_rows
                assert snapshot is not None
                rows += bench.codec(size, snapshot)
            if args.profile:
                profile = bench.profile(stores[0], PROFILE_SIZE, top=20)
        finally:
            client.close()
    finally:
        s3_server.stop()
        redis_server.stop()
        tmp.cleanup()

    print(table(rows))
    print()
    print("floor (raw clients, same run, same bytes):")
    print(
        f"  flush:   LRANGE + join + gzip -{GZIP_LEVEL} (byte-identical to our snapshot) "
        "+ put_object (file: write+fsync+rename+fsync dir) + DEL"
    )
    print(
        f"  hydrate: get_object (file: read) + gunzip + split + one pipeline of RPUSH x "
        f"{RESTORE_CHUNK} records"
    )
    print(
        f"  encode/decode: bare compress (gzip -{GZIP_LEVEL}; zstd -{ZSTD_LEVEL} with frame "
        "checksum) / decompress of the same decompressed snapshot bytes"
    )
    print("ratio = ours / floor (lower is better); size rows: ours = compressed snapshot,")
    print("  floor = raw record bytes (the JSON records alone), ratio = raw : compressed")
    print(
        "messages = the thread's size when built; one message is appended before each "
        "cycle so that every flush uploads"
    )
    if profile:
        print(profile)
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
