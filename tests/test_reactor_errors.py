"""Every error of PROTOCOL.md over real sockets: the exact code, then a close (fatal) or not."""

from __future__ import annotations

import struct
from datetime import date, timedelta

import pytest

import protocol as p
from tests.harness import BET, Peer, ServerProcess, bets_payload, raw_bet, raw_frame

E = p.ErrorCode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text("# agency=token\n1=one\n2=two\n3=three\n")
    with ServerProcess(tmp_path_factory.mktemp("db") / "bets.db", "--agencies", "3", "--tokens", str(tokens)) as s:
        yield s


def expect_error(peer: Peer, code: E, first: int = 0, fatal: bool | None = None) -> p.Error:
    error = peer.read()
    assert isinstance(error, p.Error), error
    assert (error.code, error.first) == (code, first), error
    assert error.message
    if fatal if fatal is not None else code.fatal:
        assert peer.closed(), "a fatal error must be followed by a close"
    return error


# --- before HELLO, and the frame itself ---------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">I", 0),
        struct.pack(">I", 8189),
        struct.pack(">I", 2**32 - 1),
        raw_frame(0x09, b""),  # unknown type
        raw_frame(0x81, struct.pack(">IB", 0, 0)),  # a server type
        raw_frame(0x03, b"x"),  # trailing bytes
        raw_frame(0x01, struct.pack(">HIH", 1, 1, 2) + b"\xc3\x28"),  # invalid UTF-8 token
        raw_frame(0x02, bets_payload(0, 1, raw_bet())),  # first = 0 (malformed even as a first frame)
        raw_frame(0x02, bets_payload(1, 0)),  # count = 0
    ],
    ids=["len0", "len8189", "len2^32-1", "unknown-type", "server-type", "trailing", "utf8", "first0", "count0"],
)
def test_malformed_frames_are_malformed_even_as_a_first_frame(server, data):
    expect_error(Peer(server.port).send(data), E.MALFORMED_FRAME)


def test_truncated_payload_then_half_close(server):
    peer = Peer(server.port)
    peer.send(raw_frame(0x01, struct.pack(">HIH", 1, 1, 3) + b"one")[:-2])
    peer.sock.shutdown(1)
    expect_error(peer, E.MALFORMED_FRAME)


def test_a_first_frame_other_than_hello(server):
    expect_error(Peer(server.port).send(p.Bets(1, (BET,))), E.HELLO_REQUIRED)
    expect_error(Peer(server.port).send(p.Done()), E.HELLO_REQUIRED)


def test_a_second_hello(server):
    peer = Peer(server.port)
    peer.hello(3, "three")
    expect_error(peer.send(p.Hello(3, "three")), E.HELLO_REQUIRED)


@pytest.mark.parametrize("version", [0, 3, 0xFFFF])
def test_a_version_it_does_not_speak_whatever_follows(server, version):
    hello = raw_frame(0x01, version.to_bytes(2, "big") + b"anything at all")
    expect_error(Peer(server.port).send(hello), E.UNSUPPORTED_VERSION)


@pytest.mark.parametrize("agency, token", [(0, "x"), (4, "x"), (1, ""), (1, "two"), (2, "two ")])
def test_unauthorized(server, agency, token):
    expect_error(Peer(server.port).send(p.Hello(agency, token)), E.UNAUTHORIZED)


def test_tokens_never_appear_in_logs(server):
    Peer(server.port).hello(2, "two")
    expect_error(Peer(server.port).send(p.Hello(1, "wrong-token-value")), E.UNAUTHORIZED)
    assert not any("wrong-token-value" in line or "=two" in line or ": two" in line for line in server.lines)


# --- within a session: non-fatal errors -------------------------------------------------------
TODAY = date.today()


@pytest.mark.parametrize(
    "bet, field",
    [
        (raw_bet(first_name=b"tab\there"), "first_name"),
        (raw_bet(last_name="c1\u0085".encode()), "last_name"),
        (raw_bet(first_name=b"a" * 65), "first_name"),
        (raw_bet(document=b"1234567a"), "document"),
        (raw_bet(document=b"1" * 17), "document"),
        (raw_bet(birthdate=b"2023-02-30"), "birthdate"),
        (raw_bet(birthdate=(TODAY + timedelta(days=2)).isoformat().encode()), "birthdate"),
        (raw_bet(number=10000), "number"),
    ],
)
def test_invalid_bets_store_nothing_and_the_session_goes_on(server, bet, field):
    peer = Peer(server.port)
    committed = peer.hello(1, "one").committed
    peer.send(raw_frame(0x02, bets_payload(committed + 1, 3, raw_bet(), raw_bet(), bet)))
    error = expect_error(peer, E.INVALID_BET, first=committed + 1, fatal=False)
    assert error.message.startswith(f"bet 2: {field}:")
    peer.send(p.Bets(committed + 1, (BET,)))  # the session goes on; nothing of the batch was stored
    assert peer.read() == p.Ack(committed + 1, 1)


def test_sequence_gap(server):
    peer = Peer(server.port)
    committed = peer.hello(1, "one").committed
    peer.send(p.Bets(committed + 2, (BET,)))
    expect_error(peer, E.SEQUENCE_GAP, first=committed + 2, fatal=False)
    peer.send(p.Bets(committed + 1, (BET,)))
    assert peer.read() == p.Ack(committed + 1, 1)


def test_not_done_then_agency_closed_then_a_resend_is_still_acknowledged(server):
    peer = Peer(server.port)
    committed = peer.hello(2, "two").committed
    peer.send(p.WinnersQuery())
    expect_error(peer, E.NOT_DONE, fatal=False)
    peer.send(p.Bets(committed + 1, (BET, BET)), p.Done(), p.Done())
    assert [peer.read() for _ in range(3)] == [p.Ack(committed + 1, 2), p.DoneAck(), p.DoneAck()]
    peer.send(p.Bets(committed + 3, (BET,)))
    expect_error(peer, E.AGENCY_CLOSED, first=committed + 3, fatal=False)
    peer.send(p.Bets(committed + 1, (BET, BET)))
    assert peer.read() == p.Ack(committed + 1, 2)
    peer.send(p.Bets(committed + 2, (BET, BET)))  # overlaps, and its new bet is after DONE
    expect_error(peer, E.AGENCY_CLOSED, first=committed + 2, fatal=False)


def test_errors_keep_their_place_among_pipelined_replies(server):
    peer = Peer(server.port)
    committed = peer.hello(3, "three").committed
    c = committed
    peer.send(p.Bets(c + 1, (BET,)), p.Bets(c + 5, (BET,)), p.Bets(c + 2, (BET,)), p.WinnersQuery())
    replies = [peer.read() for _ in range(4)]
    assert replies[0] == p.Ack(c + 1, 1)
    assert replies[1].code is E.SEQUENCE_GAP
    assert replies[2] == p.Ack(c + 2, 1)
    assert replies[3].code is E.NOT_DONE


def test_session_replaced(server):
    older = Peer(server.port)
    older.hello(1, "one")
    newer = Peer(server.port)
    newer.hello(1, "one")
    expect_error(older, E.SESSION_REPLACED)
    newer.send(p.WinnersQuery())
    assert newer.read().code is E.NOT_DONE  # the newer session is the agency's live one
