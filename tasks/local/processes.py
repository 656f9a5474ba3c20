"""Local processes for the demo and the tests: start, stop and kill a real ``celery
worker`` (or beat) of the service app, and a producer app that talks to them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery import Celery

from tasks.service.config import broker_settings


def client_app(name: str, env: Mapping[str, str], queues: Sequence[str]) -> Celery:
    """A Celery app for a producer in another process than the workers started with
    ``env`` and ``queues``: their broker, results and hot tier (the turn records),
    their queue and exchange types (RabbitMQ's quorum queues), ``threads.*`` routed
    to the first queue and every other task to the last."""
    app = Celery(name)
    app.config_from_object("tasks.service.config")
    hot: dict[str, Any] = {
        key: env[f"AGENT_THREADS_{key.upper()}"]
        for key in ("redis_url", "namespace")
        if f"AGENT_THREADS_{key.upper()}" in env
    }
    if "AGENT_THREADS_REDIS_CLUSTER" in env:
        hot["redis_cluster"] = env["AGENT_THREADS_REDIS_CLUSTER"].lower() in ("1", "true", "yes")
    app.conf.update(
        broker_url=env["AGENT_THREADS_BROKER_URL"],
        **broker_settings(env["AGENT_THREADS_BROKER_URL"], env),
        result_backend=env["AGENT_THREADS_RESULT_BACKEND"],
        # where the turn records are; threads.* go to the first queue
        agent_threads={**app.conf.agent_threads, **hot, "queue": queues[0]},
        task_routes={"threads.*": {"queue": queues[0]}},
        task_default_queue=queues[-1],
    )
    return app


class CeleryProcess:
    """A ``celery`` command for this app in its own process group, its output in
    ``log_path``: ``stop()`` ends it with SIGTERM (then SIGKILL), ``kill()`` SIGKILLs
    the whole group at once (no warm shutdown, no acks), like an OOM kill."""

    stop_timeout = 20.0

    def __init__(
        self,
        env: dict[str, str],
        *,
        log_path: str | None,
        cwd: str | None,
        celery_app: str = "tasks.app",
    ) -> None:
        self.env = env
        self.celery_app = celery_app
        """The ``-A`` argument: the service's app, or a user project's."""
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _spawn(self, arguments: list[str]) -> None:
        command = [sys.executable, "-m", "celery", "-A", self.celery_app, *arguments]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            command,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL the process and everything it started."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not end in time."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


class WorkerProcess(CeleryProcess):
    """A real ``celery worker`` for this app in its own process group (the demo, the
    crash tests). ``stop()`` is a warm shutdown; ``kill()`` SIGKILLs the whole group
    at once (no warm shutdown, no acks), like an OOM kill or a lost machine."""

    def __init__(
        self,
        env: dict[str, str],
        queues: list[str],
        *,
        name: str = "crash",
        pool: str = "threads",
        concurrency: int = 4,
        log_path: str | None = None,
        cwd: str | None = None,
        loglevel: str = "WARNING",
        beat_schedule: str | None = None,
        celery_app: str = "tasks.app",
    ) -> None:
        super().__init__(env, log_path=log_path, cwd=cwd, celery_app=celery_app)
        self.beat_schedule = beat_schedule
        """With a path: the worker also runs the beat (``-B``), its schedule kept there."""
        self.queues = queues
        self.name = f"{name}@%h"
        self.pool = pool
        self.concurrency = concurrency
        self.loglevel = loglevel

    def start(self) -> WorkerProcess:
        arguments = [
            "worker", "-P", self.pool, "-c", str(self.concurrency), "-Q", ",".join(self.queues),
            "-n", self.name, "-l", self.loglevel,
            "--without-heartbeat", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if self.beat_schedule:
            arguments += ["-B", "-s", self.beat_schedule]
        self._spawn(arguments)
        return self

    def wait_ready(self, app: Any, timeout: float = 60.0) -> None:
        """Wait until the worker answers a remote-control ping."""
        hostname = self.name.replace("%h", socket.gethostname())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError("celery worker exited during start-up; see its log")
            if app.control.ping(destination=[hostname], timeout=0.5):
                return
        raise TimeoutError(f"celery worker {hostname} did not answer within {timeout} s")


class BeatProcess(CeleryProcess):
    """A real ``celery beat`` for this app, its schedule file at ``schedule``."""

    stop_timeout = 10.0

    def __init__(
        self,
        env: dict[str, str],
        schedule: str,
        *,
        log_path: str | None = None,
        cwd: str | None = None,
        loglevel: str = "WARNING",
    ) -> None:
        super().__init__(env, log_path=log_path, cwd=cwd)
        self.schedule = schedule
        self.loglevel = loglevel

    def start(self) -> BeatProcess:
        self._spawn(["beat", "-s", self.schedule, "-l", self.loglevel])
        return self
