"""The OpenAI adapters (Chat Completions messages, Responses items): lossless bodies,
requests for both APIs, tool-call integrity, and the ``openai.run_turn`` task through
the real ``openai.OpenAI`` client (its HTTP answered by a mock transport) on the
embedded Celery worker.

The SDK (3.x) sends through ``httpx2``: its client takes an ``httpx2.Client``, so
the mock transport is ``httpx2.MockTransport``. The API JSON below follows the
SDK's response types (each fixture is validated by them)."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionAssistantMessageParam
from openai.types.responses import Response

import tasks.models.openai
from adapters.base import DanglingToolCall, ToolCall
from adapters.openai import (
    ASSISTANT_PARAM_KEYS,
    NoReply,
    OpenAIChatAdapter,
    OpenAIResponsesAdapter,
)
from adapters.tools import tool
from storage.cold import S3ColdStore
from storage.errors import InvalidMessage
from storage.records import Message
from storage.tiered import Threads
from tasks.app import threads as worker_threads
from tasks.turns import agent_turn

TIMEOUT = 60
MODEL = "gpt-5.5-2026-04-23"


def fresh_thread(threads: Threads) -> str:
    thread_id = f"t-{uuid.uuid4().hex}"
    threads.open(thread_id, "new")
    return thread_id


def records(*bodies: Any) -> list[Message]:
    return [{"id": f"m{n}", "body": body} for n, body in enumerate(bodies)]


# -- API JSON, as the SDK's types define it ------------------------------------------------


def chat_completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    completion = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": 1_765_000_000,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": {
            "prompt_tokens": 82,
            "completion_tokens": 17,
            "total_tokens": 99,
            "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 5,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_2f2d4e7b1c",
    }
    ChatCompletion.model_validate(completion)
    return completion


def chat_text(text: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    return chat_completion(message)


def chat_calls(*calls: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    message = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for call_id, name, args in calls
        ],
    }
    return chat_completion(message, "tool_calls")


def response(*output: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    body = {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": 1_765_000_000,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": MODEL,
        "output": list(output),
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": 328,
            "input_tokens_details": {"cached_tokens": 256, "cache_write_tokens": 0},
            "output_tokens": 148,
            "output_tokens_details": {"reasoning_tokens": 128},
            "total_tokens": 476,
        },
        "user": None,
        "metadata": {},
    }
    Response.model_validate(body)
    return body


def reasoning(summary: str, item_id: str = "rs_0a1b2c") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": summary}],
        "encrypted_content": "gAAAAABpQ0x7kq3Zr5c0m1Vh9YgQ2i2Qn4mHcS1v0Pq8Jw==",
    }


def function_call(call_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"fc_{call_id}",
        "type": "function_call",
        "status": "completed",
        "arguments": json.dumps(args),
        "call_id": call_id,
        "name": name,
    }


def output_message(text: str) -> dict[str, Any]:
    return {
        "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def api_error(status: int, message: str, kind: str, code: str | None) -> tuple[int, Any]:
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}


# -- Chat Completions: lossless bodies ------------------------------------------------------

CHAT_MESSAGES: list[dict[str, Any]] = [
    {"role": "developer", "content": "Answer in the user's language."},
    {
        "role": "user",
        "name": "ana",
        "content": [
            {"type": "text", "text": "What is on this ticket?"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
            },
            {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}},
            {"type": "file", "file": {"file_id": "file-6F2ksmvXxt4VdoqmHRw6kL"}},
        ],
    },
    {
        "role": "assistant",
        "content": "Let me look that up.",
        "tool_calls": [
            {
                "id": "call_Ff3PuNFeGChWQ5tTbRMXpWyc",
                "type": "function",
                "function": {"name": "lookup_train", "arguments": '{"number":"EC 15","unit":null}'},
            },
            {
                "id": "call_9xq2",
                "type": "custom",
                "custom": {"name": "sql", "input": "SELECT * FROM trains WHERE n = 'EC 15'"},
            },
        ],
    },
    {
        "role": "tool",
        "tool_call_id": "call_Ff3PuNFeGChWQ5tTbRMXpWyc",
        "content": '{"departs":"07:33"}',
    },
    {
        "role": "tool",
        "tool_call_id": "call_9xq2",
        "content": [{"type": "text", "text": "1 row"}],
    },
    {"role": "assistant", "content": None, "refusal": "I can't help with that."},
    {"role": "assistant", "audio": {"id": "audio_abc123"}},
    {"role": "function", "name": "legacy_lookup", "content": "ok"},
]


def test_chat_messages_of_every_role_round_trip_unchanged(threads: Threads) -> None:
    adapter = OpenAIChatAdapter(threads)
    thread_id = fresh_thread(threads)
    adapter.set_system(thread_id, "You are a travel agent.")
    for n, message in enumerate(CHAT_MESSAGES):
        adapter.append_message(thread_id, f"m{n}", message)
    assert adapter.messages(thread_id) == [
        {"role": "system", "content": "You are a travel agent."},
        *CHAT_MESSAGES,
    ]
    roles = [adapter.role(r["body"]) for r in threads.load(thread_id)]
    assert roles == [
        *("system", "system", "user", "assistant", "tool", "tool"),
        *("assistant", "assistant", "tool"),
    ]


def test_a_chat_completion_is_stored_as_its_message_as_the_api_sent_it(threads: Threads) -> None:
    adapter = OpenAIChatAdapter(threads)
    thread_id = fresh_thread(threads)
    api_json = chat_calls(("call_w", "get_weather", {"city": "Zurich"}))
    message = api_json["choices"][0]["message"]
    adapter.append_assistant(thread_id, "a1", ChatCompletion.model_validate(api_json))
    adapter.append_assistant(thread_id, "a2", api_json)  # its JSON
    adapter.append_assistant(  # the message object itself
        thread_id, "a3", ChatCompletion.model_validate(api_json).choices[0].message
    )
    assert adapter.messages(thread_id) == [message, message, message]
    assert adapter.tool_calls(message) == [ToolCall("call_w", "get_weather", {"city": "Zurich"})]
    usage = {
        "input_tokens": 82,
        "output_tokens": 17,
        "cache_read_input_tokens": 64,
        "reasoning_tokens": 5,
        "model": MODEL,
    }
    assert adapter.usage(api_json) == usage
    assert adapter.usage(ChatCompletion.model_validate(api_json)) == usage
    assert adapter.usage(message) is None, "a message reports no usage"
    custom = CHAT_MESSAGES[2]
    assert adapter.tool_calls(custom)[1] == ToolCall(
        "call_9xq2", "sql", "SELECT * FROM trains WHERE n = 'EC 15'"
    )


def test_the_request_keeps_exactly_the_assistant_params_of_the_sdk() -> None:
    sdk_keys = ChatCompletionAssistantMessageParam.__required_keys__ | (
        ChatCompletionAssistantMessageParam.__optional_keys__
    )
    assert frozenset(sdk_keys) == ASSISTANT_PARAM_KEYS


# -- Responses: lossless items ----------------------------------------------------------------

RESPONSES_ITEMS: list[Any] = [
    {"role": "user", "content": "Book me a train to Milan."},
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "This one:"},
            {
                "type": "input_image",
                "image_url": "data:image/png;base64,iVBORw0KGgo=",
                "detail": "auto",
            },
            {"type": "input_file", "file_id": "file-6F2ksmvXxt4VdoqmHRw6kL"},
        ],
    },
    {"role": "developer", "content": "Prefer direct trains."},
    [  # one reply: reasoning, a hosted web search, a function call and a custom tool call
        reasoning("**Finding trains**\n\nThe user wants a train to Milan."),
        {
            "id": "ws_68af",
            "type": "web_search_call",
            "status": "completed",
            "action": {"type": "search", "query": "Zurich Milan trains"},
        },
        {**function_call("call_w", "get_weather", {"city": "Milan"}), "async": False},
        {
            "id": "ctc_1",
            "type": "custom_tool_call",
            "call_id": "call_sql",
            "name": "sql",
            "input": "SELECT 1",
        },
    ],
    [
        {"type": "function_call_output", "call_id": "call_w", "output": "14 °C"},
        {
            "type": "custom_tool_call_output",
            "call_id": "call_sql",
            "output": [{"type": "input_text", "text": "1"}],
        },
    ],
    output_message("The EC 15 leaves at 07:33."),
    {"type": "item_reference", "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e6"},
]


def test_responses_items_of_every_kind_round_trip_unchanged(threads: Threads) -> None:
    adapter = OpenAIResponsesAdapter(threads)
    thread_id = fresh_thread(threads)
    for n, item in enumerate(RESPONSES_ITEMS):
        adapter.append_message(thread_id, f"m{n}", item)
    assert adapter.messages(thread_id) == RESPONSES_ITEMS
    bodies = [r["body"] for r in threads.load(thread_id)]
    roles = [adapter.role(body) for body in bodies]
    assert roles == ["user", "user", "system", "assistant", "tool", "assistant", "assistant"]
    assert adapter.tool_call_ids(bodies[3]) == ["call_w", "call_sql"]
    assert adapter.tool_result_ids(bodies[4]) == ["call_w", "call_sql"]
    assert adapter.tool_calls(bodies[3]) == [
        ToolCall("call_w", "get_weather", {"city": "Milan"}, "function_call"),
        ToolCall("call_sql", "sql", "SELECT 1", "custom_tool_call"),
    ]


def test_a_response_is_stored_as_its_output_items_as_the_api_sent_them(threads: Threads) -> None:
    adapter = OpenAIResponsesAdapter(threads)
    thread_id = fresh_thread(threads)
    api_json = response(
        reasoning("**Checking**"),
        {**function_call("call_w", "get_weather", {"city": "Milan"}), "async": False},
    )
    adapter.append_assistant(thread_id, "a1", Response.model_validate(api_json))
    adapter.append_assistant(thread_id, "a2", api_json)
    adapter.append_message(thread_id, "a3", Response.model_validate(api_json).output)
    stored = adapter.messages(thread_id)
    # the API's own names ("async", not the SDK's "async_"), encrypted reasoning kept
    assert stored == [api_json["output"]] * 3
    usage = {
        "input_tokens": 328,
        "output_tokens": 148,
        "cache_read_input_tokens": 256,
        "cache_creation_input_tokens": 0,
        "reasoning_tokens": 128,
        "model": MODEL,
    }
    assert adapter.usage(api_json) == usage
    assert adapter.usage(Response.model_validate(api_json)) == usage


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25, deadline=None
)
@given(
    texts=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=30), min_size=4),
    args=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3),
)
def test_replies_with_any_text_and_arguments_round_trip(
    threads: Threads, texts: list[str], args: dict[str, Any]
) -> None:
    adapter = OpenAIResponsesAdapter(threads)
    thread_id = fresh_thread(threads)
    reply = response(
        reasoning(texts[0]), function_call("call_x", "f", args), output_message(texts[1])
    )
    adapter.append_user(thread_id, "u1", texts[2])
    adapter.append_assistant(thread_id, "a1", reply)
    adapter.append_tool_result(thread_id, "r1", "call_x", texts[3])
    assert adapter.messages(thread_id) == [
        {"role": "user", "content": texts[2]},
        reply["output"],
        {"type": "function_call_output", "call_id": "call_x", "output": texts[3]},
    ]
    assert adapter.tool_calls(reply["output"])[0].args == args


def test_a_failed_or_empty_reply_is_refused_and_nothing_is_written(threads: Threads) -> None:
    responses = OpenAIResponsesAdapter(threads)
    chat = OpenAIChatAdapter(threads)
    thread_id = fresh_thread(threads)
    failed = {
        **response(status="failed"),
        "error": {"code": "server_error", "message": "The model failed to respond."},
    }
    with pytest.raises(NoReply, match="server_error: The model failed"):
        responses.append_assistant(thread_id, "a1", failed)
    with pytest.raises(NoReply, match="no output"):
        responses.append_assistant(thread_id, "a1", response(status="incomplete"))
    with pytest.raises(NoReply, match="no choices"):
        chat.append_assistant(thread_id, "a1", {**chat_text("x"), "choices": []})
    assert threads.load(thread_id) == []


@pytest.mark.parametrize(
    ("api", "message", "match"),
    [
        ("chat", function_call("c", "f", {}), "Responses API item goes to OpenAIResponsesAdapter"),
        ("chat", {"role": "tool", "content": "x"}, "tool_call_id"),
        ("chat", {"role": "model", "content": "x"}, "role"),
        ("chat", {"role": "assistant", "tool_calls": [{"type": "function"}]}, "'id'"),
        ("chat", "just text", "ChatCompletion"),
        ("responses", CHAT_MESSAGES[2], "Chat Completions message"),
        ("responses", {"role": "tool", "tool_call_id": "c", "content": "x"}, "OpenAIChatAdapter"),
        ("responses", {"content": "no role, no type"}, "'type', or a 'role'"),
        ("responses", {"type": "function_call_output", "output": "x"}, "call_id"),
        ("responses", [], "empty list"),
        ("responses", [{"role": "user", "content": "ok"}, 7], "JSON object"),
    ],
)
def test_a_message_of_the_other_format_is_refused_before_anything_is_written(
    threads: Threads, api: str, message: Any, match: str
) -> None:
    adapter = OpenAIChatAdapter(threads) if api == "chat" else OpenAIResponsesAdapter(threads)
    thread_id = fresh_thread(threads)
    with pytest.raises(InvalidMessage, match=match):
        adapter.append_message(thread_id, "m1", message)
    assert threads.load(thread_id) == []


# -- prepare, for both APIs -----------------------------------------------------------------------


def test_chat_prepare_keeps_the_system_message_first_and_sends_only_input_fields(
    threads: Threads,
) -> None:
    adapter = OpenAIChatAdapter(threads)
    thread_id = fresh_thread(threads)
    adapter.append_user(thread_id, "u1", "Weather in Zurich?")
    reply = chat_completion(
        {
            "role": "assistant",
            "content": "14 °C, see [MeteoSwiss](https://meteoswiss.ch).",
            "refusal": None,
            "annotations": [
                {
                    "type": "url_citation",
                    "url_citation": {
                        "start_index": 14,
                        "end_index": 45,
                        "title": "MeteoSwiss",
                        "url": "https://meteoswiss.ch",
                    },
                }
            ],
            "audio": {
                "id": "audio_abc123",
                "data": "UklGRg==",
                "expires_at": 1_765_003_600,
                "transcript": "14 degrees",
            },
        }
    )
    adapter.append_assistant(thread_id, "a1", reply)
    adapter.set_system(thread_id, "Be brief.")
    stored = copy.deepcopy(threads.load(thread_id))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    request = adapter.prepare(thread_id, model="gpt-5.4-mini", tools=tools, temperature=0.2)
    assert request == {
        "model": "gpt-5.4-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Zurich?"},
            # no annotations, no refusal: null; the audio goes back by its id
            {
                "role": "assistant",
                "content": "14 °C, see [MeteoSwiss](https://meteoswiss.ch).",
                "audio": {"id": "audio_abc123"},
            },
        ],
        "tools": tools,
        "temperature": 0.2,
    }
    assert threads.load(thread_id) == stored, "prepare never changes the stored bodies"
    assert adapter.messages(thread_id)[2] == reply["choices"][0]["message"]


def test_responses_prepare_sends_instructions_and_the_items_in_order_statelessly(
    threads: Threads,
) -> None:
    adapter = OpenAIResponsesAdapter(threads)
    thread_id = fresh_thread(threads)
    adapter.set_system(thread_id, "You are a travel agent.")
    for n, item in enumerate(RESPONSES_ITEMS[:5]):
        adapter.append_message(thread_id, f"m{n}", item)
    request = adapter.prepare(thread_id, model=MODEL, reasoning={"effort": "high"})
    assert request == {
        "model": MODEL,
        "input": [*RESPONSES_ITEMS[:3], *RESPONSES_ITEMS[3], *RESPONSES_ITEMS[4]],
        "instructions": "You are a travel agent.",
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "high"},
    }
    stateful = adapter.prepare(thread_id, model=MODEL, store=True, include=())
    assert stateful["store"] is True
    assert "include" not in stateful
    # a system item that set_system did not write stays where it is
    other = adapter.build_request(records({"role": "system", "content": "x"}), model=MODEL)
    assert other["input"] == [{"role": "system", "content": "x"}]
    assert "instructions" not in other


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_tool_result_stored_after_a_user_message_is_sent_right_after_its_call(
    threads: Threads, api: str
) -> None:
    chat = api == "chat"
    adapter = OpenAIChatAdapter(threads) if chat else OpenAIResponsesAdapter(threads)
    thread_id = fresh_thread(threads)
    adapter.append_user(thread_id, "u1", "Weather in Milan and Bern?")
    if chat:
        call = chat_calls(("call_m", "weather", {"city": "Milan"}), ("call_b", "weather", {}))
    else:
        call = response(
            reasoning("two cities"),
            function_call("call_m", "weather", {}),
            function_call("call_b", "weather", {}),
        )
    adapter.append_assistant(thread_id, "a1", call)
    adapter.append_tool_result(thread_id, "r1", "call_m", "14 °C")
    adapter.append_user(thread_id, "u2", "Hello?")  # arrived before the second result
    adapter.append_tool_result(thread_id, "r2", "call_b", "9 °C")
    request = adapter.prepare(thread_id, model=MODEL)
    sent = request["messages"] if chat else request["input"]
    if chat:
        assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool", "user"]
        assert [m["tool_call_id"] for m in sent[2:4]] == ["call_m", "call_b"]
    else:
        assert [m.get("type") or m["role"] for m in sent] == [
            "user",
            "reasoning",
            "function_call",
            "function_call",
            "function_call_output",
            "function_call_output",
            "user",
        ]
        assert [m["call_id"] for m in sent[4:6]] == ["call_m", "call_b"]
    assert [r["id"] for r in threads.load(thread_id)] == ["u1", "a1", "r1", "u2", "r2"]


# -- tool-call integrity, both formats ---------------------------------------------------


@pytest.fixture(params=["chat", "responses"])
def dangling(request: pytest.FixtureRequest, threads: Threads) -> tuple[Any, str]:
    """A thread whose worker crashed between the model's tool call and its result;
    the user then wrote again."""
    adapter: Any
    thread_id = fresh_thread(threads)
    if request.param == "chat":
        adapter = OpenAIChatAdapter(threads)
        reply: Any = chat_calls(("call_lost", "get_weather", {"city": "Zurich"}))
    else:
        adapter = OpenAIResponsesAdapter(threads)
        reply = response(reasoning("weather"), function_call("call_lost", "get_weather", {}))
    adapter.set_system(thread_id, "Be brief.")
    adapter.append_user(thread_id, "u1", "Weather in Zurich?")
    adapter.append_assistant(thread_id, "a1", reply)
    adapter.append_user(thread_id, "u2", "Hello?")
    return adapter, thread_id


def test_integrity_error_raises_dangling_tool_call(dangling: tuple[Any, str]) -> None:
    adapter, thread_id = dangling
    with pytest.raises(DanglingToolCall, match="call_lost") as raised:
        adapter.prepare(thread_id, integrity="error", model=MODEL)
    assert raised.value.call_ids == ["call_lost"]


def test_integrity_repair_answers_the_call_with_an_error_right_after_it(
    dangling: tuple[Any, str],
) -> None:
    adapter, thread_id = dangling
    history = adapter.threads.load(thread_id)
    repaired = adapter.apply_integrity(thread_id, history, "repair")
    assert [r["id"] for r in repaired] == ["system", "u1", "a1", "a1:repaired:0", "u2"]
    error = repaired[3]["body"]
    if isinstance(adapter, OpenAIChatAdapter):
        assert error["role"] == "tool"
        assert error["tool_call_id"] == "call_lost"
        request = adapter.prepare(thread_id, model=MODEL)
        assert [m["role"] for m in request["messages"]] == [
            "system",
            "user",
            "assistant",
            "tool",
            "user",
        ]
    else:
        assert error["type"] == "function_call_output"
        assert error["call_id"] == "call_lost"
        request = adapter.prepare(thread_id, model=MODEL)
        assert [i.get("type") or i["role"] for i in request["input"]] == [
            "user",
            "reasoning",
            "function_call",
            "function_call_output",
            "user",
        ]
    assert error["output" if "output" in error else "content"].startswith("Error: ")
    assert adapter.threads.load(thread_id) == history, "the thread itself is unchanged"


def test_integrity_truncate_cuts_before_the_dangling_call(dangling: tuple[Any, str]) -> None:
    adapter, thread_id = dangling
    history = adapter.threads.load(thread_id)
    assert [r["id"] for r in adapter.apply_integrity(thread_id, history, "truncate")] == [
        "system",
        "u1",
    ]
    request = adapter.prepare(thread_id, integrity="truncate", model=MODEL)
    sent = request.get("messages") or request["input"]
    assert sent[-1] == {"role": "user", "content": "Weather in Zurich?"}


def test_repair_answers_each_kind_of_call_with_its_own_output_item(threads: Threads) -> None:
    adapter = OpenAIResponsesAdapter(threads)
    reply = [
        reasoning("several tools"),
        {"type": "custom_tool_call", "call_id": "c_sql", "name": "sql", "input": "SELECT 1"},
        {
            "type": "shell_call",
            "call_id": "c_sh",
            "action": {"commands": ["ls"]},
            "status": "completed",
        },
        {
            "type": "apply_patch_call",
            "call_id": "c_patch",
            "status": "completed",
            "operation": {"type": "delete_file", "path": "a.txt"},
        },
        function_call("c_fn", "f", {}),
    ]
    repaired = adapter.apply_integrity("t", records(reply), "repair")
    outputs = [r["body"] for r in repaired[1:]]
    assert [(o["type"], o["call_id"]) for o in outputs] == [
        ("custom_tool_call_output", "c_sql"),
        ("shell_call_output", "c_sh"),
        ("apply_patch_call_output", "c_patch"),
        ("function_call_output", "c_fn"),
    ]
    assert outputs[1]["output"][0]["outcome"] == {"type": "exit", "exit_code": 1}
    assert outputs[2]["status"] == "failed"
    assert adapter.dangling_tool_calls([*records(reply), *repaired[1:]]) == {}


def test_tool_results_are_text_or_content_parts(threads: Threads) -> None:
    chat = OpenAIChatAdapter(threads)
    responses = OpenAIResponsesAdapter(threads)
    assert chat.tool_result_body("c", {"booked": "EC 15", "seat": None}) == {
        "role": "tool",
        "tool_call_id": "c",
        "content": '{"booked": "EC 15", "seat": null}',
    }
    assert chat.tool_result_body("c", "boom", is_error=True)["content"] == "Error: boom"  # type: ignore[index]
    parts = [{"type": "input_text", "text": "a chart:"}, {"type": "input_image", "file_id": "f"}]
    assert responses.tool_result_body("c", parts) == {
        "type": "function_call_output",
        "call_id": "c",
        "output": parts,
    }
    assert responses.tool_result_body("c", [1, 2])["output"] == "[1, 2]"  # type: ignore[index]
    thread_id = fresh_thread(threads)
    responses.append_tool_result(thread_id, "r1", "c_sql", "1 row", kind="custom_tool_call")
    assert responses.messages(thread_id) == [
        {"type": "custom_tool_call_output", "call_id": "c_sql", "output": "1 row"}
    ]
    with pytest.raises(InvalidMessage, match="no Responses output answers"):
        responses.append_tool_result(thread_id, "r2", "x", "y", kind="web_search_call")


def test_unreadable_arguments_are_answered_with_an_error_and_the_tool_never_runs(
    threads: Threads,
) -> None:
    adapter = OpenAIChatAdapter(threads)
    thread_id = fresh_thread(threads)
    adapter.append_user(thread_id, "u1", "Weather?")
    threads.acquire_lease(thread_id, "turn-1", 60_000)  # the loop writes as the turn
    cut_off = chat_calls(("call_1", "get_weather", {}))
    cut_off["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = '{"city": "Zu'
    replies = [cut_off, chat_text("Sorry, which city?")]
    runs: list[Any] = []
    reply = adapter.run_agent(
        thread_id,
        "turn-1",
        lambda request: replies.pop(0),
        tool_handlers={"get_weather": lambda **kw: runs.append(kw)},
    )
    assert runs == []
    result = threads.get(thread_id, ["turn-1:tool:call_1"])["turn-1:tool:call_1"]["body"]
    assert isinstance(result, dict)
    assert result["content"].startswith("Error: the arguments are not valid JSON")
    assert reply.body == {
        "role": "assistant",
        "content": "Sorry, which city?",
        "refusal": None,
        "annotations": [],
    }


# -- the model turn through the real SDK client and the embedded worker -------------------------


class FakeOpenAI:
    """Answers POST /v1/responses and /v1/chat/completions with the scripted (status,
    JSON) responses in order (the last one repeats; an exception is raised as a
    transport failure) and keeps every request body it received."""

    def __init__(self, *responses: tuple[int, Any] | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        assert request.url.path in ("/v1/responses", "/v1/chat/completions")
        self.paths.append(request.url.path)
        self.requests.append(json.loads(request.content))
        answer = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return httpx2.Response(status, json=body, headers={"x-request-id": "req_test"})

    def client(self) -> openai.OpenAI:
        transport = httpx2.MockTransport(self)
        return openai.OpenAI(
            api_key="sk-test", http_client=httpx2.Client(transport=transport), max_retries=0
        )


@pytest.fixture
def app(celery_stack: Celery, redis_client: redis.Redis) -> Celery:
    """The configured app, with an empty hot tier (db 0 flushed) and an empty bucket."""
    cold = worker_threads().cold
    assert isinstance(cold, S3ColdStore)
    for item in cold.client.list_objects_v2(Bucket=cold.bucket).get("Contents", []):
        cold.client.delete_object(Bucket=cold.bucket, Key=item["Key"])
    assert "openai.run_turn" in celery_stack.tasks, "the shared_task binds to the app"
    return celery_stack


@pytest.fixture
def store(app: Celery) -> Threads:
    return worker_threads()


@pytest.fixture
def use_api(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeOpenAI], FakeOpenAI]:
    """``use_api(FakeOpenAI(...))``: the worker's model calls go to that fake (the
    worker runs in this process); the real factory is restored afterwards."""

    def use(api: FakeOpenAI) -> FakeOpenAI:
        client = api.client()
        monkeypatch.setattr(tasks.models.openai, "client_factory", lambda: client)
        return api

    return use


def run_turn_signature(app: Celery, **kwargs: Any) -> Any:
    return app.signature("openai.run_turn", kwargs={"model": MODEL, **kwargs})


def start_turn(store: Threads, thread_id: str, turn_id: str) -> None:
    """What agent_turn does before its run step: thread, lease, user message."""
    store.open(thread_id, "new")
    store.acquire_lease(thread_id, turn_id, 60_000)
    user = {"id": "u1", "body": {"role": "user", "content": "Hi"}}
    store.append(thread_id, [user], owner=turn_id)


def test_an_agent_turn_calls_the_responses_api_and_stores_the_reply_once(
    app: Celery, store: Threads, use_api: Any
) -> None:
    reply = response(reasoning("simple"), output_message("Take the 07:33."))
    api = use_api(FakeOpenAI((200, reply)))
    new = [
        {"id": "system", "body": {"role": "system", "content": "You are a travel agent."}},
        {"id": "u1", "body": {"role": "user", "content": "A train to Milan?"}},
    ]
    turn = agent_turn("t1", new, run_turn_signature(app), turn_id="turn-1", mode="new")
    flushed = turn.apply_async()
    assert flushed.get(timeout=TIMEOUT)["status"] == "archived"
    assert flushed.parent.get(timeout=TIMEOUT) == {
        "reply_id": "turn-1:0:assistant",
        "body": reply["output"],
        "model_calls": 1,
    }
    assert store.load("t1") == [*new, {"id": "turn-1:0:assistant", "body": reply["output"]}]
    assert api.paths == ["/v1/responses"]
    assert api.requests == [
        {
            "model": MODEL,
            "input": [{"role": "user", "content": "A train to Milan?"}],
            "instructions": "You are a travel agent.",
            "store": False,
            "include": ["reasoning.encrypted_content"],
        }
    ]
    status = store.turns.status("t1", "turn-1")
    assert status is not None
    assert [(u["input_tokens"], u["reasoning_tokens"], u["model"]) for u in status.usage] == [
        (328, 128, MODEL)
    ]


def test_a_redelivered_chat_turn_neither_calls_the_model_again_nor_doubles_the_reply(
    app: Celery, store: Threads, use_api: Any
) -> None:
    api = use_api(FakeOpenAI((200, chat_text("Once."))))
    start_turn(store, "t1", "turn-1")
    signature = run_turn_signature(app, thread_id="t1", turn_id="turn-1", api="chat")
    first = signature.apply_async().get(timeout=TIMEOUT)
    again = signature.apply_async().get(timeout=TIMEOUT)  # the run step delivered again
    assert again == first
    assert first["body"] == {
        "role": "assistant",
        "content": "Once.",
        "refusal": None,
        "annotations": [],
    }
    assert [m["id"] for m in store.load("t1")] == ["u1", "turn-1:0:assistant"]
    assert api.paths == ["/v1/chat/completions"]
    assert api.requests[0]["messages"] == [{"role": "user", "content": "Hi"}]


RATE_LIMITED = api_error(
    429,
    "Rate limit reached for gpt-5.5 in organization org-test on requests per min (RPM): "
    "Limit 500, Used 500, Requested 1. Please try again in 120ms.",
    "requests",
    "rate_limit_exceeded",
)


@pytest.mark.parametrize(
    "failure",
    [
        RATE_LIMITED,
        api_error(
            500, "The server had an error while processing your request.", "server_error", None
        ),
        api_error(
            503, "The engine is currently overloaded, please try again later", "server_error", None
        ),
        httpx2.ConnectError("connection refused"),
    ],
    ids=["429", "500", "503", "connection"],
)
def test_a_transient_failure_is_retried_by_celery_then_succeeds(
    app: Celery, store: Threads, use_api: Any, failure: Any
) -> None:
    api = use_api(FakeOpenAI(failure, (200, response(output_message("After the wait.")))))
    start_turn(store, "t1", "turn-1")
    result = run_turn_signature(app, thread_id="t1", turn_id="turn-1").apply_async()
    got = result.get(timeout=TIMEOUT)
    assert got["body"][0]["content"][0]["text"] == "After the wait."
    assert result.retries >= 1
    assert len(api.requests) == 2
    assert [m["id"] for m in store.load("t1")] == ["u1", "turn-1:0:assistant"]


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (
            api_error(
                400,
                "Invalid 'max_output_tokens': integer below minimum value.",
                "invalid_request_error",
                "integer_below_min_value",
            ),
            "BadRequestError",
        ),
        (
            api_error(
                401,
                "Incorrect API key provided: sk-test.",
                "invalid_request_error",
                "invalid_api_key",
            ),
            "AuthenticationError",
        ),
        (
            api_error(
                404, "The model `gpt-9` does not exist.", "invalid_request_error", "model_not_found"
            ),
            "NotFoundError",
        ),
        (
            api_error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            ),
            "RateLimitError",
        ),
    ],
    ids=["400", "401", "404", "429-quota"],
)
def test_a_refused_request_fails_at_once_with_no_reply_appended(
    app: Celery, store: Threads, use_api: Any, failure: tuple[int, Any], error: str
) -> None:
    api = use_api(FakeOpenAI(failure))
    start_turn(store, "t1", "turn-1")
    result = run_turn_signature(app, thread_id="t1", turn_id="turn-1", api="chat").apply_async()
    # Celery cannot rebuild the SDK's exception on this side (its constructor needs the
    # HTTP response): the caller sees its message, under the nearest class it can rebuild.
    with pytest.raises(Exception, match=f"Error code: {failure[0]} - "):
        result.get(timeout=TIMEOUT)
    assert result.retries == 0
    with pytest.raises(getattr(openai, error)):  # what the SDK raised in the task
        FakeOpenAI(failure).client().chat.completions.create(model=MODEL, messages=[])
    assert len(api.requests) == 1
    assert [m["id"] for m in store.load("t1")] == ["u1"]


def test_the_servers_retry_hint_overrides_the_status() -> None:
    request = httpx2.Request("POST", "https://api.openai.com/v1/responses")

    def error(status: int, hint: str | None, code: str | None = None) -> openai.APIStatusError:
        headers = {"x-should-retry": hint} if hint else {}
        reply = httpx2.Response(status, headers=headers, request=request)
        body = {"message": "m", "type": "t", "code": code}
        return openai.OpenAI(api_key="k")._make_status_error("m", body=body, response=reply)

    assert tasks.models.openai.is_transient(error(409, None))
    assert tasks.models.openai.is_transient(error(408, None))
    assert not tasks.models.openai.is_transient(error(500, "false"))
    assert tasks.models.openai.is_transient(error(400, "true"))
    assert not tasks.models.openai.is_transient(error(422, None))
    assert not tasks.models.openai.is_transient(error(429, None, "insufficient_quota"))
    assert tasks.models.openai.is_transient(openai.APITimeoutError(request))
    assert not tasks.models.openai.is_transient(ValueError("not an API error"))


# -- the agent loop: tool calls run once each ------------------------------------------------------

# The embedded worker runs in this process: the tools and the test share these counts.
TOOL_RUNS: list[tuple[str, Any]] = []
KILLS: list[BaseException] = []


class WorkerKilled(BaseException):
    """Stands for a worker dying inside a tool (after its begin, before its result):
    a BaseException, so the agent loop does not turn it into an error result."""


@tool("openai_weather")
def weather(city: str) -> str:
    TOOL_RUNS.append(("openai_weather", city))
    return f"14 °C in {city}"


@tool("openai_book")
def book(train: str) -> dict[str, Any]:
    TOOL_RUNS.append(("openai_book", train))
    if KILLS:
        raise KILLS.pop()
    return {"booked": train}


@tool("openai_sql")
def sql(query: str) -> str:
    TOOL_RUNS.append(("openai_sql", query))
    return "1 row"


LOOP_TOOLS = ["openai_weather", "openai_book", "openai_sql"]
LOOP_IDS = [
    "u1",
    "turn-1:0:assistant",
    "turn-1:tool:call_w",
    "turn-1:tool:call_b",
    "turn-1:1:assistant",
]


@pytest.fixture
def looping(store: Threads) -> Threads:
    """Empty tool counts, and the thread t1 of turn-1 ready (lease, user message, record)."""
    TOOL_RUNS.clear()
    KILLS.clear()
    start_turn(store, "t1", "turn-1")
    store.turns.submit("t1", "turn-1", steps=["run"], spec={}, lease_ms=20_000)
    return store


def loop_signature(app: Celery, **kwargs: Any) -> Any:
    return run_turn_signature(app, thread_id="t1", turn_id="turn-1", run_tools=LOOP_TOOLS, **kwargs)


def test_a_chat_turn_runs_both_tool_calls_once_and_stores_every_step(
    app: Celery, looping: Threads, use_api: Any
) -> None:
    calls = chat_calls(
        ("call_w", "openai_weather", {"city": "Milan"}),
        ("call_b", "openai_book", {"train": "EC 15"}),
    )
    api = use_api(FakeOpenAI((200, calls), (200, chat_text("Booked the EC 15."))))
    result = loop_signature(app, api="chat").apply_async().get(timeout=TIMEOUT)
    assert (result["reply_id"], result["model_calls"]) == ("turn-1:1:assistant", 2)
    assert result["body"]["content"] == "Booked the EC 15."
    assert TOOL_RUNS == [("openai_weather", "Milan"), ("openai_book", "EC 15")]
    assert [m["id"] for m in looping.load("t1")] == LOOP_IDS
    assert api.requests[1]["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": calls["choices"][0]["message"]["tool_calls"],
        },
        {"role": "tool", "tool_call_id": "call_w", "content": "14 °C in Milan"},
        {"role": "tool", "tool_call_id": "call_b", "content": '{"booked": "EC 15"}'},
    ]
    status = looping.turns.status("t1", "turn-1")
    assert status is not None
    assert [u["call"] for u in status.usage] == ["0", "1"]
    assert status.tools == {
        "call_w": {"runs": 1, "done": True},
        "call_b": {"runs": 1, "done": True},
    }

    again = loop_signature(app, api="chat").apply_async().get(timeout=TIMEOUT)  # redelivered
    assert again == result
    assert len(api.requests) == 2, "no model call for a stored reply"
    assert len(TOOL_RUNS) == 2, "no tool runs again whose result is stored"
    assert [m["id"] for m in looping.load("t1")] == LOOP_IDS


RESPONSES_CALLS = response(
    reasoning("**Planning**\n\nWeather first, then book.", "rs_loop"),
    function_call("call_w", "openai_weather", {"city": "Milan"}),
    {
        "id": "ctc_sql",
        "type": "custom_tool_call",
        "status": "completed",
        "call_id": "call_s",
        "name": "openai_sql",
        "input": "SELECT seats FROM ec15",
    },
)


def test_a_responses_turn_sends_the_reasoning_back_with_its_calls_and_their_outputs(
    app: Celery, looping: Threads, use_api: Any
) -> None:
    final = response(reasoning("done", "rs_final"), output_message("Booked."))
    api = use_api(FakeOpenAI((200, RESPONSES_CALLS), (200, final)))
    result = loop_signature(app).apply_async().get(timeout=TIMEOUT)
    assert (result["reply_id"], result["body"]) == ("turn-1:1:assistant", final["output"])
    assert TOOL_RUNS == [("openai_weather", "Milan"), ("openai_sql", "SELECT seats FROM ec15")]
    assert api.requests[1]["input"] == [
        {"role": "user", "content": "Hi"},
        *RESPONSES_CALLS["output"],  # the reasoning with its encrypted content, as given
        {"type": "function_call_output", "call_id": "call_w", "output": "14 °C in Milan"},
        {"type": "custom_tool_call_output", "call_id": "call_s", "output": "1 row"},
    ]
    again = loop_signature(app).apply_async().get(timeout=TIMEOUT)
    assert again == result
    assert len(api.requests) == 2
    assert len(TOOL_RUNS) == 2
    ids = [m["id"] for m in looping.load("t1")]
    assert ids == [*LOOP_IDS[:3], "turn-1:tool:call_s", LOOP_IDS[4]]


@pytest.mark.parametrize("on_interrupted", ["rerun", "error"])
def test_a_turn_killed_inside_a_tool_resumes_without_repeating_stored_steps(
    app: Celery, looping: Threads, use_api: Any, on_interrupted: str
) -> None:
    calls = response(
        reasoning("book it", "rs_k"),
        function_call("call_w", "openai_weather", {"city": "Milan"}),
        function_call("call_b", "openai_book", {"train": "EC 15"}),
    )
    api = use_api(FakeOpenAI((200, calls), (200, response(output_message("Done.")))))
    KILLS.append(WorkerKilled("the worker died in the booking call"))
    task = app.tasks["openai.run_turn"]
    with pytest.raises(WorkerKilled):  # the first execution, in this process
        task(
            thread_id="t1",
            turn_id="turn-1",
            model=MODEL,
            run_tools=LOOP_TOOLS,
            on_interrupted=on_interrupted,
        )
    assert [m["id"] for m in looping.load("t1")] == LOOP_IDS[:3]
    assert len(api.requests) == 1

    result = loop_signature(app, on_interrupted=on_interrupted).apply_async().get(timeout=TIMEOUT)
    assert result["reply_id"] == "turn-1:1:assistant"
    assert len(api.requests) == 2, "the stored first reply was not asked for again"
    assert [m["id"] for m in looping.load("t1")] == LOOP_IDS
    status = looping.turns.status("t1", "turn-1")
    assert status is not None
    assert status.tools["call_w"] == {"runs": 1, "done": True}
    assert status.tools["call_b"] == {"runs": 2, "done": True}
    booked = looping.get("t1", ["turn-1:tool:call_b"])["turn-1:tool:call_b"]["body"]
    assert isinstance(booked, dict)
    if on_interrupted == "rerun":  # the interrupted call ran again, the finished one did not
        assert TOOL_RUNS == [
            ("openai_weather", "Milan"),
            ("openai_book", "EC 15"),
            ("openai_book", "EC 15"),
        ]
        assert booked["output"] == '{"booked": "EC 15"}'
    else:  # a tool whose side effect must not happen twice is answered with an error
        assert TOOL_RUNS == [("openai_weather", "Milan"), ("openai_book", "EC 15")]
        assert booked["output"].startswith("Error: ")
        assert "interrupted" in booked["output"]
    assert api.requests[1]["input"][-2:] == [
        {"type": "function_call_output", "call_id": "call_w", "output": "14 °C in Milan"},
        {"type": "function_call_output", "call_id": "call_b", "output": booked["output"]},
    ]


def test_the_task_refuses_an_unknown_api_before_calling_anything(
    app: Celery, store: Threads, use_api: Any
) -> None:
    api = use_api(FakeOpenAI((200, chat_text("never"))))
    start_turn(store, "t1", "turn-1")
    result = run_turn_signature(app, thread_id="t1", turn_id="turn-1", api="completions")
    with pytest.raises(Exception, match="api is 'responses' or 'chat'"):
        result.apply_async().get(timeout=TIMEOUT)
    assert api.requests == []
    assert [m["id"] for m in store.load("t1")] == ["u1"]
