"""The admin listener's HTTP side, in process: the request reader, the responses, and
the session's answers, fed whole, split at every point, and from hypothesis."""

from __future__ import annotations

import json
import logging
import re
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import NEED_DATA, PEER_CLOSED
from reactor.admin import ROUTES, AdminSession
from reactor.http import MAX_HEAD_SIZE, HttpError, Request, RequestReader, error_response, response
from reactor.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tests.admin_fakes import FIXED_DATE, FakeConnection, FakeSource, drive, parse_response

GET_METRICS = b"GET /metrics HTTP/1.1\r\nHost: central:12346\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n"


def read_all(data: bytes, chunks: list[bytes] | None = None) -> list:
    """Every outcome of feeding `data` (in `chunks` when given), then EOF."""
    reader = RequestReader()
    outcomes = []
    pieces = [chunk for chunk in (chunks if chunks is not None else [data]) if chunk]
    for chunk in pieces + [b""]:  # then EOF
        reader.receive_data(chunk)
        while True:
            outcome = reader.next_message()
            outcomes.append(outcome)
            if outcome is NEED_DATA or outcome is PEER_CLOSED:
                break
    return [outcome for outcome in outcomes if outcome is not NEED_DATA]


def refusal(data: bytes) -> HttpError:
    with pytest.raises(HttpError) as caught:
        read_all(data)
    return caught.value


# --- the reader -----------------------------------------------------------------------

def test_a_request_head_is_read_with_its_headers_in_order():
    request, closed = read_all(GET_METRICS)
    assert request == Request(
        "GET", "/metrics", "/metrics", "HTTP/1.1",
        (("host", "central:12346"), ("user-agent", "test"), ("accept", "*/*")),
    )
    assert request.header("HOST") == "central:12346"
    assert request.header("x-missing") is None
    assert closed is PEER_CLOSED


def test_the_same_request_split_at_every_point_and_byte_by_byte():
    for cut in range(len(GET_METRICS) + 1):
        assert read_all(GET_METRICS, [GET_METRICS[:cut], GET_METRICS[cut:]])[0].path == "/metrics"
    assert read_all(GET_METRICS, [bytes([b]) for b in GET_METRICS])[0].path == "/metrics"


def test_inside_frame_while_part_of_a_head_has_arrived():
    reader = RequestReader()
    assert not reader.inside_frame
    reader.receive_data(GET_METRICS[:10])
    assert reader.inside_frame and reader.next_message() is NEED_DATA
    reader.receive_data(GET_METRICS[10:])
    assert reader.next_message().path == "/metrics"
    assert not reader.inside_frame


def test_bytes_after_a_head_are_kept_for_the_next_request():
    second = b"HEAD /livez HTTP/1.0\r\n\r\n"
    first, then, closed = read_all(GET_METRICS + second)
    assert (first.method, then.method, then.path, then.version) == ("GET", "HEAD", "/livez", "HTTP/1.0")
    assert closed is PEER_CLOSED


@pytest.mark.parametrize(
    "data, path, version",
    [
        (b"GET /status.json?fresh=1 HTTP/1.1\r\nHost: x\r\n\r\n", "/status.json", "HTTP/1.1"),
        (b"GET / HTTP/1.0\r\n\r\n", "/", "HTTP/1.0"),  # HTTP/1.0 needs no Host
        (b"GET /livez HTTP/1.1\nHost: x\n\n", "/livez", "HTTP/1.1"),  # lone LF line ends (RFC 9112 2.2)
        (b"\r\n\r\nGET /livez HTTP/1.1\r\nHost: x\r\n\r\n", "/livez", "HTTP/1.1"),  # empty lines first
        (b"GET http://central:12346/readyz?x HTTP/1.1\r\nHost: y\r\n\r\n", "/readyz", "HTTP/1.1"),  # absolute-form
        (b"GET HTTP://central HTTP/1.1\r\nHost: y\r\n\r\n", "/", "HTTP/1.1"),
        (b"GET / HTTP/1.9\r\nHost: x\r\n\r\n", "/", "HTTP/1.1"),  # a later 1.x minor is served as 1.1
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "/", "HTTP/1.1"),
        (b"GET / HTTP/1.1\r\nHost:x\r\nX-Empty:\r\nX-Pad: \t a b \t\r\n\r\n", "/", "HTTP/1.1"),
    ],
)
def test_accepted_forms(data, path, version):
    request = read_all(data)[0]
    assert (request.path, request.version) == (path, version)


def test_optional_whitespace_is_not_part_of_a_value():
    request = read_all(b"GET / HTTP/1.1\r\nHost:x\r\nX-Pad: \t a b \t\r\nX-Empty:\r\n\r\n")[0]
    assert request.headers == (("host", "x"), ("x-pad", "a b"), ("x-empty", ""))


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # two spaces
        (b"GET /\r\n\r\n", 400),  # HTTP/0.9
        (b"GET / HTTP/1\r\nHost: x\r\n\r\n", 400),
        (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # not a token
        (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # not ASCII
        (b"GET metrics HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # neither a path nor absolute-form
        (b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),  # whitespace before the colon (RFC 9112 5.1)
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", 400),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A 1\r\n\r\n", 400),  # no colon
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),  # bare CR
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 413),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", 400),  # the peer closed inside the head
    ],
)
def test_refused_requests(data, status):
    assert refusal(data).status == status


def test_an_error_is_sticky():
    reader = RequestReader()
    reader.receive_data(b"BAD\r\n\r\n")
    with pytest.raises(HttpError) as first:
        reader.next_message()
    for call in (reader.next_message, lambda: reader.receive_data(GET_METRICS)):
        with pytest.raises(HttpError) as again:
            call()
        assert again.value is first.value


def test_a_head_of_exactly_the_limit_is_read():
    prefix = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "
    head = prefix + b"a" * (MAX_HEAD_SIZE - len(prefix) - 4) + b"\r\n\r\n"
    assert len(head) == MAX_HEAD_SIZE
    assert read_all(head)[0].header("x-pad") == "a" * (MAX_HEAD_SIZE - len(prefix) - 4)


def test_a_head_one_byte_over_the_limit_is_431():
    prefix = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "
    head = prefix + b"a" * (MAX_HEAD_SIZE - len(prefix) - 3) + b"\r\n\r\n"
    assert refusal(head).status == 431


def test_431_is_decided_as_soon_as_the_buffer_passes_the_limit():
    """No end of head within the limit: refused in receive_data, without waiting for more."""
    reader = RequestReader()
    reader.receive_data(b"GET /" + b"a" * (MAX_HEAD_SIZE - 6))
    assert reader.next_message() is NEED_DATA  # 8191 bytes: the end may still fit
    with pytest.raises(HttpError) as caught:
        reader.receive_data(b"a")
    assert caught.value.status == 431


def test_blank_lines_alone_then_eof_are_no_request():
    assert read_all(b"\r\n\n") == [PEER_CLOSED]
    assert read_all(b"") == [PEER_CLOSED]


@given(st.binary(max_size=3 * MAX_HEAD_SIZE), st.lists(st.integers(0, 3 * MAX_HEAD_SIZE), max_size=6))
def test_arbitrary_bytes_give_requests_or_one_http_error(data, cuts):
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:])]
    try:
        outcomes = read_all(data, chunks)
    except HttpError as error:
        assert error.status in (400, 413, 431, 505)
    else:
        assert outcomes[-1] is PEER_CLOSED
        assert all(isinstance(outcome, Request) for outcome in outcomes[:-1])


# --- requests as a client writes them ---------------------------------------------------

_TOKEN_CHARS = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~")
_VALUE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
_extra_headers = st.lists(
    st.tuples(st.text(_TOKEN_CHARS, min_size=1, max_size=20), st.text(_VALUE_CHARS, max_size=40)), max_size=5
).map(lambda pairs: [(name, value) for name, value in pairs if name.lower() not in ("host", "content-length", "transfer-encoding")])


@st.composite
def valid_requests(draw):
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "BREW"]))
    path = draw(st.sampled_from([*ROUTES, "/nope", "/metrics/", "/favicon.ico"]))
    query = draw(st.sampled_from(["", "?x=1"]))
    lines = [f"{method} {path}{query} HTTP/1.1", "Host: 127.0.0.1:12346"]
    lines += [f"{name}: {value}" for name, value in draw(_extra_headers)]
    end = draw(st.sampled_from(["\r\n", "\n"]))
    return method, path, (end.join(lines) + end + end).encode()


def expected_status(method: str, path: str, source: FakeSource) -> int:
    if method not in ("GET", "HEAD"):
        return 405
    if path not in ROUTES:
        return 404
    return 503 if path == "/readyz" and not source._ready[0] else 200


@given(valid_requests(), st.lists(st.integers(0, 400), max_size=5), st.booleans(), st.binary(max_size=40))
def test_any_chunking_of_a_valid_request_gets_its_right_answer(request, cuts, ready, trailing):
    method, path, data = request
    data += trailing  # a pipelined or stray tail changes nothing: one request, one answer
    source = FakeSource(ready=(True, "") if ready else (False, "draining"))
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    connection = drive([data[a:b] for a, b in zip(points, points[1:])], source)
    assert connection.closed
    reply = parse_response(connection.sent, method="HEAD" if method == "HEAD" else "GET")
    assert reply.status == expected_status(method, path, source)


@given(st.binary(max_size=2 * MAX_HEAD_SIZE), st.lists(st.integers(0, 2 * MAX_HEAD_SIZE), max_size=6))
def test_arbitrary_bytes_get_a_well_formed_answer_or_none(data, cuts):
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    connection = drive([data[a:b] for a, b in zip(points, points[1:])])
    assert connection.closed
    if not connection.sent:
        assert re.fullmatch(rb"(?:\r?\n)*", data)  # nothing but empty lines, then EOF
        return
    reply = parse_response(connection.sent, method="HEAD" if re.match(rb"(?:\r?\n)*HEAD ", data) else "GET")
    assert reply.status in (200, 400, 404, 405, 413, 431, 505)


@given(valid_requests(), st.integers(0, 400))
def test_without_eof_a_partial_request_waits_and_a_whole_one_is_answered(request, cut):
    method, path, data = request
    connection = drive([data[:cut]], eof=False)
    if cut < len(data):
        assert (connection.sent, connection.closed) == (b"", False)
    else:
        assert connection.closed and parse_response(connection.sent, "HEAD" if method == "HEAD" else "GET")


# --- responses ------------------------------------------------------------------------

def test_a_response_has_its_length_and_closes():
    data = response(200, b"ok\n", "text/plain; charset=utf-8", date=FIXED_DATE)
    reply = parse_response(data)
    assert (reply.status, reply.body) == (200, b"ok\n")
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert reply.headers["date"] == formatdate(FIXED_DATE, usegmt=True)
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_a_head_response_has_the_get_headers_and_no_body():
    get = response(200, b"twelve bytes", "text/plain")
    head = response(200, b"twelve bytes", "text/plain", head_only=True)
    assert get == head + b"twelve bytes"
    assert b"Content-Length: 12\r\n" in head


def test_a_header_value_cannot_smuggle_a_line():
    with pytest.raises(ValueError):
        response(200, b"", "text/plain", headers=[("X-A", "a\r\nSet-Cookie: b")])


def test_an_error_response_says_its_reason():
    reply = parse_response(error_response(HttpError(431, "request head larger than 8192 bytes")))
    assert (reply.status, reply.body) == (431, b"request head larger than 8192 bytes\n")


# --- the session ------------------------------------------------------------------------

def ask(data: bytes, source: FakeSource | None = None, method: str = "GET"):
    connection = drive([data], source)
    assert connection.closed
    return parse_response(connection.sent, method)


def get(path: str, source: FakeSource | None = None, method: str = "GET"):
    return ask(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), source, method)


def test_livez():
    reply = get("/livez")
    assert (reply.status, reply.body) == (200, b"ok\n")
    assert reply.headers["date"] == formatdate(FIXED_DATE, usegmt=True)


def test_readyz_ready_and_not_ready_with_one_line():
    assert get("/readyz").status == 200
    reply = get("/readyz", FakeSource(ready=(False, "draining:\nSIGTERM received\r\n")))
    assert (reply.status, reply.body) == (503, b"not ready: draining: SIGTERM received\n")


def test_metrics_are_served_as_the_text_format():
    reply = get("/metrics", FakeSource(metrics="# HELP a b\n# TYPE a counter\na_total 1\n"))
    assert reply.headers["content-type"] == METRICS_CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert reply.body == b"# HELP a b\n# TYPE a counter\na_total 1\n"


def test_status_json_is_the_source_document():
    source = FakeSource()
    reply = get("/status.json", source)
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == source.status()


def test_the_page_is_html_with_its_policy():
    reply = get("/")
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in reply.headers["content-security-policy"]
    assert b'data-agency="1"' in reply.body


def test_head_sends_the_headers_of_get_without_a_body():
    for path in ROUTES:
        got, head = get(path), get(path, method="HEAD")
        assert head.status == got.status
        assert head.body == b""
        assert head.headers == got.headers


def test_another_method_is_405_with_allow():
    reply = ask(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"


def test_an_unknown_path_is_404_and_asks_the_source_nothing():
    source = FakeSource()
    assert get("/admin", source).status == 404
    assert get("/metrics/", source).status == 404
    assert source.calls == []


def test_a_failing_source_is_500_and_logged(caplog):
    class Broken(FakeSource):
        def metrics(self):
            raise RuntimeError("registry broke")

    with caplog.at_level(logging.ERROR):
        assert get("/metrics", Broken()).status == 500
    assert "action: admin_request | result: fail | path: /metrics | error: RuntimeError: registry broke" in caplog.text


def test_a_refused_request_gets_its_status():
    assert ask(b"GET / HTTP/3.0\r\nHost: x\r\n\r\n").status == 505
    assert ask(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEAD_SIZE).status == 431


def test_only_the_first_of_pipelined_requests_is_answered():
    connection = drive([GET_METRICS + b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert parse_response(connection.sent).status == 200  # exactly one response, nothing after it


def test_a_deadline_gets_408_then_close():
    connection = FakeConnection()
    session = AdminSession(connection, FakeSource(), clock=lambda: FIXED_DATE)
    session.timed_out("frame")
    assert connection.closed
    reply = parse_response(connection.sent)
    assert reply.status == 408
    session.eof_received()  # late events after the answer change nothing
    session.timed_out("idle")
    session.connection_lost("closed by the server")
    assert parse_response(connection.sent).status == 408


def test_eof_before_any_request_closes_without_a_word():
    connection = drive([])
    assert (connection.closed, connection.sent) == (True, bytearray())


def test_a_lost_connection_is_never_written_to():
    connection = FakeConnection()
    session = AdminSession(connection, FakeSource())
    session.connection_lost("peer gone while reading (ConnectionResetError)")
    session.timed_out("idle")
    session.protocol_error(HttpError(400, "malformed request line"))
    assert (connection.closed, connection.sent) == (False, bytearray())
