"""Model-turn task for the anthropic adapter (registered only if its SDK is installed).

``adapters.anthropic.run_turn`` is the ``run`` step of an ``agent_turn``: it sends
the thread to the Messages API and appends the reply as ``<turn_id>:0:assistant``,
exactly once (a redelivered or retried task finds the reply and calls no model).
With ``run_tools`` (tool names of ``adapters.tools``) it runs the agent loop: each
tool call runs once, its result is stored, the model is called again, until a
reply asks for no tool; a retried task resumes from its last stored step.

Retries are Celery's, not the SDK's (``max_retries=0``): rate limits (429),
overload (529) and other 5xx, connection errors and timeouts are retried with the
ThreadTask backoff; a request the API refuses (400, 401, 403, 404, 413, ...) fails
at once, since it would be refused the same way again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task

from adapters.anthropic import DEFAULT_MAX_TOKENS, DEFAULT_MODEL, AnthropicAdapter
from adapters.base import DEFAULT_MAX_STEPS, IntegrityPolicy, InterruptedPolicy
from storage.records import JSON
from tasks.base import TRANSIENT_ERRORS, ThreadTask
from tasks.models.turn import run_model_turn

try:
    import anthropic
except ImportError:  # the "anthropic" extra is not installed: no task
    anthropic = None  # type: ignore[assignment]

if anthropic is not None:
    client_factory: Callable[[], anthropic.Anthropic] = lambda: anthropic.Anthropic(max_retries=0)  # noqa: E731
    """Builds the client of each model call (tests and apps replace it, e.g. for a
    proxy or a key from a vault). Keep ``max_retries=0``: Celery does the retrying."""

    MODEL_TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
        anthropic.RateLimitError,
        anthropic.InternalServerError,  # 500, and its subclasses 503, 504, 529 overloaded
        anthropic.APIConnectionError,  # APITimeoutError is a subclass; listed for clarity
        anthropic.APITimeoutError,
    )
    # 429s that no waiting will fix (spend limits): newer SDKs give them their own
    # RateLimitError subclasses; fail at once rather than retrying for minutes.
    MODEL_PERMANENT_ERRORS: tuple[type[Exception], ...] = tuple(
        error
        for error in (
            getattr(anthropic, "ContractSpendLimitReachedError", None),
            getattr(anthropic, "EnforcedSpendLimitReachedError", None),
        )
        if isinstance(error, type)
    )

    @shared_task(
        name="adapters.anthropic.run_turn",
        base=ThreadTask,
        bind=True,
        autoretry_for=TRANSIENT_ERRORS + MODEL_TRANSIENT_ERRORS,
        dont_autoretry_for=MODEL_PERMANENT_ERRORS,
    )
    def run_turn(
        self: ThreadTask,
        thread_id: str,
        turn_id: str,
        model: str = DEFAULT_MODEL,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        tools: list[dict[str, Any]] | None = None,
        rewind: bool = False,
        integrity: IntegrityPolicy | None = None,
        cache_breakpoints: int = 0,
        run_tools: list[str] | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        on_interrupted: InterruptedPolicy = "rerun",
    ) -> JSON:
        """A model turn on ``thread_id``, every reply and tool result stored exactly
        once. ``tools`` are the schemas the model is offered; ``run_tools`` the
        registered tools this worker runs (None: one model call, the caller runs
        the tools the reply asks for)."""
        adapter = AnthropicAdapter(self.threads)

        def call_model(request: dict[str, Any]) -> Any:
            # The client is built only when the model is really called: a redelivered
            # turn whose reply is stored needs neither a client nor an API key.
            return client_factory().messages.create(**request)

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
            max_tokens=max_tokens,
            tools=tools,
            cache_breakpoints=cache_breakpoints,
        )
