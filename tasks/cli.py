"""The ``agent-threads`` command: worker, demo, inspect, flush-idle.

Settings come from the ``AGENT_THREADS_*`` environment variables (read by
``celeryconfig``, see there). ``demo`` needs none: without
``AGENT_THREADS_REDIS_URL`` it starts an embedded redis-server, and without
``AGENT_THREADS_COLD_URL`` it archives to ``./.agent-threads/cold``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from celery.result import AsyncResult

from storage.embedded import EmbeddedRedis
from storage.errors import AgentThreadsError
from storage.tiered import Threads
from tasks.app import app, configure, threads
from tasks.client import ThreadClient
from tasks.processes import WorkerProcess
from tasks.turns import Mode, agent_turn


@click.group()
def main() -> None:
    """agent-threads: crash-safe conversation threads for AI agents on Celery."""


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker for the thread tasks and your agent tasks.

    Extra arguments go to `celery worker` (e.g. --concurrency 8 --pool threads).
    """
    queues = f"{app.conf.threads_queue},{app.conf.task_default_queue}"
    app.worker_main(["worker", "-Q", queues, "-l", "INFO", *ctx.args])


# -- inspect / flush-idle --------------------------------------------------------------


def _tier(store: Threads, thread_id: str) -> str:
    if store.hot.exists(thread_id):
        return "hot"
    return "cold" if store.cold.head(thread_id) else "absent"


def _describe(body: Any) -> tuple[str, str]:
    if isinstance(body, dict):
        content = body.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        return str(body.get("role", "?")), text
    return "?", json.dumps(body)


def _print_thread(store: Threads, thread_id: str) -> None:
    tier = _tier(store, thread_id)
    if tier == "absent":
        raise click.ClickException(f"thread {thread_id!r} exists in no tier")
    if tier == "cold":
        found = store.cold.read(thread_id)
        assert found is not None
        snapshot, etag = found
        click.echo(f"thread {thread_id!r}: tier cold (archive {etag}), version {snapshot.version}")
        messages, state = snapshot.messages(), snapshot.state
    else:
        info = store.hot.info(thread_id)
        lease = f", leased by {info.lease_owner!r}" if info.lease_owner else ""
        ttl = f", expires in {info.ttl_ms // 1000} s" if info.ttl_ms is not None else ""
        archived = f", archived v{info.cold_version}" if info.cold_version is not None else ""
        parent = f", fork of {info.parent!r}" if info.parent else ""
        click.echo(
            f"thread {thread_id!r}: tier hot, version {info.version}{archived}{parent}{lease}{ttl}"
        )
        messages, state = store.hot.load(thread_id), store.hot.load_state(thread_id)
    for position, record in enumerate(messages):
        role, text = _describe(record["body"])
        click.echo(f"  {position:>3}  {record['id']:<22} {role:<10} {text[:70]}")
    click.echo(f"  state: {json.dumps(state)}")


@main.command()
@click.argument("thread_id")
def inspect(thread_id: str) -> None:
    """Show a thread: tier, version, lease, messages and state (reads the cold
    archive without restoring it)."""
    try:
        _print_thread(threads(), thread_id)
    except AgentThreadsError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("flush-idle")
@click.option("--older-than", "older_than", type=float, default=None, help="seconds idle")
@click.option("--limit", type=int, default=1000, show_default=True)
def flush_idle(older_than: float | None, limit: int) -> None:
    """Archive and evict threads idle longer than --older-than seconds (default
    AGENT_THREADS_IDLE_SECONDS)."""
    idle = app.conf.agent_threads["idle_seconds"] if older_than is None else older_than
    report = threads().flush_idle(idle, limit=limit)
    click.echo(
        f"{report.candidates} idle, {len(report.evicted)} evicted, {len(report.kept)} kept hot, "
        f"{len(report.failed)} failed"
    )
    for failure in report.failed:
        click.echo(f"  failed: {failure}", err=True)


# -- demo ---------------------------------------------------------------------------------


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
    return configure(
        broker_url=settings["AGENT_THREADS_BROKER_URL"],
        result_backend=settings["AGENT_THREADS_RESULT_BACKEND"],
        redis_url=settings["AGENT_THREADS_REDIS_URL"],
        cold_url=settings["AGENT_THREADS_COLD_URL"],
    )


def _steps(final: AsyncResult[Any]) -> list[AsyncResult[Any]]:
    chain = [final]
    while isinstance(chain[-1].parent, AsyncResult):
        chain.append(chain[-1].parent)
    return list(reversed(chain))


def _summary(result: Any) -> str:
    if not isinstance(result, dict):
        return str(result)
    keys = ("status", "appended_ids", "owner", "reply_id", "evicted", "size_bytes", "version")
    return ", ".join(f"{k}={result[k]}" for k in keys if k in result)


def _print_turn(title: str, final: AsyncResult[Any], started: float) -> None:
    final.get(timeout=120)
    elapsed = (time.perf_counter() - started) * 1000
    click.echo(f"\n{title}  ({elapsed:.0f} ms end to end)")
    previous: Any = None
    for step in _steps(final):
        done = step.date_done
        took = f"{(done - previous).total_seconds() * 1000:6.1f} ms" if previous else "   first"
        previous = done
        click.echo(f"  {took}  {step.name:<24} {_summary(step.result)}")


@main.command()
@click.option("--thread", "thread_id", default="demo-trip", show_default=True)
@click.option(
    "--model",
    "provider",
    type=click.Choice(["scripted", "anthropic"]),
    default="scripted",
    show_default=True,
    help="scripted: offline; anthropic: the real API (needs ANTHROPIC_API_KEY)",
)
def demo(thread_id: str, provider: str) -> None:
    """Three agent turns (one forked) through a real Celery worker with the offline
    scripted model (or Claude); each turn hydrates, appends, runs, flushes and evicts."""
    if provider == "anthropic" and not os.environ.get("ANTHROPIC_API_KEY"):
        raise click.ClickException("--model anthropic needs ANTHROPIC_API_KEY in the environment")
    with _demo_settings() as settings:
        store = _configure(settings)
        fork_id = f"{thread_id}-alt"
        for tid in (thread_id, fork_id):
            store.delete(tid)
        worker = WorkerProcess(
            {**os.environ, **settings}, [app.conf.threads_queue, app.conf.task_default_queue],
            name=f"demo-{uuid.uuid4().hex[:6]}",
        )  # fmt: skip
        worker.start()
        try:
            worker.wait_ready(app)
            click.echo(f"started a celery worker (pid {worker.process and worker.process.pid})")
            _run_demo(store, thread_id, fork_id, provider)
        finally:
            worker.stop()
            click.echo("stopped the celery worker")
            app.close()


def _run_demo(store: Threads, thread_id: str, fork_id: str, provider: str) -> None:
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
        started = time.perf_counter()
        turn_id = f"{tid}:{title.split()[1]}"
        result = agent_turn(tid, messages, model, turn_id=turn_id, mode=mode)
        _print_turn(title, result.apply_async(), started)
        click.echo(f"  tier after the turn: {_tier(store, tid)}")
    started = time.perf_counter()
    forked = client.turn(
        fork_id,
        [user("u2-alt", "Is there a later train?")],
        model,
        turn_id=f"{fork_id}:3",
        mode="fork",
        source=thread_id,
        up_to_id=f"{thread_id}:1:assistant",
    )
    _print_turn("turn 3 (fork of turn 1)", forked, started)
    click.echo("")
    for tid in (thread_id, fork_id):
        _print_thread(store, tid)
    click.echo("\nredelivery check: running turn 2 again with the same turn id ...")
    again = agent_turn(thread_id, turns[1][2], model, turn_id=f"{thread_id}:2")
    again.apply_async().get(timeout=120)
    count = len(store.load(thread_id))
    click.echo(f"  the thread still has {count} messages: nothing was doubled")


if __name__ == "__main__":
    main(sys.argv[1:])
