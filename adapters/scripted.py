"""An offline, deterministic "model" for the demo and the tests: no network, no SDK.

It answers from a script: the n-th reply of a thread is ``script[n % len(script)]``,
where n is the number of assistant messages the thread already holds, so the
same history always gets the same answer (a re-run of a turn is reproducible).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from storage.records import Message


@dataclass(frozen=True)
class ScriptedModel:
    script: Sequence[str]

    def reply(self, history: Sequence[Message]) -> str:
        if not self.script:
            raise ValueError("ScriptedModel needs at least one scripted reply")
        answered = sum(
            1
            for m in history
            if isinstance(m["body"], dict) and m["body"].get("role") == "assistant"
        )
        last_user = next(
            (
                m["body"].get("content")
                for m in reversed(history)
                if isinstance(m["body"], dict) and m["body"].get("role") == "user"
            ),
            None,
        )
        return self.script[answered % len(self.script)].format(user=last_user)
