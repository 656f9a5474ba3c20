"""The LangChain adapter: lossless messages, tool-call integrity, and the model turn
through the embedded Celery worker with langchain-core's fake chat model."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_to_dict,
)
from langchain_core.outputs import ChatGeneration, ChatResult

import tasks.models.langchain
from adapters.base import DanglingToolCall, ToolCall, reply_id, tool_result_id
from adapters.langchain import LangChainAdapter
from adapters.models import UnknownModel, chat_model
from adapters.tools import UnknownTool, tool
from storage.cold import S3ColdStore
from storage.records import Message
from storage.tiered import Threads
from tasks.app import threads as worker_threads
from tasks.models.langchain import is_transient
from tasks.turns import agent_turn

TIMEOUT = 60
MODEL = "test-fake-model"

# -- strategies: real langchain-core messages with JSON-shaped payloads -------------------

text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
keys = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text
json_values = st.recursive(
    scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=8,
)
# "x_" keys: LangChain gives some additional_kwargs keys (e.g. "tool_calls") a meaning
extras = st.dictionaries(keys.map(lambda k: f"x_{k}"), json_values, max_size=3)
names = st.none() | text
message_ids = st.none() | text
content_blocks = st.lists(
    st.builds(lambda t: {"type": "text", "text": t}, text)
    | st.builds(
        lambda url: {"type": "image_url", "image_url": {"url": f"https://example.com/{url}"}},
        keys,
    ),
    min_size=1,
    max_size=3,
)
tool_calls = st.lists(
    st.builds(
        lambda name, args, call_id: {"name": name, "args": args, "id": call_id},
        keys,
        st.dictionaries(keys, json_values, max_size=3),
        text,
    ),
    max_size=3,
)

system_messages = st.builds(SystemMessage, content=text, name=names, id=message_ids)
human_messages = st.builds(
    HumanMessage,
    content=text | content_blocks,
    name=names,
    id=message_ids,
    additional_kwargs=extras,
)
ai_messages = st.builds(
    AIMessage,
    content=text,
    tool_calls=tool_calls,
    additional_kwargs=extras,
    response_metadata=extras,
    name=names,
    id=message_ids,
)
tool_messages = st.builds(
    ToolMessage,
    content=text,
    tool_call_id=text,
    status=st.sampled_from(["success", "error"]),
    artifact=json_values,
    name=names,
    id=message_ids,
)
any_message = system_messages | human_messages | ai_messages | tool_messages


def new_thread(threads: Threads) -> str:
    thread_id = f"lc-{uuid.uuid4().hex}"
    threads.open(thread_id, "new")
    return thread_id


# -- lossless round trip ------------------------------------------------------------------


@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50, deadline=None
)
@given(messages=st.lists(any_message, min_size=1, max_size=6))
def test_any_message_round_trips_through_storage_unchanged(
    threads: Threads, messages: list[BaseMessage]
) -> None:
    adapter = LangChainAdapter(threads)
    thread_id = new_thread(threads)
    for n, message in enumerate(messages):
        adapter.append_message(thread_id, f"m{n}", message)
    restored = adapter.messages(thread_id)
    assert restored == messages
    assert [type(m) for m in restored] == [type(m) for m in messages]


def test_roles_and_tool_ids_are_read_from_the_dict_form(threads: Threads) -> None:
    adapter = LangChainAdapter(threads)
    call = AIMessage("", tool_calls=[{"name": "f", "args": {}, "id": "c1"}])
    bodies = [
        adapter.to_body(m)
        for m in (SystemMessage("s"), HumanMessage("h"), call, ToolMessage("r", tool_call_id="c1"))
    ]
    assert [adapter.role(b) for b in bodies] == ["system", "user", "assistant", "tool"]
    assert [adapter.tool_call_ids(b) for b in bodies] == [[], [], ["c1"], []]
    assert [adapter.tool_result_ids(b) for b in bodies] == [[], [], [], ["c1"]]


def test_thread_helpers_store_langchain_messages(threads: Threads) -> None:
    adapter = LangChainAdapter(threads)
    thread_id = new_thread(threads)
    adapter.append_user(thread_id, "u1", "hello")
    adapter.append_assistant(thread_id, "a1", "hi there")
    adapter.append_tool_result(thread_id, "t1", "c9", "boom", is_error=True)
    adapter.set_system(thread_id, "be brief")
    request = adapter.prepare(thread_id, integrity="error", temperature=0)
    assert request["temperature"] == 0
    assert request["messages"] == [
        SystemMessage("be brief"),
        HumanMessage("hello"),
        AIMessage("hi there"),
        ToolMessage("boom", tool_call_id="c9", status="error"),
    ]


# -- tool-call integrity ------------------------------------------------------------------


def dangling_thread(threads: Threads) -> tuple[LangChainAdapter, str]:
    """system, user, an AI message calling c1/c2/c3 with only c2 answered, a user follow-up."""
    adapter = LangChainAdapter(threads)
    thread_id = new_thread(threads)
    adapter.set_system(thread_id, "you call tools")
    adapter.append_user(thread_id, "u1", "weather in Zurich and Milan?")
    calls = [{"name": "weather", "args": {"city": c}, "id": f"c{n}"} for n, c in enumerate("ZMR")]
    adapter.append_message(thread_id, "a1", AIMessage("", tool_calls=calls))
    adapter.append_tool_result(thread_id, "t1", "c1", "sunny")
    adapter.append_user(thread_id, "u2", "and?")
    return adapter, thread_id


def test_error_policy_raises_dangling_tool_call(threads: Threads) -> None:
    adapter, thread_id = dangling_thread(threads)
    with pytest.raises(DanglingToolCall) as raised:
        adapter.prepare(thread_id, integrity="error")
    assert raised.value.call_ids == ["c0", "c2"]


def test_repair_policy_answers_each_dangling_call_right_after_it(threads: Threads) -> None:
    adapter, thread_id = dangling_thread(threads)
    before = threads.load(thread_id)
    messages = adapter.prepare(thread_id, integrity="repair")["messages"]
    assert [type(m).__name__ for m in messages] == [
        "SystemMessage",
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "ToolMessage",
        "ToolMessage",
        "HumanMessage",
    ]
    repaired = messages[3:5]
    assert [(m.tool_call_id, m.status) for m in repaired] == [("c0", "error"), ("c2", "error")]
    assert messages[5] == ToolMessage("sunny", tool_call_id="c1")
    records = adapter.apply_integrity(thread_id, before, "repair")
    assert [r["id"] for r in records[3:5]] == ["a1:repaired:0", "a1:repaired:1"]
    assert adapter.dangling_tool_calls(records) == {}
    assert threads.load(thread_id) == before  # the thread itself is unchanged


def test_truncate_policy_cuts_before_the_dangling_call(threads: Threads) -> None:
    adapter, thread_id = dangling_thread(threads)
    messages = adapter.prepare(thread_id, integrity="truncate")["messages"]
    assert messages == [
        SystemMessage("you call tools"),
        HumanMessage("weather in Zurich and Milan?"),
    ]


def test_one_error_body_answers_one_call(threads: Threads) -> None:
    adapter = LangChainAdapter(threads)
    body = adapter.tool_error_body(["c1"], "interrupted")
    assert adapter.from_body(body) == ToolMessage("interrupted", tool_call_id="c1", status="error")
    with pytest.raises(ValueError, match="answers one tool call"):
        adapter.tool_error_body(["c1", "c2"], "interrupted")


# -- transient provider errors ------------------------------------------------------------


class RateLimitError(Exception):
    """Shaped like a provider SDK's rate-limit error."""

    status_code = 429


class ProviderError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


class OverloadedError(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (RateLimitError("slow down"), True),
        (OverloadedError("busy"), True),
        (ProviderError(503), True),
        (ProviderError(429), True),
        (ProviderError(400), False),
        (ValueError("bad request"), False),
    ],
)
def test_is_transient_recognises_rate_limits_overloads_and_5xx(
    error: Exception, transient: bool
) -> None:
    assert is_transient(error) is transient


# -- the model turn through the embedded worker --------------------------------------------

# The embedded worker runs in this process (threads pool), so the model factory and the
# test share these: the outcome of each coming invocation, and the invocations made.
PLAN: list[BaseException | None] = []
INVOCATIONS: list[list[BaseMessage]] = []


class CountingFakeChatModel(FakeMessagesListChatModel):
    """langchain-core's fake model, counting invocations and failing as PLAN says."""

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        INVOCATIONS.append(list(messages))
        outcome = PLAN.pop(0) if PLAN else None
        if outcome is not None:
            raise outcome
        return super()._generate(messages, *args, **kwargs)


@chat_model(MODEL)
def make_model() -> CountingFakeChatModel:
    return CountingFakeChatModel(responses=[AIMessage("The 07:33 EC reaches Milan at 10:50.")])


@pytest.fixture
def app(
    celery_stack: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Celery]:
    """The configured app with an empty hot tier and bucket, a fresh model plan, and
    short retry backoffs."""
    cold = worker_threads().cold
    assert isinstance(cold, S3ColdStore)
    for item in cold.client.list_objects_v2(Bucket=cold.bucket).get("Contents", []):
        cold.client.delete_object(Bucket=cold.bucket, Key=item["Key"])
    monkeypatch.setattr(tasks.models.langchain, "RETRY_BACKOFF", 0.05)
    PLAN.clear()
    INVOCATIONS.clear()
    yield celery_stack
    PLAN.clear()


@pytest.fixture
def store(app: Celery) -> Threads:
    return worker_threads()


def user(message_id: str, text: str) -> Message:
    return {"id": message_id, "body": messages_to_dict([HumanMessage(text)])[0]}


def run_turn_signature(app: Celery, **kwargs: Any) -> Any:
    return app.signature("adapters.langchain.run_turn", kwargs={"model": MODEL, **kwargs})


def ready_thread(store: Threads, turn_id: str) -> str:
    """A thread with one user message, leased by ``turn_id`` (as agent_turn leaves it)."""
    thread_id = f"lc-{uuid.uuid4().hex[:12]}"
    store.open(thread_id, "new")
    store.acquire_lease(thread_id, turn_id, 60_000)
    store.append(thread_id, [user("u1", "When does the 07:33 reach Milan?")], owner=turn_id)
    return thread_id


def test_agent_turn_stores_one_ai_reply_under_the_turn_id(app: Celery, store: Threads) -> None:
    turn = agent_turn(
        "lc-t1",
        [user("u1", "When does the 07:33 reach Milan?")],
        run_turn_signature(app),
        turn_id="turn-1",
        mode="new",
        app=app,
    )
    turn.apply_async().get(timeout=TIMEOUT)
    records = store.load("lc-t1")
    assert [r["id"] for r in records] == ["u1", "turn-1:0:assistant"]
    reply = LangChainAdapter(store).from_body(records[1]["body"])
    assert isinstance(reply, AIMessage)
    assert reply.content == "The 07:33 EC reaches Milan at 10:50."
    assert len(INVOCATIONS) == 1
    assert INVOCATIONS[0] == [HumanMessage("When does the 07:33 reach Milan?")]


def test_a_transient_provider_error_is_retried_then_succeeds(app: Celery, store: Threads) -> None:
    thread_id = ready_thread(store, "turn-1")
    PLAN.append(RateLimitError("429: slow down"))
    result = run_turn_signature(app, thread_id=thread_id, turn_id="turn-1").apply_async()
    got = result.get(timeout=TIMEOUT)
    assert got["reply_id"] == "turn-1:0:assistant"
    assert result.retries == 1
    assert len(INVOCATIONS) == 2
    assert [r["id"] for r in store.load(thread_id)] == ["u1", "turn-1:0:assistant"]


def test_a_message_names_a_registered_model_never_code(app: Celery, store: Threads) -> None:
    """The model (and its tools) come from the worker's registry: an unknown name, or an
    import path where the old task took one, fails at once and imports nothing."""
    thread_id = ready_thread(store, "turn-1")
    unknown = run_turn_signature(app, thread_id=thread_id, turn_id="turn-1", model="os:system")
    with pytest.raises(UnknownModel, match="'os:system' is not registered"):
        unknown.apply_async().get(timeout=TIMEOUT)
    with pytest.raises(UnknownTool, match="'os:system'"):
        run_turn_signature(
            app, thread_id=thread_id, turn_id="turn-1", tools=["os:system"]
        ).apply_async().get(timeout=TIMEOUT)
    old = app.signature(
        "adapters.langchain.run_turn",
        kwargs={"thread_id": thread_id, "turn_id": "turn-1", "model_factory": "os:system"},
    )
    with pytest.raises(TypeError, match="model_factory"):
        old.apply_async().get(timeout=TIMEOUT)
    assert not INVOCATIONS
    assert [r["id"] for r in store.load(thread_id)] == ["u1"]


def test_a_permanent_provider_error_fails_at_once(app: Celery, store: Threads) -> None:
    thread_id = ready_thread(store, "turn-1")
    PLAN.append(ValueError("invalid request: unknown model"))
    result = run_turn_signature(app, thread_id=thread_id, turn_id="turn-1").apply_async()
    with pytest.raises(ValueError, match="unknown model"):
        result.get(timeout=TIMEOUT)
    assert result.retries == 0
    assert len(INVOCATIONS) == 1
    assert [r["id"] for r in store.load(thread_id)] == ["u1"]


def test_a_redelivered_turn_neither_calls_the_model_nor_appends_again(
    app: Celery, store: Threads
) -> None:
    thread_id = ready_thread(store, "turn-1")
    task = run_turn_signature(app, thread_id=thread_id, turn_id="turn-1")
    first = task.apply_async().get(timeout=TIMEOUT)
    again = task.apply_async().get(timeout=TIMEOUT)  # the same message delivered again
    assert again == first
    assert len(INVOCATIONS) == 1
    assert [r["id"] for r in store.load(thread_id)] == ["u1", "turn-1:0:assistant"]


def test_rewind_drops_the_stored_reply_and_asks_again(app: Celery, store: Threads) -> None:
    thread_id = ready_thread(store, "turn-1")
    run_turn_signature(app, thread_id=thread_id, turn_id="turn-1").apply_async().get(
        timeout=TIMEOUT
    )
    rewound = run_turn_signature(app, thread_id=thread_id, turn_id="turn-1", rewind=True)
    rewound.apply_async().get(timeout=TIMEOUT)
    assert len(INVOCATIONS) == 2
    assert [r["id"] for r in store.load(thread_id)] == ["u1", "turn-1:0:assistant"]


# -- the agent loop: tool calls run once each -------------------------------------------


def usage_of(tokens_in: int, tokens_out: int) -> dict[str, Any]:
    return {
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "total_tokens": tokens_in + tokens_out,
    }


def test_tool_calls_and_usage_from_messages_and_their_dict_form(threads: Threads) -> None:
    adapter = LangChainAdapter(threads)
    reply = AIMessage(
        "",
        tool_calls=[{"name": "weather", "args": {"city": "Milan"}, "id": "c1"}],
        usage_metadata={
            **usage_of(30, 12),
            "input_token_details": {"cache_read": 10},
            "output_token_details": {"reasoning": 4},
        },
        response_metadata={"model_name": "gpt-test", "finish_reason": "tool_calls"},
    )
    body = adapter.to_body(reply)
    assert adapter.tool_calls(body) == adapter.tool_calls(reply)
    assert adapter.tool_calls(reply) == [ToolCall("c1", "weather", {"city": "Milan"})]
    assert adapter.tool_calls(adapter.to_body(ToolMessage("x", tool_call_id="c1"))) == []
    usage = {
        "input_tokens": 30,
        "output_tokens": 12,
        "cache_read_input_tokens": 10,
        "reasoning_tokens": 4,
        "model": "gpt-test",
    }
    assert adapter.usage(reply) == adapter.usage(body) == usage
    assert isinstance(body, dict)
    assert adapter.usage(body["data"]) == usage
    anthropic_style = AIMessage("hi", response_metadata={"model": "claude-test"})
    assert adapter.usage(anthropic_style) == {"model": "claude-test"}
    assert adapter.usage(HumanMessage("no usage")) is None
    # a tool's structured output reaches the model as JSON
    result = adapter.from_body(adapter.tool_result_body("c1", {"booked": "EC 15"}))
    assert result.content == '{"booked": "EC 15"}'


TOOL_RUNS: list[tuple[str, Any]] = []
KILLS: list[BaseException] = []
TOOL_MODEL = "test-tool-model"
RUN_TOOLS = ["langchain_weather", "langchain_book"]
SCRIPT = [
    AIMessage(
        "",
        tool_calls=[{"name": "langchain_weather", "args": {"city": "Milan"}, "id": "call_w"}],
        usage_metadata=usage_of(30, 12),
        response_metadata={"model_name": "fake-model"},
    ),
    AIMessage(
        "",
        tool_calls=[{"name": "langchain_book", "args": {"train": "EC 15"}, "id": "call_b"}],
        usage_metadata=usage_of(45, 10),
        response_metadata={"model_name": "fake-model"},
    ),
    AIMessage(
        "Booked the EC 15.",
        usage_metadata=usage_of(60, 6),
        response_metadata={"model_name": "fake-model"},
    ),
]
LOOP_IDS = [
    "u1",
    reply_id("turn-1", 0),
    tool_result_id("turn-1", "call_w"),
    reply_id("turn-1", 1),
    tool_result_id("turn-1", "call_b"),
    reply_id("turn-1", 2),
]


class WorkerKilled(BaseException):
    """A worker dying inside a tool (not an Exception: no error result is stored)."""


@tool("langchain_weather")
def weather(city: str) -> str:
    TOOL_RUNS.append(("langchain_weather", city))
    return f"14 °C in {city}"


@tool("langchain_book")
def book(train: str) -> dict[str, Any]:
    TOOL_RUNS.append(("langchain_book", train))
    if KILLS:
        raise KILLS.pop()
    return {"booked": train}


class ScriptedToolModel(CountingFakeChatModel):
    """Answers with SCRIPT[n], n = the AI messages the history holds: the same history
    always gets the same reply, whichever execution asks."""

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        INVOCATIONS.append(list(messages))
        answered = sum(isinstance(m, AIMessage) for m in messages)
        return ChatResult(generations=[ChatGeneration(message=SCRIPT[answered])])


@chat_model(TOOL_MODEL)
def make_tool_model() -> ScriptedToolModel:
    return ScriptedToolModel(responses=[])


@pytest.fixture
def looping(store: Threads) -> str:
    """Empty tool counts; a thread leased to turn-1 with its turn record."""
    TOOL_RUNS.clear()
    KILLS.clear()
    thread_id = ready_thread(store, "turn-1")
    store.turns.submit(thread_id, "turn-1", steps=["run"], spec={}, lease_ms=20_000)
    return thread_id


def loop_signature(app: Celery, thread_id: str) -> Any:
    return run_turn_signature(
        app, thread_id=thread_id, turn_id="turn-1", model=TOOL_MODEL, run_tools=RUN_TOOLS
    )


def test_a_turn_runs_tool_calls_over_two_replies_once_each(
    app: Celery, store: Threads, looping: str
) -> None:
    thread_id = looping
    result = loop_signature(app, thread_id).apply_async().get(timeout=TIMEOUT)
    assert (result["reply_id"], result["model_calls"]) == (reply_id("turn-1", 2), 3)
    final = LangChainAdapter(store).from_body(result["body"])
    assert final.content == "Booked the EC 15."
    assert TOOL_RUNS == [("langchain_weather", "Milan"), ("langchain_book", "EC 15")]
    assert [r["id"] for r in store.load(thread_id)] == LOOP_IDS
    # each result was stored before the next model call, which saw it
    assert len(INVOCATIONS) == 3
    assert INVOCATIONS[1][-1] == ToolMessage("14 °C in Milan", tool_call_id="call_w")
    assert INVOCATIONS[2][-1] == ToolMessage('{"booked": "EC 15"}', tool_call_id="call_b")
    status = store.turns.status(thread_id, "turn-1")
    assert status is not None
    assert [(u["call"], u["model"]) for u in status.usage] == [
        ("0", "fake-model"),
        ("1", "fake-model"),
        ("2", "fake-model"),
    ]
    assert (status.input_tokens, status.output_tokens) == (135, 28)
    assert status.tools == {
        "call_w": {"runs": 1, "done": True},
        "call_b": {"runs": 1, "done": True},
    }

    again = loop_signature(app, thread_id).apply_async().get(timeout=TIMEOUT)  # a redelivery
    assert again == result
    assert len(INVOCATIONS) == 3, "no model call for a stored reply"
    assert len(TOOL_RUNS) == 2, "no tool runs again whose result is stored"
    assert [r["id"] for r in store.load(thread_id)] == LOOP_IDS


def test_a_turn_killed_inside_a_tool_resumes_without_repeating_stored_steps(
    app: Celery, store: Threads, looping: str
) -> None:
    thread_id = looping
    KILLS.append(WorkerKilled("the worker died in the booking call"))
    with pytest.raises(WorkerKilled):  # the first execution, in this process
        tasks.models.langchain.run_turn(
            thread_id=thread_id, turn_id="turn-1", model=TOOL_MODEL, run_tools=RUN_TOOLS
        )
    assert [r["id"] for r in store.load(thread_id)] == LOOP_IDS[:4]
    assert len(INVOCATIONS) == 2

    result = loop_signature(app, thread_id).apply_async().get(timeout=TIMEOUT)
    assert result["reply_id"] == reply_id("turn-1", 2)
    assert len(INVOCATIONS) == 3, "only the reply after the interrupted tool was asked for"
    assert TOOL_RUNS == [
        ("langchain_weather", "Milan"),
        ("langchain_book", "EC 15"),
        ("langchain_book", "EC 15"),
    ]
    assert [r["id"] for r in store.load(thread_id)] == LOOP_IDS
    status = store.turns.status(thread_id, "turn-1")
    assert status is not None
    assert status.tools == {
        "call_w": {"runs": 1, "done": True},
        "call_b": {"runs": 2, "done": True},
    }
    assert [u["call"] for u in status.usage] == ["0", "1", "2"]
