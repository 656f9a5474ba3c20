"""ThreadClient: enqueue thread work from an application (web handler, script, agent).

Every method sends one task by its public name and returns its ``AsyncResult``;
nothing here imports the task code, so a client needs only the Celery config.

    client = ThreadClient()
    client.append("chat-42", [{"id": "u1", "body": {"role": "user", "content": "hi"}}])
    turn = client.turn("chat-42", [user_msg], my_agent.s(), turn_id="req-123")
    turn.get(timeout=120)   # the flush result, or the original error of the turn

Waiting with re-sends (``call``, ``run_turn``): the Redis broker can lose a task
message if a worker is killed in the instant between popping it (BRPOP) and
recording it as unacknowledged (a Kombu limitation; RabbitMQ has no such gap).
Every agent-threads task and every ``agent_turn`` is idempotent, so the client
simply sends the same work again when no result arrived within ``resend_after``
seconds: at-least-once delivery plus idempotent steps give exactly-once effects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from celery import Celery, Signature
from celery.exceptions import TimeoutError as ResultTimeout
from celery.result import AsyncResult

from tasks.app import app as default_app
from tasks.turns import Mode, agent_turn


class ThreadClient:
    def __init__(
        self, app: Celery | None = None, *, timeout: float = 600.0, resend_after: float = 60.0
    ) -> None:
        self.app = app or default_app
        self.timeout = timeout
        self.resend_after = resend_after
        self.resends = 0
        """How many times ``deliver`` sent work again (a lost or stalled message)."""

    def deliver(self, send: Callable[[], AsyncResult[Any]]) -> Any:
        """Send, wait for the result, and send again if none came within
        ``resend_after`` seconds; give up after ``timeout``. Only for idempotent work."""
        deadline = time.monotonic() + self.timeout
        result = send()
        while True:
            remaining = deadline - time.monotonic()
            try:
                return result.get(timeout=max(0.1, min(self.resend_after, remaining)))
            except ResultTimeout:
                if time.monotonic() >= deadline:
                    raise
                self.resends += 1
                result = send()

    def call(self, name: str, **kwargs: Any) -> Any:
        """``send`` and wait for the result, re-sending a lost message."""
        return self.deliver(lambda: self.send(name, **kwargs))

    def send(self, name: str, **kwargs: Any) -> AsyncResult[Any]:
        """Send ``threads.<name>`` with keyword arguments (JSON only)."""
        return self.app.signature(f"threads.{name}", kwargs=kwargs).apply_async()

    def create(
        self, thread_id: str, state: Mapping[str, Any] | None = None, owner: str | None = None
    ) -> AsyncResult[Any]:
        return self.send("create", thread_id=thread_id, state=state, owner=owner)

    def append(
        self, thread_id: str, messages: Iterable[Mapping[str, Any]], owner: str | None = None
    ) -> AsyncResult[Any]:
        return self.send(
            "append", thread_id=thread_id, messages=[dict(m) for m in messages], owner=owner
        )

    def load(self, thread_id: str, start: int = 0, stop: int = -1) -> AsyncResult[Any]:
        return self.send("load", thread_id=thread_id, start=start, stop=stop)

    def hydrate(self, thread_id: str) -> AsyncResult[Any]:
        return self.send("hydrate", thread_id=thread_id)

    def flush(self, thread_id: str, evict: bool = True) -> AsyncResult[Any]:
        return self.send("flush", thread_id=thread_id, evict=evict)

    def delete(self, thread_id: str) -> AsyncResult[Any]:
        return self.send("delete", thread_id=thread_id)

    def turn(
        self,
        thread_id: str,
        new_messages: Iterable[Mapping[str, Any]],
        run: Signature[Any],
        *,
        turn_id: str,
        mode: Mode = "continue",
        source: str | None = None,
        up_to_id: str | None = None,
    ) -> AsyncResult[Any]:
        """Start one agent turn (see ``tasks.turns.agent_turn``)."""
        canvas = agent_turn(
            thread_id,
            new_messages,
            run,
            turn_id=turn_id,
            mode=mode,
            source=source,
            up_to_id=up_to_id,
            app=self.app,
        )
        result: AsyncResult[Any] = canvas.apply_async()
        return result

    def run_turn(
        self,
        thread_id: str,
        new_messages: Iterable[Mapping[str, Any]],
        run: Signature[Any],
        **options: Any,
    ) -> Any:
        """``turn`` (same keyword options: turn_id, mode, source, up_to_id), then wait,
        re-sending the whole (idempotent) turn if its chain stalled on a lost message."""
        messages = [dict(m) for m in new_messages]
        return self.deliver(lambda: self.turn(thread_id, messages, run, **options))
