"""The listening side: accepts peers, enforces the connection limit, and drains on stop.

Wires each accepted socket to a `Connection` (the transport) and a session of the
lottery (its handler). Owns the set of live connections, which is what the
connection limit counts and what a drain waits for.
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

ACCEPT_PAUSE = 0.5  # seconds to stop accepting after EMFILE/ENFILE
ACCEPTS_PER_TURN = 64  # a burst of connects is spread over turns (asyncio caps at its backlog too)
_BUSY_FRAME = encode(Error(ErrorCode.SERVER_BUSY, "the server is at its connection limit; retry later"))


class Server:
    """Owns the listening socket and the live connections; drains them on stop."""

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
    ) -> None:
        self.loop = loop
        self.lottery = lottery
        self.limits = limits
        self.max_connections = max_connections
        self.drain_timeout = drain_timeout
        self.tls = tls
        self.connections: set[Connection] = set()
        self.accepted = 0
        self.refused_busy = 0
        self._draining = False
        # The host picks the address family: --host ::1 listens on IPv6, 0.0.0.0 on IPv4.
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self._listener = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=False)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        loop.register(self._listener, selectors.EVENT_READ, self)
        self._budget = TurnBudget()
        loop.add_end_of_turn_hook(lottery.end_of_turn)
        loop.add_end_of_turn_hook(self._plan_next_turn)
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
                    self._pause_accepting(error)
                    return
                raise
            self._accepted(sock, f"{address[0]}:{address[1]}")

    def _accepted(self, sock: socket.socket, peer: str) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if len(self.connections) >= self.max_connections:
            self.refused_busy += 1
            log_event(log, logging.DEBUG, "accept", "in_progress", peer=peer, busy="true")
            try:
                if self.tls is None:
                    sock.send(_BUSY_FRAME)  # best effort: a fresh socket takes 17 bytes
            except OSError:
                pass
            sock.close()
            return
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.accepted += 1
        connection = Connection(self.loop, sock, peer, self.limits, self._connection_closed, self._budget)
        self.connections.add(connection)
        connection.start(self.lottery.new_session(connection))
        log_event(log, logging.DEBUG, "accept", "success", peer=peer)

    def _pause_accepting(self, error: OSError) -> None:
        log_event(log, logging.WARNING, "accept", "in_progress", paused_s=ACCEPT_PAUSE, reason=error.strerror)
        self.loop.unregister(self._listener)
        self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self._draining:
            self.loop.register(self._listener, selectors.EVENT_READ, self)

    def _plan_next_turn(self) -> None:
        store = self.lottery.store
        if store.checkpoint_due:
            self._budget.remaining = 0  # the next turn reads nothing: it checkpoints
            self.loop.call_soon(store.checkpoint)
        else:
            self._budget.reset()

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
        if self._draining and not self.connections:
            self.loop.stop()  # drained: the last session got its answers

    def _abort_all(self) -> None:
        for connection in list(self.connections):
            connection.abort("drain timeout")
        self.loop.stop()
