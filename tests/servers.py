"""Server processes for the test harness: an S3 endpoint (moto's server) on loopback.
(Real ``celery worker`` processes come from ``tasks.processes.WorkerProcess``.)

Like ``storage.embedded.EmbeddedRedis``, each runs in the foreground of a
``subprocess.Popen`` and is always stopped with terminate/wait.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request

from storage.embedded import ServerProcess, free_port, stop_process


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
