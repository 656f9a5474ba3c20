"""LangChain ``BaseMessage`` over agent-threads.

A body is langchain-core's own dict form of one message,
``messages_to_dict([m])[0]`` = ``{"type": "ai", "data": {...}}``, restored with
``messages_from_dict``: that keeps ``tool_calls``, ``tool_call_id``, ``id``,
``name``, ``additional_kwargs``, ``response_metadata`` and content blocks as they are.

A LangChain ``ToolMessage`` answers exactly one tool call (the base class's
"repair" asks for one error body per unanswered call). A tool's output that is
neither text nor content blocks is sent as JSON, as LangGraph's ``ToolNode`` does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    messages_from_dict,
    messages_to_dict,
)

from adapters.base import Adapter, ToolCall
from storage.records import JSON, Message

# The dict form's "type" (chunks included) -> the role agent-threads sees.
_ROLES = {
    "system": "system",
    "SystemMessageChunk": "system",
    "human": "user",
    "HumanMessageChunk": "user",
    "ai": "assistant",
    "AIMessageChunk": "assistant",
    "tool": "tool",
    "ToolMessageChunk": "tool",
    "function": "tool",
    "FunctionMessageChunk": "tool",
}
_ASSISTANT_TYPES = frozenset({"ai", "AIMessageChunk"})
_TOOL_TYPES = frozenset({"tool", "ToolMessageChunk"})
_TEXT_MESSAGES: dict[str, type[BaseMessage]] = {
    "system": SystemMessage,
    "user": HumanMessage,
    "assistant": AIMessage,
}


def _data(body: JSON) -> dict[str, Any]:
    if isinstance(body, dict) and isinstance(body.get("data"), dict):
        data: dict[str, Any] = body["data"]  # type: ignore[assignment]
        return data
    return {}


def _type(body: JSON) -> str:
    kind = body.get("type") if isinstance(body, dict) else None
    return kind if isinstance(kind, str) else ""


def _tool_content(content: Any) -> Any:
    """Text and content blocks as they are; any other output as JSON (else its str)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and "type" in b for b in content):
        return content
    try:
        return json.dumps(content, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(content)


def _model_name(metadata: Mapping[str, Any]) -> str | None:
    """The model a reply's ``response_metadata`` names (each provider its own key)."""
    for key in ("model_name", "model", "model_id"):
        name = metadata.get(key)
        if isinstance(name, str) and name:
            return name
    return None


class LangChainAdapter(Adapter):
    """LangChain messages (``langchain_core.messages.BaseMessage``) as stored bodies."""

    name = "langchain"

    # -- format hooks ---------------------------------------------------------------

    def to_body(self, message: Any) -> JSON:
        if not isinstance(message, BaseMessage):
            raise TypeError(
                f"LangChainAdapter stores langchain_core BaseMessage objects, "
                f"got {type(message).__name__}"
            )
        body: JSON = messages_to_dict([message])[0]
        return body

    def from_body(self, body: JSON) -> BaseMessage:
        if not isinstance(body, dict):
            raise TypeError(f"a LangChain body is a dict, got {type(body).__name__}")
        return messages_from_dict([body])[0]

    def role(self, body: JSON) -> str:
        kind = _type(body)
        if kind in ("chat", "ChatMessageChunk"):
            return str(_data(body).get("role", "user"))
        return _ROLES.get(kind, "user")

    def tool_call_ids(self, body: JSON) -> list[str]:
        if _type(body) not in _ASSISTANT_TYPES:
            return []
        calls = _data(body).get("tool_calls") or []
        return [c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)]

    def tool_calls(self, body: JSON | BaseMessage) -> list[ToolCall]:
        """An AI message's ``tool_calls`` (id, name, args); a body or the message."""
        if isinstance(body, BaseMessage):
            body = self.to_body(body)
        if _type(body) not in _ASSISTANT_TYPES:
            return []
        calls = _data(body).get("tool_calls") or []
        return [
            ToolCall(c["id"], str(c.get("name") or ""), c.get("args") or {})
            for c in calls
            if isinstance(c, dict) and isinstance(c.get("id"), str)
        ]

    def usage(self, message: Any) -> dict[str, Any] | None:
        """``usage_metadata`` (input, output, cache-read and reasoning tokens) and the
        model ``response_metadata`` names, of an ``AIMessage``, its dict form or the
        ``data`` of it."""
        if isinstance(message, BaseMessage):
            fields: Mapping[str, Any] = {
                "usage_metadata": getattr(message, "usage_metadata", None),
                "response_metadata": message.response_metadata,
            }
        elif isinstance(message, Mapping):
            fields = _data(dict(message)) or message
        else:
            return None
        counts = fields.get("usage_metadata")
        counts = counts if isinstance(counts, Mapping) else {}
        usage: dict[str, Any] = {
            key: counts[key] for key in ("input_tokens", "output_tokens") if key in counts
        }
        for detail, key, name in (
            ("input_token_details", "cache_read", "cache_read_input_tokens"),
            ("output_token_details", "reasoning", "reasoning_tokens"),
        ):
            details = counts.get(detail)
            if isinstance(details, Mapping) and isinstance(details.get(key), int):
                usage[name] = details[key]
        metadata = fields.get("response_metadata")
        model = _model_name(metadata) if isinstance(metadata, Mapping) else None
        if model:
            usage["model"] = model
        return usage or None

    def tool_result_ids(self, body: JSON) -> list[str]:
        if _type(body) not in _TOOL_TYPES:
            return []
        call_id = _data(body).get("tool_call_id")
        return [call_id] if isinstance(call_id, str) else []

    def tool_error_body(self, call_ids: Sequence[str], reason: str) -> JSON:
        """One error ``ToolMessage``: it can answer exactly one call id (this adapter's
        ``apply_integrity`` calls it once per unanswered call)."""
        if len(call_ids) != 1:
            raise ValueError(
                f"a LangChain ToolMessage answers one tool call, got {list(call_ids)}: "
                "make one tool_error_body per call id"
            )
        return self.tool_result_body(call_ids[0], reason, is_error=True)

    def text_body(self, role: str, text: str) -> JSON:
        kind = _TEXT_MESSAGES.get(role)
        if kind is None:
            raise ValueError(f"unknown role {role!r}: use 'system', 'user' or 'assistant'")
        return self.to_body(kind(content=text))

    def tool_result_body(self, call_id: str, content: Any, *, is_error: bool = False) -> JSON:
        message = ToolMessage(
            content=_tool_content(content),
            tool_call_id=call_id,
            status="error" if is_error else "success",
        )
        return self.to_body(message)

    def build_request(self, records: Sequence[Message], **options: Any) -> dict[str, Any]:
        """``{"messages": [BaseMessage, ...], **options}``; the system message stays in
        the list, as LangChain chat models expect."""
        return {"messages": [self.from_body(r["body"]) for r in records], **options}
