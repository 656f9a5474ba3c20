"""Celery benchmark: threads.append throughput vs a no-op task, and one agent turn
(evict="idle", the default, and evict="turn") vs a chain of four no-op tasks, on the
same broker and the same worker process.

    python -m bench.celery_throughput [--quick]

Starts its own redis-server (hot tier, broker and results in databases 0/1/2) and
one real `celery worker` process (threads pool), and stops both at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import chain

from storage.embedded import EmbeddedRedis
from tasks.app import app, configure
from tasks.local.processes import WorkerProcess
from tasks.turns import agent_turn

BODY = {
    "role": "user",
    "content": "Please compare the 07:33 and 09:33 trains from Zurich to Milan, "
    "including connections, seat availability, prices and luggage rules. " * 6,
}


def throughput(send: Any, count: int) -> float:
    """Tasks per second: send ``count`` tasks at once, wait for every result."""
    started = time.perf_counter()
    results = [send(i) for i in range(count)]
    for result in results:
        result.get(timeout=300)
    return count / (time.perf_counter() - started)


def interleaved_latency_ms(
    kinds: dict[str, Any], repeats: int, warm: int
) -> dict[str, list[float]]:
    """Median-ready latency samples of each kind, taken in rotating order so a change
    of load on the machine hits every kind alike; the first ``warm`` rounds are dropped."""
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    names = list(kinds)
    for i in range(warm + repeats):
        for kind in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            kinds[kind](i).get(timeout=120)
            if i >= warm:
                samples[kind].append((time.perf_counter() - started) * 1000)
    return samples


def thread_bytes(store: Any, thread_id: str) -> int:
    """Redis memory of all of one thread's keys (MEMORY USAGE, summed)."""
    keys = store.hot.keys(thread_id)
    names = [*keys.data, keys.lease, keys.archived]
    return sum(int(store.hot.redis.memory_usage(name) or 0) for name in set(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer tasks (a smoke run)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    options = parser.parse_args()
    count, repeats = (300, 10) if options.quick else (3000, 40)
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as cold:
        base = f"redis://127.0.0.1:{server.port}"
        env = {
            "AGENT_THREADS_BROKER_URL": f"{base}/1",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/2",
            "AGENT_THREADS_REDIS_URL": f"{base}/0",
            "AGENT_THREADS_COLD_URL": f"file://{cold}",
            "AGENT_THREADS_IMPORTS": "bench.tasks",
        }
        store = configure(
            broker_url=env["AGENT_THREADS_BROKER_URL"],
            result_backend=env["AGENT_THREADS_RESULT_BACKEND"],
            redis_url=env["AGENT_THREADS_REDIS_URL"],
            cold_url=env["AGENT_THREADS_COLD_URL"],
        )
        for n in range(50):
            store.open(f"bench-{n}", "new")
        worker = WorkerProcess(
            {**os.environ, **env},
            [app.conf.agent_threads["queue"], app.conf.task_default_queue],
            name="bench",
            concurrency=options.concurrency,
        )
        worker.start()
        try:
            worker.wait_ready(app)
            figures = run_benchmarks(store, count, repeats, options.concurrency)
        finally:
            worker.stop()
            app.close()
    if options.json:
        Path(options.json).write_text(json.dumps(figures, indent=2) + "\n")


def run_benchmarks(store: Any, count: int, repeats: int, concurrency: int) -> dict[str, float]:
    noop = app.signature("bench.noop")
    append = app.signature("threads.append")

    def send_noop(i: int) -> Any:
        return noop.clone(kwargs={"i": i}).apply_async()

    def send_append(i: int) -> Any:
        message = {"id": f"m{i}", "body": BODY}
        return append.clone(
            kwargs={"thread_id": f"bench-{i % 50}", "messages": [message]}
        ).apply_async()

    throughput(send_noop, 100)  # warm-up
    throughput(send_append, 100)
    store.hot.redis.delete(*(store.hot.keys(f"bench-{n}").msgs for n in range(50)))
    for n in range(50):
        store.hot.redis.delete(store.hot.keys(f"bench-{n}").ids)
    rates = {"noop": [], "append": []}
    for _ in range(3):  # interleaved rounds, so load changes hit both alike
        rates["noop"].append(throughput(send_noop, count))
        rates["append"].append(throughput(send_append, count))
    noop_rate = statistics.median(rates["noop"])
    append_rate = statistics.median(rates["append"])

    agent = app.signature("demo.scripted_agent")
    message = {"id": "u1", "body": BODY}

    def prepared(evict: str, n: int) -> list[str]:
        """New, empty threads: hot for evict="idle" (as a turn leaves a thread there),
        archived and evicted for evict="turn" (its turn restores it first)."""
        tids = [f"{evict}-{i}" for i in range(n)]
        for tid in tids:
            store.open(tid, "new")
            if evict == "turn":
                store.flush(tid, evict=True)
        return tids

    def one_turn(tids: list[str], evict: str) -> Any:
        def send(i: int) -> Any:
            tid = tids[i]
            return agent_turn(tid, [message], agent, turn_id=tid, evict=evict).apply_async()

        return send

    def four_noops(i: int) -> Any:
        return chain(*(noop.clone(kwargs={"i": i, "step": k}) for k in range(4))).apply_async()

    warm = 3
    hot_tids, evicting_tids = prepared("idle", repeats + warm), prepared("turn", repeats + warm)
    kinds = {
        "idle": one_turn(hot_tids, "idle"),
        "turn": one_turn(evicting_tids, "turn"),
        "noops": four_noops,
    }
    samples = interleaved_latency_ms(kinds, repeats, warm)
    turn_ms, evicting_ms, noops_ms = (statistics.median(samples[k]) for k in kinds)
    hot_bytes = thread_bytes(store, hot_tids[-1])
    evicted_bytes = thread_bytes(store, evicting_tids[-1])
    store.open("bytes-100", "new")
    store.append("bytes-100", [{"id": f"m{i}", "body": BODY} for i in range(100)])
    hundred_bytes = thread_bytes(store, "bytes-100")

    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, one celery worker "
        f"(threads pool, concurrency {concurrency}), Redis broker + results on loopback"
    )
    print(
        f"{count} tasks per round, median of 3 interleaved rounds; latency: median of {repeats}\n"
    )
    rows = [
        ("threads.append tasks/s (1 msg, ~1 KB)", f"{append_rate:,.0f}", f"{noop_rate:,.0f}",
         f"{append_rate / noop_rate:.2f}x"),
        ("agent_turn latency (3 steps, hot) ms", f"{turn_ms:.1f}", f"{noops_ms:.1f}",
         f"{turn_ms / noops_ms:.2f}x"),
        ('agent_turn evict="turn" latency ms', f"{evicting_ms:.1f}", f"{noops_ms:.1f}",
         f"{evicting_ms / noops_ms:.2f}x"),
    ]  # fmt: skip
    print(f"{'measure':<44}{'ours':>10}{'baseline':>10}{'ratio':>8}")
    for name, ours, baseline, ratio in rows:
        print(f"{name:<44}{ours:>10}{baseline:>10}{ratio:>8}")
    print(
        "\nbaselines: bench.noop tasks on the same worker; a chain of four bench.noop tasks."
        "\nagent_turn: the demo agent (two tool calls, two model calls) on a thread, one ~1 KB"
        '\nuser message; evict="idle": the thread is hot, evict="turn": it is restored from the'
        "\ncold tier first and evicted at the end. Turns and noop chains interleaved, median."
        f"\nRedis bytes the thread holds after the turn (8 messages): {hot_bytes:,} hot"
        f' (evict="idle"), {evicted_bytes:,} evicted (evict="turn": turn records and markers);'
        f"\na hot thread of 100 such ~1 KB messages: {hundred_bytes:,}"
    )
    return {
        "append_tasks_per_s": append_rate,
        "noop_tasks_per_s": noop_rate,
        "agent_turn_ms": turn_ms,
        "agent_turn_evict_turn_ms": evicting_ms,
        "four_noops_ms": noops_ms,
    }


if __name__ == "__main__":
    main()
