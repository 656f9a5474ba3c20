"""The demo's agent task: an agent loop with the offline scripted model and two tools."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import shared_task

from adapters.scripted import ScriptedAdapter, ScriptedModel
from storage.records import JSON
from tasks.base import ThreadTask

DEMO_MODEL = ScriptedModel(
    [
        {
            "tool_calls": [
                {"name": "timetable", "args": {"origin": "Zurich", "destination": "Milan"}},
                {"name": "seats", "args": {"train": "EC 07:33"}},
            ]
        },
        "The 07:33 EC from Zurich reaches Milan at 10:50 ({tool}). Shall I book it?",
        "About {user!r}: the 07:33 is booked (coach 7, seat 42); the later 09:33 EC "
        "arrives at 12:50.",
        "Anything else for your trip?",
    ]
)


def timetable(origin: str, destination: str) -> str:
    return f"{origin} 07:33 -> {destination} 10:50 (EC), {origin} 09:33 -> {destination} 12:50"


def seats(train: str) -> str:
    return f"{train}: 42 seats free in 2nd class"


DEMO_TOOLS: dict[str, Callable[..., Any]] = {"timetable": timetable, "seats": seats}


@shared_task(name="demo.scripted_agent", base=ThreadTask, bind=True)
def scripted_agent(self: ThreadTask, thread_id: str, turn_id: str, think_ms: int = 0) -> JSON:
    """The agent loop of the shared ``Adapter.run_agent``: every model reply and tool
    result is stored under an id derived from the turn, so a redelivered, retried or
    re-woken turn continues from its last stored step (no model call and no tool
    run is repeated for a stored step)."""

    def model(request: dict[str, Any]) -> dict[str, Any]:
        time.sleep(think_ms / 1000)
        return DEMO_MODEL(request)

    reply = ScriptedAdapter(self.threads).run_agent(
        thread_id, turn_id, model, tool_handlers=DEMO_TOOLS
    )
    text = reply.body.get("content") if isinstance(reply.body, dict) else None
    return {"reply_id": reply.reply_id, "text": text, "model_calls": reply.model_calls}
