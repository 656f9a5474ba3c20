"""A RabbitMQ node on loopback for the broker tests (``with RabbitMQServer() as mq: mq.url``).

Like ``storage.embedded.EmbeddedRedis``, it runs in the foreground of a
``subprocess.Popen`` (never ``-detached``: without an init process a daemon
becomes a zombie), in its own process group, with all its state in a temporary
directory: node name, ports, Mnesia and log directories, config, plugins (none)
and Erlang cookie (``HOME``). Its port mapper is our own ``epmd`` in the
foreground on a free port (the node is started with ``-start_epmd false``, so
it never spawns a daemonized one). ``stop()`` ends both, whatever failed.

Start-up takes 5-8 s on a 2-core machine (3.10, no plugins), a graceful stop 1-3 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import amqp
from kombu import Connection

from storage.embedded import ServerProcess, free_port

# Debian's /usr/sbin/rabbitmq-server and rabbitmqctl are wrappers that `su rabbitmq`
# as root; the real scripts live here.
_DEBIAN_BIN = Path("/usr/lib/rabbitmq/bin")


def find_rabbitmq_server() -> str | None:
    """Path of the rabbitmq-server script (Debian's real one first), or None."""
    debian = _DEBIAN_BIN / "rabbitmq-server"
    if debian.is_file():
        return str(debian)
    return shutil.which("rabbitmq-server", path=f"{os.environ.get('PATH', '')}:/usr/sbin")


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop_group(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM the leader (a graceful stop), wait, then SIGKILL its whole group."""
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    process.wait(timeout=10)


@dataclass(frozen=True)
class Vhost:
    name: str
    url: str
    """The AMQP URL of the vhost (a broker URL)."""


DELAY_LEVELS = [f"celery_delayed_{level}" for level in range(28)]
"""The queues of Celery's native delayed delivery (quorum queues' countdowns)."""


def message_counts(url: str, queues: list[str]) -> dict[str, int]:
    """Messages ready in each queue (a passive declare: exact at once, unlike the
    statistics ``rabbitmqctl list_queues`` shows, which lag by seconds)."""
    with Connection(url) as connection:
        channel = connection.default_channel
        return {q: channel.queue_declare(q, passive=True).message_count for q in queues}


class RabbitMQServer(ServerProcess):
    """One RabbitMQ node; ``url`` is its AMQP URL (vhost ``/``), ``add_vhost`` makes
    a fresh vhost for one test and ``queue_types`` reads the queues' types."""

    def __init__(self, *, binary: str | None = None, startup_timeout: float = 60.0) -> None:
        found = binary or find_rabbitmq_server()
        if found is None:
            raise FileNotFoundError(
                "no rabbitmq-server found: `apt-get install rabbitmq-server` (Debian)"
            )
        self.binary = found
        self.ctl = str(Path(found).with_name("rabbitmqctl"))
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"at-{self.port}@localhost"
        self.startup_s = 0.0
        """Seconds from the start until an AMQP connection succeeded."""
        self.process: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.base = Path()

    @property
    def url(self) -> str:
        return self.vhost_url("/")

    def vhost_url(self, vhost: str) -> str:
        path = "/" if vhost == "/" else vhost
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{path}"

    @property
    def log_path(self) -> Path:
        return self.base / "server.out"

    def env(self) -> dict[str, str]:
        """The environment of the node and of rabbitmqctl talking to it."""
        base = self.base
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base / "home"),  # the Erlang cookie
            "LANG": "C.UTF-8",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            # files that must not exist: never read /etc/rabbitmq's
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false",
            # Erlang's own resolver: the native one's helper processes (inet_gethost)
            # outlive their parent and would be zombies here
            "ERL_INETRC": str(base / "erl_inetrc"),
        }

    def start(self) -> RabbitMQServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="agent-threads-rabbitmq-")
        self.base = Path(self._tmp.name)
        for folder in ("home", "mnesia", "log"):
            (self.base / folder).mkdir()
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "erl_inetrc").write_text(
            '{host, {127,0,0,1}, ["localhost"]}.\n{lookup, [file]}.\n'
        )
        (self.base / "rabbitmq.conf").write_text("disk_free_limit.absolute = 50MB\n")
        started = time.monotonic()
        deadline = started + self.startup_timeout
        try:
            self._start_epmd(deadline)
            with open(self.log_path, "wb") as out:
                self.process = subprocess.Popen(  # our own argv, no shell
                    [self.binary],
                    env=self.env(),
                    cwd=self.base,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self._wait_amqp(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _start_epmd(self, deadline: float) -> None:
        epmd = shutil.which("epmd") or "epmd"
        self.epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port)],
            env={"PATH": os.environ.get("PATH", "")},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while not _listening(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not listen on port {self.epmd_port}")
            time.sleep(0.02)

    def _wait_amqp(self, deadline: float) -> None:
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited at start:\n{self._log_tail()}")
            try:
                connection = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=0.5)
                connection.connect()
                connection.close()
                return
            except (OSError, amqp.exceptions.AMQPError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rabbitmq-server did not accept AMQP on port {self.port}:\n" + self._log_tail()
                )
            time.sleep(0.1)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <node> args...``; its stdout (it raises on failure)."""
        done = subprocess.run(
            [self.ctl, "-q", "-n", self.node, *args],
            env=self.env(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace')}{done.stdout.decode(errors='replace')}"
            )
        return done.stdout.decode()

    def add_vhost(self, name: str) -> Vhost:
        """A new vhost that guest may use."""
        self.rabbitmqctl("add_vhost", name)
        self.rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return Vhost(name, self.vhost_url(name))

    def delete_vhost(self, vhost: str) -> None:
        self.rabbitmqctl("delete_vhost", vhost)

    def list_queues(self, vhost: str, column: str) -> dict[str, str]:
        """Queue name -> ``column`` (``type``, ``messages``, ...) of every queue in ``vhost``
        (no management plugin needed)."""
        out = self.rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", column)
        return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)

    def stop(self) -> None:
        process, self.process = self.process, None
        epmd, self.epmd = self.epmd, None
        try:
            _stop_group(process, timeout=15)
        finally:
            try:
                _stop_group(epmd, timeout=5)
            finally:
                if self._tmp is not None:
                    self._tmp.cleanup()
                    self._tmp = None
