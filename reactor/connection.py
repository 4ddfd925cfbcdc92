"""One peer's transport: its socket, receive decoder, send buffer and deadlines.

Theory of operation (after asyncio's `_SelectorSocketTransport`, with h11's states).

Lifecycle. A connection is in one `State` at a time, and `_TRANSITIONS` lists every
move it may make; any other move is a bug and raises `IllegalTransition`:

    OPEN ──> INPUT_ENDED ──> CLOSING ──> LINGERING ──> CLOSED
      │            │            ▲  │                     ▲
      └────────────┼────────────┘  └─────────────────────┤
                   └─────────── abort, or the peer gone ─┘

- OPEN: reading and writing. Reading may be *paused* (`Pause`) without leaving
  OPEN: FLOW while more than `high_water` bytes wait to be sent (resumes below
  `low_water`), HOLD while the handler asks (a WINNERS_QUERY waiting for the draw).
  Messages already decoded are not handed over while paused, so a held connection
  really reads nothing more.
- INPUT_ENDED: nothing more will be read (the peer half-closed, broke the protocol,
  or a deadline passed); answers may still be written.
- CLOSING: `close()` was called: the send buffer is flushing (aborted if it has not
  drained within `linger`).
- LINGERING: FIN sent; what the peer still sends is read and thrown away until it
  closes too (or 2 s pass), so a last ERROR is not destroyed by a reset.
- CLOSED: the socket is closed and the handler told (`connection_lost`).

TLS runs beside the lifecycle: `_tls` says whether the handshake waits to read or
to write, or a read and a write wait on each other (`TlsStep`).

Input: the socket is read (RECV_SIZE at a time, within the turn's `TurnBudget` of
bytes and messages) into the decoder, and decoded messages go one at a time to the
handler. A connection the budget cut off is *owed*: the loop offers it the first
read of the next turn.

Output: `write()` tries `send` at once; what the kernel does not take waits in a
queue (the unsent tail as a memoryview) and EVENT_WRITE is watched only while that
queue is not empty.

Deadlines (`next_deadline`): one lazily re-armed timer covers three rules: the first
message must arrive within `handshake_timeout`; a frame once started must finish
within `frame_timeout` (counted only while we read: bytes we do not read are ours to
wait on); and without progress (a message in, or bytes out) for `idle_timeout` the
peer is idle, except while the handler holds it. An expiry goes to the handler as
`timed_out()`.

Faults: an exception in this connection's work reaches the loop, which calls
`fault()`: the connection aborts, and only it.
"""

from __future__ import annotations

import enum
import errno
import selectors
import socket
import ssl
from typing import Callable, Protocol

from protocol import NEED_DATA, PEER_CLOSED, SUPPORTED_VERSIONS, FrameDecoder, Message, ProtocolError, Role

from .limits import ConnectionLimits, TurnBudget, next_deadline

MAX_VERSION = max(SUPPORTED_VERSIONS)  # HELLO versions 1..this are served, each in its own words

# A read takes a couple of BETS frames: with the turn's budget shared out a read at a
# time, one turn serves several agencies instead of one agency's whole window.
RECV_SIZE = 16 * 1024
LINGER_MAX = 2.0  # seconds a lingering close waits for the peer's FIN
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


class State(enum.Enum):
    OPEN = "open"
    INPUT_ENDED = "input ended"
    CLOSING = "closing"
    LINGERING = "lingering"
    CLOSED = "closed"


_TRANSITIONS: dict[State, frozenset[State]] = {
    State.OPEN: frozenset({State.INPUT_ENDED, State.CLOSING, State.CLOSED}),
    State.INPUT_ENDED: frozenset({State.CLOSING, State.CLOSED}),
    State.CLOSING: frozenset({State.LINGERING, State.CLOSED}),
    State.LINGERING: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A move the lifecycle table does not allow: a bug in the caller."""


class Pause(enum.Flag):
    """Why an OPEN connection reads nothing for now."""

    NONE = 0
    FLOW = enum.auto()  # the peer does not read our answers fast enough
    HOLD = enum.auto()  # the handler asked (a held query)


class TlsStep(enum.Enum):
    """Where TLS stands beside the lifecycle (READY for a plain socket)."""

    READY = "ready"
    HANDSHAKE_READ = "handshake waits to read"
    HANDSHAKE_WRITE = "handshake waits to write"
    STALLED = "a read waits to write or a write waits to read"


class Handler(Protocol):
    """What a connection tells the layer above it (the lottery session)."""

    def message_received(self, message: Message) -> None: ...
    def protocol_error(self, error: Exception) -> None: ...  # the decoder's error (ProtocolError)
    def eof_received(self) -> None: ...
    def timed_out(self, what: str) -> None: ...
    def connection_lost(self, reason: str) -> None: ...


class Connection:
    """Owns one peer's socket, its lifecycle state, its receive decoder, its send queue,
    its deadlines and its way of ending. Knows frames, not lotteries."""

    __slots__ = (
        "loop", "sock", "peer", "limits", "handler", "_budget", "_on_closed", "_on_established", "_decoder",
        "_decode_error",
        "_out", "_out_size", "_state", "_paused", "_tls", "_identified", "_owed", "_interest", "_last_progress",
        "_frame_started", "_deadline_timer", "_linger_timer",
    )

    def __init__(
        self,
        loop,
        sock: socket.socket,
        peer: str,
        limits: ConnectionLimits,
        on_closed: Callable[["Connection"], None],
        budget: TurnBudget,
        on_established: Callable[["Connection"], None] | None = None,
        decoder=None,
        decode_error: type[Exception] = ProtocolError,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.peer = peer
        self.limits = limits
        self.handler: Handler | None = None
        self._budget = budget
        self._on_closed = on_closed
        self._on_established = on_established  # told when the first message arrives
        # The protocol behind this transport: the Lottery Bet Protocol's frames by
        # default, or another decoder of the same shape (the admin side's HTTP reader).
        self._decoder = decoder if decoder is not None else FrameDecoder(Role.SERVER, version=MAX_VERSION)
        self._decode_error = decode_error
        self._out: list[memoryview | bytes] = []  # a list: an empty deque costs ~600 bytes a peer
        self._out_size = 0
        self._state = State.OPEN
        self._paused = Pause.NONE
        self._tls = TlsStep.HANDSHAKE_READ if isinstance(sock, ssl.SSLSocket) else TlsStep.READY
        self._identified = False  # a first message arrived
        self._owed = False  # decoded messages wait for the next turn's budget
        self._interest = 0
        self._last_progress = loop.time()
        self._frame_started: float | None = None
        self._deadline_timer = None
        self._linger_timer = None

    def start(self, handler: Handler) -> None:
        self.handler = handler
        self._update_interest()
        self._refresh_deadline()

    # --- what the handler calls -----------------------------------------------------
    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    def write(self, data: bytes) -> None:
        """Queues `data` to send; the one path to the send buffer, so the mark is checked here."""
        if self._state is State.CLOSED or not data:
            return
        if not self._out and self._tls is TlsStep.READY:
            try:
                sent = self._send(data)
            except OSError as error:  # ssl.SSLError included; a reset is an ordinary close
                self._finish(f"peer gone while sending ({error.__class__.__name__})")
                return
            if sent:
                self._last_progress = self.loop.time()
                self._budget.sent += sent
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > self.limits.high_water:
            self._pause(Pause.FLOW)
        self._update_interest()

    def hold_reading(self) -> None:
        """Reads nothing more (buffered messages included) until `release_reading()`."""
        self._pause(Pause.HOLD)
        self._update_interest()
        self._refresh_deadline()

    def release_reading(self) -> None:
        if Pause.HOLD in self._paused:
            self._last_progress = self.loop.time()  # held is not idle: the idle clock starts again
            self._resume(Pause.HOLD)

    def close(self) -> None:
        """Stops reading, sends what is queued, then closes."""
        if self._state not in (State.OPEN, State.INPUT_ENDED):
            return
        self._move(State.CLOSING)
        if not self._out:
            self._close_gracefully()
            return
        self._linger_timer = self.loop.call_later(self.limits.linger, self.abort, "send did not drain before close")
        self._update_interest()

    def abort(self, reason: str = "aborted by the server") -> None:
        """Closes now, dropping whatever was not sent."""
        self._finish(reason)

    def fault(self, error: BaseException) -> None:
        """An unexpected exception in this connection's work (the loop isolated it):
        this connection ends now, and only it."""
        self._finish(f"fault ({type(error).__name__})")

    # --- what the loop calls ---------------------------------------------------------
    def on_readable(self) -> bool | None:
        """Reads what the turn's budget allows; False when it ran out first (owed)."""
        if self._state is State.LINGERING:
            self._discard_input()
            return None
        if self._tls in (TlsStep.HANDSHAKE_READ, TlsStep.HANDSHAKE_WRITE):
            self._continue_tls_handshake()
            return None
        if self._tls is TlsStep.STALLED:  # a TLS write waited for the peer's bytes: retry it first
            self.on_writable()
            if self._state is State.CLOSED:
                return None
        if self._owed:  # what was decoded before goes first, and nothing more is read until it went
            self._deliver()
            if self._owed:
                return False
        if not self._reading():
            return None
        if self._budget.remaining <= 0:
            return False
        try:
            data = self._recv(min(RECV_SIZE, self._budget.remaining))
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return None
        except ssl.SSLWantWriteError:
            self._tls = TlsStep.STALLED
            self._update_interest()
            return None
        except OSError as error:  # ssl.SSLError included
            self._finish(f"peer gone while reading ({error.__class__.__name__})")
            return None
        if data:
            self._budget.remaining -= len(data)
            self._budget.received += len(data)
        else:
            self._end_input()
        try:
            self._decoder.receive_data(data)
        except self._decode_error as error:
            self._protocol_error(error)
            return None
        self._deliver()
        return None

    def on_writable(self) -> None:
        if self._tls in (TlsStep.HANDSHAKE_READ, TlsStep.HANDSHAKE_WRITE):
            self._continue_tls_handshake()
            return
        if self._tls is TlsStep.STALLED:
            self._tls = TlsStep.READY
        while self._out:
            head = self._out[0]
            if len(self._out) > 1 and len(head) < 65536:
                head = b"".join(self._out)  # coalesce many small frames into one send
                self._out.clear()
                self._out.append(head)
            try:
                sent = self._send(head)
            except OSError as error:
                self._finish(f"peer gone while sending ({error.__class__.__name__})")
                return
            if sent:
                self._last_progress = self.loop.time()
                self._budget.sent += sent
            self._out_size -= sent
            if sent == len(head):
                del self._out[0]
            else:
                self._out[0] = memoryview(head)[sent:]
                break
        if Pause.FLOW in self._paused and self._out_size <= self.limits.low_water:
            self._resume(Pause.FLOW)
        if self._state is State.CLOSING and not self._out:
            self._close_gracefully()
            return
        self._update_interest()

    # --- the lifecycle -----------------------------------------------------------------
    def _move(self, new: State) -> None:
        if new not in _TRANSITIONS[self._state]:
            raise IllegalTransition(f"connection {self.peer}: {self._state.value} -> {new.value}")
        self._state = new

    def _end_input(self) -> None:
        """Nothing more will be read (EOF, a protocol error, a deadline): input ends once."""
        if self._state is State.OPEN:
            self._move(State.INPUT_ENDED)
        self._update_interest()

    def _reading(self) -> bool:
        return self._state is State.OPEN and not self._paused

    def _pause(self, why: Pause) -> None:
        self._paused |= why
        self._frame_started = None  # a frame we stop reading is not the peer's delay

    def _resume(self, why: Pause) -> None:
        self._paused &= ~why
        self._update_interest()
        self.loop.call_soon(self._deliver)

    # --- input --------------------------------------------------------------------------
    def _deliver(self) -> None:
        """Hands buffered messages to the handler while nothing stops reading and the
        turn's budget lasts; what the budget did not cover is owed a read next turn."""
        self._owed = False
        budget = self._budget
        delivered = False
        while self._state in (State.OPEN, State.INPUT_ENDED) and not self._paused:
            if budget.frames <= 0:
                self._owed = True
                break
            try:
                message = self._decoder.next_message()
            except self._decode_error as error:
                self._protocol_error(error)
                return
            if message is NEED_DATA:
                break
            if message is PEER_CLOSED:
                self._end_input()
                self.handler.eof_received()
                break
            budget.frames -= 1
            if not self._identified:
                self._identified = True
                if self._on_established is not None:
                    self._on_established(self)
            self._last_progress = self.loop.time()
            delivered = True
            self.handler.message_received(message)
        # The frame clock times the frame now arriving: it starts when a read leaves
        # one unfinished, again after any whole frame (a steady stream is progress),
        # and it runs only while we read (bytes we leave unread are ours to wait on).
        if self._decoder.inside_frame and self._reading() and not self._owed:
            if self._frame_started is None or delivered:
                self._frame_started = self.loop.time()
        else:
            self._frame_started = None
        self._update_interest()
        self._refresh_deadline()
        if self._owed and self._state is not State.CLOSED:
            if self._interest & _READ:
                self.loop.read_next_turn(self.sock)
            else:  # input is over (EOF), so the selector will not report us: come back anyway
                self.loop.call_soon(self._deliver)

    def _protocol_error(self, error: Exception) -> None:
        self._end_input()
        self.handler.protocol_error(error)

    def _recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        if data and isinstance(self.sock, ssl.SSLSocket):
            # Bytes already decrypted inside the SSL object never wake the selector.
            chunks = [data]
            while self.sock.pending():
                chunks.append(self.sock.recv(self.sock.pending()))
            data = b"".join(chunks)
        return data

    def _send(self, data) -> int:
        """Bytes the kernel took; 0 when it takes none now (TLS may first need the peer's bytes)."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
            return 0
        except ssl.SSLWantReadError:
            self._tls = TlsStep.STALLED
            return 0

    def _continue_tls_handshake(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._tls = TlsStep.HANDSHAKE_READ
        except ssl.SSLWantWriteError:
            self._tls = TlsStep.HANDSHAKE_WRITE
        except OSError as error:  # ssl.SSLError included
            self._finish(f"TLS handshake failed ({error.__class__.__name__})")
            return
        else:
            self._tls = TlsStep.READY
            if self._out:
                self.on_writable()
                if self._state is State.CLOSED:
                    return
        self._update_interest()

    # --- interest and deadlines ---------------------------------------------------------------
    def _update_interest(self) -> None:
        """Watches what the state needs: read while reading (or lingering), write while
        output waits; the TLS handshake picks its own; a stalled TLS record both."""
        if self._state is State.CLOSED:
            return
        tls = self._tls
        if self._state is State.LINGERING:
            wanted = _READ
        elif tls is TlsStep.HANDSHAKE_READ:
            wanted = _READ
        elif tls is TlsStep.HANDSHAKE_WRITE:
            wanted = _WRITE
        elif tls is TlsStep.STALLED:
            wanted = _READ | _WRITE
        else:
            wanted = (_READ if self._reading() else 0) | (_WRITE if self._out else 0)
        if wanted == self._interest:
            return
        if not wanted:
            self.loop.unregister(self.sock)
        elif not self._interest:
            self.loop.register(self.sock, wanted, self)
        else:
            self.loop.modify(self.sock, wanted, self)
        self._interest = wanted

    def _deadline(self) -> tuple[float, str] | None:
        return next_deadline(self.limits, self._identified, self._last_progress, self._frame_started,
                             Pause.HOLD in self._paused)

    def _refresh_deadline(self) -> None:
        if self._state not in (State.OPEN, State.INPUT_ENDED):
            return
        deadline = self._deadline()
        timer = self._deadline_timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._deadline_timer = None
        elif timer is None or timer.when > deadline[0]:
            if timer is not None:
                timer.cancel()
            self._deadline_timer = self.loop.call_at(deadline[0], self._on_deadline)
        # An earlier timer that fires before the deadline simply re-arms itself.

    def _on_deadline(self) -> None:
        self._deadline_timer = None
        if self._state not in (State.OPEN, State.INPUT_ENDED):
            return
        deadline = self._deadline()
        if deadline is not None and deadline[0] <= self.loop.time():
            self._end_input()
            self.handler.timed_out(deadline[1])
        else:
            self._refresh_deadline()

    # --- ending --------------------------------------------------------------------------------
    def _close_gracefully(self) -> None:
        """FIN, then close once the peer closes too (or LINGER_MAX passes).

        Closing a socket whose receive queue holds unread bytes sends RST, and a RST
        can destroy the last reply (an ERROR) still on its way to the peer. So the
        write side is shut first and whatever the peer still sends is read and
        thrown away, as web servers' "lingering close" does.
        """
        if isinstance(self.sock, ssl.SSLSocket):
            self._finish("closed by the server")  # shutdown() would drop the TLS state
            return
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._finish("closed by the server")
            return
        self._move(State.LINGERING)
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._linger_timer = self.loop.call_later(min(self.limits.linger, LINGER_MAX), self._finish,
                                                  "closed by the server")
        self._update_interest()

    def _discard_input(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._finish("closed by the server")

    def _finish(self, reason: str) -> None:
        if self._state is State.CLOSED:
            return
        self._move(State.CLOSED)
        for timer in (self._deadline_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        if self._interest:
            self.loop.unregister(self.sock)
            self._interest = 0
        self._out.clear()
        self._out_size = 0
        try:
            self.sock.close()
        except OSError:
            pass
        self._on_closed(self)
        handler, self.handler = self.handler, None  # no cycle left: refcounting frees both at once
        if handler is not None:
            handler.connection_lost(reason)


def is_fd_exhaustion(error: OSError) -> bool:
    return error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
