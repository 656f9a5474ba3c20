"""AgentThreadsSaver (adapters/langgraph.py): LangGraph's checkpointer conformance suite,
every capability, on a real redis-server with a real cold store (S3 via moto, files),
through the cold tier (evicted after every write) and on a real Redis Cluster; then a
compiled StateGraph on it, across an eviction, and the write semantics."""

from __future__ import annotations

import asyncio
import json
import operator
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
import redis
import redis.asyncio as aioredis
from langchain_core.runnables import RunnableConfig
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
)
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import Capability
from langgraph.checkpoint.conformance.report import CapabilityReport
from langgraph.checkpoint.conformance.test_utils import (
    generate_checkpoint,
    generate_config,
    generate_metadata,
)
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from redis.backoff import NoBackoff
from redis.retry import Retry

from adapters.langgraph import TAIL_RECORDS, AgentThreadsSaver, InvalidCheckpointArgument
from storage import HotStore, InvalidMessage, InvalidThreadId, Limits
from storage.aio import AsyncHotStore
from storage.cold import FileColdStore
from storage.embedded import EmbeddedRedis, free_port
from storage.errors import HotStoreUnavailable
from storage.tiered import Threads
from tests.cluster import RedisClusterServer
from tests.conftest import redis_contents

# -- the conformance suite -----------------------------------------------------------


class EvictingSaver(AgentThreadsSaver):
    """Flushes and evicts the thread after every write, so every read hydrates it
    from the cold tier: the suite then checks what comes back from an archive (the
    async writes too: with ``aio`` they do not go through the sync ones)."""

    def _evict(self, config: RunnableConfig) -> None:
        thread_id = str(config["configurable"]["thread_id"])
        assert self.threads.flush(thread_id).status in ("archived", "unchanged")
        assert not self.threads.hot.exists(thread_id)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        stored = super().put(config, checkpoint, metadata, new_versions)
        self._evict(stored)
        return stored

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        super().put_writes(config, writes, task_id, task_path)
        self._evict(config)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        stored = await super().aput(config, checkpoint, metadata, new_versions)
        await asyncio.to_thread(self._evict, stored)
        return stored

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await super().aput_writes(config, writes, task_id, task_path)
        await asyncio.to_thread(self._evict, config)


async def conformance(name: str, saver: AgentThreadsSaver) -> CapabilityReport:
    """Run every capability of the suite; fail unless each is detected and passes."""

    @checkpointer_test(name=name)
    async def factory() -> AsyncIterator[AgentThreadsSaver]:
        yield saver

    report = await validate(factory)
    report.print_report()
    counts = {
        cap: (r.tests_passed, r.tests_failed, r.tests_skipped)
        for cap, r in sorted(report.results.items())
    }
    print(f"conformance {name} (passed, failed, skipped): {json.dumps(counts)}")
    assert set(report.results) == {c.value for c in Capability}
    missing = sorted(cap for cap, r in report.results.items() if not r.detected)
    assert not missing, f"capabilities not implemented: {missing}"
    failures = {cap: r.failures for cap, r in report.results.items() if r.passed is not True}
    assert not failures, failures
    assert report.conformance_level() == "FULL"
    return report


@pytest.mark.asyncio
async def test_conformance_suite_passes_every_capability_on_redis_and_a_cold_store(
    threads: Threads, aio_redis: aioredis.Redis
) -> None:
    aio = AsyncHotStore.like(threads.hot, aio_redis)
    await conformance("AgentThreadsSaver", AgentThreadsSaver(threads, aio=aio))


@pytest.mark.asyncio
async def test_conformance_suite_passes_every_capability_without_an_asyncio_client(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    # the async methods then run the sync ones in a worker thread
    threads = Threads(HotStore(redis_client), FileColdStore(tmp_path / "cold"))
    await conformance("AgentThreadsSaver without aio", AgentThreadsSaver(threads))


@pytest.mark.asyncio
async def test_conformance_suite_passes_every_capability_through_the_cold_tier(
    redis_client: redis.Redis, tmp_path: Path, aio_redis: aioredis.Redis
) -> None:
    # no write pin: a thread restored in order to be written is evicted right after
    threads = Threads(HotStore(redis_client), FileColdStore(tmp_path / "cold"), write_pin_ms=0)
    saver = EvictingSaver(threads, aio=AsyncHotStore.like(threads.hot, aio_redis))
    await conformance("AgentThreadsSaver, evicted after every write", saver)


@pytest.mark.cluster
@pytest.mark.asyncio
async def test_conformance_suite_passes_every_capability_on_redis_cluster(
    cluster_client: redis.RedisCluster, redis_cluster: RedisClusterServer, tmp_path: Path
) -> None:
    threads = Threads(HotStore(cluster_client), FileColdStore(tmp_path / "cold"))
    client = aioredis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        saver = AgentThreadsSaver(threads, aio=AsyncHotStore.like(threads.hot, client))
        await conformance("AgentThreadsSaver on Redis Cluster", saver)
    finally:
        await client.aclose()


# -- a compiled StateGraph on the saver ----------------------------------------------


class State(TypedDict):
    log: Annotated[list[str], operator.add]


def review(state: State) -> dict[str, list[str]]:
    return {"log": [f"review: {interrupt('approve?')}"]}


def build(checkpointer: BaseCheckpointSaver[Any]) -> Any:
    """draft -> a subgraph (edit, then review: an interrupt) -> publish, three steps
    of its own namespace inside one step of the root."""
    inner = StateGraph(State)
    inner.add_node("edit", lambda s: {"log": ["edit"]})
    inner.add_node("review", review)
    inner.add_edge(START, "edit")
    inner.add_edge("edit", "review")
    inner.add_edge("review", END)
    graph = StateGraph(State)
    graph.add_node("draft", lambda s: {"log": ["draft"]})
    graph.add_node("sub", inner.compile())
    graph.add_node("publish", lambda s: {"log": ["publish"]})
    graph.add_edge(START, "draft")
    graph.add_edge("draft", "sub")
    graph.add_edge("sub", "publish")
    graph.add_edge("publish", END)
    return graph.compile(checkpointer=checkpointer)


def run(graph: Any, thread_id: str) -> list[Any]:
    """Two runs, each up to an interrupt and its resume; what each call returned."""
    config = {"configurable": {"thread_id": thread_id}}
    seen: list[Any] = []
    for n in range(2):
        first = graph.invoke({"log": [f"input {n}"]}, config)
        seen.append((first["log"], [i.value for i in first["__interrupt__"]]))
        seen.append(graph.invoke(Command(resume=f"yes {n}"), config)["log"])
    return seen


def history(graph: Any, thread_id: str) -> list[Any]:
    """The thread's history without ids (they differ from saver to saver)."""
    config = {"configurable": {"thread_id": thread_id}}
    return [
        (s.values, s.next, s.metadata["step"], s.metadata["source"], len(s.interrupts))
        for s in graph.get_state_history(config)
    ]


def test_state_graph_steps_interrupts_and_resumes_exactly_as_on_the_in_memory_saver(
    threads: Threads,
) -> None:
    ours, reference = build(AgentThreadsSaver(threads)), build(InMemorySaver())
    assert run(ours, "t1") == run(reference, "t1")
    assert history(ours, "t1") == history(reference, "t1")
    assert len(history(ours, "t1")) == 10  # 5 checkpoints per run
    config = {"configurable": {"thread_id": "t1"}}
    state = ours.get_state(config)
    assert state.values["log"][-1] == "publish"
    assert state.next == ()


@pytest.mark.asyncio
async def test_async_graph_runs_on_the_async_methods_with_the_same_result(
    threads: Threads,
) -> None:
    graph = build(AgentThreadsSaver(threads))
    config: RunnableConfig = {"configurable": {"thread_id": "a1"}}
    first = await graph.ainvoke({"log": ["input 0"]}, config)
    assert [i.value for i in first["__interrupt__"]] == ["approve?"]
    done = await graph.ainvoke(Command(resume="yes 0"), config)
    assert done["log"][-2:] == ["review: yes 0", "publish"]
    steps = [s async for s in graph.aget_state_history(config)]
    assert [s.values for s in steps] == [s.values for s in graph.get_state_history(config)]


def test_thread_evicted_to_the_cold_tier_comes_back_with_its_state_and_resumes(
    threads: Threads,
) -> None:
    graph = build(AgentThreadsSaver(threads))
    config = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"log": ["input"]}, config)
    waiting = graph.get_state(config, subgraphs=True)
    before = history(graph, "t1")
    flushed = threads.flush("t1")
    assert flushed.evicted
    assert not threads.hot.exists("t1")
    assert threads.cold.head("t1") is not None
    back = graph.get_state(config, subgraphs=True)  # hydrates the thread
    assert (back.values, back.next) == (waiting.values, waiting.next)
    assert back.tasks[0].state.values == waiting.tasks[0].state.values  # the subgraph's
    assert [i.value for i in back.interrupts] == ["approve?"]
    assert history(graph, "t1") == before
    threads.flush("t1")
    done = graph.invoke(Command(resume="yes"), config)  # resumes from the archive
    assert done["log"][-2:] == ["review: yes", "publish"]


# -- write semantics -----------------------------------------------------------------


def stored_checkpoint(saver: AgentThreadsSaver, thread_id: str = "t1") -> RunnableConfig:
    config = generate_config(thread_id)
    checkpoint = generate_checkpoint(channel_values={"k": "v"}, channel_versions={"k": 1})
    return saver.put(config, checkpoint, generate_metadata(), {"k": 1})


def test_redelivered_put_writes_doubles_nothing_and_keeps_the_first_write(
    threads: Threads,
) -> None:
    saver = AgentThreadsSaver(threads)
    stored = stored_checkpoint(saver)
    saver.put_writes(stored, [("a", 1), ("b", 2)], "task-1", "path")
    length, version = threads.hot.length("t1"), threads.hot.version("t1")
    saver.put_writes(stored, [("a", 1), ("b", 2)], "task-1", "path")  # a redelivery
    saver.put_writes(stored, [("a", "late"), ("b", "late")], "task-1", "path")
    assert (threads.hot.length("t1"), threads.hot.version("t1")) == (length, version)
    tup = saver.get_tuple(stored)
    assert tup is not None
    assert tup.pending_writes == [("task-1", "a", 1), ("task-1", "b", 2)]


def test_special_writes_overwrite_the_stored_one_in_place(threads: Threads) -> None:
    saver = AgentThreadsSaver(threads)
    stored = stored_checkpoint(saver)
    saver.put_writes(stored, [(ERROR, "first failure")], "task-1")
    saver.put_writes(stored, [(INTERRUPT, {"ask": 1})], "task-1")
    length = threads.hot.length("t1")
    saver.put_writes(stored, [(ERROR, "second failure")], "task-1")
    saver.put_writes(stored, [(INTERRUPT, {"ask": 2}), (INTERRUPT, {"ask": 3})], "task-1")
    assert threads.hot.length("t1") == length  # replaced, not added
    tup = saver.get_tuple(stored)
    assert tup is not None
    assert sorted(tup.pending_writes or [], key=str) == sorted(
        [("task-1", ERROR, "second failure"), ("task-1", INTERRUPT, {"ask": 3})], key=str
    )


class CountingConnection(redis.Connection):
    """Counts the requests redis-py writes to the socket: one per round trip."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def test_each_put_and_put_writes_is_one_round_trip_with_the_activity_index(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    pool = redis.ConnectionPool(
        host="127.0.0.1", port=redis_server.port, connection_class=CountingConnection
    )
    # activity_refresh_ms=0: every write is due an index mark (the worst case)
    hot = HotStore(redis.Redis(connection_pool=pool), activity_refresh_ms=0)
    saver = AgentThreadsSaver(Threads(hot, FileColdStore(tmp_path)))
    parent = stored_checkpoint(saver)  # the first put also creates the thread
    checkpoint = generate_checkpoint(channel_values={"k": "w"}, channel_versions={"k": 2})
    before = CountingConnection.sent
    stored = saver.put(parent, checkpoint, generate_metadata(step=1), {"k": 2})
    assert CountingConnection.sent - before == 1
    before = CountingConnection.sent
    saver.put_writes(stored, [("a", 1), (ERROR, "boom")], "task-1")
    assert CountingConnection.sent - before == 1


# -- bad input -----------------------------------------------------------------------


def test_bad_input_raises_typed_errors_and_writes_nothing(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    hot = HotStore(redis_client, limits=Limits(max_message_bytes=4096))
    saver = AgentThreadsSaver(Threads(hot, FileColdStore(tmp_path)))
    checkpoint = generate_checkpoint()
    with pytest.raises(InvalidCheckpointArgument, match="thread_id"):
        saver.put({"configurable": {}}, checkpoint, generate_metadata(), {})
    with pytest.raises(InvalidThreadId):
        saver.put(generate_config("x" * 600), checkpoint, generate_metadata(), {})
    big = generate_checkpoint(channel_values={"k": "x" * 10_000}, channel_versions={"k": 1})
    with pytest.raises(InvalidMessage, match="limit"):
        saver.put(generate_config("t1"), big, generate_metadata(), {"k": 1})
    assert redis_contents(redis_client) == {}  # not even an empty thread
    stored = stored_checkpoint(saver)
    before = redis_contents(redis_client)
    with pytest.raises(InvalidCheckpointArgument, match="checkpoint_id"):
        saver.put_writes(generate_config("t1"), [("a", 1)], "task-1")
    with pytest.raises(InvalidMessage):
        saver.put_writes(stored, [("a", "x" * 10_000)], "task-1")
    with pytest.raises(InvalidCheckpointArgument, match="strategy"):
        saver.prune(["t1"], strategy="keep_some")
    assert redis_contents(redis_client) == before


# -- reads ---------------------------------------------------------------------------


def test_record_ids_hold_any_namespace_channel_and_task_id(threads: Threads) -> None:
    saver = AgentThreadsSaver(threads)
    namespace = "outer node:ü|inner:" + "n" * 300  # spaces, separators, over 256 bytes
    channel, task = "a channel|with:odd chars", "task " + "t" * 300
    config = generate_config("t1", checkpoint_ns=namespace)
    checkpoint = generate_checkpoint(channel_values={channel: b"\x00bytes"})
    checkpoint["channel_versions"] = {channel: 1}
    stored = saver.put(config, checkpoint, generate_metadata(), {channel: 1})
    saver.put_writes(stored, [(channel, {"nested": [1.5, None]})], task)
    tup = saver.get_tuple(generate_config("t1", checkpoint_ns=namespace))
    assert tup is not None
    assert tup.checkpoint["channel_values"] == {channel: b"\x00bytes"}
    assert tup.pending_writes == [(task, channel, {"nested": [1.5, None]})]
    assert saver.get_tuple(generate_config("t1")) is None  # the root namespace has none
    assert all(len(r["id"]) <= 256 for r in threads.load("t1"))


def test_get_tuple_finds_the_latest_checkpoint_behind_a_long_tail(threads: Threads) -> None:
    saver = AgentThreadsSaver(threads)
    stored = stored_checkpoint(saver)
    for n in range(100):  # a busy subgraph after the root's checkpoint
        child = generate_config("t1", checkpoint_ns=f"child:{n}")
        saver.put(child, generate_checkpoint(), generate_metadata(), {})
    saver.put_writes(stored, [("late", "write")], "task-1")
    for n in range(200):
        saver.put_writes(stored, [("ch", n)], f"task-{n:03d}")
    assert threads.hot.length("t1") > 4 * TAIL_RECORDS
    tup = saver.get_tuple(generate_config("t1"))
    assert tup is not None
    assert tup.checkpoint["id"] == stored["configurable"]["checkpoint_id"]
    assert len(tup.pending_writes or []) == 201
    assert tup.checkpoint["channel_values"] == {"k": "v"}
    assert saver.get_tuple(generate_config("t1", checkpoint_ns="child:none")) is None
    missing = generate_config("t1", checkpoint_id="1f0-not-a-checkpoint")
    assert saver.get_tuple(missing) is None


def test_list_without_a_config_spans_hot_and_evicted_threads(threads: Threads) -> None:
    saver = AgentThreadsSaver(threads)
    for thread_id in ("hot", "cold"):
        for step in range(3):
            config = generate_config(thread_id)
            saver.put(config, generate_checkpoint(), generate_metadata(step=step), {})
    assert threads.flush("cold").evicted
    listed = list(saver.list(None))
    assert (
        sorted(t.config["configurable"]["thread_id"] for t in listed) == ["cold"] * 3 + ["hot"] * 3
    )
    assert len(list(saver.list(None, filter={"step": 2}))) == 2
    assert len(list(saver.list(None, limit=4))) == 4


# -- prune, delete_for_runs, copy ----------------------------------------------------


def append_batch(state: list[int] | None, writes: Sequence[list[int]]) -> list[int]:
    return [*(state or []), *(n for batch in writes for n in batch)]


class DeltaState(TypedDict):
    log: Annotated[list[int], DeltaChannel(append_batch, snapshot_frequency=4)]


def delta_graph(checkpointer: BaseCheckpointSaver[Any]) -> Any:
    graph = StateGraph(DeltaState)
    graph.add_node("one", lambda s: {"log": [1]})
    graph.add_node("two", lambda s: {"log": [2]})
    graph.add_edge(START, "one")
    graph.add_edge("one", "two")
    graph.add_edge("two", END)
    return graph.compile(checkpointer=checkpointer)


def test_prune_keep_latest_keeps_what_a_delta_channel_replays_from(threads: Threads) -> None:
    saver = AgentThreadsSaver(threads)
    graph = delta_graph(saver)
    config = {"configurable": {"thread_id": "t1"}}
    for _ in range(3):
        graph.invoke({"log": [0]}, config)
    values = graph.get_state(config).values
    latest = saver.get_tuple(config)
    assert latest is not None
    walked = saver.get_delta_channel_history(config=latest.config, channels=["log"])
    # the one-read override walks exactly as the base class's one-get-per-ancestor walk
    assert walked == BaseCheckpointSaver.get_delta_channel_history(
        saver, config=latest.config, channels=["log"]
    )
    length = threads.hot.length("t1")
    saver.prune(["t1"])
    assert graph.get_state(config).values == values == {"log": [0, 1, 2] * 3}
    assert 1 < len(list(saver.list(config))) < 10
    assert threads.hot.length("t1") < length
    graph.invoke({"log": [0]}, config)  # the pruned thread runs on
    assert graph.get_state(config).values == {"log": [0, 1, 2] * 4}


def test_late_write_to_a_pruned_checkpoint_is_not_brought_back(threads: Threads) -> None:
    saver = AgentThreadsSaver(threads)
    old = stored_checkpoint(saver)
    saver.put_writes(old, [("a", 1)], "task-1")
    saver.put(old, generate_checkpoint(), generate_metadata(step=1), {})
    saver.prune(["t1"])
    saver.put_writes(old, [("a", 1)], "task-1")  # a redelivery after the prune
    assert saver.get_tuple(old) is None
    assert not any("task-1" in r["id"] for r in threads.load("t1"))


def test_delete_for_runs_reads_evicted_threads_in_place(threads: Threads) -> None:
    saver = AgentThreadsSaver(threads)
    for thread_id, run_id in (("t1", "run-1"), ("t2", "run-2")):
        config = generate_config(thread_id)
        saver.put(config, generate_checkpoint(), generate_metadata(run_id=run_id), {})
        saver.put(config, generate_checkpoint(), generate_metadata(run_id="run-3"), {})
        assert threads.flush(thread_id).evicted
    saver.delete_for_runs(["run-1"])
    assert not threads.hot.exists("t2")  # read from its archive, left there
    assert {t.metadata["run_id"] for t in saver.list(generate_config("t1"))} == {"run-3"}
    assert len(list(saver.list(generate_config("t2")))) == 2


def test_copy_into_an_existing_thread_appends_what_it_lacks(threads: Threads) -> None:
    saver = AgentThreadsSaver(threads)
    stored_checkpoint(saver, "src")
    saver.copy_thread("src", "dst")  # a fork of the source
    assert threads.hot.info("dst").parent == "src"
    newer = saver.put(generate_config("src"), generate_checkpoint(), generate_metadata(), {})
    saver.copy_thread("src", "dst")  # the target exists: what it lacks is appended
    saver.copy_thread("src", "dst")  # and again: nothing doubles
    ids = [t.checkpoint["id"] for t in saver.list(generate_config("dst"))]
    assert ids == [t.checkpoint["id"] for t in saver.list(generate_config("src"))]
    assert ids[0] == newer["configurable"]["checkpoint_id"]


def test_next_versions_increase_and_never_repeat(threads: Threads) -> None:
    saver = AgentThreadsSaver(threads)
    first = saver.get_next_version(None, None)
    second = saver.get_next_version(first, None)
    assert first < second
    assert first.startswith("0" * 31 + "1.")
    assert saver.get_next_version(first, None) != second  # two branches from one version
    assert saver.get_next_version(7, None).startswith("0" * 30 + "08.")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_async_methods_of_a_hot_thread_run_on_redis_asyncio_alone(
    redis_client: redis.Redis, tmp_path: Path, aio_redis: aioredis.Redis
) -> None:
    # the saver's sync client points at a closed port: the async path must not need it
    cold = FileColdStore(tmp_path / "cold")
    config = AgentThreadsSaver(Threads(HotStore(redis_client), cold)).put(
        generate_config("hot-1"), generate_checkpoint(), generate_metadata(), {}
    )
    dead = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    saver = AgentThreadsSaver(Threads(HotStore(dead), cold), aio=AsyncHotStore(aio_redis))
    checkpoint = generate_checkpoint(channel_values={"k": "v"}, channel_versions={"k": 1})
    stored = await saver.aput(config, checkpoint, generate_metadata(), {"k": 1})
    await saver.aput_writes(stored, [("k", "w")], "task-1")
    found = await saver.aget_tuple(stored)
    assert found is not None
    assert found.checkpoint["channel_values"] == {"k": "v"}
    assert found.pending_writes == [("task-1", "k", "w")]
    assert len([t async for t in saver.alist(generate_config("hot-1"))]) == 2
    history = await saver.aget_delta_channel_history(config=stored, channels=["k"])
    assert set(history) == {"k"}
    with pytest.raises(HotStoreUnavailable):
        saver.get_tuple(stored)
    dead.close()
