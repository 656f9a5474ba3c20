"""Benchmark: does HotStore stay flat as threads grow, what does a message cost in
Redis memory, and what is left in Redis after threads are flushed?

Run with ``python -m bench.scaling [--quick] [--json PATH]``. It starts its own
redis-server (``storage.embedded.EmbeddedRedis``), uses exactly one connection
for everything and prints three tables:

1. Scaling: ``HotStore.append`` (one new message) and ``HotStore.tail(tid, 20)``
   at thread lengths 10, 1,000 and 100,000, with the ratio of each length to the
   10-message case (flat = about 1.0x), against raw ``RPUSH`` and
   ``LRANGE -20 -1`` (+ ``json.loads`` of each record, the same decode work) on
   lists of the same length and bytes; ``HotStore.fork`` (the whole thread, to
   a fresh destination each time) and ``HotStore.truncate_from`` (the last 10
   messages, re-appended untimed between repeats) at 1,000 and 10,000 messages,
   against a raw non-atomic copy (``LRANGE 0 -1`` + one pipeline of ``RPUSH``
   chunks of 1,000) and a raw ``LTRIM``. The raw baselines keep no dedup ledger,
   no metadata and no state, and are not atomic.
2. Memory: ``INFO memory`` used_memory before/after storing 10,000 messages in
   100 threads through HotStore (records + dedup ledger + meta) and the same
   record bytes by plain ``RPUSH`` (lists only); bytes per message and ratio.
3. Keys left after flushing: small threads (3 messages) created and appended
   through ``storage.tiered.Threads`` over a ``FileColdStore`` in a temporary
   directory, all flushed with ``evict=True``, then the namespace's keys are
   counted by kind with ``SCAN``. Data keys must be zero; the ``:archived``
   markers remain by design with a TTL of ``archive_marker_ttl_seconds``
   (default 3600 s), so a second run uses ``archive_marker_ttl_seconds=1`` and
   waits 1.5 s to show they expire to zero.

Method (as ``bench.hot_store``): ``time.perf_counter_ns`` around the call only
(building inputs and restoring the thread length are outside the timed section;
encoding/validation inside ours is inside), a warm-up phase per measure, the
garbage collector paused while timing, ours and the baseline in alternating
blocks. Large threads are built with batched appends of 1,000 messages. An
append is undone after every repeat (untimed, O(1): ``RPOP`` + ``HDEL`` of its
ledger entry / ``RPOP``) so the length stays the one measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from bench.hot_store import Stats, chat_body, measure, message, run
from storage import HotStore
from storage.cold import FileColdStore
from storage.embedded import EmbeddedRedis
from storage.keys import KeyLayout
from storage.records import encode_message
from storage.tiered import Threads

BUILD_BATCH = 1000
"""Messages per append while building a long thread (and per RPUSH on raw lists)."""

TAIL = 20
TRUNCATE_LAST = 10
SCALING_LENGTHS = (10, 1_000, 100_000)
COPY_LENGTHS = (1_000, 10_000)
DATA_KINDS = ("meta", "msgs", "ids", "state", "lease", "turns")


@dataclass(frozen=True)
class Mode:
    small: int  # repeats of append / tail per length
    small_warmup: int
    copy: dict[int, int]  # repeats of fork / truncate per length
    threads_flushed: int  # threads created and flushed in part 3
    block: int  # iterations per alternating block (copy measures: a tenth)


QUICK = Mode(
    small=1_000,
    small_warmup=200,
    copy={1_000: 30, 10_000: 5},
    threads_flushed=300,
    block=100,
)
FULL = Mode(
    small=5_000,
    small_warmup=1_000,
    copy={1_000: 300, 10_000: 40},
    threads_flushed=10_000,
    block=500,
)


def record(n: int) -> bytes:
    return encode_message(message(n)).record


# -- 1. scaling ------------------------------------------------------------------


class Scaling:
    def __init__(self, client: redis.Redis, mode: Mode) -> None:
        self.r = client
        self.mode = mode
        self.store = HotStore(client, namespace="scale")
        self.rows: list[dict[str, Any]] = []

    def build(self, length: int) -> tuple[str, str]:
        """A HotStore thread and a raw list, each holding ``length`` messages."""
        tid = f"t{length}"
        key = f"raw:{{{length}}}"
        self.store.create(tid)
        for first in range(0, length, BUILD_BATCH):
            batch = [message(n) for n in range(first, min(length, first + BUILD_BATCH))]
            self.store.append(tid, batch)
            self.r.rpush(key, *(encode_message(m).record for m in batch))
        assert self.store.length(tid) == length == self.r.llen(key)
        return tid, key

    def add(self, op: str, length: int, ours: Stats, raw: Stats) -> None:
        self.rows.append(
            {
                "op": op,
                "length": length,
                "ours_us": round(ours.median_us, 2),
                "raw_us": round(raw.median_us, 2),
                "ours_p99_us": round(ours.p99_us, 2),
                "raw_p99_us": round(raw.p99_us, 2),
                "samples": len(ours.samples),
            }
        )

    def append_and_tail(self, length: int, tid: str, key: str) -> None:
        m = self.mode
        new = [{"id": f"new-{i:09d}", "body": chat_body(i)} for i in range(1000)]
        new_records = [encode_message(msg).record for msg in new]
        keys = self.store.keys(tid)

        def undo(message_id: str) -> None:
            # O(1) and untimed, mirroring the raw RPOP: drop the record and its
            # ledger entry (the version bump stays; nothing reads it here).
            pipe = self.r.pipeline(transaction=True)
            pipe.rpop(keys.msgs)
            pipe.hdel(keys.ids, message_id)
            pipe.execute()

        def ours_append(i: int) -> int:
            msg = new[i % len(new)]
            t0 = time.perf_counter_ns()
            self.store.append(tid, [msg])
            elapsed = time.perf_counter_ns() - t0
            undo(msg["id"])  # untimed: back to ``length``
            return elapsed

        def raw_append(i: int) -> int:
            rec = new_records[i % len(new_records)]
            t0 = time.perf_counter_ns()
            self.r.rpush(key, rec)
            elapsed = time.perf_counter_ns() - t0
            self.r.rpop(key)
            return elapsed

        ours, raw = measure(ours_append, raw_append, m.small, m.small_warmup, m.block)
        self.add("append 1", length, ours, raw)
        assert self.store.length(tid) == length == self.r.llen(key)

        expected = min(TAIL, length)

        def ours_tail(i: int) -> int:
            t0 = time.perf_counter_ns()
            records = self.store.tail(tid, TAIL)
            elapsed = time.perf_counter_ns() - t0
            assert len(records) == expected
            return elapsed

        def raw_tail(i: int) -> int:
            t0 = time.perf_counter_ns()
            records = [json.loads(raw) for raw in self.r.lrange(key, -TAIL, -1)]
            elapsed = time.perf_counter_ns() - t0
            assert len(records) == expected
            return elapsed

        ours, raw = measure(ours_tail, raw_tail, m.small, m.small_warmup, m.block)
        self.add(f"tail {TAIL}", length, ours, raw)

        def raw_head(i: int) -> int:  # diagnostic: the same read from the head
            t0 = time.perf_counter_ns()
            records = [json.loads(raw) for raw in self.r.lrange(key, 0, TAIL - 1)]
            elapsed = time.perf_counter_ns() - t0
            assert len(records) == expected
            return elapsed

        run(raw_head, 0, m.small_warmup)
        self.rows[-1]["raw_head_us"] = round(Stats(run(raw_head, 0, m.small)).median_us, 2)

    def fork_and_truncate(self, length: int, tid: str, key: str) -> None:
        n = self.mode.copy[length]
        warmup = max(2, n // 10)
        block = max(1, self.mode.block // 10)

        def ours_fork(i: int) -> int:
            dst = f"fork{length}-{i}"
            t0 = time.perf_counter_ns()
            result = self.store.fork(tid, dst)
            elapsed = time.perf_counter_ns() - t0
            assert result.created
            assert result.length == length
            self.store.delete(dst)
            return elapsed

        def raw_fork(i: int) -> int:
            dst = f"rawfork:{{{length}}}:{i}"
            t0 = time.perf_counter_ns()
            records = self.r.lrange(key, 0, -1)
            pipe = self.r.pipeline(transaction=False)
            for first in range(0, len(records), BUILD_BATCH):
                pipe.rpush(dst, *records[first : first + BUILD_BATCH])
            pipe.execute()
            elapsed = time.perf_counter_ns() - t0
            self.r.delete(dst)
            return elapsed

        ours, raw = measure(ours_fork, raw_fork, n, warmup, block)
        self.add("fork whole", length, ours, raw)

        last = [message(k) for k in range(length - TRUNCATE_LAST, length)]
        last_records = [encode_message(msg).record for msg in last]
        cut_id = last[0]["id"]

        def ours_truncate(i: int) -> int:
            t0 = time.perf_counter_ns()
            result = self.store.truncate_from(tid, cut_id)
            elapsed = time.perf_counter_ns() - t0
            assert len(result.removed_ids) == TRUNCATE_LAST
            assert len(self.store.append(tid, last).appended_ids) == TRUNCATE_LAST
            return elapsed

        def raw_truncate(i: int) -> int:
            t0 = time.perf_counter_ns()
            self.r.ltrim(key, 0, -TRUNCATE_LAST - 1)
            elapsed = time.perf_counter_ns() - t0
            self.r.rpush(key, *last_records)
            return elapsed

        ours, raw = measure(ours_truncate, raw_truncate, n, warmup, block)
        self.add(f"truncate last {TRUNCATE_LAST}", length, ours, raw)
        assert self.store.length(tid) == length == self.r.llen(key)

    def run(self) -> list[dict[str, Any]]:
        built: dict[int, tuple[str, str]] = {}
        for length in sorted({*SCALING_LENGTHS, *COPY_LENGTHS}):
            built[length] = self.build(length)
        for length in SCALING_LENGTHS:
            self.append_and_tail(length, *built[length])
        for length in COPY_LENGTHS:
            self.fork_and_truncate(length, *built[length])
        return self.rows


# -- 2. memory -------------------------------------------------------------------


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def memory(client: redis.Redis, threads: int = 100, per_thread: int = 100) -> dict[str, Any]:
    total = threads * per_thread
    msgs = [message(n) for n in range(per_thread)]
    records = [encode_message(m).record for m in msgs]
    store = HotStore(client, namespace="mem")

    client.flushall(asynchronous=False)
    before = used_memory(client)
    for t in range(threads):
        store.create(f"m{t}")
        store.append(f"m{t}", msgs)
    ours = used_memory(client) - before
    keys = store.keys("m0")
    per_kind = {
        kind: int(client.memory_usage(getattr(keys, kind), samples=0) or 0)
        for kind in ("msgs", "ids", "meta")
    }

    client.flushall(asynchronous=False)
    before = used_memory(client)
    for t in range(threads):
        client.rpush(f"rawmem:{{{t}}}", *records)
    raw = used_memory(client) - before
    raw_list = int(client.memory_usage("rawmem:{0}", samples=0) or 0)
    client.flushall(asynchronous=False)

    return {
        "threads": threads,
        "messages": total,
        "record_bytes_avg": round(sum(map(len, records)) / len(records), 1),
        "ours_bytes": ours,
        "raw_bytes": raw,
        "ours_bytes_per_msg": round(ours / total, 1),
        "raw_bytes_per_msg": round(raw / total, 1),
        "overhead_ratio": round(ours / raw, 3),
        "one_thread_memory_usage": {**per_kind, "raw_list": raw_list},
    }


# -- 3. keys left after flush ----------------------------------------------------


def count_keys(client: redis.Redis, namespace: str) -> dict[str, Any]:
    """Keys of ``namespace`` by kind (SCAN), marker TTLs, and activity index size."""
    counts: dict[str, int] = dict.fromkeys((*DATA_KINDS, "archived", "staging", "other"), 0)
    markers: list[bytes] = []
    layout = KeyLayout(namespace)
    shards = set(layout.activity_shards)
    for raw_key in client.scan_iter(match=f"{namespace}:*", count=1000):
        name = raw_key.decode()
        if name in shards:
            continue
        suffix = name.rsplit("}:", 1)[-1] if "}:" in name else ""
        if suffix.startswith("staging:"):
            counts["staging"] += 1
        elif suffix in counts:
            counts[suffix] += 1
            if suffix == "archived":
                markers.append(raw_key)
        else:
            counts["other"] += 1
    ttls: list[int] = []
    for first in range(0, len(markers), 1000):
        pipe = client.pipeline(transaction=False)
        for marker in markers[first : first + 1000]:
            pipe.pttl(marker)
        ttls += [int(t) for t in pipe.execute()]
    return {
        "data_keys": {kind: counts[kind] for kind in DATA_KINDS},
        "data_keys_total": sum(counts[kind] for kind in DATA_KINDS),
        "archived_markers": counts["archived"],
        "marker_ttl_s_min": round(min(ttls) / 1000, 1) if ttls else None,
        "marker_ttl_s_max": round(max(ttls) / 1000, 1) if ttls else None,
        "staging_keys": counts["staging"],
        "other_keys": counts["other"],
        "activity_entries": sum(int(client.zcard(shard)) for shard in shards),
    }


def keys_after_flush(
    client: redis.Redis, count: int, namespace: str, marker_ttl: int, wait_s: float = 0.0
) -> dict[str, Any]:
    client.flushall(asynchronous=False)
    with tempfile.TemporaryDirectory(prefix="agent-threads-scaling-") as root:
        threads = Threads(
            HotStore(client, namespace=namespace, archive_marker_ttl_seconds=marker_ttl),
            FileColdStore(root),
        )
        ids = [f"chat-{i:06d}" for i in range(count)]
        t0 = time.perf_counter()
        for tid in ids:
            threads.open(tid, "new")
            threads.append(tid, [message(0), message(1), message(2)])
        created_s = time.perf_counter() - t0
        before = count_keys(client, namespace)
        t0 = time.perf_counter()
        evicted = sum(threads.flush(tid, evict=True).evicted for tid in ids)
        flushed_s = time.perf_counter() - t0
        if wait_s:
            time.sleep(wait_s)
        after = count_keys(client, namespace)
    client.flushall(asynchronous=False)
    return {
        "threads": count,
        "archive_marker_ttl_seconds": marker_ttl,
        "waited_s": wait_s,
        "evicted": evicted,
        "create_s": round(created_s, 2),
        "flush_s": round(flushed_s, 2),
        "flush_ms_per_thread": round(flushed_s * 1000 / count, 3),
        "data_keys_before_flush": before["data_keys_total"],
        "activity_entries_before_flush": before["activity_entries"],
        **after,
    }


# -- report ----------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    lines = []
    for index, row in enumerate(cells):
        lines.append(
            "  ".join(
                [row[0].ljust(widths[0])] + [row[c].rjust(widths[c]) for c in range(1, len(row))]
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def us(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:,.1f}"


def scaling_table(rows: list[dict[str, Any]]) -> str:
    first: dict[str, dict[str, Any]] = {}
    out = []
    for row in rows:
        base = first.setdefault(row["op"], row)
        out.append(
            [
                row["op"],
                f"{row['length']:,}",
                us(row["ours_us"]),
                us(row["ours_p99_us"]),
                us(row["raw_us"]),
                us(row["raw_p99_us"]),
                f"{row['ours_us'] / row['raw_us']:.2f}x",
                f"{row['ours_us'] / base['ours_us']:.2f}x",
                f"{row['raw_us'] / base['raw_us']:.2f}x",
            ]
        )
    header = (
        "op",
        "length",
        "ours med µs",
        "ours p99",
        "raw med µs",
        "raw p99",
        "ours/raw",
        "ours vs 1st",
        "raw vs 1st",
    )
    return table(header, out)


def memory_table(mem: dict[str, Any]) -> str:
    usage = mem["one_thread_memory_usage"]
    rows = [
        [
            "HotStore (records + ledger + meta)",
            f"{mem['ours_bytes']:,}",
            f"{mem['ours_bytes_per_msg']:,.1f}",
            f"{mem['overhead_ratio']:.2f}x",
        ],
        [
            "plain RPUSH (records only)",
            f"{mem['raw_bytes']:,}",
            f"{mem['raw_bytes_per_msg']:,.1f}",
            "1.00x",
        ],
    ]
    text = table(("stored as", "used_memory Δ bytes", "bytes/message", "ratio"), rows)
    return (
        f"{text}\n"
        f"{mem['messages']:,} messages in {mem['threads']} threads, record "
        f"{mem['record_bytes_avg']:.0f} bytes avg; MEMORY USAGE of one "
        f"{mem['messages'] // mem['threads']}-message thread: msgs {usage['msgs']:,}, "
        f"ids {usage['ids']:,}, meta {usage['meta']:,} (raw list {usage['raw_list']:,})"
    )


def keys_table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for run_ in runs:
        data = run_["data_keys"]
        ttl = (
            "-"
            if run_["marker_ttl_s_max"] is None
            else f"{run_['marker_ttl_s_min']:.0f}..{run_['marker_ttl_s_max']:.0f} s"
        )
        rows.append(
            [
                f"marker ttl {run_['archive_marker_ttl_seconds']} s"
                + (f", after {run_['waited_s']} s" if run_["waited_s"] else ""),
                f"{run_['threads']:,}",
                f"{run_['evicted']:,}",
                f"{run_['data_keys_before_flush']:,}",
                " ".join(str(data[k]) for k in DATA_KINDS),
                str(run_["data_keys_total"]),
                f"{run_['archived_markers']:,}",
                ttl,
                str(run_["activity_entries"]),
                str(run_["staging_keys"] + run_["other_keys"]),
                f"{run_['flush_ms_per_thread']:.2f}",
            ]
        )
    header = (
        "run",
        "threads",
        "evicted",
        "keys before",
        "after: " + " ".join(DATA_KINDS),
        "data total",
        ":archived",
        "marker TTL",
        "activity",
        "other",
        "flush ms/thr",
    )
    return table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 45 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    started = time.perf_counter()

    server = EmbeddedRedis()
    server.start()
    try:
        # max_connections=1: one connection for everything, as in bench.hot_store.
        client = redis.Redis(host="127.0.0.1", port=server.port, max_connections=1)
        try:
            info = client.info("server")
            print(f"redis-server {info['redis_version']} ({server.binary})")
            print(f"Python {platform.python_version()} ({sys.implementation.name})")
            print(
                f"redis-py {redis.__version__}, hiredis parser: "
                f"{'yes' if redis.utils.HIREDIS_AVAILABLE else 'no'}"
            )
            print(
                f"mode {'quick' if args.quick else 'full'}: {mode.small} repeats of append/tail "
                f"per length, fork/truncate {mode.copy}; record {len(record(0))} bytes; "
                "one connection over loopback"
            )
            print()

            scaling = Scaling(client, mode).run()
            client.flushall(asynchronous=False)
            mem = memory(client)
            flushed = [
                keys_after_flush(client, mode.threads_flushed, "flushbench", 3600),
                keys_after_flush(client, mode.threads_flushed, "flushbench1", 1, wait_s=1.5),
            ]
        finally:
            client.close()
    finally:
        server.stop()

    print("1. latency vs thread length (medians and p99 in µs; 'vs 1st' = / shortest length)")
    print(scaling_table(scaling))
    print("   raw: RPUSH; LRANGE -20 -1 + json.loads each; LRANGE 0 -1 + pipelined RPUSH")
    print("   chunks of 1,000 (fork: no ledger/state copy, not atomic); LTRIM 0 -11")
    heads = ", ".join(
        f"{row['length']:,}: {us(row['raw_head_us'])}" for row in scaling if "raw_head_us" in row
    )
    print(f"   diagnostic, raw LRANGE 0 {TAIL - 1} (head) + json.loads, median µs: {heads}")
    print(f"   (tail at length 10 returns 10 records, at the other lengths {TAIL})")
    print()
    print("2. Redis memory per stored message (INFO memory used_memory, before/after)")
    print(memory_table(mem))
    print()
    print(
        "3. keys left after flush(evict=True) of small threads (3 messages) via Threads "
        "over FileColdStore"
    )
    print(keys_table(flushed))
    print(
        "   data keys (meta msgs ids state lease turns) must be 0; :archived markers stay "
        "until their TTL (archive_marker_ttl_seconds) by design; activity = ZCARD of ns:activity:*"
    )
    total = time.perf_counter() - started
    print(f"total {total:.1f} s")

    if args.json:
        result = {
            "mode": "quick" if args.quick else "full",
            "redis_version": info["redis_version"],
            "scaling": scaling,
            "memory": mem,
            "keys_after_flush": {"default_marker_ttl": flushed[0], "marker_ttl_1s": flushed[1]},
            "total_s": round(total, 1),
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
