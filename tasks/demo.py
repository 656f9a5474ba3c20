"""The demo's agent task: one model turn with the offline scripted model."""

from __future__ import annotations

import time
from typing import Any

from adapters.base import reply_id
from adapters.scripted import ScriptedAdapter, ScriptedModel
from storage.records import JSON
from tasks.app import app
from tasks.base import ThreadTask

DEMO_MODEL = ScriptedModel(
    [
        "The 07:33 EC from Zurich reaches Milan at 10:50. Shall I book it?",
        "About {user!r}: the 07:33 is booked (coach 7, seat 42); the later 09:33 EC "
        "arrives at 12:50.",
        "Anything else for your trip?",
    ]
)


@app.task(name="demo.scripted_agent", base=ThreadTask, bind=True)
def scripted_agent(self: ThreadTask, thread_id: str, turn_id: str, think_ms: int = 0) -> JSON:
    """Ask the scripted model and append its reply exactly once: the reply's id is
    derived from the turn id, so a redelivered or retried turn finds its reply
    already stored and does not call the model again."""

    def model(request: dict[str, Any]) -> dict[str, Any]:
        time.sleep(think_ms / 1000)
        return DEMO_MODEL(request)

    body = ScriptedAdapter(self.threads).run_turn(thread_id, turn_id, model)
    text = body.get("content") if isinstance(body, dict) else None
    return {"reply_id": reply_id(turn_id), "text": text}
