"""agent_turn(): the canvas around one agent turn.

    open (threads.create | threads.hydrate | threads.fork)
      -> threads.acquire_lease(owner=turn_id)      waits (retries) while another turn runs
      -> threads.append(new_messages, owner=turn_id)
      -> run(thread_id=..., turn_id=...)           the user's agent task
      -> threads.flush(evict=True, release_owner=turn_id)

Every step is idempotent and retried by its own policy, and a step whose worker
dies is delivered again; the chain then goes on from there. The turn id is the
lease owner, so a redelivered turn re-acquires its own lease, and it is the
seed of the ids the agent gives its replies, so a re-run never doubles one.

If a step after the lease fails for good (``run`` exhausts its retries, or the
lease was lost), an error callback on *that step* flushes the thread and
releases the lease, and the caller's result raises the original error (Celery
marks the rest of the chain failed with it). The callback is idempotent, so the
duplicate errback calls Celery makes for some canvases are harmless; and if a
worker dies before any callback runs, the lease still expires (``lease_ttl_ms``)
and the beat's ``threads.flush_idle`` archives the thread later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from celery import Celery, Signature, chain

from storage.keys import validate_message_id, validate_thread_id
from storage.records import encode_batch
from tasks.app import app as default_app
from tasks.logs import TURN_HEADER

Mode = Literal["new", "continue", "fork"]


def agent_turn(
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
    app: Celery | None = None,
) -> Signature[Any]:
    """The canvas of one agent turn; call ``.apply_async()`` (or ``.delay()``) on it.

    ``run`` is a signature of your agent task; it is called with the extra
    keyword arguments ``thread_id`` and ``turn_id``. ``turn_id`` must be unique
    per turn and stable across retries (e.g. the request id that started it).
    Input is validated here, so a malformed message fails before anything is sent.
    """
    validate_thread_id(thread_id)
    validate_message_id(turn_id, what="turn id")
    messages = [dict(m) for m in new_messages]
    encode_batch(messages)
    celery = app or run.app or default_app

    def queue_of(name: str) -> str:
        # Chain steps are sent by the worker that ran the previous step, with that
        # worker's routing; pin each step to the queue the caller's app routes it to.
        route = celery.amqp.router.route({}, name)
        return str(route["queue"].name)

    def step(name: str, **kwargs: Any) -> Signature[Any]:
        # the turn-id header puts the turn on every log line of the step (tasks/logs.py)
        return celery.signature(
            name,
            kwargs=kwargs,
            immutable=True,
            queue=queue_of(name),
            headers={TURN_HEADER: turn_id},
        )

    if mode == "new":
        opening = step("threads.create", thread_id=thread_id, state=state, owner=turn_id)
    elif mode == "continue":
        opening = step("threads.hydrate", thread_id=thread_id)
    elif mode == "fork":
        if source is None:
            raise ValueError("mode='fork' needs source=<thread id to fork from>")
        validate_thread_id(source)
        opening = step("threads.fork", source_id=source, thread_id=thread_id, up_to_id=up_to_id)
    else:
        raise ValueError(f"unknown mode {mode!r}: use 'new', 'continue' or 'fork'")

    if not run.task:
        raise ValueError("run must be a signature of a task, e.g. my_agent.s()")
    finish = {"thread_id": thread_id, "evict": True, "release_owner": turn_id}
    agent = celery.signature(
        run.task,
        args=run.args,
        kwargs={**run.kwargs, "thread_id": thread_id, "turn_id": turn_id},
        options={"queue": queue_of(run.task), **run.options},
        immutable=True,
    )
    append = step("threads.append", thread_id=thread_id, messages=messages, owner=turn_id)
    for fallible in (append, agent):
        fallible.on_error(step("threads.flush", **finish))
    return chain(
        opening,
        step("threads.acquire_lease", thread_id=thread_id, owner=turn_id, ttl_ms=lease_ttl_ms),
        append,
        agent,
        step("threads.flush", **finish),
    )
