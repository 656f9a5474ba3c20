"""The shared adapter machinery, through the plain scripted format: thread helpers,
tool-call integrity policies, fork transforms and the exactly-once model turn."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
import redis

from adapters.base import SYSTEM_ID, DanglingToolCall, reply_id
from adapters.scripted import ScriptedAdapter, ScriptedModel
from storage import HotStore, LeaseLost
from storage.cold import ColdStore
from storage.records import Message
from storage.tiered import Threads
from tests.conftest import msg, redis_contents


@pytest.fixture
def adapter(threads: Threads) -> ScriptedAdapter:
    threads.open("t1", "new")
    return ScriptedAdapter(threads)


def ids(adapter: ScriptedAdapter, tid: str = "t1") -> list[str]:
    return [r["id"] for r in adapter.threads.load(tid)]


def with_dangling_call(adapter: ScriptedAdapter) -> None:
    adapter.append_user("t1", "u1", "weather in Bern?")
    call = {"id": "c1", "name": "weather", "args": {"city": "Bern"}}
    adapter.append_message("t1", "a1", {"role": "assistant", "content": "", "tool_calls": [call]})
    adapter.append_user("t1", "u2", "hello?")  # the crash happened before the result


def test_helpers_append_once_and_set_system_keeps_the_thread(adapter: ScriptedAdapter) -> None:
    adapter.append_user("t1", "u1", "hi")
    adapter.append_user("t1", "u1", "hi again")  # same id: a redelivery, skipped
    adapter.append_assistant("t1", "a1", "hello")
    adapter.set_system("t1", "be brief")
    adapter.set_system("t1", "be brief")  # idempotent
    assert ids(adapter) == [SYSTEM_ID, "u1", "a1"]
    version = adapter.threads.hot.version("t1")
    adapter.set_system("t1", "be brief")
    assert adapter.threads.hot.version("t1") == version
    adapter.set_system("t1", "be very brief")
    assert ids(adapter) == [SYSTEM_ID, "u1", "a1"]
    assert adapter.messages("t1")[0] == {"role": "system", "content": "be very brief"}
    assert adapter.messages("t1")[1] == {"role": "user", "content": "hi"}


def test_set_system_on_a_thread_longer_than_the_batch_limit(adapter: ScriptedAdapter) -> None:
    size = adapter.threads.hot.limits.max_batch + 501
    for start in range(0, size, 1000):
        batch = [msg(f"m{i:05d}") for i in range(start, min(start + 1000, size))]
        adapter.threads.append("t1", batch)
    adapter.set_system("t1", "be brief")
    assert ids(adapter)[:2] == [SYSTEM_ID, "m00000"]
    assert adapter.threads.hot.length("t1") == size + 1
    adapter.set_system("t1", "be very brief")
    assert adapter.messages("t1")[0] == {"role": "system", "content": "be very brief"}
    assert adapter.threads.hot.length("t1") == size + 1


class AppendLandsBeforeWrites(HotStore):
    """The real HotStore, except that right before its next write script for the
    system prompt runs, another writer's append lands (as it may between any two
    calls of a multi-step write)."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.late: list[dict[str, Any]] = []

    def _call(self, name: str, keys: list[str], args: Iterable[Any] = ()) -> Any:
        if name in ("replace", "put_record") and self.late:
            late, self.late = self.late, []
            HotStore.append(self, "t1", late)
        return super()._call(name, keys, args)


def test_set_system_never_drops_an_append_that_lands_during_it(
    redis_client: redis.Redis, cold: ColdStore
) -> None:
    hot = AppendLandsBeforeWrites(redis_client)
    adapter = ScriptedAdapter(Threads(hot, cold))
    adapter.threads.open("t1", "new")
    adapter.append_user("t1", "u1", "hi")
    hot.late = [msg("u2")]
    adapter.set_system("t1", "be brief")
    assert ids(adapter) == [SYSTEM_ID, "u1", "u2"]


def test_integrity_error_policy_raises(adapter: ScriptedAdapter) -> None:
    with_dangling_call(adapter)
    with pytest.raises(DanglingToolCall, match="c1"):
        adapter.prepare("t1", integrity="error")


def test_integrity_repair_inserts_an_error_result_after_the_call(adapter: ScriptedAdapter) -> None:
    with_dangling_call(adapter)
    request = adapter.prepare("t1", integrity="repair")
    roles = [m["role"] for m in request["messages"]]
    assert roles == ["user", "assistant", "tool", "user"]
    assert request["messages"][2]["tool_call_id"] == "c1"
    assert request["messages"][2]["is_error"] is True
    assert ids(adapter) == ["u1", "a1", "u2"]  # the stored thread is unchanged


def test_integrity_truncate_cuts_before_the_call(adapter: ScriptedAdapter) -> None:
    with_dangling_call(adapter)
    request = adapter.prepare("t1", integrity="truncate")
    assert [m["content"] for m in request["messages"]] == ["weather in Bern?"]


def test_answered_tool_calls_pass_every_policy(adapter: ScriptedAdapter) -> None:
    with_dangling_call(adapter)
    adapter.append_tool_result("t1", "r1", "c1", "sunny")
    for policy in ("error", "repair", "truncate"):
        assert len(adapter.prepare("t1", integrity=policy)["messages"]) == 4


def test_fork_transform_drops_a_dangling_tool_call(adapter: ScriptedAdapter) -> None:
    with_dangling_call(adapter)
    status = adapter.fork("t1", "t2", transform=adapter.drop_dangling_tool_calls)
    assert status == "forked"
    assert ids(adapter, "t2") == ["u1"]
    assert adapter.fork("t1", "t2", transform=adapter.drop_dangling_tool_calls) == "existing"


def test_fork_transform_that_failed_is_applied_when_the_fork_is_retried(
    adapter: ScriptedAdapter,
) -> None:
    with_dangling_call(adapter)
    failures = [RuntimeError("transform crashed")]

    def flaky(records: list[Message]) -> list[Message]:
        if failures:
            raise failures.pop()
        return adapter.drop_dangling_tool_calls(records)

    with pytest.raises(RuntimeError, match="transform crashed"):
        adapter.fork("t1", "t2", transform=flaky)
    assert not adapter.threads.hot.exists("t2")  # nothing half-made for the retry to find
    assert adapter.fork("t1", "t2", transform=flaky) == "forked"
    assert ids(adapter, "t2") == ["u1"]
    assert adapter.threads.append("t2", [msg("a1")]).skipped_ids == ("a1",)  # dropped: retired


def test_model_turn_appends_one_reply_and_never_calls_twice(adapter: ScriptedAdapter) -> None:
    calls: list[dict[str, Any]] = []
    model = ScriptedModel(["first answer to {user}", "second answer"])

    def counted(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request)
        return model(request)

    adapter.append_user("t1", "u1", "q1")
    adapter.threads.acquire_lease("t1", "turn-1", 60_000)
    first = adapter.run_turn("t1", "turn-1", counted)
    again = adapter.run_turn("t1", "turn-1", counted)  # a redelivered task
    assert first == again == {"role": "assistant", "content": "first answer to q1"}
    assert len(calls) == 1
    assert ids(adapter) == ["u1", reply_id("turn-1")]
    rewound = adapter.run_turn("t1", "turn-1", counted, rewind=True)
    assert len(calls) == 2
    assert rewound == {"role": "assistant", "content": "first answer to q1"}
    assert ids(adapter) == ["u1", reply_id("turn-1")]


def test_model_turn_writes_only_under_its_lease(adapter: ScriptedAdapter) -> None:
    adapter.append_user("t1", "u1", "q1")
    with pytest.raises(LeaseLost):
        adapter.run_turn("t1", "turn-1", ScriptedModel(["x"]))
    assert ids(adapter) == ["u1"]


def test_rewind_by_a_turn_that_lost_its_lease_changes_nothing(
    adapter: ScriptedAdapter, redis_client: redis.Redis
) -> None:
    calls: list[dict[str, Any]] = []

    def model(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request)
        return {"role": "assistant", "content": "answer"}

    adapter.append_user("t1", "u1", "q1")
    adapter.threads.acquire_lease("t1", "turn-1", 60_000)
    adapter.run_turn("t1", "turn-1", model)
    adapter.threads.release_lease("t1", "turn-1")
    adapter.threads.acquire_lease("t1", "turn-2", 60_000)  # the next turn runs
    adapter.threads.append("t1", [msg("u2")], owner="turn-2")
    before = redis_contents(redis_client)
    with pytest.raises(LeaseLost, match="turn-2"):
        adapter.run_turn("t1", "turn-1", model, rewind=True)  # a stale redelivery
    assert redis_contents(redis_client) == before
    assert ids(adapter) == ["u1", reply_id("turn-1"), "u2"]
    assert len(calls) == 1


def test_scripted_model_emits_tool_calls_deterministically() -> None:
    model = ScriptedModel([{"tool_call": {"name": "search", "args": {"q": "trains"}}}, "done"])
    request = {"messages": [{"role": "user", "content": "find trains"}]}
    reply = model(request)
    assert reply["tool_calls"] == [{"id": "call-0", "name": "search", "args": {"q": "trains"}}]
    assert model(request) == reply
    follow_up = {"messages": [*request["messages"], reply]}
    answer = model(follow_up)
    assert answer["usage"] == {"model": "scripted", "input_tokens": 2, "output_tokens": 1}
    assert {k: v for k, v in answer.items() if k != "usage"} == {
        "role": "assistant",
        "content": "done",
    }
