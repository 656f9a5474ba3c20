"""The Google GenAI adapter with the real SDK types, and its model-turn task through
the real SDK client (a fake HTTP transport) on the embedded Celery worker."""

from __future__ import annotations

import base64
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from celery import Celery
from google import genai
from google.genai import types
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tasks.models.google as google_turns
from adapters.base import DanglingToolCall, ToolCall, reply_id, tool_result_id
from adapters.google_genai import GoogleGenAIAdapter
from adapters.tools import tool
from storage.cold import S3ColdStore
from storage.tiered import Threads
from tasks.app import threads as worker_threads
from tasks.turns import agent_turn

TIMEOUT = 60
_ids = itertools.count()

# -- random Contents over every part type -----------------------------------------------

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(text, json_values, max_size=4)
optional_ids = st.none() | st.from_regex(r"call_[a-z0-9]{1,8}", fullmatch=True)

parts = st.one_of(
    st.builds(types.Part, text=text),
    st.builds(
        types.Part,
        text=text,
        thought=st.just(True),
        thought_signature=st.binary(min_size=1, max_size=16),
    ),
    st.builds(
        types.Part,
        inline_data=st.builds(
            types.Blob,
            data=st.binary(max_size=32),
            mime_type=st.sampled_from(["image/png", "application/pdf", "audio/wav"]),
        ),
    ),
    st.builds(
        types.Part,
        function_call=st.builds(types.FunctionCall, id=optional_ids, name=names, args=json_objects),
    ),
    st.builds(
        types.Part,
        function_response=st.builds(
            types.FunctionResponse, id=optional_ids, name=names, response=json_objects
        ),
    ),
)
contents = st.builds(
    types.Content, role=st.sampled_from(["user", "model"]), parts=st.lists(parts, max_size=4)
)


@pytest.fixture
def adapter(threads: Threads) -> GoogleGenAIAdapter:
    return GoogleGenAIAdapter(threads)


def new_thread(adapter: GoogleGenAIAdapter) -> str:
    thread_id = f"g{next(_ids)}"
    adapter.threads.open(thread_id, "new")
    return thread_id


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50, deadline=None
)
@given(messages=st.lists(contents, min_size=1, max_size=4))
def test_every_part_type_round_trips_through_the_thread(
    adapter: GoogleGenAIAdapter, messages: list[types.Content]
) -> None:
    thread_id = new_thread(adapter)
    for index, message in enumerate(messages):
        adapter.append_message(thread_id, f"m{index}", message)
    assert adapter.messages(thread_id) == messages


def test_bytes_are_base64_in_the_stored_body(adapter: GoogleGenAIAdapter) -> None:
    content = types.Content(
        role="model",
        parts=[
            types.Part(text="thinking", thought=True, thought_signature=b"\x00\xff"),
            types.Part(inline_data=types.Blob(data=b"\x89PNG", mime_type="image/png")),
        ],
    )
    body = adapter.to_body(content)
    assert isinstance(body, dict)
    json.dumps(body)
    stored = body["parts"]
    assert isinstance(stored, list)
    assert base64.urlsafe_b64decode(stored[0]["thought_signature"]) == b"\x00\xff"
    assert adapter.from_body(body) == content


# -- requests ------------------------------------------------------------------------------


def test_build_request_sends_the_system_prompt_as_system_instruction(
    adapter: GoogleGenAIAdapter,
) -> None:
    thread_id = new_thread(adapter)
    adapter.append_user(thread_id, "u1", "Which train to Milan?")
    adapter.append_assistant(thread_id, "a1", "The 07:33.")
    adapter.set_system(thread_id, "You are a travel agent.")
    adapter.append_user(thread_id, "u2", "Book it.")

    assert adapter.role(adapter.threads.load(thread_id)[0]["body"]) == "system"
    assert adapter.messages(thread_id)[0] == types.Content(
        role="system", parts=[types.Part(text="You are a travel agent.")]
    )
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(name="book")])
    request = adapter.prepare(thread_id, model="gemini-2.5-pro", tools=[tool], temperature=0.2)
    assert request["model"] == "gemini-2.5-pro"
    assert [(c.role, c.parts[0].text) for c in request["contents"]] == [
        ("user", "Which train to Milan?"),
        ("model", "The 07:33."),
        ("user", "Book it."),
    ]
    config = request["config"]
    assert isinstance(config, types.GenerateContentConfig)
    assert config.system_instruction == types.Content(
        parts=[types.Part(text="You are a travel agent.")]
    )
    assert config.tools == [tool]
    assert config.temperature == 0.2


# -- tool-call integrity -----------------------------------------------------------------


def call(name: str, call_id: str | None = None) -> types.Part:
    return types.Part(function_call=types.FunctionCall(id=call_id, name=name, args={"q": 1}))


def dangling_thread(adapter: GoogleGenAIAdapter, call_id: str | None) -> str:
    """user, model calling "search" and "weather" (answered), then a late user message."""
    thread_id = new_thread(adapter)
    adapter.append_user(thread_id, "u1", "hi")
    model = types.Content(
        role="model", parts=[call("search", call_id), call("weather", call_id and "w1")]
    )
    adapter.append_message(thread_id, "a1", model)
    weather = "weather" if call_id is None else "w1"
    adapter.append_tool_result(thread_id, "r1", weather, {"temp": 20})
    adapter.append_user(thread_id, "u2", "still there?")
    return thread_id


@pytest.mark.parametrize("call_id", ["c1", None], ids=["with-ids", "by-name"])
def test_dangling_function_call_error_repair_truncate(
    adapter: GoogleGenAIAdapter, call_id: str | None
) -> None:
    thread_id = dangling_thread(adapter, call_id)
    answered = adapter.threads.load(thread_id)[2]["body"]
    assert adapter.role(answered) == "tool"
    assert adapter.from_body(answered).parts[0].function_response.name == "weather"

    with pytest.raises(DanglingToolCall, match="search" if call_id is None else "c1"):
        adapter.prepare(thread_id, integrity="error")

    repaired = adapter.prepare(thread_id, integrity="repair")["contents"]
    # the synthetic response and the stored one answer one turn's calls: one Content
    assert [c.role for c in repaired] == ["user", "model", "user", "user"]
    response = repaired[2].parts[0].function_response
    assert (response.id, response.name) == (call_id, "search")
    assert response.response == {"error": "the tool call was interrupted and has no result"}
    assert repaired[2].parts[1].function_response.name == "weather"

    truncated = adapter.prepare(thread_id, integrity="truncate")["contents"]
    assert [c.parts[0].text for c in truncated] == ["hi"]
    assert len(adapter.threads.load(thread_id)) == 4, "prepare never changes the thread"


def test_parallel_calls_of_one_function_without_ids_match_in_order(
    adapter: GoogleGenAIAdapter,
) -> None:
    thread_id = new_thread(adapter)
    adapter.append_message(
        thread_id, "a1", types.Content(role="model", parts=[call("search"), call("search")])
    )
    one = types.Part(function_response=types.FunctionResponse(name="search", response={"n": 1}))
    adapter.append_message(thread_id, "r1", types.Content(role="user", parts=[one]))
    with pytest.raises(DanglingToolCall, match="search#2"):
        adapter.prepare(thread_id, integrity="error")
    adapter.threads.replace_all(
        thread_id,
        [
            *adapter.threads.load(thread_id)[:1],
            {"id": "r1", "body": adapter.to_body(types.Content(role="user", parts=[one, one]))},
        ],
    )
    assert len(adapter.prepare(thread_id, integrity="error")["contents"]) == 2


# -- the model turn through the real SDK client ----------------------------------------------


class FakeGemini:
    """A generateContent endpoint: replies from a script of (status, JSON) and keeps
    every request it received."""

    def __init__(self, *script: tuple[int, dict[str, Any]]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(
                {"url": str(request.url), "json": json.loads(request.content or b"{}")}
            )
            status, payload = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return httpx.Response(status, json=payload)

    def client(self) -> genai.Client:
        transport = httpx.MockTransport(self.handle)
        options = types.HttpOptions(client_args={"transport": transport})
        return genai.Client(api_key="test", http_options=options)


def reply(*parts: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {
        "candidates": [
            {
                "content": {"role": "model", "parts": list(parts)},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17},
        "modelVersion": "gemini-2.5-flash",
    }


def error(status: int, reason: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": status, "message": reason, "status": reason.upper()}}


@pytest.fixture
def app(celery_stack: Celery, redis_client: redis.Redis) -> Iterator[Celery]:
    """The configured app, with an empty hot tier and bucket, and quick retries."""
    cold = worker_threads().cold
    assert isinstance(cold, S3ColdStore)
    for item in cold.client.list_objects_v2(Bucket=cold.bucket).get("Contents", []):
        cold.client.delete_object(Bucket=cold.bucket, Key=item["Key"])
    task = celery_stack.tasks["adapters.google_genai.run_turn"]
    backoff, factory = task.backoff_seconds, google_turns.client_factory
    task.backoff_seconds = 0  # the retried 429 comes back at once
    try:
        yield celery_stack
    finally:
        task.backoff_seconds = backoff
        google_turns.client_factory = factory


def serve(fake: FakeGemini) -> None:
    google_turns.client_factory = fake.client


def model_turn(app: Celery, thread_id: str, turn_id: str, **kwargs: Any) -> Any:
    signature = app.signature(
        "adapters.google_genai.run_turn",
        kwargs={"thread_id": thread_id, "turn_id": turn_id, **kwargs},
    )
    return signature.apply_async()


def user(message_id: str, words: str) -> dict[str, Any]:
    return {"id": message_id, "body": {"role": "user", "parts": [{"text": words}]}}


def prepared_thread(store: Threads, thread_id: str) -> None:
    """A thread with a system prompt and a user message, leased to "turn-1" (as
    agent_turn does before it runs the model task)."""
    store.open(thread_id, "new")
    store.acquire_lease(thread_id, "turn-1", 60_000)
    adapter = GoogleGenAIAdapter(store)
    adapter.set_system(thread_id, "Be brief.")
    adapter.append_user(thread_id, "u1", "Hello")


def test_agent_turn_calls_gemini_and_stores_its_reply(app: Celery) -> None:
    fake = FakeGemini(
        reply(
            {"text": "Let me look.", "thought": True, "thoughtSignature": "c2ln"},
            {"functionCall": {"name": "search", "args": {"q": "trains"}}},
        )
    )
    serve(fake)
    store = worker_threads()
    run = app.signature("adapters.google_genai.run_turn", kwargs={"model": "gemini-2.5-flash"})
    system = {"id": "system", "body": GoogleGenAIAdapter(store).text_body("system", "Be brief.")}
    turn = agent_turn(
        "gt1", [system, user("u1", "Trains to Milan?")], run, turn_id="turn-1", mode="new"
    )
    turn.apply_async().get(timeout=TIMEOUT)

    stored = store.load("gt1")
    assert [r["id"] for r in stored] == ["system", "u1", reply_id("turn-1")]
    content = GoogleGenAIAdapter(store).from_body(stored[-1]["body"])
    assert content.role == "model"
    assert content.parts[0].thought_signature == b"sig"
    assert content.parts[1].function_call == types.FunctionCall(name="search", args={"q": "trains"})

    (sent,) = fake.requests
    assert sent["url"].endswith("/models/gemini-2.5-flash:generateContent")
    assert sent["json"]["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["json"]["contents"] == [{"role": "user", "parts": [{"text": "Trains to Milan?"}]}]


def test_rate_limit_is_retried_then_succeeds(app: Celery) -> None:
    fake = FakeGemini(error(429, "resource exhausted"), reply({"text": "Hi!"}))
    serve(fake)
    store = worker_threads()
    prepared_thread(store, "gt2")
    result = model_turn(app, "gt2", "turn-1")
    assert result.get(timeout=TIMEOUT) == {
        "reply_id": "turn-1:0:assistant",
        "body": {"role": "model", "parts": [{"text": "Hi!"}]},
        "model_calls": 1,
    }
    assert result.retries >= 1
    assert len(fake.requests) == 2
    assert [r["id"] for r in store.load("gt2")] == ["system", "u1", "turn-1:0:assistant"]


def test_server_error_is_retried(app: Celery) -> None:
    fake = FakeGemini(error(503, "unavailable"), reply({"text": "Back."}))
    serve(fake)
    store = worker_threads()
    prepared_thread(store, "gt5")
    result = model_turn(app, "gt5", "turn-1")
    # autoretry_for's backoff is fixed at registration (>= 1 s): this takes a second or two
    assert result.get(timeout=TIMEOUT)["body"]["parts"] == [{"text": "Back."}]
    assert result.retries >= 1


def test_bad_request_fails_at_once(app: Celery) -> None:
    fake = FakeGemini(error(400, "invalid argument"))
    serve(fake)
    store = worker_threads()
    prepared_thread(store, "gt3")
    result = model_turn(app, "gt3", "turn-1")
    with pytest.raises(Exception, match="invalid argument"):
        result.get(timeout=TIMEOUT)
    assert result.retries == 0
    assert len(fake.requests) == 1
    assert [r["id"] for r in store.load("gt3")] == ["system", "u1"]


def test_redelivered_turn_calls_the_model_once(app: Celery) -> None:
    fake = FakeGemini(reply({"text": "Once."}))
    serve(fake)
    store = worker_threads()
    prepared_thread(store, "gt4")
    first = model_turn(app, "gt4", "turn-1").get(timeout=TIMEOUT)
    again = model_turn(app, "gt4", "turn-1").get(timeout=TIMEOUT)
    assert first == again
    assert len(fake.requests) == 1
    assert [r["id"] for r in store.load("gt4")] == ["system", "u1", "turn-1:0:assistant"]


# -- the agent loop: function calls run once each, through the real SDK client -----------


def test_tool_calls_and_usage_from_sdk_objects_and_api_json(adapter: GoogleGenAIAdapter) -> None:
    with_id = types.Content(role="model", parts=[types.Part(text="hm"), call("search", "c1")])
    assert adapter.tool_calls(with_id) == [ToolCall("c1", "search", {"q": 1})]
    assert adapter.tool_calls(adapter.to_body(with_id)) == adapter.tool_calls(with_id)
    two = adapter.to_body(types.Content(role="model", parts=[call("search"), call("search")]))
    first, second = adapter.tool_calls(two)
    assert (first.name, second.name) == ("search", "search")
    assert first.id.startswith("search@")
    assert second.id.startswith("search#2@")
    assert first.id.partition("@")[2] == second.id.partition("@")[2], "a digest of the reply"
    other = adapter.to_body(types.Content(role="model", parts=[call("search"), call("weather")]))
    assert adapter.tool_calls(other)[0].id != first.id, "another reply: another key"
    assert adapter.tool_calls(types.Content(role="model", parts=[types.Part(text="no")])) == []

    _, payload = reply({"text": "Hi"})
    usage = {"input_tokens": 12, "output_tokens": 5, "model": "gemini-2.5-flash"}
    assert adapter.usage(payload) == usage
    response = types.GenerateContentResponse.model_validate(payload)
    assert adapter.usage(response) == usage
    thinking = {**payload, "usageMetadata": {**payload["usageMetadata"], "thoughtsTokenCount": 7}}
    assert adapter.usage(thinking) == {**usage, "thoughts_tokens": 7}
    assert adapter.usage(with_id) is None
    assert (
        adapter.to_body(response)
        == adapter.to_body(payload)
        == {
            "role": "model",
            "parts": [{"text": "Hi"}],
        }
    )


def test_responses_in_separate_messages_answer_parallel_calls_without_ids(
    adapter: GoogleGenAIAdapter,
) -> None:
    thread_id = new_thread(adapter)
    adapter.append_user(thread_id, "u1", "trains and weather?")
    model = types.Content(role="model", parts=[call("search"), call("search"), call("weather")])
    adapter.append_message(thread_id, "a1", model)
    for n, tool_call in enumerate(adapter.tool_calls(adapter.to_body(model))):
        body = adapter.tool_result_body(tool_call.id, {"n": n})
        adapter.threads.append(thread_id, [{"id": f"r{n}", "body": body}])
    request = adapter.prepare(thread_id, integrity="error")  # no call is left unanswered
    contents = request["contents"]
    assert [c.role for c in contents] == ["user", "model", "user"]
    responses = [p.function_response for p in contents[2].parts]
    assert [(r.id, r.name, r.response) for r in responses] == [
        (None, "search", {"n": 0}),
        (None, "search", {"n": 1}),
        (None, "weather", {"n": 2}),
    ]


TOOL_RUNS: list[tuple[str, Any]] = []
KILLS: list[BaseException] = []


class WorkerKilled(BaseException):
    """A worker dying inside a tool (not an Exception: no error result is stored)."""


@tool("google_weather")
def weather(city: str) -> str:
    TOOL_RUNS.append(("google_weather", city))
    return f"14 °C in {city}"


@tool("google_book")
def book(train: str) -> dict[str, Any]:
    TOOL_RUNS.append(("google_book", train))
    if KILLS:
        raise KILLS.pop()
    return {"booked": train}


def function_call(name: str, **args: Any) -> dict[str, Any]:
    return {"functionCall": {"name": name, "args": args}}


RUN_TOOLS = ["google_weather", "google_book"]


@pytest.fixture
def looping(app: Celery) -> Threads:
    """Empty tool counts; thread gl1 leased to turn-1, with its turn record."""
    TOOL_RUNS.clear()
    KILLS.clear()
    store = worker_threads()
    prepared_thread(store, "gl1")
    store.turns.submit("gl1", "turn-1", steps=["run"], spec={}, lease_ms=20_000)
    return store


def test_a_turn_runs_calls_over_two_replies_once_each(app: Celery, looping: Threads) -> None:
    fake = FakeGemini(
        reply(function_call("google_weather", city="Milan")),
        reply({"text": "It is mild."}, function_call("google_book", train="EC 15")),
        reply({"text": "Booked the EC 15."}),
    )
    serve(fake)
    result = model_turn(app, "gl1", "turn-1", run_tools=RUN_TOOLS).get(timeout=TIMEOUT)
    assert (result["reply_id"], result["model_calls"]) == (reply_id("turn-1", 2), 3)
    assert result["body"] == {"role": "model", "parts": [{"text": "Booked the EC 15."}]}
    assert TOOL_RUNS == [("google_weather", "Milan"), ("google_book", "EC 15")]

    adapter = GoogleGenAIAdapter(looping)
    stored = looping.load("gl1")
    (asked_weather,) = adapter.tool_calls(stored[2]["body"])
    (asked_book,) = adapter.tool_calls(stored[4]["body"])
    assert [r["id"] for r in stored] == [
        "system",
        "u1",
        reply_id("turn-1", 0),
        tool_result_id("turn-1", asked_weather.id),
        reply_id("turn-1", 1),
        tool_result_id("turn-1", asked_book.id),
        reply_id("turn-1", 2),
    ]
    # each result was stored, and sent, before the next call
    assert len(fake.requests) == 3
    assert fake.requests[1]["json"]["contents"][-1] == {
        "role": "user",
        "parts": [
            {
                "functionResponse": {
                    "name": "google_weather",
                    "response": {"output": "14 °C in Milan"},
                }
            }
        ],
    }
    assert fake.requests[2]["json"]["contents"][-1]["parts"][0]["functionResponse"] == {
        "name": "google_book",
        "response": {"booked": "EC 15"},
    }
    status = looping.turns.status("gl1", "turn-1")
    assert status is not None
    assert [(u["call"], u["model"]) for u in status.usage] == [
        ("0", "gemini-2.5-flash"),
        ("1", "gemini-2.5-flash"),
        ("2", "gemini-2.5-flash"),
    ]
    assert (status.input_tokens, status.output_tokens) == (36, 15)
    assert status.tools == {
        asked_weather.id: {"runs": 1, "done": True},
        asked_book.id: {"runs": 1, "done": True},
    }

    again = model_turn(app, "gl1", "turn-1", run_tools=RUN_TOOLS).get(timeout=TIMEOUT)
    assert again == result
    assert len(fake.requests) == 3, "a redelivered turn calls no model"
    assert len(TOOL_RUNS) == 2, "and runs no tool again"
    assert len(looping.load("gl1")) == 7


def test_a_turn_killed_inside_a_tool_resumes_from_its_stored_steps(
    app: Celery, looping: Threads
) -> None:
    fake = FakeGemini(
        reply(
            function_call("google_weather", city="Milan"),
            function_call("google_book", train="EC 15"),
        ),
        reply({"text": "Done."}),
    )
    serve(fake)
    KILLS.append(WorkerKilled("the worker died in the booking call"))
    with pytest.raises(WorkerKilled):  # the first execution, in this process
        google_turns.run_turn(thread_id="gl1", turn_id="turn-1", run_tools=RUN_TOOLS)
    assert len(looping.load("gl1")) == 4  # system, u1, the reply, the weather result
    assert len(fake.requests) == 1

    result = model_turn(app, "gl1", "turn-1", run_tools=RUN_TOOLS).get(timeout=TIMEOUT)
    assert result["reply_id"] == reply_id("turn-1", 1)
    assert len(fake.requests) == 2, "the stored reply was not asked for again"
    assert TOOL_RUNS == [
        ("google_weather", "Milan"),
        ("google_book", "EC 15"),
        ("google_book", "EC 15"),
    ]
    # both responses went to Gemini in one turn, in the order of the calls
    parts = fake.requests[1]["json"]["contents"][-1]["parts"]
    assert [p["functionResponse"]["name"] for p in parts] == ["google_weather", "google_book"]
    status = looping.turns.status("gl1", "turn-1")
    assert status is not None
    assert sorted(t["runs"] for t in status.tools.values()) == [1, 2]
    assert all(t["done"] for t in status.tools.values())
    assert [u["call"] for u in status.usage] == ["0", "1"]
