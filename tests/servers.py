"""Server processes for the test harness: an S3 endpoint (moto's server) on loopback,
and real ``celery worker`` processes for the crash tests.

Like ``storage.embedded.EmbeddedRedis``, each runs in the foreground of a
``subprocess.Popen`` and is always stopped with terminate/wait.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from storage.embedded import free_port

REPO = Path(__file__).resolve().parent.parent


class MotoServer:
    """moto's S3-compatible HTTP server on 127.0.0.1 (``with MotoServer() as s3: s3.url``)."""

    def __init__(self, *, port: int | None = None, startup_timeout: float = 30.0) -> None:
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited at start with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):  # noqa: S310
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"moto server did not answer on port {self.port}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class CeleryWorkerProcess:
    """A real ``celery worker`` in its own process group, for crash tests: ``kill()``
    SIGKILLs the whole group at once (no warm shutdown, no acks), like an OOM kill
    or a lost machine."""

    def __init__(
        self,
        env: dict[str, str],
        queues: list[str],
        *,
        name: str = "crash",
        pool: str = "threads",
        concurrency: int = 4,
        log_path: str | None = None,
    ) -> None:
        self.env = env
        self.queues = queues
        self.name = f"{name}@%h"
        self.pool = pool
        self.concurrency = concurrency
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> CeleryWorkerProcess:
        command = [
            sys.executable, "-m", "celery", "-A", "tasks.app", "worker",
            "-P", self.pool, "-c", str(self.concurrency), "-Q", ",".join(self.queues),
            "-n", self.name, "-l", "WARNING",
            "--without-heartbeat", "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            env=self.env,
            cwd=str(REPO),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
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

    def kill(self) -> None:
        """SIGKILL the worker and everything it started."""
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
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
