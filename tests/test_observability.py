"""Metrics and structured logs of a real `celery worker` process.

The worker (threads pool) runs on its own redis-server and a file cold store, with
``AGENT_THREADS_METRICS_PORT`` on a free port and ``AGENT_THREADS_LOG_FORMAT=json``
writing to a file. Each test works on its own thread ids and checks how far the
scraped counters moved (before/after), so the tests do not depend on each other.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from storage.embedded import EmbeddedRedis, free_port
from storage.errors import ThreadNotFound
from tasks.local.processes import WorkerProcess, client_app
from tasks.observability import logs
from tasks.turns import agent_turn
from tests.conftest import msg

REPO = Path(__file__).resolve().parent.parent
QUEUES = ["obs-threads", "obs-default"]
TIMEOUT = 30
SECRET = "s3cr3t-pa55"  # noqa: S105 - must never reach the log

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class Observed:
    """The worker, a client app, and readers for its metrics and log."""

    def __init__(self, root: Path, *, pool: str = "threads", multiproc_dir: Path | None = None):
        self.redis = EmbeddedRedis().start()
        base = f"redis://127.0.0.1:{self.redis.port}"
        self.metrics_port = free_port()
        self.log_path = root / "worker.log"
        env = {
            **os.environ,
            "AGENT_THREADS_BROKER_URL": f"{base}/1",
            "AGENT_THREADS_RESULT_BACKEND": f"{base}/2",
            "AGENT_THREADS_REDIS_URL": f"{base}/0",
            "AGENT_THREADS_COLD_URL": f"file://{root / 'cold'}",
            # unused by a file cold store: here to prove the log redacts it
            "AGENT_THREADS_S3_ENDPOINT_URL": f"http://minio:{SECRET}@minio:9000",
            "AGENT_THREADS_QUEUE": QUEUES[0],
            "AGENT_THREADS_DEFAULT_QUEUE": QUEUES[1],
            "AGENT_THREADS_IMPORTS": "tests.agent_tasks",
            "AGENT_THREADS_METRICS_PORT": str(self.metrics_port),
            "AGENT_THREADS_METRICS_ADDR": "127.0.0.1",
            "AGENT_THREADS_LOG_FORMAT": "json",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if multiproc_dir is not None:
            multiproc_dir.mkdir()
            env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
        self.worker = WorkerProcess(
            env,
            QUEUES,
            name=f"obs-{pool}",
            pool=pool,
            concurrency=2 if pool == "prefork" else 4,
            log_path=str(self.log_path),
            cwd=str(REPO),
            loglevel="INFO",
        )
        self.app = client_app("obs-client", env, QUEUES)

    def start(self) -> Observed:
        self.worker.start()
        self.worker.wait_ready(self.app)
        return self

    def close(self) -> None:
        self.worker.stop()
        self.app.close()
        self.redis.stop()

    def call(self, name: str, **kwargs: Any) -> Any:
        return self.app.signature(name, kwargs=kwargs).apply_async().get(timeout=TIMEOUT)

    def scrape(self) -> Samples:
        return scrape(self.metrics_port)

    def scrape_until(self, condition: Callable[[Samples], bool], what: str) -> Samples:
        """Scrape until ``condition`` holds: a result is stored before the worker's
        ``task_postrun`` / ``task_failure`` / ``task_retry`` handlers ran."""
        return until(self.scrape, condition, what)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text().splitlines():
            if raw.startswith("{"):
                lines.append(json.loads(raw))
        return lines

    def log_lines_until(
        self, condition: Callable[[list[dict[str, Any]]], bool], what: str
    ) -> list[dict[str, Any]]:
        return until(self.log_lines, condition, what)


def until(
    read: Callable[[], Any], condition: Callable[[Any], bool], what: str, timeout: float = 20
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        current = read()
        if condition(current):
            return current
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    setup = Observed(tmp_path_factory.mktemp("observability"))
    try:
        yield setup.start()
    finally:
        setup.close()


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -- metrics ---------------------------------------------------------------------------


def test_appends_count_new_ids_and_skipped_duplicates(observed: Observed) -> None:
    observed.call("threads.create", thread_id="obs-append")
    before = observed.scrape()
    first = observed.call("threads.append", thread_id="obs-append", messages=[msg("m1"), msg("m2")])
    # m2 is in the thread already; the second m3 repeats one of this batch
    second = observed.call(
        "threads.append", thread_id="obs-append", messages=[msg("m2"), msg("m3"), msg("m3")]
    )
    task = {"task": "threads.append", "state": "SUCCESS"}
    count = "agent_threads_task_duration_seconds_count"
    after = observed.scrape_until(lambda now: moved(before, now, count, **task) >= 2, "durations")
    assert first["appended_ids"] == ["m1", "m2"]
    assert (second["appended_ids"], second["skipped_ids"]) == (["m3"], ["m2", "m3"])
    assert moved(before, after, "agent_threads_messages_appended_total") == 3
    assert moved(before, after, "agent_threads_duplicate_messages_skipped_total") == 2
    assert moved(before, after, count, **task) == 2
    assert moved(before, after, "agent_threads_task_duration_seconds_sum", **task) > 0
    assert value(after, "agent_threads_tasks_in_progress", task="threads.append") == 0


def test_flush_and_hydrate_are_counted_by_outcome_with_latency_and_bytes(
    observed: Observed,
) -> None:
    observed.call("threads.create", thread_id="obs-tier")
    observed.call(
        "threads.append", thread_id="obs-tier", messages=[msg(f"m{i}") for i in range(50)]
    )
    before = observed.scrape()
    archived = observed.call("threads.flush", thread_id="obs-tier")
    unchanged = observed.call("threads.flush", thread_id="obs-tier")  # gone from Redis now
    restored = observed.call("threads.hydrate", thread_id="obs-tier")
    hot = observed.call("threads.hydrate", thread_id="obs-tier")
    hydrated = {"task": "threads.hydrate", "state": "SUCCESS"}
    after = observed.scrape_until(
        lambda now: (
            moved(before, now, "agent_threads_task_duration_seconds_count", **hydrated) >= 2
        ),
        "durations",
    )
    assert (archived["status"], archived["evicted"]) == ("archived", True)
    assert (unchanged["status"], restored["status"], hot["status"]) == (
        "unchanged",
        "restored",
        "hot",
    )

    flushes = "agent_threads_flushes_total"
    assert moved(before, after, flushes, status="archived", evicted="true") == 1
    assert moved(before, after, flushes, status="unchanged", evicted="false") == 1
    assert moved(before, after, "agent_threads_snapshot_bytes_count") == 1
    assert moved(before, after, "agent_threads_snapshot_bytes_sum") == archived["size_bytes"] > 0
    latency = "agent_threads_flush_duration_seconds_count"
    assert moved(before, after, latency, status="archived") == 1
    assert moved(before, after, latency, status="unchanged") == 1
    assert moved(before, after, "agent_threads_hydrates_total", status="restored") == 1
    assert moved(before, after, "agent_threads_hydrates_total", status="hot") == 1
    assert (
        moved(before, after, "agent_threads_hydrate_duration_seconds_count", status="restored") == 1
    )
    # every archived flush is quicker than the slowest bucket
    assert (
        moved(
            before,
            after,
            "agent_threads_flush_duration_seconds_bucket",
            status="archived",
            le="30.0",
        )
        == 1
    )

    lines = {
        line["message"]: line
        for line in observed.log_lines()
        if line.get("thread_id") == "obs-tier"
    }
    flushed = lines["flush archived"]
    assert (flushed["version"], flushed["bytes"], flushed["evicted"]) == (
        archived["version"],
        archived["size_bytes"],
        True,
    )
    assert lines["hydrate restored"]["messages"] == 50
    assert lines["hydrate restored"]["level"] == "INFO"


def test_a_held_lease_is_retried_and_counted_as_a_lease_wait(observed: Observed) -> None:
    observed.call("threads.create", thread_id="obs-lease")
    observed.call("threads.acquire_lease", thread_id="obs-lease", owner="turn-a")
    before = observed.scrape()
    retries = {"task": "threads.acquire_lease", "error": "LeaseHeld"}
    waiting = observed.app.signature(
        "threads.acquire_lease", kwargs={"thread_id": "obs-lease", "owner": "turn-b"}
    ).apply_async()
    observed.scrape_until(
        lambda now: moved(before, now, "agent_threads_task_retries_total", **retries) >= 1,
        "LeaseHeld retry",
    )
    assert observed.call("threads.release_lease", thread_id="obs-lease", owner="turn-a")["released"]
    assert waiting.get(timeout=TIMEOUT)["owner"] == "turn-b"
    acquired = {"task": "threads.acquire_lease", "state": "SUCCESS"}
    after = observed.scrape_until(
        lambda now: (
            moved(before, now, "agent_threads_task_duration_seconds_count", **acquired) >= 1
        ),
        "durations",
    )
    waits = moved(before, after, "agent_threads_lease_waits_total")
    assert waits >= 1
    assert moved(before, after, "agent_threads_task_retries_total", **retries) == waits
    assert moved(before, after, "agent_threads_leases_total", outcome="held") == waits
    assert moved(before, after, "agent_threads_leases_total", outcome="acquired") == 1
    assert moved(before, after, "agent_threads_leases_total", outcome="released") == 1
    assert (
        moved(
            before,
            after,
            "agent_threads_task_duration_seconds_count",
            task="threads.acquire_lease",
            state="RETRY",
        )
        == waits
    )

    retried = [
        line for line in observed.log_lines()
        if line.get("task_id") == waiting.id and line["message"] == "task retry after LeaseHeld"
    ]  # fmt: skip
    assert len(retried) == waits
    assert retried[0]["level"] == "WARNING"
    assert (retried[0]["thread_id"], retried[0]["turn_id"]) == ("obs-lease", "turn-b")
    assert retried[0]["task"] == "threads.acquire_lease"
    assert retried[0]["attempt"] == 1


def test_a_failed_task_is_counted_by_error_type_and_logged(observed: Observed) -> None:
    before = observed.scrape()
    result = observed.app.signature(
        "threads.append", kwargs={"thread_id": "obs-missing", "messages": [msg("m1")]}
    ).apply_async()
    with pytest.raises(ThreadNotFound):
        result.get(timeout=TIMEOUT)
    failures = {"task": "threads.append", "error": "ThreadNotFound"}
    failed_count = {"task": "threads.append", "state": "FAILURE"}
    after = observed.scrape_until(
        lambda now: (
            moved(before, now, "agent_threads_task_duration_seconds_count", **failed_count) >= 1
        ),
        "durations",
    )
    assert moved(before, after, "agent_threads_task_failures_total", **failures) == 1
    assert moved(before, after, "agent_threads_hydrates_total", status="absent") == 1
    assert (
        moved(
            before,
            after,
            "agent_threads_task_duration_seconds_count",
            task="threads.append",
            state="FAILURE",
        )
        == 1
    )
    failed = [line for line in observed.log_lines() if line.get("task_id") == result.id]
    assert any(" raised expected: ThreadNotFound" in line["message"] for line in failed)
    warning = next(line for line in failed if line["message"] == "task failed with ThreadNotFound")
    assert (warning["level"], warning["thread_id"], warning["error"]) == (
        "WARNING",
        "obs-missing",
        "ThreadNotFound",
    )


# -- logs ------------------------------------------------------------------------------


def test_every_step_of_an_agent_turn_logs_its_thread_task_and_turn_id(observed: Observed) -> None:
    observed.call("threads.create", thread_id="obs-turn")
    before = observed.scrape()
    agent = observed.app.signature("test.echo_agent")
    last = agent_turn(
        "obs-turn", [msg("u1")], agent, turn_id="turn-obs-1", app=observed.app
    ).apply_async()
    assert last.get(timeout=TIMEOUT)["status"] == "archived"
    flushed = {"task": "threads.flush", "state": "SUCCESS"}
    after = observed.scrape_until(
        lambda now: moved(before, now, "agent_threads_task_duration_seconds_count", **flushed) >= 1,
        "durations",
    )
    assert moved(before, after, "agent_threads_messages_appended_total") == 2  # u1 and the reply

    steps = []
    result: Any = last
    while result is not None:
        steps.append(result)
        result = result.parent
    assert len(steps) == 3  # open_turn, test.echo_agent, flush
    lines = observed.log_lines()
    for step in steps:
        # lines written while the step ran (Celery's "received" line comes before)
        during = [line for line in lines if line.get("task_id") == step.id and "thread_id" in line]
        assert during, f"no log line of step {step.id}"
        for line in during:
            assert (line["thread_id"], line["turn_id"]) == ("obs-turn", "turn-obs-1"), line
        names = {line["task"] for line in during}
        assert len(names) == 1
    by_task = {line["task"] for line in lines if line.get("turn_id") == "turn-obs-1"}
    assert by_task == {"threads.open_turn", "test.echo_agent", "threads.flush"}


def test_worker_log_is_json_lines_with_secrets_redacted(observed: Observed) -> None:
    observed.call("threads.create", thread_id="obs-private")
    observed.call("threads.append", thread_id="obs-private", messages=[msg("p1", "my IBAN")])
    loaded = observed.app.signature(
        "threads.load", kwargs={"thread_id": "obs-private"}
    ).apply_async()
    assert loaded.get(timeout=TIMEOUT)["messages"][0]["body"]["content"] == "my IBAN"
    observed.log_lines_until(
        lambda lines: any(line.get("task_id") == loaded.id for line in lines), "load's log line"
    )
    text = observed.log_path.read_text()
    assert SECRET not in text
    assert "my IBAN" not in text  # results holding content are logged by size only
    lines = observed.log_lines()
    assert len(lines) > 10
    for line in lines:
        assert {"ts", "level", "logger", "process", "message"} <= line.keys(), line
        assert "data" not in line  # Celery's copy of task arguments stays out
    ready = next(line for line in lines if line["message"] == "agent-threads worker ready")
    assert ready["s3_endpoint_url"] == "http://minio:***@minio:9000"
    assert ready["metrics_port"] == observed.metrics_port
    endpoint = f"metrics on http://127.0.0.1:{observed.metrics_port}/metrics"
    assert any(line["message"] == endpoint for line in lines)
    # Celery's own lines about a task are structured too
    succeeded = [line for line in lines if " succeeded in " in line["message"]]
    assert succeeded
    assert all("task_id" in line and "task" in line for line in succeeded)


def test_prefork_worker_serves_the_sum_of_its_children(tmp_path: Path) -> None:
    """prometheus_client multiprocess mode: each pool child writes its own files,
    the main process serves their sum."""
    setup = Observed(tmp_path, pool="prefork", multiproc_dir=tmp_path / "metrics")
    (tmp_path / "metrics").joinpath("counter_1.db").write_bytes(b"stale")  # an earlier run's
    try:
        setup.start()
        setup.call("threads.create", thread_id="obs-prefork")
        results = [
            setup.app.signature(
                "threads.append", kwargs={"thread_id": "obs-prefork", "messages": [msg(f"m{i}")]}
            ).apply_async()
            for i in range(6)
        ]
        for result in results:
            result.get(timeout=TIMEOUT)
        task = {"task": "threads.append", "state": "SUCCESS"}
        count = "agent_threads_task_duration_seconds_count"
        samples = setup.scrape_until(lambda now: value(now, count, **task) >= 6, "durations")
        assert value(samples, "agent_threads_messages_appended_total") == 6
        assert value(samples, count, **task) == 6
        assert value(samples, "agent_threads_tasks_in_progress", task="threads.append") == 0
        pids = {
            line["process"] for line in setup.log_lines() if line.get("thread_id") == "obs-prefork"
        }
        assert pids
        assert all(p.startswith("ForkPoolWorker") for p in pids)
    finally:
        setup.close()


# -- formatters, filter, redaction (in-process) ----------------------------------------


def record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    log_record = logging.LogRecord(
        "agent_threads.test", logging.INFO, __file__, 1, message, args, None
    )
    log_record.__dict__.update(extra)
    return log_record


def test_filter_adds_the_running_tasks_context_and_nothing_outside_a_task() -> None:
    outside = record("idle")
    logs.TaskContextFilter().filter(outside)
    assert not set(logs.CONTEXT_FIELDS) & outside.__dict__.keys()

    token = logs._current.set(logs.TaskContext("task-1", "threads.flush", "t1", "turn-1"))
    try:
        inside = record("flushing")
        logs.TaskContextFilter().filter(inside)
    finally:
        logs._current.reset(token)
    assert (inside.thread_id, inside.task_id, inside.task, inside.turn_id) == (  # type: ignore[attr-defined]
        "t1",
        "task-1",
        "threads.flush",
        "turn-1",
    )

    received = record("Task %s received", "x", data={"id": "task-2", "name": "threads.load"})
    logs.TaskContextFilter().filter(received)
    assert (received.task_id, received.task) == ("task-2", "threads.load")  # type: ignore[attr-defined]


def test_key_value_and_json_formatters_write_context_and_extras() -> None:
    line = record("flush %s", "archived", thread_id="t 1", task_id="abc", version=3, bytes=512)
    text = logs.KeyValueFormatter().format(line)
    assert text.startswith("ts=")
    assert (
        ' level=INFO logger=agent_threads.test process=MainProcess thread_id="t 1" task_id=abc '
        in text
    )
    assert text.endswith('msg="flush archived" version=3 bytes=512')

    data = json.loads(
        logs.JsonLineFormatter().format(record("hi", thread_id="t1", data={"args": "x"}))
    )
    assert list(data)[:5] == ["ts", "level", "logger", "process", "message"]
    assert (data["message"], data["thread_id"]) == ("hi", "t1")
    assert "data" not in data


def test_secrets_are_redacted_from_log_lines_and_settings() -> None:
    assert logs.redact_url("redis://:pw@redis:6379/0") == "redis://:***@redis:6379/0"
    assert logs.redact_url("rediss://app:pw@r:6380/0?ssl_cert_reqs=none") == (
        "rediss://app:***@r:6380/0?ssl_cert_reqs=none"
    )
    assert logs.redact_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert (
        logs.redact_url("https://h/x?X-Amz-Signature=abc&a=1")
        == "https://h/x?X-Amz-Signature=***&a=1"
    )
    assert logs.redact_url(None) is None
    line = (
        "connect redis://u:hunter2@h:1/0 aws_secret_access_key=abc123 "
        '"api_key": "sk-1" Authorization: Bearer tok.en key AKIAABCDEFGHIJKLMNOP sk-ant-api03-xyz '
        "max_tokens=1024 input_tokens: 5"
    )
    redacted = logs.redact(line)
    for secret in ("hunter2", "abc123", "sk-1", "tok.en", "AKIAABCDEFGHIJKLMNOP", "sk-ant"):
        assert secret not in redacted
    assert "max_tokens=1024 input_tokens: 5" in redacted  # counts are not secrets


def test_install_replaces_formatters_and_adds_the_filter_once() -> None:
    logger = logging.getLogger("agent_threads.test.install")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logs.install(logger, "json")
        logs.install(logger, "json")
        assert len(handler.filters) == 1
        logger.warning("careful", extra={"thread_id": "t9"})
        assert json.loads(stream.getvalue())["thread_id"] == "t9"
        logs.install(logger, "text")
        assert isinstance(handler.formatter, logs.KeyValueFormatter)
    finally:
        logger.removeHandler(handler)
