"""The listening side: accepts peers, admits them, and drains on stop.

Wires each accepted socket to a `Connection` (the transport) and a session of the
lottery (its handler). Owns the set of live connections, which is what the
connection limit counts and what a drain waits for.

Admission. A connection that has not yet sent its first message (HELLO) is
*unidentified*; those have their own limit, well below the connection limit, and
are kept in arrival order. When a new peer arrives at either limit, the oldest
unidentified connection makes room (SERVER_BUSY, then closed); only when every
connection has identified itself is the newcomer refused. Silent sockets can so
never lock an agency out: an agency that says HELLO keeps its place, and there is
always room for one more to arrive.
"""

from __future__ import annotations

import logging
import selectors
import socket
import ssl

from protocol import Error, ErrorCode, encode
from runtime.logfmt import log_event

from .connection import Connection, ConnectionLimits, TurnBudget, is_fd_exhaustion
from .loop import EventLoop
from .service import Lottery

log = logging.getLogger(__name__)

ACCEPT_PAUSE = 0.5  # seconds to stop accepting after EMFILE/ENFILE or an unexpected accept error
ACCEPTS_PER_TURN = 64  # a burst of connects is spread over turns (asyncio caps at its backlog too)
_BUSY_FRAME = encode(Error(ErrorCode.SERVER_BUSY, "the server is at its connection limit; retry later"))


class Server:
    """Owns the listening socket, the live connections, the unidentified ones in
    arrival order, and the turn's read budget; drains them on stop."""

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
        self.limits = limits
        self.max_connections = max_connections
        self.max_unidentified = max_unidentified or max(1, max_connections // 4)
        self.drain_timeout = drain_timeout
        self.tls = tls
        self.connections: set[Connection] = set()
        self.unidentified: dict[Connection, None] = {}  # insertion order: the oldest first
        self.accepted = 0
        self.refused_busy = 0
        self.evicted = 0
        self._draining = False
        # The host picks the address family: --host ::1 listens on IPv6, 0.0.0.0 on IPv4.
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self._listener = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=False)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        loop.register(self._listener, selectors.EVENT_READ, self)
        self.budget = TurnBudget()
        log_event(log, logging.INFO, "accept_connections", "in_progress", port=self.port)

    # --- accepting -------------------------------------------------------------------
    def on_readable(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):  # until BlockingIOError, or the rest next turn
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                if is_fd_exhaustion(error):
                    self._pause_accepting(error.strerror)
                    return
                raise  # the loop logs it and calls fault(): accepting pauses
            self._accepted(sock, f"{address[0]}:{address[1]}")

    def fault(self, error: BaseException) -> None:
        """An unexpected error while accepting (the loop logged it): pause, then go on."""
        self._pause_accepting(f"fault ({type(error).__name__})")

    def _accepted(self, sock: socket.socket, peer: str) -> None:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._make_room():
                self._refuse(sock, peer)
                return
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as error:  # the peer is gone already (a reset before accept, ...): nothing to serve
            log_event(log, logging.DEBUG, "accept", "in_progress", peer=peer, gone=type(error).__name__)
            sock.close()
            return
        self.accepted += 1
        connection = Connection(self.loop, sock, peer, self.limits, self._connection_closed, self.budget,
                                on_established=self._identified)
        self.connections.add(connection)
        self.unidentified[connection] = None
        connection.start(self.lottery.new_session(connection))
        log_event(log, logging.DEBUG, "accept", "success", peer=peer)

    def _make_room(self) -> bool:
        """Room for one more: evicts the oldest unidentified connection at either limit;
        False when every connection has identified itself and the limit is reached."""
        if len(self.unidentified) < self.max_unidentified and len(self.connections) < self.max_connections:
            return True
        if not self.unidentified:
            return False
        oldest = next(iter(self.unidentified))
        self.evicted += 1
        log_event(log, logging.DEBUG, "accept", "in_progress", peer=oldest.peer, evicted="true")
        oldest.write(_BUSY_FRAME)  # best effort: the peer has sent nothing, its buffer takes 17 bytes
        oldest.abort("evicted: unidentified at the admission limit")
        return True

    def _refuse(self, sock: socket.socket, peer: str) -> None:
        self.refused_busy += 1
        log_event(log, logging.DEBUG, "accept", "in_progress", peer=peer, busy="true")
        try:
            if self.tls is None:
                sock.send(_BUSY_FRAME)  # best effort: a fresh socket takes 17 bytes
        except OSError:
            pass
        sock.close()

    def _identified(self, connection: Connection) -> None:
        self.unidentified.pop(connection, None)

    def _pause_accepting(self, reason: str) -> None:
        if self._draining or self.loop.selector.get_map().get(self._listener.fileno()) is None:
            return
        log_event(log, logging.WARNING, "accept", "in_progress", paused_s=ACCEPT_PAUSE, reason=reason)
        self.loop.unregister(self._listener)
        self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self._draining:
            self.loop.register(self._listener, selectors.EVENT_READ, self)

    # --- stopping ----------------------------------------------------------------------
    def drain(self) -> None:
        """Stops accepting, lets every session get its answers and SHUTTING_DOWN, then stops
        the loop; connections still open after `drain_timeout` are aborted."""
        if self._draining:
            return
        self._draining = True
        log_event(log, logging.INFO, "shutdown", "in_progress", connections=len(self.connections),
                  longest_turn_ms=f"{self.loop.longest_turn * 1000:.1f}")  # while serving, before the drain
        if self.loop.selector.get_map().get(self._listener.fileno()) is not None:
            self.loop.unregister(self._listener)
        self._listener.close()
        log_event(log, logging.INFO, "close_listener", "success", port=self.port)
        self.lottery.shutdown()
        self.loop.call_later(self.drain_timeout, self._abort_all)
        if not self.connections:
            self.loop.stop()

    def _connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self.unidentified.pop(connection, None)
        if self._draining and not self.connections:
            self.loop.stop()  # drained: the last session got its answers

    def _abort_all(self) -> None:
        for connection in list(self.connections):
            connection.abort("drain timeout")
        self.loop.stop()
