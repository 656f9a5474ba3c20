"""Benchmark: HotStore latency against the raw Redis commands it cannot beat.

Run with ``python -m bench.hot_store [--quick]``. It starts its own
redis-server (``storage.embedded.EmbeddedRedis``), uses exactly one connection
for everything, and prints one table: for each measure our latency, the
"physical limit" baseline measured in the same run with the same bytes and the
same number of round trips, and the ratio ours / baseline.

Method: time.perf_counter_ns around the call only (building the input is
outside the timed section, encoding/validation inside ours is not), a warm-up
phase per measure, the garbage collector paused while timing, and ours and the
baseline run in alternating blocks so that drift (CPU frequency, noisy
neighbours) hits both alike. Threads are rotated every ``ROTATE`` messages so
lists stay at realistic lengths and memory stays bounded.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from storage import HotStore
from storage.embedded import EmbeddedRedis
from storage.records import encode_batch, encode_message

ROTATE = 1000
"""Messages per thread (or raw list) before the benchmark moves to a fresh one."""

BATCH = 100
"""Messages per batch append, and in the thread read by the load measure."""

TimedOp = Callable[[int], int]
"""Does one (untimed) setup and one timed operation for iteration ``i``; returns ns."""


@dataclass(frozen=True)
class Mode:
    single: int  # iterations of the single-message and duplicate appends
    load: int  # iterations of the 100-message load
    batch: int  # iterations of the 100-message batch append
    warmup: int  # warm-up iterations per measure (batch/load: a fifth of it)
    block: int  # iterations per alternating block


QUICK = Mode(single=2_000, load=500, batch=100, warmup=200, block=100)
FULL = Mode(single=20_000, load=5_000, batch=1_000, warmup=2_000, block=500)


def chat_body(n: int) -> dict[str, Any]:
    """A realistic ~1 KB assistant turn: text, a tool call, usage and metadata."""
    return {
        "role": "assistant",
        "content": [
            {
                "type": "text",
                "text": (
                    "I checked the deployment logs for the payments service. The last "
                    "three restarts were caused by the readiness probe timing out while "
                    "the connection pool warmed up. Next I will look at the pool size "
                    "and the probe's initial delay in the Helm values before proposing "
                    "a change; the p95 of warm-up time is about 41 seconds."
                ),
            },
            {
                "type": "tool_use",
                "id": f"toolu_01HX{n:08d}QmZ7kVbW3",
                "name": "search_repository",
                "input": {
                    "query": "readinessProbe initialDelaySeconds payments",
                    "paths": ["deploy/helm/payments/values.yaml", "deploy/helm/common/"],
                    "max_results": 10,
                    "case_sensitive": False,
                },
            },
        ],
        "model": "claude-sonnet-4-5-20250929",
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 18432,
            "output_tokens": 187,
            "cache_read_input_tokens": 16384,
            "cache_creation_input_tokens": 0,
        },
        "metadata": {
            "turn_id": f"turn-{n:06d}",
            "created_at": "2025-06-01T12:34:56.789Z",
            "latency_ms": 2311,
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "user": "u_7f3a9c",
        },
    }


def message(n: int) -> dict[str, Any]:
    return {"id": f"msg-{n:012d}", "body": chat_body(n)}


# -- statistics ------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    samples: list[int]  # ns

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples) / 1000

    @property
    def p99_us(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0] / 1000
        return statistics.quantiles(self.samples, n=100, method="inclusive")[98] / 1000

    @property
    def ops_per_s(self) -> float:
        """Sequential throughput: operations per second of time spent in the operation."""
        return len(self.samples) / (sum(self.samples) / 1e9)


def run(op: TimedOp, start: int, n: int) -> list[int]:
    gc.collect()
    gc.disable()
    try:
        return [op(i) for i in range(start, start + n)]
    finally:
        gc.enable()


def measure(ours: TimedOp, base: TimedOp, n: int, warmup: int, block: int) -> tuple[Stats, Stats]:
    """Warm both up, then time them in alternating blocks (order flipped every block)."""
    run(ours, 0, warmup)
    run(base, 0, warmup)
    ours_ns: list[int] = []
    base_ns: list[int] = []
    done = 0
    flip = False
    while done < n:
        size = min(block, n - done)
        start = warmup + done
        if flip:
            base_ns += run(base, start, size)
            ours_ns += run(ours, start, size)
        else:
            ours_ns += run(ours, start, size)
            base_ns += run(base, start, size)
        done += size
        flip = not flip
    return Stats(ours_ns), Stats(base_ns)


# -- the measures ------------------------------------------------------------


class Bench:
    def __init__(self, client: redis.Redis, mode: Mode) -> None:
        self.r = client
        self.mode = mode
        self.store = HotStore(client, namespace="bench")

    def _single_thread(self, tag: str, i: int) -> str:
        """Thread for iteration ``i``, rotated (outside the timed section) every ROTATE."""
        tid = f"{tag}-{i // ROTATE}"
        if i % ROTATE == 0:
            if i:
                self.store.delete(f"{tag}-{i // ROTATE - 1}")
            self.store.create(tid)
        return tid

    def _raw_list(self, tag: str, i: int, every: int = ROTATE) -> str:
        key = f"raw:{{{tag}}}:{i // every}"
        if i % every == 0 and i:
            self.r.delete(f"raw:{{{tag}}}:{i // every - 1}")
        return key

    def append_one(self) -> tuple[Stats, Stats]:
        record = encode_message(message(0)).record

        def ours(i: int) -> int:
            tid = self._single_thread("append", i)
            msg = message(i)
            t0 = time.perf_counter_ns()
            self.store.append(tid, [msg])
            return time.perf_counter_ns() - t0

        def base(i: int) -> int:
            key = self._raw_list("append", i)
            t0 = time.perf_counter_ns()
            self.r.rpush(key, record)
            return time.perf_counter_ns() - t0

        m = self.mode
        return measure(ours, base, m.single, m.warmup, m.block)

    def encode(self, size: int, n: int) -> Stats:
        """The Python share of an append of ``size`` messages: validation and JSON
        encoding, no I/O."""

        def op(i: int) -> int:
            msgs = [message(i * size + k) for k in range(size)]
            t0 = time.perf_counter_ns()
            encode_batch(msgs)
            return time.perf_counter_ns() - t0

        run(op, 0, max(1, n // 10))
        return Stats(run(op, 0, n))

    def duplicate(self) -> tuple[Stats, Stats]:
        tid = "duplicate"
        msg = message(1)
        self.store.create(tid)
        self.store.append(tid, [message(0), msg, message(2)])
        ids_key = self.store.keys(tid).ids

        def ours(i: int) -> int:
            t0 = time.perf_counter_ns()
            result = self.store.append(tid, [msg])
            elapsed = time.perf_counter_ns() - t0
            assert not result.appended_ids
            return elapsed

        def base(i: int) -> int:
            t0 = time.perf_counter_ns()
            self.r.hsetnx(ids_key, msg["id"], 1)
            return time.perf_counter_ns() - t0

        m = self.mode
        return measure(ours, base, m.single, m.warmup, m.block)

    def load(self) -> tuple[Stats, Stats]:
        tid = "load"
        self.store.create(tid)
        self.store.append(tid, [message(i) for i in range(BATCH)])
        msgs_key = self.store.keys(tid).msgs

        def ours(i: int) -> int:
            t0 = time.perf_counter_ns()
            records = self.store.load(tid)
            elapsed = time.perf_counter_ns() - t0
            assert len(records) == BATCH
            return elapsed

        def base(i: int) -> int:
            t0 = time.perf_counter_ns()
            records = [json.loads(raw) for raw in self.r.lrange(msgs_key, 0, -1)]
            elapsed = time.perf_counter_ns() - t0
            assert len(records) == BATCH
            return elapsed

        m = self.mode
        return measure(ours, base, m.load, m.warmup // 5, m.block // 5)

    def batch(self) -> tuple[Stats, Stats, Stats]:
        records = [item.record for item in encode_batch(message(n) for n in range(BATCH))]
        per_thread = ROTATE // BATCH

        def ours(i: int) -> int:
            tid = self._single_thread("batch", i * BATCH)
            msgs = [message(i * BATCH + k) for k in range(BATCH)]
            t0 = time.perf_counter_ns()
            self.store.append(tid, msgs)
            return time.perf_counter_ns() - t0

        def pipelined(i: int) -> int:
            key = self._raw_list("pipelined", i, per_thread)
            pipe = self.r.pipeline(transaction=False)
            t0 = time.perf_counter_ns()
            for record in records:
                pipe.rpush(key, record)
            pipe.execute()
            return time.perf_counter_ns() - t0

        def variadic(i: int) -> int:
            key = self._raw_list("variadic", i, per_thread)
            t0 = time.perf_counter_ns()
            self.r.rpush(key, *records)
            return time.perf_counter_ns() - t0

        m = self.mode
        ours_stats, pipe_stats = measure(ours, pipelined, m.batch, m.warmup // 5, m.block // 5)
        run(variadic, 0, m.warmup // 5)
        variadic_stats = Stats(run(variadic, m.warmup // 5, m.batch))
        return ours_stats, pipe_stats, variadic_stats


# -- report ------------------------------------------------------------------

Row = tuple[str, float, float | None]


def table(rows: list[Row]) -> str:
    header = ("measure", "ours", "baseline", "ratio")
    cells = [header]
    for name, ours, base in rows:
        fmt = "{:,.0f}" if max(ours, base or 0) >= 1000 else "{:,.1f}"
        cells.append(
            (
                name,
                fmt.format(ours),
                "-" if base is None else fmt.format(base),
                "-" if base is None else f"{ours / base:.2f}x",
            )
        )
    widths = [max(len(row[col]) for row in cells) for col in range(4)]
    lines = []
    for index, row in enumerate(cells):
        lines.append(
            "  ".join(
                [row[0].ljust(widths[0])] + [row[c].rjust(widths[c]) for c in range(1, 4)]
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_store", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations (< 10 s)")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    started = time.perf_counter()

    server = EmbeddedRedis()
    server.start()
    try:
        # max_connections=1: every measure, ours and baseline, shares one connection
        # (a second one would raise "Too many connections" instead of hiding in a pool).
        client = redis.Redis(host="127.0.0.1", port=server.port, max_connections=1)
        try:
            info = client.info("server")
            record_size = len(encode_message(message(0)).record)
            print(f"redis-server {info['redis_version']} ({server.binary})")
            print(f"Python {platform.python_version()} ({sys.implementation.name})")
            print(
                f"redis-py {redis.__version__}, hiredis parser: "
                f"{'yes' if redis.utils.HIREDIS_AVAILABLE else 'no'}"
            )
            print(
                f"mode {'quick' if args.quick else 'full'}: {mode.single} single appends, "
                f"{mode.load} loads, {mode.batch} batches; record {record_size} bytes; "
                "one connection over loopback"
            )
            print()

            bench = Bench(client, mode)
            one, rpush = bench.append_one()
            encode = bench.encode(1, mode.single)
            dup, hsetnx = bench.duplicate()
            load, lrange = bench.load()
            batch, pipelined, variadic = bench.batch()
            encode_batch_stats = bench.encode(BATCH, mode.batch)
        finally:
            client.close()
    finally:
        server.stop()

    rows: list[Row] = [
        ("1. append 1 new msg, median (µs)", one.median_us, rpush.median_us),
        ("   append 1 new msg, p99 (µs)", one.p99_us, rpush.p99_us),
        ("   append 1 new msg (ops/s)", one.ops_per_s, rpush.ops_per_s),
        ("   of which encode+validate, median (µs)", encode.median_us, None),
        ("2. duplicate append, median (µs)", dup.median_us, hsetnx.median_us),
        ("   duplicate append, p99 (µs)", dup.p99_us, hsetnx.p99_us),
        (f"3. load {BATCH} msgs, median (µs)", load.median_us, lrange.median_us),
        (f"   load {BATCH} msgs, p99 (µs)", load.p99_us, lrange.p99_us),
        (f"4. append batch of {BATCH}, median (µs)", batch.median_us, pipelined.median_us),
        (f"   append batch of {BATCH}, p99 (µs)", batch.p99_us, pipelined.p99_us),
        (f"   append batch of {BATCH} vs 1 RPUSH, median", batch.median_us, variadic.median_us),
        ("   of which encode+validate, median (µs)", encode_batch_stats.median_us, None),
    ]
    print(table(rows))
    print()
    print("baselines (raw redis-py, same connection, same record bytes, same round trips):")
    print("  1. RPUSH key <record>                 (ours: EVALSHA append.lua + encode)")
    print("  2. HSETNX ids <existing id>           (ours: append of an already stored id)")
    print(f"  3. LRANGE key 0 -1 + json.loads each  ({BATCH} records)")
    print(f"  4. pipeline of {BATCH} x RPUSH; last row: one RPUSH with {BATCH} values")
    print("ratio = ours / baseline (latency: lower is better; ops/s: higher is better)")
    print(f"total {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
