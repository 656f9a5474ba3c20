"""``worker`` and ``beat``: the standalone service's Celery processes."""

from __future__ import annotations

import click

from tasks.cli.context import service_app, service_settings


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Start a Celery worker for the thread tasks and your agent tasks.

    Extra arguments go to `celery worker` (e.g. --concurrency 8 --pool prefork). The
    pool defaults to threads: the tasks wait on Redis, S3 and model APIs, and one
    process keeps one connection pool and one metrics registry.
    """
    app = service_app()
    queues = f"{service_settings()['queue']},{app.conf.task_default_queue}"
    chosen = any(a in ("-P", "--pool") or a.startswith("--pool=") for a in ctx.args)
    pool = [] if chosen else ["--pool", "threads"]
    app.worker_main(["worker", "-Q", queues, "-l", "INFO", *pool, *ctx.args])


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def beat(ctx: click.Context) -> None:
    """Start Celery beat: it sends threads.flush_idle every AGENT_THREADS_FLUSH_IDLE_EVERY
    seconds (archives threads idle longer than AGENT_THREADS_IDLE_SECONDS).

    Run exactly one beat per deployment (same as `celery -A tasks.app beat`). Extra
    arguments go to `celery beat` (e.g. --schedule /var/lib/agent-threads/beat).
    """
    service_app().start(["beat", "-l", "INFO", *ctx.args])
