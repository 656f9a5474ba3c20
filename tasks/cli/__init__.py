"""The ``agent-threads`` command: run workers and beat, look at threads, move them
between tiers, export and import them, and apply cold-tier retention.

Settings come from the ``AGENT_THREADS_*`` environment variables (read by
``tasks/service/config.py``, see there); the storage options of the group (``--redis-url``,
``--cold-url``, ``--namespace``, ``--s3-endpoint-url``) read the same variables
and override them for one command. ``demo`` needs none: without
``AGENT_THREADS_REDIS_URL`` it starts an embedded redis-server, and without
``AGENT_THREADS_COLD_URL`` it archives to ``./.agent-threads/cold``.

Output is rich tables and progress bars on a terminal and plain text otherwise
(pipes, logs, CI); ``--json`` gives machine-readable output where it makes sense.
Exit status: 0 on success, 1 on an error or if any thread of a bulk command
failed, 2 on a usage error.

This module is the group and its options; each family of commands has its module
(``service``, ``inspect``, ``overview``, ``bulk``, ``snapshots``, ``retention``,
``demo``), rendering its results, and its operations, without terminal I/O, in ``ops/``.
"""

from __future__ import annotations

from typing import Any

import click

from tasks.cli import bulk, demo, inspect, overview, retention, service, snapshots
from tasks.cli.context import CommandContext


@click.group()
@click.option(
    "--redis-url", envvar="AGENT_THREADS_REDIS_URL", metavar="URL", help="the hot tier's Redis"
)
@click.option(
    "--cold-url",
    envvar="AGENT_THREADS_COLD_URL",
    metavar="URL",
    help="s3://bucket/prefix or file:///path",
)
@click.option("--s3-endpoint-url", envvar="AGENT_THREADS_S3_ENDPOINT_URL", metavar="URL")
@click.option(
    "--namespace", envvar="AGENT_THREADS_NAMESPACE", metavar="NS", help="hot-tier key prefix"
)
@click.option(
    "--redis-cluster/--no-redis-cluster",
    envvar="AGENT_THREADS_REDIS_CLUSTER",
    default=None,
    help="the hot tier is a Redis Cluster (--redis-url names any node)",
)
@click.pass_context
def main(
    ctx: click.Context,
    redis_url: str | None,
    cold_url: str | None,
    s3_endpoint_url: str | None,
    namespace: str | None,
    redis_cluster: bool | None,
) -> None:
    """agent-threads: crash-safe conversation threads for AI agents on Celery.

    Storage options default to the AGENT_THREADS_* environment variables (see
    tasks/service/config.py). Durations are 90 (seconds), 90s, 30m, 2h, 7d or 1h30m.
    """
    given = {
        "redis_url": redis_url,
        "cold_url": cold_url,
        "s3_endpoint_url": s3_endpoint_url,
        "namespace": namespace,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v}
    if redis_cluster is not None:
        overrides["redis_cluster"] = redis_cluster
    state = CommandContext(overrides)
    ctx.obj = state
    ctx.call_on_close(state.close)


for _command in (
    service.worker,
    service.beat,
    inspect.inspect,
    overview.list_threads,
    overview.stats,
    bulk.flush_idle,
    bulk.flush,
    bulk.hydrate,
    bulk.delete,
    snapshots.export,
    snapshots.import_,
    retention.cold_prune,
    demo.demo,
):
    main.add_command(_command)
