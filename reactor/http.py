"""Just enough HTTP/1.1 for the admin listener, without I/O: request heads in, responses out.

Theory of operation. A `RequestReader` owns the receive buffer of one admin
connection and has the `FrameDecoder` shape, so the same `Connection` carries it:
`receive_data(chunk)` appends bytes (`b""` means the peer closed), `next_message()`
hands back the next complete `Request`, `NEED_DATA` while a head is incomplete, or
`PEER_CLOSED` once the peer closed between requests, and `inside_frame` is True
while part of a head has arrived. Every violation raises `HttpError(status, reason)`;
the reader then stays broken and raises the same error on every later call, like
h11's ERROR state.

What is accepted (RFC 9112, strictly where it says MUST, no further):
- A request line `METHOD SP target SP HTTP/1.x`. The target is origin-form
  (`/path?query`) or absolute-form (`http://host/path`, which a server MUST accept,
  RFC 9112 section 3.2.2); anything else is 400. `HTTP/<major>.<minor>` with a
  major other than 1 is 505; an HTTP/1.x minor above 1 is served as 1.1 (RFC 9110
  section 2.5); a version that is not `HTTP/DIGIT.DIGIT` is 400.
- Header lines `name: value`; whitespace before the colon, a folded line
  (obs-fold), a control character or a bare CR are 400 (RFC 9112 sections 2.2,
  5.1, 5.2). An HTTP/1.1 request without exactly one Host is 400 (section 3.2).
- Lines may end in CRLF or a lone LF (section 2.2 lets a recipient accept LF);
  empty lines before the request line are skipped (section 2.2) but count against
  the head's limit.
- No bodies: the admin side only serves GET and HEAD. A Content-Length above 0 or
  any Transfer-Encoding is 413 (the largest body accepted is none); an unparsable
  or conflicting Content-Length is 400.
- A head (request line, headers, blank line) of more than `MAX_HEAD_SIZE` bytes is
  431, decided in `receive_data` as soon as the buffer holds that many bytes with
  no end of head in them, before another byte is waited for.

Bytes after a complete head stay buffered exactly (a pipelined request comes out of
the next `next_message()` call). The buffer is a bytearray consumed from the front,
so it holds at most one head plus what arrived after it.

`response()` builds a whole response: one request, one response, then the
connection closes, so every response says `Connection: close` and carries its
Content-Length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Iterable

from protocol import NEED_DATA, PEER_CLOSED

MAX_HEAD_SIZE = 8192

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"):(.*)")
_FORBIDDEN_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs except HTAB
_ABSOLUTE_FORM = re.compile(r"https?://[^/?#]+(.*)", re.IGNORECASE)
_LEADING_BLANK_LINES = re.compile(rb"(?:\r?\n)*")
_END_OF_HEAD = re.compile(rb"\n\r?\n")


class HttpError(Exception):
    """A request the admin listener refuses, as the peer should be told of it.

    `status` is the HTTP status to answer with, `reason` one line fit to send.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Request:
    """One request head. `headers` keeps the peer's order, names lower-cased;
    `path` is the target's path without its query (also for absolute-form)."""

    method: str
    target: str
    path: str
    version: str
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


class RequestReader:
    """Owns one admin connection's receive buffer and turns it into `Request`s."""

    __slots__ = ("_buffer", "_skipped", "_searched", "_closed", "_error")

    def __init__(self) -> None:
        self._buffer = bytearray()
        # Where the scan resumes, so bytes arriving one at a time cost linear time:
        self._skipped = 0  # buffer[:_skipped] is empty lines before the request line
        self._searched = 0  # the end of the head is not in buffer[:_searched]
        self._closed = False
        self._error: HttpError | None = None

    @property
    def inside_frame(self) -> bool:
        """True while part of a request head has arrived and the rest has not."""
        return bool(self._buffer)

    def receive_data(self, data: bytes) -> None:
        """Adds bytes from the peer; `b""` means the peer closed its side."""
        if self._error is not None:
            raise self._error
        if not data:
            self._closed = True
            return
        if self._closed:
            raise RuntimeError("receive_data after the peer closed")
        self._buffer += data
        self._find_end_of_head()

    def next_message(self):
        """The next complete `Request`, NEED_DATA, or PEER_CLOSED; raises HttpError."""
        if self._error is not None:
            raise self._error
        end = self._find_end_of_head()
        if end is not None:
            head = bytes(self._buffer[:end])
            del self._buffer[:end]
            self._skipped = self._searched = 0
            try:
                return _parse_head(head)
            except HttpError as error:
                self._fail(error)
        if self._closed:
            if _LEADING_BLANK_LINES.fullmatch(self._buffer):
                return PEER_CLOSED
            self._fail(HttpError(400, "connection closed in the middle of the request head"))
        return NEED_DATA

    def _find_end_of_head(self) -> int | None:
        """The offset just past the blank line ending the head; raises 431 past the limit."""
        buffer = self._buffer
        start = self._skipped = _LEADING_BLANK_LINES.match(buffer, self._skipped).end()
        found = _END_OF_HEAD.search(buffer, max(start, self._searched - 2))  # an end is 2 or 3 bytes
        if found is None:
            if len(buffer) >= MAX_HEAD_SIZE:  # any end still to come lies past the limit
                self._fail(HttpError(431, f"request head larger than {MAX_HEAD_SIZE} bytes"))
            self._searched = len(buffer)
            return None
        if found.end() > MAX_HEAD_SIZE:
            self._fail(HttpError(431, f"request head larger than {MAX_HEAD_SIZE} bytes"))
        return found.end()

    def _fail(self, error: HttpError) -> None:
        self._error = error
        self._buffer.clear()
        raise error


def _parse_head(head: bytes) -> Request:
    lines = _LEADING_BLANK_LINES.sub(b"", head, count=1).split(b"\n")
    del lines[-2:]  # the blank line ending the head, and what follows its LF
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if any(b"\r" in line for line in lines):
        raise HttpError(400, "bare CR in the request head")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        raise HttpError(400, "malformed request line")
    method, target, major, minor = request_line.groups()
    if major != b"1":
        raise HttpError(505, "only HTTP/1.x is served")
    headers = []
    for line in lines[1:]:
        header = _HEADER_LINE.fullmatch(line)
        if header is None:
            raise HttpError(400, "malformed header line")
        name, value = header.groups()
        value = value.strip(b" \t")  # optional whitespace around a value is not part of it
        if _FORBIDDEN_IN_VALUE.search(value):
            raise HttpError(400, "control character in a header value")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    version = f"HTTP/1.{min(int(minor), 1)}"
    _check_host(version, headers)
    _refuse_body(headers)
    target_text = target.decode("ascii")
    return Request(method.decode("ascii"), target_text, _path_of(target_text), version, tuple(headers))


def _path_of(target: str) -> str:
    if not target.startswith("/"):
        absolute = _ABSOLUTE_FORM.fullmatch(target)
        if absolute is None:
            raise HttpError(400, "request target is neither a path nor an absolute http URL")
        target = absolute.group(1)
    return target.split("?", 1)[0].split("#", 1)[0] or "/"


def _check_host(version: str, headers: list[tuple[str, str]]) -> None:
    hosts = sum(1 for name, _ in headers if name == "host")
    if hosts > 1 or (hosts == 0 and version == "HTTP/1.1"):
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")


def _refuse_body(headers: list[tuple[str, str]]) -> None:
    lengths = set()
    for name, value in headers:
        if name == "transfer-encoding":
            raise HttpError(413, "request bodies are not accepted")
        if name == "content-length":
            lengths.update(part.strip() for part in value.split(","))
    if not lengths:
        return
    if len(lengths) > 1 or not all(length.isascii() and length.isdigit() for length in lengths):
        raise HttpError(400, "invalid Content-Length")
    if int(lengths.pop()) > 0:
        raise HttpError(413, "request bodies are not accepted")


def response(
    status: int,
    body: bytes,
    content_type: str,
    head_only: bool = False,
    *,
    headers: Iterable[tuple[str, str]] = (),
    date: float | None = None,
) -> bytes:
    """A complete HTTP/1.1 response, closing the connection after it.

    `head_only` (a HEAD request) sends the headers a GET would get, without the
    body. `date` (seconds since the epoch) adds a Date header: an origin server
    with a clock sends one (RFC 9110 section 6.6.1). Nothing is cached: these are
    live figures.
    """
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
    ]
    if date is not None:
        lines.append(f"Date: {formatdate(date, usegmt=True)}")
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise ValueError(f"a header cannot hold a line break: {name!r}")
        lines.append(f"{name}: {value}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def error_response(error: HttpError, date: float | None = None) -> bytes:
    """The answer to a refused request: its status, and its reason as one line of text."""
    return response(error.status, f"{error.reason}\n".encode(), "text/plain; charset=utf-8", date=date)
