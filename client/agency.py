"""The agency: sends its bets to the central, says DONE, checks its receipt, and asks for its winners.

Theory of operation. One `Agency.run()` is a whole lottery for one agency:
1. connect (one TCP connection, TLS optional), HELLO in version 2 (PROTOCOL.md), read
   WELCOME's `committed` and digest(committed). A central that answers
   UNSUPPORTED_VERSION speaks only version 1: the agency says so in one line and
   opens a new connection with a version-1 HELLO, for the rest of the run;
2. in version 2, read the source from its start and hash its first `committed`
   bets while skipping them: a digest other than WELCOME's, or a source with fewer
   bets, means the central holds something other than this source's start (another
   agency's file, an edited row), and the run stops before sending anything
   (`FileMismatch`);
3. send the rest in batches cut by the protocol's packer, keeping up to `window`
   batches unacknowledged, hashing each batch's bets from the frame that carries
   them; every ACK must match the oldest batch in flight;
4. once every bet handed out is acknowledged, ask the source whether it ended
   where it should (`before_done`: a file stopped at an invalid row says no, after
   every bet before that row is stored);
5. DONE, and DONE_ACK: in version 2 it is the receipt, which must name this
   source's number of bets and their digest (`ReceiptMismatch` otherwise);
6. WINNERS_QUERY, and read WINNERS frames up to `final`.
A lost connection, a refused connect, or an error after which a new session may
succeed (`ErrorCode.retry_in_new_session`) starts the session again after a capped,
jittered exponential backoff: the new WELCOME says where to resume, so every bet is
sent and stored exactly once whatever batch size ran before. Two things are not
retried: a host name that does not resolve before any session succeeded (a wrong
address, not a lost session), and the wait for the draw past `winners_timeout`,
which counts from the first WINNERS_QUERY across sessions.

The socket is blocking with timeouts. The client never deadlocks with the server's
backpressure: at most `window` ACKs (11 bytes each) are ever unread, far below the
server's read-pause mark.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import time
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Iterator

from protocol import (
    BETS_FRAME_OVERHEAD,
    Ack,
    AgencyDigest,
    Bet,
    Bets,
    Done,
    DoneAck,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    ProtocolError,
    Role,
    Welcome,
    Winners,
    WinnersQuery,
    encode,
    pack_batches,
)
from runtime.logfmt import log_event

from .receipt import digest_bets
from .rows import BetFile

log = logging.getLogger(__name__)

PROGRESS_EVERY = 5.0  # seconds between progress lines


class SessionLost(Exception):
    """The session ended in a way a new session can recover from."""


class AgencyFailed(Exception):
    """The agency cannot finish: the server refused it, or every attempt failed."""


class ServerNotFound(AgencyFailed):
    """The central's host name does not resolve, and never did in this run."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot find the central's host {host!r}: {reason}")
        self.host = host


class NoDraw(AgencyFailed):
    """The draw did not happen within `winners_timeout` seconds of the first WINNERS_QUERY."""


class FileMismatch(AgencyFailed):
    """WELCOME's digest is not the digest of this source's first `committed` bets, or
    the source has fewer: the central holds bets of this agency that did not come from
    this file (another agency's file, a row edited since). Nothing was sent."""

    def __init__(self, agency: int, committed: int, found: int) -> None:
        if found < committed:
            differs = f"this file has only {found}"
        else:
            differs = f"they differ from this file's first {committed}"
        super().__init__(
            f"the central holds {committed} bets of agency {agency} and {differs}: this is not the file "
            f"agency {agency} sent, or it was edited since; nothing was sent"
        )
        self.agency = agency
        self.committed = committed
        self.found = found


class ReceiptMismatch(AgencyFailed):
    """DONE_ACK's receipt does not name this source's bets: the central says it holds
    another number of bets, or bets with another digest, than the agency sent."""

    def __init__(self, agency: int, sent: int, digest: bytes, held: int, held_digest: bytes) -> None:
        super().__init__(
            f"the receipt of agency {agency} does not match what it sent: the central holds {held} bets "
            f"(sha256 {held_digest.hex()}), this file has {sent} (sha256 {digest.hex()})"
        )
        self.agency = agency


class _NoAnswer(SessionLost):
    """A wait on the socket ran out."""


@dataclass
class AgencyConfig:
    """Everything one agency run needs; defaults are the CLI's."""

    agency: int
    host: str = "127.0.0.1"
    port: int = 12345
    max_amount: int = 150
    window: int = 8
    token: str = ""
    retries: int = 10  # new sessions after the first, before giving up
    connect_timeout: float = 5.0
    io_timeout: float = 30.0  # waiting for an ACK or DONE_ACK
    winners_timeout: float | None = None  # the whole wait for the draw; None: as long as it takes
    backoff_base: float = 0.2
    backoff_cap: float = 10.0
    tls: bool = False
    tls_ca: str | None = None
    server_name: str | None = None
    version: int = 2  # the HELLO version to start with; 1 never asks for receipts


@dataclass
class AgencyResult:
    """What one run did, each number counting one thing."""

    winners: list[str]
    stored_before: int  # the agency's bets the central held when this run began
    total: int  # the agency's bets the central holds at the end
    skipped: int  # invalid rows skipped (policy skip)
    ingest_seconds: float  # from the start to the last bet's ACK: the rate's time
    elapsed: float  # the whole run, the wait for the draw included
    sessions: int
    version: int = 2  # the protocol version the run ended in
    receipt: bytes | None = None  # digest(total) as DONE_ACK confirmed it; None in version 1

    @property
    def sent(self) -> int:
        """Bets this run added at the central (a resent batch adds none)."""
        return self.total - self.stored_before


@dataclass
class _Flight:
    first: int
    count: int
    sent_at: float


@dataclass
class _Progress:
    started: float = field(default_factory=time.monotonic)
    last_report: float = field(default_factory=time.monotonic)
    stored_before: int | None = None  # `committed` in this run's first WELCOME
    ingest_finished: float | None = None  # when the last bet's ACK came


class Agency:
    """Owns one agency's run: its bet source, its sessions, retries and progress.

    `bets(skip)` yields the agency's valid bets after the first `skip` (a BetFile's
    `bets`, or any generator for benchmarks); a version-2 session asks for them all
    (skip 0), to check the first `committed` against WELCOME's digest. `before_done()` runs once every bet
    handed out is acknowledged and may raise to stop before DONE (a BetFile's
    `check_complete`). `on_ack(first, count, latency)` is called for every ACK,
    e.g. to track acknowledged bets or ACK latency. `total_rows` is the size of the
    source that progress lines show.
    """

    def __init__(
        self,
        config: AgencyConfig,
        bets: Callable[[int], Iterator[Bet]],
        on_ack: Callable[[int, int, float], None] | None = None,
        total_rows: int | None = None,
        skipped: Callable[[], int] = lambda: 0,
        before_done: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self._bets = bets
        self._on_ack = on_ack
        self._total_rows = total_rows
        self._skipped = skipped
        self._before_done = before_done
        self._progress = _Progress()
        self._sock: socket.socket | None = None
        self._decoder: FrameDecoder | None = None
        self._committed = 0
        # Built once, here: a CA file that cannot be read is the caller's mistake to
        # report before any connection (OSError or ssl.SSLError), not a lost session.
        self._tls = ssl.create_default_context(cafile=config.tls_ca) if config.tls else None
        self._connected_once = False
        self._draw_deadline: float | None = None
        self._version = config.version
        self._receipt: bytes | None = None

    @classmethod
    def from_file(cls, config: AgencyConfig, bet_file: BetFile, **kwargs) -> "Agency":
        return cls(config, bet_file.bets, skipped=lambda: bet_file.skipped,
                   before_done=bet_file.check_complete, **kwargs)

    # --- the run -------------------------------------------------------------------
    def run(self) -> AgencyResult:
        attempt = 0
        while True:
            try:
                winners = self._session()
                break
            except SessionLost as lost:
                attempt += 1
                if attempt > self.config.retries:
                    log_event(log, logging.ERROR, "conexion", "fail", agency=self.config.agency,
                              attempts=attempt, reason=lost)
                    raise AgencyFailed(f"gave up after {attempt} attempts: {lost}") from None
                delay = min(self.config.backoff_cap, self.config.backoff_base * 2 ** (attempt - 1))
                delay = random.uniform(delay / 2, delay)  # jitter: agencies do not retry in step
                delay = min(delay, self._draw_time_left())  # the draw's wait is a total, retries included
                log_event(log, logging.INFO, "conexion", "in_progress", agency=self.config.agency,
                          attempt=attempt, retry_in_s=f"{delay:.2f}", reason=lost)
                time.sleep(delay)
            finally:
                self._close()
        progress = self._progress
        now = time.monotonic()
        result = AgencyResult(
            winners, progress.stored_before, self._committed, self._skipped(),
            ingest_seconds=progress.ingest_finished - progress.started, elapsed=now - progress.started,
            sessions=attempt + 1, version=self._version, receipt=self._receipt,
        )
        log_event(log, logging.INFO, "consulta_ganadores", "success", cant_ganadores=len(winners))
        return result

    def _session(self) -> list[str]:
        welcome = self._open_session()
        self._committed = welcome.committed
        if self._progress.stored_before is None:
            self._progress.stored_before = welcome.committed
        # Connected, and where this session resumes: the central holds bets 1..committed.
        log_event(log, logging.INFO, "sesion", "success", agency=self.config.agency,
                  server=f"{self.config.host}:{self.config.port}", version=self._version,
                  almacenadas=welcome.committed, reanuda_en=welcome.committed + 1)
        ours = self._send_bets(welcome)
        self._before_done()
        if self._progress.ingest_finished is None:
            self._progress.ingest_finished = time.monotonic()
        self._send(encode(Done()))
        done_ack = self._expect(DoneAck, self.config.io_timeout)
        if ours is not None:
            self._check_receipt(done_ack, ours)
        log_event(log, logging.INFO, "envio_terminado", "success", agency=self.config.agency,
                  almacenadas=self._committed)
        self._send(encode(WinnersQuery()))
        if self._draw_deadline is None and self.config.winners_timeout is not None:
            self._draw_deadline = time.monotonic() + self.config.winners_timeout
        documents: list[str] = []
        while True:
            try:
                frame = self._expect(Winners, self._draw_time_left(default=None))
            except _NoAnswer:
                # Only the draw's deadline bounds this wait, so running out means it passed.
                raise self._no_draw() from None
            documents.extend(frame.documents)
            if frame.final:
                return documents

    def _draw_time_left(self, default: float | None = float("inf")) -> float | None:
        """Seconds left of the wait for the draw (`default` when unbounded); NoDraw once none are."""
        if self._draw_deadline is None:
            return default
        left = self._draw_deadline - time.monotonic()
        if left <= 0:
            raise self._no_draw()
        return left

    def _no_draw(self) -> NoDraw:
        return NoDraw(f"no draw within {self.config.winners_timeout:g} s of asking for the winners; "
                      "the central draws once every agency is done (a rerun asks again)")

    def _send_bets(self, welcome: Welcome) -> AgencyDigest | None:
        """Sends the bets after WELCOME's `committed`; in version 2, first checks the
        ones before against WELCOME's digest, and returns the digest of them all."""
        committed = welcome.committed
        ours = None if welcome.digest is None else AgencyDigest()
        first = committed + 1
        in_flight: deque[_Flight] = deque()
        # The file closes here, whatever happens. In version 2 it is read from its start:
        # the bets before `committed` are hashed as they are skipped, which the reading
        # did anyway (rows are numbered by parsing them).
        with closing(self._bets(committed if ours is None else 0)) as bets:
            if ours is not None:
                found = digest_bets(ours, bets, committed)
                if found < committed or ours.digest() != welcome.digest:
                    raise FileMismatch(self.config.agency, committed, found)
            for batch in pack_batches(bets, self.config.max_amount):
                if len(in_flight) >= self.config.window:
                    self._acknowledge(in_flight.popleft())
                frame = encode(Bets(first, tuple(batch)))
                self._send(frame)
                if ours is not None:
                    # The frame's bets, exactly as encoded after `first` and `count`: hashed once, not encoded again.
                    ours.extend(memoryview(frame)[BETS_FRAME_OVERHEAD:], len(batch))
                log_event(log, logging.DEBUG, "apuesta_enviada", "success", cantidad=len(batch))
                in_flight.append(_Flight(first, len(batch), time.monotonic()))
                first += len(batch)
        while in_flight:
            self._acknowledge(in_flight.popleft())
        return ours

    def _check_receipt(self, done_ack: DoneAck, ours: AgencyDigest) -> None:
        """DONE_ACK of version 2 is the receipt: the central's count and digest must be this source's."""
        if (done_ack.committed, done_ack.digest) != (ours.n, ours.digest()):
            raise ReceiptMismatch(self.config.agency, ours.n, ours.digest(), done_ack.committed, done_ack.digest)
        self._receipt = done_ack.digest

    def _acknowledge(self, flight: _Flight) -> None:
        ack = self._expect(Ack, self.config.io_timeout)
        if (ack.first, ack.count) != (flight.first, flight.count):
            raise AgencyFailed(f"ACK({ack.first}, {ack.count}) does not match batch ({flight.first}, {flight.count})")
        new = flight.first + flight.count - 1 - self._committed
        if new > 0:
            self._committed += new
        if self._on_ack is not None:
            self._on_ack(flight.first, flight.count, time.monotonic() - flight.sent_at)
        self._report_progress()

    def _report_progress(self) -> None:
        progress = self._progress
        now = time.monotonic()
        if now - progress.last_report < PROGRESS_EVERY:
            return
        progress.last_report = now
        fields = {"agency": self.config.agency, "almacenadas": self._committed}
        if self._total_rows is not None:
            fields["filas"] = self._total_rows
        stored_now = self._committed - progress.stored_before
        fields["apuestas_por_segundo"] = round(stored_now / max(now - progress.started, 1e-9))
        log_event(log, logging.INFO, "progreso", "in_progress", **fields)

    # --- the wire ------------------------------------------------------------------
    def _connect(self) -> None:
        config = self.config
        try:
            sock = socket.create_connection((config.host, config.port), timeout=config.connect_timeout)
        except socket.gaierror as error:
            # A name that never resolved is a wrong address: retrying it only delays
            # saying so. Once a session has worked, or while the resolver itself is
            # failing (EAI_AGAIN), it is a passing fault like any lost session.
            if not self._connected_once and error.errno != socket.EAI_AGAIN:
                raise ServerNotFound(config.host, error.strerror) from None
            raise SessionLost(f"connect to {config.host}:{config.port} failed: {error.strerror}") from None
        except OSError as error:
            raise SessionLost(f"connect to {config.host}:{config.port} failed: {error}") from None
        self._connected_once = True
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=config.server_name or config.host)
            except (OSError, ssl.SSLError) as error:
                sock.close()
                if isinstance(error, ssl.SSLCertVerificationError):
                    raise AgencyFailed(f"TLS: {error.verify_message}") from None
                raise SessionLost(f"TLS handshake failed: {error}") from None
        self._sock = sock
        self._decoder = FrameDecoder(Role.CLIENT, version=self._version)
        log_event(log, logging.DEBUG, "connect", "success", server=f"{config.host}:{config.port}")
        self._send(encode(Hello(agency=config.agency, token=config.token, version=self._version)))

    def _open_session(self) -> Welcome:
        """Connects, says HELLO and returns WELCOME. A central that does not speak the
        version asked for answers UNSUPPORTED_VERSION and closes (PROTOCOL.md version 2):
        then a new connection asks in version 1, and so does the rest of the run."""
        self._connect()
        answer = self._next_message(self.config.io_timeout)
        if self._version > 1 and isinstance(answer, Error) and answer.code is ErrorCode.UNSUPPORTED_VERSION:
            log_event(log, logging.INFO, "version_protocolo", "success", agency=self.config.agency, version=1,
                      reason=f"the central does not speak version {self._version}: no receipts in this run")
            self._version = 1
            self._close()
            self._connect()
            answer = self._next_message(self.config.io_timeout)
        return self._accept(Welcome, answer)

    def _send(self, data: bytes) -> None:
        try:
            self._sock.settimeout(self.config.io_timeout)
            self._sock.sendall(data)
        except OSError as error:
            raise SessionLost(f"connection lost while sending: {error}") from None

    def _expect(self, kind: type, timeout: float | None):
        """The next server message, which must be a `kind`; errors become exceptions."""
        return self._accept(kind, self._next_message(timeout))

    def _accept(self, kind: type, message):
        """`message` if it is a `kind`; an ERROR is a lost session when a new one may
        succeed (the protocol's rule, `ErrorCode.retry_in_new_session`), else the end."""
        if isinstance(message, kind):
            return message
        if isinstance(message, Error):
            code = message.code
            where = f" (batch {message.first})" if message.first else ""
            text = f"server answered {getattr(code, 'name', code)}{where}: {message.message}"
            if getattr(code, "retry_in_new_session", False):  # a code from a later version is never retried
                raise SessionLost(text)
            raise AgencyFailed(text)
        raise AgencyFailed(f"expected {kind.__name__}, server sent {message!r}")

    def _next_message(self, timeout: float | None):
        decoder = self._decoder
        try:
            while (message := next(decoder.messages(), None)) is None:
                if decoder.peer_closed:
                    raise SessionLost("the server closed the connection")
                self._sock.settimeout(timeout)
                data = self._sock.recv(65536)
                if not data and decoder.inside_frame:
                    # A central killed while sending: a crash to resume from, not a broken protocol.
                    raise SessionLost("the server closed the connection in the middle of a frame")
                decoder.receive_data(data)
            return message
        except ProtocolError as error:
            raise AgencyFailed(f"the server broke the protocol: {error}") from None
        except socket.timeout:
            raise _NoAnswer(f"no answer within {timeout:g} s") from None
        except OSError as error:
            raise SessionLost(f"connection lost: {error}") from None

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None
                log_event(log, logging.INFO, "close_socket", "success", agency=self.config.agency)
