"""The ``agent-threads`` command.

Environment variables are read here (and in ``celeryconfig.py``) only:
``AGENT_THREADS_REDIS_URL`` points the demo at an existing Redis instead of an
embedded redis-server. The demo's cold tier is a ``FileColdStore`` under
``./.agent-threads/cold``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
import redis

from storage import HotStore, Message
from storage.cold import FileColdStore
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads

T = TypeVar("T")


@click.group()
def main() -> None:
    """agent-threads: crash-safe conversation threads for AI agents."""


@contextmanager
def _redis_for_demo() -> Iterator[redis.Redis]:
    url = os.environ.get("AGENT_THREADS_REDIS_URL")
    if url:
        click.echo(f"using Redis at {url}")
        client = redis.Redis.from_url(url)
        try:
            yield client
        finally:
            client.close()
        return
    with EmbeddedRedis() as server:
        click.echo(f"started embedded redis-server on 127.0.0.1:{server.port}")
        client = server.client()
        try:
            yield client
        finally:
            client.close()
    click.echo("stopped embedded redis-server")


def _step(label: str, action: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = action()
    elapsed_ms = (time.perf_counter() - started) * 1000
    click.echo(f"  {label:<58} {elapsed_ms:7.2f} ms  -> {result}")
    return result


def _show(store: HotStore, thread_id: str) -> None:
    info = store.info(thread_id)
    parent = f", forked from {info.parent!r}" if info.parent else ""
    click.echo(f"\n  thread {thread_id!r}: version {info.version}, {info.length} messages{parent}")
    for position, record in enumerate(store.load(thread_id)):
        body: Any = record["body"]
        text = body.get("content") if isinstance(body, dict) else body
        role = body.get("role", "?") if isinstance(body, dict) else "?"
        click.echo(f"    {position:>2}  {record['id']:<14} {role:<10} {json.dumps(text)[:60]}")
    click.echo(f"    state: {json.dumps(store.load_state(thread_id))}\n")


def _message(message_id: str, role: str, content: str) -> Message:
    return {"id": message_id, "body": {"role": role, "content": content}}


@main.command()
@click.option("--thread", "thread_id", default="demo-chat", show_default=True)
def demo(thread_id: str) -> None:
    """Run a short storage demo against an embedded redis-server."""
    with _redis_for_demo() as client:
        store = HotStore(client, namespace="demo", ttl_seconds=3600)
        store.delete(thread_id)
        store.delete(f"{thread_id}-fork")
        click.echo("\n1. create a thread and run one turn")
        _step("create (with state)", lambda: store.create(thread_id, state={"turn": 0}))
        _step("create again (a redelivery: no-op, never wipes)", lambda: store.create(thread_id))
        turn_1 = [
            _message("sys", "system", "You are a concise travel agent."),
            _message("u1", "user", "Find me a train from Zurich to Milan."),
        ]
        _step("append system prompt + user message", lambda: store.append(thread_id, turn_1))
        reply = [_message("a1", "assistant", "The 07:33 EC arrives at 10:50.")]
        _step("append assistant reply", lambda: store.append(thread_id, reply))
        _step("save state", lambda: store.save_state(thread_id, {"turn": 1}))

        click.echo("\n2. a worker crashed after writing; the task is redelivered")
        _step("append the same batch again (deduplicated)", lambda: store.append(thread_id, turn_1))
        _step("append the same reply again (deduplicated)", lambda: store.append(thread_id, reply))
        _show(store, thread_id)

        click.echo("3. fork the conversation before the reply, rewind, compact")
        fork_id = f"{thread_id}-fork"
        _step("fork up to 'u1'", lambda: store.fork(thread_id, fork_id, up_to_id="u1"))
        _step("fork again (idempotent)", lambda: store.fork(thread_id, fork_id, up_to_id="u1"))
        alternative = [_message("a1", "assistant", "There is also a 09:33 EC.")]
        _step("append another reply in the fork", lambda: store.append(fork_id, alternative))
        _step("rewind the original from 'a1'", lambda: store.truncate_from(thread_id, "a1"))
        _step("retry the reply after the rewind", lambda: store.append(thread_id, reply))
        summary = [_message("summary", "system", "User wants Zurich -> Milan; offered 07:33.")]
        _step("compact the fork into a summary", lambda: store.replace_all(fork_id, summary))
        _show(store, thread_id)
        _show(store, fork_id)

        click.echo("4. after the turn: archive to the cold tier and free Redis; restore later")
        threads = Threads(store, FileColdStore(".agent-threads/cold"))
        threads.delete(thread_id)
        threads.delete(fork_id)
        _step("open a new thread", lambda: threads.open(thread_id, "new", state={"turn": 1}))
        _step("append a turn", lambda: threads.append(thread_id, turn_1 + reply))
        _step("flush (archive + evict)", lambda: threads.flush(thread_id))
        _step("is it still in Redis?", lambda: store.exists(thread_id))
        _step("flush again (already archived: no upload)", lambda: threads.flush(thread_id))
        _step("hydrate before the next turn", lambda: threads.hydrate(thread_id))
        _step("redelivered reply after the round trip", lambda: threads.append(thread_id, reply))
        _show(store, thread_id)
        threads.delete(thread_id)


if __name__ == "__main__":
    main()
