"""Chaos soak: thousands of appends and hundreds of agent turns on 50 threads while
three real ``celery worker`` processes are SIGKILLed one at a time, every 0.5-2 s.

Afterwards every message must be stored exactly once, in each sequence producer's
order, every turn must have exactly one reply with its tool calls answered, and
every thread must survive a flush (evicting it) and a hydrate unchanged. The
workload and the exact invariants are described in ``tests/soak.py``.

It runs on both brokers: Redis, and RabbitMQ (quorum queues; half the producing time).
Default: 40 s of producing (the whole test about a minute and a half on 2 cores).
Longer: ``AGENT_THREADS_SOAK_SECONDS=240 AGENT_THREADS_SOAK_SCALE=8``; the cold tier
is S3 (S3ColdStore on a moto server) unless ``AGENT_THREADS_SOAK_COLD=file``. Run with
``-s`` to see the ``SOAK FIGURES`` line.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.scripted import ScriptedAdapter
from storage.errors import ThreadNotFound
from tasks.client import ThreadClient
from tests.rabbitmq import Vhost
from tests.soak import (
    APPEND_RESEND_AFTER,
    APPEND_THREADS,
    REDELIVERED_KEY,
    RESULT_TIMEOUT,
    RETRIES_KEY,
    RUNS_KEY,
    TURN_THREADS,
    Content,
    Pending,
    SoakSettings,
    SoakStack,
    Workload,
    check_append_thread,
    check_turn_thread,
    collect,
    counters,
    figures_line,
    first_difference,
    read_content,
    soak_stack,
    turn_figures,
    wait_until_quiet,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ALL_THREADS = APPEND_THREADS + TURN_THREADS


@pytest.fixture(params=["redis", "rabbitmq"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SoakStack]:
    """The soak on the Redis broker, then on RabbitMQ (a fresh vhost, quorum queues)
    for half the producing time: the second broker doubles the soak's CPU."""
    settings = SoakSettings.from_env()
    broker_url = None
    if request.param == "rabbitmq":
        vhost: Vhost = request.getfixturevalue("rabbitmq_vhost")
        broker_url = vhost.url
        settings = dataclasses.replace(settings, seconds=settings.seconds / 2)
    with soak_stack(settings, tmp_path, broker_url) as started:
        yield started


def through_tasks(
    client: ThreadClient, name: str, thread_ids: list[str], **kwargs: Any
) -> dict[str, Any]:
    """``threads.<name>`` for every thread at once (re-sent when no result came);
    thread id -> result. Raises with the thread id if a task failed."""

    def send(item: Pending) -> Any:
        return client.send(name, thread_id=item.thread_id, **kwargs)

    window = [Pending(tid, [], []) for tid in thread_ids]
    for item in window:
        item.results.append(send(item))
    collect(window, send, client)
    failed = [f"threads.{name} of thread {i.thread_id}: {i.error}" for i in window if i.error]
    assert not failed, "\n".join(failed)
    return {item.thread_id: item.value for item in window}


def flush_all(client: ThreadClient) -> int:
    """Flush and evict every thread through ``threads.flush``; a thread kept hot (it was
    pinned by the hydrate of our read a moment ago) is flushed again. Returns rounds."""
    waiting, give_up = list(ALL_THREADS), time.monotonic() + 60
    for round_ in range(1, 41):
        results = through_tasks(client, "flush", waiting, evict=True)
        waiting = [tid for tid, result in results.items() if not result["evicted"]]
        if not waiting:
            return round_
        if time.monotonic() > give_up:
            break
        time.sleep(0.25)  # a pin lasts about a second
    kept = {tid: results[tid] for tid in waiting}
    raise AssertionError(f"threads still hot after {round_} flushes: {kept}")


def round_trip(stack: SoakStack, client: ThreadClient, before: dict[str, Content]) -> list[str]:
    """After ``flush_all``: every thread is cold only, and hydrating and loading it
    through the tasks gives the records, state and version it had before."""
    assert stack.threads is not None
    problems = [
        f"thread {tid}: flushed and evicted, yet hot"
        for tid in ALL_THREADS
        if stack.threads.hot.exists(tid)
    ]
    hydrated = through_tasks(client, "hydrate", ALL_THREADS)
    loaded = through_tasks(client, "load", ALL_THREADS)
    states = through_tasks(client, "load_state", ALL_THREADS)
    for tid in ALL_THREADS:
        was = before[tid]
        if hydrated[tid]["status"] != "restored":
            problems.append(f"thread {tid}: hydrate after the flush gave {hydrated[tid]}")
        if hydrated[tid]["version"] != was.version:
            problems.append(
                f"thread {tid}: version {was.version} before the flush, "
                f"{hydrated[tid]['version']} after the hydrate"
            )
        after = loaded[tid]["messages"]
        if after != was.records:
            at = first_difference(after, was.records)
            problems.append(
                f"thread {tid}: records changed by flush + hydrate at #{at}: "
                f"{after[at : at + 1]} after, {was.records[at : at + 1]} before "
                f"({len(after)} after, {len(was.records)} before)"
            )
        if states[tid]["state"] != was.state:
            problems.append(
                f"thread {tid}: state {was.state} before the flush, "
                f"{states[tid]['state']} after the hydrate"
            )
    return problems


def test_soak_every_message_once_in_order_and_every_turn_replied_under_worker_kills(
    stack: SoakStack, record_property: Callable[[str, object], None]
) -> None:
    settings, fleet, threads = stack.settings, stack.fleet, stack.threads
    assert fleet is not None
    assert stack.app is not None
    assert threads is not None
    started = time.monotonic()
    workload = Workload(stack, settings)
    fleet.start_killing(settings.seed)
    try:
        workload.run()
    finally:
        fleet.stop_killing()
    produced_s = time.monotonic() - started
    fleet.revive()
    drain_s = wait_until_quiet(stack)
    ledger = workload.ledger
    # producer errors first: with one, a batch or turn is in doubt and the checks
    # below may report it too
    problems: list[str] = [*fleet.errors, *ledger.errors]

    # -- the invariants, on what the soak left behind
    before: dict[str, Content] = {}
    for tid in ALL_THREADS:
        try:
            before[tid] = read_content(threads, tid)
        except ThreadNotFound:
            problems.append(f"thread {tid}: in neither tier after the soak")
            before[tid] = Content([], {}, -1)
    adapter = ScriptedAdapter(threads)
    lost = doubled = 0
    for tid in ALL_THREADS:
        ids = [r["id"] for r in before[tid].records]
        if tid in APPEND_THREADS:
            problems += check_append_thread(ledger, tid, before[tid])
            expected = {i for batch in ledger.batches.get(tid, []) for i in batch}
        else:
            lease = threads.hot.info(tid).lease_owner if threads.hot.exists(tid) else None
            problems += check_turn_thread(ledger, tid, before[tid], lease, adapter)
            expected = {i for plan in ledger.turns.get(tid, []) for i in plan.expected_ids()}
        lost += len(expected - set(ids))
        doubled += len(ids) - len(set(ids))

    # -- flush (evict) every thread and hydrate it again, all through the tasks
    client = ThreadClient(stack.app, timeout=RESULT_TIMEOUT, resend_after=APPEND_RESEND_AFTER)
    flush_rounds = 0
    try:
        flush_rounds = flush_all(client)
        problems += round_trip(stack, client, before)
    except AssertionError as exc:
        problems.append(f"flush and hydrate through the tasks: {exc}")

    # -- figures
    hot = stack.hot_client
    runs, redelivered, retries = (
        counters(hot, RUNS_KEY),
        counters(hot, REDELIVERED_KEY),
        counters(hot, RETRIES_KEY),
    )
    for opening in ("threads.open_turn", "threads.acquire_lease"):  # today's, 5-step specs'
        if retries.get(opening):
            problems.append(
                f"{opening} was retried {retries[opening]} times: a turn waited for a "
                "lease, yet the turns of a thread run one after another (did a late "
                "duplicate of a finished turn take the lease again?)"
            )
    turn_ids = [plan.turn_id for tid in TURN_THREADS for plan in ledger.turns.get(tid, [])]
    turn_runs = [int(hot.get(f"test:runs:{t}") or 0) for t in turn_ids]
    model_calls = [int(hot.get(f"test:calls:{t}") or 0) for t in turn_ids]
    counts: Counter[str] = ledger.counts
    plans = [plan for tid in TURN_THREADS for plan in ledger.turns.get(tid, [])]
    tools, tool_problems = turn_figures(hot, threads, plans, fleet.kill_times)
    problems += tool_problems
    waits = ledger.waits or [(0.0, "nothing")]
    figures = {
        "tasks_sent": counts["append_tasks_sent"] + 5 * counts["turns_sent"],
        "append_tasks_sent": counts["append_tasks_sent"],
        "appended_messages": sum(len(before[t].records) for t in APPEND_THREADS),
        "turns": len(turn_ids),
        "turn_canvases_sent": counts["turns_sent"],
        **tools,
        "duplicates_sent": counts["duplicates_sent"],
        "resends": workload.resends(),
        "kills": fleet.kills,
        "worker_restarts": fleet.restarts,
        "unexpected_worker_exits": fleet.unexpected_exits,
        "worker_start_s_median": round(statistics.median(fleet.startup_s or [0.0]), 1),
        "tasks_executed": sum(runs.values()),
        "redeliveries": sum(redelivered.values()),
        "redelivered_by_task": redelivered,
        "retries_by_task": retries,
        "turn_runs_repeated": sum(turn_runs) - len(turn_ids),
        "model_calls": sum(model_calls),
        "messages_lost": lost,
        "messages_doubled": doubled,
        "flush_rounds": flush_rounds,
        "wait_s_median": round(statistics.median(w for w, _ in waits), 2),
        "wait_s_max": round(max(w for w, _ in waits), 1),
        "waits_over_10s": sum(1 for w, _ in waits if w > 10),
        "produce_s": round(produced_s, 1),
        "drain_s": round(drain_s, 1),
        "duration_s": round(time.monotonic() - started, 1),
        "seconds_setting": settings.seconds,
        "scale": settings.scale,
        "cold": settings.cold,
        "broker": "redis" if stack.broker_url is None else "rabbitmq",
    }
    record_property("soak_figures", figures)
    print("\n" + figures_line(figures))
    print("slowest waits:", "; ".join(f"{w:.1f} s {what}" for w, what in sorted(waits)[-3:]))

    assert not problems, (
        f"{len(problems)} problems, the first ones:\n"
        + "\n".join(problems[:40])
        + f"\n(worker logs in {fleet.log_dir})"
    )
    assert lost == doubled == 0
    assert fleet.kills >= 5, "the workers were hardly killed: the soak proved little"
