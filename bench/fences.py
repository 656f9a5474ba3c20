"""Benchmark: the one-script writes that replace multi-step ones (put_record for
``set_system``, staged ``replace_all``) on long threads.

Run with ``python -m bench.fences [--messages 20000] [--replace 5000] [--rounds 5]``.
It starts its own redis-server and prints, per operation, the median wall time
of one call over loopback and the median time Redis spent in the script (from
``INFO commandstats``): while a script runs, Redis serves no other client, so
the second figure is the cost every other thread on that Redis pays. The
first row (a whole-thread ``load``, no script) is a reference for the machine's
speed in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis

from bench.hot_store import message
from storage import HotStore
from storage.embedded import EmbeddedRedis


def script_usec(client: redis.Redis) -> int:
    """Microseconds Redis spent in EVALSHA so far (redis-py runs registered scripts with it)."""
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0))


def measure(
    client: redis.Redis, rounds: int, call: Callable[[], Any], setup: Callable[[], Any]
) -> tuple[float, float]:
    """Median wall ms of ``call()`` (after an untimed ``setup()``) and median Redis
    ms per round, over ``rounds``."""
    walls, servers = [], []
    for _ in range(rounds):
        setup()
        usec0 = script_usec(client)
        start = time.perf_counter()
        call()
        walls.append((time.perf_counter() - start) * 1000)
        usec1 = script_usec(client)
        servers.append((usec1 - usec0) / 1000)
    return statistics.median(walls), statistics.median(servers)


def build(hot: HotStore, thread_id: str, n: int) -> None:
    hot.create(thread_id)
    for start in range(0, n, 1000):
        hot.append(thread_id, [message(i) for i in range(start, min(start + 1000, n))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fences", description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--replace", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args(argv)
    n, r, rounds = options.messages, options.replace, options.rounds
    with EmbeddedRedis() as server:
        client = server.client()
        hot = HotStore(client, ttl_seconds=None)
        build(hot, "long", n)
        counter = iter(range(10**9))
        last: list[Any] = []

        def system(text: str = "be brief") -> dict[str, Any]:
            return {"id": "system", "body": {"role": "system", "content": text}}

        def read_last() -> None:
            last[:] = hot.tail("long", 1)

        compacted = [message(i) for i in range(r)]
        build(hot, "short", 10)
        rows: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
            # reference, not a script: the read the old set_system made before its write
            (f"load (whole thread), {n:,}", lambda: hot.load("long"), lambda: None),
            (
                f"put_record first: insert, {n:,}",
                lambda: hot.put_record("long", {**system(), "id": f"s{next(counter)}"}, first=True),
                lambda: None,
            ),
            (
                f"put_record first: move last, {n:,}",
                lambda: hot.put_record("long", last[0], first=True),
                read_last,
            ),
            (
                f"set_system: edit in place, {n:,}",
                lambda: hot.put_record("long", system(f"v{next(counter)}"), first=True),
                lambda: hot.put_record("long", system(), first=True),
            ),
            (
                f"set_system: unchanged, {n:,}",
                lambda: hot.put_record("long", system(), first=True),
                lambda: None,
            ),
            (
                f"replace_all {r:,} (default chunks)",
                lambda: hot.replace_all("short", compacted[next(counter) % 2 :]),
                lambda: None,
            ),
            (
                f"replace_all {r:,} (inline)",
                lambda: hot.replace_all("short", compacted[next(counter) % 2 :], chunk_size=r),
                lambda: None,
            ),
        ]
        print(f"{'operation':<40} {'wall ms':>9} {'redis ms':>9}")
        for name, call, setup in rows:
            wall, in_redis = measure(client, rounds, call, setup)
            print(f"{name:<40} {wall:>9.2f} {in_redis:>9.2f}")
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
