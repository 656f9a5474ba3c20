"""The adapter contract shared by every provider format, and what they all reuse:
thread helpers, tool-call integrity, and the model turn that never doubles a reply.

A stored record is ``{"id": <message id>, "body": <provider message as JSON>}``.
A provider adapter (Anthropic, Google GenAI, LangChain, the scripted model) only
says how its SDK's messages map to JSON bodies and back, where tool calls and
tool results are in a body, and how a request is built from the history; the
rest lives here once. No Celery and no SDK is imported in this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from storage.errors import AgentThreadsError
from storage.records import JSON, Message
from storage.tiered import Threads
from storage.turns import StepSuperseded, current_step

IntegrityPolicy = Literal["error", "repair", "truncate"]
SYSTEM_ID = "system"
"""The id of the system prompt record (one per thread; ``set_system`` keeps it first)."""


class DanglingToolCall(AgentThreadsError):
    """A tool call has no result (e.g. a crash between the call and its result) and the
    policy is "error"; use "repair" or "truncate", or append the missing result."""

    def __init__(self, thread_id: str, call_ids: Sequence[str]) -> None:
        super().__init__(thread_id, list(call_ids))
        self.thread_id = thread_id
        self.call_ids = list(call_ids)

    def __str__(self) -> str:
        return (
            f"thread {self.thread_id!r} has tool calls without results: {self.call_ids}; "
            "append their results, or prepare with integrity='repair' or 'truncate'"
        )


InterruptedPolicy = Literal["rerun", "error"]
DEFAULT_MAX_STEPS = 16
"""Model calls one agent loop may make (``run_turn``'s ``max_steps``)."""


def reply_id(turn_id: str, step: int = 0) -> str:
    """The id of the assistant message of model call ``step`` (0, 1, ...) of a turn:
    derived from the turn, so a re-run of the turn finds its replies instead of
    appending second ones (and calls no model for them)."""
    return f"{turn_id}:{step}:assistant"


def tool_result_id(turn_id: str, call_id: str) -> str:
    """The id of the result of one tool call of a turn (keyed by the tool call id)."""
    return f"{turn_id}:tool:{call_id}"


@dataclass(frozen=True)
class ToolCall:
    """One tool call a model reply makes. ``kind`` is the provider's type of call
    where a format has several whose results differ (OpenAI Responses: a
    "custom_tool_call" is answered by a "custom_tool_call_output"); "" otherwise."""

    id: str
    name: str
    args: Any
    kind: str = ""


@dataclass(frozen=True)
class UnreadableArguments:
    """A tool call's arguments that do not parse (e.g. JSON cut off at the output
    token limit): ``run_tool`` answers the call with an error and never runs it."""

    raw: str
    error: str


class TooManySteps(AgentThreadsError):
    """An agent loop made ``max_steps`` model calls without a final answer."""

    def __init__(self, thread_id: str, turn_id: str, max_steps: int) -> None:
        super().__init__(thread_id, turn_id, max_steps)
        self.thread_id, self.turn_id, self.max_steps = thread_id, turn_id, max_steps

    def __str__(self) -> str:
        return (
            f"turn {self.turn_id!r} of thread {self.thread_id!r} made {self.max_steps} model "
            "calls without a final answer; raise max_steps or check the tools"
        )


@dataclass(frozen=True)
class AgentReply:
    """The end of an agent loop: the final reply's id and body, and the model calls
    the turn made (stored or not)."""

    reply_id: str
    body: JSON
    model_calls: int


Tools = Mapping[str, Callable[..., Any]]
"""Tool name -> the function that runs it (called with the call's arguments)."""


class Adapter(ABC):
    """One provider's message format over ``Threads``.

    Subclasses implement the format hooks (``to_body``, ``from_body``, ``role``,
    ``tool_call_ids``, ``tool_result_ids``, ``tool_error_body``, ``text_body``,
    ``tool_result_body``, ``build_request``); everything else is shared.
    """

    name: str = "base"

    def __init__(self, threads: Threads, *, integrity: IntegrityPolicy = "repair") -> None:
        self.threads = threads
        self.integrity = integrity

    # -- format hooks ---------------------------------------------------------------

    @abstractmethod
    def to_body(self, message: Any) -> JSON:
        """An SDK message as a JSON body, losslessly."""

    @abstractmethod
    def from_body(self, body: JSON) -> Any:
        """The SDK message a JSON body stands for."""

    @abstractmethod
    def role(self, body: JSON) -> str:
        """ "system", "user", "assistant" or "tool"."""

    @abstractmethod
    def tool_call_ids(self, body: JSON) -> list[str]:
        """Ids of the tool calls a body makes."""

    @abstractmethod
    def tool_result_ids(self, body: JSON) -> list[str]:
        """Ids of the tool calls a body answers."""

    @abstractmethod
    def tool_error_body(self, call_ids: Sequence[str], reason: str) -> JSON:
        """A body that answers ``call_ids`` with an error (used by "repair", which asks
        for one call at a time)."""

    @abstractmethod
    def text_body(self, role: str, text: str) -> JSON:
        """A plain text message of ``role`` ("system", "user" or "assistant")."""

    @abstractmethod
    def tool_result_body(self, call_id: str, content: Any, *, is_error: bool = False) -> JSON:
        """The result of one tool call."""

    @abstractmethod
    def build_request(self, records: Sequence[Message], **options: Any) -> dict[str, Any]:
        """The provider request payload for this (integrity-checked) history."""

    def tool_calls(self, body: JSON) -> list[ToolCall]:
        """The tool calls a body makes, with their names and arguments (the agent loop
        runs them). Each provider adapter implements it."""
        raise NotImplementedError(f"the {self.name} adapter does not list tool calls")

    def usage(self, message: Any) -> dict[str, Any] | None:
        """Token usage a model reply (the SDK's message) reports: ``input_tokens``,
        ``output_tokens`` and ``model`` when known; None if it reports none."""
        return None

    def call_result_body(self, call: ToolCall, content: Any, *, is_error: bool = False) -> JSON:
        """The result of ``call`` the agent loop stores: ``tool_result_body`` of its id,
        unless a format shapes results by the kind of call (``ToolCall.kind``)."""
        return self.tool_result_body(call.id, content, is_error=is_error)

    def repair_body(self, call_body: JSON, call_id: str, reason: str) -> JSON:
        """The synthetic error result "repair" inserts for ``call_id``, which the body
        ``call_body`` made: ``tool_error_body`` unless the result's shape depends on
        the call's."""
        return self.tool_error_body([call_id], reason)

    # -- thread helpers (idempotent: every write carries a caller-chosen id) ----------

    def append_user(self, thread_id: str, message_id: str, text: str) -> None:
        self.threads.append(thread_id, [{"id": message_id, "body": self.text_body("user", text)}])

    def append_assistant(self, thread_id: str, message_id: str, message: Any) -> None:
        """``message``: text, or an SDK assistant message (kept losslessly)."""
        body = self.text_body("assistant", message) if isinstance(message, str) else None
        record = {"id": message_id, "body": body if body is not None else self.to_body(message)}
        self.threads.append(thread_id, [record])

    def append_message(self, thread_id: str, message_id: str, message: Any) -> None:
        """Any SDK message, as it is."""
        self.threads.append(thread_id, [{"id": message_id, "body": self.to_body(message)}])

    def append_tool_result(
        self,
        thread_id: str,
        message_id: str,
        call_id: str,
        content: Any,
        *,
        is_error: bool = False,
    ) -> None:
        body = self.tool_result_body(call_id, content, is_error=is_error)
        self.threads.append(thread_id, [{"id": message_id, "body": body}])

    def set_system(self, thread_id: str, text: str) -> None:
        """Set the system prompt (record id "system", always first). Idempotent, and
        it never wipes the thread: other messages are kept as they are. One script
        (``put_record``), so an append racing it is never dropped."""
        record = {"id": SYSTEM_ID, "body": self.text_body("system", text)}
        self.threads.put_record(thread_id, record, first=True)

    def messages(self, thread_id: str) -> list[Any]:
        """The thread as SDK messages."""
        return [self.from_body(r["body"]) for r in self.threads.load(thread_id)]

    def fork(
        self,
        source_id: str,
        thread_id: str,
        *,
        up_to_id: str | None = None,
        transform: Callable[[list[Message]], list[Message]] | None = None,
    ) -> str:
        """Fork a thread; ``transform`` may map or filter the copied records (e.g.
        ``adapter.drop_dangling_tool_calls``). Idempotent like ``Threads.open``; the
        transform is applied before the fork is written, so a failed one leaves no
        fork and a retry transforms again."""
        return self.threads.open(
            thread_id, "fork", source=source_id, up_to_id=up_to_id, transform=transform
        )

    # -- tool-call integrity --------------------------------------------------------

    def dangling_tool_calls(self, records: Sequence[Message]) -> dict[str, int]:
        """Tool call id -> index of the record that made it, for calls never answered."""
        calls: dict[str, int] = {}
        for index, record in enumerate(records):
            for call_id in self.tool_call_ids(record["body"]):
                calls[call_id] = index
            for call_id in self.tool_result_ids(record["body"]):
                calls.pop(call_id, None)
        return calls

    def drop_dangling_tool_calls(self, records: list[Message]) -> list[Message]:
        """A fork transform: cut the history before the first unanswered tool call."""
        return self.apply_integrity("", records, "truncate")

    def results_beside_calls(self, records: Sequence[Message]) -> list[Message]:
        """``records`` with each record that only answers tool calls (role "tool")
        moved up to just after the call record it answers and that record's other
        results, when something else (e.g. a user message) came between them: APIs
        that want the results of a reply's calls right after it (OpenAI's) would
        refuse the history otherwise. Order is kept everywhere else."""
        groups: list[list[Message]] = []
        group_of: dict[str, int] = {}  # call id -> the group its call record opened
        for record in records:
            body = record["body"]
            answers = self.tool_result_ids(body)
            if answers and self.role(body) == "tool":
                group = next((group_of[c] for c in answers if c in group_of), None)
                if group is not None:
                    groups[group].append(record)
                    continue
            groups.append([record])
            for call_id in self.tool_call_ids(body):
                group_of[call_id] = len(groups) - 1
        return [record for group in groups for record in group]

    def apply_integrity(
        self, thread_id: str, records: list[Message], policy: IntegrityPolicy
    ) -> list[Message]:
        """The history a model may see: unanswered tool calls raise ("error"), get a
        synthetic error result right after the call ("repair"), or are cut off with
        everything after them ("truncate"). Returns a new list; the thread is unchanged."""
        dangling = self.dangling_tool_calls(records)
        if not dangling:
            return list(records)
        if policy == "error":
            raise DanglingToolCall(thread_id, sorted(dangling))
        if policy == "truncate":
            return list(records[: min(dangling.values())])
        reason = "the tool call was interrupted and has no result"
        repaired: list[Message] = []
        for index, record in enumerate(records):
            repaired.append(record)
            missing = [c for c in self.tool_call_ids(record["body"]) if dangling.get(c) == index]
            for n, call_id in enumerate(missing):  # one synthetic result per call
                body = self.repair_body(record["body"], call_id, reason)
                repaired.append({"id": f"{record['id']}:repaired:{n}", "body": body})
        return repaired

    def prepare(
        self, thread_id: str, *, integrity: IntegrityPolicy | None = None, **options: Any
    ) -> dict[str, Any]:
        """The provider request for the thread's history (after the integrity policy)."""
        records = self.apply_integrity(
            thread_id, self.threads.load(thread_id), integrity or self.integrity
        )
        return self.build_request(records, **options)

    # -- the model turn: a resumable agent loop -----------------------------------

    def run_turn(
        self,
        thread_id: str,
        turn_id: str,
        call_model: Callable[[dict[str, Any]], Any],
        **options: Any,
    ) -> JSON:
        """``run_agent`` (same options), returning only the final reply's body."""
        return self.run_agent(thread_id, turn_id, call_model, **options).body

    def run_agent(
        self,
        thread_id: str,
        turn_id: str,
        call_model: Callable[[dict[str, Any]], Any],
        *,
        tool_handlers: Tools | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        on_interrupted: InterruptedPolicy = "rerun",
        rewind: bool = False,
        **options: Any,
    ) -> AgentReply:
        """A turn's agent loop, model -> tool calls -> tool results -> model ... -> the
        final answer, every step stored once; returns the last reply's body.

        Model call ``n`` stores its reply as ``reply_id(turn_id, n)``; each tool call
        of a reply runs through ``run_tool`` (at most once per tool call id, its
        result stored before the next model call). A resumed turn (a redelivered or
        re-woken task) continues from its last stored step: no model is called for a
        reply that is stored and no tool runs again whose result is stored. Without
        ``tool_handlers`` (tool name -> function) the loop stops at the first reply
        (tool calls included: the caller runs them). ``rewind=True`` drops the turn's
        first stored reply and everything after it and calls the model again, only
        while the turn holds the lease.
        ``call_model(request)`` returns the SDK's assistant message; the usage it
        reports (``usage``) is added to the turn record.
        """
        for step in range(max_steps):
            body = self._model_step(thread_id, turn_id, step, call_model, rewind, options)
            rewind = False
            calls = self.tool_calls(body) if tool_handlers is not None else []
            if not calls:
                return AgentReply(reply_id(turn_id, step), body, step + 1)
            for call in calls:
                self.run_tool(thread_id, turn_id, call, tool_handlers or {}, on_interrupted)
        raise TooManySteps(thread_id, turn_id, max_steps)

    def _model_step(
        self,
        thread_id: str,
        turn_id: str,
        step: int,
        call_model: Callable[[dict[str, Any]], Any],
        rewind: bool,
        options: Mapping[str, Any],
    ) -> JSON:
        rid = reply_id(turn_id, step)
        stored = self.threads.get(thread_id, [rid]).get(rid)
        if stored is not None and not rewind:
            return stored["body"]
        if stored is not None:
            self.threads.truncate_from(thread_id, rid, owner=turn_id)
        message = call_model(self.prepare(thread_id, **options))
        usage = self.usage(message)
        if usage:
            self.threads.turns.note_usage(thread_id, turn_id, str(step), usage)
        body = self.to_body(message)
        result = self.threads.append(thread_id, [{"id": rid, "body": body}], owner=turn_id)
        if not result.appended_ids:  # a concurrent run stored it first: that one counts
            return self.threads.get(thread_id, [rid])[rid]["body"]
        return body

    def run_tool(
        self,
        thread_id: str,
        turn_id: str,
        call: ToolCall,
        handlers: Tools,
        on_interrupted: InterruptedPolicy = "rerun",
    ) -> JSON:
        """Run one tool call at most once per tool call id and store its result
        (``tool_result_id``) before returning it; a stored result is returned as is.

        While a turn step runs (``storage.turns.current_step``) the execution must
        hold the step's claim, so two live executions never both run a tool. If an
        earlier execution began this call and died before storing its result, the
        call runs again (``on_interrupted="rerun"``: the record counts its runs) or is
        answered with an error result saying so (``"error"``: for tools whose side
        effects must not happen twice). An unknown tool or a tool that raises gets an
        error result, which the model sees."""
        rid = tool_result_id(turn_id, call.id)
        stored = self.threads.get(thread_id, [rid]).get(rid)
        if stored is not None:
            return stored["body"]
        run = current_step()
        token = run.token if run is not None and run.turn_id == turn_id else ""
        if run is not None and not run.alive:
            raise StepSuperseded(f"turn {turn_id!r}: not running tool call {call.id!r}")
        runs = self.threads.turns.tool_begin(thread_id, turn_id, call.id, token=token)
        if runs is None:
            raise StepSuperseded(f"turn {turn_id!r}: not running tool call {call.id!r}")
        function = handlers.get(call.name)
        if runs > 1 and on_interrupted == "error":
            body = self.call_result_body(
                call,
                f"tool call {call.id} ({call.name}) was interrupted and was not run again",
                is_error=True,
            )
        elif function is None:
            body = self.call_result_body(call, f"unknown tool {call.name!r}", is_error=True)
        elif isinstance(call.args, UnreadableArguments):
            error = f"the arguments are not valid JSON ({call.args.error}): {call.args.raw!r}"
            body = self.call_result_body(call, error, is_error=True)
        else:
            try:
                output = (
                    function(**call.args) if isinstance(call.args, dict) else function(call.args)
                )
                body = self.call_result_body(call, output)
            except StepSuperseded:
                raise
            except Exception as exc:  # the model sees the failure and may recover
                body = self.call_result_body(call, f"{type(exc).__name__}: {exc}", is_error=True)
        self.threads.append(thread_id, [{"id": rid, "body": body}], owner=turn_id)
        self.threads.turns.tool_end(thread_id, turn_id, call.id)
        return body
