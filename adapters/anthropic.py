"""The Anthropic Messages API format.

A body is a ``MessageParam`` as JSON: ``{"role": "user" | "assistant", "content":
str | [blocks]}``, every content block kept as the API spells it (text, image,
document, tool_use, tool_result with nested content, thinking with its signature,
redacted_thinking, ``cache_control`` on any block), so a thread sent back to the
API is byte-for-byte what the model produced. The system prompt is the body
``{"role": "system", "content": str | [text blocks]}``; ``build_request`` lifts it
out of ``messages`` into the request's ``system``.

The SDK is not imported here: SDK objects (a response ``Message``, its content
blocks) are recognised by their pydantic ``model_dump``, so the adapter also reads
and writes threads on a machine without the ``anthropic`` extra.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from adapters.base import Adapter, ToolCall
from storage.errors import InvalidMessage
from storage.records import JSON, Message

MAX_CACHE_BREAKPOINTS = 4
"""The API refuses a request with more ``cache_control`` breakpoints than this
(tools, system and messages together)."""

DEFAULT_MODEL = "claude-sonnet-4-5"
DEFAULT_MAX_TOKENS = 1024
ROLES = ("system", "user", "assistant")
# The API refuses cache_control on these blocks ("thinking blocks cannot be cached
# directly"); a breakpoint goes on the last block that is not one of them.
_UNCACHEABLE = frozenset({"thinking", "redacted_thinking"})


def _plain(value: Any) -> Any:
    """``value`` as plain JSON: SDK models dumped without their unset (None) fields,
    tuples as lists, mappings as dicts. Everything else is left for the storage
    layer's JSON validation to accept or refuse."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _blocks(content: Any) -> list[Any]:
    """Message content as a list of blocks (a string becomes one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def _field(value: Any, name: str) -> Any:
    """``value.name`` of an SDK object, ``value[name]`` of a dict (None if absent)."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


# The usage counts a reply reports: ``input_tokens`` excludes the cached prefix, whose
# tokens (written and read) are billed apart.
_USAGE_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


def _count_cache_control(value: Any) -> int:
    """How many ``cache_control`` breakpoints ``value`` holds, at any depth (a
    tool_result's nested blocks count too)."""
    if isinstance(value, dict):
        here = 1 if value.get("cache_control") is not None else 0
        return here + sum(_count_cache_control(item) for item in value.values())
    if isinstance(value, list):
        return sum(_count_cache_control(item) for item in value)
    return 0


class AnthropicAdapter(Adapter):
    """Anthropic ``MessageParam`` bodies over ``Threads``."""

    name = "anthropic"

    # -- format hooks ---------------------------------------------------------------

    def to_body(self, message: Any) -> JSON:
        """A ``MessageParam`` dict (its blocks may be SDK objects) or an SDK response
        ``Message`` (role and content blocks kept; id, usage, stop_reason dropped)."""
        if hasattr(message, "model_dump") and hasattr(message, "content"):
            role, content = getattr(message, "role", None), message.content
        elif isinstance(message, Mapping):
            role, content = message.get("role"), message.get("content")
            extra = sorted(set(message) - {"role", "content"})
            if extra:
                raise InvalidMessage(
                    f"an Anthropic message has only 'role' and 'content', got also {extra}"
                )
        else:
            raise InvalidMessage(
                f"expected an Anthropic MessageParam dict or anthropic.types.Message, "
                f"got {type(message).__name__}"
            )
        if role not in ROLES:
            raise InvalidMessage(f"Anthropic message role must be one of {ROLES}, got {role!r}")
        if not isinstance(content, str | list | tuple):
            raise InvalidMessage(
                f"Anthropic message content must be a string or a list of blocks, "
                f"got {type(content).__name__}"
            )
        body: dict[str, Any] = {"role": role, "content": _plain(content)}
        return body

    def from_body(self, body: JSON) -> dict[str, Any]:
        """The ``MessageParam`` dict (the system prompt stays a ``role: system`` dict)."""
        return dict(self._message(body))

    def role(self, body: JSON) -> str:
        role = self._message(body).get("role")
        return role if isinstance(role, str) else ""

    def tool_call_ids(self, body: JSON) -> list[str]:
        return [
            str(block["id"]) for block in self._block_list(body) if block.get("type") == "tool_use"
        ]

    def tool_calls(self, body: JSON) -> list[ToolCall]:
        """The body's ``tool_use`` blocks (id, name, input)."""
        return [
            ToolCall(str(block["id"]), str(block.get("name", "")), block.get("input") or {})
            for block in self._block_list(body)
            if block.get("type") == "tool_use"
        ]

    def usage(self, message: Any) -> dict[str, Any] | None:
        """``message.usage`` (input, output and cache tokens) and ``message.model`` of a
        response ``Message``, or of its JSON as the API sends it."""
        counts = _field(message, "usage")
        if counts is None:
            return None
        usage: dict[str, Any] = {
            name: value
            for name in _USAGE_COUNTS
            if isinstance(value := _field(counts, name), int) and not isinstance(value, bool)
        }
        model = _field(message, "model")
        if isinstance(model, str) and model:
            usage["model"] = model
        return usage or None

    def tool_result_ids(self, body: JSON) -> list[str]:
        return [
            str(block["tool_use_id"])
            for block in self._block_list(body)
            if block.get("type") == "tool_result"
        ]

    def tool_error_body(self, call_ids: Sequence[str], reason: str) -> JSON:
        body: dict[str, Any] = {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call_id, "content": reason, "is_error": True}
                for call_id in call_ids
            ],
        }
        return body

    def text_body(self, role: str, text: str) -> JSON:
        if role not in ROLES:
            raise InvalidMessage(f"Anthropic message role must be one of {ROLES}, got {role!r}")
        return {"role": role, "content": text}

    def tool_result_body(self, call_id: str, content: Any, *, is_error: bool = False) -> JSON:
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": call_id,
            "content": _plain(content),
        }
        if is_error:
            block["is_error"] = True
        body: dict[str, Any] = {"role": "user", "content": [block]}
        return body

    def build_request(
        self,
        records: Sequence[Message],
        *,
        model: str = DEFAULT_MODEL,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        tools: Sequence[Mapping[str, Any]] | None = None,
        cache_breakpoints: int = 0,
        **extra: Any,
    ) -> dict[str, Any]:
        """``client.messages.create(**request)``'s arguments for this history.

        The system record becomes ``system``; consecutive messages of one role are
        merged (the API wants user and assistant to alternate, and a repaired tool
        result or a user message after a crash would otherwise break that);
        ``cache_breakpoints`` marks the last block of the last N messages with an
        ephemeral ``cache_control``, never exceeding the API's limit of 4 together
        with the breakpoints the stored blocks and ``tools`` already carry.
        """
        system: list[Any] = []
        messages: list[dict[str, Any]] = []
        for record in records:
            body = copy.deepcopy(self._message(record["body"]))  # never touch the caller's
            if body.get("role") == "system":
                system.append(body.get("content", ""))
                continue
            if messages and messages[-1]["role"] == body.get("role"):
                last = messages[-1]
                last["content"] = _blocks(last["content"]) + _blocks(body.get("content", ""))
                continue
            messages.append({"role": body.get("role"), "content": body.get("content", "")})

        request: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
        if len(system) == 1:
            request["system"] = system[0]
        elif system:
            request["system"] = [block for content in system for block in _blocks(content)]
        request["messages"] = messages
        if tools:
            request["tools"] = [_plain(tool) for tool in tools]
        request.update(extra)

        if cache_breakpoints > 0:
            used = _count_cache_control(
                [request.get("system"), request.get("tools"), request["messages"]]
            )
            self._add_cache_breakpoints(
                messages, min(cache_breakpoints, MAX_CACHE_BREAKPOINTS - used)
            )
        return request

    # -- internals ------------------------------------------------------------------

    @staticmethod
    def _add_cache_breakpoints(messages: list[dict[str, Any]], budget: int) -> None:
        """Mark the last cacheable block of each of the last ``budget`` messages; a
        message whose last block is already a breakpoint costs nothing."""
        for message in reversed(messages[-budget:] if budget > 0 else []):
            blocks = _blocks(message["content"])
            target = next(
                (
                    b
                    for b in reversed(blocks)
                    if isinstance(b, dict) and b.get("type") not in _UNCACHEABLE
                ),
                None,
            )
            if target is None or target.get("cache_control") is not None:
                continue
            target["cache_control"] = {"type": "ephemeral"}
            message["content"] = blocks

    @staticmethod
    def _message(body: JSON) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidMessage(f"an Anthropic body is a JSON object, got {type(body).__name__}")
        return body

    def _block_list(self, body: JSON) -> list[dict[str, Any]]:
        content = self._message(body).get("content")
        if not isinstance(content, list):
            return []
        return [block for block in content if isinstance(block, dict)]
