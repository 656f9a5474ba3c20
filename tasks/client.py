"""ThreadClient: enqueue thread work from an application (web handler, script, agent).

Every method sends one task by its public name and returns its ``AsyncResult``;
nothing here imports the task code, so a client needs only the Celery config (and,
for turns, the hot tier's Redis, where the turn records live).

    client = ThreadClient()
    client.append("chat-42", [{"id": "u1", "body": {"role": "user", "content": "hi"}}])
    client.turn("chat-42", [user_msg], my_agent.s(), turn_id="req-123")   # fire and forget
    client.turn_status("chat-42", "req-123")          # submitted, running, finished, ...
    client.wait_turn("chat-42", "req-123", timeout=120)

Turns: ``turn`` records the turn (``storage/turns.py``) before it sends the first
step, so a turn is finished even if every message of it is lost or every worker
running it dies: the turn reconciler on the beat re-wakes it. Waiting (``run_turn``,
``wait_turn``) reads the record; it never sends a turn again, so a long turn never
runs twice at once.

Plain tasks (``call``): the Redis broker can lose a task message if a worker is
killed in the instant between popping it (BRPOP) and recording it as unacknowledged
(a Kombu limitation; RabbitMQ has no such gap). Every agent-threads task is
idempotent, so ``call`` simply sends the same task again when no result arrived
within ``resend_after`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from functools import cached_property
from typing import Any

from celery import Celery, Signature
from celery.exceptions import TimeoutError as ResultTimeout
from celery.result import AsyncResult

from storage.errors import TurnFailed
from storage.hot import HotStore
from storage.turns import TurnStatus, TurnStore
from tasks.settings import default_app, settings_of
from tasks.stores import hot_redis_from_settings
from tasks.turns import Evict, Mode, plan_turn, turn_canvas


class ThreadClient:
    def __init__(
        self,
        app: Celery | None = None,
        *,
        timeout: float = 600.0,
        resend_after: float = 60.0,
        hot: HotStore | None = None,
    ) -> None:
        self.app = app or default_app()
        self.timeout = timeout
        self.resend_after = resend_after
        self.resends = 0
        """How many times ``deliver`` sent a plain task again (a lost or stalled message)."""
        if hot is not None:
            self.__dict__["turns"] = TurnStore(hot)

    @cached_property
    def turns(self) -> TurnStore:
        """The turn records, in the hot tier named by the app's ``agent_threads``."""
        conf = settings_of(self.app)
        return TurnStore(HotStore(hot_redis_from_settings(conf), namespace=conf["namespace"]))

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
        state: Mapping[str, Any] | None = None,
        lease_ttl_ms: int | None = None,
        evict: Evict = "idle",
    ) -> AsyncResult[Any]:
        """Record and start one agent turn (see ``tasks.turns``); returns at once.
        ``evict="idle"`` keeps the thread hot after the turn (the idle flusher evicts
        it later); ``"turn"`` evicts it at the end of the turn.

        The returned result is the first run's; the turn record (``turn_status``,
        ``wait_turn``) is the truth, also when the turn was re-woken. Submitting a
        known turn id again records nothing and sends nothing new that could run:
        its steps find their claims taken and do nothing."""
        spec = plan_turn(
            thread_id,
            new_messages,
            run,
            turn_id=turn_id,
            mode=mode,
            source=source,
            up_to_id=up_to_id,
            state=state,
            lease_ttl_ms=lease_ttl_ms,
            evict=evict,
            app=self.app,
        )
        lease_ms = int(settings_of(self.app)["lease_ttl_ms"])
        self.turns.submit(thread_id, turn_id, steps=spec["steps"], spec=spec, lease_ms=lease_ms)
        result: AsyncResult[Any] = turn_canvas(spec, 0, self.app, recorded=True).apply_async()
        return result

    def turn_status(self, thread_id: str, turn_id: str) -> TurnStatus | None:
        """The turn's record: state, step, timings, model usage, error; None if unknown."""
        return self.turns.status(thread_id, turn_id)

    def wait_turn(self, thread_id: str, turn_id: str, timeout: float | None = None) -> TurnStatus:
        """Wait until the turn ended (finished or failed) and return its record.
        ``TimeoutError`` after ``timeout`` seconds (default: the client's ``timeout``);
        the turn itself goes on."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        pause = 0.02
        while True:
            status = self.turns.status(thread_id, turn_id)
            if status is not None and status.ended:
                return status
            if time.monotonic() >= deadline:
                state = status.state if status is not None else "unknown"
                raise TimeoutError(
                    f"turn {turn_id!r} of thread {thread_id!r} has not ended ({state}) "
                    f"after {self.timeout if timeout is None else timeout} s"
                )
            time.sleep(pause)
            pause = min(0.25, pause * 1.5)

    def run_turn(
        self,
        thread_id: str,
        new_messages: Iterable[Mapping[str, Any]],
        run: Signature[Any],
        **options: Any,
    ) -> Any:
        """``turn`` (same keyword options), then ``wait_turn``: the result of the turn's
        last step (the flush), or ``TurnFailed`` with the typed error of the step that
        failed. Never sends the turn again: lost messages and dead workers are the
        reconciler's to recover."""
        turn_id = str(options["turn_id"])
        self.turn(thread_id, new_messages, run, **options)
        status = self.wait_turn(thread_id, turn_id)
        if status.state == "failed":
            error = status.error or {"type": "unknown", "message": "no error was recorded"}
            raise TurnFailed(thread_id, turn_id, str(error["type"]), str(error["message"]))
        return status.result
