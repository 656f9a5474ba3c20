"""Where an agent turn's time goes outside Celery: each storage call of the three
steps, timed in-process against an embedded redis-server and a file cold tier.

    python -m bench.turn_steps [--turns 60]

Per turn (the demo agent, two tool calls): recording the turn (what the first step
does for a turn sent without ThreadClient), each step's claim and report, the
opening's hydrate + lease + append, the agent loop and the end-of-turn flush
(evict="idle"). Prints the median of each, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from adapters.scripted import ScriptedAdapter
from bench.celery_throughput import BODY
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tasks.app import configure
from tasks.local.demo import DEMO_MODEL, DEMO_TOOLS

LEASE_MS = 20_000


def one_turn(store: Threads, thread_id: str, timings: dict[str, list[float]]) -> None:
    def timed(name: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        call(*args, **kwargs)
        timings.setdefault(name, []).append((time.perf_counter() - started) * 1000)

    turns, turn_id, message = store.turns, thread_id, {"id": "u1", "body": BODY}
    store.open(thread_id, "new")
    steps = ["open", "run:demo.scripted_agent", "flush"]
    spec = {"turn_id": turn_id, "messages": [message]}
    timed("record the turn", turns.submit, thread_id, turn_id, steps=steps, spec=spec,
          lease_ms=LEASE_MS)  # fmt: skip
    for step in range(len(steps)):
        token = uuid.uuid4().hex
        timed("claim (per step)", turns.begin, thread_id, turn_id, step, token=token,
              worker="bench", task_id="-", lease_ms=LEASE_MS)  # fmt: skip
        if step == 0:
            timed("open: hydrate", store.hydrate, thread_id)
            timed("open: lease", store.acquire_lease, thread_id, turn_id, LEASE_MS)
            timed("open: append", store.append, thread_id, [message], owner=turn_id)
        elif step == 1:
            timed("agent loop", ScriptedAdapter(store).run_agent, thread_id, turn_id,
                  DEMO_MODEL, tool_handlers=DEMO_TOOLS)  # fmt: skip
        else:
            timed("flush (archive, release)", store.flush, thread_id, evict=False,
                  release_owner=turn_id)  # fmt: skip
        timed("report (per step)", turns.end, thread_id, turn_id, token=token, outcome="done",
              step_ms=1, last=step == len(steps) - 1, lease_ms=LEASE_MS,
              wait_ms=LEASE_MS)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=60)
    options = parser.parse_args()
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as cold:
        base = f"redis://127.0.0.1:{server.port}"
        store = configure(
            broker_url=f"{base}/1",
            result_backend=f"{base}/2",
            redis_url=f"{base}/0",
            cold_url=f"file://{cold}",
        )
        timings: dict[str, list[float]] = {}
        for n in range(10):  # warm-up
            one_turn(store, f"warm-{n}", timings)
        timings.clear()
        for n in range(options.turns):
            one_turn(store, f"turn-{n}", timings)
    print(f"median of {options.turns} turns, ms (embedded Redis, file cold tier)")
    for name, samples in timings.items():
        print(f"{name:<28}{statistics.median(samples):8.2f}")


if __name__ == "__main__":
    main()
