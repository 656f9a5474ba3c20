"""The Google GenAI adapter: ``google.genai.types.Content`` as stored bodies.

A body is ``content.model_dump(mode="json", exclude_none=True)``: every part is kept
(text, thought and thought_signature, inline_data with its bytes as base64,
function_call and function_response), and ``Content.model_validate(body)`` gives
the same ``Content`` back. The system prompt is stored as
``{"role": "system", "parts": [{"text": ...}]}`` and sent as the request's
``system_instruction``, never inside ``contents``.

Gemini often omits function call ids. A call or a response without an id is then
matched by its function name, in order: the first ``f`` of a message is ``"f"``,
the second ``"f#2"``, and so on, and the responses are numbered the same way over
the tool messages that follow the call (the agent loop stores one response per
message), so two parallel calls of one function are answered by the next two
responses. ``build_request`` sends consecutive tool messages as one ``Content``:
Gemini wants every response to a turn's calls in the next turn. The agent loop
keys such a call by its match key and a digest of the reply (``"f#2@<digest>"``),
so a turn that calls ``f`` again in a later reply runs it again.

A model reply may be given as the ``GenerateContentResponse`` (or its API JSON):
its first candidate is the message, and ``usage`` reads its ``usage_metadata``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.genai import types

from adapters.base import Adapter, IntegrityPolicy, ToolCall
from storage.records import JSON, Message
from storage.tiered import Threads

DEFAULT_MODEL = "gemini-2.5-flash"
_ROLES = {"system": "system", "user": "user", "assistant": "model", "model": "model"}


def _parts(body: JSON) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return []
    parts = body.get("parts")
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def _keys(
    body: JSON, field: str, seen: dict[str, int] | None = None
) -> list[tuple[str, str | None]]:
    """(match key, function name or None) of each ``field`` part ("function_call" or
    "function_response"): the id and the name, else the name numbered by its
    occurrence (counted in ``seen``, from 1 within this body if not given) and None."""
    keys: list[tuple[str, str | None]] = []
    seen = {} if seen is None else seen
    for part in _parts(body):
        item = part.get(field)
        if not isinstance(item, dict):
            continue
        name = str(item.get("name") or "")
        if item.get("id"):
            keys.append((str(item["id"]), name))
            continue
        seen[name] = seen.get(name, 0) + 1
        keys.append((name if seen[name] == 1 else f"{name}#{seen[name]}", None))
    return keys


def _content(message: Any) -> Any:
    """The message of a ``GenerateContentResponse`` (or its JSON): its first
    candidate's content. Anything else is returned as it is."""
    if isinstance(message, Mapping) and "candidates" in message:
        message = types.GenerateContentResponse.model_validate(message)
    if not isinstance(message, types.GenerateContentResponse):
        return message
    candidates = message.candidates or []
    if not candidates or candidates[0].content is None:
        raise ValueError("the GenerateContentResponse has no candidate message")
    return candidates[0].content


# usage_metadata count -> the turn record's usage key. candidates_token_count leaves
# out the thinking tokens, which are billed as output: they are kept beside it.
_USAGE_COUNTS = {
    "prompt_token_count": "input_tokens",
    "candidates_token_count": "output_tokens",
    "thoughts_token_count": "thoughts_tokens",
    "cached_content_token_count": "cached_input_tokens",
}


class GoogleGenAIAdapter(Adapter):
    """Threads of ``google.genai.types.Content``; requests for ``models.generate_content``."""

    name = "google_genai"

    def __init__(self, threads: Threads, *, integrity: IntegrityPolicy = "repair") -> None:
        super().__init__(threads, integrity=integrity)
        # call id -> function name, learnt from the calls this adapter has seen: a
        # function_response needs the name, and the base class hands tool_error_body
        # only the ids. A key not in here is a function name (the call had no id).
        self._call_names: dict[str, str] = {}

    # -- format hooks ---------------------------------------------------------------

    def to_body(self, message: Any) -> JSON:
        """A ``types.Content`` (or its dict form), or the first candidate of a
        ``GenerateContentResponse`` (or of its JSON), as a JSON body."""
        message = _content(message)
        content = (
            message if isinstance(message, types.Content) else types.Content.model_validate(message)
        )
        body: JSON = content.model_dump(mode="json", exclude_none=True)
        return body

    def from_body(self, body: JSON) -> types.Content:
        return types.Content.model_validate(body)

    def role(self, body: JSON) -> str:
        role = body.get("role") if isinstance(body, dict) else None
        if role == "system":
            return "system"
        if role == "model":
            return "assistant"
        parts = _parts(body)
        if parts and all("function_response" in p for p in parts):
            return "tool"
        return "user"

    def tool_call_ids(self, body: JSON) -> list[str]:
        keys = _keys(body, "function_call")
        self._call_names.update((key, name) for key, name in keys if name is not None)
        return [key for key, _ in keys]

    def tool_calls(self, body: JSON | types.Content) -> list[ToolCall]:
        """The function_call parts (a ``Content`` too), each with its id, or the key
        ``tool_call_ids`` derives when it has none."""
        if isinstance(body, types.Content):
            body = self.to_body(body)
        parts = _parts(body)
        calls = [p["function_call"] for p in parts if isinstance(p.get("function_call"), dict)]
        keys = self.tool_call_ids(body)  # learns the names the responses must carry
        # a name key recurs in every reply calling that function: the loop keys its
        # result by the reply too (a digest: the same for a stored and a fresh body)
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        return [
            ToolCall(
                key if call.get("id") else f"{key}@{digest}",
                str(call.get("name") or ""),
                call.get("args") or {},
            )
            for key, call in zip(keys, calls, strict=True)
        ]

    def usage(self, message: Any) -> dict[str, Any] | None:
        """Token counts and model version of a ``GenerateContentResponse`` or its JSON
        (camelCase as the API sends it, or snake_case); None for a bare ``Content``."""
        if isinstance(message, Mapping) and {"usageMetadata", "usage_metadata"} & set(message):
            message = types.GenerateContentResponse.model_validate(
                {k: v for k, v in message.items() if k != "candidates"}
            )
        if not isinstance(message, types.GenerateContentResponse):
            return None
        usage: dict[str, Any] = {}
        if message.usage_metadata is not None:
            for field, name in _USAGE_COUNTS.items():
                value = getattr(message.usage_metadata, field, None)
                if isinstance(value, int):
                    usage[name] = value
        if message.model_version:
            usage["model"] = message.model_version
        return usage or None

    def tool_result_ids(self, body: JSON) -> list[str]:
        return [key for key, _ in _keys(body, "function_response")]

    def dangling_tool_calls(self, records: Sequence[Message]) -> dict[str, int]:
        """As the base method, with responses that have no id numbered by name over
        each run of tool messages (the calls they answer are numbered so within
        their message): ``f``, ``f#2`` answer a message's two id-less ``f`` calls
        whether one message holds both responses or each has its own."""
        calls: dict[str, int] = {}
        seen: dict[str, int] = {}
        for index, record in enumerate(records):
            body = record["body"]
            if self.role(body) != "tool":
                seen = {}
            for call_id in self.tool_call_ids(body):
                calls[call_id] = index
            for key, _ in _keys(body, "function_response", seen):
                calls.pop(key, None)
        return calls

    def _response_part(self, call_id: str, response: dict[str, Any]) -> types.Part:
        name = self._call_names.get(call_id)
        if name is None:  # matched by name ("f", "f#2", "f#2@<digest>"): no id either
            return types.Part(
                function_response=types.FunctionResponse(
                    name=call_id.partition("@")[0].partition("#")[0], response=response
                )
            )
        return types.Part(
            function_response=types.FunctionResponse(id=call_id, name=name, response=response)
        )

    def tool_error_body(self, call_ids: Sequence[str], reason: str) -> JSON:
        parts = [self._response_part(call_id, {"error": reason}) for call_id in call_ids]
        return self.to_body(types.Content(role="user", parts=parts))

    def text_body(self, role: str, text: str) -> JSON:
        if role not in _ROLES:
            raise ValueError(f"unknown role {role!r}: use 'system', 'user' or 'assistant'")
        return {"role": _ROLES[role], "parts": [{"text": text}]}

    def tool_result_body(self, call_id: str, content: Any, *, is_error: bool = False) -> JSON:
        """A user message answering ``call_id`` (an id, or a function name when the
        call had none). A dict ``content`` is the response as it is; anything else is
        wrapped as ``{"output": content}`` (``{"error": content}`` if ``is_error``)."""
        if is_error:
            response = {"error": content}
        elif isinstance(content, Mapping):
            response = dict(content)
        else:
            response = {"output": content}
        return self.to_body(
            types.Content(role="user", parts=[self._response_part(call_id, response)])
        )

    def build_request(
        self,
        records: Sequence[Message],
        *,
        model: str = DEFAULT_MODEL,
        tools: Iterable[Any] | None = None,
        **config: Any,
    ) -> dict[str, Any]:
        """Keyword arguments for ``client.models.generate_content(**request)``."""
        system: list[types.Part] = []
        contents: list[types.Content] = []
        previous_tool = False
        for record in records:
            content = self.from_body(record["body"])
            if content.role == "system":
                system.extend(content.parts or [])
                continue
            tool = self.role(record["body"]) == "tool"
            if tool and previous_tool:  # the responses to one turn's calls: one turn
                last = contents[-1]
                contents[-1] = last.model_copy(
                    update={"parts": [*(last.parts or []), *(content.parts or [])]}
                )
            else:
                contents.append(content)
            previous_tool = tool
        generate_config = types.GenerateContentConfig(
            system_instruction=types.Content(parts=system) if system else None,
            tools=list(tools) if tools is not None else None,
            **config,
        )
        return {"model": model, "contents": contents, "config": generate_config}

    # -- thread helpers -------------------------------------------------------------

    def append_tool_result(
        self,
        thread_id: str,
        message_id: str,
        call_id: str,
        content: Any,
        *,
        is_error: bool = False,
    ) -> None:
        """As the base method; the thread's calls are read first, because a
        function_response must name the function its call id belongs to."""
        if call_id not in self._call_names:
            for record in self.threads.load(thread_id):
                self.tool_call_ids(record["body"])
        super().append_tool_result(thread_id, message_id, call_id, content, is_error=is_error)
