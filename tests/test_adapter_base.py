"""The shared adapter machinery, through the plain scripted format: thread helpers,
tool-call integrity policies, fork transforms and the exactly-once model turn."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.base import SYSTEM_ID, DanglingToolCall, reply_id
from adapters.scripted import ScriptedAdapter, ScriptedModel
from storage import LeaseLost
from storage.tiered import Threads


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


def test_scripted_model_emits_tool_calls_deterministically() -> None:
    model = ScriptedModel([{"tool_call": {"name": "search", "args": {"q": "trains"}}}, "done"])
    request = {"messages": [{"role": "user", "content": "find trains"}]}
    reply = model(request)
    assert reply["tool_calls"] == [{"id": "call-0", "name": "search", "args": {"q": "trains"}}]
    assert model(request) == reply
    follow_up = {"messages": [*request["messages"], reply]}
    assert model(follow_up) == {"role": "assistant", "content": "done"}
