"""AsyncThreadClient under a running event loop, against a real worker (celery_stack)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from celery import Celery

from tasks.aio import AsyncThreadClient
from tasks.app import threads as worker_threads
from tests.conftest import msg


class Ticker:
    """Counts how often the loop got to run it while the client was awaited: a blocked
    loop leaves a gap as long as the blocking call."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest_gap = 0.0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now
            self.ticks += 1


@pytest.mark.asyncio
async def test_a_turn_is_awaited_without_blocking_the_loop(celery_stack: Celery) -> None:
    client = AsyncThreadClient(celery_stack, timeout=60)
    ticker = Ticker()
    ticking = asyncio.create_task(ticker.run())
    thread_id = f"aio-{uuid.uuid4().hex[:8]}"
    agent = celery_stack.signature("test.echo_agent", kwargs={"think_ms": 300})
    try:
        result = await client.run_turn(
            thread_id, [msg("u1", "hi")], agent, turn_id="t1", mode="new"
        )
        status = await client.turn_status(thread_id, "t1")
        loaded = await client.load(thread_id)
    finally:
        ticking.cancel()
        await client.aclose()
    assert result["status"] == "archived"
    assert status is not None
    assert status.state == "finished"
    assert [m["id"] for m in loaded] == ["u1", "t1:reply"]
    assert loaded == worker_threads().load(thread_id)
    assert ticker.ticks > 20
    assert ticker.longest_gap < 0.25, ticker.longest_gap  # the 300 ms agent never blocked it


@pytest.mark.asyncio
async def test_append_dedups_and_a_cold_thread_is_loaded_through_a_worker(
    celery_stack: Celery,
) -> None:
    client = AsyncThreadClient(celery_stack, timeout=60)
    thread_id = f"aio-{uuid.uuid4().hex[:8]}"
    worker_threads().open(thread_id, "new")
    try:
        first = await client.append(thread_id, [msg("m1"), msg("m2")])
        again = await client.append(thread_id, [msg("m2"), msg("m3")])
        worker_threads().flush(thread_id, evict=True)
        assert not worker_threads().hot.exists(thread_id)
        loaded = await client.load(thread_id)
        missing = await client.turn_status(thread_id, "no-such-turn")
    finally:
        await client.aclose()
    assert first["appended_ids"] == ["m1", "m2"]
    assert again["skipped_ids"] == ["m2"]
    assert [m["id"] for m in loaded] == ["m1", "m2", "m3"]
    assert missing is None
