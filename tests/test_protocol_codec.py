"""The codec: round trips, any chunking, and every malformed shape the decoder must refuse."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol as p
from tests.strategies import client_messages, server_messages

U32_MAX = 0xFFFF_FFFF

ACCENTED = p.Bet("José María", "Núñez Ñandú", "30904465", "1999-03-17", 2201)
FOUR_BYTE = p.Bet("𝔄𝔤𝔲𝔰𝔱𝔦𝔫 😀", "Lorca 🎲", "0", "1900-01-01", 0)
EDGE = p.Bet("a", "b", "1234567890123456", "2024-02-29", 0xFFFF)

CLIENT_EXAMPLES = [
    p.Hello(agency=1, token=""),
    p.Hello(agency=0, token="s3cr3t-ñ-😀"),
    p.Hello(agency=U32_MAX, token="t"),
    p.Bets(first=1, bets=(ACCENTED,)),
    p.Bets(first=U32_MAX, bets=(ACCENTED, FOUR_BYTE, EDGE)),
    p.Done(),
    p.WinnersQuery(),
]
SERVER_EXAMPLES = [
    p.Welcome(committed=0),
    p.Welcome(committed=U32_MAX, agency_done=True, draw_done=True),
    p.Welcome(committed=7, agency_done=True, draw_done=False),
    p.Ack(first=1, count=1),
    p.Ack(first=U32_MAX, count=0xFFFF),
    p.DoneAck(),
    p.Winners(documents=(), final=True),
    p.Winners(documents=("30904465", "𝔡𝔬𝔠"), final=False),
    p.Error(code=p.ErrorCode.MALFORMED_FRAME, message="bad frame", first=0),
    p.Error(code=p.ErrorCode.TIMEOUT, message="", first=U32_MAX),
    p.Error(code=p.ErrorCode.INVALID_BET, message="bet 3: número inválido ✗", first=42),
]


def decode_all(role: p.Role, chunks) -> list:
    decoder = p.FrameDecoder(role)
    out = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        out.extend(decoder.messages())
    return out


def splits(data: bytes):
    """The data whole, byte by byte, and cut in two at every point."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


def frame(frame_type: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack(">IB", len(payload) + 1 if length is None else length, frame_type) + payload


def error_of(role: p.Role, data: bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as caught:
        decode_all(role, [data, b""])
    return caught.value


@pytest.mark.parametrize("message", CLIENT_EXAMPLES, ids=repr)
def test_client_examples_round_trip_in_every_chunking(message):
    data = p.encode(message)
    for chunks in splits(data):
        assert decode_all(p.Role.SERVER, chunks) == [message]


@pytest.mark.parametrize("message", SERVER_EXAMPLES, ids=repr)
def test_server_examples_round_trip_in_every_chunking(message):
    data = p.encode(message)
    for chunks in splits(data):
        assert decode_all(p.Role.CLIENT, chunks) == [message]


def test_a_stream_of_examples_decodes_in_order_split_anywhere():
    data = b"".join(map(p.encode, CLIENT_EXAMPLES))
    for chunks in splits(data):
        assert decode_all(p.Role.SERVER, chunks) == CLIENT_EXAMPLES


@given(st.lists(client_messages, min_size=1, max_size=6), st.data())
def test_random_client_streams_split_at_random_points(messages, data):
    encoded = b"".join(map(p.encode, messages))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=10)))
    chunks = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)]) if b > a]
    assert decode_all(p.Role.SERVER, chunks) == messages
    assert decode_all(p.Role.SERVER, [encoded[i : i + 1] for i in range(len(encoded))]) == messages


@given(st.lists(server_messages, min_size=1, max_size=6), st.data())
def test_random_server_streams_split_at_random_points(messages, data):
    encoded = b"".join(map(p.encode, messages))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=10)))
    chunks = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)]) if b > a]
    assert decode_all(p.Role.CLIENT, chunks) == messages


@given(st.binary(max_size=3000), st.integers(1, 600))
def test_arbitrary_bytes_give_messages_or_the_protocol_error_only(blob, chunk_size):
    for role in p.Role:
        decoder = p.FrameDecoder(role)
        try:
            for start in range(0, len(blob), chunk_size):
                decoder.receive_data(blob[start : start + chunk_size])
                for _ in decoder.messages():
                    pass
                assert decoder.next_message() is p.NEED_DATA
                assert not decoder.peer_closed
            decoder.receive_data(b"")
            for _ in decoder.messages():
                pass
            assert decoder.peer_closed
        except p.ProtocolError as error:
            assert isinstance(error.code, p.ErrorCode)
            assert error.message


def test_bytes_after_a_complete_frame_are_kept_exactly():
    done = p.encode(p.Done())
    partial = p.encode(p.WinnersQuery())[:3]
    decoder = p.FrameDecoder(p.Role.SERVER)
    decoder.receive_data(done + partial)
    assert decoder.next_message() == p.Done()
    assert decoder.next_message() is p.NEED_DATA
    assert decoder.inside_frame
    decoder.receive_data(p.encode(p.WinnersQuery())[3:])
    assert decoder.next_message() == p.WinnersQuery()
    assert not decoder.inside_frame


@pytest.mark.parametrize("length", [0, p.MAX_FRAME_LENGTH + 1, U32_MAX])
def test_a_bad_length_is_refused_from_the_header_alone(length):
    decoder = p.FrameDecoder(p.Role.SERVER)
    with pytest.raises(p.ProtocolError) as caught:
        decoder.receive_data(struct.pack(">I", length))
    assert caught.value.code is p.ErrorCode.MALFORMED_FRAME
    assert not decoder.inside_frame  # the header's bytes are dropped, not kept waiting
    with pytest.raises(p.ProtocolError):  # broken for good, like h11's ERROR state
        decoder.next_message()
    with pytest.raises(p.ProtocolError):
        list(decoder.messages())


def test_the_largest_legal_frame_is_accepted_and_one_more_byte_is_not():
    # a WINNERS frame whose one document fills the frame to exactly 8192 bytes
    document = "9" * (p.MAX_FRAME_SIZE - 5 - 3 - 2)
    data = p.encode(p.Winners(documents=(document,)))
    assert len(data) == p.MAX_FRAME_SIZE
    assert decode_all(p.Role.CLIENT, [data]) == [p.Winners(documents=(document,))]
    with pytest.raises(ValueError):
        p.encode(p.Winners(documents=(document + "9",)))


BAD_FRAMES = {
    "unknown type": (frame(0x05, b""), p.ErrorCode.MALFORMED_FRAME),
    "server type sent to the server": (frame(0x81, struct.pack(">IB", 0, 0)), p.ErrorCode.MALFORMED_FRAME),
    "DONE with a payload": (frame(0x03, b"x"), p.ErrorCode.MALFORMED_FRAME),
    "HELLO too short": (frame(0x01, b"\x00"), p.ErrorCode.MALFORMED_FRAME),
    "HELLO version 2 then garbage": (frame(0x01, b"\x00\x02garbage"), p.ErrorCode.UNSUPPORTED_VERSION),
    "HELLO trailing bytes": (frame(0x01, struct.pack(">HIH", 1, 1, 0) + b"!"), p.ErrorCode.MALFORMED_FRAME),
    "HELLO token runs past the end": (frame(0x01, struct.pack(">HIH", 1, 1, 5) + b"ab"), p.ErrorCode.MALFORMED_FRAME),
    "HELLO invalid UTF-8": (frame(0x01, struct.pack(">HIH", 1, 1, 2) + b"\xc3\x28"), p.ErrorCode.MALFORMED_FRAME),
    "BETS first 0": (frame(0x02, struct.pack(">IH", 0, 1) + p.encode_bet(ACCENTED)), p.ErrorCode.MALFORMED_FRAME),
    "BETS count 0": (frame(0x02, struct.pack(">IH", 1, 0)), p.ErrorCode.MALFORMED_FRAME),
    "BETS count above the bets": (frame(0x02, struct.pack(">IH", 1, 2) + p.encode_bet(ACCENTED)), p.ErrorCode.MALFORMED_FRAME),
    "BETS trailing bytes": (frame(0x02, struct.pack(">IH", 1, 1) + p.encode_bet(ACCENTED) + b"\x00"), p.ErrorCode.MALFORMED_FRAME),
    "BETS cut inside the number": (frame(0x02, struct.pack(">IH", 1, 1) + p.encode_bet(ACCENTED)[:-1]), p.ErrorCode.MALFORMED_FRAME),
    "BETS invalid UTF-8": (
        frame(0x02, struct.pack(">IH", 1, 1) + b"\x00\x01\xff" + p.encode_bet(ACCENTED)[len("José María".encode()) + 2 :]),
        p.ErrorCode.MALFORMED_FRAME,
    ),
    "BETS header cut short": (frame(0x02, b"\x00\x00\x00"), p.ErrorCode.MALFORMED_FRAME),
}


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_malformed_client_frames(name):
    data, code = BAD_FRAMES[name]
    assert error_of(p.Role.SERVER, data).code is code


@pytest.mark.parametrize(
    "data",
    [
        frame(0x81, struct.pack(">IB", 1, 4)),  # unused flag bit
        frame(0x84, struct.pack(">BH", 2, 0)),  # final must be 0 or 1
        frame(0x82, struct.pack(">IH", 0, 1)),  # ACK first 0
        frame(0x01, struct.pack(">HIH", 1, 1, 0)),  # a client type sent to the client
    ],
)
def test_malformed_server_frames(data):
    assert error_of(p.Role.CLIENT, data).code is p.ErrorCode.MALFORMED_FRAME


def test_an_error_code_from_a_later_version_is_kept_as_a_number():
    message = decode_all(p.Role.CLIENT, [frame(0xFF, struct.pack(">HIH", 99, 0, 0))])[0]
    assert message == p.Error(code=99, message="", first=0)


def test_close_on_a_frame_boundary_is_peer_closed_and_inside_a_frame_is_malformed():
    decoder = p.FrameDecoder(p.Role.SERVER)
    decoder.receive_data(p.encode(p.Done()))
    decoder.receive_data(b"")
    assert decoder.next_message() == p.Done()
    assert decoder.next_message() is p.PEER_CLOSED
    assert error_of(p.Role.SERVER, p.encode(p.Done())[:-1] + b"").code is p.ErrorCode.MALFORMED_FRAME
    truncated = p.encode(p.Bets(first=1, bets=(ACCENTED,)))[:-3]
    assert error_of(p.Role.SERVER, truncated).code is p.ErrorCode.MALFORMED_FRAME


def test_messages_iterator_drains_to_need_data_and_says_when_the_peer_closed():
    decoder = p.FrameDecoder(p.Role.SERVER)
    decoder.receive_data(p.encode(p.Done()) + p.encode(p.WinnersQuery()) + p.encode(p.Done())[:2])
    assert list(decoder.messages()) == [p.Done(), p.WinnersQuery()]
    assert not decoder.peer_closed and decoder.inside_frame
    decoder.receive_data(p.encode(p.Done())[2:])
    decoder.receive_data(b"")
    assert not decoder.peer_closed  # a message before the close is still to be handed back
    assert list(decoder.messages()) == [p.Done()]
    assert decoder.peer_closed
    assert decoder.next_message() is p.PEER_CLOSED


def test_stopping_the_messages_iterator_early_keeps_the_rest():
    decoder = p.FrameDecoder(p.Role.SERVER)
    decoder.receive_data(p.encode(p.Done()) + p.encode(p.WinnersQuery()))
    for message in decoder.messages():
        assert message == p.Done()
        break
    assert list(decoder.messages()) == [p.WinnersQuery()]


def test_the_messages_iterator_yields_what_precedes_a_malformed_frame_then_raises():
    decoder = p.FrameDecoder(p.Role.SERVER)
    decoder.receive_data(p.encode(p.Done()) + frame(0x05, b""))
    messages = decoder.messages()
    assert next(messages) == p.Done()
    with pytest.raises(p.ProtocolError):
        next(messages)
    assert not decoder.peer_closed


def test_close_inside_a_frame_is_not_peer_closed():
    decoder = p.FrameDecoder(p.Role.SERVER)
    decoder.receive_data(p.encode(p.Done())[:-1])
    decoder.receive_data(b"")
    with pytest.raises(p.ProtocolError):
        list(decoder.messages())
    assert not decoder.peer_closed


def test_messages_before_a_malformed_frame_are_handed_back_first():
    decoder = p.FrameDecoder(p.Role.SERVER)
    decoder.receive_data(p.encode(p.Done()) + struct.pack(">I", 0))
    assert decoder.next_message() == p.Done()
    with pytest.raises(p.ProtocolError):
        decoder.next_message()


def test_tokens_never_show_in_a_repr():
    assert "s3cr3t" not in repr(p.Hello(agency=1, token="s3cr3t"))


def test_encoding_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError):
        p.encode(p.Ack(first=U32_MAX + 1, count=1))
    with pytest.raises(ValueError):
        p.encode(p.Bets(first=1, bets=(p.Bet("a", "b", "1", "2000-01-01", 0x10000),)))


@given(st.text(min_size=1, max_size=8), st.integers(0, 9000))
def test_an_error_message_of_any_length_is_cut_to_fit_one_frame(piece, repeat):
    message = piece * repeat
    frame = p.encode(p.Error(p.ErrorCode.INVALID_BET, message, 7))
    assert len(frame) <= p.MAX_FRAME_SIZE
    decoder = p.FrameDecoder(p.Role.CLIENT)
    decoder.receive_data(frame)
    decoded = decoder.next_message()
    assert decoded.first == 7
    if len(message.encode()) + 6 + 2 + 1 <= p.MAX_FRAME_LENGTH:
        assert decoded.message == message
    else:
        assert decoded.message.endswith("...") and message.startswith(decoded.message[:-3])
