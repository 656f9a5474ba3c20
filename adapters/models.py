"""The chat models a worker may build, by name (the LangChain model-turn task).

A task message names a model, never code: ``adapters.langchain.run_turn`` builds the
model registered under the message's ``model`` name in the worker process, so a
message cannot make a worker import or call anything else. Register a zero-argument
factory in a module the worker imports::

    from adapters.models import chat_model

    @chat_model("claude-fast")
    def claude_fast() -> BaseChatModel:
        return ChatAnthropic(model="claude-haiku-4-5", max_retries=0)

or name factories in the worker's settings (``agent_threads["langchain_models"] =
{"claude-fast": "myproj.models:claude_fast"}``): the worker's own configuration, not
the message, says what is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from storage.errors import AgentThreadsError

F = TypeVar("F", bound=Callable[[], Any])

MODELS: dict[str, Callable[[], Any]] = {}
"""Model name -> zero-argument factory, for the model-turn tasks of this process."""


class UnknownModel(AgentThreadsError, LookupError):
    """A task asked for a model name that this worker has not registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name, known)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return (
            f"model {self.name!r} is not registered in this worker (registered: {known}); "
            "register it with @adapters.models.chat_model or agent_threads['langchain_models']"
        )


def chat_model(name: str) -> Callable[[F], F]:
    """Register a zero-argument factory as the model ``name`` (a second one replaces it)."""
    if not name or not isinstance(name, str):
        raise ValueError("a model needs a non-empty name")

    def register(factory: F) -> F:
        MODELS[name] = factory
        return factory

    return register


def resolve(path: str) -> Any:
    """The object at ``"package.module:attribute"`` (worker configuration only)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"import path {path!r} must look like 'package.module:attribute'")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def factory_of(name: object, configured: Mapping[str, str] | None = None) -> Callable[[], Any]:
    """The factory registered as ``name``, else the one ``configured`` (the worker's
    ``langchain_models`` setting) names; ``UnknownModel`` otherwise."""
    if isinstance(name, str) and name in MODELS:
        return MODELS[name]
    if isinstance(name, str) and configured and name in configured:
        factory: Callable[[], Any] = resolve(configured[name])
        return factory
    known = sorted({*MODELS, *(configured or {})})
    raise UnknownModel(str(name), known)
