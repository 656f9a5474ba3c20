"""Model-turn task for the langchain adapter (registered only if its SDK is installed).

``adapters.langchain.run_turn`` asks a LangChain chat model for the next reply of a
thread and appends it once, as ``<turn_id>:0:assistant``: a retried or redelivered
turn finds its reply stored and does not call the model again. With ``run_tools``
(tool names of ``adapters.tools``) it runs the agent loop: each tool call runs
once and is answered, and the model is asked again until it calls no tool; a
retried task resumes from its last stored step.

The message names its model (``model="claude-fast"``), a factory the worker has
registered (``adapters.models``), and its tools by registered name: a message never
names code. LangChain has no common error type for provider errors, so
``is_transient`` recognises rate limits, overloads and 429/5xx by shape; those are
retried with exponential backoff and full jitter, everything else fails at once.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from celery import shared_task

from storage.records import JSON
from tasks.base import ThreadTask

# Backoff of a transient provider error: RETRY_BACKOFF * 2**retries seconds, capped at
# RETRY_BACKOFF_MAX, full jitter. Module constants so tests (and deployments) can tune them.
RETRY_BACKOFF = 1.0
RETRY_BACKOFF_MAX = 60.0

_TRANSIENT_NAMES = ("RateLimit", "Overloaded")


def is_transient(exc: BaseException) -> bool:
    """A provider error worth retrying: a rate limit or overload (by class name, since
    each provider package has its own classes), or an HTTP status 429 or 5xx."""
    if any(part in cls.__name__ for cls in type(exc).__mro__ for part in _TRANSIENT_NAMES):
        return True
    for attribute in ("status_code", "code", "status"):
        status = getattr(exc, attribute, None)
        if isinstance(status, bool) or not isinstance(status, int):
            continue
        if status == 429 or 500 <= status <= 599:
            return True
    return False


def backoff(retries: int) -> float:
    """Seconds to wait before retry number ``retries + 1`` (full jitter)."""
    return random.uniform(0, min(RETRY_BACKOFF_MAX, RETRY_BACKOFF * 2**retries))  # noqa: S311


try:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage
except ImportError:  # the langchain extra is not installed: register nothing
    pass
else:
    from adapters.base import DEFAULT_MAX_STEPS, IntegrityPolicy, InterruptedPolicy
    from adapters.langchain import LangChainAdapter
    from adapters.models import factory_of
    from adapters.tools import TOOLS, UnknownTool
    from tasks.models.turn import run_model_turn

    def build_model(
        name: str, tools: Sequence[str] | None, configured: Mapping[str, str] | None = None
    ) -> Any:
        """The chat model registered as ``name``, with the registered ``tools`` bound."""
        model = factory_of(name, configured)()
        if not isinstance(model, BaseChatModel):
            raise TypeError(
                f"the factory of model {name!r} returned {type(model).__name__}, "
                "not a langchain_core BaseChatModel"
            )
        if tools:
            missing = [tool for tool in tools if tool not in TOOLS]
            if missing:
                raise UnknownTool(missing)
            return model.bind_tools([TOOLS[tool] for tool in tools])
        return model

    @shared_task(name="adapters.langchain.run_turn", base=ThreadTask, bind=True)
    def run_turn(
        self: ThreadTask,
        thread_id: str,
        turn_id: str,
        model: str,
        tools: list[str] | None = None,
        rewind: bool = False,
        integrity: IntegrityPolicy | None = None,
        run_tools: list[str] | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        on_interrupted: InterruptedPolicy = "rerun",
    ) -> JSON:
        """A LangChain model turn on ``thread_id``, every reply and tool result stored
        exactly once. ``model`` is a registered model name (``adapters.models``);
        ``tools`` the registered tools (``adapters.tools``) bound to it (what it is
        offered); ``run_tools`` the registered tools this worker runs (None: one
        model call, the caller runs the tools the reply asks for)."""
        adapter = LangChainAdapter(self.threads)
        models: list[Any] = []  # built at the first model call, once per execution

        def call_model(request: dict[str, Any]) -> BaseMessage:
            if not models:
                models.append(build_model(model, tools, self.settings["langchain_models"]))
            try:
                reply: BaseMessage = models[0].invoke(request["messages"])
            except Exception as exc:
                if is_transient(exc):
                    raise self.retry(exc=exc, countdown=backoff(self.request.retries)) from exc
                raise
            return reply

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
        )
