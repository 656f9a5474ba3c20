"""The agent task and the S3 request counter of ``bench.cluster_model``'s workers
(imported by their ``celery worker`` processes through ``AGENT_THREADS_IMPORTS``).

With ``CLUSTER_MODEL_S3_COUNTS=<redis url>`` in its environment, a worker counts
every S3 HTTP request its boto3 clients send (a ``before-send`` event hook on the
default session, so the cold store's client inherits it) in the hash
``cluster-model:s3`` of that Redis: the benchmark's broker, never the measured
cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import boto3

from adapters.scripted import ScriptedAdapter, ScriptedModel
from storage.records import JSON
from tasks.app import app
from tasks.base import ThreadTask

S3_COUNTS_ENV = "CLUSTER_MODEL_S3_COUNTS"
S3_COUNTS_KEY = "cluster-model:s3"
MODEL = ScriptedModel(["reply to {user}"])


def s3_request_hook(count: Callable[[str], None]) -> Callable[..., None]:
    """A botocore ``before-send.s3`` handler calling ``count(operation)`` once per HTTP
    attempt (retries included), e.g. "PutObject"."""

    def handler(event_name: str = "", **_: Any) -> None:
        count(event_name.rsplit(".", 1)[-1])

    return handler


def count_s3_requests_in(redis_url: str) -> None:
    """Count this process's S3 requests in ``S3_COUNTS_KEY`` of ``redis_url``."""
    import redis

    sink = redis.Redis.from_url(redis_url)
    boto3.setup_default_session()
    session: Any = boto3.DEFAULT_SESSION
    hook = s3_request_hook(lambda operation: sink.hincrby(S3_COUNTS_KEY, operation, 1))
    session.events.register("before-send.s3", hook)


@app.task(name="bench.cluster_agent", base=ThreadTask, bind=True)
def cluster_agent(self: ThreadTask, thread_id: str, turn_id: str) -> JSON:
    """One model call of the offline scripted model through ``Adapter.run_turn``: the
    storage work of a real agent turn without a model's latency."""
    body = ScriptedAdapter(self.threads).run_turn(thread_id, turn_id, MODEL)
    return {"body": body}


if os.environ.get(S3_COUNTS_ENV):
    count_s3_requests_in(os.environ[S3_COUNTS_ENV])
