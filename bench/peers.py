"""Benchmark: agent-threads HotStore against the raw Redis limit and two peers.

Run with ``python -m bench.peers [--quick] [--json PATH]``. It starts its own
redis-server (``storage.embedded.EmbeddedRedis``) and compares, sequentially:

- ours: ``storage.HotStore`` (one EVALSHA per call, per-message dedup ledger);
- raw: the physical limit, plain redis-py commands with the same record bytes
  (RPUSH, a pipeline of RPUSH, LRANGE + json.loads of each record);
- zeitlich-style: a Lua script registered with ``register_script`` that does
  what zeitlich 0.2.46 does on an idempotent append: ``EXISTS dedup key`` →
  ``RPUSH list msgs...`` → ``PEXPIRE list ttl`` → ``SET dedup key 1 PX ttl``,
  one dedup key per append call (a batch shares one composite key
  ``dedup:<id1:id2:...>:thread:<tid>``), keys without hash tags;
- openai-agents: ``agents.extensions.memory.RedisSession`` (async, redis.asyncio)
  ``add_items`` / ``get_items``, with the same 90-day TTL as ours, run in one
  asyncio event loop; items are OpenAI Responses input items;
- ours as a Session: ``adapters.openai_agents.AgentThreadsSession`` (the same
  protocol, over ``storage.aio.AsyncHotStore`` on the same asyncio connection as
  RedisSession, with a file cold tier that the hot path never touches): the
  like-for-like peer of RedisSession, with per-item dedup and tiering.

Method (as in ``bench.hot_store``): time.perf_counter_ns around the call only
(building inputs is outside the timed section; encoding inside a library call
is inside), a warm-up per measure, the garbage collector paused while timing,
all contenders of a measure run in interleaved blocks whose order rotates every
block, medians and p99. The sync contenders share one redis-py connection
(``max_connections=1``); RedisSession needs an asyncio client, which gets its
own single connection (``BlockingConnectionPool(max_connections=1)``). For the
async contender the time is taken inside the coroutine, around the awaited
call, so the cost of entering the event loop from the harness is not counted.
Lists are rotated every ``ROTATE`` messages so they stay at realistic lengths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.hot_store import Stats, run
from storage import HotStore
from storage.aio import AsyncHotStore
from storage.cold import FileColdStore
from storage.embedded import EmbeddedRedis
from storage.records import encode_message
from storage.tiered import Threads

try:  # the peer is optional: the benchmark still runs (and says so) without it
    import agents
    from agents.extensions.memory import RedisSession

    from adapters.openai_agents import AgentThreadsSession

    PEER_ERROR: str | None = None
except Exception as exc:  # pragma: no cover - depends on the environment
    RedisSession = None  # type: ignore[assignment,misc]
    agents = None  # type: ignore[assignment]
    PEER_ERROR = f"{type(exc).__name__}: {exc}"

ROTATE = 1000
"""Messages per thread / list / session before a measure moves to a fresh one."""

TTL_SECONDS = 90 * 24 * 3600
"""The same TTL (90 days, refreshed on every write) for every contender."""

TimedOp = Callable[[int], int]
"""Does one (untimed) setup and one timed operation for iteration ``i``; returns ns."""

ZEITLICH_APPEND = """
-- zeitlich 0.2.46-style idempotent append: one dedup marker per append call.
-- KEYS[1] dedup key, KEYS[2] list; ARGV[1] ttl_ms, ARGV[2..] messages
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
"""


def raw_rpush_ns(r: Any, key: str, recs: list[bytes]) -> int:
    """The raw floor of an append, timed: one RPUSH, or one pipeline of RPUSH per record."""
    if len(recs) == 1:
        t0 = time.perf_counter_ns()
        r.rpush(key, recs[0])
        return time.perf_counter_ns() - t0
    pipe = r.pipeline(transaction=False)
    t0 = time.perf_counter_ns()
    for rec in recs:
        pipe.rpush(key, rec)
    pipe.execute()
    return time.perf_counter_ns() - t0


def zeitlich_append(script: Any, ttl_ms: int, tid: str, msgs: list[dict[str, Any]]) -> int:
    """What the zeitlich client does per call: serialise each message, build the
    composite dedup key, one call of ``ZEITLICH_APPEND`` (``script``, registered with
    ``register_script``); 1 if appended, 0 if the dedup key was there."""
    payload = [json.dumps(m, separators=(",", ":")) for m in msgs]
    dedup = f"dedup:{':'.join(m['id'] for m in msgs)}:thread:{tid}"
    return int(script(keys=[dedup, f"messages:thread:{tid}"], args=[ttl_ms, *payload]))


@dataclass(frozen=True)
class Mode:
    single: int  # single-message appends
    batch10: int  # batches of 10
    batch100: int  # batches of 100
    dup: int  # duplicate (redelivered) appends
    load: tuple[tuple[int, int], ...]  # (thread length, iterations)
    block: int  # single-append iterations per interleaved block (others scale down)


QUICK = Mode(
    single=600,
    batch10=120,
    batch100=30,
    dup=400,
    load=((100, 40), (1_000, 8), (10_000, 2)),
    block=50,
)
FULL = Mode(
    single=10_000,
    batch10=2_000,
    batch100=300,
    dup=6_000,
    load=((100, 1_000), (1_000, 150), (10_000, 20)),
    block=250,
)

TEXT = (
    "I checked the deployment logs for the payments service. The last three restarts "
    "were caused by the readiness probe timing out while the connection pool warmed up: "
    "each pod opens 64 connections to Postgres at start, and with the current "
    "initialDelaySeconds of 10 the probe fails before the pool is ready. The p95 of "
    "warm-up time over the last week is about 41 seconds, the p99 is 58 seconds. I "
    "propose two changes in deploy/helm/payments/values.yaml: raise initialDelaySeconds "
    "to 45 and set failureThreshold to 6, and lower the pool's minimum size from 64 to "
    "16 so that warm-up is shorter in the first place; the pool grows on demand anyway. "
    "I have not changed anything yet. Shall I open a pull request with these values and "
    "a note in the runbook, or would you rather try the pool change alone first? (ref "
)


def item(n: int) -> dict[str, Any]:
    """An OpenAI Responses input item with ~1 KB of text (what RedisSession stores)."""
    return {"role": "user" if n % 2 else "assistant", "content": f"{TEXT}{n:012d})"}


def message(n: int) -> dict[str, Any]:
    """Our envelope around the same item: ``{"id", "body"}``."""
    return {"id": f"msg-{n:012d}", "body": item(n)}


def record(n: int) -> bytes:
    """The exact bytes ours stores for ``message(n)``; raw and zeitlich push these too."""
    return encode_message(message(n)).record


# -- statistics ------------------------------------------------------------


def measure(ops: dict[str, TimedOp], n: int, block: int) -> dict[str, Stats]:
    """Warm every contender up, then time them in interleaved blocks, rotating the
    order every block so drift hits all alike."""
    warmup = max(2, n // 10)
    block = max(1, block)
    names = list(ops)
    for name in names:
        run(ops[name], 0, warmup)
    samples: dict[str, list[int]] = {name: [] for name in names}
    done = 0
    turn = 0
    while done < n:
        size = min(block, n - done)
        order = names[turn % len(names) :] + names[: turn % len(names)]
        for name in order:
            samples[name] += run(ops[name], warmup + done, size)
        done += size
        turn += 1
    return {name: Stats(s) for name, s in samples.items()}


# -- the contenders ------------------------------------------------------------


class Bench:
    def __init__(self, client: redis.Redis, aclient: Any, mode: Mode, cold_root: Path) -> None:
        self.r = client
        self.mode = mode
        self.store = HotStore(client, namespace="bench", ttl_seconds=TTL_SECONDS)
        self.session_threads = Threads(
            HotStore(client, namespace="bench-session", ttl_seconds=TTL_SECONDS),
            FileColdStore(cold_root),
        )
        self.session_hot = AsyncHotStore.like(self.session_threads.hot, aclient)
        self._ours_sessions: dict[str, Any] = {}
        self.zeitlich = client.register_script(ZEITLICH_APPEND)
        self.ttl_ms = TTL_SECONDS * 1000
        self.aclient = aclient
        self.loop = asyncio.new_event_loop()
        self._sessions: dict[str, Any] = {}

    def close(self) -> None:
        self.loop.close()

    # rotation (outside the timed section)

    def _ours_thread(self, tag: str, i: int, every: int = ROTATE) -> str:
        tid = f"{tag}-{i // every}"
        if i % every == 0:
            if i:
                self.store.delete(f"{tag}-{i // every - 1}")
            self.store.create(tid)
        return tid

    def _raw_list(self, tag: str, i: int, every: int = ROTATE) -> str:
        key = f"raw:{{{tag}}}:{i // every}"
        if i % every == 0 and i:
            self.r.delete(f"raw:{{{tag}}}:{i // every - 1}")
        return key

    def _zeitlich_thread(self, tag: str, i: int, every: int = ROTATE) -> str:
        tid = f"{tag}-{i // every}"
        if i % every == 0 and i:
            old = f"{tag}-{i // every - 1}"
            self.r.delete(f"messages:thread:{old}")
            for key in self.r.scan_iter(f"dedup:*:thread:{old}", count=1000):
                self.r.delete(key)
        return tid

    def _session(self, tag: str, i: int, every: int = ROTATE) -> Any:
        sid = f"{tag}-{i // every}"
        if i % every == 0 and i:
            old = f"{tag}-{i // every - 1}"
            self.r.delete(*(f"agents:session:{old}{s}" for s in ("", ":messages", ":counter")))
            self._sessions.pop(old, None)
        session = self._sessions.get(sid)
        if session is None:
            session = RedisSession(sid, redis_client=self.aclient, ttl=TTL_SECONDS)
            self._sessions[sid] = session
        return session

    def _our_session(self, tag: str, i: int, every: int = ROTATE) -> Any:
        sid = f"{tag}-{i // every}"
        if i % every == 0:
            if i:
                self.session_threads.delete(f"{tag}-{i // every - 1}")
                self._ours_sessions.pop(f"{tag}-{i // every - 1}", None)
            self.session_threads.open(sid, "new")
        session = self._ours_sessions.get(sid)
        if session is None:
            session = AgentThreadsSession(sid, self.session_threads, self.session_hot)
            self._ours_sessions[sid] = session
        return session

    def _async(self, coro: Coroutine[Any, Any, int]) -> int:
        return self.loop.run_until_complete(coro)

    # measures

    def append(self, size: int, n: int, block: int) -> dict[str, Stats]:
        """Append ``size`` new messages per call."""
        tag = f"a{size}"
        every = max(1, ROTATE // size)  # calls per thread

        def ours(i: int) -> int:
            tid = self._ours_thread(tag, i, every)
            msgs = [message(i * size + k) for k in range(size)]
            t0 = time.perf_counter_ns()
            self.store.append(tid, msgs)
            return time.perf_counter_ns() - t0

        def raw(i: int) -> int:
            key = self._raw_list(tag, i, every)
            return raw_rpush_ns(self.r, key, [record(i * size + k) for k in range(size)])

        def zeitlich(i: int) -> int:
            tid = self._zeitlich_thread(tag, i, every)
            msgs = [message(i * size + k) for k in range(size)]
            t0 = time.perf_counter_ns()
            self._zeitlich_append(tid, msgs)
            return time.perf_counter_ns() - t0

        ops: dict[str, TimedOp] = {"ours": ours, "raw": raw, "zeitlich": zeitlich}
        if RedisSession is not None:

            async def add(session: Any, items: list[dict[str, Any]]) -> int:
                t0 = time.perf_counter_ns()
                await session.add_items(items)
                return time.perf_counter_ns() - t0

            def openai(i: int) -> int:
                session = self._session(tag, i, every)
                items = [item(i * size + k) for k in range(size)]
                return self._async(add(session, items))

            def ours_session(i: int) -> int:
                session = self._our_session(tag, i, every)
                items = [item(i * size + k) for k in range(size)]
                return self._async(add(session, items))

            ops["openai_agents"] = openai
            ops["ours_session"] = ours_session
        return measure(ops, n, block)

    def _zeitlich_append(self, tid: str, msgs: list[dict[str, Any]]) -> int:
        return zeitlich_append(self.zeitlich, self.ttl_ms, tid, msgs)

    def duplicate(self, size: int, n: int, block: int) -> dict[str, Stats]:
        """Redeliver an already stored batch of ``size`` (nothing may be written)."""
        msgs = [message(k) for k in range(size)]
        self.store.create("dup")
        self.store.append("dup", msgs)
        self._zeitlich_append("dup", msgs)

        def ours(i: int) -> int:
            batch = [dict(m) for m in msgs]
            t0 = time.perf_counter_ns()
            result = self.store.append("dup", batch)
            elapsed = time.perf_counter_ns() - t0
            assert not result.appended_ids
            return elapsed

        def zeitlich(i: int) -> int:
            batch = [dict(m) for m in msgs]
            t0 = time.perf_counter_ns()
            done = self._zeitlich_append("dup", batch)
            elapsed = time.perf_counter_ns() - t0
            assert done == 0
            return elapsed

        ops: dict[str, TimedOp] = {"ours": ours, "zeitlich": zeitlich}
        if RedisSession is not None:  # RedisSession has no dedup: it would store them again
            session = AgentThreadsSession("dup", self.session_threads, self.session_hot)
            provided = [{"id": f"msg_{k}", "type": "message", **item(k)} for k in range(size)]
            self.session_threads.open("dup", "new")
            self.loop.run_until_complete(session.add_items(provided))

            async def redeliver() -> int:
                batch = [dict(i) for i in provided]
                t0 = time.perf_counter_ns()
                await session.add_items(batch)
                return time.perf_counter_ns() - t0

            ops["ours_session"] = lambda i: self._async(redeliver())
        try:
            return measure(ops, n, block)
        finally:
            self.session_threads.delete("dup")

    def load(self, length: int, n: int, block: int) -> dict[str, Stats]:
        """Read a whole thread of ``length`` messages back as Python objects."""
        tid = f"load-{length}"
        self.store.create(tid)
        raw_key = f"raw:{{load}}:{length}"
        chunk = 500
        for first in range(0, length, chunk):
            span = range(first, min(length, first + chunk))
            self.store.append(tid, [message(k) for k in span])
            self.r.rpush(raw_key, *(record(k) for k in span))
        session = ours_session = None
        if RedisSession is not None:
            session = RedisSession(tid, redis_client=self.aclient)
            ours_session = AgentThreadsSession(tid, self.session_threads, self.session_hot)
            self.session_threads.open(tid, "new")
            for first in range(0, length, chunk):
                span = range(first, min(length, first + chunk))
                self.loop.run_until_complete(session.add_items([item(k) for k in span]))
                self.loop.run_until_complete(ours_session.add_items([item(k) for k in span]))

        def ours(i: int) -> int:
            t0 = time.perf_counter_ns()
            records = self.store.load(tid)
            elapsed = time.perf_counter_ns() - t0
            assert len(records) == length
            return elapsed

        def raw(i: int) -> int:
            t0 = time.perf_counter_ns()
            records = [json.loads(r) for r in self.r.lrange(raw_key, 0, -1)]
            elapsed = time.perf_counter_ns() - t0
            assert len(records) == length
            return elapsed

        ops: dict[str, TimedOp] = {"ours": ours, "raw": raw}
        if session is not None:

            async def get() -> int:
                t0 = time.perf_counter_ns()
                items = await session.get_items()
                elapsed = time.perf_counter_ns() - t0
                assert len(items) == length
                return elapsed

            async def get_ours() -> int:
                assert ours_session is not None
                t0 = time.perf_counter_ns()
                items = await ours_session.get_items()
                elapsed = time.perf_counter_ns() - t0
                assert len(items) == length
                return elapsed

            ops["openai_agents"] = lambda i: self._async(get())
            ops["ours_session"] = lambda i: self._async(get_ours())
        try:
            return measure(ops, n, block)
        finally:
            self.store.delete(tid)
            self.r.delete(raw_key)
            if session is not None:
                self.loop.run_until_complete(session.clear_session())
                self.session_threads.delete(tid)


# -- report ------------------------------------------------------------------

COLUMNS = ("ours", "raw", "zeitlich", "openai_agents", "ours_session")


@dataclass
class Row:
    measure: str
    values: dict[str, float | None]
    unit: str = "µs"  # "ops/s": higher is better

    def as_json(self) -> dict[str, Any]:
        return {"measure": self.measure, "unit": self.unit} | {
            c: (None if self.values.get(c) is None else round(self.values[c] or 0.0, 2))
            for c in COLUMNS
        }


def rows_for(name: str, stats: dict[str, Stats], *, p99: bool = True) -> list[Row]:
    rows = [Row(f"{name}, median", {c: s.median_us for c, s in stats.items()})]
    if p99:
        rows.append(Row(f"{name}, p99", {c: s.p99_us for c, s in stats.items()}))
    return rows


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def _ratio(ours: float | None, other: float | None, unit: str) -> str:
    if ours is None or other is None or other == 0 or ours == 0:
        return "-"
    # always "how many times ours costs": for ops/s that is other / ours
    return f"{(other / ours if unit == 'ops/s' else ours / other):.2f}x"


def table(rows: list[Row]) -> str:
    header = (
        "measure",
        "ours",
        "limit (raw)",
        "zeitlich-style",
        "openai-agents",
        "ours (Session)",
        "ours/raw",
        "ours/zeitlich",
        "ours/openai",
        "Session/openai",
    )
    cells = [header]
    for row in rows:
        v = row.values
        ours = v.get("ours")
        cells.append(
            (
                f"{row.measure} ({row.unit})",
                _fmt(ours),
                _fmt(v.get("raw")),
                _fmt(v.get("zeitlich")),
                _fmt(v.get("openai_agents")),
                _fmt(v.get("ours_session")),
                _ratio(ours, v.get("raw"), row.unit),
                _ratio(ours, v.get("zeitlich"), row.unit),
                _ratio(ours, v.get("openai_agents"), row.unit),
                _ratio(v.get("ours_session"), v.get("openai_agents"), row.unit),
            )
        )
    widths = [max(len(r[c]) for r in cells) for c in range(len(header))]
    lines = []
    for index, r in enumerate(cells):
        lines.append(
            "  ".join(
                [r[0].ljust(widths[0])] + [r[c].rjust(widths[c]) for c in range(1, len(header))]
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations (< 20 s)")
    parser.add_argument("--json", metavar="PATH", help="also write all medians as JSON")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    started = time.perf_counter()
    rows: list[Row] = []
    meta: dict[str, Any] = {}

    server = EmbeddedRedis()
    server.start()
    try:
        # max_connections=1: ours, raw and zeitlich-style share one connection.
        client = redis.Redis(host="127.0.0.1", port=server.port, max_connections=1)
        aclient = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool(
                host="127.0.0.1", port=server.port, max_connections=1
            )
        )
        cold_root = Path(tempfile.mkdtemp(prefix="bench-peers-"))
        bench = Bench(client, aclient, mode, cold_root)
        try:
            info = client.info("server")
            meta = {
                "mode": "quick" if args.quick else "full",
                "redis_server": info["redis_version"],
                "python": platform.python_version(),
                "redis_py": redis.__version__,
                "hiredis": bool(redis.utils.HIREDIS_AVAILABLE),
                "openai_agents": getattr(agents, "__version__", None) if agents else None,
                "openai_agents_error": PEER_ERROR,
                "record_bytes": len(record(0)),
                "item_bytes": len(json.dumps(item(0), separators=(",", ":"))),
                "ttl_seconds": TTL_SECONDS,
                "iterations": {
                    "single": mode.single,
                    "batch10": mode.batch10,
                    "batch100": mode.batch100,
                    "duplicate": mode.dup,
                    "load": {str(length): k for length, k in mode.load},
                },
            }
            print(f"redis-server {meta['redis_server']} ({server.binary})")
            print(f"Python {meta['python']} ({sys.implementation.name})")
            print(f"redis-py {meta['redis_py']}, hiredis parser: {meta['hiredis']}")
            if PEER_ERROR:
                print(f"openai-agents RedisSession NOT RUN: {PEER_ERROR}")
            else:
                print(f"openai-agents {meta['openai_agents']} RedisSession (redis.asyncio)")
            print(
                f"mode {meta['mode']}: record {meta['record_bytes']} bytes "
                f"(Responses item {meta['item_bytes']} bytes), TTL 90 days for all"
            )
            print()

            one = bench.append(1, mode.single, mode.block)
            rows += rows_for("1. append 1 msg", one)
            rows.append(Row("   append 1 msg", {c: s.ops_per_s for c, s in one.items()}, "ops/s"))
            for size, n in ((10, mode.batch10), (100, mode.batch100)):
                stats = bench.append(size, n, max(1, mode.block // size * 2))
                rows += rows_for(f"2. append batch of {size}", stats)
            for size in (1, 10):
                stats = bench.duplicate(size, mode.dup, mode.block)
                rows += rows_for(f"   duplicate batch of {size}", stats)
            for length, n in mode.load:
                stats = bench.load(length, n, max(1, n // 10))
                rows += rows_for(f"3. load {length:,} msgs", stats)
        finally:
            bench.close()
            shutil.rmtree(cold_root, ignore_errors=True)
            client.close()
            asyncio.run(aclient.aclose())
    finally:
        server.stop()

    print(table(rows))
    print()
    print("limit (raw): 1 msg = one RPUSH; batch = pipeline of RPUSH (one round trip);")
    print("             load = LRANGE 0 -1 + json.loads of each record. Same record bytes.")
    print("zeitlich-style: EVALSHA of EXISTS dedup / RPUSH / PEXPIRE / SET dedup PX, one")
    print("             composite dedup key per call (zeitlich 0.2.46); no per-message dedup.")
    print("openai-agents: RedisSession.add_items (WATCH, TYPE x3, TIME, MULTI/RPUSH/HSET/")
    print("             PEXPIREAT/EXEC; ttl=90 days) and get_items(); no dedup at all.")
    print("ours (Session): AgentThreadsSession.add_items / get_items on the same asyncio")
    print("             connection: one append script (per-item dedup) / one MULTI/EXEC read;")
    print("             its duplicate rows redeliver items with provider ids (none stored).")
    print(
        "ratios: how many times ours costs (latency ours/peer; ops/s peer/ours): <1 = ours faster"
    )
    total = time.perf_counter() - started
    print(f"total {total:.1f} s")
    meta["total_seconds"] = round(total, 1)

    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"rows": [r.as_json() for r in rows], "meta": meta}
        path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
