"""Server processes for the test harness: an S3 endpoint (moto's server) on loopback.
(Real ``celery worker`` processes come from ``tasks.local.processes.WorkerProcess``.)

Like ``storage.embedded.EmbeddedRedis``, each runs in the foreground of a
``subprocess.Popen`` and is always stopped with terminate/wait.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import boto3
from botocore.config import Config

from storage.embedded import ServerProcess, free_port, stop_process


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair(offset: int, taken: set[int]) -> int:
    """A free port ``p`` whose twin ``p + offset`` (a cluster bus, a gRPC port) is free
    as well; neither is in ``taken``, and both are added to it."""
    for _ in range(200):
        port = free_port()
        twin = port + offset
        if port in taken or twin in taken or twin > 65535 or not _bindable(twin):
            continue
        taken.update((port, twin))
        return port
    raise RuntimeError(f"no free port pair (p, p + {offset}) found on 127.0.0.1")


class MotoServer(ServerProcess):
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
        stop_process(process)


def s3_client_for(url: str, **config: Any) -> Any:
    """A boto3 S3 client for a test endpoint (moto's dummy credentials)."""
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"mode": "standard", "max_attempts": 2}, **config),
    )
