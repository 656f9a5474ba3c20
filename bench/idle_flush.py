"""Idle flush benchmark: idle threads evicted per second by one worker.

    python -m bench.idle_flush [--quick] [--concurrency 8] [--cold s3|file]

Starts its own redis-server (hot tier, broker and results in databases 0/1/2), a
cold tier (moto's S3 server over HTTP, or files) and one real `celery worker`
process (threads pool), and stops them at the end. N small idle threads (three
~1 KB messages each) are evicted twice, each time from the same starting state:

* baseline: the old serial loop, in-process: ``Threads.flush`` one thread after
  the other (what ``flush_idle`` did before it fanned out);
* ours: one ``threads.flush_idle`` beat task, which claims the candidates and fans
  them out as ``threads.evict_idle`` tasks to the worker; timed from sending the
  beat task until the last thread is evicted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tasks.app import app, configure
from tasks.local.processes import WorkerProcess

BODY = {"role": "user", "content": "Which trains leave Zurich for Milan after 07:00? " * 20}


def make_idle(store: Threads, prefix: str, count: int) -> list[str]:
    """``count`` small threads whose index entry and last write are long ago."""
    ids = [f"{prefix}-{n}" for n in range(count)]
    for tid in ids:
        store.open(tid, "new")
        store.append(tid, [{"id": f"m{k}", "body": BODY} for k in range(3)])
    pipe = store.hot.redis.pipeline(transaction=False)
    for tid in ids:
        pipe.zadd(store.hot.layout.activity_of(tid), {tid: 1_000})
        pipe.hset(store.hot.layout.thread(tid).meta, "updated", 1_000)
    pipe.execute()
    return ids


def serial_rate(store: Threads, ids: list[str]) -> float:
    started = time.perf_counter()
    for tid in ids:
        assert store.flush(tid).evicted
    return len(ids) / (time.perf_counter() - started)


def worker_rate(store: Threads, ids: list[str]) -> float:
    started = time.perf_counter()
    sent = app.signature("threads.flush_idle", kwargs={"idle_seconds": 60, "limit": len(ids)})
    report = sent.apply_async().get(timeout=120)
    assert report["candidates"] == len(ids), report
    deadline = time.monotonic() + 600
    while store.hot.activity_count() > 0:
        assert time.monotonic() < deadline, "the worker never evicted every idle thread"
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    assert not any(store.hot.exists(tid) for tid in ids)
    return len(ids) / elapsed


@contextlib.contextmanager
def cold_url(kind: str, folder: str) -> Iterator[tuple[str, dict[str, str]]]:
    if kind == "file":
        yield f"file://{folder}", {}
        return
    from tests.servers import MotoServer, s3_client_for

    server = MotoServer()
    server.start()
    try:
        s3_client_for(server.url).create_bucket(Bucket="idle-bench")
        yield "s3://idle-bench/threads", {"AGENT_THREADS_S3_ENDPOINT_URL": server.url}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer threads (a smoke run)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--cold", choices=("s3", "file"), default=None, help="default s3 (quick: file)"
    )
    options = parser.parse_args()
    options.cold = options.cold or ("file" if options.quick else "s3")
    count = 60 if options.quick else 2000
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    with (
        EmbeddedRedis() as server,
        tempfile.TemporaryDirectory() as folder,
        cold_url(options.cold, folder) as (url, cold_env),
    ):
        base = f"redis://127.0.0.1:{server.port}"
        env = {
            "AGENT_THREADS_BROKER_URL": f"{base}/1",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/2",
            "AGENT_THREADS_REDIS_URL": f"{base}/0",
            "AGENT_THREADS_COLD_URL": url,
            **cold_env,
        }
        store = configure(
            broker_url=env["AGENT_THREADS_BROKER_URL"],
            result_backend=env["AGENT_THREADS_RESULT_BACKEND"],
            redis_url=env["AGENT_THREADS_REDIS_URL"],
            cold_url=url,
            s3_endpoint_url=cold_env.get("AGENT_THREADS_S3_ENDPOINT_URL"),
        )
        worker = WorkerProcess(
            {**os.environ, **env},
            [app.conf.agent_threads["queue"], app.conf.task_default_queue],
            name="idle-bench",
            concurrency=options.concurrency,
        )
        worker.start()
        try:
            worker.wait_ready(app)
            worker_rate(store, make_idle(store, "warm", 20))  # warm-up: connections, imports
            baseline = serial_rate(store, make_idle(store, "serial", count))
            ours = worker_rate(store, make_idle(store, "fanout", count))
        finally:
            worker.stop()
            app.close()
            gc.collect()  # result objects unsubscribe while Redis is still up
    report(count, options, ours, baseline)


def report(count: int, options: Any, ours: float, baseline: float) -> None:
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, cold tier "
        f"{'moto S3 over HTTP' if options.cold == 's3' else 'files'}; one celery worker "
        f"(threads pool, concurrency {options.concurrency}); {count} idle threads of 3 "
        "messages (~1 KB each) per run\n"
    )
    print(f"{'measure':<52}{'ours':>10}{'baseline':>10}{'ratio':>8}")
    name = "idle threads evicted per second"
    print(f"{name:<52}{ours:>10,.0f}{baseline:>10,.0f}{ours / baseline:>7.2f}x")
    print(
        "\nours: one threads.flush_idle beat task fanning out threads.evict_idle tasks to "
        "the worker;\nbaseline: the old serial loop (Threads.flush one after the other, "
        "in-process, same servers)"
    )


if __name__ == "__main__":
    main()
