"""A real Redis Cluster on loopback for the tests: three masters, by default no
replicas (``replicas=1`` gives each master one, for the failover tests).

Each node is a redis-server child process in the foreground of a
``subprocess.Popen`` (no ``--daemonize``: without an init process that leaves
zombies), joined with ``redis-cli --cluster create``. ``stop`` always ends
every process, also when start-up failed halfway.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis

from storage.embedded import ServerProcess, find_redis_server, stop_process
from tests.servers import free_port_pair

CLUSTER_BUS_OFFSET = 10_000
"""A node's cluster bus listens on its port + 10000 (the default ``cluster-port``)."""


def find_redis_cli(server_binary: str) -> str:
    """redis-cli beside ``server_binary`` (same version), else from PATH."""
    beside = Path(server_binary).with_name("redis-cli")
    if beside.is_file():
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise FileNotFoundError(f"no redis-cli beside {server_binary} or on PATH")
    return found


class RedisClusterServer(ServerProcess):
    """``with RedisClusterServer() as cluster: cluster.client()`` (a ``redis.RedisCluster``).

    ``node_timeout_ms`` is ``cluster-node-timeout``: a master unreachable that long
    is failed and its replica promoted (the failover tests shorten it to 1 s).
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 5000,
        binary: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.binary = binary or find_redis_server()
        self.cli = find_redis_cli(self.binary)
        self.startup_timeout = startup_timeout
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    def client(self, **kwargs: object) -> redis.RedisCluster:
        """A cluster client; KEYS and DBSIZE answer for the whole cluster (all
        primaries), so tests can assert on every key of every node."""
        client = redis.RedisCluster(host="127.0.0.1", port=self.ports[0], **kwargs)  # type: ignore[arg-type]
        for command in ("KEYS", "DBSIZE"):
            client.command_flags[command] = redis.RedisCluster.PRIMARIES
        return client

    def node_client(self, port: int, **kwargs: object) -> redis.Redis:
        """A plain client on one node (for CLUSTER INFO and friends)."""
        return redis.Redis(host="127.0.0.1", port=port, **kwargs)  # type: ignore[arg-type]

    def start(self) -> RedisClusterServer:
        try:
            self._tmp = tempfile.TemporaryDirectory(prefix="agent-threads-cluster-")
            root = Path(self._tmp.name)
            deadline = time.monotonic() + self.startup_timeout
            taken: set[int] = set()
            for _ in range(self.masters * (1 + self.replicas)):
                self._start_node(root, free_port_pair(CLUSTER_BUS_OFFSET, taken))
            for port in self.ports:
                self._wait(partial(self._ping, port), deadline, f"node {port} to answer")
            self._create(deadline)
            self._wait(self._all_ok, deadline, "cluster_state:ok on every node")
            self._wait(self.replicas_in_sync, deadline, "every replica in sync")
        except BaseException as exc:
            logs = self._log_tails()
            self.stop()
            if isinstance(exc, Exception) and logs:
                raise RuntimeError(f"Redis Cluster failed to start ({exc}); logs:\n{logs}") from exc
            raise
        return self

    def stop(self) -> None:
        processes, self.processes = self.processes, []
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            stop_process(process)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def roles(self) -> dict[int, int | None]:
        """Every live node's port -> the port of its master (``None`` for a master),
        as the node itself reports it (``ROLE``)."""
        roles: dict[int, int | None] = {}
        for port, process in zip(self.ports, self.processes, strict=True):
            if process.poll() is not None:
                continue
            client = self.node_client(port, socket_timeout=1)
            try:
                role = client.execute_command("ROLE")
            except redis.exceptions.RedisError:
                continue
            finally:
                client.close()
            roles[port] = int(role[2]) if role[0] in (b"slave", "slave") else None
        return roles

    def replicas_in_sync(self) -> bool:
        """Every live replica's link to its master is up (``master_link_status:up``)."""
        for port, master in self.roles().items():
            if master is None:
                continue
            client = self.node_client(port, socket_timeout=1, decode_responses=True)
            try:
                if client.info("replication").get("master_link_status") != "up":
                    return False
            except redis.exceptions.RedisError:
                return False
            finally:
                client.close()
        return True

    def kill(self, port: int) -> None:
        """SIGKILL one node: no shutdown, no last write to its replicas."""
        process = self.processes[self.ports.index(port)]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def restart(self, port: int) -> None:
        """Start a killed node again with its folder (and ``nodes.conf``): it rejoins
        the cluster, as a replica if its slots were failed over meanwhile."""
        if self._tmp is None:
            raise RuntimeError("the cluster is not running")
        index = self.ports.index(port)
        if self.processes[index].poll() is None:
            raise RuntimeError(f"node {port} is still running")
        self.processes[index] = self._node_process(Path(self._tmp.name) / str(port), port)

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until it holds; ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def _start_node(self, root: Path, port: int) -> None:
        folder = root / str(port)
        folder.mkdir()
        self.ports.append(port)
        self.processes.append(self._node_process(folder, port))

    def _node_process(self, folder: Path, port: int) -> subprocess.Popen[bytes]:
        args = [
            self.binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--daemonize", "no",
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(folder / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--appendonly", "no",
            "--save", "",
            "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not after 5 s
            "--dir", str(folder),
            "--logfile", str(folder / "redis.log"),
        ]  # fmt: skip
        return subprocess.Popen(args, stdin=subprocess.DEVNULL)

    def _create(self, deadline: float) -> None:
        args = [self.cli, "--cluster", "create", *self.nodes]
        args += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=max(1.0, deadline - time.monotonic()),
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output}")

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        while not ready():
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a cluster node exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def _ping(self, port: int) -> bool:
        client = self.node_client(port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()

    def _all_ok(self) -> bool:
        """Every node reports cluster_state:ok, all slots served and knows every node."""
        for port in self.ports:
            client = self.node_client(port, socket_timeout=1, decode_responses=True)
            try:
                info = client.cluster("INFO")
            except redis.exceptions.RedisError:
                return False
            finally:
                client.close()
            if isinstance(info, dict):
                fields = {str(k): str(v) for k, v in info.items()}
            else:
                fields = dict(line.split(":", 1) for line in str(info).splitlines() if ":" in line)
            if (
                fields.get("cluster_state") != "ok"
                or fields.get("cluster_slots_ok") != "16384"
                or fields.get("cluster_known_nodes") != str(len(self.ports))
            ):
                return False
        return True

    def _log_tails(self) -> str:
        if self._tmp is None:
            return ""
        tails = []
        for log in sorted(Path(self._tmp.name).glob("*/redis.log")):
            lines = log.read_text(errors="replace").splitlines()[-10:]
            tails.append(f"--- {log.parent.name}\n" + "\n".join(lines))
        return "\n".join(tails)
