"""The threads.* tasks and agent_turn through a real embedded Celery worker.

Broker, result backend and hot tier are the session's real redis-server; the cold
tier is moto's S3 server over HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from storage import (
    InvalidMessage,
    LeaseLost,
    ThreadExists,
    ThreadNotFound,
    TurnFailed,
    VersionConflict,
)
from storage.cold import S3ColdStore
from storage.tiered import Threads
from tasks.app import threads as worker_threads
from tasks.client import ThreadClient
from tasks.turns import InvalidTurnOption, agent_turn, plan_turn, turn_canvas
from tests.conftest import backdate, msg

TIMEOUT = 60


@pytest.fixture
def app(celery_stack: Celery, redis_client: redis.Redis) -> Iterator[Celery]:
    """The configured app, with an empty hot tier (db 0 flushed) and an empty bucket."""
    cold = worker_threads().cold
    assert isinstance(cold, S3ColdStore)
    listed = cold.client.list_objects_v2(Bucket=cold.bucket).get("Contents", [])
    for item in listed:
        cold.client.delete_object(Bucket=cold.bucket, Key=item["Key"])
    return celery_stack


@pytest.fixture
def client(app: Celery) -> ThreadClient:
    return ThreadClient(app)


@pytest.fixture
def store(app: Celery) -> Threads:
    """The same storage the worker uses, for checking results."""
    return worker_threads()


def run(app: Celery, name: str, **kwargs: Any) -> Any:
    return app.signature(name, kwargs=kwargs).apply_async().get(timeout=TIMEOUT)


def fails_with(result: AsyncResult[Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        result.get(timeout=TIMEOUT)
    assert result.retries == 0, "a permanent error must not be retried"


# -- every task ------------------------------------------------------------------------


def test_create_is_idempotent_for_its_owner_and_refuses_others(
    app: Celery, client: ThreadClient
) -> None:
    assert client.create("t1", state={"a": 1}, owner="req-1").get(timeout=TIMEOUT)["status"] == (
        "created"
    )
    assert client.create("t1", owner="req-1").get(timeout=TIMEOUT)["status"] == "existing"
    fails_with(client.create("t1", owner="req-2"), ThreadExists, "already exists")


def test_append_load_and_redelivery(client: ThreadClient, store: Threads) -> None:
    client.create("t1").get(timeout=TIMEOUT)
    first = client.append("t1", [msg("m1"), msg("m2")]).get(timeout=TIMEOUT)
    assert first["appended_ids"] == ["m1", "m2"]
    again = client.append("t1", [msg("m2"), msg("m3")]).get(timeout=TIMEOUT)
    assert (again["appended_ids"], again["skipped_ids"]) == (["m3"], ["m2"])
    loaded = client.load("t1").get(timeout=TIMEOUT)
    assert [m["id"] for m in loaded["messages"]] == ["m1", "m2", "m3"]
    assert store.load("t1") == loaded["messages"]


def test_permanent_errors_fail_at_once_with_the_typed_error(
    app: Celery, client: ThreadClient
) -> None:
    fails_with(client.append("nope", [msg("m1")]), ThreadNotFound, "'nope' not found")
    client.create("t1").get(timeout=TIMEOUT)
    bad = app.signature("threads.append", kwargs={"thread_id": "t1", "messages": [{"id": ""}]})
    fails_with(bad.apply_async(), InvalidMessage, "message")
    fails_with(client.send("load", thread_id="a\nb"), Exception, "invalid thread id")


def test_state_fork_truncate_replace_delete_tasks(app: Celery, store: Threads) -> None:
    run(app, "threads.create", thread_id="t1")
    run(app, "threads.append", thread_id="t1", messages=[msg("m1"), msg("m2"), msg("m3")])
    assert run(app, "threads.save_state", thread_id="t1", state={"plan": [1]})["version"] > 0
    assert run(app, "threads.load_state", thread_id="t1")["state"] == {"plan": [1]}
    forked = run(app, "threads.fork", source_id="t1", thread_id="f1", up_to_id="m2")
    assert forked["status"] == "forked"
    assert run(app, "threads.fork", source_id="t1", thread_id="f1", up_to_id="m2")["status"] == (
        "existing"
    )
    assert run(app, "threads.truncate", thread_id="t1", message_id="m2")["removed_ids"] == [
        "m2",
        "m3",
    ]
    assert run(app, "threads.replace", thread_id="f1", messages=[msg("s")])["changed"] is True
    assert [m["id"] for m in store.load("t1")] == ["m1"]
    assert [m["id"] for m in store.load("f1")] == ["s"]
    assert run(app, "threads.delete", thread_id="f1")["deleted"] is True
    assert run(app, "threads.delete", thread_id="f1")["deleted"] is False


def test_truncate_checks_its_owner_and_replace_its_expected_version(
    app: Celery, store: Threads
) -> None:
    run(app, "threads.create", thread_id="t1")
    run(app, "threads.append", thread_id="t1", messages=[msg("m1"), msg("m2")])
    version = store.hot.version("t1")
    stale = app.signature(
        "threads.replace",
        kwargs={"thread_id": "t1", "messages": [msg("s")], "expected_version": version - 1},
    )
    fails_with(stale.apply_async(), VersionConflict, "not the expected")
    replaced = run(
        app,
        "threads.replace",
        thread_id="t1",
        messages=[msg("s"), msg("m2")],
        expected_version=version,
    )
    assert replaced["changed"] is True
    store.acquire_lease("t1", "turn-2", 60_000)
    other = app.signature(
        "threads.truncate", kwargs={"thread_id": "t1", "message_id": "m2", "owner": "turn-1"}
    )
    fails_with(other.apply_async(), LeaseLost, "turn-2")
    owned = run(app, "threads.truncate", thread_id="t1", message_id="m2", owner="turn-2")
    assert owned["removed_ids"] == ["m2"]
    assert [m["id"] for m in store.load("t1")] == ["s"]


def test_flush_hydrate_and_flush_idle_tasks(app: Celery, store: Threads) -> None:
    run(app, "threads.create", thread_id="t1")
    run(app, "threads.append", thread_id="t1", messages=[msg("m1")])
    flushed = run(app, "threads.flush", thread_id="t1")
    assert (flushed["status"], flushed["evicted"]) == ("archived", True)
    assert run(app, "threads.hydrate", thread_id="t1")["status"] == "restored"
    assert run(app, "threads.hydrate", thread_id="t1")["status"] == "hot"
    backdate(store.hot, "t1", 1)
    report = run(app, "threads.flush_idle", idle_seconds=60)
    assert report == {"locked": False, "candidates": 1, "batches": 1}
    wait_until(lambda: not store.hot.exists("t1"), "the fanned-out evict_idle never ran")


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_flush_idle_task_fans_out_evictions_to_the_workers_in_batches(
    app: Celery, store: Threads
) -> None:
    tids = [f"idle-{i}" for i in range(25)]
    for tid in tids:
        store.open(tid, "new")
        store.append(tid, [msg("m1")])
        backdate(store.hot, tid, 1)
    store.open("busy", "new")
    with store.idle_flush_lock() as held:  # another beat is dispatching: this run waits
        assert held
        assert run(app, "threads.flush_idle", idle_seconds=60)["locked"] is True
    app.conf.agent_threads = {**app.conf.agent_threads, "idle_flush_batch": 10}
    try:
        report = run(app, "threads.flush_idle", idle_seconds=60)
    finally:
        app.conf.agent_threads = {**app.conf.agent_threads, "idle_flush_batch": 100}
    assert report == {"locked": False, "candidates": 25, "batches": 3}
    # claimed while in flight: the next beat does not pick them again
    assert run(app, "threads.flush_idle", idle_seconds=60)["candidates"] == 0
    wait_until(lambda: not any(store.hot.exists(t) for t in tids), "evictions never finished")
    assert all(store.cold.head(t) is not None for t in tids)
    assert store.hot.exists("busy")
    assert {t for t, _ in store.hot.active_threads()} == {"busy"}


def test_reconcile_activity_task_reindexes_a_thread_missing_from_the_index(
    app: Celery, store: Threads
) -> None:
    store.hot.create("lost")  # written, but its index entry never made it
    report = run(app, "threads.reconcile_activity")
    assert (report["reindexed"], report["wrapped"]) == (1, True)
    assert [t for t, _ in store.hot.active_threads()] == ["lost"]


def test_lease_tasks_and_transient_lease_wait_is_retried(app: Celery, store: Threads) -> None:
    run(app, "threads.create", thread_id="t1")
    lease = run(app, "threads.acquire_lease", thread_id="t1", owner="turn-1", ttl_ms=1500)
    assert lease["owner"] == "turn-1"
    waiting = app.signature(
        "threads.acquire_lease", kwargs={"thread_id": "t1", "owner": "turn-2", "ttl_ms": 60_000}
    ).apply_async()
    got = waiting.get(timeout=TIMEOUT)  # LeaseHeld is transient: retried until turn-1's expires
    assert got["owner"] == "turn-2"
    assert waiting.retries >= 1
    assert run(app, "threads.release_lease", thread_id="t1", owner="turn-1")["released"] is False
    assert run(app, "threads.release_lease", thread_id="t1", owner="turn-2")["released"] is True


def test_transient_errors_are_retried_then_succeed(app: Celery, store: Threads) -> None:
    run(app, "threads.create", thread_id="t1")
    run(app, "threads.acquire_lease", thread_id="t1", owner="turn-1")
    result = app.signature(
        "test.flaky_agent", kwargs={"thread_id": "t1", "turn_id": "turn-1", "failures": 2}
    ).apply_async()
    assert result.get(timeout=TIMEOUT) == {"attempts": 3}
    assert result.retries == 2
    assert [m["id"] for m in store.load("t1")] == ["turn-1:reply"]


# -- agent_turn --------------------------------------------------------------------------


def ids(store: Threads, thread_id: str) -> list[str]:
    return [m["id"] for m in store.load(thread_id)]


def test_agent_turns_new_continue_and_fork_end_to_end(app: Celery, store: Threads) -> None:
    agent = app.signature("test.echo_agent")
    first = agent_turn("t1", [msg("u1")], agent, turn_id="turn-1", mode="new", app=app)
    flushed = first.apply_async().get(timeout=TIMEOUT)
    assert (flushed["status"], flushed["evicted"]) == ("archived", False)
    assert store.hot.exists("t1")  # archived, and hot for the next turn
    second = agent_turn("t1", [msg("u2")], agent, turn_id="turn-2", app=app)
    second.apply_async().get(timeout=TIMEOUT)
    assert ids(store, "t1") == ["u1", "turn-1:reply", "u2", "turn-2:reply"]
    fork = agent_turn(
        "t1-b",
        [msg("u2-alt")],
        agent,
        turn_id="turn-3",
        mode="fork",
        source="t1",
        up_to_id="turn-1:reply",
    )
    fork.apply_async().get(timeout=TIMEOUT)
    assert ids(store, "t1-b") == ["u1", "turn-1:reply", "u2-alt", "turn-3:reply"]
    assert store.hot.info("t1-b").parent == "t1"
    assert store.hot.info("t1-b").lease_owner is None


def test_a_failed_run_still_flushes_releases_and_reports_the_original_error(
    app: Celery, store: Threads, redis_client: redis.Redis
) -> None:
    agent_turn(
        "t1", [msg("u1")], app.signature("test.echo_agent"), turn_id="turn-1", mode="new"
    ).apply_async().get(timeout=TIMEOUT)
    failing = app.signature("test.failing_agent")
    turn = agent_turn("t1", [msg("u2")], failing, turn_id="turn-2", evict="turn")
    result = turn.apply_async()
    with pytest.raises(ValueError, match="model exploded in turn turn-2"):
        result.get(timeout=TIMEOUT)
    deadline = time.monotonic() + TIMEOUT  # the error callback runs after the failure
    while store.hot.exists("t1") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.hot.exists("t1"), "the error path did not flush and evict the thread"
    assert ids(store, "t1") == ["u1", "turn-1:reply", "u2"]  # the user message was saved
    assert store.hot.info("t1").lease_owner is None  # and the lease released
    store.acquire_lease("t1", "turn-3", 1000)  # so the next turn can run at once


def test_turn_input_is_validated_before_anything_is_sent(app: Celery) -> None:
    agent = app.signature("test.echo_agent")
    with pytest.raises(InvalidMessage):
        agent_turn("t1", [{"id": "u 1", "body": {}}], agent, turn_id="turn-1")
    with pytest.raises(InvalidMessage, match="turn id"):
        agent_turn("t1", [msg("u1")], agent, turn_id="")
    with pytest.raises(ValueError, match="source"):
        agent_turn("t1", [msg("u1")], agent, turn_id="turn-1", mode="fork")


def test_two_concurrent_turns_on_one_thread_are_serialised_by_the_lease(
    app: Celery, store: Threads, redis_client: redis.Redis
) -> None:
    store.open("t1", "new")
    agent = app.signature("test.echo_agent", kwargs={"think_ms": 600})
    results = [
        agent_turn("t1", [msg(f"u-{n}")], agent, turn_id=f"turn-{n}", app=app).apply_async()
        for n in ("a", "b")
    ]
    for result in results:
        result.get(timeout=TIMEOUT)
    stored = ids(store, "t1")
    assert sorted(stored) == ["turn-a:reply", "turn-b:reply", "u-a", "u-b"]
    # each turn's user message is followed by its own reply: no interleaving
    for n in ("a", "b"):
        assert stored[stored.index(f"u-{n}") + 1] == f"turn-{n}:reply"
    assert store.hot.info("t1").lease_owner is None


def test_turns_on_three_threads_in_parallel_do_not_interfere(app: Celery, store: Threads) -> None:
    agent = app.signature("test.echo_agent", kwargs={"think_ms": 100})
    results = []
    for tid in ("x", "y", "z"):
        results.append(
            agent_turn(tid, [msg(f"{tid}-u1")], agent, turn_id=f"{tid}-1", mode="new").apply_async()
        )
    for result in results:
        result.get(timeout=TIMEOUT)
    follow_ups = [
        agent_turn(tid, [msg(f"{tid}-u2")], agent, turn_id=f"{tid}-2").apply_async()
        for tid in ("x", "y", "z")
    ]
    for result in follow_ups:
        result.get(timeout=TIMEOUT)
    for tid in ("x", "y", "z"):
        assert ids(store, tid) == [f"{tid}-u1", f"{tid}-1:reply", f"{tid}-u2", f"{tid}-2:reply"]


def test_client_turn_and_concurrent_appends_from_many_producers(
    app: Celery, client: ThreadClient, store: Threads
) -> None:
    client.create("t1").get(timeout=TIMEOUT)
    errors: list[BaseException] = []

    def producer(p: int) -> None:
        try:
            for i in range(15):
                client.append("t1", [msg(f"p{p}-{i:02d}")]).get(timeout=TIMEOUT)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=producer, args=(p,)) for p in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=TIMEOUT)
    assert not errors
    stored = ids(store, "t1")
    assert len(stored) == 45
    for p in range(3):
        own = [i for i in stored if i.startswith(f"p{p}-")]
        assert own == sorted(own)
    turn = client.turn("t1", [msg("u1")], app.signature("test.echo_agent"), turn_id="turn-1")
    assert turn.get(timeout=TIMEOUT)["evicted"] is False  # kept hot (evict="idle")


# -- the turn record --------------------------------------------------------------------


def test_a_turn_sent_without_the_client_records_itself(app: Celery, store: Threads) -> None:
    agent = app.signature("test.tool_turn", kwargs={"tool_calls": 1})
    agent_turn("r1", [msg("u1")], agent, turn_id="rt-1", mode="new", app=app).apply_async().get(
        timeout=TIMEOUT
    )
    status = store.turns.status("r1", "rt-1")
    assert status is not None
    assert status.state == "finished"
    assert status.steps == ["open", "run:test.tool_turn", "flush"]
    assert status.done == 2
    assert status.attempt == 3
    assert set(status.timings) == set(status.steps)
    assert status.tools == {"rt-1-c0": {"runs": 1, "done": True}}
    assert status.result["status"] == "archived"


def test_turn_status_shows_a_running_turn_and_its_usage(
    app: Celery, client: ThreadClient, store: Threads
) -> None:
    agent = app.signature("test.scripted_turn", kwargs={"think_ms": 800})
    client.turn("r2", [msg("u1")], agent, turn_id="rt-2", mode="new")
    deadline = time.monotonic() + TIMEOUT
    status = client.turn_status("r2", "rt-2")
    while (status is None or status.step != 1) and time.monotonic() < deadline:
        time.sleep(0.02)
        status = client.turn_status("r2", "rt-2")
    assert status is not None
    assert (status.state, status.step, status.done) == ("running", 1, 0)
    assert status.worker is not None
    assert status.deadline_ms is not None
    done = client.wait_turn("r2", "rt-2", timeout=TIMEOUT)
    assert done.state == "finished"
    assert done.usage[0]["model"] == "scripted"
    assert done.input_tokens > 0
    assert done.output_tokens > 0
    assert client.turn_status("r2", "no-such-turn") is None


def test_a_duplicate_delivery_of_a_running_step_does_nothing(
    app: Celery, client: ThreadClient, store: Threads, redis_client: redis.Redis
) -> None:
    """The agent step is sent a second time (a redelivery, a re-send) while it runs:
    the copy finds the claim alive and is dropped; the model is called once."""
    agent = app.signature("test.scripted_turn", kwargs={"think_ms": 1000})
    client.turn("r3", [msg("u1")], agent, turn_id="rt-3", mode="new")
    deadline = time.monotonic() + TIMEOUT
    while int(redis_client.get("test:runs:rt-3") or 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    spec = store.turns.spec("r3", "rt-3")
    assert spec is not None
    copy = turn_canvas(spec, 1, app).apply_async()
    final = client.wait_turn("r3", "rt-3", timeout=TIMEOUT)
    assert final.state == "finished"
    assert copy.state in ("PENDING", "IGNORED")  # dropped: no result, no chain
    assert int(redis_client.get("test:calls:rt-3") or 0) == 1
    assert ids(store, "r3") == ["u1", "rt-3:0:assistant"]


def test_a_failed_turn_raises_turn_failed_with_the_typed_error(
    app: Celery, client: ThreadClient, store: Threads
) -> None:
    client.run_turn(
        "r4", [msg("u1")], app.signature("test.echo_agent"), turn_id="rt-4a", mode="new"
    )
    with pytest.raises(TurnFailed, match="ValueError: model exploded in turn rt-4b") as failed:
        client.run_turn("r4", [msg("u2")], app.signature("test.failing_agent"), turn_id="rt-4b")
    assert failed.value.error_type == "ValueError"
    status = client.turn_status("r4", "rt-4b")
    assert status is not None
    assert (status.state, status.done) == ("failed", 0)  # the run step failed
    info = store.hot.info("r4")  # the cleanup archived it and kept it hot (evict="idle")
    assert (info.cold_version, info.lease_owner) == (info.version, None)
    assert archived_ids(store, "r4") == ["u1", "rt-4a:reply", "u2"]


def archived_ids(store: Threads, thread_id: str) -> list[str]:
    found = store.cold.read(thread_id)
    assert found is not None, f"thread {thread_id!r} has no archive"
    return list(found[0].ids)


def test_a_plain_task_as_the_agent_is_refused(app: Celery) -> None:
    with pytest.raises(ValueError, match="ThreadTask"):
        agent_turn("t1", [msg("u1")], app.signature("test.noop"), turn_id="rt-5")


# -- where a thread lives after its turn (evict) -------------------------------------------


def test_a_default_turn_keeps_the_thread_hot_with_its_archive_current(
    app: Celery, client: ThreadClient, store: Threads
) -> None:
    agent = app.signature("test.echo_agent")
    client.run_turn("h1", [msg("u1")], agent, turn_id="ht-1", mode="new")
    assert store.hot.exists("h1")
    info = store.hot.info("h1")
    assert info.cold_version == info.version  # the archive holds the turn
    assert info.lease_owner is None
    assert archived_ids(store, "h1") == ["u1", "ht-1:reply"]
    client.run_turn("h1", [msg("u2")], agent, turn_id="ht-2")  # no restore: it is hot
    info = store.hot.info("h1")
    assert (info.cold_version, info.lease_owner) == (info.version, None)
    assert archived_ids(store, "h1") == ["u1", "ht-1:reply", "u2", "ht-2:reply"]


def test_an_evict_turn_turn_evicts_the_thread_and_the_next_turn_restores_it(
    app: Celery, client: ThreadClient, store: Threads
) -> None:
    agent = app.signature("test.echo_agent")
    result = client.run_turn("e1", [msg("u1")], agent, turn_id="et-1", mode="new", evict="turn")
    assert (result["status"], result["evicted"]) == ("archived", True)
    assert not store.hot.exists("e1")
    assert archived_ids(store, "e1") == ["u1", "et-1:reply"]
    client.run_turn("e1", [msg("u2")], agent, turn_id="et-2", evict="turn")
    assert not store.hot.exists("e1")
    assert archived_ids(store, "e1") == ["u1", "et-1:reply", "u2", "et-2:reply"]


def test_the_idle_flush_evicts_a_thread_a_default_turn_kept_hot(
    app: Celery, client: ThreadClient, store: Threads
) -> None:
    client.run_turn("i1", [msg("u1")], app.signature("test.echo_agent"), turn_id="it-1", mode="new")
    assert store.hot.exists("i1")
    backdate(store.hot, "i1", int(time.time() * 1000) - 3_600_000)
    run(app, "threads.flush_idle", idle_seconds=60)
    wait_until(lambda: not store.hot.exists("i1"), "the idle flush did not evict the thread")
    assert archived_ids(store, "i1") == ["u1", "it-1:reply"]


def test_an_unknown_evict_is_refused_before_anything_is_recorded_or_sent(
    app: Celery, client: ThreadClient, store: Threads
) -> None:
    agent = app.signature("test.echo_agent")
    with pytest.raises(InvalidTurnOption, match="unknown evict 'never'"):
        agent_turn("v1", [msg("u1")], agent, turn_id="vt-1", evict="never")  # type: ignore[arg-type]
    with pytest.raises(InvalidTurnOption, match=r"'idle'.*'turn'"):
        client.turn("v1", [msg("u1")], agent, turn_id="vt-1", mode="new", evict=True)  # type: ignore[arg-type]
    assert client.turn_status("v1", "vt-1") is None
    assert not store.hot.exists("v1")


def test_an_opening_that_fails_fails_the_turn_at_once_and_holds_nothing(
    app: Celery, client: ThreadClient, store: Threads
) -> None:
    """mode="new" on another caller's thread: the folded opening fails with the typed
    error, the turn fails without a cleanup step, no lease is held, nothing appended."""
    store.open("o1", "new")
    with pytest.raises(TurnFailed, match="ThreadExists"):
        client.run_turn(
            "o1", [msg("u1")], app.signature("test.echo_agent"), turn_id="ot-1", mode="new"
        )
    status = client.turn_status("o1", "ot-1")
    assert status is not None
    assert (status.state, status.done, status.step) == ("failed", -1, 0)
    assert store.hot.info("o1").lease_owner is None
    assert ids(store, "o1") == []


def done_step(store: Threads, thread_id: str, turn_id: str) -> int | None:
    status = store.turns.status(thread_id, turn_id)
    return None if status is None else status.done


def five_step_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` as the code before the folded opening planned it (no ``evict``; five
    steps, each queue resolved)."""
    opening = {"new": "create", "continue": "hydrate", "fork": "fork"}[spec["mode"]]
    names = [f"threads.{opening}", "threads.acquire_lease", "threads.append", "threads.flush"]
    queue = spec["queues"]["threads.flush"]
    old = {k: v for k, v in spec.items() if k != "evict"}
    agent = spec["run"]["task"]
    old["queues"] = {**dict.fromkeys(names, queue), agent: spec["queues"][agent]}
    old["steps"] = [opening, "acquire_lease", "append", spec["steps"][1], "flush"]
    return old


def test_a_turn_recorded_with_five_steps_still_resumes_from_any_step(
    app: Celery, store: Threads
) -> None:
    """A record written by the code before the folded opening: its steps run with the
    tasks they name; re-woken at its agent step (the reconciler's rebuild), it
    finishes and evicts as that code did."""
    agent = app.signature("test.echo_agent")
    spec = five_step_spec(
        plan_turn("old-1", [msg("u1")], agent, turn_id="ot-5", mode="new", app=app)
    )
    store.turns.submit("old-1", "ot-5", steps=spec["steps"], spec=spec, lease_ms=20_000)
    canvas = turn_canvas(spec, 0, app)
    for n, opening in enumerate(canvas.tasks[:3]):  # three steps; then the worker "dies"
        opening.clone(options={"chain": []}).apply_async()  # (a step stores no result)
        wait_until(lambda n=n: done_step(store, "old-1", "ot-5") == n, f"step {n} never ran")
    status = store.turns.status("old-1", "ot-5")
    assert status is not None
    assert (status.state, status.done) == ("running", 2)
    assert store.hot.info("old-1").lease_owner == "ot-5"
    result = turn_canvas(spec, 3, app).apply_async().get(timeout=TIMEOUT)
    assert (result["status"], result["evicted"]) == ("archived", True)
    status = store.turns.status("old-1", "ot-5")
    assert status is not None
    assert (status.state, status.done, status.steps[1]) == ("finished", 4, "acquire_lease")
    assert archived_ids(store, "old-1") == ["u1", "ot-5:reply"]


def test_a_continue_turn_on_a_thread_in_no_tier_fails_and_creates_nothing(
    app: Celery, client: ThreadClient, store: Threads
) -> None:
    with pytest.raises(TurnFailed, match=r"ThreadNotFound.*mode='new' first"):
        client.run_turn("n1", [msg("u1")], app.signature("test.echo_agent"), turn_id="nt-1")
    status = client.turn_status("n1", "nt-1")
    assert status is not None
    assert (status.state, status.done) == ("failed", -1)
    assert not store.hot.exists("n1")
    assert store.cold.head("n1") is None
