"""The tools an agent loop may run in a worker, by name.

A task message names tools, never code: the model-turn tasks run a tool call only
if its name is registered here in the worker process (``@tool("lookup")`` in a
module the worker imports), so a message cannot make a worker import or call
anything else. The provider's tool *schemas* (what the model is offered) are the
tasks' ``tools`` argument, as each API defines them.

    from adapters.tools import tool

    @tool("get_weather")
    def get_weather(city: str) -> str:
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from storage.errors import AgentThreadsError

F = TypeVar("F", bound=Callable[..., Any])

TOOLS: dict[str, Callable[..., Any]] = {}
"""Tool name -> function, for the model-turn tasks of this process."""


def tool(name: str) -> Callable[[F], F]:
    """Register a function as the tool ``name`` (a second registration replaces it)."""
    if not name or not isinstance(name, str):
        raise ValueError("a tool needs a non-empty name")

    def register(function: F) -> F:
        TOOLS[name] = function
        return function

    return register


def handlers(names: list[str] | None = None) -> dict[str, Callable[..., Any]]:
    """The registered tools named ``names`` (all of them when None); a name that is
    not registered is left out (the agent loop answers its calls with an error)."""
    if names is None:
        return dict(TOOLS)
    return {name: TOOLS[name] for name in names if name in TOOLS}


class UnknownTool(AgentThreadsError, LookupError):
    """A task offered the model tools that this worker has not registered."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.names = names

    def __str__(self) -> str:
        return (
            f"tools {', '.join(map(repr, self.names))} are not registered in this worker; "
            f"register them with @adapters.tools.tool (registered: {', '.join(sorted(TOOLS))})"
        )
