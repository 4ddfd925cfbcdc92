"""The admin listener's protocol: one HTTP request, one response, then close.

An `AdminSession` is the handler of one admin connection, as a lottery session is
of an agency connection: the same `Connection` carries it, with a `RequestReader`
(reactor.http) as its decoder. It answers GET and HEAD:

    /livez        200 "ok" whenever the loop turns (this very answer proves it)
    /readyz       200 "ready", or 503 "not ready: <reason>" (one line)
    /metrics      the Prometheus text format 0.0.4
    /status.json  the status document (schema in reactor.status)
    /             the status page (reactor.status_page)

Another method is 405 with `Allow: GET, HEAD`, another path 404, a request the
reader refuses gets the reader's status (400, 413, 431, 505). A connection whose
deadline passes before its request is complete gets 408 and is closed: the answer
tells a slow client why, and costs nothing since the connection closes anyway. The
figures come from a `StatusSource`; the admin side never touches the store.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Protocol

from runtime.logfmt import log_event

from .http import HttpError, Request, error_response, response
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .status_page import CONTENT_SECURITY_POLICY, render_page

log = logging.getLogger(__name__)

ALLOWED_METHODS = ("GET", "HEAD")
_TEXT = "text/plain; charset=utf-8"


class StatusSource(Protocol):
    """What the admin side reads from the running central; each call is a scrape."""

    def ready(self) -> tuple[bool, str]:
        """(True, "") when the central accepts agencies and its store can commit,
        else (False, one line saying why)."""
        ...

    def status(self) -> dict:
        """The status document (reactor.status.build_status with live figures)."""
        ...

    def metrics(self) -> str:
        """The metrics in the text format 0.0.4 (e.g. CentralMetrics.render())."""
        ...


class AdminConnection(Protocol):
    """What a session needs of its transport (reactor.connection.Connection)."""

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


def _livez(source: StatusSource) -> tuple[int, bytes, str, tuple]:
    return 200, b"ok\n", _TEXT, ()


def _readyz(source: StatusSource) -> tuple[int, bytes, str, tuple]:
    ready, reason = source.ready()
    if ready:
        return 200, b"ready\n", _TEXT, ()
    one_line = " ".join(str(reason).split()) or "unknown reason"
    return 503, f"not ready: {one_line}\n".encode(), _TEXT, ()


def _metrics(source: StatusSource) -> tuple[int, bytes, str, tuple]:
    return 200, source.metrics().encode(), METRICS_CONTENT_TYPE, ()


def _status_json(source: StatusSource) -> tuple[int, bytes, str, tuple]:
    return 200, (json.dumps(source.status()) + "\n").encode(), "application/json", ()


def _page(source: StatusSource) -> tuple[int, bytes, str, tuple]:
    page = render_page(source.status()).encode()
    return 200, page, "text/html; charset=utf-8", (("Content-Security-Policy", CONTENT_SECURITY_POLICY),)


ROUTES: dict[str, Callable[[StatusSource], tuple[int, bytes, str, tuple]]] = {
    "/livez": _livez,
    "/readyz": _readyz,
    "/metrics": _metrics,
    "/status.json": _status_json,
    "/": _page,
}


def answer(request: Request, source: StatusSource, date: float | None = None) -> tuple[int, bytes]:
    """The status and the whole response to one request."""
    head_only = request.method == "HEAD"
    if request.method not in ALLOWED_METHODS:
        status, body, content_type, headers = 405, b"only GET and HEAD are served\n", _TEXT, (("Allow", "GET, HEAD"),)
    elif request.path not in ROUTES:
        status, body, content_type, headers = 404, b"no such page\n", _TEXT, ()
    else:
        try:
            status, body, content_type, headers = ROUTES[request.path](source)
        except Exception as error:  # a fault behind one page ends that answer, not the connection or the loop
            log_event(
                log, logging.ERROR, "admin_request", "fail",
                path=request.path, error=f"{error.__class__.__name__}: {error}",
            )
            status, body, content_type, headers = 500, b"the central could not build this page\n", _TEXT, ()
    return status, response(status, body, content_type, head_only, headers=headers, date=date)


class AdminSession:
    """One admin connection: reads one request, writes its response, closes.

    `connection` is the transport (write, close); `source` gives the figures;
    `clock` gives wall time for the Date header (time.time; tests pass a fixed one).
    """

    __slots__ = ("_connection", "_source", "_clock", "_answered")

    def __init__(
        self, connection: AdminConnection, source: StatusSource, clock: Callable[[], float] = time.time
    ) -> None:
        self._connection = connection
        self._source = source
        self._clock = clock
        self._answered = False

    def message_received(self, request: Request) -> None:
        if self._answered:
            return  # a pipelined request: this connection answers one and closes
        status, data = answer(request, self._source, self._clock())
        # The reader let only visible ASCII into the method and the target: safe in a log line.
        log_event(
            log, logging.DEBUG, "admin_request", "success",
            method=request.method[:16], path=request.path[:64], status=status,
        )
        self._finish(data)

    def protocol_error(self, error: HttpError) -> None:
        log_event(log, logging.DEBUG, "admin_request", "success", status=error.status, refused=error.reason)
        self._finish(error_response(error, self._clock()))

    def eof_received(self) -> None:
        self._finish(b"")  # closed before a request: nothing to answer

    def timed_out(self, what: str) -> None:
        self._finish(error_response(HttpError(408, f"the request did not arrive in time ({what})"), self._clock()))

    def connection_lost(self, reason: str) -> None:
        self._answered = True
        self._connection = None  # no cycle left between the session and its transport

    def _finish(self, data: bytes) -> None:
        if self._answered:
            return
        self._answered = True
        if data:
            self._connection.write(data)
        self._connection.close()

