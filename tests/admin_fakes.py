"""In-process stand-ins for the admin side's tests: a transport, a status source, the
delivery loop a `Connection` runs, and a strict reader of HTTP responses."""

from __future__ import annotations

import http.client
import io

from protocol import NEED_DATA, PEER_CLOSED
from reactor.admin import AdminSession
from reactor.http import HttpError, RequestReader
from reactor.status import DrawFigures, LiveFigures, build_status

FIXED_DATE = 1_700_000_000.0  # the Date header's clock in tests: no wall clock


class FakeConnection:
    """Records what a session writes, and that it closed; writing after close is a bug."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.sent += data

    def close(self) -> None:
        self.closed = True


class FakeSource:
    """A StatusSource with figures set by the test; counts its calls."""

    def __init__(self, ready=(True, ""), status: dict | None = None, metrics: str = "# no metrics\n") -> None:
        self._ready = ready
        self._status = status if status is not None else sample_status()
        self._metrics = metrics
        self.calls: list[str] = []

    def ready(self) -> tuple[bool, str]:
        self.calls.append("ready")
        return self._ready

    def status(self) -> dict:
        self.calls.append("status")
        return self._status

    def metrics(self) -> str:
        self.calls.append("metrics")
        return self._metrics


def sample_status(**changes) -> dict:
    figures = dict(
        version="0.1.0",
        expected=3,
        committed={1: 1500, 2: 300},
        done={1},
        draw=DrawFigures(),
        live=LiveFigures(connected={2}, connections=1, bets_per_second=250.0, uptime_s=12.0),
    )
    figures.update(changes)
    return build_status(**figures)


def deliver(reader: RequestReader, session: AdminSession, connection, data: bytes) -> None:
    """What `Connection` does with bytes from its peer (`b""`: the peer closed): feed
    the reader, then hand messages to the handler until it needs data or closes."""
    try:
        reader.receive_data(data)
    except HttpError as error:
        session.protocol_error(error)
        return
    while not connection.closed:
        try:
            message = reader.next_message()
        except HttpError as error:
            session.protocol_error(error)
            return
        if message is NEED_DATA:
            return
        if message is PEER_CLOSED:
            session.eof_received()
            return
        session.message_received(message)


def drive(chunks, source=None, eof: bool = True) -> FakeConnection:
    """Feeds `chunks` (then EOF) to a fresh admin session; returns its transport."""
    connection = FakeConnection()
    session = AdminSession(connection, source or FakeSource(), clock=lambda: FIXED_DATE)
    reader = RequestReader()
    for chunk in chunks:
        if chunk and not connection.closed:
            deliver(reader, session, connection, chunk)
    if eof and not connection.closed:
        deliver(reader, session, connection, b"")
    return connection


class ParsedResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _BytesSocket:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode):
        return io.BytesIO(self._data)


def parse_response(data: bytes, method: str = "GET") -> ParsedResponse:
    """Parses one response with the standard library's client (an independent
    parser), and checks that it is exactly one response: its Content-Length covers
    the body to the last byte (none for HEAD)."""
    reply = http.client.HTTPResponse(_BytesSocket(bytes(data)), method=method)
    reply.begin()
    body = reply.read()
    headers = {name.lower(): value for name, value in reply.getheaders()}
    head, separator, rest = bytes(data).partition(b"\r\n\r\n")
    assert separator, "no end of head"
    assert head.startswith(b"HTTP/1.1 "), head[:20]
    assert headers["connection"] == "close"
    assert headers["cache-control"] == "no-store"
    assert rest == (b"" if method == "HEAD" else body)
    if method != "HEAD":
        assert int(headers["content-length"]) == len(body)
    return ParsedResponse(reply.status, headers, body)
