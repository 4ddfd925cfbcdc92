"""One peer's transport: its socket, receive decoder, send buffer and deadlines.

Theory of operation (after asyncio's `_SelectorSocketTransport`).

Input: the socket is read (RECV_SIZE at a time) into a `FrameDecoder`, and
decoded messages go one at a time to the handler (the lottery session). Reading stops
while either of two reasons holds: *flow* (more than `high_water` bytes are
waiting to be sent; reading resumes below `low_water`) or *hold* (the handler asked
for it, e.g. while a WINNERS_QUERY waits for the draw). Messages already buffered
are not handed over while reading is stopped, so a held connection really reads
nothing more. A protocol violation stops input and goes to the handler, which
answers with an ERROR in order and then closes.

Output: `write()` tries `send` at once; what the kernel does not take waits in a
queue (the unsent tail as a memoryview) and EVENT_WRITE is watched only while that
queue is not empty.

Deadlines: one lazily re-armed timer per connection covers three rules: the first
frame must arrive within `handshake_timeout`; a frame once started must finish
within `frame_timeout`; and without progress (a frame in, or bytes out) for
`idle_timeout` the peer is idle, except while the handler holds it. An expiry goes
to the handler as `timed_out()`.

Ending: `close()` stops reading, flushes, then closes (aborting if the flush does
not finish within `linger`); `abort()` drops everything now. When the peer
half-closes, the handler is told (`eof_received`) after every message that
arrived before it, and decides when its answers are complete.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import ssl
from dataclasses import dataclass
from typing import Callable, Protocol

from protocol import NEED_DATA, PEER_CLOSED, FrameDecoder, Message, ProtocolError, Role

log = logging.getLogger(__name__)

# A read takes two BETS frames or so: with the turn's 64 KiB shared out 16 KiB at a
# time, a turn serves several agencies instead of one agency's whole window, which
# kept the scale scenario's ACK p99 near 0.6 s instead of 1.4 s (same throughput).
RECV_SIZE = 16 * 1024
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


@dataclass(frozen=True)
class ConnectionLimits:
    """Deadlines (seconds) and send-buffer water marks (bytes) of every connection."""

    handshake_timeout: float = 10.0
    idle_timeout: float = 60.0
    frame_timeout: float = 10.0
    linger: float = 5.0
    high_water: int = 64 * 1024
    low_water: int = 16 * 1024

    def __post_init__(self) -> None:
        # Below one frame a paused connection might never resume (python/asyncio#99).
        if self.high_water <= 8192 or not 0 <= self.low_water < self.high_water:
            raise ValueError("need 8192 < high_water and 0 <= low_water < high_water")


class TurnBudget:
    """What all connections together may take in one loop turn: bytes read (TLS may
    add the rest of a record it already decrypted) and messages handed over.

    Bounds a turn's work (decode, validate, stage, log, answer, commit) whatever the
    number of busy peers. Bytes alone do not: the same bytes cut into the smallest
    frames are a hundred times the messages. A connection that finds the budget
    spent is owed a read first in the next turn (the loop's declined readers). The
    server resets it at the end of every turn.
    """

    __slots__ = ("per_turn", "frames_per_turn", "remaining", "frames")

    def __init__(self, per_turn: int = 64 * 1024, frames_per_turn: int = 256) -> None:
        self.per_turn = per_turn
        self.frames_per_turn = frames_per_turn
        self.remaining = per_turn
        self.frames = frames_per_turn

    def reset(self) -> None:
        self.remaining = self.per_turn
        self.frames = self.frames_per_turn

    def spend_all(self) -> None:
        """Nothing more this turn (the next turn is the checkpoint's)."""
        self.remaining = self.frames = 0


class Handler(Protocol):
    """What a connection tells the layer above it (the lottery session)."""

    def message_received(self, message: Message) -> None: ...
    def protocol_error(self, error: ProtocolError) -> None: ...
    def eof_received(self) -> None: ...
    def timed_out(self, what: str) -> None: ...
    def connection_lost(self, reason: str) -> None: ...


class Connection:
    """Owns one peer's socket, its receive decoder, its send queue, its deadlines
    and its way of ending. Knows frames, not lotteries."""

    __slots__ = (
        "loop", "sock", "peer", "limits", "handler", "_budget", "_on_closed", "_decoder", "_out", "_out_size",
        "_paused_flow", "_paused_hold", "_input_done", "_closing", "_closed", "_interest", "_tls_handshaking",
        "_tls_wants_write", "_handshake_done", "_last_progress", "_frame_started", "_deadline_timer",
        "_linger_timer", "_discarding", "_owed", "_on_established",
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
    ) -> None:
        self.loop = loop
        self._budget = budget
        self.sock = sock
        self.peer = peer
        self.limits = limits
        self.handler: Handler | None = None
        self._on_closed = on_closed
        self._on_established = on_established  # told when the first message arrives
        self._decoder = FrameDecoder(Role.SERVER)
        self._out: list[memoryview | bytes] = []  # a list: an empty deque costs ~600 bytes a peer
        self._out_size = 0
        self._paused_flow = False
        self._paused_hold = False
        self._input_done = False  # EOF seen, protocol error, or closing
        self._closing = False
        self._closed = False
        self._interest = 0
        self._tls_handshaking = isinstance(sock, ssl.SSLSocket)
        self._tls_wants_write = False
        self._handshake_done = False
        self._last_progress = loop.time()
        self._frame_started: float | None = None
        self._deadline_timer = None
        self._linger_timer = None
        self._discarding = False  # FIN sent; reading only to throw away what still comes
        self._owed = False  # decoded messages wait for the next turn's budget

    def start(self, handler: Handler) -> None:
        self.handler = handler
        self._update_interest()
        self._refresh_deadline()

    # --- what the handler calls -----------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, data: bytes) -> None:
        """Queues `data` to send; the one path to the send buffer, so the mark is checked here."""
        if self._closed or not data:
            return
        if not self._out and not self._tls_handshaking:
            try:
                sent = self._send(data)
            except OSError as error:  # ssl.SSLError included; a reset is an ordinary close
                self._finish(f"peer gone while sending ({error.__class__.__name__})")
                return
            if sent:
                self._last_progress = self.loop.time()
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > self.limits.high_water:
            self._paused_flow = True
            self._frame_started = None  # a frame we stop reading is not the peer's delay
        self._update_interest()

    def hold_reading(self) -> None:
        """Reads nothing more (buffered messages included) until `release_reading()`."""
        self._paused_hold = True
        self._frame_started = None  # a frame we stop reading is not the peer's delay
        self._update_interest()
        self._refresh_deadline()

    def release_reading(self) -> None:
        if self._paused_hold:
            self._paused_hold = False
            self._update_interest()
            self.loop.call_soon(self._deliver)

    def close(self) -> None:
        """Stops reading, sends what is queued, then closes."""
        if self._closing or self._closed:
            return
        self._closing = True
        self._input_done = True
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
        if self._discarding:
            self._discard_input()
            return
        if self._tls_handshaking:
            self._continue_tls_handshake()
            return
        if self._tls_wants_write:  # a TLS write waited for the peer's bytes: retry it first
            self.on_writable()
            if self._closed:
                return
        if self._owed:  # what was decoded before goes first, and nothing more is read until it went
            self._deliver()
            if self._owed:
                return False
        if not self._reading():
            return
        if self._budget.remaining <= 0:
            return False  # declined: the loop offers this connection first next turn
        try:
            data = self._recv(min(RECV_SIZE, self._budget.remaining))
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except ssl.SSLWantWriteError:
            self._tls_wants_write = True
            self._update_interest()
            return
        except OSError as error:  # ssl.SSLError included
            self._finish(f"peer gone while reading ({error.__class__.__name__})")
            return
        if data:
            self._budget.remaining -= len(data)
        else:
            self._input_done = True
        try:
            self._decoder.receive_data(data)
        except ProtocolError as error:
            self._protocol_error(error)
            return
        self._deliver()

    def on_writable(self) -> None:
        if self._tls_handshaking:
            self._continue_tls_handshake()
            return
        self._tls_wants_write = False
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
            self._out_size -= sent
            if sent == len(head):
                del self._out[0]
            else:
                self._out[0] = memoryview(head)[sent:]
                break
        if self._paused_flow and self._out_size <= self.limits.low_water:
            self._paused_flow = False
            self.loop.call_soon(self._deliver)
        if self._closing and not self._out:
            self._close_gracefully()
            return
        self._update_interest()

    # --- inside --------------------------------------------------------------------
    def _deliver(self) -> None:
        """Hands buffered messages to the handler while nothing stops reading and the
        turn's budget lasts; what the budget did not cover is owed a read next turn."""
        self._owed = False
        budget = self._budget
        while not (self._closed or self._closing or self._paused_hold or self._paused_flow):
            if budget.frames <= 0:
                self._owed = True
                break
            try:
                message = self._decoder.next_message()
            except ProtocolError as error:
                self._protocol_error(error)
                return
            if message is NEED_DATA:
                break
            if message is PEER_CLOSED:
                self._input_done = True
                self._update_interest()
                self.handler.eof_received()
                break
            budget.frames -= 1
            if not self._handshake_done:
                self._handshake_done = True
                if self._on_established is not None:
                    self._on_established(self)
            self._last_progress = self.loop.time()
            self.handler.message_received(message)
        # The frame clock runs only while we read: paused, buffered bytes are ours to wait on.
        if self._decoder.inside_frame and self._reading() and not self._owed:
            if self._frame_started is None:
                self._frame_started = self.loop.time()
        else:
            self._frame_started = None
        self._update_interest()
        self._refresh_deadline()
        if self._owed and not self._closed:
            if self._interest & _READ:
                self.loop.read_next_turn(self.sock)
            else:  # input is over (EOF), so the selector will not report us: come back anyway
                self.loop.call_soon(self._deliver)

    def _protocol_error(self, error: ProtocolError) -> None:
        self._input_done = True
        self._update_interest()
        self.handler.protocol_error(error)

    def _recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        if isinstance(self.sock, ssl.SSLSocket) and data:
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
            self._tls_wants_write = True
            return 0

    def _continue_tls_handshake(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._tls_wants_write = False
        except ssl.SSLWantWriteError:
            self._tls_wants_write = True
        except OSError as error:  # ssl.SSLError included
            self._finish(f"TLS handshake failed ({error.__class__.__name__})")
            return
        else:
            self._tls_handshaking = False
            self._tls_wants_write = False
            if self._out:
                self.on_writable()
                if self._closed:
                    return
        self._update_interest()

    def _reading(self) -> bool:
        return not (self._input_done or self._paused_flow or self._paused_hold)

    def _update_interest(self) -> None:
        if self._closed:
            return
        if self._discarding:
            wanted = _READ
        elif self._tls_handshaking:
            wanted = _WRITE if self._tls_wants_write else _READ
        else:
            wanted = (_READ if self._reading() or self._tls_wants_write else 0) | (
                _WRITE if self._out or self._tls_wants_write else 0
            )
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
        limits = self.limits
        candidates = []
        if not self._handshake_done:
            candidates.append((self._last_progress + limits.handshake_timeout, "handshake"))
        if self._frame_started is not None:
            candidates.append((self._frame_started + limits.frame_timeout, "frame"))
        if self._handshake_done and not self._paused_hold:
            candidates.append((self._last_progress + limits.idle_timeout, "idle"))
        return min(candidates) if candidates else None

    def _refresh_deadline(self) -> None:
        if self._closed or self._closing:
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
        if self._closed or self._closing:
            return
        deadline = self._deadline()
        if deadline is not None and deadline[0] <= self.loop.time():
            self._input_done = True
            self._update_interest()
            self.handler.timed_out(deadline[1])
        else:
            self._refresh_deadline()

    def _close_gracefully(self) -> None:
        """FIN, then close once the peer closes too (or `linger` passes).

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
        self._discarding = True
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._linger_timer = self.loop.call_later(min(self.limits.linger, 2.0), self._finish, "closed by the server")
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
        if self._closed:
            return
        self._closed = True
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
