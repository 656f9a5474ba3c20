"""``AsyncThreadClient``: agent turns and thread reads for asyncio code (web handlers).

Nothing here blocks the event loop: turn records and thread reads go to the hot tier
through ``redis.asyncio`` (one HGET per status poll; a thread read is one LRANGE of
its records), waiting sleeps with ``asyncio.sleep``, and the only blocking calls, the
publishes of Celery messages (kombu has no asyncio transport), run in a worker thread
(``asyncio.to_thread``). A thread that is not hot is read through the ``threads.load``
task, which hydrates it from the cold tier on a worker::

    client = AsyncThreadClient(app)

    @api.post("/chat/{thread_id}")
    async def chat(thread_id: str, text: str) -> dict:
        turn_id = str(uuid.uuid4())
        await client.turn(thread_id, [user(turn_id, text)], agent, turn_id=turn_id)
        status = await client.wait_turn(thread_id, turn_id)
        return {"state": status.state, "messages": await client.load(thread_id)}
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from celery import Celery, Signature

from storage.errors import TurnFailed
from storage.keys import KeyLayout, validate_message_id, validate_thread_id
from storage.turns import TurnStatus
from tasks.client import ThreadClient
from tasks.settings import default_app, settings_of


class AsyncThreadClient:
    """The asyncio counterpart of ``ThreadClient`` for one Celery app."""

    def __init__(
        self,
        app: Celery | None = None,
        *,
        timeout: float = 600.0,
        redis_client: aioredis.Redis | None = None,
    ) -> None:
        self.app = app or default_app()
        self.timeout = timeout
        conf = settings_of(self.app)
        self.layout = KeyLayout(conf["namespace"])
        self.redis = redis_client or aioredis.Redis.from_url(
            conf["redis_url"],
            socket_timeout=float(conf["redis_socket_timeout"]),
            socket_connect_timeout=float(conf["redis_connect_timeout"]),
        )
        self._sync = ThreadClient(self.app, timeout=timeout)

    async def aclose(self) -> None:
        await self.redis.aclose()

    async def turn(
        self,
        thread_id: str,
        new_messages: Iterable[Mapping[str, Any]],
        run: Signature[Any],
        **options: Any,
    ) -> str:
        """Record and start one agent turn (``ThreadClient.turn``'s options); returns
        its turn id at once. The record is written and the first step published in a
        worker thread."""
        messages = [dict(m) for m in new_messages]
        await asyncio.to_thread(self._sync.turn, thread_id, messages, run, **options)
        return str(options["turn_id"])

    async def turn_status(self, thread_id: str, turn_id: str) -> TurnStatus | None:
        """The turn's record (state, step, usage, error); None if unknown."""
        validate_thread_id(thread_id)
        validate_message_id(turn_id, what="turn id")
        raw = await self.redis.hget(self.layout.thread(thread_id).runs, turn_id)
        if raw is None:
            return None
        return TurnStatus.from_record(thread_id, turn_id, json.loads(raw))

    async def wait_turn(
        self, thread_id: str, turn_id: str, timeout: float | None = None
    ) -> TurnStatus:
        """Await the end of the turn (finished or failed); ``TimeoutError`` after
        ``timeout`` seconds (the turn itself goes on)."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = 0.02
        while True:
            status = await self.turn_status(thread_id, turn_id)
            if status is not None and status.ended:
                return status
            if time.monotonic() >= deadline:
                state = status.state if status is not None else "unknown"
                raise TimeoutError(
                    f"turn {turn_id!r} of thread {thread_id!r} has not ended ({state}) "
                    f"after {limit} s"
                )
            await asyncio.sleep(pause)
            pause = min(0.25, pause * 1.5)

    async def run_turn(
        self,
        thread_id: str,
        new_messages: Iterable[Mapping[str, Any]],
        run: Signature[Any],
        **options: Any,
    ) -> Any:
        """``turn``, then ``wait_turn``: the turn's result, or ``TurnFailed``."""
        turn_id = await self.turn(thread_id, new_messages, run, **options)
        status = await self.wait_turn(thread_id, turn_id)
        if status.state == "failed":
            error = status.error or {"type": "unknown", "message": "no error was recorded"}
            raise TurnFailed(thread_id, turn_id, str(error["type"]), str(error["message"]))
        return status.result

    async def call(self, name: str, timeout: float | None = None, **kwargs: Any) -> Any:
        """Send ``threads.<name>`` and await its result without blocking the loop."""
        result = await asyncio.to_thread(self._sync.send, name, **kwargs)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        pause = 0.01
        while not result.ready():  # a GET on the result backend per poll
            if time.monotonic() >= deadline:
                raise TimeoutError(f"threads.{name} gave no result within {limit} s")
            await asyncio.sleep(pause)
            pause = min(0.2, pause * 1.5)
        return await asyncio.to_thread(result.get, propagate=True)

    async def append(
        self, thread_id: str, messages: Iterable[Mapping[str, Any]], owner: str | None = None
    ) -> Any:
        """``threads.append`` (dedup by message id, as every append)."""
        batch = [dict(m) for m in messages]
        return await self.call("append", thread_id=thread_id, messages=batch, owner=owner)

    async def load(self, thread_id: str, start: int = 0, stop: int = -1) -> list[Any]:
        """The thread's records ``[start, stop]``: from the hot tier directly when the
        thread is hot (one LRANGE over redis.asyncio), else through ``threads.load``,
        which hydrates it from the cold tier on a worker."""
        keys = self.layout.thread(validate_thread_id(thread_id))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.exists(keys.meta)
            pipe.lrange(keys.msgs, start, stop)
            hot, raw = await pipe.execute()
        if hot:
            return [json.loads(record) for record in raw]
        loaded = await self.call("load", thread_id=thread_id, start=start, stop=stop)
        messages: list[Any] = loaded["messages"]
        return messages
