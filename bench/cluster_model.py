"""Benchmark: the scale model, measured on a loopback Redis Cluster of 6 masters.

    python -m bench.cluster_model [--quick] [--json PATH] [--doc docs/scaling.md]
    python -m bench.cluster_model --render PATH.json --doc docs/scaling.md

Starts a 6-master Redis Cluster (``tests.cluster.RedisClusterServer``, the system's
redis-server), a moto S3 server, a single-node Redis as Celery broker and result
backend (outside the cluster, so the cluster's counters hold only the hot tier's
work) and several real ``celery worker`` processes with the cluster as hot tier
and S3 as cold tier. It measures, and writes as JSON:

1. **operations in isolation** (this process, through ``storage.Threads``): for
   each storage operation, ``INFO commandstats`` and ``INFO cpu`` of every master
   diffed around N calls of that operation alone. Commands a script or a
   MULTI/EXEC runs are counted by Redis under their own names as well as in the
   EVALSHA/EXEC that ran them, so the "command µs" column counts only the commands
   the client sent: the share of each command name sent by the client is taken
   from MONITOR on every master during a few more calls (lines of the ``lua``
   client and commands between MULTI and EXEC are nested). "CPU µs" is the Redis
   processes' main-thread CPU time (``used_cpu_user/sys_main_thread``; networking
   and protocol parsing included), less the idle rate measured at the start.
2. **Redis bytes per message**: ``used_memory`` summed over the masters before and
   after creating threads and appending messages to them.
3. **turns through real workers**: a coverage run, one turn at a time, with MONITOR
   on every master: the keys and slots each turn touches (a key's slot is its
   CRC16 hash slot, ``CLUSTER KEYSLOT``), the S3 requests each turn sends (a boto3
   ``before-send`` hook in the workers, ``bench.cluster_tasks``), for a new thread,
   a continued thread as the default end-of-turn flush left it, and a continued
   thread that was evicted first (a hydrate); then the keys shared between threads
   (the intersection over every thread's turns must be empty) and what one run of
   each beat task touches. Then a throughput run: many threads' turns at once on
   all workers, with Redis CPU, broker CPU, worker CPU and S3 requests per turn.
4. **the model** for 1M active threads and 100k appends/s (``model``), computed
   from the measured numbers and the assumptions in ``ASSUMPTIONS``; ``--doc``
   renders the tables into the marked sections of docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import socket
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from bench.cluster_tasks import S3_COUNTS_ENV, S3_COUNTS_KEY, s3_request_hook
from bench.hot_store import chat_body
from storage import HotStore
from storage.cold import S3ColdStore, object_key
from storage.embedded import EmbeddedRedis
from storage.keys import ACTIVITY_SHARDS, TURN_SHARDS, KeyLayout
from storage.records import encode_message
from storage.tiered import Threads
from tests.cluster import RedisClusterServer
from tests.servers import MotoServer, s3_client_for

MASTERS = 6
BUCKET = "cluster-model"
OPS_NAMESPACE = "cmops"
TURN_NAMESPACE = "at"
ROOT = Path(__file__).resolve().parents[1]
SYSTEM_REDIS = "/usr/bin/redis-server"
PROBE_COMMANDS = {
    "info", "cluster", "command", "ping", "monitor", "config", "client", "slowlog",
    "readonly", "hello", "select", "echo", "memory", "dbsize",
}  # fmt: skip
"""Commands of the benchmark's own probes, left out of every count."""
EVAL_COMMANDS = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}
USER_TEXT = (
    "Please compare the 07:33 and 09:33 trains from Zurich to Milan, including the "
    "connections, seat availability, prices and luggage rules, and tell me which one "
    "leaves me more time for the meeting at 14:00 near the central station. " * 3
)


@dataclass(frozen=True)
class Mode:
    op_calls: int  # calls per operation in isolation (its diff)
    monitor_calls: int  # further calls of each operation under MONITOR
    mem_threads: int
    mem_messages: int  # per thread
    workers: int
    concurrency: int  # threads per worker process
    coverage_threads: int  # threads of the coverage run (3 turns each, one at a time)
    load_threads: int  # threads of the throughput run
    load_rounds: int  # turns per thread in the throughput run (the first: "new")


QUICK = Mode(
    op_calls=200,
    monitor_calls=5,
    mem_threads=100,
    mem_messages=20,
    workers=3,
    concurrency=4,
    coverage_threads=12,
    load_threads=60,
    load_rounds=3,
)
FULL = Mode(
    op_calls=2000,
    monitor_calls=10,
    mem_threads=500,
    mem_messages=50,
    workers=4,
    concurrency=4,
    coverage_threads=40,
    load_threads=300,
    load_rounds=5,
)

ASSUMPTIONS: dict[str, Any] = {
    "active_threads": 1_000_000,
    "appends_per_s": 100_000,
    "messages_per_turn": 2,
    "hot_messages_per_thread": 40,
    "hot_turn_records_per_thread": 20,
    "hydrate_fraction": 0.1,
    "new_thread_fraction": 0.05,
    "model_seconds_per_turn": 5,
    "redis_cpu_target": 0.5,
    "cluster_max_masters": 1000,
    "maxmemory_gib_per_master": 16,
    "worker_cpu_target": 0.7,
    "s3_put_per_prefix": 3500,
    "s3_get_per_prefix": 5500,
    "s3_prefixes": 256,
}
"""The model's inputs that are not measured here (docs/scaling.md explains each)."""


def user_message(turn_id: str) -> dict[str, Any]:
    return {"id": f"{turn_id}:user", "body": {"role": "user", "content": USER_TEXT}}


# -- probes: INFO of every master ------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    calls: dict[str, int]
    usec: dict[str, int]
    cpu_s: float
    memory: int
    at: float


def _cmd_name(stat: str) -> str:
    return stat.removeprefix("cmdstat_").lower()


def snapshot(nodes: Sequence[redis.Redis]) -> Snapshot:
    calls: Counter[str] = Counter()
    usec: Counter[str] = Counter()
    cpu = 0.0
    memory = 0
    for node in nodes:
        info = node.info("all")
        for key, value in info.items():
            if key.startswith("cmdstat_") and isinstance(value, dict):
                name = _cmd_name(key)
                calls[name] += int(value["calls"])
                usec[name] += int(value["usec"])
        cpu += float(info.get("used_cpu_user_main_thread", info["used_cpu_user"]))
        cpu += float(info.get("used_cpu_sys_main_thread", info["used_cpu_sys"]))
        memory += int(info["used_memory"])
    return Snapshot(dict(calls), dict(usec), cpu, memory, time.monotonic())


@dataclass(frozen=True)
class Delta:
    calls: dict[str, int]
    usec: dict[str, int]
    cpu_us: float
    memory: int
    wall_s: float


def diff(before: Snapshot, after: Snapshot, idle_cpu_per_s: float = 0.0) -> Delta:
    names = {n for n in after.calls if n.split("|", 1)[0] not in PROBE_COMMANDS}
    calls = {n: after.calls[n] - before.calls.get(n, 0) for n in names}
    usec = {n: after.usec[n] - before.usec.get(n, 0) for n in names}
    wall = after.at - before.at
    cpu_us = (after.cpu_s - before.cpu_s - idle_cpu_per_s * wall) * 1e6
    return Delta(
        {n: c for n, c in calls.items() if c},
        {n: usec[n] for n, c in calls.items() if c},
        cpu_us,
        after.memory - before.memory,
        wall,
    )


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- MONITOR on every master -----------------------------------------------------

_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"a": b"\a", b"b": b"\b"}


def _unescape(raw: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(raw):
        ch = raw[i : i + 1]
        if ch == b"\\" and i + 1 < len(raw):
            nxt = raw[i + 1 : i + 2]
            if nxt == b"x":
                out += bytes([int(raw[i + 2 : i + 4], 16)])
                i += 4
                continue
            out += _ESCAPES.get(nxt, nxt)
            i += 2
            continue
        out += ch
        i += 1
    return bytes(out)


@dataclass(frozen=True)
class Command:
    port: int
    client: str
    name: str
    args: tuple[str, ...]
    origin: str  # "client", "exec" (between MULTI and EXEC) or "lua"


class KeySpecs:
    """Where each command's keys are (``COMMAND``: first, last, step)."""

    def __init__(self, node: redis.Redis) -> None:
        self.specs: dict[str, tuple[int, int, int]] = {}
        for name, spec in node.command().items():
            self.specs[str(name).lower()] = (
                int(spec["first_key_pos"]),
                int(spec["last_key_pos"]),
                int(spec["step_count"]),
            )

    def keys(self, command: Command) -> list[str]:
        args = command.args
        if command.name in EVAL_COMMANDS:
            return list(args[2 : 2 + int(args[1])]) if len(args) > 1 else []
        first, last, step = self.specs.get(command.name, (0, 0, 0))
        if first <= 0 or step <= 0:
            return []
        end = len(args) + 1 + last if last < 0 else last
        return [args[p - 1] for p in range(first, min(end, len(args)) + 1, step)]


class Monitor:
    """MONITOR on every master, into labelled segments: ``mark(label)`` ECHOes a marker
    on every node, and each node's commands since the previous marker belong to it."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.lines: dict[int, list[bytes]] = {p: [] for p in self.ports}
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._clients = {p: redis.Redis(host="127.0.0.1", port=p) for p in self.ports}
        self._seen: dict[int, threading.Event] = {}
        self._wanted: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Monitor:
        for port in self.ports:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"MONITOR\r\n")
            stream = sock.makefile("rb")
            if stream.readline().strip() != b"+OK":
                raise RuntimeError(f"MONITOR refused on port {port}")
            reader = threading.Thread(target=self._read, args=(port, stream), daemon=True)
            reader.start()
            self._socks.append(sock)
            self._threads.append(reader)
        self.mark("monitor-start")
        return self

    def __exit__(self, *_: object) -> None:
        for sock in self._socks:
            with contextlib_suppress():
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for reader in self._threads:
            reader.join(timeout=5)
        for client in self._clients.values():
            client.close()

    def _read(self, port: int, stream: Any) -> None:
        try:
            for line in stream:
                with self._lock:
                    self.lines[port].append(line)
                    wanted = self._wanted.get(port)
                if wanted is not None and wanted in line:
                    self._seen[port].set()
        except (OSError, ValueError):
            return

    def mark(self, label: str) -> None:
        """End the current segment on every node (waits until each reader saw it)."""
        token = f"cluster-model-mark:{label}:{uuid.uuid4().hex[:8]}"
        for port in self.ports:
            self._seen[port] = threading.Event()
            with self._lock:
                self._wanted[port] = token.encode()
            self._clients[port].echo(token)
        for port in self.ports:
            if not self._seen[port].wait(30):
                raise TimeoutError(f"MONITOR of port {port} did not show marker {label}")

    def segments(self) -> dict[str, list[Command]]:
        """label -> the commands between the previous marker and ``mark(label)``."""
        out: dict[str, list[Command]] = defaultdict(list)
        for port in self.ports:
            with self._lock:
                lines = list(self.lines[port])
            current: list[Command] = []
            in_multi: dict[str, bool] = {}
            for raw in lines:
                parsed = _parse_monitor_line(port, raw, in_multi)
                if parsed is None:
                    continue
                if (
                    parsed.name == "echo"
                    and parsed.args[:1]
                    and "cluster-model-mark:" in parsed.args[0]
                ):
                    label = parsed.args[0].split(":")[1]
                    out[label].extend(current)
                    current = []
                    continue
                if parsed.name.split("|")[0] not in PROBE_COMMANDS:
                    current.append(parsed)
        return dict(out)


def contextlib_suppress() -> Any:
    import contextlib

    return contextlib.suppress(OSError)


def _parse_monitor_line(port: int, raw: bytes, in_multi: dict[str, bool]) -> Command | None:
    line = raw.rstrip(b"\r\n")
    if not line.startswith(b"+") or b"[" not in line:
        return None
    head, _, rest = line.partition(b"] ")
    client = head.rpartition(b" ")[2].decode()
    args = [_unescape(m.group(1)).decode("utf-8", "replace") for m in _ARG.finditer(rest)]
    if not args:
        return None
    name = args[0].lower()
    if client == "lua":
        origin = "lua"
    elif name == "multi":
        in_multi[client] = True
        origin = "client"
    elif name in ("exec", "discard"):
        in_multi[client] = False
        origin = "client"
    else:
        origin = "exec" if in_multi.get(client) else "client"
    return Command(port, client, name, tuple(args[1:]), origin)


def top_level_usec(delta: Delta, sample: list[Command]) -> float:
    """The commandstats µs of the commands the client sent (see the module docstring):
    each name's µs times the share of its calls that came from a client in ``sample``."""
    sent: Counter[str] = Counter(c.name for c in sample if c.origin == "client")
    seen: Counter[str] = Counter(c.name for c in sample)
    return client_share(delta.usec, sent, seen)


def client_share(counts: dict[str, int], sent: Counter[str], seen: Counter[str]) -> float:
    """``counts`` (µs or calls by command name) counting only the share each name was
    sent by a client in a MONITOR sample (``sent`` / ``seen``); a name the sample did not
    see (e.g. an occasional index write) counts in full."""
    return sum(n * (sent[name] / seen[name]) if seen.get(name) else n for name, n in counts.items())


def touched(commands: Sequence[Command], specs: KeySpecs) -> tuple[set[str], set[int], set[int]]:
    """The keys, slots and master ports ``commands`` touched."""
    keys: set[str] = set()
    nodes: set[int] = set()
    for command in commands:
        found = specs.keys(command)
        keys.update(found)
        if found:
            nodes.add(command.port)
    return keys, {key_slot(k.encode()) for k in keys}, nodes


# -- S3 request counting ---------------------------------------------------------


class S3Counts:
    """S3 requests by operation, counted by a boto3 hook on this process's client."""

    def __init__(self, client: Any) -> None:
        self.counts: Counter[str] = Counter()
        client.meta.events.register("before-send.s3", s3_request_hook(self._count))

    def _count(self, operation: str) -> None:
        self.counts[operation] += 1

    def take(self) -> dict[str, int]:
        taken, self.counts = dict(self.counts), Counter()
        return taken


def worker_s3_counts(broker: redis.Redis) -> dict[str, int]:
    """And reset: the S3 requests the workers counted (``bench.cluster_tasks``)."""
    pipe = broker.pipeline(transaction=True)
    pipe.hgetall(S3_COUNTS_KEY)
    pipe.delete(S3_COUNTS_KEY)
    raw, _ = pipe.execute()
    return {k.decode(): int(v) for k, v in raw.items()}


# -- 1. operations in isolation --------------------------------------------------


@dataclass
class OpContext:
    threads: Threads
    nodes: list[redis.Redis]
    ports: list[int]
    specs: KeySpecs
    s3: S3Counts
    idle_cpu_per_s: float
    rows: list[dict[str, Any]] = field(default_factory=list)


def measure_op(
    ctx: OpContext,
    name: str,
    what: str,
    call: Callable[[int], Any],
    calls: int,
    sample: int,
) -> dict[str, Any]:
    """Diff the masters' counters around ``calls`` calls of ``call(i)``, then classify
    ``sample`` more calls (i = calls, calls + 1, ...) under MONITOR."""
    ctx.s3.take()
    before = snapshot(ctx.nodes)
    for i in range(calls):
        call(i)
    after = snapshot(ctx.nodes)
    s3 = ctx.s3.take()
    delta = diff(before, after, ctx.idle_cpu_per_s)
    with Monitor(ctx.ports) as monitor:
        for i in range(calls, calls + sample):
            call(i)
            monitor.mark(f"call{i}")
    segments = monitor.segments()
    per_call = [segments.get(f"call{i}", []) for i in range(calls, calls + sample)]
    flat = [c for seg in per_call for c in seg]
    keys = [touched(seg, ctx.specs) for seg in per_call]
    sent = Counter(c.name for c in flat if c.origin == "client")
    row = {
        "op": name,
        "what": what,
        "calls": calls,
        "evalsha_us": round(delta.usec.get("evalsha", 0) / calls, 1),
        "command_us": round(top_level_usec(delta, flat) / calls, 1),
        "cpu_us": round(delta.cpu_us / calls, 1),
        "commands_sent": {k: round(v / sample, 2) for k, v in sorted(sent.items())},
        "round_trips": round(sum(sent.values()) / sample, 2),
        "keys": round(statistics.mean(len(k[0]) for k in keys), 2),
        "slots": round(statistics.mean(len(k[1]) for k in keys), 2),
        "masters": round(statistics.mean(len(k[2]) for k in keys), 2),
        "s3": {k: round(v / calls, 3) for k, v in sorted(s3.items())},
        "memory_per_call": round(delta.memory / calls, 1),
    }
    ctx.rows.append(row)
    print(
        f"  {name:<22} {row['cpu_us']:>7.1f} CPU µs  {row['command_us']:>7.1f} cmd µs  "
        f"{row['evalsha_us']:>7.1f} script µs  {row['round_trips']:.1f} calls  "
        f"{row['keys']:.1f} keys {row['slots']:.1f} slots  S3 {row['s3']}",
        flush=True,
    )
    return row


def operations(ctx: OpContext, mode: Mode) -> list[dict[str, Any]]:
    t, turns, hot = ctx.threads, ctx.threads.turns, ctx.threads.hot
    n = mode.op_calls + mode.monitor_calls
    run = uuid.uuid4().hex[:6]
    ids = [f"op-{run}-{i:05d}" for i in range(n)]
    owner = [f"turn-{run}-{i}" for i in range(n)]
    token = [uuid.uuid4().hex for _ in range(n)]
    history = 20
    lease = 20_000

    def op(name: str, what: str, call: Callable[[int], Any], calls: int = mode.op_calls) -> None:
        measure_op(ctx, name, what, call, calls, mode.monitor_calls)

    def add_one(tag: str) -> None:  # untimed: one new message each, so a flush uploads
        for i, tid in enumerate(ids):
            t.append(tid, [{"id": f"{tag}-{i}", "body": chat_body(i)}])

    record = encode_message({"id": "raw", "body": chat_body(0)}).record
    raw = [f"raw:{{{tid}}}" for tid in ids]
    op(
        "baseline RPUSH",
        "raw RPUSH of one 1 KB record (no script)",
        lambda i: hot.redis.rpush(raw[i], record),
    )
    for key in raw:  # one slot per key: no multi-key DEL on a cluster
        hot.redis.delete(key)
    member = [json.dumps([tid, "x"]) for tid in ids]
    op(
        "index ZADD", "raw ZADD into the thread's turn-index shard",
        lambda i: hot.redis.zadd(hot.layout.turns_of(ids[i]), {member[i]: i}),
    )  # fmt: skip
    for i, tid in enumerate(ids):
        hot.redis.zrem(hot.layout.turns_of(tid), member[i])
    op("create", "Threads.open(tid, 'new')", lambda i: t.open(ids[i], "new"))
    for tid in ids:  # untimed: a 20-message history for the reads
        t.append(tid, [{"id": f"h{k}", "body": chat_body(k)} for k in range(history)])
    op(
        "append", "Threads.append(tid, [1 message])",
        lambda i: t.append(ids[i], [{"id": f"m-{i}", "body": chat_body(i)}]),
    )  # fmt: skip
    op("get", "Threads.get(tid, [1 id])", lambda i: t.get(ids[i], ["h3"]))
    op("load", f"Threads.load(tid) ({history + 1} messages)", lambda i: t.load(ids[i]))
    op(
        "acquire_lease", "Threads.acquire_lease(tid, owner, 20 s)",
        lambda i: t.acquire_lease(ids[i], owner[i], lease),
    )  # fmt: skip
    steps = ["hydrate", "acquire_lease", "append", "run:bench.cluster_agent", "flush"]
    spec = {"steps": steps, "thread_id": "x", "messages": [user_message("x")]}
    op(
        "turn_submit", "TurnStore.submit (index ZADD + script)",
        lambda i: turns.submit(ids[i], owner[i], steps=steps, spec=spec, lease_ms=lease),
    )  # fmt: skip
    op(
        "turn_begin", "TurnStore.begin (claim a step)",
        lambda i: turns.begin(
            ids[i], owner[i], 0, token=token[i], worker="w", task_id=f"task-{i}", lease_ms=lease
        ),
    )  # fmt: skip
    op(
        "turn_heartbeat", "TurnStore.heartbeat",
        lambda i: turns.heartbeat(ids[i], owner[i], token=token[i], lease_ms=lease),
    )  # fmt: skip
    op(
        "turn_end", "TurnStore.end (step done)",
        lambda i: turns.end(
            ids[i], owner[i], token=token[i], outcome="done", step_ms=5, last=False,
            lease_ms=lease, wait_ms=lease,
        ),
    )  # fmt: skip
    sources: dict[int, Any] = {}

    snapshots: dict[int, Any] = {}

    def read(i: int) -> None:
        sources[i] = hot.flush_source(ids[i], release_owner=owner[i])
        snapshots[i] = hot.read_snapshot(ids[i], sources[i])  # the records, in chunks

    op("flush read", "HotStore.flush_source + read_records (meta, then the records)", read)
    etags = {}
    for i, source in sources.items():  # the S3 PUTs between read and commit, not measured
        etags[i] = t.cold.write(ids[i], snapshots[i], source.cold_etag)

    def commit(i: int) -> None:
        source = sources[i]
        hot.commit_flush(
            ids[i], version=source.version, etag=etags[i], epoch=source.epoch, evict=True,
            release_owner=owner[i],
        )  # fmt: skip

    op("flush commit", "HotStore.commit_flush (release, evict)", commit)
    for tid in ids:  # as Threads.flush does after an eviction
        hot.forget_activity(tid)
    op("hydrate", f"Threads.hydrate (restore {history + 2} messages)", lambda i: t.hydrate(ids[i]))
    add_one("m2")
    op("flush, keep hot", "Threads.flush(evict=False)", lambda i: t.flush(ids[i], evict=False))
    add_one("m3")
    op("flush, evict", "Threads.flush(evict=True)", lambda i: t.flush(ids[i], evict=True))
    for shard in hot.layout.turn_shards:  # the turns above never end: no due turns to wake
        hot.redis.delete(shard)
    beats = max(5, mode.op_calls // 20)
    op(
        "beat: idle selection", f"HotStore.idle_threads: {ACTIVITY_SHARDS} activity shards",
        lambda i: hot.idle_threads(3_600_000, 1000), beats,
    )  # fmt: skip
    op(
        "beat: turn reconciler", f"TurnStore.reconcile: {TURN_SHARDS} turn-index shards",
        lambda i: turns.reconcile(limit_per_shard=100), beats,
    )  # fmt: skip
    return ctx.rows


# -- 2. memory -------------------------------------------------------------------


def memory(ctx: OpContext, mode: Mode) -> dict[str, Any]:
    t = ctx.threads
    run = uuid.uuid4().hex[:6]
    ids = [f"mem-{run}-{i:05d}" for i in range(mode.mem_threads)]
    start = snapshot(ctx.nodes)
    for tid in ids:
        t.open(tid, "new")
    created = snapshot(ctx.nodes)
    record_bytes = 0
    for k in range(mode.mem_messages):
        for tid in ids:
            msg = {"id": f"msg-{k:06d}", "body": chat_body(k)}
            record_bytes += len(encode_message(msg).record)
            t.append(tid, [msg])
    filled = snapshot(ctx.nodes)
    messages = mode.mem_threads * mode.mem_messages
    cluster = t.hot.redis
    sample = ids[:20]

    def usage(kind: str) -> float:  # MEMORY USAGE of one kind of key, mean over the sample
        return statistics.mean(
            int(cluster.memory_usage(getattr(t.hot.keys(tid), kind), samples=0) or 0)
            for tid in sample
        )

    per_kind = {kind: round(usage(kind), 1) for kind in ("meta", "msgs", "ids", "state")}
    for tid in ids:
        t.delete(tid)
    return {
        "threads": mode.mem_threads,
        "messages_per_thread": mode.mem_messages,
        "record_bytes_avg": round(record_bytes / messages, 1),
        "used_memory_per_new_thread": round((created.memory - start.memory) / mode.mem_threads, 1),
        "bytes_per_message": round((filled.memory - created.memory) / messages, 1),
        "memory_usage_per_message": round(
            (per_kind["msgs"] + per_kind["ids"]) / mode.mem_messages, 1
        ),
        # a thread's own keys besides its messages (MEMORY USAGE; used_memory deltas of
        # a few hundred bytes per thread are below the noise of client buffers)
        "bytes_per_empty_thread": round(per_kind["meta"] + per_kind["state"], 1),
        "memory_usage_by_kind": per_kind,
    }


# -- 3. turns through real workers -----------------------------------------------


@dataclass
class TurnRig:
    app: Any
    client: Any
    agent: Any
    broker: redis.Redis
    broker_server: EmbeddedRedis
    workers: list[Any]
    threads: Threads  # this process's view of the workers' namespace


def start_workers(
    stack: ExitStack, cluster: RedisClusterServer, s3_url: str, mode: Mode, log_dir: Path
) -> TurnRig:
    from tasks.client import ThreadClient
    from tasks.local.processes import WorkerProcess, client_app

    broker_server = stack.enter_context(EmbeddedRedis())
    base = f"redis://127.0.0.1:{broker_server.port}"
    queues = ["cm-threads", "cm-agents"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "AGENT_THREADS_BROKER_URL": f"{base}/0",
        "AGENT_THREADS_RESULT_BACKEND": f"{base}/1",
        "AGENT_THREADS_REDIS_URL": f"redis://{cluster.nodes[0]}/0",
        "AGENT_THREADS_REDIS_CLUSTER": "1",
        "AGENT_THREADS_NAMESPACE": TURN_NAMESPACE,
        "AGENT_THREADS_COLD_URL": f"s3://{BUCKET}/threads",
        "AGENT_THREADS_S3_ENDPOINT_URL": s3_url,
        "AGENT_THREADS_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AGENT_THREADS_QUEUE": queues[0],
        "AGENT_THREADS_DEFAULT_QUEUE": queues[1],
        "AGENT_THREADS_IMPORTS": "bench.cluster_tasks",
        S3_COUNTS_ENV: f"{base}/2",
    }
    app = client_app("cluster-model", env, queues)
    workers = []
    for w in range(mode.workers):
        worker = WorkerProcess(
            env, queues, name=f"cm{w}", concurrency=mode.concurrency,
            log_path=str(log_dir / f"worker{w}.log"), cwd=str(ROOT),
        )  # fmt: skip
        worker.start()
        stack.callback(worker.stop)
        workers.append(worker)
    stack.callback(app.close)
    for worker in workers:
        worker.wait_ready(app)
    s3 = s3_client_for(s3_url)
    threads = Threads(
        HotStore(cluster.client(), namespace=TURN_NAMESPACE),
        S3ColdStore(s3, BUCKET, "threads"),
    )
    return TurnRig(
        app=app,
        client=ThreadClient(app, timeout=120, hot=threads.hot),
        agent=app.signature("bench.cluster_agent"),
        broker=redis.Redis.from_url(f"{base}/2"),
        broker_server=broker_server,
        workers=workers,
        threads=threads,
    )


def run_turn(rig: TurnRig, tid: str, turn_id: str, mode: str) -> None:
    result = rig.client.turn(tid, [user_message(turn_id)], rig.agent, turn_id=turn_id, mode=mode)
    result.get(timeout=120)  # the flush step's result (in the broker Redis, not the cluster)


def coverage(
    rig: TurnRig, ports: list[int], specs: KeySpecs, nodes: list[redis.Redis], mode: Mode
) -> dict[str, Any]:
    """Three turns per thread, one turn at a time, under MONITOR (module docstring)."""
    run = uuid.uuid4().hex[:6]
    # random ids, as real ones are: sequential ids spread over CRC32 shards unlike them
    ids = [f"cov-{run}-{uuid.uuid4().hex[:12]}" for _ in range(mode.coverage_threads)]
    kinds = ("new", "continue", "hydrate")
    per_turn: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    keys_by_thread: dict[str, set[str]] = defaultdict(set)
    slots_by_thread: dict[str, set[int]] = defaultdict(set)
    nodes_by_thread: dict[str, set[int]] = defaultdict(set)
    samples: list[Command] = []
    hot_before: Counter[str] = Counter()
    worker_s3_counts(rig.broker)
    with Monitor(ports) as monitor:
        for tid in ids:
            for k, kind in enumerate(kinds):
                if kind == "hydrate":  # evict first (untimed, outside the turn's segment)
                    rig.threads.flush(tid, evict=True)
                    monitor.mark("skip")
                if rig.threads.hot.exists(tid):
                    hot_before[kind] += 1
                monitor.mark("skip")
                worker_s3_counts(rig.broker)
                run_turn(rig, tid, f"{tid}-t{k}", "new" if kind == "new" else "continue")
                label = f"{tid}.{kind}"
                monitor.mark(label.replace(":", "_"))
                s3 = worker_s3_counts(rig.broker)
                per_turn[kind].append({"label": label, "s3": s3})
        segments = monitor.segments()
    layout = KeyLayout(TURN_NAMESPACE)
    for kind in kinds:
        for entry in per_turn[kind]:
            tid = entry["label"].rsplit(".", 1)[0]
            commands = segments.get(entry["label"].replace(":", "_"), [])
            keys, slots, masters = touched(commands, specs)
            writes = Counter(
                kind
                for c in commands
                for kind in {_kind_of(k, layout) for k in specs.keys(c)}
                if kind in ("activity shard", "turn-index shard") and c.origin == "client"
            )
            entry.update(
                index_calls=dict(writes),
                keys=len(keys),
                slots=len(slots),
                masters=len(masters),
                calls=sum(1 for c in commands if c.origin == "client"),
                shared=sorted(k for k in keys if f"{{{tid}}}" not in k),
            )
            keys_by_thread[tid] |= keys
            slots_by_thread[tid] |= slots
            nodes_by_thread[tid] |= masters
            samples.extend(commands)
    first = sorted(keys_by_thread[ids[0]])  # our slot of a key is the cluster's
    wrong = [k for k in first if int(nodes[0].cluster("KEYSLOT", k)) != key_slot(k.encode())]
    if wrong:
        raise RuntimeError(f"CLUSTER KEYSLOT disagrees for {wrong}")
    beats = beat_coverage(rig, ports, specs)
    every = set.intersection(*keys_by_thread.values())
    every_slot = set.intersection(*slots_by_thread.values())
    every_node = set.intersection(*nodes_by_thread.values())
    sharing: Counter[str] = Counter(k for keys in keys_by_thread.values() for k in keys)
    shared = {k: n for k, n in sharing.items() if n > 1}
    layout = KeyLayout(TURN_NAMESPACE)
    summary: dict[str, Any] = {}
    for kind in kinds:
        entries = per_turn[kind]
        s3_ops = sorted({op for e in entries for op in e["s3"]})
        summary[kind] = {
            "turns": len(entries),
            "hot_before": hot_before[kind],
            "keys": round(statistics.mean(e["keys"] for e in entries), 2),
            "slots": round(statistics.mean(e["slots"] for e in entries), 2),
            "masters": round(statistics.mean(e["masters"] for e in entries), 2),
            "calls": round(statistics.mean(e["calls"] for e in entries), 1),
            "index_calls": {
                shard: round(statistics.mean(e["index_calls"].get(shard, 0) for e in entries), 2)
                for shard in ("activity shard", "turn-index shard")
            },
            "keys_outside_thread_slot": sorted(
                {_kind_of(k, layout) for e in entries for k in e["shared"]}
            ),
            "s3": {
                op: round(statistics.mean(e["s3"].get(op, 0) for e in entries), 2) for op in s3_ops
            },
        }
    return {
        "threads": len(ids),
        "keyslot_checked": len(first),
        "turns": {kind: summary[kind] for kind in kinds},
        "keys_touched_by_every_thread": sorted(every),
        "slots_touched_by_every_thread": sorted(every_slot),
        "masters_touched_by_every_thread": sorted(every_node),
        "keys_shared_by_2_or_more_threads": len(shared),
        "max_threads_sharing_a_key": max(shared.values(), default=1),
        "shared_key_kinds": sorted({_kind_of(k, layout) for k in shared}),
        "threads_per_activity_shard_expected": round(len(ids) / ACTIVITY_SHARDS, 2),
        "threads_per_turn_shard_expected": round(len(ids) / TURN_SHARDS, 2),
        "beats": beats,
        "sample_sent": dict(Counter(c.name for c in samples if c.origin == "client")),
        "sample_seen": dict(Counter(c.name for c in samples)),
    }


def _kind_of(key: str, layout: KeyLayout) -> str:
    """A key's kind for the report: a thread key by suffix, an index shard by family."""
    ns = layout.namespace
    if key.startswith(f"{ns}:activity:"):
        return "activity shard"
    if key.startswith(f"{ns}:turns:"):
        return "turn-index shard"
    if key == layout.idle_flush_lock:
        return "idle-flush lock"
    if key == layout.activity_cursor:
        return "activity reconciler cursor"
    if key == layout.legacy_activity:
        return "pre-shard activity index (migration check)"
    if key.startswith(f"{ns}:{{"):
        return "thread key :" + key.rsplit("}:", 1)[-1].split(":")[0]
    return key


def beat_coverage(rig: TurnRig, ports: list[int], specs: KeySpecs) -> list[dict[str, Any]]:
    """One run of each beat task through a worker, under MONITOR: what it touches."""
    layout = KeyLayout(TURN_NAMESPACE)
    out = []
    for name, kwargs in (
        ("threads.flush_idle", {"idle_seconds": 3600}),
        ("threads.reconcile_turns", {}),
        ("threads.reconcile_activity", {"max_keys": 1000}),
    ):
        with Monitor(ports) as monitor:
            rig.app.signature(name, kwargs=kwargs).apply_async().get(timeout=60)
            monitor.mark("beat")
            commands = monitor.segments().get("beat", [])
        keys, slots, masters = touched(commands, specs)
        kinds = Counter(_kind_of(k, layout) for k in keys)
        out.append(
            {
                "task": name,
                "keys": len(keys),
                "slots": len(slots),
                "masters": len(masters),
                "calls": sum(1 for c in commands if c.origin == "client"),
                "key_kinds": dict(sorted(kinds.items())),
                "scans": sum(1 for c in commands if c.name == "scan"),
            }
        )
    return out


def broker_cpu_s(broker: redis.Redis) -> float:
    cpu = broker.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def throughput(
    rig: TurnRig,
    nodes: list[redis.Redis],
    mode: Mode,
    idle_cpu_per_s: float,
    sample: dict[str, Any],
    moto_pid: int,
) -> dict[str, Any]:
    """Every thread's turns at once, round after round; counters over the continue rounds."""
    run = uuid.uuid4().hex[:6]
    ids = [f"load-{run}-{uuid.uuid4().hex[:12]}" for _ in range(mode.load_threads)]

    def round_(r: int) -> float:
        started = time.perf_counter()
        kind = "new" if r == 0 else "continue"
        results = [
            rig.client.turn(
                tid, [user_message(f"{tid}-r{r}")], rig.agent, turn_id=f"{tid}-r{r}", mode=kind
            )
            for tid in ids
        ]
        for result in results:
            result.get(timeout=300)
        return time.perf_counter() - started

    def cpu() -> dict[str, float]:
        return {
            "workers": sum(process_cpu_s(w.process.pid) for w in rig.workers),
            "broker": broker_cpu_s(rig.broker),
            "client": time.process_time(),
            "moto": process_cpu_s(moto_pid),
        }

    first_s = round_(0)
    worker_s3_counts(rig.broker)
    before, cpu_before = snapshot(nodes), cpu()
    seconds = [round_(r) for r in range(1, mode.load_rounds)]
    after, cpu_after = snapshot(nodes), cpu()
    used = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
    s3 = worker_s3_counts(rig.broker)
    delta = diff(before, after, idle_cpu_per_s)
    turns = len(ids) * (mode.load_rounds - 1)
    wall = sum(seconds)
    sent, seen = Counter(sample["sample_sent"]), Counter(sample["sample_seen"])
    statuses = [rig.threads.turns.status(tid, f"{tid}-r{mode.load_rounds - 1}") for tid in ids]
    finished = sum(1 for s in statuses if s is not None and s.state == "finished")
    hot = rig.threads.hot
    runs_bytes = [
        int(hot.redis.memory_usage(hot.keys(tid).runs, samples=0) or 0) for tid in ids[:20]
    ]
    busy = (sum(used.values()) + delta.cpu_us / 1e6) / wall
    return {
        "threads": len(ids),
        "workers": mode.workers,
        "concurrency": mode.concurrency,
        "turns": turns,
        "finished_last_round": finished,
        "first_round_turns_per_s": round(len(ids) / first_s, 1),
        "turns_per_s": round(turns / wall, 1),
        "appends_per_s": round(2 * turns / wall, 1),
        "turns_per_s_per_worker": round(turns / wall / mode.workers, 1),
        "redis_cpu_us_per_turn": round(delta.cpu_us / turns, 1),
        "redis_command_us_per_turn": round(client_share(delta.usec, sent, seen) / turns, 1),
        "redis_evalsha_per_turn": round(delta.calls.get("evalsha", 0) / turns, 2),
        "redis_calls_per_turn": round(client_share(delta.calls, sent, seen) / turns, 1),
        "broker_cpu_us_per_turn": round(used["broker"] * 1e6 / turns, 1),
        "worker_cpu_ms_per_turn": round(used["workers"] * 1000 / turns, 2),
        "client_cpu_ms_per_turn": round(used["client"] * 1000 / turns, 2),
        "moto_cpu_ms_per_turn": round(used["moto"] * 1000 / turns, 2),
        "cpus_busy": round(busy, 2),
        "s3_per_turn": {op: round(n / turns, 3) for op, n in sorted(s3.items())},
        "turn_records_bytes_per_turn": round(statistics.mean(runs_bytes) / mode.load_rounds, 1),
        "cold_shards_spread": shard_spread(ids),
        "wall_s": round(wall, 2),
    }


def shard_spread(ids: Sequence[str]) -> dict[str, Any]:
    counts = Counter(object_key("threads", t).split("/")[1] for t in ids)
    return {"prefixes_used": len(counts), "max_per_prefix": max(counts.values())}


# -- 4. the model ----------------------------------------------------------------


def _per_turn(s3: dict[str, float], *ops: str) -> float:
    return sum(s3.get(op, 0.0) for op in ops)


def model(result: dict[str, Any]) -> dict[str, Any]:
    """1M active threads, 100k appends/s, from the measured inputs and ``ASSUMPTIONS``."""
    a = {**ASSUMPTIONS, **result.get("assumptions", {})}
    ops = {row["op"]: row for row in result["operations"]}
    load, mem = result["throughput"], result["memory"]
    cov = result["coverage"]["turns"]
    per_turn_msgs = a["messages_per_turn"]
    turns_s = a["appends_per_s"] / per_turn_msgs
    redis_us = load["redis_cpu_us_per_turn"]
    broker_us = load["broker_cpu_us_per_turn"]
    rpush_us = ops["baseline RPUSH"]["cpu_us"]
    redis_cores = turns_s * redis_us / 1e6
    masters_cpu = math.ceil(redis_cores / a["redis_cpu_target"])
    per_thread = (
        mem["bytes_per_empty_thread"]
        + a["hot_messages_per_thread"] * mem["bytes_per_message"]
        + a["hot_turn_records_per_thread"] * load["turn_records_bytes_per_turn"]
    )
    redis_gib = a["active_threads"] * per_thread / 2**30
    masters_mem = math.ceil(redis_gib / a["maxmemory_gib_per_master"])
    worker_cores = turns_s * load["worker_cpu_ms_per_turn"] / 1000
    worker_processes = math.ceil(worker_cores / a["worker_cpu_target"])
    in_flight = turns_s * a["model_seconds_per_turn"]
    broker_cores = turns_s * broker_us / 1e6
    f_new, f_hyd = a["new_thread_fraction"], a["hydrate_fraction"]
    mix = {"new": f_new, "hydrate": f_hyd, "continue": 1 - f_new - f_hyd}
    put_turn = sum(f * _per_turn(cov[k]["s3"], "PutObject") for k, f in mix.items())
    get_turn = sum(f * _per_turn(cov[k]["s3"], "GetObject", "HeadObject") for k, f in mix.items())
    prefixes = a["s3_prefixes"]
    ceilings = {  # appends/s at which each resource of the measured layout is full
        f"Celery broker (one Redis at {a['redis_cpu_target']:.0%}, {broker_us:,.0f} µs per turn)": (
            a["redis_cpu_target"] * 1e6 / broker_us * per_turn_msgs
        ),
        f"hot tier CPU, {MASTERS} masters at {a['redis_cpu_target']:.0%}": (
            MASTERS * a["redis_cpu_target"] * 1e6 / redis_us * per_turn_msgs
        ),
        f"hot tier CPU, {a['cluster_max_masters']:,} masters (Redis Cluster's size limit)": (
            a["cluster_max_masters"] * a["redis_cpu_target"] * 1e6 / redis_us * per_turn_msgs
        ),
        f"S3 PUT, {prefixes} prefixes x {a['s3_put_per_prefix']:,}/s": (
            prefixes * a["s3_put_per_prefix"] / max(put_turn, 1e-9) * per_turn_msgs
        ),
        f"S3 GET+HEAD, {prefixes} prefixes x {a['s3_get_per_prefix']:,}/s": (
            prefixes * a["s3_get_per_prefix"] / max(get_turn, 1e-9) * per_turn_msgs
        ),
    }
    zadd_us = ops["index ZADD"]["cpu_us"]
    shard_keys = {"turn-index shard": TURN_SHARDS, "activity shard": ACTIVITY_SHARDS}
    hot_keys = {}
    for shard, count in shard_keys.items():
        calls = sum(f * cov[k]["index_calls"][shard] for k, f in mix.items())
        per_key_s = turns_s * calls / count
        hot_keys[shard] = {
            "calls_per_turn": round(calls, 2),
            "keys": count,
            "calls_per_s_per_key": round(per_key_s),
            "cores_per_key": round(per_key_s * zadd_us / 1e6, 2),
        }
        # one key lives on one master: full when its calls use that master's target
        ceilings[f"{shard}s ({count} keys, one master each, {calls:g} calls per turn)"] = (
            count * a["redis_cpu_target"] * 1e6 / zadd_us / max(calls, 1e-9) * per_turn_msgs
        )
    first = min(ceilings, key=lambda k: ceilings[k])
    short = [k for k, v in ceilings.items() if v < a["appends_per_s"]]
    return {
        "below_target": short,
        "hot_keys": hot_keys,
        "index_zadd_cpu_us": zadd_us,
        "assumptions": a,
        "turns_per_s": turns_s,
        "redis_cores": round(redis_cores, 1),
        "rpush_equivalents_per_turn": round(redis_us / rpush_us, 1),
        "append_only_cores": round(a["appends_per_s"] * ops["append"]["cpu_us"] / 1e6, 1),
        "masters_for_cpu": masters_cpu,
        "bytes_per_active_thread": round(per_thread),
        "redis_gib": round(redis_gib, 1),
        "masters_for_memory": masters_mem,
        "masters": max(masters_cpu, masters_mem),
        "gib_per_master": round(redis_gib / max(masters_cpu, masters_mem), 2),
        "active_threads_in_6_masters": int(
            MASTERS * a["maxmemory_gib_per_master"] * 2**30 / per_thread
        ),
        "worker_cores": round(worker_cores),
        "worker_processes": worker_processes,
        "turns_in_flight": round(in_flight),
        "threads_per_worker_process": math.ceil(in_flight / worker_processes),
        "broker_cores": round(broker_cores, 1),
        "put_per_turn": round(put_turn, 3),
        "get_per_turn": round(get_turn, 3),
        "s3_put_per_s": round(turns_s * put_turn),
        "s3_get_per_s": round(turns_s * get_turn),
        "s3_put_per_prefix": round(turns_s * put_turn / prefixes, 1),
        "s3_get_per_prefix": round(turns_s * get_turn / prefixes, 1),
        "s3_put_share_of_limit": round(turns_s * put_turn / prefixes / a["s3_put_per_prefix"], 3),
        "ceilings_appends_per_s": {k: round(v) for k, v in ceilings.items()},
        "first_bottleneck": first,
    }


# -- report ----------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in header], *[[str(c) for c in r] for r in rows]]
    out = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(out)


def _s3(counts: dict[str, float]) -> str:
    return ", ".join(f"{op} {n:g}" for op, n in counts.items()) or "none"


def _operations_table(rows: list[dict[str, Any]]) -> str:
    header = ("operation", "what is called", "Redis CPU µs", "command µs", "script µs")
    header += ("calls sent", "keys", "slots", "S3 per call")
    return table(
        header,
        [
            (
                r["op"], r["what"], f"{r['cpu_us']:.1f}", f"{r['command_us']:.1f}",
                f"{r['evalsha_us']:.1f}", f"{r['round_trips']:g}", f"{r['keys']:g}",
                f"{r['slots']:g}", _s3(r["s3"]),
            )
            for r in rows
        ],
    )  # fmt: skip


def _turns_table(turns: dict[str, dict[str, Any]]) -> str:
    header = ("turn", "turns", "hot before", "Redis calls sent", "keys", "slots", "masters")
    header += ("S3 requests", "keys outside the thread's slot")
    return table(
        header,
        [
            (
                kind, t["turns"], t["hot_before"], f"{t['calls']:g}", f"{t['keys']:g}",
                f"{t['slots']:g}", f"{t['masters']:g}", _s3(t["s3"]),
                ", ".join(t["keys_outside_thread_slot"]) or "none",
            )
            for kind, t in turns.items()
        ],
    )  # fmt: skip


def _sharing(cov: dict[str, Any]) -> str:
    every = cov["keys_touched_by_every_thread"]
    return "\n".join(
        [
            f"- threads: {cov['threads']}, 3 turns each, one turn at a time; every key's slot "
            f"checked against `CLUSTER KEYSLOT` for {cov['keyslot_checked']} keys",
            f"- keys touched by every thread: **{len(every)}** {every or ''}".rstrip(),
            f"- slots touched by every thread: **{len(cov['slots_touched_by_every_thread'])}**; "
            f"masters touched by every thread: {len(cov['masters_touched_by_every_thread'])}",
            f"- keys touched by 2 or more threads: {cov['keys_shared_by_2_or_more_threads']}, "
            f"of the kinds: {', '.join(cov['shared_key_kinds']) or 'none'}; the most threads "
            f"on one key: {cov['max_threads_sharing_a_key']} (a uniform hash gives "
            f"{cov['threads_per_activity_shard_expected']} per activity shard and "
            f"{cov['threads_per_turn_shard_expected']} per turn-index shard)",
        ]
    )


def _beats_table(beats: list[dict[str, Any]]) -> str:
    header = ("beat task, one run", "Redis calls sent", "keys", "slots", "masters", "SCANs")
    return table(
        (*header, "keys by kind"),
        [
            (
                b["task"], b["calls"], b["keys"], b["slots"], b["masters"], b["scans"],
                ", ".join(f"{k} {n}" for k, n in b["key_kinds"].items()),
            )
            for b in beats
        ],
    )  # fmt: skip


def _throughput_table(load: dict[str, Any]) -> str:
    rounds = load["turns"] // load["threads"]
    calls = f"{load['redis_calls_per_turn']:g} ({load['redis_evalsha_per_turn']:g} EVALSHA)"
    rows = [
        ("worker processes x threads", f"{load['workers']} x {load['concurrency']}"),
        ("threads x continue turns measured", f"{load['threads']} x {rounds}"),
        ("turns/s, all workers", f"{load['turns_per_s']:,.1f}"),
        ("appends/s (2 messages per turn)", f"{load['appends_per_s']:,.1f}"),
        ("turns/s per worker process", f"{load['turns_per_s_per_worker']:,.1f}"),
        ("turns/s of the first round (new threads)", f"{load['first_round_turns_per_s']:,.1f}"),
        ("CPUs busy (all measured processes)", f"{load['cpus_busy']:.2f}"),
        ("hot tier: Redis CPU µs per turn, all masters", f"{load['redis_cpu_us_per_turn']:,.0f}"),
        ("hot tier: command µs per turn", f"{load['redis_command_us_per_turn']:,.0f}"),
        ("hot tier: Redis calls sent per turn", calls),
        ("broker Redis: CPU µs per turn", f"{load['broker_cpu_us_per_turn']:,.0f}"),
        ("workers: CPU ms per turn", f"{load['worker_cpu_ms_per_turn']:.2f}"),
        ("client (submit): CPU ms per turn", f"{load['client_cpu_ms_per_turn']:.2f}"),
        ("moto (S3): CPU ms per turn", f"{load['moto_cpu_ms_per_turn']:.2f}"),
        ("S3 requests per turn", _s3(load["s3_per_turn"])),
        (
            "cold-key prefixes of these threads",
            f"{load['cold_shards_spread']['prefixes_used']} of 256 used, at most "
            f"{load['cold_shards_spread']['max_per_prefix']} threads on one",
        ),
        ("turns finished, last round", f"{load['finished_last_round']} of {load['threads']}"),
    ]
    return table(("measure", "value"), rows)


def _memory_table(mem: dict[str, Any], load: dict[str, Any]) -> str:
    rows = [
        ("record bytes (JSON), average", f"{mem['record_bytes_avg']:,.0f}"),
        ("Redis bytes per message (used_memory Δ)", f"{mem['bytes_per_message']:,.0f}"),
        ("the same from MEMORY USAGE of :msgs + :ids", f"{mem['memory_usage_per_message']:,.0f}"),
        (
            "Redis bytes per thread besides its messages (:meta, :state)",
            f"{mem['bytes_per_empty_thread']:,.0f}",
        ),
        ("Redis bytes per turn record", f"{load['turn_records_bytes_per_turn']:,.0f}"),
        ("threads x messages measured", f"{mem['threads']:,} x {mem['messages_per_thread']}"),
    ]
    return table(("measure", "value"), rows)


def _inputs_table(m: dict[str, Any]) -> str:
    a = m["assumptions"]
    rows = [
        ("active threads", f"{a['active_threads']:,}", "the target"),
        ("appends/s", f"{a['appends_per_s']:,}", "the target"),
        ("messages per turn", a["messages_per_turn"], "assumed: the user's and the reply"),
        ("turns/s", f"{m['turns_per_s']:,.0f}", "appends/s / messages per turn"),
        ("hot messages per active thread", a["hot_messages_per_thread"], "assumed"),
        ("turn records per active thread", a["hot_turn_records_per_thread"], "assumed"),
        ("turns that open a new thread", f"{a['new_thread_fraction']:.0%}", "assumed"),
        ("turns that hydrate (thread was evicted)", f"{a['hydrate_fraction']:.0%}", "assumed"),
        ("model time per turn", f"{a['model_seconds_per_turn']} s", "assumed"),
        ("Redis CPU target per master", f"{a['redis_cpu_target']:.0%}", "assumed headroom"),
        ("maxmemory per master", f"{a['maxmemory_gib_per_master']} GiB", "assumed"),
        ("worker CPU target per process", f"{a['worker_cpu_target']:.0%}", "assumed"),
        (
            "S3 PUT / GET per prefix",
            f"{a['s3_put_per_prefix']:,} / {a['s3_get_per_prefix']:,}",
            "AWS",
        ),
        ("cold-key prefixes", a["s3_prefixes"], "`storage.cold.object_key`"),
    ]
    return table(("input", "value", "source"), rows)


def _model_table(m: dict[str, Any], load: dict[str, Any]) -> str:
    a = m["assumptions"]
    t = f"{m['turns_per_s']:,.0f} turns/s"
    zadd = f"{m['index_zadd_cpu_us']:g}"
    rows = [
        (
            "hot tier CPU",
            f"{t} x {load['redis_cpu_us_per_turn']:,.0f} µs",
            f"{m['redis_cores']:,} cores",
        ),
        (
            "masters for CPU",
            f"{m['redis_cores']:,} / {a['redis_cpu_target']:.0%}",
            m["masters_for_cpu"],
        ),
        (
            "hot tier memory",
            f"{a['active_threads']:,} x {m['bytes_per_active_thread']:,} B",
            f"{m['redis_gib']:,} GiB",
        ),
        (
            "masters for memory",
            f"{m['redis_gib']:,} / {a['maxmemory_gib_per_master']} GiB",
            m["masters_for_memory"],
        ),
        (
            "**masters**",
            "the larger (plus a replica each)",
            f"**{m['masters']:,}** ({m['gib_per_master']} GiB each)",
        ),
        (
            "worker CPU",
            f"{t} x {load['worker_cpu_ms_per_turn']:.2f} ms",
            f"{m['worker_cores']:,} cores",
        ),
        (
            "**worker processes**",
            f"{m['worker_cores']:,} / {a['worker_cpu_target']:.0%}",
            f"**{m['worker_processes']:,}**",
        ),
        (
            "turns in flight",
            f"{t} x {a['model_seconds_per_turn']} s",
            f"{m['turns_in_flight']:,} ({m['threads_per_worker_process']:,} threads per process)",
        ),
        *(
            (
                f"one {shard}",
                f"{t} x {h['calls_per_turn']:g} calls / {h['keys']} keys x {zadd} µs",
                f"{h['calls_per_s_per_key']:,} calls/s = {h['cores_per_key']:g} cores",
            )
            for shard, h in m["hot_keys"].items()
        ),
        (
            "broker CPU",
            f"{t} x {load['broker_cpu_us_per_turn']:,.0f} µs",
            f"{m['broker_cores']:,} cores (one Redis has 1)",
        ),
        (
            "S3 PUT/s",
            f"{t} x {m['put_per_turn']:g}",
            f"{m['s3_put_per_s']:,} = {m['s3_put_per_prefix']:,} per prefix "
            f"({m['s3_put_share_of_limit']:.1%} of 3,500)",
        ),
        (
            "S3 GET+HEAD/s",
            f"{t} x {m['get_per_turn']:g}",
            f"{m['s3_get_per_s']:,} = {m['s3_get_per_prefix']:,} per prefix",
        ),
    ]
    return table(("resource", "arithmetic", "result"), rows)


def render(result: dict[str, Any]) -> dict[str, str]:
    """The doc's generated sections, by marker name."""
    m, load, cov, env = (
        result["model"],
        result["throughput"],
        result["coverage"],
        result["environment"],
    )
    ceilings = m["ceilings_appends_per_s"]
    ordered = sorted(ceilings.items(), key=lambda kv: kv[1])
    first = m["first_bottleneck"]
    return {
        "environment": (
            f"Measured {result['date']} with `{result['command']}` ({result['mode']} mode, "
            f"{result['total_s']} s): redis-server {env['redis_version']} ({env['redis_binary']}) "
            f"x {MASTERS} masters, no replicas; moto {env['moto']}; Python {env['python']}, "
            f"redis-py {env['redis_py']}, celery {env['celery']}; {env['cpus']} CPUs shared by "
            f"every process of the run. Idle CPU of the {MASTERS} masters: "
            f"{result['idle_cpu_us_per_s']:,.0f} µs/s (subtracted)."
        ),
        "operations": _operations_table(result["operations"]),
        "memory": _memory_table(result["memory"], load),
        "turns": _turns_table(cov["turns"]),
        "sharing": _sharing(cov),
        "beats": _beats_table(cov["beats"]),
        "throughput": _throughput_table(load),
        "inputs": _inputs_table(m),
        "model": _model_table(m, load),
        "ceilings": table(("resource", "appends/s when full"), [(k, f"{v:,}") for k, v in ordered]),
        "verdict": (
            f"**First bottleneck: the {first}**, full at {ceilings[first]:,} appends/s; next: "
            f"the {ordered[1][0]} at {ordered[1][1]:,}. A turn costs the hot tier "
            f"{load['redis_cpu_us_per_turn']:,.0f} µs of Redis CPU "
            f"({m['rpush_equivalents_per_turn']:g} plain RPUSH), spread over every master by "
            f"the thread's slot; it costs the broker {load['broker_cpu_us_per_turn']:,.0f} µs on "
            f"one Redis. 6 masters at {m['assumptions']['maxmemory_gib_per_master']} GiB hold "
            f"{m['active_threads_in_6_masters']:,} active threads of "
            f"{m['bytes_per_active_thread']:,} bytes. Appends alone (no turn machinery) would "
            f"need {m['append_only_cores']:,} cores of Redis CPU at 100k/s."
            f"\n\nBelow the target of {m['assumptions']['appends_per_s']:,} appends/s, however "
            f"many workers and masters are added: "
            + "; ".join(f"{k} ({ceilings[k]:,})" for k in m["below_target"] if "6 masters" not in k)
            + "."
        ),
    }


def write_doc(path: Path, sections: dict[str, str]) -> None:
    """Replace the body of each ``<!-- cluster_model:NAME -->`` ... ``<!-- /cluster_model:NAME
    -->`` section of ``path`` with the rendered one."""
    text = path.read_text(encoding="utf-8")
    for name, body in sections.items():
        start, end = f"<!-- cluster_model:{name} -->\n", f"<!-- /cluster_model:{name} -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{path}: no section {start.strip()} ... {end} to render into")
        section = f"{start}{body}\n{end}"
        text = pattern.sub(lambda _, section=section: section, text)
    path.write_text(text, encoding="utf-8")


# -- main ------------------------------------------------------------------------


def environment(node: redis.Redis, binary: str) -> dict[str, Any]:
    import celery
    import moto

    return {
        "redis_version": node.info("server")["redis_version"],
        "redis_binary": binary,
        "moto": moto.__version__,
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "celery": celery.__version__,
        "cpus": os.cpu_count(),
    }


def idle_cpu_rate(nodes: Sequence[redis.Redis], seconds: float = 2.0) -> float:
    before = snapshot(nodes)
    time.sleep(seconds)  # measuring the idle rate itself
    after = snapshot(nodes)
    return max(0.0, (after.cpu_s - before.cpu_s) / (after.at - before.at))


def measure(mode: Mode, quick: bool, log_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    binary = SYSTEM_REDIS if Path(SYSTEM_REDIS).is_file() else None
    with ExitStack() as stack:
        cluster = stack.enter_context(RedisClusterServer(masters=MASTERS, binary=binary))
        moto_server = stack.enter_context(MotoServer())
        s3 = s3_client_for(moto_server.url)
        s3.create_bucket(Bucket=BUCKET)
        nodes = [cluster.node_client(p, decode_responses=True) for p in cluster.ports]
        for node in nodes:
            stack.callback(node.close)
        specs = KeySpecs(nodes[0])
        env = environment(nodes[0], cluster.binary)
        print(f"redis-server {env['redis_version']} x {MASTERS} masters ({cluster.binary})")
        idle = idle_cpu_rate(nodes)
        cluster_client = cluster.client()
        stack.callback(cluster_client.close)
        counts = S3Counts(s3)
        threads = Threads(
            HotStore(cluster_client, namespace=OPS_NAMESPACE),
            S3ColdStore(s3, BUCKET, "threads", namespace=OPS_NAMESPACE),
        )
        ctx = OpContext(threads, nodes, cluster.ports, specs, counts, idle)
        print(f"1. operations in isolation ({mode.op_calls} calls each)", flush=True)
        ops = operations(ctx, mode)
        print("2. memory", flush=True)
        mem = memory(ctx, mode)
        print(f"   {mem}", flush=True)
        print(f"3. turns: {mode.workers} worker processes x {mode.concurrency} threads", flush=True)
        rig = start_workers(stack, cluster, moto_server.url, mode, log_dir)
        cov = coverage(rig, cluster.ports, specs, nodes, mode)
        print(f"   coverage: {json.dumps(cov['turns'])}", flush=True)
        print(f"   beats: {json.dumps(cov['beats'])}", flush=True)
        assert moto_server.process is not None
        load = throughput(rig, nodes, mode, idle, cov, moto_server.process.pid)
        print(f"   throughput: {json.dumps(load)}", flush=True)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m bench.cluster_model" + (" --quick" if quick else ""),
        "mode": "quick" if quick else "full",
        "environment": env,
        "idle_cpu_us_per_s": round(idle * 1e6, 1),
        "operations": ops,
        "memory": mem,
        "coverage": cov,
        "throughput": load,
    }
    result["model"] = model(result)
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_model", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer calls and turns (< 2 min)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--doc", metavar="PATH", help="render the tables into this markdown file")
    parser.add_argument("--render", metavar="JSON", help="no run: render --doc from this JSON")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text(encoding="utf-8"))
        result["model"] = model(result)
    else:
        mode = QUICK if args.quick else FULL
        with tempfile.TemporaryDirectory(prefix="cluster-model-") as log_dir:
            result = measure(mode, args.quick, Path(log_dir))
        print(f"model: {json.dumps(result['model'], indent=1)}")
        print(f"total {result['total_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if args.doc:
        write_doc(Path(args.doc), render(result))
        print(f"rendered {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
