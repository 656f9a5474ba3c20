"""Model-turn task for the OpenAI adapters (registered only if the SDK is installed).

``openai.run_turn`` is the ``run`` step of an ``agent_turn``: it sends the thread
to the Responses API (``api="responses"``, the default) or to Chat Completions
(``api="chat"``) and appends the reply as ``<turn_id>:0:assistant``, exactly once
(a redelivered or retried task finds the reply and calls no model). With
``run_tools`` (tool names of ``adapters.tools``) it runs the agent loop: each tool
call runs once, its result is stored, the model is called again, until a reply
asks for no tool; a retried task resumes from its last stored step.

Retries are Celery's, not the SDK's (``max_retries=0``), on the statuses the SDK
itself would retry: 408, 409 (a lock timeout), 429 and 5xx, connection errors and
timeouts, with the ThreadTask backoff; the server's ``x-should-retry`` header
overrides the status. A request the API refuses (400, 401, 403, 404, 422, ...)
and a 429 for an exhausted quota (``insufficient_quota``: no waiting fixes it)
fail at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from celery import shared_task

from adapters.base import DEFAULT_MAX_STEPS, Adapter, IntegrityPolicy, InterruptedPolicy
from adapters.openai import DEFAULT_MODEL, OpenAIChatAdapter, OpenAIResponsesAdapter
from storage.errors import InvalidMessage
from storage.records import JSON
from tasks.base import TRANSIENT_ERRORS, ThreadTask
from tasks.models.turn import run_model_turn

try:
    import openai
except ImportError:  # the "openai" extra is not installed: no task
    openai = None  # type: ignore[assignment]

Api = Literal["responses", "chat"]
RETRIED_STATUSES = frozenset({408, 409, 429})
"""Besides 5xx: the statuses the SDK's own retry loop would retry."""
PERMANENT_CODES = frozenset({"insufficient_quota"})
"""Error codes of a 429 that waiting does not fix."""


def is_transient(error: Exception) -> bool:
    """Whether a call that raised ``error`` (an ``openai`` exception) may succeed if
    sent again, judged as the SDK judges its own retries."""
    if openai is None or not isinstance(error, openai.APIError):
        return False
    if isinstance(error, openai.APIConnectionError):  # APITimeoutError too
        return True
    if not isinstance(error, openai.APIStatusError) or error.code in PERMANENT_CODES:
        return False
    hint = error.response.headers.get("x-should-retry")
    if hint in ("true", "false"):
        return hint == "true"
    return error.status_code in RETRIED_STATUSES or error.status_code >= 500


if openai is not None:
    client_factory: Callable[[], openai.OpenAI] = lambda: openai.OpenAI(max_retries=0)  # noqa: E731
    """Builds the client of each model call (tests and apps replace it, e.g. for an
    Azure or compatible endpoint, or a key from a vault). Keep ``max_retries=0``:
    Celery does the retrying."""

    @shared_task(
        name="openai.run_turn",
        base=ThreadTask,
        bind=True,
        autoretry_for=TRANSIENT_ERRORS,
    )
    def run_turn(
        self: ThreadTask,
        thread_id: str,
        turn_id: str,
        model: str = DEFAULT_MODEL,
        api: Api = "responses",
        tools: list[dict[str, Any]] | None = None,
        rewind: bool = False,
        integrity: IntegrityPolicy | None = None,
        run_tools: list[str] | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        on_interrupted: InterruptedPolicy = "rerun",
        params: dict[str, Any] | None = None,
    ) -> JSON:
        """A model turn on ``thread_id``, every reply and tool result stored exactly
        once. ``tools`` are the schemas the model is offered (in ``api``'s format);
        ``run_tools`` the registered tools this worker runs (None: one model call,
        the caller runs the tools the reply asks for); ``params`` further
        ``create`` arguments (``reasoning``, ``max_output_tokens``, ``temperature``,
        ``store``, ...)."""
        adapter: Adapter
        if api == "responses":
            adapter = OpenAIResponsesAdapter(self.threads)
        elif api == "chat":
            adapter = OpenAIChatAdapter(self.threads)
        else:
            raise InvalidMessage(f"api is 'responses' or 'chat', got {api!r}")

        def call_model(request: dict[str, Any]) -> Any:
            # The client is built only when the model is really called: a redelivered
            # turn whose reply is stored needs neither a client nor an API key.
            client = client_factory()
            if api == "chat":
                return client.chat.completions.create(**request)
            return client.responses.create(**request)

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
                **(params or {}),
            )
        except openai.APIError as exc:
            if not is_transient(exc):
                raise
            # the SDK's classes do not tell a transient 429 from an exhausted quota,
            # nor a 408 from a 400: retried here, with the policy's delay
            raise self.retry(exc=exc) from exc
