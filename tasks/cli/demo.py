"""``demo``: three agent turns (one forked) through a real Celery worker, offline by
default (an embedded redis-server and a file cold store when none is configured)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from adapters.base import reply_id
from storage.embedded import EmbeddedRedis
from storage.tiered import Threads
from tasks.cli import render
from tasks.cli.context import service_app
from tasks.cli.inspect import render_thread
from tasks.cli.ops.inspect import view_thread
from tasks.client import ThreadClient
from tasks.local.processes import WorkerProcess
from tasks.turns import Evict, Mode, agent_turn


def _tier(store: Threads, thread_id: str) -> str:
    if store.hot.exists(thread_id):
        return "hot"
    return "cold" if store.cold.head(thread_id) else "absent"


def _tier_after_turn(store: Threads, thread_id: str) -> str:
    tier = _tier(store, thread_id)
    if tier != "hot":
        return tier
    info = store.hot.info(thread_id)
    if info.cold_version == info.version:
        return f"hot, archived (cold v{info.cold_version} = hot v{info.version})"
    return f"hot, archive behind (cold v{info.cold_version}, hot v{info.version})"


@contextmanager
def _demo_settings() -> Iterator[dict[str, str]]:
    """AGENT_THREADS_* for the demo: the user's, else an embedded redis-server and a
    file cold store under ./.agent-threads/cold."""
    cold = os.environ.get("AGENT_THREADS_COLD_URL") or (
        "file://" + str(Path(".agent-threads/cold").resolve())
    )
    given = os.environ.get("AGENT_THREADS_REDIS_URL")
    if given:
        click.echo(f"using Redis at {given}")
        app = service_app()
        yield {
            "AGENT_THREADS_REDIS_URL": given,
            "AGENT_THREADS_BROKER_URL": app.conf.broker_url,
            "AGENT_THREADS_RESULT_BACKEND": app.conf.result_backend,
            "AGENT_THREADS_COLD_URL": cold,
        }
        return
    with EmbeddedRedis() as server:
        click.echo(f"started embedded redis-server on 127.0.0.1:{server.port}")
        base = f"redis://127.0.0.1:{server.port}"
        yield {
            "AGENT_THREADS_REDIS_URL": f"{base}/0",
            "AGENT_THREADS_BROKER_URL": f"{base}/1",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/2",
            "AGENT_THREADS_COLD_URL": cold,
        }
        click.echo("stopped embedded redis-server")


def _configure(settings: Mapping[str, str]) -> Threads:
    from tasks.app import configure

    return configure(
        broker_url=settings["AGENT_THREADS_BROKER_URL"],
        result_backend=settings["AGENT_THREADS_RESULT_BACKEND"],
        redis_url=settings["AGENT_THREADS_REDIS_URL"],
        cold_url=settings["AGENT_THREADS_COLD_URL"],
    )


def _print_turn(title: str, client: ThreadClient, thread_id: str, turn_id: str) -> None:
    status = client.wait_turn(thread_id, turn_id, timeout=120)
    click.echo(f"\n{title}  ({status.state} in {status.duration_ms} ms end to end)")
    for name in status.steps:
        click.echo(f"  {status.timings.get(name, 0):6d} ms  {name}")
    tools = ", ".join(f"{call} x{t.get('runs', 0)}" for call, t in status.tools.items())
    click.echo(
        f"  model calls: {len(status.usage)}, tokens in/out: {status.input_tokens}/"
        f"{status.output_tokens}; tool runs: {tools or 'none'}"
    )


@click.command()
@click.option("--thread", "thread_id", default="demo-trip", show_default=True)
@click.option(
    "--model",
    "provider",
    type=click.Choice(["scripted", "anthropic"]),
    default="scripted",
    show_default=True,
    help="scripted: offline; anthropic: the real API (needs ANTHROPIC_API_KEY)",
)
@click.option(
    "--evict",
    type=click.Choice(["idle", "turn"]),
    default="idle",
    show_default=True,
    help="idle: threads stay hot between turns until the idle flush; turn: evicted "
    "at the end of every turn",
)
def demo(thread_id: str, provider: str, evict: Evict) -> None:
    """Three agent turns (one forked) through a real Celery worker with the offline
    scripted model (or Claude). Each turn opens the thread (hydrating it if cold),
    appends, runs and archives it; with --evict idle the threads stay hot until the
    idle flush at the end evicts them, with --evict turn every turn evicts."""
    if provider == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise click.ClickException("--model anthropic needs ANTHROPIC_API_KEY in the environment")
    app = service_app()
    with _demo_settings() as settings:
        store = _configure(settings)
        fork_id = f"{thread_id}-alt"
        for tid in (thread_id, fork_id):
            store.delete(tid)
        worker = WorkerProcess(
            {**os.environ, **settings},
            [app.conf.agent_threads["queue"], app.conf.task_default_queue],
            name=f"demo-{uuid.uuid4().hex[:6]}",
        )  # fmt: skip
        worker.start()
        try:
            worker.wait_ready(app)
            click.echo(f"started a celery worker (pid {worker.process and worker.process.pid})")
            _run_demo(store, thread_id, fork_id, provider, evict)
        finally:
            worker.stop()
            click.echo("stopped the celery worker")
            app.close()


def _run_demo(store: Threads, thread_id: str, fork_id: str, provider: str, evict: Evict) -> None:
    app = service_app()
    client = ThreadClient(app)
    if provider == "anthropic":
        model_name = os.environ.get("AGENT_THREADS_ANTHROPIC_MODEL", "claude-sonnet-4-5")
        model = app.signature(
            "adapters.anthropic.run_turn", kwargs={"model": model_name, "max_tokens": 300}
        )
    else:
        model = app.signature("demo.scripted_agent", kwargs={"think_ms": 50})

    def user(mid: str, text: str) -> dict[str, Any]:
        return {"id": mid, "body": {"role": "user", "content": text}}

    system = {"id": "system", "body": {"role": "system", "content": "You are a travel agent."}}
    turns: list[tuple[str, str, list[dict[str, Any]], Mode]] = [
        ("turn 1 (new)", thread_id, [system, user("u1", "A train from Zurich to Milan?")], "new"),
        ("turn 2 (continue)", thread_id, [user("u2", "Book the first one.")], "continue"),
    ]
    for title, tid, messages, mode in turns:
        turn_id = f"{tid}:{title.split()[1]}"
        client.turn(tid, messages, model, turn_id=turn_id, mode=mode, evict=evict)
        _print_turn(title, client, tid, turn_id)
        click.echo(f"  tier after the turn: {_tier_after_turn(store, tid)}")
    fork_turn = f"{fork_id}:3"
    client.turn(
        fork_id,
        [user("u2-alt", "Is there a later train?")],
        model,
        turn_id=fork_turn,
        mode="fork",
        source=thread_id,
        up_to_id=reply_id(f"{thread_id}:1", 1),  # turn 1's answer, after its tool calls
        evict=evict,
    )
    _print_turn("turn 3 (fork of turn 1)", client, fork_id, fork_turn)
    click.echo(f"  tier after the turn: {_tier_after_turn(store, fork_id)}")
    if evict == "idle":  # what the beat's idle flusher does once the threads are idle
        report = store.flush_idle(0)
        click.echo(f"\nidle flush: {len(report.evicted)} evicted, {len(report.kept)} kept hot")
    click.echo("")
    for tid in (thread_id, fork_id):
        render_thread(render.console(), view_thread(store, tid), 50)
        click.echo("")
    click.echo("\nredelivery check: sending turn 2 again with the same turn id ...")
    agent_turn(thread_id, turns[1][2], model, turn_id=f"{thread_id}:2").apply_async()
    time.sleep(2)  # its steps find the turn finished and do nothing
    count = len(store.load(thread_id))
    click.echo(f"  the thread still has {count} messages: nothing was doubled")
