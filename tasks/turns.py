"""agent_turn(): the canvas around one agent turn, and the turn's durable record.

    0 threads.open_turn                  create | hydrate | fork, acquire the lease
                                         (owner = turn_id; retried while another turn
                                         runs), append the new messages
    1 run(thread_id=..., turn_id=...)    the user's agent task (a ThreadTask)
    2 threads.flush(evict=..., release_owner=turn_id)

The opening is one task: each of its parts is idempotent under redelivery (a hydrate
of a hot thread does nothing, the same owner re-acquires its lease, append skips the
ids it has), so a redelivered or re-woken opening simply runs again. The end-of-turn
flush archives the thread (durability) and, with ``evict="idle"`` (the default),
leaves it hot for the next turn: the beat's idle flusher (``threads.flush_idle``)
evicts it once it is idle. ``evict="turn"`` evicts at the end of every turn (the
memory-tight choice; the next turn restores the thread from the cold tier).

The truth about a turn is its record in the thread's slot (``storage/turns.py``);
Celery messages only wake steps. Each step carries the turn id and its number in
its headers, claims the step in the record before it runs and keeps a heartbeat
while it runs (``tasks/steps.py``), so a duplicate delivery of a step that runs
elsewhere does nothing and a step of any length keeps its lease. The record keeps
the turn's *spec* (this module's plan of the canvas) until it ends: the turn
reconciler (``threads.reconcile_turns``, on the beat) rebuilds the canvas from the
step that did not finish when a worker's heartbeat stopped or a message was lost,
and a fire-and-forget turn needs no waiting client to finish. Specs planned before
the opening was folded (five steps: open, acquire_lease, append, run, flush) are
still rebuilt step by step with the tasks they name.

If the agent run fails for good (it exhausts its retries, or the lease was lost),
its error callback, the *cleanup* step, flushes the thread (with the turn's
``evict``) and releases the lease; the record says "failed" with the typed error.
The turn id is the lease owner and the seed of the ids of everything the agent
appends, so a re-run never doubles a message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from celery import Celery, Signature, Task, chain

from storage.errors import AgentThreadsError
from storage.keys import validate_message_id, validate_thread_id
from storage.records import encode_batch
from tasks.settings import default_app
from tasks.steps import CLEANUP, SPEC_HEADER, STEP_HEADER, TURN_HEADER

Mode = Literal["new", "continue", "fork"]
Evict = Literal["idle", "turn"]
MODES = ("new", "continue", "fork")
EVICTS = ("idle", "turn")
OPEN_TASK = "threads.open_turn"
OPENING = {"new": "threads.create", "continue": "threads.hydrate", "fork": "threads.fork"}
"""The first task of each mode in specs of the five-step layout (before ``open_turn``)."""


class InvalidTurnOption(AgentThreadsError, ValueError):
    """An option of ``agent_turn`` / ``plan_turn`` has no meaning (a mode, ``evict``,
    a missing fork source, an agent that is not a ``ThreadTask``); nothing was sent."""


def plan_turn(
    thread_id: str,
    new_messages: Iterable[Mapping[str, Any]],
    run: Signature[Any],
    *,
    turn_id: str,
    mode: Mode = "continue",
    source: str | None = None,
    up_to_id: str | None = None,
    state: Mapping[str, Any] | None = None,
    lease_ttl_ms: int | None = None,
    evict: Evict = "idle",
    app: Celery | None = None,
) -> dict[str, Any]:
    """The spec of one turn (JSON): everything needed to build its canvas from any
    step, with each step's queue resolved by the caller's routing. Validates the
    input, so a malformed message or option fails before anything is sent or
    recorded."""
    validate_thread_id(thread_id)
    validate_message_id(turn_id, what="turn id")
    messages = [dict(m) for m in new_messages]
    encode_batch(messages)
    if mode not in MODES:
        raise InvalidTurnOption(f"unknown mode {mode!r}: use 'new', 'continue' or 'fork'")
    if evict not in EVICTS:
        raise InvalidTurnOption(
            f"unknown evict {evict!r}: use 'idle' (keep the thread hot until the idle "
            "flusher evicts it) or 'turn' (evict it at the end of every turn)"
        )
    if mode == "fork":
        if source is None:
            raise InvalidTurnOption("mode='fork' needs source=<thread id to fork from>")
        validate_thread_id(source)
    if not run.task:
        raise InvalidTurnOption("run must be a signature of a task, e.g. my_agent.s()")
    celery = app or run.app or default_app()
    agent = celery.tasks.get(run.task)
    if isinstance(agent, Task) and not _is_thread_task(agent):
        raise InvalidTurnOption(
            f"the agent task {run.task!r} must use base=tasks.base.ThreadTask: its "
            "steps claim the turn record and renew the turn's lease while they run"
        )

    def queue_of(name: str) -> str:
        # Steps are sent by the worker that ran the previous step (or the reconciler),
        # with that worker's routing; pin each to the queue the caller routes it to.
        route = celery.amqp.router.route({}, name)
        return str(route["queue"].name)

    return {
        "thread_id": thread_id,
        "turn_id": turn_id,
        "mode": mode,
        "source": source,
        "up_to_id": up_to_id,
        "state": dict(state) if state is not None else None,
        "messages": messages,
        "lease_ttl_ms": lease_ttl_ms,
        "evict": evict,
        "run": {
            "task": run.task,
            "args": list(run.args),
            "kwargs": dict(run.kwargs),
            "options": {k: v for k, v in run.options.items() if k != "headers"},
        },
        "queues": {name: queue_of(name) for name in [OPEN_TASK, "threads.flush", run.task]},
        "steps": ["open", f"run:{run.task}", "flush"],
    }


def _is_thread_task(task: Task[Any, Any]) -> bool:
    from tasks.base import ThreadTask

    return isinstance(task, ThreadTask)


def turn_canvas(
    spec: Mapping[str, Any],
    start: int | str = 0,
    app: Celery | None = None,
    *,
    recorded: bool = False,
) -> Any:
    """The canvas of a planned turn from step ``start`` on (``CLEANUP``: only the
    cleanup flush of a failing turn); call ``.apply_async()`` on it. ``recorded``: the
    turn's record exists (``ThreadClient.turn``, the reconciler), so its first step
    does not carry the spec to record it.

    The opening steps store no Celery result (nobody reads it: the record keeps
    every step's outcome); the agent's result (``AsyncResult.parent`` of the turn's)
    and the flush's are stored. A failure of any step still reaches the turn's
    result (``ThreadTask.store_errors_even_if_ignored``)."""
    celery = app or default_app()
    thread_id, turn_id = spec["thread_id"], spec["turn_id"]
    queues: Mapping[str, str] = spec["queues"]
    folded = spec["steps"][0] == "open"
    run_index = len(spec["steps"]) - 2  # the agent's step; then the flush

    def step(index: int | str, name: str, **kwargs: Any) -> Signature[Any]:
        headers: dict[str, Any] = {TURN_HEADER: turn_id, STEP_HEADER: index}
        if index == 0 and not recorded:
            headers[SPEC_HEADER] = dict(spec)  # a turn no client recorded records itself
        return celery.signature(
            name,
            kwargs=kwargs,
            immutable=True,
            queue=queues[name],
            headers=headers,
            ignore_result=isinstance(index, int) and index < run_index,
        )

    # a spec of the five-step layout predates ``evict``: it evicted after every turn
    evict = spec.get("evict", "turn") == "turn"
    finish = {"thread_id": thread_id, "evict": evict, "release_owner": turn_id}
    cleanup = step(CLEANUP, "threads.flush", **finish)
    if start == CLEANUP:
        return cleanup
    run = spec["run"]
    agent = celery.signature(
        run["task"],
        args=run["args"],
        kwargs={**run["kwargs"], "thread_id": thread_id, "turn_id": turn_id},
        options={
            "queue": queues[run["task"]],
            **run["options"],
            "headers": {TURN_HEADER: turn_id, STEP_HEADER: run_index},
        },
        immutable=True,
    )
    agent.on_error(cleanup)
    flush = step(run_index + 1, "threads.flush", **finish)
    if folded:
        opening = [
            step(
                0,
                OPEN_TASK,
                thread_id=thread_id,
                owner=turn_id,
                messages=spec["messages"],
                mode=spec["mode"],
                source_id=spec["source"],
                up_to_id=spec["up_to_id"],
                state=spec["state"],
                ttl_ms=spec["lease_ttl_ms"],
            )
        ]
    else:
        opening = _five_step_opening(spec, step, cleanup)
    rest = [*opening, agent, flush][int(start) :]
    return rest[0] if len(rest) == 1 else chain(*rest)


def _five_step_opening(
    spec: Mapping[str, Any], step: Any, cleanup: Signature[Any]
) -> list[Signature[Any]]:
    """Steps 0-2 of a turn planned before the opening was folded into ``open_turn``:
    its record (and a re-wake from the reconciler) names these steps."""
    thread_id, turn_id, mode = spec["thread_id"], spec["turn_id"], spec["mode"]
    if mode == "new":
        opening = step(0, "threads.create", thread_id=thread_id, state=spec["state"], owner=turn_id)
    elif mode == "fork":
        opening = step(
            0,
            "threads.fork",
            source_id=spec["source"],
            thread_id=thread_id,
            up_to_id=spec["up_to_id"],
        )
    else:
        opening = step(0, "threads.hydrate", thread_id=thread_id)
    lease = step(
        1, "threads.acquire_lease", thread_id=thread_id, owner=turn_id, ttl_ms=spec["lease_ttl_ms"]
    )
    append = step(
        2, "threads.append", thread_id=thread_id, messages=spec["messages"], owner=turn_id
    )
    append.on_error(cleanup)
    return [opening, lease, append]


def agent_turn(
    thread_id: str,
    new_messages: Iterable[Mapping[str, Any]],
    run: Signature[Any],
    *,
    turn_id: str,
    app: Celery | None = None,
    **options: Any,
) -> Any:
    """The canvas of one agent turn; call ``.apply_async()`` (or ``.delay()``) on it,
    or better ``ThreadClient.turn``, which records the turn before sending it (so a
    turn whose first message is lost is still re-woken).

    ``run`` is a signature of your agent task (a ``ThreadTask``); it is called with
    the extra keyword arguments ``thread_id`` and ``turn_id``. ``turn_id`` must be
    unique per turn and stable across retries (e.g. the request id that started it).
    ``options`` are ``plan_turn``'s: ``mode``, ``source``, ``up_to_id``, ``state``,
    ``lease_ttl_ms``, ``evict`` ("idle", the default: the thread stays hot after the
    turn until the idle flusher evicts it; "turn": evicted at the end of the turn).
    """
    spec = plan_turn(thread_id, new_messages, run, turn_id=turn_id, app=app, **options)
    return turn_canvas(spec, 0, app or run.app or default_app())
