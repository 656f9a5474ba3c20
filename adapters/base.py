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
from collections.abc import Callable, Sequence
from typing import Any, Literal

from storage.errors import AgentThreadsError
from storage.records import JSON, Message
from storage.tiered import Threads

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


def reply_id(turn_id: str) -> str:
    """The id of a turn's assistant reply: derived from the turn, so a re-run of the
    turn finds its reply instead of appending a second one."""
    return f"{turn_id}:assistant"


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
                body = self.tool_error_body([call_id], reason)
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

    # -- the model turn -----------------------------------------------------------

    def run_turn(
        self,
        thread_id: str,
        turn_id: str,
        call_model: Callable[[dict[str, Any]], Any],
        *,
        rewind: bool = False,
        **options: Any,
    ) -> JSON:
        """One model call whose reply is appended exactly once.

        ``call_model(request)`` returns the SDK's assistant message. If the turn's
        reply is already stored (a redelivered or retried task), it is returned
        without calling the model; ``rewind=True`` instead drops it (and anything
        after it) and calls again, only while the turn holds the lease
        (``LeaseLost`` otherwise, with nothing cut).
        """
        rid = reply_id(turn_id)
        records = self.threads.load(thread_id)
        stored = next((r for r in records if r["id"] == rid), None)
        if stored is not None and not rewind:
            return stored["body"]
        if stored is not None:
            self.threads.truncate_from(thread_id, rid, owner=turn_id)
        request = self.prepare(thread_id, **options)
        body = self.to_body(call_model(request))
        self.threads.append(thread_id, [{"id": rid, "body": body}], owner=turn_id)
        return body
