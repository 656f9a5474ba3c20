"""ThreadClient: enqueue thread work from an application (web handler, script, agent).

Every method sends one task by its public name and returns its ``AsyncResult``;
nothing here imports the task code, so a client needs only the Celery config.

    client = ThreadClient()
    client.append("chat-42", [{"id": "u1", "body": {"role": "user", "content": "hi"}}])
    turn = client.turn("chat-42", [user_msg], my_agent.s(), turn_id="req-123")
    turn.get(timeout=120)   # the flush result, or the original error of the turn
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery, Signature
from celery.result import AsyncResult

from tasks.app import app as default_app
from tasks.turns import Mode, agent_turn


class ThreadClient:
    def __init__(self, app: Celery | None = None) -> None:
        self.app = app or default_app

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
        """Run one agent turn (see ``tasks.turns.agent_turn``)."""
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
