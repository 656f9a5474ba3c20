"""Turn records on a real redis-server: the claim rules, the heartbeat, the
reconciler's wake-ups and the tool helper's at-most-once rule (storage/turns.py,
adapters/base.py). The worker-level tests are in test_durable_turns.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from adapters.base import ToolCall, reply_id, tool_result_id
from adapters.scripted import ScriptedAdapter
from storage.tiered import Threads
from storage.turns import TURN_RECORDS_KEPT, StepRun, StepSuperseded, TurnStore, step_context
from tests.conftest import msg

STEPS = ["create", "acquire_lease", "append", "run:agent", "flush"]
LEASE = 300


def submit(turns: TurnStore, turn_id: str = "turn-1", thread_id: str = "t1") -> None:
    turns.submit(thread_id, turn_id, steps=STEPS, spec={"turn_id": turn_id}, lease_ms=LEASE)


def begin(turns: TurnStore, step: int | str, token: str, turn_id: str = "turn-1") -> str:
    claim = turns.begin("t1", turn_id, step, token=token, worker="w", task_id="x", lease_ms=LEASE)
    return claim.outcome


def end(turns: TurnStore, token: str, outcome: str = "done", **kwargs: Any) -> str | None:
    options: dict[str, Any] = {"step_ms": 1, "last": False, "lease_ms": LEASE, "wait_ms": LEASE}
    options.update(kwargs)
    return turns.end("t1", "turn-1", token=token, outcome=outcome, **options)


@pytest.fixture
def turns(threads: Threads) -> TurnStore:
    threads.open("t1", "new", owner="turn-1")
    return threads.turns


def test_a_step_runs_in_order_and_once_while_its_claim_lives(turns: TurnStore) -> None:
    submit(turns)
    assert begin(turns, 1, "a") == "early"  # step 0 has not finished
    assert begin(turns, 0, "a") == "ok"
    assert begin(turns, 0, "b") == "busy"  # a duplicate delivery while "a" runs
    assert end(turns, "b") is None  # not b's claim: nothing changes
    assert end(turns, "a") == "running"
    assert begin(turns, 0, "c") == "done"  # a late redelivery of a finished step
    assert begin(turns, 1, "c") == "ok"
    status = turns.status("t1", "turn-1")
    assert status is not None
    assert (status.done, status.step, status.attempt) == (0, 1, 2)


def test_a_dead_claim_is_taken_over_and_the_old_execution_is_superseded(
    turns: TurnStore,
) -> None:
    submit(turns)
    assert begin(turns, 0, "a") == "ok"
    time.sleep(LEASE / 1000 + 0.05)  # "a" stopped beating
    assert begin(turns, 0, "b") == "ok"
    assert turns.heartbeat("t1", "turn-1", token="a", lease_ms=LEASE) is False
    assert turns.tool_begin("t1", "turn-1", "call-1", token="a") is None
    assert end(turns, "a") is None
    assert end(turns, "b") == "running"
    status = turns.status("t1", "turn-1")
    assert status is not None
    assert status.takeovers == 1


def test_a_heartbeat_keeps_a_long_step_and_its_lease(turns: TurnStore, threads: Threads) -> None:
    submit(turns)
    assert begin(turns, 0, "a") == "ok"
    end(turns, "a")
    assert begin(turns, 1, "a") == "ok"
    for _ in range(5):  # 3 x the lease, renewed every lease / 3
        time.sleep(LEASE / 3000)
        assert turns.heartbeat("t1", "turn-1", token="a", lease_ms=LEASE)
    assert begin(turns, 1, "b") == "busy"
    assert threads.hot.info("t1").lease_owner == "turn-1"
    assert turns.reconcile().woken == []


def test_the_reconciler_wakes_a_due_turn_once_and_backs_off(turns: TurnStore) -> None:
    submit(turns)
    assert begin(turns, 0, "a") == "ok"
    end(turns, "a")
    time.sleep(LEASE / 1000 + 0.05)  # the next step never began (a lost message)
    first, second = turns.reconcile(), turns.reconcile()
    assert [(w.turn_id, w.step) for w in first.woken] == [("turn-1", 1)]
    assert second.woken == []
    assert second.due == 0
    status = turns.status("t1", "turn-1")
    assert status is not None
    assert status.deadline_ms is not None
    assert status.deadline_ms - (status.record["woken_ms"]) == LEASE  # then 2x, 4x, ...
    time.sleep(LEASE / 1000 + 0.05)
    assert [w.status.wakes for w in turns.reconcile().woken] == [2]
    status = turns.status("t1", "turn-1")
    assert status is not None
    assert status.deadline_ms is not None
    assert status.deadline_ms - status.record["woken_ms"] == 2 * LEASE


def test_two_reconcilers_at_once_wake_each_turn_once(turns: TurnStore) -> None:
    for n in range(20):
        submit(turns, f"turn-{n}")
    time.sleep(LEASE / 1000 + 0.05)
    woken: list[str] = []
    runners = [
        threading.Thread(target=lambda: woken.extend(w.turn_id for w in turns.reconcile().woken))
        for _ in range(4)
    ]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    assert sorted(woken) == sorted(f"turn-{n}" for n in range(20))


def test_an_ended_turn_leaves_the_index_and_is_never_woken(turns: TurnStore) -> None:
    submit(turns)
    for step in range(len(STEPS)):
        assert begin(turns, step, "a") == "ok"
        end(turns, "a", last=step == len(STEPS) - 1, payload={"status": "archived"})
    status = turns.status("t1", "turn-1")
    assert status is not None
    assert status.state == "finished"
    assert status.result == {"status": "archived"}
    assert turns.spec("t1", "turn-1") is None  # dropped at the end
    assert turns.pending() == 0
    assert begin(turns, 4, "b") == "ended"
    time.sleep(LEASE / 1000 + 0.05)
    assert turns.reconcile().woken == []


def test_a_failed_step_with_cleanup_fails_the_turn_after_the_cleanup(turns: TurnStore) -> None:
    submit(turns)
    for step in range(3):
        begin(turns, step, "a")
        end(turns, "a")
    begin(turns, 3, "a")
    error = {"type": "ValueError", "message": "model exploded"}
    assert end(turns, "a", outcome="failed", payload=error, cleanup=True) == "failing"
    assert begin(turns, 4, "b") == "done"  # the rest of the chain never runs
    time.sleep(LEASE / 1000 + 0.05)
    assert [w.step for w in turns.reconcile().woken] == ["cleanup"]  # the errback was lost
    assert begin(turns, "cleanup", "c") == "ok"
    assert end(turns, "c") == "failed"
    status = turns.status("t1", "turn-1")
    assert status is not None
    assert status.error == error


def test_records_stay_bounded_per_thread(turns: TurnStore) -> None:
    def finish(turn_id: str) -> None:
        submit(turns, turn_id)
        for step in range(len(STEPS)):
            turns.begin("t1", turn_id, step, token="a", worker="w", task_id="x", lease_ms=LEASE)
            turns.end(
                "t1",
                turn_id,
                token="a",
                outcome="done",
                step_ms=1,
                last=step == len(STEPS) - 1,
                lease_ms=LEASE,
                wait_ms=LEASE,
            )
        turns.hot.release_lease("t1", turn_id)  # what the flush step does

    turns.hot.release_lease("t1", "turn-1")
    for n in range(TURN_RECORDS_KEPT + 3):
        finish(f"turn-{n}")
    kept = [t.turn_id for t in turns.list("t1")]
    assert len(kept) == TURN_RECORDS_KEPT
    assert kept[0] == "turn-3"
    assert kept[-1] == f"turn-{TURN_RECORDS_KEPT + 2}"


def test_records_go_with_the_thread_and_survive_its_eviction(
    turns: TurnStore, threads: Threads
) -> None:
    submit(turns)
    threads.flush("t1", evict=True)
    assert not threads.hot.exists("t1")
    assert turns.status("t1", "turn-1") is not None  # still queryable after the turn
    threads.delete("t1")
    assert turns.status("t1", "turn-1") is None


def test_a_tool_runs_at_most_once_per_call_id(threads: Threads) -> None:
    adapter = ScriptedAdapter(threads)
    threads.open("t1", "new", owner="turn-1")
    threads.acquire_lease("t1", "turn-1", 60_000)
    submit(threads.turns)
    runs: list[str] = []
    tools = {"send": lambda to: runs.append(to) or f"sent to {to}"}
    call = ToolCall("c1", "send", {"to": "ann"})
    first = adapter.run_tool("t1", "turn-1", call, tools)
    again = adapter.run_tool("t1", "turn-1", call, tools)  # a resumed turn
    assert first == again
    assert runs == ["ann"]
    assert threads.get("t1", [tool_result_id("turn-1", "c1")])
    status = threads.turns.status("t1", "turn-1")
    assert status is not None
    assert status.tools == {"c1": {"runs": 1, "done": True}}


def test_an_interrupted_tool_is_rerun_or_answered_with_an_error_by_policy(
    threads: Threads,
) -> None:
    adapter = ScriptedAdapter(threads)
    threads.open("t1", "new", owner="turn-1")
    threads.acquire_lease("t1", "turn-1", 60_000)
    submit(threads.turns)
    for call_id in ("c1", "c2"):  # a worker began both and died before their results
        threads.turns.tool_begin("t1", "turn-1", call_id, token="")
    runs: list[str] = []
    tools = {"pay": lambda amount: runs.append(amount) or "paid"}
    rerun = adapter.run_tool("t1", "turn-1", ToolCall("c1", "pay", {"amount": "5"}), tools)
    refused = adapter.run_tool(
        "t1", "turn-1", ToolCall("c2", "pay", {"amount": "9"}), tools, on_interrupted="error"
    )
    assert runs == ["5"]
    assert rerun["content"] == "paid"
    assert refused["is_error"]
    assert "interrupted" in refused["content"]


def test_a_superseded_execution_runs_no_tool(threads: Threads) -> None:
    adapter = ScriptedAdapter(threads)
    threads.open("t1", "new", owner="turn-1")
    threads.acquire_lease("t1", "turn-1", 60_000)
    submit(threads.turns)
    begin(threads.turns, 0, "old")
    run = StepRun(threads.turns, "t1", "turn-1", 0, "old", LEASE)
    time.sleep(LEASE / 1000 + 0.05)
    begin(threads.turns, 0, "new")  # took the claim over
    ran: list[str] = []
    with step_context(run), pytest.raises(StepSuperseded):
        adapter.run_tool("t1", "turn-1", ToolCall("c1", "x", {}), {"x": lambda: ran.append("x")})
    assert ran == []


def test_a_resumed_loop_repeats_no_stored_step(threads: Threads) -> None:
    adapter = ScriptedAdapter(threads)
    threads.open("t1", "new", owner="turn-1")
    threads.acquire_lease("t1", "turn-1", 60_000)
    threads.append("t1", [msg("u1")])
    calls: list[int] = []
    runs: list[str] = []

    def model(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        made = sum(1 for m in request["messages"] if m.get("role") == "assistant")
        if made < 2:
            call = {"id": f"c{made}", "name": "look", "args": {"n": made}}
            return {"role": "assistant", "content": "", "tool_calls": [call]}
        return {"role": "assistant", "content": "done"}

    class Crash(BaseException):
        pass

    def look(n: int) -> str:
        runs.append(f"c{n}")
        if n == 1 and len(runs) == 2:
            raise Crash  # the worker dies inside the second tool
        return f"found {n}"

    with pytest.raises(Crash):
        adapter.run_agent("t1", "turn-1", model, tool_handlers={"look": look})
    reply = adapter.run_agent("t1", "turn-1", model, tool_handlers={"look": look})
    assert reply.reply_id == reply_id("turn-1", 2)
    assert reply.model_calls == 3
    assert len(calls) == 3  # one per stored reply, none repeated
    assert runs == ["c0", "c1", "c1"]  # only the tool the crash hit ran again
    again = adapter.run_agent("t1", "turn-1", model, tool_handlers={"look": look})
    assert again == reply
    assert len(calls) == 3
    assert len(runs) == 3


def test_get_finds_records_by_id_without_reading_the_list(threads: Threads) -> None:
    threads.open("t1", "new")
    threads.append("t1", [msg("a"), msg("b")])
    assert threads.get("t1", ["b", "zz", "a"]) == {"a": msg("a"), "b": msg("b")}
    threads.flush("t1", evict=True)
    assert threads.get("t1", ["a"]) == {"a": msg("a")}  # hydrated on a miss


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_the_process_heartbeat_renews_each_running_step_and_flags_a_takeover(
    turns: TurnStore, threads: Threads
) -> None:
    """``tasks.steps.Heartbeats``: one thread renews every registered step; a step
    that left stops being renewed; a step whose claim was taken over is superseded."""
    from tasks.steps import Heartbeats

    beats = Heartbeats()
    submit(turns)
    assert begin(turns, 0, "a") == "ok"
    assert end(turns, "a") == "running"
    assert begin(turns, 1, "a") == "ok"
    run = StepRun(turns, "t1", "turn-1", 1, "a", LEASE)
    beat = beats.add(run, LEASE // 4)

    def beaten() -> int:
        status = turns.status("t1", "turn-1")
        return 0 if status is None else int(status.record.get("beats", 0))

    wait_for(lambda: beaten() >= 12, "the step was not renewed for three leases")
    assert begin(turns, 1, "b") == "busy"  # the claim stayed alive all along
    assert threads.hot.info("t1").lease_owner == "turn-1"
    assert run.alive
    beats.remove(beat)
    wait_for(lambda: begin(turns, 1, "b") == "ok", "the claim outlived its step's heartbeat")
    stale = StepRun(turns, "t1", "turn-1", 1, "a", LEASE)
    beats.add(stale, LEASE // 4)  # "a" was taken over by "b"
    wait_for(lambda: not stale.alive, "the superseded execution was not told")
