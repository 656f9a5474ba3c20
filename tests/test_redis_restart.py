"""The hot tier's redis-server stopped and restarted while appends are in flight.

The hot tier is a dedicated redis-server with ``--appendonly yes --appendfsync
always`` and its own data directory. Redis appends every write to the AOF before
it sends the reply (``always`` also fsyncs it then), so every write a client saw
acknowledged survives the server process ending, whether by SIGTERM (clean
shutdown) or SIGKILL (no shutdown at all). (A process kill leaves the kernel's
page cache intact, so it cannot tell ``always`` from ``everysec``; only a machine
crash could. Running this test without AOF fails at once: the threads are gone.)
The server is restarted on the same port with the same directory while a real
``celery worker`` keeps taking appends; the worker's calls fail with
``HotStoreUnavailable`` meanwhile and the tasks are retried (short client
timeouts and a fast retry policy, see ``FAST_FAILURE``) until it is back.

The broker and result backend live on a *separate* redis-server that is never
restarted. This is on purpose: the guarantee under test is the hot tier's (an
acknowledged append survives a restart and a retried one is not doubled). A
broker on the restarted server would instead test kombu: without persistence
it loses queued and unacknowledged task messages (``ThreadClient`` would re-send
them, hiding what happened), and even with AOF every worker reconnect cancels
and redelivers tasks. Keeping it up means every task message survives, each
retry is a real retry of the hot-tier call, and the count of retries is exact.

Checked after the restarts: every acknowledged append is in its thread exactly
once and in its producer's order (also read directly from the restarted server),
and the scripts (evicted from Redis by the restart) were loaded again.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage import HotStore
from storage.embedded import EmbeddedRedis, free_port
from tests.conftest import msg
from tests.test_network_faults import WorkerStack

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

AOF_ARGS = ["--appendonly", "yes", "--appendfsync", "always"]
PRODUCERS = 3
RESTARTS = 3  # per test
APPENDS_BETWEEN = 15  # acknowledged appends before each stop
DOWN_S = 0.7  # how long the server stays down
MIN_STEPS = 10  # appends per producer after the last restart, at least
BUDGET_S = 60.0


class HotServer:
    """A persistent redis-server that can be stopped with a signal and started again
    on the same port with the same data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.server: EmbeddedRedis | None = None
        self.stops: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.server = EmbeddedRedis(port=self.port, data_dir=self.data_dir, extra_args=AOF_ARGS)
        return self.server.start()

    def stop(self, sig: signal.Signals) -> None:
        server, self.server = self.server, None
        if server is None or server.process is None:
            return
        server.process.send_signal(sig)
        server.process.wait(timeout=20)
        server.stop()
        self.stops.append(sig.name)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class Restarts:
    def __init__(self, hot: HotServer, broker: EmbeddedRedis, stack: WorkerStack) -> None:
        self.hot = hot
        self.broker = broker
        self.stack = stack


@pytest.fixture(scope="module")
def restarts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restarts]:
    root = tmp_path_factory.mktemp("redis-restart")
    hot = HotServer(root / "aof")
    try:
        with EmbeddedRedis() as broker:
            hot.start()
            stack = WorkerStack(
                name="restart",
                broker=broker,
                hot_url=hot.url,
                cold_url=f"file://{root / 'cold'}",
                s3_endpoint_url=None,
                log_path=root / "worker.log",
            )
            try:
                yield Restarts(hot, broker, stack.start())
            finally:
                stack.close()
    finally:
        hot.close()


@pytest.mark.parametrize(
    "stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"]
)
def test_acknowledged_appends_survive_hot_redis_restarts_exactly_once(
    restarts: Restarts,
    stop_signal: signal.Signals,
    record_property: Callable[[str, object], None],
) -> None:
    stack, hot = restarts.stack, restarts.hot
    probe = HotStore(hot.server.client()) if hot.server else None
    assert probe is not None
    assert probe.redis.config_get("appendonly") == {"appendonly": "yes"}
    assert probe.redis.config_get("appendfsync") == {"appendfsync": "always"}
    probe.redis.close()

    tag = stop_signal.name.lower()
    tids = [f"{tag}-{p}" for p in range(PRODUCERS)]
    acked: dict[str, list[str]] = {tid: [] for tid in tids}
    lock = threading.Lock()
    acked_total = [0]
    in_flight = [0]
    in_flight_at_stop: list[int] = []
    restarts_done = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []
    retries_before = stack.retries_by_task.get("append", 0)
    started = time.monotonic()

    def produce(p: int) -> None:
        tid = tids[p]
        try:
            stack.call("create", thread_id=tid, owner=f"producer-{tid}")
            step = after_restarts = 0
            while not stop.is_set() and time.monotonic() - started < BUDGET_S:
                if restarts_done.is_set():
                    if after_restarts >= MIN_STEPS:
                        return
                    after_restarts += 1
                batch = [msg(f"{tid}-m{step:04d}-{j}") for j in range(1 + step % 3)]
                with lock:
                    in_flight[0] += 1
                try:
                    result = stack.call("append", thread_id=tid, messages=batch)
                finally:
                    with lock:
                        in_flight[0] -= 1
                assert result["appended_ids"] + result["skipped_ids"] == [m["id"] for m in batch]
                with lock:  # acknowledged: the worker's append returned
                    acked[tid] += [m["id"] for m in batch]
                    acked_total[0] += 1
                if step % 10 == 9:
                    loaded = stack.call("load", thread_id=tid)["messages"]
                    assert [m["id"] for m in loaded] == acked[tid]
                step += 1
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    def restart() -> None:
        try:
            for _ in range(RESTARTS):
                mark = acked_total[0] + APPENDS_BETWEEN
                while acked_total[0] < mark:  # appends are flowing: stop it under them
                    if stop.wait(0.02) or time.monotonic() - started > BUDGET_S:
                        return
                with lock:
                    in_flight_at_stop.append(in_flight[0])
                hot.stop(stop_signal)
                if stop.wait(DOWN_S):
                    return
                hot.start()
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            restarts_done.set()

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(PRODUCERS)]
    threads.append(threading.Thread(target=restart, name="restarter"))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(1.0, started + BUDGET_S + 30 - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        if hot.server is None:
            hot.start()  # leave the module's server up for the next test
    assert not errors, f"{errors!r}\nworker log:\n{stack.log_tail()}"
    assert not stuck, f"{stuck} did not finish"

    assert hot.server is not None
    direct = HotStore(hot.server.client())
    try:
        for tid in tids:
            stored = [m["id"] for m in direct.load(tid)]
            assert len(stored) == len(set(stored)), f"{tid}: a message is doubled"
            assert stored == acked[tid], f"{tid}: an acknowledged append is missing or out of order"
            assert [m["id"] for m in stack.call("load", thread_id=tid)["messages"]] == stored
    finally:
        direct.redis.close()
    append_retries = stack.retries_by_task.get("append", 0) - retries_before
    figures = {
        "test": f"redis restart ({stop_signal.name})",
        "restarts": len(in_flight_at_stop),
        "appends_in_flight_at_each_stop": in_flight_at_stop,
        "acknowledged_append_tasks": acked_total[0],
        "messages": sum(map(len, acked.values())),
        "append_task_retries": append_retries,
        "lost": 0,
        "duplicated": 0,
        "resent_after_lost_delivery": stack.client.resends,
        "seconds": round(time.monotonic() - started, 1),
    }
    record_property("figures", figures)
    print("FAULT FIGURES", json.dumps(figures))
    assert len(in_flight_at_stop) == RESTARTS
    assert append_retries > 0, "no append was retried: the restarts hit nothing"
