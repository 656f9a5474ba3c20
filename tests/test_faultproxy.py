"""The fault proxy itself (tests/faultproxy.py): forwarding, each fault mode, the
counts, seeded randomness and a clean stop. Upstream is a small echo server, or
the session's real redis-server where a real client's timeout matters."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from storage.embedded import EmbeddedRedis
from tests.faultproxy import FaultProxy, Flaky

DEADLINE = 10.0  # seconds any wait for a condition may take before the test fails


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            try:
                data = self.request.recv(65536)
            except OSError:
                return
            if not data:
                return
            try:
                self.request.sendall(data)
            except OSError:
                return


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the default 5 drops SYNs of a burst: 1 s retransmits


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield (str(host), int(port))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(echo, seed=1, name="echo") as running:
        yield running


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def receive(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes (or fewer if the peer closed)."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def roundtrip(proxy: FaultProxy, payload: bytes) -> bytes:
    with connect(proxy) as sock:
        sock.sendall(payload)
        return receive(sock, len(payload))


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def closed_by_peer(sock: socket.socket) -> str:
    """How the peer ended the connection: "fin", "rst" (or "open" if it did not)."""
    try:
        return "fin" if sock.recv(1) == b"" else "open"
    except ConnectionResetError:
        return "rst"
    except TimeoutError:
        return "open"


def test_pass_mode_forwards_both_ways_byte_for_byte(proxy: FaultProxy) -> None:
    payloads = [os.urandom(300_000) for _ in range(3)]
    socks = [connect(proxy) for _ in payloads]
    try:
        for sock, payload in zip(socks, payloads, strict=True):
            sock.sendall(payload)
        for sock, payload in zip(socks, payloads, strict=True):
            assert receive(sock, len(payload)) == payload
    finally:
        for sock in socks:
            sock.close()
    total = 2 * sum(map(len, payloads))  # counted just after each send: may trail a moment
    wait_for(lambda: proxy.counts().forwarded_bytes == total, "the byte count")
    counts = proxy.counts()
    assert (counts.accepted, counts.injected) == (3, 0)


def test_drop_closes_current_and_new_connections_until_healed(proxy: FaultProxy) -> None:
    sock = connect(proxy)
    assert roundtrip(proxy, b"before") == b"before"
    wait_for(lambda: proxy.open_connections() == 1, "the first connection to be forwarded")
    proxy.drop()
    assert closed_by_peer(sock) == "fin"
    sock.close()
    with connect(proxy) as fresh:
        assert closed_by_peer(fresh) == "fin"
    proxy.heal()
    assert roundtrip(proxy, b"after") == b"after"
    assert proxy.counts().drops == 2


def test_stall_holds_bytes_so_clients_time_out_then_delivers_them(proxy: FaultProxy) -> None:
    with connect(proxy, timeout=0.2) as sock:
        proxy.stall()
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(4)
        assert proxy.mode == "stall"  # the client timed out, the stall did not end
        proxy.heal()
        sock.settimeout(DEADLINE)
        assert receive(sock, 4) == b"held"
    counts = proxy.counts()
    assert (counts.stalls, counts.stalled_connections) == (1, 1)


def test_timed_stall_ends_by_itself(proxy: FaultProxy) -> None:
    with connect(proxy, timeout=DEADLINE) as sock:
        proxy.stall(0.3)
        sock.sendall(b"late")
        assert receive(sock, 4) == b"late"
    assert proxy.mode == "pass"


def test_stall_delivers_a_request_whose_client_gave_up(
    proxy: FaultProxy, redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    """What a retry must survive: the client timed out, but its command still runs."""
    with FaultProxy(("127.0.0.1", redis_server.port), name="redis") as to_redis:
        no_retry = Retry(NoBackoff(), 0)
        client = redis.Redis(port=to_redis.port, socket_timeout=0.3, retry=no_retry)
        client.ping()
        to_redis.stall()
        with pytest.raises(redis.exceptions.TimeoutError):
            client.incr("late")
        client.close()
        assert redis_client.get("late") is None
        to_redis.heal()
        wait_for(lambda: redis_client.get("late") == b"1", "the held INCR to run")


def test_reset_aborts_current_connections_with_rst_and_new_ones_while_it_lasts(
    proxy: FaultProxy,
) -> None:
    sock = connect(proxy)
    sock.sendall(b"x")
    assert receive(sock, 1) == b"x"
    proxy.reset(None)
    assert closed_by_peer(sock) == "rst"
    sock.close()
    try:  # the RST may come before connect() returns
        with connect(proxy) as fresh:
            assert closed_by_peer(fresh) == "rst"
    except ConnectionResetError:
        pass
    proxy.heal()
    assert roundtrip(proxy, b"ok") == b"ok"
    assert proxy.counts().resets == 2


def test_reset_of_a_fraction_is_seeded(echo: tuple[str, int]) -> None:
    def victims(seed: int) -> list[int]:
        with FaultProxy(echo, seed=seed) as proxy:
            socks = [connect(proxy, timeout=DEADLINE) for _ in range(20)]
            try:
                for sock in socks:  # one round trip each: all 20 are forwarded links
                    sock.sendall(b"y")
                    assert receive(sock, 1) == b"y"
                wait_for(lambda: proxy.open_connections() == 20, "20 forwarded connections")
                proxy.reset(fraction=0.5)
                hit = []
                for index, sock in enumerate(socks):
                    try:  # a survivor still echoes; a victim was reset
                        sock.sendall(b"y")
                        assert receive(sock, 1) == b"y"
                    except (ConnectionResetError, BrokenPipeError):
                        hit.append(index)
                assert proxy.counts().resets == len(hit)
                return hit
            finally:
                for sock in socks:
                    sock.close()

    first = victims(seed=42)
    assert 0 < len(first) < 20
    assert victims(seed=42) == first


def test_stop_closes_every_connection_and_the_listener(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(echo).start()
    socks = [connect(proxy) for _ in range(3)]
    try:
        for sock in socks:
            sock.sendall(b"z")
            assert receive(sock, 1) == b"z"
        proxy.stop()
        assert not proxy.running
        assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]
        for sock in socks:
            assert closed_by_peer(sock) in ("fin", "rst")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=DEADLINE).close()
    finally:
        for sock in socks:
            sock.close()
        proxy.stop()  # idempotent


def test_flaky_injects_a_seeded_plan_and_heals_on_stop(echo: tuple[str, int]) -> None:
    def plan(seed: int) -> list[tuple[str, float]]:
        with FaultProxy(echo, name="flaky") as proxy:
            flaky = Flaky([proxy], seed=seed, gap=(0.01, 0.03), length=(0.01, 0.05), max_faults=8)
            with flaky:
                # traffic through the faults: each attempt either echoes or fails
                deadline = time.monotonic() + DEADLINE
                while len(flaky.injected) < 8 and time.monotonic() < deadline:
                    try:
                        with connect(proxy, timeout=0.2) as sock:
                            sock.sendall(b"f")
                            sock.recv(1)
                    except OSError:
                        pass
            assert flaky.error is None
            assert proxy.mode == "pass"
            assert roundtrip(proxy, b"healed") == b"healed"
            return [(kind, seconds) for _, kind, seconds in flaky.injected]

    first = plan(seed=5)
    assert len(first) == 8
    assert len({kind for kind, _ in first}) > 1
    assert plan(seed=5) == first
