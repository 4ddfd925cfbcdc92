"""The listening side: accepts peers, admits them, and drains on stop.

Two listeners share one loop and one transport: the agencies' (the Lottery Bet
Protocol, each connection's handler a lottery session) and, when enabled, the
admin listener (HTTP GET for health, metrics and status, each connection's handler
an `AdminSession`). Each listener's connections form a `Pool` with its own limits,
so a crowd of one kind never takes the other's places.

Admission. A connection that has not yet sent its first message (an agency's
HELLO, an admin request) is *unidentified*; those have their own limit, well below
the pool's, and are kept in arrival order. When a new peer arrives at either
limit, the oldest unidentified connection makes room (an agency gets SERVER_BUSY,
then it is closed); only when every connection has identified itself is the
newcomer refused. Silent sockets can so never lock an agency out: an agency that
says HELLO keeps its place, and there is always room for one more to arrive.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl
from dataclasses import dataclass, field
from typing import Callable

from protocol import Error, ErrorCode, ProtocolError, encode
from runtime.logfmt import log_event

from .connection import Connection, is_fd_exhaustion
from .limits import ConnectionLimits, TurnBudget
from .loop import EventLoop
from .service import Lottery

log = logging.getLogger(__name__)

ACCEPT_PAUSE = 0.5  # seconds to stop accepting after EMFILE/ENFILE or an unexpected accept error
ACCEPTS_PER_TURN = 64  # a burst of connects is spread over turns (asyncio caps at its backlog too)
ADMIN_MAX_CONNECTIONS = 256  # one request each, then closed: a few scrapers and browsers at most
_BUSY_FRAME = encode(Error(ErrorCode.SERVER_BUSY, "the server is at its connection limit; retry later"))


@dataclass
class Pool:
    """The connections of one listener: how many may be open, which have not yet
    identified themselves (oldest first), and how each one is served."""

    name: str
    limits: ConnectionLimits
    max_connections: int
    max_unidentified: int
    new_handler: Callable[[Connection], object]
    new_decoder: Callable[[], object] | None = None  # None: the Lottery Bet Protocol's
    decode_error: type[Exception] = ProtocolError
    busy_frame: bytes = b""  # what a peer refused or evicted is told, when anything
    tls: ssl.SSLContext | None = None
    connections: set[Connection] = field(default_factory=set)
    unidentified: dict[Connection, None] = field(default_factory=dict)  # insertion order: oldest first
    accepted: int = 0
    refused: int = 0
    evicted: int = 0
    when_emptied: Callable[[], None] | None = None  # told when its last connection closes
    # What each connection calls back, bound once here: a closure per connection for
    # each would cost every idle peer about 400 bytes.
    on_closed: Callable[[Connection], None] = field(init=False)
    on_identified: Callable[[Connection], None] = field(init=False)

    def __post_init__(self) -> None:
        self.on_closed = self._closed
        self.on_identified = self._identified

    def _identified(self, connection: Connection) -> None:
        self.unidentified.pop(connection, None)

    def _closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self.unidentified.pop(connection, None)
        if not self.connections and self.when_emptied is not None:
            self.when_emptied()


class Listener:
    """Owns one listening socket: accepts in bursts, pauses on fd exhaustion or an
    unexpected error, and hands each socket to its server."""

    def __init__(self, loop: EventLoop, host: str, port: int, backlog: int,
                 on_accept: Callable[[socket.socket, str], None]) -> None:
        self.loop = loop
        self._on_accept = on_accept
        self._closed = False
        # The host picks the address family: --host ::1 listens on IPv6, 0.0.0.0 on IPv4.
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self.sock = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=False)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        loop.register(self.sock, selectors.EVENT_READ, self)

    def on_readable(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):  # until BlockingIOError, or the rest next turn
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if is_fd_exhaustion(error):
                    self._pause(error.strerror)
                    return
                raise  # the loop logs it and calls fault(): accepting pauses
            self._on_accept(sock, f"{address[0]}:{address[1]}")

    def fault(self, error: BaseException) -> None:
        """An unexpected error while accepting (the loop logged it): pause, then go on."""
        self._pause(f"fault ({type(error).__name__})")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.loop.selector.get_map().get(self.sock.fileno()) is not None:
            self.loop.unregister(self.sock)
        self.sock.close()

    def _pause(self, reason: str) -> None:
        if self._closed or self.loop.selector.get_map().get(self.sock.fileno()) is None:
            return
        log_event(log, logging.WARNING, "accept", "in_progress", port=self.port, paused_s=ACCEPT_PAUSE,
                  reason=reason)
        self.loop.unregister(self.sock)
        self.loop.call_later(ACCEPT_PAUSE, self._resume)

    def _resume(self) -> None:
        if not self._closed:
            self.loop.register(self.sock, selectors.EVENT_READ, self)


class Server:
    """Owns the listeners and their pools of live connections, and the turn's read
    budget; drains the agencies' connections on stop."""

    def __init__(
        self,
        loop: EventLoop,
        lottery: Lottery,
        host: str,
        port: int,
        limits: ConnectionLimits,
        max_connections: int,
        drain_timeout: float,
        tls: ssl.SSLContext | None = None,
        backlog: int = 4096,  # the kernel caps it at net.core.somaxconn
        max_unidentified: int | None = None,
    ) -> None:
        self.loop = loop
        self.lottery = lottery
        self.drain_timeout = drain_timeout
        self.budget = TurnBudget()
        self.agencies = Pool(
            "agency", limits, max_connections,
            # Well below the limit, so that silent peers cannot crowd it, yet never so few
            # that agencies connecting at once evict each other before they say HELLO.
            max_unidentified or min(max_connections, max(16, max_connections // 4)),
            new_handler=lottery.new_session, busy_frame=_BUSY_FRAME, tls=tls, when_emptied=self._agencies_emptied,
        )
        self.admin: Pool | None = None
        self.admin_port: int | None = None
        self._draining = False
        self._listener = Listener(loop, host, port, backlog, lambda sock, peer: self._accepted(self.agencies, sock,
                                                                                               peer))
        self.port = self._listener.port
        self._admin_listener: Listener | None = None
        log_event(log, logging.INFO, "accept_connections", "in_progress", port=self.port)

    def open_admin(self, host: str, port: int, limits: ConnectionLimits, new_handler, new_decoder,
                   decode_error: type[Exception]) -> None:
        """Listens for the admin side on its own port, served by the same loop."""
        self.admin = Pool("admin", limits, ADMIN_MAX_CONNECTIONS, ADMIN_MAX_CONNECTIONS // 2, new_handler,
                          new_decoder, decode_error)
        self._admin_listener = Listener(self.loop, host, port, 128,
                                        lambda sock, peer: self._accepted(self.admin, sock, peer))
        self.admin_port = self._admin_listener.port
        log_event(log, logging.INFO, "accept_admin_connections", "in_progress", port=self.admin_port)

    @property
    def connections(self) -> set[Connection]:
        """The agencies' live connections."""
        return self.agencies.connections

    @property
    def accepted(self) -> int:
        return self.agencies.accepted

    @property
    def draining(self) -> bool:
        return self._draining

    # --- accepting -------------------------------------------------------------------
    def _accepted(self, pool: Pool, sock: socket.socket, peer: str) -> None:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._make_room(pool):
                self._refuse(pool, sock, peer)
                return
            if pool.tls is not None:
                sock = pool.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as error:  # the peer is gone already (a reset before accept, ...): nothing to serve
            log_event(log, logging.DEBUG, "accept", "in_progress", peer=peer, gone=type(error).__name__)
            sock.close()
            return
        pool.accepted += 1
        connection = Connection(
            self.loop, sock, peer, pool.limits, pool.on_closed, self.budget, on_established=pool.on_identified,
            decoder=pool.new_decoder() if pool.new_decoder else None, decode_error=pool.decode_error,
        )
        pool.connections.add(connection)
        pool.unidentified[connection] = None
        connection.start(pool.new_handler(connection))
        log_event(log, logging.DEBUG, "accept", "success", peer=peer, listener=pool.name)

    def _make_room(self, pool: Pool) -> bool:
        """Room for one more: evicts the oldest unidentified connection at either limit;
        False when every connection has identified itself and the limit is reached."""
        if len(pool.unidentified) < pool.max_unidentified and len(pool.connections) < pool.max_connections:
            return True
        if not pool.unidentified:
            return False
        oldest = next(iter(pool.unidentified))
        pool.evicted += 1
        log_event(log, logging.DEBUG, "accept", "in_progress", peer=oldest.peer, evicted="true")
        if pool.busy_frame:
            oldest.write(pool.busy_frame)  # best effort: the peer has sent nothing, its buffer takes it
        oldest.abort("evicted: unidentified at the admission limit")
        return True

    def _refuse(self, pool: Pool, sock: socket.socket, peer: str) -> None:
        pool.refused += 1
        log_event(log, logging.DEBUG, "accept", "in_progress", peer=peer, busy="true")
        try:
            if pool.busy_frame and pool.tls is None:
                sock.send(pool.busy_frame)  # best effort: a fresh socket takes 17 bytes
        except OSError:
            pass
        sock.close()

    # --- stopping ----------------------------------------------------------------------
    def drain(self) -> None:
        """Stops accepting agencies, lets every session get its answers and SHUTTING_DOWN,
        then stops the loop; sessions still open after `drain_timeout` are aborted. The
        admin listener answers meanwhile (`/readyz` says the central is draining)."""
        if self._draining:
            return
        self._draining = True
        log_event(log, logging.INFO, "shutdown", "in_progress", connections=len(self.connections),
                  longest_turn_ms=f"{self.loop.longest_turn * 1000:.1f}")  # while serving, before the drain
        self._listener.close()
        log_event(log, logging.INFO, "close_listener", "success", port=self.port)
        self.lottery.shutdown()
        self.loop.call_later(self.drain_timeout, self._abort_all)
        if not self.connections:
            self.loop.stop()

    def close(self) -> None:
        """After the loop: the admin listener and its connections go too."""
        self._listener.close()
        if self._admin_listener is not None:
            self._admin_listener.close()
            for connection in list(self.admin.connections):
                connection.abort("the central stopped")

    def _agencies_emptied(self) -> None:
        if self._draining:
            self.loop.stop()  # drained: the last session got its answers

    def _abort_all(self) -> None:
        for connection in list(self.connections):
            connection.abort("drain timeout")
        self.loop.stop()
