"""Agent tasks used by the Celery tests (imported by the embedded worker and by
`celery worker` subprocesses through AGENT_THREADS_IMPORTS=tests.agent_tasks)."""

from __future__ import annotations

import os
import time
from typing import Any

from storage.errors import HotStoreUnavailable
from storage.records import JSON
from tasks.app import app, settings
from tasks.base import ThreadTask
from tasks.stores import hot_redis_from_settings


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


def _lookup(client: Any, tool_ms: int, first_tool_ms: int) -> Any:
    """The test tool: counts its executions per tool call id (``test:tool:<call id>``,
    their start times in ``test:toolstarts:<call id>``);
    takes ``tool_ms``, plus ``first_tool_ms`` on the first execution of a turn's first
    tool call."""

    def lookup(call_id: str, turn: str) -> str:
        runs = client.incr(f"test:tool:{call_id}")
        client.rpush(f"test:toolstarts:{call_id}", time.time())
        first = runs == 1 and call_id.endswith("-c0")
        time.sleep((tool_ms + (first_tool_ms if first else 0)) / 1000)
        return f"looked up {call_id} for {turn}"

    return lookup


@app.task(name="test.tool_turn", base=ThreadTask, bind=True)
def tool_turn(
    self: ThreadTask,
    thread_id: str,
    turn_id: str,
    tool_calls: int = 1,
    think_ms: int = 0,
    tool_ms: int = 0,
    first_think_ms: int = 0,
    first_tool_ms: int = 0,
) -> JSON:
    """An agent loop through ``Adapter.run_agent``: the model asks for ``tool_calls``
    tools, one per reply (``<turn>:<n>:assistant``, call id ``<turn>-c<n>``), each runs
    once (``<turn>:tool:<call id>``), then the final reply. Counts task runs
    (``test:runs:<turn>``), model calls (``test:calls:<turn>``) and each tool call's
    executions (``test:tool:<call id>``); ``think_ms`` is each model call's time,
    ``tool_ms`` each tool's, and the ``first_*`` times are added to the turn's first
    model call and to the first run of its first tool call (a crash test kills there)."""
    from adapters.scripted import ScriptedAdapter

    adapter = ScriptedAdapter(self.threads, integrity="error")
    client = hot_redis_from_settings(settings())  # the hot tier (a cluster too)
    client.incr(f"test:runs:{turn_id}")

    def model(request: dict[str, Any]) -> dict[str, Any]:
        calls = client.incr(f"test:calls:{turn_id}")
        time.sleep((think_ms + (first_think_ms if calls == 1 else 0)) / 1000)
        history = [m for m in request["messages"] if isinstance(m, dict)]
        last_user = max(i for i, m in enumerate(history) if m.get("role") == "user")
        made = sum(1 for m in history[last_user:] if m.get("role") == "assistant")
        if made < tool_calls:
            call = {"id": f"{turn_id}-c{made}", "name": "lookup", "args": {"turn": turn_id}}
            call["args"]["call_id"] = call["id"]
            return {"role": "assistant", "content": "", "tool_calls": [call]}
        return {"role": "assistant", "content": f"reply to {history[last_user]['content']}"}

    try:
        reply = adapter.run_agent(
            thread_id,
            turn_id,
            model,
            tool_handlers={"lookup": _lookup(client, tool_ms, first_tool_ms)},
        )
    finally:
        client.close()
    return {"reply_id": reply.reply_id, "tool_calls": tool_calls}


def _slow_first_flush(prefix: str, seconds: float) -> None:
    """Crash-test instrumentation (``AGENT_THREADS_TEST_SLOW_FLUSH=<prefix>:<seconds>``):
    the first flush of each thread whose id starts with ``prefix`` waits after its
    upload, before its commit, so a test can kill the worker in the middle of it."""
    from storage.tiered import Threads

    upload = Threads._upload

    def slow_upload(self: Threads, snapshot: Any, *args: Any, **kwargs: Any) -> Any:
        done = upload(self, snapshot, *args, **kwargs)
        thread_id = snapshot.thread_id
        if thread_id.startswith(prefix):
            client = hot_redis_from_settings(settings())
            try:
                if client.incr(f"test:flushes:{thread_id}") == 1:
                    time.sleep(seconds)
            finally:
                client.close()
        return done

    Threads._upload = slow_upload  # type: ignore[method-assign]


if os.environ.get("AGENT_THREADS_TEST_SLOW_FLUSH"):
    _prefix, _seconds = os.environ["AGENT_THREADS_TEST_SLOW_FLUSH"].rsplit(":", 1)
    _slow_first_flush(_prefix, float(_seconds))
