"""The part every model-turn task shares: the adapter's agent loop, and its result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters.base import Adapter, IntegrityPolicy, InterruptedPolicy
from adapters.tools import handlers
from storage.records import JSON


def run_model_turn(
    adapter: Adapter,
    thread_id: str,
    turn_id: str,
    call_model: Callable[[dict[str, Any]], Any],
    *,
    run_tools: list[str] | None,
    max_steps: int,
    on_interrupted: InterruptedPolicy,
    rewind: bool,
    integrity: IntegrityPolicy | None,
    **request: Any,
) -> JSON:
    """``adapter.run_agent`` with the registered tools ``run_tools`` (None: one model
    call, the caller runs the tools the reply asks for); ``request`` goes to the
    adapter's ``prepare``. Returns the task result: the last reply's id and body and
    the number of model calls made by this execution."""
    reply = adapter.run_agent(
        thread_id,
        turn_id,
        call_model,
        tool_handlers=handlers(run_tools) if run_tools is not None else None,
        max_steps=max_steps,
        on_interrupted=on_interrupted,
        rewind=rewind,
        integrity=integrity,
        **request,
    )
    return {"reply_id": reply.reply_id, "body": reply.body, "model_calls": reply.model_calls}
