"""Agent tasks used by the Celery tests (imported by the embedded worker and by
`celery worker` subprocesses through AGENT_THREADS_IMPORTS=tests.agent_tasks)."""

from __future__ import annotations

import time
from typing import Any

import redis

from storage.errors import HotStoreUnavailable
from storage.records import JSON
from tasks.app import app, settings
from tasks.base import ThreadTask


@app.task(name="test.echo_agent", base=ThreadTask, bind=True)
def echo_agent(self: ThreadTask, thread_id: str, turn_id: str, think_ms: int = 0) -> JSON:
    """Reply once per turn (id derived from the turn id), after ``think_ms``.

    Each call is also counted in the hot Redis (``test:runs:<turn_id>``) so tests
    can see that a redelivered turn really ran again."""
    client = redis.Redis.from_url(settings()["redis_url"])
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

    client = redis.Redis.from_url(settings()["redis_url"])
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
