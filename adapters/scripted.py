"""An offline, deterministic "model" and its plain chat format, for the demo and the
tests: no network, no SDK.

Bodies are ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``; an
assistant body may carry ``"tool_calls": [{"id", "name", "args"}]`` and a tool
body answers one call with ``"tool_call_id"`` (and ``"is_error"``).

``ScriptedModel(script)`` answers a request from its script: the n-th reply of a
thread is ``script[n % len(script)]`` where n counts the assistant messages the
history already holds, so the same history always gets the same answer. A script
entry is a text (``{user}`` is replaced by the last user message),
``{"tool_call": {"name": ..., "args": {...}}}`` to emit a tool call, or
``{"tool_calls": [{"name": ..., "args": {...}}, ...]}`` for several at once. A
``{tool}`` in a text is replaced by the content of the last tool result. Every
reply reports usage: words in (the request) and out (the reply) as tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapters.base import Adapter, ToolCall
from storage.records import JSON, Message


def _body(value: JSON) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class ScriptedAdapter(Adapter):
    """The plain chat format above."""

    name = "scripted"

    def to_body(self, message: Any) -> JSON:
        # usage is about the call, not part of the message (see ``usage``)
        body: JSON = {k: v for k, v in dict(message).items() if k != "usage"}
        return body

    def from_body(self, body: JSON) -> Any:
        return dict(_body(body))

    def role(self, body: JSON) -> str:
        return str(_body(body).get("role", "user"))

    def tool_call_ids(self, body: JSON) -> list[str]:
        calls = _body(body).get("tool_calls") or []
        return [str(call["id"]) for call in calls if isinstance(call, dict)]

    def tool_calls(self, body: JSON) -> list[ToolCall]:
        calls = _body(body).get("tool_calls") or []
        return [
            ToolCall(str(c["id"]), str(c.get("name", "")), c.get("args", {}))
            for c in calls
            if isinstance(c, dict)
        ]

    def usage(self, message: Any) -> dict[str, Any] | None:
        usage = message.get("usage") if isinstance(message, dict) else None
        return dict(usage) if isinstance(usage, dict) else None

    def tool_result_ids(self, body: JSON) -> list[str]:
        call_id = _body(body).get("tool_call_id")
        return [str(call_id)] if call_id else []

    def tool_error_body(self, call_ids: Sequence[str], reason: str) -> JSON:
        return {"role": "tool", "tool_call_id": call_ids[0], "content": reason, "is_error": True}

    def text_body(self, role: str, text: str) -> JSON:
        return {"role": role, "content": text}

    def tool_result_body(self, call_id: str, content: Any, *, is_error: bool = False) -> JSON:
        return {
            "role": "tool",
            "tool_call_id": call_id,
            "content": str(content),
            "is_error": is_error,
        }

    def build_request(self, records: Sequence[Message], **options: Any) -> dict[str, Any]:
        return {"messages": [r["body"] for r in records], **options}


@dataclass(frozen=True)
class ScriptedModel:
    script: Sequence[str | dict[str, Any]]

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        """The next scripted assistant message for this request's history."""
        if not self.script:
            raise ValueError("ScriptedModel needs at least one scripted reply")
        history = [_body(m) for m in request["messages"]]
        answered = sum(1 for m in history if m.get("role") == "assistant")
        last_user = next(
            (m.get("content") for m in reversed(history) if m.get("role") == "user"), ""
        )
        last_tool = next(
            (m.get("content") for m in reversed(history) if m.get("role") == "tool"), ""
        )
        entry = self.script[answered % len(self.script)]
        reply: dict[str, Any]
        if isinstance(entry, dict) and ("tool_call" in entry or "tool_calls" in entry):
            wanted = entry.get("tool_calls") or [entry["tool_call"]]
            ids = (
                [f"call-{answered}"]
                if len(wanted) == 1
                else [f"call-{answered}-{k}" for k in range(len(wanted))]
            )
            calls = [
                {"id": i, "name": c["name"], "args": c.get("args", {})}
                for i, c in zip(ids, wanted, strict=True)
            ]
            reply = {"role": "assistant", "content": "", "tool_calls": calls}
        else:
            text = str(entry).format(user=last_user, tool=last_tool)
            reply = {"role": "assistant", "content": text}
        words_in = sum(len(str(m.get("content", "")).split()) for m in history)
        words_out = len(str(reply["content"]).split()) + 8 * len(reply.get("tool_calls", []))
        reply["usage"] = {
            "model": "scripted",
            "input_tokens": words_in,
            "output_tokens": words_out,
        }
        return reply

    def reply(self, history: Sequence[Message]) -> str:
        """The text of the next reply for stored ``history`` (plain bodies)."""
        return str(self({"messages": [m["body"] for m in history]})["content"])
