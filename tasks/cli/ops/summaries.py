"""One-line summaries of stored messages, for the message table of ``inspect``."""

from __future__ import annotations

import json
from typing import Any

from storage.records import JSON


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _call(name: object, args: object) -> str:
    shown = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return f"→ {name}({shown})"


def _block(block: Any) -> str:
    """One content block / part of the provider formats the adapters store."""
    if isinstance(block, str):
        return block
    if not isinstance(block, dict):
        return json.dumps(block, ensure_ascii=False)
    kind = block.get("type")
    if kind == "tool_use":  # Anthropic
        return _call(block.get("name"), block.get("input"))
    if kind == "tool_result":
        return f"← {block.get('tool_use_id')}: {_content(block.get('content'))}"
    if kind in ("thinking", "redacted_thinking"):
        return "[thinking]"
    if "function_call" in block and isinstance(block["function_call"], dict):  # Google GenAI
        call = block["function_call"]
        return _call(call.get("name"), call.get("args"))
    if "function_response" in block and isinstance(block["function_response"], dict):
        response = block["function_response"]
        return f"← {response.get('name')}: {json.dumps(response.get('response'))}"
    if "text" in block:
        return str(block["text"])
    return f"[{kind or next(iter(block), 'block')}]"


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return " ".join(part for part in (_block(b) for b in content) if part)
    return _block(content)


def summarize_body(body: JSON, width: int = 100) -> tuple[str, str]:
    """(role, one-line summary) of a stored body: text, tool calls and tool results
    of the chat formats the adapters store (plain/scripted, Anthropic, Google GenAI,
    LangChain); anything else as compact JSON."""
    if not isinstance(body, dict):
        return "?", _one_line(json.dumps(body, ensure_ascii=False), width)
    data: Any = body
    role = body.get("role")
    if role is None and isinstance(body.get("data"), dict):  # LangChain {"type", "data"}
        data, role = body["data"], body.get("type")
    pieces = [_content(data.get("content", data.get("parts")))]
    for call in data.get("tool_calls") or []:  # plain chat and LangChain
        if isinstance(call, dict):
            function: dict[str, Any] = call
            if isinstance(call.get("function"), dict):  # OpenAI chat completions
                function = call["function"]
            pieces.append(
                _call(function.get("name"), function.get("args", function.get("arguments")))
            )
    if data.get("tool_call_id"):
        pieces.insert(0, f"← {data['tool_call_id']}:")
    text = " ".join(p for p in pieces if p)
    if not text:
        text = json.dumps(body, ensure_ascii=False)
    return str(role or "?"), _one_line(text, width)
