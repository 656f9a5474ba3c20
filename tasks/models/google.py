"""Model-turn task for the google adapter (registered only if its SDK is installed).

``adapters.google_genai.run_turn`` asks Gemini for the thread's next reply and
appends it exactly once (its id is derived from the turn id). With ``run_tools``
(tool names of ``adapters.tools``) it runs the agent loop: every function call is
run once and answered, and Gemini is asked again until it calls no function; a
retried task resumes from its last stored step. Server errors (5xx)
and rate limits (429) are retried with the ThreadTask backoff; any other client
error (400, 403, ...) would fail the same way again, so it fails at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task

from adapters.base import DEFAULT_MAX_STEPS, IntegrityPolicy, InterruptedPolicy
from storage.errors import AgentThreadsError
from storage.records import JSON
from tasks.base import TRANSIENT_ERRORS, ThreadTask
from tasks.models.turn import run_model_turn

try:
    from google import genai
    from google.genai import errors
except ImportError:  # the "google" extra is not installed
    genai = None  # type: ignore[assignment]


class NoCandidate(AgentThreadsError):
    """Gemini answered without a candidate message (e.g. the prompt was blocked)."""

    def __init__(self, thread_id: str, detail: str) -> None:
        super().__init__(thread_id, detail)
        self.thread_id = thread_id
        self.detail = detail

    def __str__(self) -> str:
        return (
            f"thread {self.thread_id!r}: the model returned no reply ({self.detail}); "
            "check the prompt feedback, then run the turn again"
        )


RATE_LIMITED = 429

if genai is not None:
    from adapters.google_genai import DEFAULT_MODEL, GoogleGenAIAdapter

    client_factory: Callable[[], genai.Client] = lambda: genai.Client()  # noqa: E731
    """Builds the client of each model call; reads GOOGLE_API_KEY etc. (tests replace it)."""

    @shared_task(
        name="adapters.google_genai.run_turn",
        base=ThreadTask,
        bind=True,
        autoretry_for=(*TRANSIENT_ERRORS, errors.ServerError),
    )
    def run_turn(
        self: ThreadTask,
        thread_id: str,
        turn_id: str,
        model: str = DEFAULT_MODEL,
        tools: list[dict[str, Any]] | None = None,
        rewind: bool = False,
        integrity: IntegrityPolicy | None = None,
        run_tools: list[str] | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        on_interrupted: InterruptedPolicy = "rerun",
    ) -> JSON:
        """One Gemini turn: reply ``n`` is stored as ``reply_id(turn_id, n)``, each
        function call's response as ``tool_result_id``; a redelivered turn finds
        them and calls neither the model nor a tool again. ``tools`` are the
        declarations Gemini is offered; ``run_tools`` the registered tools this
        worker runs (None: one model call, the caller runs the functions)."""

        def call_model(request: dict[str, Any]) -> Any:
            # hold the client: a collected Client closes its HTTP client mid-request
            client = client_factory()
            response = client.models.generate_content(**request)
            candidates = response.candidates or []
            if not candidates or candidates[0].content is None:
                feedback = response.prompt_feedback
                raise NoCandidate(thread_id, str(feedback) if feedback else "no candidates")
            return response  # the adapter stores its first candidate and reads its usage

        adapter = GoogleGenAIAdapter(self.threads)
        try:
            return run_model_turn(
                adapter,
                thread_id,
                turn_id,
                call_model,
                run_tools=run_tools,
                max_steps=max_steps,
                on_interrupted=on_interrupted,
                rewind=rewind,
                integrity=integrity,
                model=model,
                tools=tools,
            )
        except errors.ClientError as exc:
            if exc.code != RATE_LIMITED:
                raise
            # autoretry_for works on classes; a 429 is the one retryable client error
            # (retried with the policy's delay, see tasks/base.py)
            raise self.retry(exc=exc) from exc
