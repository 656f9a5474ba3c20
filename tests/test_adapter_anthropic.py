"""The Anthropic adapter: lossless bodies, request building, tool-call integrity, and
the model-turn task through the real SDK client (its HTTP answered by a mock
transport) on the embedded Celery worker.

The SDK (2.x) sends through ``httpx2``, not ``httpx``: its client refuses an
``httpx.Client``, so the mock transport is ``httpx2.MockTransport``."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tasks.models.anthropic
from adapters.anthropic import MAX_CACHE_BREAKPOINTS, AnthropicAdapter
from adapters.base import DanglingToolCall, ToolCall
from adapters.tools import tool
from storage.cold import S3ColdStore
from storage.records import Message
from storage.tiered import Threads
from tasks.app import threads as worker_threads
from tasks.turns import agent_turn

TIMEOUT = 60
MODEL = "claude-test-model"

# -- strategies: MessageParams over every block type ---------------------------------

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12).map(
    lambda s: f"toolu_{s}"
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=8,
)
cache_controls = st.sampled_from(
    [{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "5m"}, {"type": "ephemeral", "ttl": "1h"}]
)


def with_cache_control(block: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Any]:
    def add(pair: tuple[dict[str, Any], dict[str, Any] | None]) -> dict[str, Any]:
        content, cache = pair
        return content if cache is None else {**content, "cache_control": cache}

    return st.tuples(block, st.none() | cache_controls).map(add)


text_blocks = with_cache_control(st.fixed_dictionaries({"type": st.just("text"), "text": texts}))
image_blocks = with_cache_control(
    st.fixed_dictionaries(
        {
            "type": st.just("image"),
            "source": st.fixed_dictionaries(
                {
                    "type": st.just("base64"),
                    "media_type": st.sampled_from(
                        ["image/png", "image/jpeg", "image/gif", "image/webp"]
                    ),
                    "data": st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()),
                }
            ),
        }
    )
)
tool_use_blocks = with_cache_control(
    st.fixed_dictionaries(
        {
            "type": st.just("tool_use"),
            "id": ids,
            "name": st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,20}", fullmatch=True),
            "input": st.dictionaries(texts, json_values, max_size=4),
        }
    )
)
tool_result_blocks = with_cache_control(
    st.fixed_dictionaries(
        {
            "type": st.just("tool_result"),
            "tool_use_id": ids,
            "content": texts | st.lists(text_blocks | image_blocks, max_size=3),
        },
        optional={"is_error": st.booleans()},
    )
)
thinking_blocks = st.fixed_dictionaries(
    {"type": st.just("thinking"), "thinking": texts, "signature": texts}
)
redacted_thinking_blocks = st.fixed_dictionaries(
    {"type": st.just("redacted_thinking"), "data": texts}
)
any_block = (
    text_blocks
    | image_blocks
    | tool_use_blocks
    | tool_result_blocks
    | thinking_blocks
    | redacted_thinking_blocks
)
message_params = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant"]),
        "content": texts | st.lists(any_block, min_size=1, max_size=5),
    }
)

hypothesis_with_fixtures = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50, deadline=None
)


def fresh_thread(threads: Threads) -> str:
    """Hypothesis reuses the function's fixtures across examples: one thread each."""
    thread_id = f"t-{uuid.uuid4().hex}"
    threads.open(thread_id, "new")
    return thread_id


def records(*bodies: dict[str, Any]) -> list[Message]:
    return [{"id": f"m{n}", "body": body} for n, body in enumerate(bodies)]


def count_cache_control(value: Any) -> int:
    if isinstance(value, dict):
        own = 1 if "cache_control" in value else 0
        return own + sum(count_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return sum(count_cache_control(v) for v in value)
    return 0


# -- lossless round trips ----------------------------------------------------------------


@hypothesis_with_fixtures
@given(messages=st.lists(message_params, min_size=1, max_size=6))
def test_every_block_type_round_trips_through_the_store_unchanged(
    threads: Threads, messages: list[dict[str, Any]]
) -> None:
    adapter = AnthropicAdapter(threads)
    thread_id = fresh_thread(threads)
    for n, message in enumerate(messages):
        adapter.append_message(thread_id, f"m{n}", message)
    assert adapter.messages(thread_id) == messages


@hypothesis_with_fixtures
@given(system=texts, messages=st.lists(message_params, max_size=3))
def test_system_prompt_round_trips_and_stays_first(
    threads: Threads, system: str, messages: list[dict[str, Any]]
) -> None:
    adapter = AnthropicAdapter(threads)
    thread_id = fresh_thread(threads)
    for n, message in enumerate(messages):
        adapter.append_message(thread_id, f"m{n}", message)
    adapter.set_system(thread_id, system)
    stored = adapter.messages(thread_id)
    assert stored == [{"role": "system", "content": system}, *messages]
    assert adapter.role(stored[0]) == "system"


SDK_RESPONSE: dict[str, Any] = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "The user wants the weather.", "signature": "EqQBCgIYAh"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
        {"type": "text", "text": "Let me check the weather.", "citations": None},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "Zurich", "unit": None},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 412, "output_tokens": 87},
}


def test_an_sdk_response_message_is_stored_as_its_message_param(threads: Threads) -> None:
    adapter = AnthropicAdapter(threads)
    thread_id = fresh_thread(threads)
    response = anthropic.types.Message.model_validate(SDK_RESPONSE)
    adapter.append_assistant(thread_id, "a1", response)
    adapter.append_tool_result(thread_id, "r1", "toolu_01A09q90qw90lq917835lq9", "14 °C, cloudy")
    stored = adapter.messages(thread_id)
    assert stored[0] == {
        "role": "assistant",
        "content": [
            {
                "type": "thinking",
                "thinking": "The user wants the weather.",
                "signature": "EqQBCgIYAh",
            },
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"},
            {"type": "text", "text": "Let me check the weather."},  # no citations: None
            {
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": "get_weather",
                "input": {"location": "Zurich", "unit": None},  # None inside input is data
            },
        ],
    }
    assert stored[1] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                "content": "14 °C, cloudy",
            }
        ],
    }
    # a MessageParam holding the SDK's block objects is stored the same way
    adapter.append_message(thread_id, "a2", {"role": "assistant", "content": response.content})
    assert adapter.messages(thread_id)[2] == stored[0]
    assert adapter.tool_call_ids(stored[0]) == ["toolu_01A09q90qw90lq917835lq9"]
    assert adapter.tool_result_ids(stored[1]) == ["toolu_01A09q90qw90lq917835lq9"]


def test_non_messages_are_refused_before_anything_is_written(threads: Threads) -> None:
    adapter = AnthropicAdapter(threads)
    thread_id = fresh_thread(threads)
    with pytest.raises(ValueError, match="role"):
        adapter.append_message(thread_id, "m1", {"role": "tool", "content": "x"})
    with pytest.raises(ValueError, match="only 'role' and 'content'"):
        adapter.append_message(thread_id, "m1", {"role": "user", "content": "x", "id": "m1"})
    with pytest.raises(ValueError, match="MessageParam"):
        adapter.append_message(thread_id, "m1", "just text")
    assert threads.load(thread_id) == []


# -- build_request -----------------------------------------------------------------------


def test_build_request_lifts_the_system_prompt_out_of_messages(threads: Threads) -> None:
    adapter = AnthropicAdapter(threads)
    history = records(
        {"role": "system", "content": "You are a travel agent."},
        {"role": "user", "content": "A train to Milan?"},
        {"role": "assistant", "content": "The 07:33."},
    )
    request = adapter.build_request(history, model=MODEL, max_tokens=256, temperature=0.2)
    assert request == {
        "model": MODEL,
        "max_tokens": 256,
        "system": "You are a travel agent.",
        "messages": [
            {"role": "user", "content": "A train to Milan?"},
            {"role": "assistant", "content": "The 07:33."},
        ],
        "temperature": 0.2,
    }
    no_system = adapter.build_request(history[1:], model=MODEL, max_tokens=256)
    assert "system" not in no_system


def test_build_request_merges_consecutive_messages_of_one_role(threads: Threads) -> None:
    adapter = AnthropicAdapter(threads)
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "x"}}
    history = records(
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
        {"role": "assistant", "content": [tool_use]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
        {"role": "user", "content": "and then?"},
    )
    before = json.dumps(history)
    tools = [{"name": "search", "description": "web", "input_schema": {"type": "object"}}]
    request = adapter.build_request(history, model=MODEL, max_tokens=64, tools=tools)
    assert request["tools"] == tools
    assert request["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
        },
        {"role": "assistant", "content": [tool_use]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1"},
                {"type": "text", "text": "and then?"},
            ],
        },
    ]
    assert json.dumps(history) == before, "build_request must not change the stored bodies"


def test_cache_breakpoints_mark_the_last_messages_and_never_exceed_four(
    threads: Threads,
) -> None:
    adapter = AnthropicAdapter(threads)
    history = records(
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "three", "cache_control": {"type": "ephemeral"}}],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "four"},
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
            ],
        },
    )
    request = adapter.build_request(history, model=MODEL, max_tokens=64, cache_breakpoints=2)
    messages = request["messages"]
    # the last message's last *cacheable* block (thinking cannot carry cache_control)
    assert messages[3]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in messages[3]["content"][1]
    assert messages[2]["content"][0]["cache_control"] == {"type": "ephemeral"}  # already was
    assert count_cache_control(messages) == 2
    assert "cache_control" not in json.dumps(history[3]), "stored bodies stay unmarked"

    system = {
        "role": "system",
        "content": [
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}},
        ],
    }
    capped = adapter.build_request(
        [{"id": "system", "body": system}, *history],
        model=MODEL,
        max_tokens=64,
        cache_breakpoints=10,
    )
    assert count_cache_control(capped) == MAX_CACHE_BREAKPOINTS
    # one new breakpoint fit: on the last message; "three" already had one
    assert [count_cache_control(m) for m in capped["messages"]] == [0, 0, 1, 1]


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(message_params, min_size=1, max_size=8), wanted=st.integers(0, 8))
def test_cache_breakpoints_never_push_a_request_over_the_limit(
    messages: list[dict[str, Any]], wanted: int
) -> None:
    adapter = AnthropicAdapter.__new__(AnthropicAdapter)  # build_request needs no storage
    history = records(*messages)
    stored = count_cache_control(messages)
    request = adapter.build_request(history, model=MODEL, max_tokens=8, cache_breakpoints=wanted)
    total = count_cache_control(request["messages"])
    assert stored <= total <= max(stored, MAX_CACHE_BREAKPOINTS)
    if stored + wanted <= MAX_CACHE_BREAKPOINTS:
        assert total <= stored + wanted


# -- tool-call integrity -----------------------------------------------------------------


@pytest.fixture
def dangling(threads: Threads) -> tuple[AnthropicAdapter, str]:
    """A thread whose worker crashed between the model's tool call and its result;
    the user then wrote again."""
    adapter = AnthropicAdapter(threads)
    thread_id = fresh_thread(threads)
    adapter.set_system(thread_id, "Be brief.")
    adapter.append_user(thread_id, "u1", "Weather in Zurich?")
    call = {"type": "tool_use", "id": "toolu_lost", "name": "get_weather", "input": {}}
    adapter.append_message(
        thread_id, "a1", {"role": "assistant", "content": [{"type": "text", "text": "…"}, call]}
    )
    adapter.append_user(thread_id, "u2", "Hello?")
    return adapter, thread_id


def test_integrity_error_raises_dangling_tool_call(
    dangling: tuple[AnthropicAdapter, str],
) -> None:
    adapter, thread_id = dangling
    with pytest.raises(DanglingToolCall, match="toolu_lost") as raised:
        adapter.prepare(thread_id, integrity="error", model=MODEL, max_tokens=64)
    assert raised.value.call_ids == ["toolu_lost"]


def test_integrity_repair_answers_the_call_with_an_error_right_after_it(
    dangling: tuple[AnthropicAdapter, str],
) -> None:
    adapter, thread_id = dangling
    history = adapter.threads.load(thread_id)
    repaired = adapter.apply_integrity(thread_id, history, "repair")
    assert [r["id"] for r in repaired][:3] == ["system", "u1", "a1"]
    assert repaired[3]["id"].startswith("a1:repaired")
    assert [r["id"] for r in repaired][4:] == ["u2"]
    error = repaired[3]["body"]
    assert isinstance(error, dict)
    assert error["role"] == "user"
    assert error["content"][0]["tool_use_id"] == "toolu_lost"
    assert error["content"][0]["is_error"] is True
    request = adapter.prepare(thread_id, integrity="repair", model=MODEL, max_tokens=64)
    last = request["messages"][-1]
    assert last["role"] == "user"  # the synthetic result and "Hello?" merged, result first
    assert [b["type"] for b in last["content"]] == ["tool_result", "text"]
    assert adapter.threads.load(thread_id) == history, "the thread itself is unchanged"


def test_integrity_truncate_cuts_before_the_dangling_call(
    dangling: tuple[AnthropicAdapter, str],
) -> None:
    adapter, thread_id = dangling
    history = adapter.threads.load(thread_id)
    assert [r["id"] for r in adapter.apply_integrity(thread_id, history, "truncate")] == [
        "system",
        "u1",
    ]
    request = adapter.prepare(thread_id, integrity="truncate", model=MODEL, max_tokens=64)
    assert request["system"] == "Be brief."
    assert request["messages"] == [{"role": "user", "content": "Weather in Zurich?"}]


# -- the model turn through the real SDK client and the embedded worker -------------------


def api_message(text: str, message_id: str = "msg_01") -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 21, "output_tokens": 9},
    }


def api_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class FakeMessagesAPI:
    """Answers POST /v1/messages with the scripted (status, JSON) responses in order
    (the last one repeats) and keeps every request body it received."""

    def __init__(self, *responses: tuple[int, dict[str, Any]]) -> None:
        self.responses = list(responses)
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/messages"
        self.requests.append(json.loads(request.content))
        status, body = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        return httpx2.Response(status, json=body, headers={"request-id": "req_test"})

    def client(self) -> anthropic.Anthropic:
        transport = httpx2.MockTransport(self)
        return anthropic.Anthropic(
            api_key="test", http_client=httpx2.Client(transport=transport), max_retries=0
        )


@pytest.fixture
def app(celery_stack: Celery, redis_client: redis.Redis) -> Celery:
    """The configured app, with an empty hot tier (db 0 flushed) and an empty bucket."""
    cold = worker_threads().cold
    assert isinstance(cold, S3ColdStore)
    for item in cold.client.list_objects_v2(Bucket=cold.bucket).get("Contents", []):
        cold.client.delete_object(Bucket=cold.bucket, Key=item["Key"])
    return celery_stack


@pytest.fixture
def store(app: Celery) -> Threads:
    return worker_threads()


@pytest.fixture
def use_api(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeMessagesAPI], FakeMessagesAPI]:
    """``use_api(FakeMessagesAPI(...))``: the worker's model calls go to that fake
    (the worker runs in this process); the real factory is restored afterwards."""

    def use(api: FakeMessagesAPI) -> FakeMessagesAPI:
        client = api.client()
        monkeypatch.setattr(tasks.models.anthropic, "client_factory", lambda: client)
        return api

    return use


def run_turn_signature(app: Celery, **kwargs: Any) -> Any:
    return app.signature("adapters.anthropic.run_turn", kwargs={"model": MODEL, **kwargs})


def test_an_agent_turn_calls_the_messages_api_and_stores_the_reply_once(
    app: Celery, store: Threads, use_api: Any
) -> None:
    api = use_api(FakeMessagesAPI((200, api_message("Take the 07:33."))))
    new = [
        {"id": "system", "body": {"role": "system", "content": "You are a travel agent."}},
        {"id": "u1", "body": {"role": "user", "content": "A train to Milan?"}},
    ]
    turn = agent_turn("t1", new, run_turn_signature(app), turn_id="turn-1", mode="new")
    flushed = turn.apply_async()
    assert flushed.get(timeout=TIMEOUT)["status"] == "archived"
    reply = {"role": "assistant", "content": [{"type": "text", "text": "Take the 07:33."}]}
    assert flushed.parent.get(timeout=TIMEOUT) == {
        "reply_id": "turn-1:0:assistant",
        "body": reply,
        "model_calls": 1,
    }
    assert store.load("t1") == [*new, {"id": "turn-1:0:assistant", "body": reply}]
    assert api.requests == [
        {
            "model": MODEL,
            "max_tokens": 1024,
            "system": "You are a travel agent.",
            "messages": [{"role": "user", "content": "A train to Milan?"}],
        }
    ]


def test_a_redelivered_turn_neither_calls_the_model_again_nor_doubles_the_reply(
    app: Celery, store: Threads, use_api: Any
) -> None:
    api = use_api(FakeMessagesAPI((200, api_message("Once."))))
    new = [{"id": "u1", "body": {"role": "user", "content": "Hi"}}]
    turn = agent_turn("t1", new, run_turn_signature(app), turn_id="turn-1", mode="new")
    flushed = turn.apply_async()
    flushed.get(timeout=TIMEOUT)
    # The turn's run step delivered again (the record drops a duplicate of a step of
    # an ended turn before it runs, so this is the task body running a second time).
    again = run_turn_signature(app, thread_id="t1", turn_id="turn-1").apply_async()
    assert again.get(timeout=TIMEOUT) == flushed.parent.get(timeout=TIMEOUT)
    assert [m["id"] for m in store.load("t1")] == ["u1", "turn-1:0:assistant"]
    assert len(api.requests) == 1


def start_turn(store: Threads, thread_id: str, turn_id: str) -> None:
    """What agent_turn does before its run step: thread, lease, user message."""
    store.open(thread_id, "new")
    store.acquire_lease(thread_id, turn_id, 60_000)
    user = {"id": "u1", "body": {"role": "user", "content": "Hi"}}
    store.append(thread_id, [user], owner=turn_id)


def test_a_rate_limited_call_is_retried_by_celery_then_succeeds(
    app: Celery, store: Threads, use_api: Any
) -> None:
    api = use_api(
        FakeMessagesAPI(
            (429, api_error("rate_limit_error", "Number of requests has exceeded your limit")),
            (200, api_message("After the wait.")),
        )
    )
    start_turn(store, "t1", "turn-1")
    result = run_turn_signature(app, thread_id="t1", turn_id="turn-1").apply_async()
    assert result.get(timeout=TIMEOUT)["body"]["content"][0]["text"] == "After the wait."
    assert result.retries >= 1
    assert len(api.requests) == 2
    assert [m["id"] for m in store.load("t1")] == ["u1", "turn-1:0:assistant"]


def test_an_overloaded_api_is_retried_too(app: Celery, store: Threads, use_api: Any) -> None:
    assert issubclass(anthropic.OverloadedError, anthropic.InternalServerError)
    use_api(
        FakeMessagesAPI(
            (529, api_error("overloaded_error", "Overloaded")), (200, api_message("Back."))
        )
    )
    start_turn(store, "t1", "turn-1")
    result = run_turn_signature(app, thread_id="t1", turn_id="turn-1").apply_async()
    assert result.get(timeout=TIMEOUT)["reply_id"] == "turn-1:0:assistant"
    assert result.retries >= 1


def test_a_bad_request_fails_at_once_without_retries(
    app: Celery, store: Threads, use_api: Any
) -> None:
    api = use_api(
        FakeMessagesAPI((400, api_error("invalid_request_error", "max_tokens: too large")))
    )
    start_turn(store, "t1", "turn-1")
    result = run_turn_signature(app, thread_id="t1", turn_id="turn-1").apply_async()
    # Celery cannot rebuild the SDK's exception on this side (its constructor needs the
    # HTTP response), so the caller sees its class name and message; the task's own
    # traceback names the SDK class.
    with pytest.raises(Exception, match=r"BadRequestError.*max_tokens: too large"):
        result.get(timeout=TIMEOUT)
    assert result.retries == 0
    assert "anthropic.BadRequestError" in (result.traceback or "")
    assert len(api.requests) == 1
    assert [m["id"] for m in store.load("t1")] == ["u1"]


# -- the agent loop: tool calls run once each, through the real SDK client -----------------


def test_tool_calls_and_usage_are_read_from_sdk_objects_and_api_json(threads: Threads) -> None:
    adapter = AnthropicAdapter(threads)
    response = anthropic.types.Message.model_validate(SDK_RESPONSE)
    call_id = "toolu_01A09q90qw90lq917835lq9"
    assert adapter.tool_calls(adapter.to_body(response)) == [
        ToolCall(call_id, "get_weather", {"location": "Zurich", "unit": None})
    ]
    assert adapter.tool_calls({"role": "assistant", "content": "no tools"}) == []
    usage = {"input_tokens": 412, "output_tokens": 87, "model": "claude-sonnet-4-5"}
    assert adapter.usage(response) == usage
    assert adapter.usage(SDK_RESPONSE) == usage
    cached = {**SDK_RESPONSE, "usage": {**SDK_RESPONSE["usage"], "cache_read_input_tokens": 9}}
    assert adapter.usage(anthropic.types.Message.model_validate(cached)) == {
        **usage,
        "cache_read_input_tokens": 9,
    }
    assert adapter.usage({"role": "assistant", "content": "a MessageParam has none"}) is None


# The embedded worker runs in this process: the tools and the test share these counts.
TOOL_RUNS: list[tuple[str, Any]] = []
KILLS: list[BaseException] = []


class WorkerKilled(BaseException):
    """Stands for a worker dying inside a tool (after its begin, before its result):
    a BaseException, so the agent loop does not turn it into an error result."""


@tool("anthropic_weather")
def weather(city: str) -> str:
    TOOL_RUNS.append(("anthropic_weather", city))
    return f"14 °C in {city}"


@tool("anthropic_book")
def book(train: str) -> dict[str, Any]:
    TOOL_RUNS.append(("anthropic_book", train))
    if KILLS:
        raise KILLS.pop()
    return {"booked": train}


def tool_use_message(*calls: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
    return {
        **api_message("", "msg_tools"),
        "content": [
            {"type": "text", "text": "Let me check."},
            *({"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls),
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 30, "output_tokens": 12},
    }


TWO_TOOLS = tool_use_message(
    ("toolu_w", "anthropic_weather", {"city": "Milan"}),
    ("toolu_b", "anthropic_book", {"train": "EC 15"}),
)
SCHEMAS = [
    {"name": "anthropic_weather", "input_schema": {"type": "object"}},
    {"name": "anthropic_book", "input_schema": {"type": "object"}},
]
LOOP_IDS = [
    "u1",
    "turn-1:0:assistant",
    "turn-1:tool:toolu_w",
    "turn-1:tool:toolu_b",
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
    return run_turn_signature(
        app,
        thread_id="t1",
        turn_id="turn-1",
        tools=SCHEMAS,
        run_tools=["anthropic_weather", "anthropic_book"],
        **kwargs,
    )


def test_a_turn_runs_both_tool_calls_once_and_stores_every_step(
    app: Celery, looping: Threads, use_api: Any
) -> None:
    api = use_api(FakeMessagesAPI((200, TWO_TOOLS), (200, api_message("Booked the EC 15."))))
    result = loop_signature(app).apply_async().get(timeout=TIMEOUT)
    assert result["reply_id"] == "turn-1:1:assistant"
    assert result["model_calls"] == 2
    assert result["body"]["content"] == [{"type": "text", "text": "Booked the EC 15."}]
    assert TOOL_RUNS == [("anthropic_weather", "Milan"), ("anthropic_book", "EC 15")]
    assert [m["id"] for m in looping.load("t1")] == LOOP_IDS
    # both results were stored before the second call, which sent them in one user turn
    assert len(api.requests) == 2
    assert api.requests[1]["messages"][1:] == [
        {"role": "assistant", "content": TWO_TOOLS["content"]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_w", "content": "14 °C in Milan"},
                {"type": "tool_result", "tool_use_id": "toolu_b", "content": {"booked": "EC 15"}},
            ],
        },
    ]
    status = looping.turns.status("t1", "turn-1")
    assert status is not None
    usage = [(u["call"], u["model"], u["input_tokens"], u["output_tokens"]) for u in status.usage]
    assert usage == [("0", MODEL, 30, 12), ("1", MODEL, 21, 9)]
    assert status.tools == {
        "toolu_w": {"runs": 1, "done": True},
        "toolu_b": {"runs": 1, "done": True},
    }

    again = loop_signature(app).apply_async().get(timeout=TIMEOUT)  # a redelivery
    assert again == result
    assert len(api.requests) == 2, "no model call for a stored reply"
    assert len(TOOL_RUNS) == 2, "no tool runs again whose result is stored"
    assert [m["id"] for m in looping.load("t1")] == LOOP_IDS


@pytest.mark.parametrize("on_interrupted", ["rerun", "error"])
def test_a_turn_killed_inside_a_tool_resumes_without_repeating_stored_steps(
    app: Celery, looping: Threads, use_api: Any, on_interrupted: str
) -> None:
    api = use_api(FakeMessagesAPI((200, TWO_TOOLS), (200, api_message("Done."))))
    KILLS.append(WorkerKilled("the worker died in the booking call"))
    with pytest.raises(WorkerKilled):  # the first execution, in this process
        tasks.models.anthropic.run_turn(
            thread_id="t1",
            turn_id="turn-1",
            model=MODEL,
            tools=SCHEMAS,
            run_tools=["anthropic_weather", "anthropic_book"],
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
    assert status.tools["toolu_w"] == {"runs": 1, "done": True}
    assert status.tools["toolu_b"] == {"runs": 2, "done": True}
    booked = looping.get("t1", ["turn-1:tool:toolu_b"])["turn-1:tool:toolu_b"]["body"]
    assert isinstance(booked, dict)
    (block,) = booked["content"]
    if on_interrupted == "rerun":  # the interrupted call ran again, the finished one did not
        assert TOOL_RUNS == [
            ("anthropic_weather", "Milan"),
            ("anthropic_book", "EC 15"),
            ("anthropic_book", "EC 15"),
        ]
        assert block["content"] == {"booked": "EC 15"}
    else:  # a tool whose side effect must not happen twice is answered with an error
        assert TOOL_RUNS == [("anthropic_weather", "Milan"), ("anthropic_book", "EC 15")]
        assert block["is_error"] is True
        assert "interrupted" in block["content"]
    assert [u["call"] for u in status.usage] == ["0", "1"]


def test_without_run_tools_the_turn_stops_at_the_tool_calls(
    app: Celery, looping: Threads, use_api: Any
) -> None:
    api = use_api(FakeMessagesAPI((200, TWO_TOOLS)))
    result = run_turn_signature(app, thread_id="t1", turn_id="turn-1").apply_async()
    got = result.get(timeout=TIMEOUT)
    assert (got["reply_id"], got["model_calls"]) == ("turn-1:0:assistant", 1)
    assert AnthropicAdapter(looping).tool_call_ids(got["body"]) == ["toolu_w", "toolu_b"]
    assert TOOL_RUNS == []
    assert len(api.requests) == 1
