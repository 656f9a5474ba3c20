"""A TCP fault proxy on loopback: put it between a client and a server (Redis, S3)
and break the network between them on purpose, at runtime.

    with FaultProxy(("127.0.0.1", redis_port)) as proxy:
        client = redis.Redis(port=proxy.port)
        proxy.stall(3.0)        # bytes are held, the client hits its socket timeout
        proxy.drop(1.0)         # connections are closed (FIN), new ones too
        proxy.reset(0.5)        # connections are aborted (RST), new ones too
        proxy.reset(fraction=0.5)  # abort about half of the current connections
        proxy.heal()            # back to forwarding
        proxy.counts()          # what was injected

Modes (one at a time; a timed mode returns to "pass" by itself):

* ``pass``: forward both ways.
* ``drop``: close every connection (FIN, buffered bytes discarded); a new
  connection is accepted and closed at once. Like a server or a load balancer
  that goes away.
* ``stall``: forward nothing, in either direction, on old and new connections
  (new ones are still accepted: a partition where SYNs still get answered).
  The bytes are held, not lost: when the stall ends they are delivered, even
  if the client gave up and closed meanwhile. So a request that timed out on
  the client may still run on the server, late: exactly what a retry must
  survive.
* ``reset``: abort current connections with an RST (``SO_LINGER`` 0), each with
  probability ``fraction``; for ``seconds``, abort new connections too (same
  probability), right after accepting them.

``Flaky`` injects random faults (kind, length, pause) from a seed, on one or
more proxies, until stopped.

One thread runs a ``selectors`` loop over the listener and every connection,
so only that thread ever touches a socket; control calls are queued to it and
return once it applied them. Stdlib only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, Self

from storage.embedded import ServerProcess

Mode = Literal["pass", "drop", "stall", "reset"]
FaultKind = Literal["drop", "stall", "reset"]

_BUFFER_LIMIT = 1 << 20  # bytes held per direction before we stop reading (backpressure)
_CHUNK = 65536
_CONTROL_TIMEOUT = 10.0


@dataclasses.dataclass
class FaultCounts:
    """What the proxy did. ``drops``, ``resets`` and ``stalled_connections`` count
    connections hit by a fault; ``stalls`` counts stall episodes."""

    accepted: int = 0
    forwarded_bytes: int = 0
    drops: int = 0
    resets: int = 0
    stalls: int = 0
    stalled_connections: int = 0
    upstream_unreachable: int = 0

    @property
    def injected(self) -> int:
        """Connections hit by a fault (dropped, reset or held in a stall)."""
        return self.drops + self.resets + self.stalled_connections


class _Link:
    """One proxied connection: the client's socket, the upstream's, and the bytes
    read from one and not yet written to the other."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.to_upstream = bytearray()
        self.to_client = bytearray()
        self.client_eof = False
        self.upstream_eof = False
        self.client_shut = False
        self.upstream_shut = False
        self.stall_episode = -1  # the last stall episode in which this link held bytes
        self.interest: dict[socket.socket, int] = {client: 0, upstream: 0}


def _abort(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy(ServerProcess):
    """Forward 127.0.0.1:<port> to ``upstream``, with faults on demand (see module doc)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        name: str = "proxy",
        connect_timeout: float = 2.0,
    ) -> None:
        self.upstream = upstream
        self.host = host
        self._requested_port = port
        self.name = name
        self.connect_timeout = connect_timeout
        self._rng = random.Random(seed)
        self._counts = FaultCounts()
        self._counts_lock = threading.Lock()
        self._mode: Mode = "pass"
        self._until: float | None = None
        self._fraction = 1.0
        self._stall_episode = 0
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._links: list[_Link] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        self.port = 0
        self.error: BaseException | None = None
        """An unexpected error that ended the loop (raised again by ``stop``)."""

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._requested_port))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full wake pipe already means "wake up"
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name=f"faultproxy-{self.name}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection; wait for the loop thread."""
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():
            self._closing = True
            self._wake()
            thread.join(timeout=_CONTROL_TIMEOUT)
        self._thread = None
        if thread.is_alive():
            raise RuntimeError(f"fault proxy {self.name} did not stop")
        if self.error is not None:
            raise RuntimeError(f"fault proxy {self.name} failed") from self.error

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- faults -------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        if self._until is not None and time.monotonic() >= self._until:
            return "pass"
        return self._mode

    def heal(self) -> None:
        """Forward normally again (a stall delivers what it held)."""
        self._control(lambda: self._set_mode("pass", None))

    def drop(self, seconds: float | None = None) -> None:
        """Close every connection and every new one, for ``seconds`` (None: until heal)."""
        self._control(lambda: self._set_mode("drop", seconds))

    def stall(self, seconds: float | None = None) -> None:
        """Hold all bytes, for ``seconds`` (None: until heal); then deliver them."""
        self._control(lambda: self._set_mode("stall", seconds))

    def reset(self, seconds: float | None = 0.0, *, fraction: float = 1.0) -> None:
        """Abort (RST) each current connection with probability ``fraction``; for
        ``seconds``, also each new connection (0: only the current ones; None:
        until heal)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be within [0, 1]")

        def apply() -> None:
            self._fraction = fraction
            self._set_mode("reset", seconds)

        self._control(apply)

    def counts(self) -> FaultCounts:
        with self._counts_lock:
            return dataclasses.replace(self._counts)

    def open_connections(self) -> int:
        return len(self._links)

    # -- the loop (the only code that touches sockets) ----------------------------------

    def _control(self, action: Callable[[], None]) -> None:
        if not self.running:
            raise RuntimeError(f"fault proxy {self.name} is not running")
        done = threading.Event()
        self._commands.put((action, done))
        self._wake()
        if not done.wait(_CONTROL_TIMEOUT):
            raise RuntimeError(f"fault proxy {self.name} did not apply a control call")

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    def _count(self, **deltas: int) -> None:
        with self._counts_lock:
            for field, delta in deltas.items():
                setattr(self._counts, field, getattr(self._counts, field) + delta)

    def _set_mode(self, mode: Mode, seconds: float | None) -> None:
        self._expire()  # a stall that just ended is counted as ended
        self._mode = mode
        self._until = None if seconds is None else time.monotonic() + seconds
        if mode == "drop":
            for link in list(self._links):
                self._close_link(link, abort=False)
                self._count(drops=1)
        elif mode == "reset":
            for link in list(self._links):
                if self._rng.random() < self._fraction:
                    self._close_link(link, abort=True)
                    self._count(resets=1)
        elif mode == "stall":
            self._stall_episode += 1
            self._count(stalls=1)

    def _expire(self) -> None:
        if self._until is not None and time.monotonic() >= self._until:
            self._mode, self._until = "pass", None

    def _loop(self) -> None:
        assert self._selector is not None
        try:
            while not self._closing:
                self._run_commands()
                self._expire()
                self._update_interest()
                timeout = 0.5
                if self._until is not None:
                    timeout = max(0.0, min(timeout, self._until - time.monotonic()))
                for key, mask in self._selector.select(timeout):
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        link, sock = key.data
                        if link in self._links:
                            self._service(link, sock, mask)
        except BaseException as exc:  # surfaced by stop()
            self.error = exc
        finally:
            self._shutdown()

    def _run_commands(self) -> None:
        while True:
            try:
                action, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            finally:
                done.set()

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):  # bounded: the rest on the next round
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self._count(accepted=1)
            mode = self.mode
            if mode == "drop":
                client.close()
                self._count(drops=1)
                continue
            if mode == "reset" and self._rng.random() < self._fraction:
                _abort(client)
                self._count(resets=1)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
            except OSError:
                _abort(client)  # like the server refusing: the client sees a reset
                self._count(upstream_unreachable=1)
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._links.append(_Link(client, upstream))

    def _update_interest(self) -> None:
        assert self._selector is not None
        stalled = self.mode == "stall"
        for link in list(self._links):
            held = link.to_upstream or link.to_client
            if stalled and held and link.stall_episode != self._stall_episode:
                link.stall_episode = self._stall_episode
                self._count(stalled_connections=1)
            if not stalled:
                self._propagate_eof(link)
            if link not in self._links:
                continue
            for sock, inbound, outbound, eof in (
                (link.client, link.to_upstream, link.to_client, link.client_eof),
                (link.upstream, link.to_client, link.to_upstream, link.upstream_eof),
            ):
                wanted = 0
                if not eof and len(inbound) < _BUFFER_LIMIT:
                    wanted |= selectors.EVENT_READ  # read (and hold, when stalled)
                if outbound and not stalled:
                    wanted |= selectors.EVENT_WRITE
                if wanted == link.interest[sock]:
                    continue
                if link.interest[sock] == 0:
                    self._selector.register(sock, wanted, (link, sock))
                elif wanted == 0:
                    self._selector.unregister(sock)
                else:
                    self._selector.modify(sock, wanted, (link, sock))
                link.interest[sock] = wanted

    def _propagate_eof(self, link: _Link) -> None:
        """Pass a half-close on once everything before it was delivered; close the
        link when both directions are done."""
        try:
            if link.client_eof and not link.to_upstream and not link.upstream_shut:
                link.upstream.shutdown(socket.SHUT_WR)
                link.upstream_shut = True
            if link.upstream_eof and not link.to_client and not link.client_shut:
                link.client.shutdown(socket.SHUT_WR)
                link.client_shut = True
        except OSError:
            self._close_link(link, abort=False)
            return
        if link.client_shut and link.upstream_shut:
            self._close_link(link, abort=False)

    def _service(self, link: _Link, sock: socket.socket, mask: int) -> None:
        from_client = sock is link.client
        try:
            if mask & selectors.EVENT_READ:
                data = sock.recv(_CHUNK)
                if not data:
                    if from_client:
                        link.client_eof = True
                    else:
                        link.upstream_eof = True
                elif from_client:
                    link.to_upstream += data
                else:
                    link.to_client += data
            if mask & selectors.EVENT_WRITE and self.mode != "stall":
                outbound = link.to_client if from_client else link.to_upstream
                sent = sock.send(outbound)
                del outbound[:sent]
                self._count(forwarded_bytes=sent)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # one side reset or vanished: pass it on as an abort of the other side
            self._close_link(link, abort=True)

    def _close_link(self, link: _Link, *, abort: bool) -> None:
        assert self._selector is not None
        for sock in (link.client, link.upstream):
            if link.interest.get(sock):
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
                link.interest[sock] = 0
            if abort:
                _abort(sock)
            else:
                sock.close()
        if link in self._links:
            self._links.remove(link)

    def _shutdown(self) -> None:
        for link in list(self._links):
            self._close_link(link, abort=False)
        if self._selector is not None:
            self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        # release anyone waiting on a control call that will never run
        while True:
            try:
                _, done = self._commands.get_nowait()
            except queue.Empty:
                break
            done.set()


class Flaky(ServerProcess):
    """Random faults from a seed on ``proxies`` until stopped (or ``max_faults``):
    pause ``gap`` seconds, pick a proxy, a kind and a length, inject, wait it out,
    repeat. Every proxy is healed when it stops.

        with Flaky([redis_proxy, s3_proxy], seed=3):
            ...  # traffic under random drops, stalls and resets
    """

    def __init__(
        self,
        proxies: Sequence[FaultProxy],
        *,
        seed: int,
        kinds: Iterable[FaultKind] = ("drop", "stall", "reset"),
        gap: tuple[float, float] = (0.2, 1.0),
        length: tuple[float, float] = (0.2, 1.5),
        reset_fraction: float = 0.5,
        max_faults: int = 1000,
    ) -> None:
        self.proxies = list(proxies)
        self.rng = random.Random(seed)
        self.kinds: list[FaultKind] = list(kinds)
        self.gap = gap
        self.length = length
        self.reset_fraction = reset_fraction
        self.max_faults = max_faults
        self.injected: list[tuple[str, FaultKind, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name="faultproxy-flaky", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_CONTROL_TIMEOUT)
            self._thread = None
        for proxy in self.proxies:
            if proxy.running:
                proxy.heal()

    def _run(self) -> None:
        try:
            while len(self.injected) < self.max_faults:
                if self._stop.wait(self.rng.uniform(*self.gap)):
                    return
                proxy = self.rng.choice(self.proxies)
                kind = self.rng.choice(self.kinds)
                seconds = round(self.rng.uniform(*self.length), 3)
                if kind == "drop":
                    proxy.drop(seconds)
                elif kind == "stall":
                    proxy.stall(seconds)
                else:
                    proxy.reset(seconds, fraction=self.reset_fraction)
                self.injected.append((proxy.name, kind, seconds))
                if self._stop.wait(seconds):
                    return
        except BaseException as exc:  # surfaced by the test through .error
            self.error = exc
