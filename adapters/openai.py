"""The OpenAI formats: Chat Completions messages and Responses API items.

``OpenAIChatAdapter``: a body is one ``ChatCompletionMessageParam`` as JSON
(system, developer, user with content parts, assistant with ``tool_calls``,
``tool`` with ``tool_call_id``). A model reply (a ``ChatCompletion`` or its JSON)
is stored as its first choice's ``message``, exactly as the API sent it; the
request carries only the fields an assistant *input* message has (no
``annotations``, ``audio`` reduced to its id).

``OpenAIResponsesAdapter``: a body is one input item (a dict: an easy message,
``function_call_output``, ...) or a list of them. A model reply (a ``Response`` or
its JSON) is stored as its whole ``output`` list, every item as the API sent it
(``reasoning`` with ``encrypted_content`` and ``summary``, ``message``,
``function_call`` ...), so the items of one reply stay together and in order: the
API refuses a reasoning item sent without the item that followed it. The request
is ``input`` (the items, flattened) plus ``instructions`` (the ``set_system``
record), with ``store=False`` and the encrypted reasoning included by default:
the thread, not OpenAI's server, holds the history.

SDK objects are recognised by their ``to_dict`` (the SDK's own dump: the fields
the API sent, under the API's names), so the adapters also read and write threads
on a machine without the ``openai`` extra. docs/adapters.md has the decisions.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

from adapters.base import SYSTEM_ID, Adapter, ToolCall, UnreadableArguments
from storage.errors import AgentThreadsError, InvalidMessage
from storage.records import JSON, Message

DEFAULT_MODEL = "gpt-5.5"
TEXT_ROLES = ("system", "developer", "user", "assistant")
CHAT_ROLES = (*TEXT_ROLES, "tool", "function")
# The fields of ChatCompletionAssistantMessageParam: a stored reply also holds
# response-only ones (annotations, the audio's data) that a request must not carry.
ASSISTANT_PARAM_KEYS = frozenset(
    {"role", "content", "refusal", "tool_calls", "name", "audio", "function_call"}
)
# Responses call item type -> the item type that answers it (matched by call_id).
# These are the calls the application runs; hosted tools (web search, file search,
# code interpreter, MCP) are run by OpenAI and answered in the same response.
CALL_OUTPUTS = {
    "function_call": "function_call_output",
    "custom_tool_call": "custom_tool_call_output",
    "shell_call": "shell_call_output",
    "apply_patch_call": "apply_patch_call_output",
}
OUTPUT_TYPES = frozenset(CALL_OUTPUTS.values())
DEFAULT_INCLUDE = ("reasoning.encrypted_content",)


class NoReply(AgentThreadsError):
    """The API answered without a message to store: a ChatCompletion without choices,
    or a Response that failed or has no output."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return (
            f"the model returned no reply ({self.detail}); "
            "check the request, then run the turn again"
        )


def _plain(value: Any) -> Any:
    """``value`` as plain JSON: SDK models as the API sent them (``to_dict``: set
    fields only, API names such as ``async``), tuples as lists, mappings as dicts."""
    if hasattr(value, "to_dict") and hasattr(value, "model_dump"):
        return value.to_dict(mode="json")
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _field(value: Any, name: str) -> Any:
    """``value.name`` of an SDK object, ``value[name]`` of a dict (None if absent)."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _count(value: Any, *path: str) -> int | None:
    for name in path:
        value = _field(value, name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _usage(reply: Any, counts: Mapping[str, tuple[str, ...]]) -> dict[str, Any] | None:
    """The turn record's usage of a reply: each name's count at its path under
    ``reply.usage``, and ``reply.model``."""
    totals = _field(reply, "usage")
    if totals is None:
        return None
    usage: dict[str, Any] = {
        name: value for name, path in counts.items() if (value := _count(totals, *path)) is not None
    }
    model = _field(reply, "model")
    if isinstance(model, str) and model:
        usage["model"] = model
    return usage or None


def _arguments(raw: Any) -> Any:
    """A function call's ``arguments`` (a JSON string) as the tool's arguments."""
    if not isinstance(raw, str):
        return raw if raw is not None else {}
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        return UnreadableArguments(raw, str(exc))


def _output(content: Any, is_error: bool) -> Any:
    """A tool's return value as a tool result's content: text as it is, a list of
    content parts (dicts with a ``type``) as it is, anything else as JSON text; an
    error's text starts with "Error: " (neither API has an error flag)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list | tuple) and content and not is_error:
        parts = _plain(content)
        if all(isinstance(part, dict) and "type" in part for part in parts):
            return parts
        text = json.dumps(parts, ensure_ascii=False)
    else:
        text = json.dumps(_plain(content), ensure_ascii=False)
    return f"Error: {text}" if is_error else text


def _text_body(role: str, text: str) -> JSON:
    if role not in TEXT_ROLES:
        raise InvalidMessage(f"an OpenAI text message's role is one of {TEXT_ROLES}, got {role!r}")
    return {"role": role, "content": text}


def _dict(body: JSON) -> dict[str, Any]:
    return body if isinstance(body, dict) else {}


# -- Chat Completions -------------------------------------------------------------------

_CHAT_USAGE = {
    "input_tokens": ("prompt_tokens",),  # cached tokens included, unlike Anthropic's
    "output_tokens": ("completion_tokens",),  # reasoning tokens included
    "cache_read_input_tokens": ("prompt_tokens_details", "cached_tokens"),
    "cache_creation_input_tokens": ("prompt_tokens_details", "cache_write_tokens"),
    "reasoning_tokens": ("completion_tokens_details", "reasoning_tokens"),
}


def _chat_message(message: Any) -> Any:
    """The message of a ``ChatCompletion`` (or its JSON): its first choice's."""
    if _field(message, "object") != "chat.completion" and not (
        isinstance(message, Mapping) and "choices" in message
    ):
        return message
    choices = _field(message, "choices") or []
    if not choices or _field(choices[0], "message") is None:
        raise NoReply("the ChatCompletion has no choices")
    return _field(choices[0], "message")


class OpenAIChatAdapter(Adapter):
    """Chat Completions ``ChatCompletionMessageParam`` bodies; requests for
    ``client.chat.completions.create``."""

    name = "openai_chat"

    def to_body(self, message: Any) -> JSON:
        """A message param dict (its parts may be SDK objects), a
        ``ChatCompletionMessage``, or a ``ChatCompletion`` (or its JSON): its first
        choice's message, as the API sent it."""
        body = _plain(_chat_message(message))
        if not isinstance(body, dict):
            raise InvalidMessage(
                "expected a Chat Completions message dict, ChatCompletionMessage or "
                f"ChatCompletion, got {type(message).__name__}"
            )
        role = body.get("role")
        if role not in CHAT_ROLES:
            hint = "; a Responses API item goes to OpenAIResponsesAdapter" if "type" in body else ""
            raise InvalidMessage(
                f"a Chat message's role is one of {CHAT_ROLES}, got {role!r}{hint}"
            )
        if role == "tool" and not isinstance(body.get("tool_call_id"), str):
            raise InvalidMessage("a Chat 'tool' message needs the 'tool_call_id' it answers")
        calls = body.get("tool_calls")
        if calls is not None and not (
            isinstance(calls, list)
            and all(isinstance(c, dict) and isinstance(c.get("id"), str) for c in calls)
        ):
            raise InvalidMessage("a Chat message's 'tool_calls' is a list of calls with an 'id'")
        result: JSON = body
        return result

    def from_body(self, body: JSON) -> dict[str, Any]:
        return dict(_dict(body))

    def role(self, body: JSON) -> str:
        role = _dict(body).get("role")
        return {"developer": "system", "function": "tool"}.get(str(role), str(role or ""))

    def _calls(self, body: JSON) -> list[dict[str, Any]]:
        if _dict(body).get("role") != "assistant":
            return []
        calls = _dict(body).get("tool_calls") or []
        return [c for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)]

    def tool_call_ids(self, body: JSON) -> list[str]:
        return [call["id"] for call in self._calls(body)]

    def tool_calls(self, body: JSON) -> list[ToolCall]:
        """Function calls (arguments parsed from their JSON) and custom tool calls
        (their ``input`` string), both answered by a ``tool`` message."""
        calls = []
        for call in self._calls(body):
            if call.get("type") == "custom":
                custom = _dict(call.get("custom"))
                calls.append(
                    ToolCall(call["id"], str(custom.get("name") or ""), custom.get("input"))
                )
            else:
                function = _dict(call.get("function"))
                name = str(function.get("name") or "")
                calls.append(ToolCall(call["id"], name, _arguments(function.get("arguments"))))
        return calls

    def usage(self, message: Any) -> dict[str, Any] | None:
        """A ``ChatCompletion``'s (or its JSON's) token counts and model."""
        return _usage(message, _CHAT_USAGE)

    def tool_result_ids(self, body: JSON) -> list[str]:
        call_id = _dict(body).get("tool_call_id")
        return [call_id] if _dict(body).get("role") == "tool" and isinstance(call_id, str) else []

    def tool_error_body(self, call_ids: Sequence[str], reason: str) -> JSON:
        """One ``tool`` message: it answers exactly one call id."""
        if len(call_ids) != 1:
            raise ValueError(
                f"a Chat tool message answers one tool call, got {list(call_ids)}: "
                "make one tool_error_body per call id"
            )
        return self.tool_result_body(call_ids[0], reason, is_error=True)

    def text_body(self, role: str, text: str) -> JSON:
        return _text_body(role, text)

    def tool_result_body(self, call_id: str, content: Any, *, is_error: bool = False) -> JSON:
        return {"role": "tool", "tool_call_id": call_id, "content": _output(content, is_error)}

    def build_request(
        self,
        records: Sequence[Message],
        *,
        model: str = DEFAULT_MODEL,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """``client.chat.completions.create(**request)``'s arguments: the system
        message stays first in ``messages``; each tool result follows its call."""
        messages = [self._request_message(r["body"]) for r in self.results_beside_calls(records)]
        request: dict[str, Any] = {"model": model, "messages": messages}
        if tools:
            request["tools"] = [_plain(tool) for tool in tools]
        request.update(extra)
        return request

    @staticmethod
    def _request_message(body: JSON) -> dict[str, Any]:
        message = copy.deepcopy(_dict(body))  # never touch the stored body
        if message.get("role") != "assistant":
            return message
        sent = {
            key: value
            for key, value in message.items()
            if key in ASSISTANT_PARAM_KEYS and (value is not None or key == "content")
        }
        audio = sent.get("audio")
        if isinstance(audio, dict) and "id" in audio:  # a reply's audio goes back by id
            sent["audio"] = {"id": audio["id"]}
        return sent


# -- Responses ------------------------------------------------------------------------------

_RESPONSES_USAGE = {
    "input_tokens": ("input_tokens",),  # cached tokens included
    "output_tokens": ("output_tokens",),  # reasoning tokens included
    "cache_read_input_tokens": ("input_tokens_details", "cached_tokens"),
    "cache_creation_input_tokens": ("input_tokens_details", "cache_write_tokens"),
    "reasoning_tokens": ("output_tokens_details", "reasoning_tokens"),
}


def _is_response(message: Any) -> bool:
    """A ``Response`` or its JSON (an input item has a ``type`` or a ``role``)."""
    if _field(message, "object") == "response":
        return True
    return (
        isinstance(message, Mapping)
        and isinstance(message.get("output"), list)
        and not {"type", "role"} & set(message)
    )


def _response_output(message: Any) -> Any:
    """The output items of a ``Response`` (or its JSON); anything else as it is."""
    if not _is_response(message):
        return message
    if _field(message, "status") == "failed":
        error = _field(message, "error")
        raise NoReply(f"the response failed: {_field(error, 'code')}: {_field(error, 'message')}")
    output = _field(message, "output") or []
    if not output:
        raise NoReply(f"the response has no output (status {_field(message, 'status')!r})")
    return list(output)


def _items(body: JSON) -> list[dict[str, Any]]:
    items = body if isinstance(body, list) else [body]
    return [item for item in items if isinstance(item, dict)]


def _check_item(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidMessage(f"a Responses input item is a JSON object, got {type(item).__name__}")
    role, kind = item.get("role"), item.get("type")
    if role == "tool" or "tool_calls" in item or "tool_call_id" in item:
        raise InvalidMessage(
            "this is a Chat Completions message, not a Responses item: use OpenAIChatAdapter, "
            "or send tool calls as function_call / function_call_output items"
        )
    if kind is None and role not in TEXT_ROLES:
        raise InvalidMessage(
            f"a Responses input item has a 'type', or a 'role' in {TEXT_ROLES}; got {item!r:.200}"
        )
    if kind is not None and not isinstance(kind, str):
        raise InvalidMessage(f"a Responses item's 'type' is a string, got {kind!r:.80}")
    if (kind in CALL_OUTPUTS or kind in OUTPUT_TYPES) and not isinstance(item.get("call_id"), str):
        raise InvalidMessage(f"a Responses {kind!r} item needs its 'call_id'")
    return item


def _item_role(item: dict[str, Any]) -> str:
    role = item.get("role")
    if role is not None:
        return "system" if role in ("system", "developer") else str(role)
    if item.get("type") in OUTPUT_TYPES:
        return "tool"
    return "assistant"  # reasoning, calls, hosted tool calls: model output


class OpenAIResponsesAdapter(Adapter):
    """Responses API input items (one per body, or a list); requests for
    ``client.responses.create``."""

    name = "openai_responses"

    def to_body(self, message: Any) -> JSON:
        """An input item (dict or SDK object), a list of them, or a ``Response`` (or
        its JSON): its ``output`` items. Every item is kept as given."""
        body = _plain(_response_output(message))
        if isinstance(body, list):
            if not body:
                raise InvalidMessage("an empty list of Responses items is no message")
            items: JSON = [_check_item(item) for item in body]
            return items
        checked: JSON = _check_item(body)
        return checked

    def from_body(self, body: JSON) -> Any:
        """The item (a dict) or the items (a list), as stored."""
        return list(body) if isinstance(body, list) else dict(_dict(body))

    def role(self, body: JSON) -> str:
        """ "tool" for a body of call outputs only, "assistant" when it holds model
        output, else the role of its messages ("system" for developer too)."""
        roles = {_item_role(item) for item in _items(body)}
        if roles == {"tool"}:
            return "tool"
        if "assistant" in roles:
            return "assistant"
        return "system" if roles == {"system"} else "user"

    def tool_call_ids(self, body: JSON) -> list[str]:
        return [
            str(item["call_id"])
            for item in _items(body)
            if item.get("type") in CALL_OUTPUTS and "call_id" in item
        ]

    def tool_result_ids(self, body: JSON) -> list[str]:
        return [
            str(item["call_id"])
            for item in _items(body)
            if item.get("type") in OUTPUT_TYPES and "call_id" in item
        ]

    def tool_calls(self, body: JSON) -> list[ToolCall]:
        """The ``function_call`` items (arguments parsed from their JSON) and
        ``custom_tool_call`` items (their ``input`` string), in order. Shell and
        apply-patch calls are the caller's to run (they run on its machine)."""
        calls = []
        for item in _items(body):
            kind = item.get("type")
            if kind == "function_call":
                args = _arguments(item.get("arguments"))
            elif kind == "custom_tool_call":
                args = item.get("input")
            else:
                continue
            calls.append(ToolCall(str(item["call_id"]), str(item.get("name") or ""), args, kind))
        return calls

    def usage(self, message: Any) -> dict[str, Any] | None:
        """A ``Response``'s (or its JSON's) token counts and model."""
        return _usage(message, _RESPONSES_USAGE)

    def tool_error_body(self, call_ids: Sequence[str], reason: str) -> JSON:
        """``function_call_output`` items (one, or a list of several)."""
        items = [self._output_item("function_call", c, reason, is_error=True) for c in call_ids]
        return items[0] if len(items) == 1 else list(items)

    def repair_body(self, call_body: JSON, call_id: str, reason: str) -> JSON:
        """The output item the call's type wants (a custom tool call's is its own)."""
        kind = next(
            (str(i["type"]) for i in _items(call_body) if i.get("call_id") == call_id),
            "function_call",
        )
        return self._output_item(kind, call_id, reason, is_error=True)

    def call_result_body(self, call: ToolCall, content: Any, *, is_error: bool = False) -> JSON:
        return self._output_item(call.kind or "function_call", call.id, content, is_error=is_error)

    def text_body(self, role: str, text: str) -> JSON:
        return _text_body(role, text)

    def tool_result_body(self, call_id: str, content: Any, *, is_error: bool = False) -> JSON:
        """A ``function_call_output`` item (``append_tool_result(kind=...)`` for others)."""
        return self._output_item("function_call", call_id, content, is_error=is_error)

    def append_tool_result(
        self,
        thread_id: str,
        message_id: str,
        call_id: str,
        content: Any,
        *,
        is_error: bool = False,
        kind: str = "function_call",
    ) -> None:
        """As the base method; ``kind`` is the type of the call answered (a
        ``custom_tool_call`` is answered by a ``custom_tool_call_output``)."""
        body = self._output_item(kind, call_id, content, is_error=is_error)
        self.threads.append(thread_id, [{"id": message_id, "body": body}])

    @staticmethod
    def _output_item(kind: str, call_id: str, content: Any, *, is_error: bool) -> JSON:
        output_type = CALL_OUTPUTS.get(kind)
        if output_type is None:
            raise InvalidMessage(
                f"no Responses output answers a {kind!r}: one of {sorted(CALL_OUTPUTS)}"
            )
        item: dict[str, Any] = {"type": output_type, "call_id": call_id}
        if kind == "shell_call":  # stdout/stderr and an exit code, per command
            text = content if isinstance(content, str) else json.dumps(_plain(content))
            item["output"] = [
                {
                    "stdout": "" if is_error else text,
                    "stderr": text if is_error else "",
                    "outcome": {"type": "exit", "exit_code": 1 if is_error else 0},
                }
            ]
        elif kind == "apply_patch_call":
            item["status"] = "failed" if is_error else "completed"
            item["output"] = _output(content, False)
        else:
            item["output"] = _output(content, is_error)
        return item

    def build_request(
        self,
        records: Sequence[Message],
        *,
        model: str = DEFAULT_MODEL,
        tools: Sequence[Mapping[str, Any]] | None = None,
        store: bool = False,
        include: Sequence[str] = DEFAULT_INCLUDE,
        **extra: Any,
    ) -> dict[str, Any]:
        """``client.responses.create(**request)``'s arguments: the ``set_system``
        record (a text) as ``instructions``, every other item, in order, in ``input``
        (each tool output after its call). ``store=False`` and the encrypted
        reasoning included (``include``): the next request sends the reasoning back
        from the thread, whatever OpenAI keeps (pass ``store=True``, ``include=()``
        for server-side state instead)."""
        instructions: str | None = None
        items: list[Any] = []
        for record in self.results_beside_calls(records):
            body = record["body"]
            content = _dict(body).get("content")
            if (
                record["id"] == SYSTEM_ID
                and self.role(body) == "system"
                and isinstance(content, str)
            ):
                instructions = content
                continue
            items.extend(copy.deepcopy(_items(body)))  # never touch the stored bodies
        request: dict[str, Any] = {"model": model, "input": items}
        if instructions is not None:
            request["instructions"] = instructions
        if tools:
            request["tools"] = [_plain(tool) for tool in tools]
        request["store"] = store
        if include:
            request["include"] = list(include)
        request.update(extra)
        return request
