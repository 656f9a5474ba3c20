"""The demo's agent task: one model turn with the offline scripted model."""

from __future__ import annotations

import time
from typing import Any

from adapters.scripted import ScriptedModel
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
    """Read the thread, ask the scripted model, append its reply exactly once.

    The reply's id is derived from the turn id, so a redelivered or retried turn
    finds its reply already stored and appends nothing.
    """
    history = self.threads.load(thread_id)
    reply_id = f"{turn_id}:assistant"
    if any(m["id"] == reply_id for m in history):
        return {"reply_id": reply_id, "appended": False}
    time.sleep(think_ms / 1000)
    text = DEMO_MODEL.reply(history)
    body: dict[str, Any] = {"role": "assistant", "content": text}
    result = self.threads.append(thread_id, [{"id": reply_id, "body": body}], owner=turn_id)
    return {"reply_id": reply_id, "appended": bool(result.appended_ids), "text": text}
