"""AgentThreadsSession (adapters/openai_agents.py), the OpenAI Agents SDK Session, and the
asyncio hot tier beneath it (storage/aio.py, pop.lua): on a real redis-server with a real
cold tier (files; S3 via moto and files for the tiering test), and a full ``Runner.run``
over two turns with a scripted model (no network)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from agents import Agent, RunConfig, Runner, function_tool
from agents.items import ModelResponse, TResponseInputItem
from agents.memory import Session, SessionSettings
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from adapters.openai_agents import AgentThreadsSession, InvalidSessionItem
from storage import HotStore, InvalidMessage, InvalidThreadId, LeaseLost, Limits, ThreadNotFound
from storage.aio import AsyncHotStore, AsyncThreads
from storage.cold import ColdStore, FileColdStore
from storage.embedded import free_port
from storage.errors import HotStoreUnavailable
from storage.tiered import Threads
from tests.cluster import RedisClusterServer
from tests.conftest import msg, redis_contents

pytestmark = pytest.mark.asyncio


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


@pytest.fixture
def file_threads(redis_client: redis.Redis, tmp_path: Path) -> Threads:
    # no write pin: a session restored in order to be written can be evicted right after
    return Threads(HotStore(redis_client), FileColdStore(tmp_path / "cold"), write_pin_ms=0)


@pytest.fixture
def aio_hot(file_threads: Threads, aio_redis: aioredis.Redis) -> AsyncHotStore:
    return AsyncHotStore.like(file_threads.hot, aio_redis)


def session_of(threads: Threads, hot: AsyncHotStore, session_id: str, **kw: Any) -> Any:
    return AgentThreadsSession(session_id, threads, hot, **kw)


# -- the Session protocol ------------------------------------------------------------


async def test_items_come_back_in_the_order_they_were_added(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    session = session_of(file_threads, aio_hot, "user-42")
    assert isinstance(session, Session)
    assert await session.get_items() == []  # never written: empty, and nothing created
    assert not file_threads.hot.exists("user-42")
    await session.add_items([user("one"), assistant("msg_1", "two")])
    await session.add_items([])
    await session.add_items([user("three")])
    assert await session.get_items() == [user("one"), assistant("msg_1", "two"), user("three")]
    records = file_threads.hot.load("user-42")
    assert records[1]["id"] == "id:msg_1"
    assert records[0]["id"].startswith("new:")
    assert records[0]["body"] == user("one")


async def test_get_items_limit_returns_the_latest_items_in_chronological_order(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    session = session_of(file_threads, aio_hot, "limits")
    items = [user(f"m{i}") for i in range(5)]
    await session.add_items(items)
    assert await session.get_items(limit=0) == []
    assert await session.get_items(limit=1) == items[-1:]
    assert await session.get_items(limit=3) == items[-3:]
    assert await session.get_items(limit=5) == items
    assert await session.get_items(limit=50) == items
    assert await session.get_items() == items


async def test_session_settings_limit_is_the_default_and_an_explicit_limit_wins(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    session = session_of(file_threads, aio_hot, "settings", session_settings={"limit": 2})
    assert session.session_settings == SessionSettings(limit=2)
    items = [user(f"m{i}") for i in range(4)]
    await session.add_items(items)
    assert await session.get_items() == items[-2:]
    assert await session.get_items(limit=3) == items[-3:]
    default = session_of(file_threads, aio_hot, "settings")
    assert default.session_settings == SessionSettings()
    assert await default.get_items() == items


async def test_pop_on_an_empty_or_unknown_session_returns_none(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    session = session_of(file_threads, aio_hot, "empty")
    assert await session.pop_item() is None  # in no tier
    await session.add_items([user("only")])
    assert await session.pop_item() == user("only")
    version = file_threads.hot.version("empty")
    assert await session.pop_item() is None  # empty: nothing changes
    assert file_threads.hot.version("empty") == version
    assert await session.get_items() == []


async def test_pop_returns_the_latest_item_and_it_can_be_added_again(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    session = session_of(file_threads, aio_hot, "rewind")
    reply = assistant("msg_9", "an answer to retry")
    await session.add_items([user("q"), reply])
    assert await session.pop_item() == reply
    assert await session.get_items() == [user("q")]
    await session.add_items([reply])  # its id was forgotten with the pop
    await session.add_items([reply])  # ... and is known again now
    assert await session.get_items() == [user("q"), reply]


async def test_two_sessions_are_isolated(file_threads: Threads, aio_hot: AsyncHotStore) -> None:
    first = session_of(file_threads, aio_hot, "alice")
    second = session_of(file_threads, aio_hot, "bob")
    shared = assistant("msg_same", "one provider id in two sessions")
    await first.add_items([user("a1"), shared])
    await second.add_items([user("b1"), shared])
    assert await second.pop_item() == shared
    await second.clear_session()
    assert await first.get_items() == [user("a1"), shared]
    assert await second.get_items() == []


async def test_concurrent_add_items_lose_and_double_nothing(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    # 40 tasks race the first write of a new session (each may create it) and each
    # other: every batch lands once, whole, and the item they all send is stored once
    session = session_of(file_threads, aio_hot, "busy")
    shared = assistant("msg_shared", "everyone sends this")

    async def one(n: int) -> None:
        await session.add_items([user(f"u{n}"), assistant(f"msg_{n}", f"a{n}"), shared])

    await asyncio.gather(*(one(n) for n in range(40)))
    items = await session.get_items()
    assert len(items) == 81
    assert items.count(shared) == 1
    for n in range(40):
        at = items.index(user(f"u{n}"))
        assert items[at + 1] == assistant(f"msg_{n}", f"a{n}")  # one batch, one script
    assert len({json.dumps(i, sort_keys=True) for i in items}) == 81


async def test_redelivered_add_items_does_not_double_items_with_provider_ids(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    session = session_of(file_threads, aio_hot, "redelivered")
    long_id = "rs_" + "x" * 300  # over the message id limit: hashed, still stable
    turn = [
        {"id": long_id, "type": "reasoning", "summary": []},
        {
            "id": "fc_1",
            "type": "function_call",
            "call_id": "call_1",
            "name": "lookup",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        # Chat Completions models give every item the SDK's placeholder id
        {
            "id": "__fake_id__",
            "type": "function_call",
            "call_id": "call_2",
            "name": "lookup",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "call_2", "output": "rainy"},
        assistant("msg_1", "done"),
    ]
    await session.add_items(copy.deepcopy(turn))
    await session.add_items(copy.deepcopy(turn))  # a retried save of the same turn
    await session.add_items([user("no id")])
    await session.add_items([user("no id")])  # no identity: a second item
    assert await session.get_items() == [*turn, user("no id"), user("no id")]
    ids = [r["id"] for r in file_threads.hot.load("redelivered")]
    assert ids[1:6] == [
        "id:fc_1",
        "out:function_call_output:call_1",
        "call:function_call:call_2",
        "out:function_call_output:call_2",
        "id:msg_1",
    ]
    assert ids[0].startswith("sha:")
    assert len(ids[0]) == 4 + 64


async def test_clear_then_reuse_at_once_and_the_archive_never_comes_back(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    session = session_of(file_threads, aio_hot, "cleared")
    await session.add_items([user("old"), assistant("msg_old", "old reply")])
    assert file_threads.flush("cleared").evicted
    stale = file_threads.cold.read("cleared")  # a hydrate that read before the clear
    assert stale is not None
    await session.clear_session()
    assert file_threads.cold.head("cleared") is None
    assert file_threads.hot.restore(*stale) == "deleted"  # the tombstone refuses it
    assert await session.get_items() == []
    await session.add_items([user("new"), assistant("msg_old", "same id, new session")])
    assert await session.get_items() == [user("new"), assistant("msg_old", "same id, new session")]
    assert file_threads.flush("cleared").evicted
    assert await session.get_items() == [user("new"), assistant("msg_old", "same id, new session")]
    await session.clear_session()
    await session.clear_session()  # idempotent
    assert await session.get_items() == []


@pytest.mark.parametrize("session_id", ["tiered", "user@example.com/chat {1} \u00e9"])
async def test_evicted_session_is_hydrated_by_get_add_and_pop(
    redis_client: redis.Redis, cold: ColdStore, aio_redis: aioredis.Redis, session_id: str
) -> None:
    threads = Threads(HotStore(redis_client), cold, write_pin_ms=0)
    session = session_of(threads, AsyncHotStore.like(threads.hot, aio_redis), session_id)
    items = [user("q1"), assistant("msg_1", "a1")]
    await session.add_items(items)

    async def evict() -> None:
        assert (await asyncio.to_thread(threads.flush, session_id)).evicted
        assert not threads.hot.exists(session_id)

    await evict()
    assert await session.get_items(limit=1) == items[-1:]
    await evict()
    await session.add_items([assistant("msg_1", "a1"), user("q2")])  # dedup across tiers
    assert await session.get_items() == [*items, user("q2")]
    await evict()
    assert await session.pop_item() == user("q2")
    await evict()
    assert await session.get_items() == items


async def test_bad_input_raises_a_typed_error_and_writes_nothing(
    redis_client: redis.Redis, tmp_path: Path, aio_redis: aioredis.Redis
) -> None:
    threads = Threads(HotStore(redis_client, limits=Limits(max_batch=2)), FileColdStore(tmp_path))
    hot = AsyncHotStore.like(threads.hot, aio_redis)
    existing = session_of(threads, hot, "existing")
    await existing.add_items([user("kept")])
    before = redis_contents(redis_client)
    bad: list[Any] = [
        [user("fine"), "not a dict"],
        "a string, not a list",
        {"role": "user", "content": "a dict, not a list"},
        [user("fine"), {"role": "user", "content": float("nan")}],
        [{"role": "user", "content": "x" * (1024 * 1024 + 1)}],
        [user("1"), user("2"), user("3"), user("4"), {"content": object()}],  # three appends
    ]
    for session_id in ("existing", "new-session"):
        session = session_of(threads, hot, session_id)
        for items in bad:
            with pytest.raises(InvalidSessionItem) as caught:
                await session.add_items(items)
            assert isinstance(caught.value, InvalidMessage)
    assert redis_contents(redis_client) == before
    assert await existing.get_items() == [user("kept")]
    with pytest.raises(InvalidThreadId):
        session_of(threads, hot, "no\ncontrol characters")


async def test_a_cancelled_write_is_finished_before_the_cancellation_is_raised(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    session = session_of(file_threads, aio_hot, "cancelled")
    writes = [(lambda: session.add_items([user("kept")]), [user("kept")]), (session.pop_item, [])]
    for write, expected in writes:
        task = asyncio.create_task(write())
        await asyncio.sleep(0)  # one loop turn: the write is under way, not done
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await session.get_items() == expected


# -- a whole run --------------------------------------------------------------------


class ScriptedModel(Model):
    """Answers each call with the next scripted output and keeps every input it got."""

    def __init__(self, outputs: list[list[Any]]) -> None:
        self.outputs = outputs
        self.inputs: list[list[TResponseInputItem]] = []

    async def get_response(self, system_instructions: Any, input: Any, *a: Any, **kw: Any) -> Any:
        self.inputs.append(copy.deepcopy([user(input)] if isinstance(input, str) else input))
        return ModelResponse(output=self.outputs.pop(0), usage=Usage(), response_id=None)

    def stream_response(self, *a: Any, **kw: Any) -> Any:
        raise NotImplementedError("the test runs without streaming")


def reply(item_id: str, text: str) -> ResponseOutputMessage:
    content = [ResponseOutputText(type="output_text", text=text, annotations=[])]
    return ResponseOutputMessage(
        id=item_id, type="message", role="assistant", status="completed", content=content
    )


@function_tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


async def test_runner_second_turn_sees_the_first_turns_history(
    file_threads: Threads, aio_hot: AsyncHotStore
) -> None:
    call = ResponseFunctionToolCall(
        id="fc_1",
        type="function_call",
        call_id="call_1",
        name="weather",
        arguments='{"city": "Paris"}',
        status="completed",
    )
    model = ScriptedModel(
        [[call], [reply("msg_1", "It is sunny in Paris.")], [reply("msg_2", "Still sunny.")]]
    )
    agent = Agent(name="forecaster", instructions="Answer briefly.", model=model, tools=[weather])
    session = session_of(file_threads, aio_hot, "run-1")
    config = RunConfig(tracing_disabled=True)

    first = await Runner.run(agent, "Weather in Paris?", session=session, run_config=config)
    assert first.final_output == "It is sunny in Paris."
    assert file_threads.flush("run-1").evicted  # the next turn starts from the cold tier
    second = await Runner.run(agent, "And tomorrow?", session=session, run_config=config)
    assert second.final_output == "Still sunny."

    third_input = model.inputs[2]
    texts = [json.dumps(item) for item in third_input]
    assert "Weather in Paris?" in texts[0]
    assert [i.get("type") for i in third_input[1:3]] == ["function_call", "function_call_output"]
    assert third_input[2]["output"] == "sunny in Paris"  # type: ignore[typeddict-item]
    assert "It is sunny in Paris." in texts[3]
    assert "And tomorrow?" in texts[4]
    assert len(third_input) == 5
    stored = await session.get_items()
    assert len(stored) == 6
    ids = [r["id"] for r in file_threads.hot.load("run-1")]
    assert ids[1:4] == ["id:fc_1", "out:function_call_output:call_1", "id:msg_1"]
    assert ids[5] == "id:msg_2"


# -- the asyncio hot tier and pop.lua ------------------------------------------------


async def test_async_and_sync_stores_answer_alike(hot: HotStore, aio_redis: aioredis.Redis) -> None:
    aio = AsyncHotStore.like(hot, aio_redis)
    hot.create("sync")
    assert await aio.create("async") is True
    assert await aio.create("async") is False
    batch = [msg("m1"), msg("m2"), msg("m1")]
    assert (await aio.append("async", batch)) == hot.append("sync", batch)
    assert [await aio.length("async"), await aio.version("async")] == [2, hot.version("sync")]
    assert await aio.load("async") == hot.load("sync")
    assert await aio.tail("async", 1) == hot.tail("sync", 1)
    assert await aio.tail("async", 0) == []
    assert await aio.get("async", ["m2", "zz"]) == hot.get("sync", ["m2", "zz"])
    assert await aio.upsert("async", [msg("m2", "new")], replace=["m2"]) == hot.upsert(
        "sync", [msg("m2", "new")], replace=["m2"]
    )
    assert (await aio.pop("async")) == hot.pop("sync")
    assert await aio.save_state("async", {"k": 1}) == hot.save_state("sync", {"k": 1})
    assert await aio.load_state("async") == {"k": 1}
    lease = await aio.acquire_lease("async", "turn-1", 5000)
    assert lease.owner == "turn-1"
    assert await aio.release_lease("async", "turn-1")
    assert (await aio.truncate_from("async", "m1")).removed_ids == ("m1",)
    assert await aio.exists("async")
    assert await aio.delete("async")
    assert not await aio.exists("async")
    for call in (aio.load("async"), aio.pop("async"), aio.append("async", [msg("x")])):
        with pytest.raises(ThreadNotFound):
            await call


async def test_async_store_validates_before_io_and_types_connection_errors() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    aio = AsyncHotStore(dead)
    try:
        with pytest.raises(InvalidThreadId):
            await aio.append("bad\tid", [msg("m1")])
        with pytest.raises(InvalidMessage):
            await aio.append("t", [{"id": "m1"}])
        with pytest.raises(HotStoreUnavailable):
            await aio.append("t", [msg("m1")])
        with pytest.raises(HotStoreUnavailable):
            await aio.load("t")
    finally:
        await dead.aclose()


async def test_pop_takes_the_lease_rule_of_truncate(hot: HotStore) -> None:
    hot.create("leased")
    hot.append("leased", [msg("m1"), msg("m2")])
    hot.acquire_lease("leased", "turn-1", 10_000)
    before, before_version = redis_contents(hot.redis), hot.version("leased")
    with pytest.raises(LeaseLost):
        hot.pop("leased", owner="turn-2")
    assert redis_contents(hot.redis) == before
    popped = hot.pop("leased", owner="turn-1")
    assert popped.record == msg("m2")
    assert (popped.length, popped.version) == (1, before_version + 1)
    assert hot.pop("leased").record == msg("m1")  # no owner: no check
    assert hot.pop("leased", owner="turn-2").record is None  # nothing to remove: no check
    with pytest.raises(ThreadNotFound):
        hot.pop("nowhere")


async def test_a_pop_is_a_rewrite_that_the_next_flush_archives(file_threads: Threads) -> None:
    threads = file_threads
    threads.open("rewound", "new")
    threads.append("rewound", [msg("m1"), msg("m2"), msg("m3")])
    assert threads.flush("rewound", evict=False).status == "archived"
    meta = threads.hot.keys("rewound").meta
    rewrites = int(threads.hot.redis.hget(meta, "rewrites") or 0)
    assert threads.pop("rewound").record == msg("m3")
    assert int(threads.hot.redis.hget(meta, "rewrites") or 0) == rewrites + 1
    # longer than the archive again: only a recorded rewrite stops a segment append
    threads.append("rewound", [msg("m4"), msg("m5"), msg("m3", "again")])
    assert threads.flush("rewound").evicted
    assert [r["id"] for r in threads.load("rewound")] == ["m1", "m2", "m4", "m5", "m3"]
    assert threads.load("rewound")[-1] == msg("m3", "again")


async def test_async_threads_refuse_a_store_of_another_namespace(
    file_threads: Threads, aio_redis: aioredis.Redis
) -> None:
    with pytest.raises(ValueError, match="namespace"):
        AsyncThreads(file_threads, AsyncHotStore(aio_redis, namespace="other"))
    plain = AsyncHotStore(aio_redis)
    AsyncThreads(file_threads, plain)
    assert plain.calls.keep_unarchived  # a cold tier archives it: no TTL on unarchived


@pytest.mark.cluster
async def test_async_store_on_redis_cluster(
    cluster_client: redis.RedisCluster, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    threads = Threads(HotStore(cluster_client), FileColdStore(tmp_path / "cold"))
    client = aioredis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        session = AgentThreadsSession(
            "on-cluster", threads, AsyncHotStore.like(threads.hot, client)
        )
        await session.add_items([user("q"), assistant("msg_1", "a")])
        await session.add_items([assistant("msg_1", "a")])
        assert await session.get_items(limit=5) == [user("q"), assistant("msg_1", "a")]
        assert await session.pop_item() == assistant("msg_1", "a")
        shard = threads.hot.layout.activity_of("on-cluster")
        assert cluster_client.zscore(shard, "on-cluster") is not None  # marked after the script
        assert threads.flush("on-cluster").evicted
        assert await session.get_items() == [user("q")]
    finally:
        await client.aclose()
