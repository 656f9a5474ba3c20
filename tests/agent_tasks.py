"""Agent tasks used by the Celery tests (imported by the embedded worker and by
`celery worker` subprocesses through AGENT_THREADS_IMPORTS=tests.agent_tasks)."""

from __future__ import annotations

import time
from typing import Any

from storage.errors import HotStoreUnavailable
from storage.records import JSON
from tasks.app import app, hot_redis_from_settings, settings
from tasks.base import ThreadTask


@app.task(name="test.echo_agent", base=ThreadTask, bind=True)
def echo_agent(self: ThreadTask, thread_id: str, turn_id: str, think_ms: int = 0) -> JSON:
    """Reply once per turn (id derived from the turn id), after ``think_ms``.

    Each call is also counted in the hot Redis (``test:runs:<turn_id>``) so tests
    can see that a redelivered turn really ran again."""
    client = hot_redis_from_settings(settings())  # the hot tier (a cluster too)
    client.incr(f"test:runs:{turn_id}")
    client.close()
    time.sleep(think_ms / 1000)
    reply_id = f"{turn_id}:reply"
    history = self.threads.load(thread_id)
    users = sum(
        1 for m in history if isinstance(m["body"], dict) and m["body"].get("role") == "user"
    )
    body: dict[str, Any] = {"role": "assistant", "content": f"reply to {users} user messages"}
    result = self.threads.append(thread_id, [{"id": reply_id, "body": body}], owner=turn_id)
    return {"reply_id": reply_id, "appended": list(result.appended_ids)}


@app.task(name="test.failing_agent", base=ThreadTask, bind=True)
def failing_agent(self: ThreadTask, thread_id: str, turn_id: str) -> JSON:
    raise ValueError(f"model exploded in turn {turn_id}")


@app.task(name="test.flaky_agent", base=ThreadTask, bind=True)
def flaky_agent(self: ThreadTask, thread_id: str, turn_id: str, failures: int = 2) -> JSON:
    """Fails with a transient error ``failures`` times, then replies."""
    if self.request.retries < failures:
        raise HotStoreUnavailable(f"simulated outage, attempt {self.request.retries + 1}")
    reply = {"id": f"{turn_id}:reply", "body": {"role": "assistant", "content": "finally"}}
    self.threads.append(thread_id, [reply], owner=turn_id)
    return {"attempts": self.request.retries + 1}


@app.task(name="test.noop")
def noop() -> None:
    """The baseline task for throughput comparisons."""


@app.task(name="test.scripted_turn", base=ThreadTask, bind=True)
def scripted_turn(self: ThreadTask, thread_id: str, turn_id: str, think_ms: int = 0) -> JSON:
    """A model turn through the shared Adapter.run_turn with the scripted model.
    Counts task runs (``test:runs:<turn>``) and model calls (``test:calls:<turn>``)."""
    from adapters.scripted import ScriptedAdapter, ScriptedModel

    client = hot_redis_from_settings(settings())  # the hot tier (a cluster too)
    client.incr(f"test:runs:{turn_id}")

    def model(request: dict[str, Any]) -> dict[str, Any]:
        client.incr(f"test:calls:{turn_id}")
        time.sleep(think_ms / 1000)
        return ScriptedModel(["reply to {user}"])(request)

    try:
        body = ScriptedAdapter(self.threads).run_turn(thread_id, turn_id, model)
    finally:
        client.close()
    return {"body": body}


@app.task(name="test.tool_turn", base=ThreadTask, bind=True)
def tool_turn(
    self: ThreadTask, thread_id: str, turn_id: str, tool_calls: int = 1, think_ms: int = 0
) -> JSON:
    """A model turn with ``tool_calls`` tool round trips before the final reply, like
    an agent loop: the scripted model asks for a tool (record ``<turn>:call<k>``), the
    tool's result is appended (``<turn>:result<k>``), and after the last result the
    reply comes through the shared ``Adapter.run_turn`` (``<turn>:assistant``).

    Every step is decided from the stored history, so a run killed between a tool
    call and its result resumes by running that tool instead of calling the model
    again, and a re-run never appends a step twice (each id is derived from the turn
    id and written under the turn's lease). Counts task runs (``test:runs:<turn>``)
    and model calls (``test:calls:<turn>``) like ``test.scripted_turn``."""
    from adapters.base import DanglingToolCall, reply_id
    from adapters.scripted import ScriptedAdapter, ScriptedModel

    adapter = ScriptedAdapter(self.threads, integrity="error")
    ask_tool = ScriptedModel([{"tool_call": {"name": "lookup", "args": {"turn": turn_id}}}])
    answer = ScriptedModel(["reply to {user}"])
    client = hot_redis_from_settings(settings())  # the hot tier (a cluster too)
    client.incr(f"test:runs:{turn_id}")

    def model(script: ScriptedModel) -> Any:
        def call(request: dict[str, Any]) -> dict[str, Any]:
            client.incr(f"test:calls:{turn_id}")
            time.sleep(think_ms / 1000)
            return script(request)

        return call

    def dangling(records: list[Any]) -> tuple[dict[str, int], list[str]]:
        """Unanswered tool calls: ours (call id -> index), and anyone else's."""
        ours, foreign = {}, []
        for call_id, index in adapter.dangling_tool_calls(records).items():
            if str(records[index]["id"]).startswith(f"{turn_id}:call"):
                ours[call_id] = index
            else:
                foreign.append(call_id)
        return ours, foreign

    try:
        # Each pass stores one step or finds it stored; a pass can also lose a race
        # with a concurrent run of this same turn (a redelivered or re-sent copy).
        for _ in range(4 * tool_calls + 6):
            records = self.threads.load(thread_id)
            ids = {r["id"] for r in records}
            if reply_id(turn_id) in ids:
                break
            ours, _foreign = dangling(records)
            if ours:  # run the tool of our unanswered call
                call_id, index = next(iter(ours.items()))
                step = str(records[index]["id"]).rsplit(":call", 1)[1]
                result = adapter.tool_result_body(call_id, f"looked up {call_id} for {turn_id}")
                record = {"id": f"{turn_id}:result{step}", "body": result}
                self.threads.append(thread_id, [record], owner=turn_id)
                continue
            step = sum(1 for i in ids if i.startswith(f"{turn_id}:call"))
            try:  # prepare raises on an unanswered call...
                if step < tool_calls:
                    body = model(ask_tool)(adapter.prepare(thread_id))
                    record = {"id": f"{turn_id}:call{step}", "body": body}
                    self.threads.append(thread_id, [record], owner=turn_id)
                    continue
                adapter.run_turn(thread_id, turn_id, model(answer))
                break
            except DanglingToolCall:
                # ...which is fine if a concurrent copy of this turn just made it
                if dangling(self.threads.load(thread_id))[1]:
                    raise
        else:
            raise RuntimeError(f"turn {turn_id!r} of thread {thread_id!r} did not finish")
    finally:
        client.close()
    return {"reply_id": reply_id(turn_id), "tool_calls": tool_calls}
