"""The codec: round trips, any chunking, and every malformed shape the decoder must refuse."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol as p
from protocol import wire
from tests.strategies import SERVER_MESSAGES, client_messages, wire_bets

U32_MAX = 0xFFFF_FFFF

ACCENTED = p.Bet("José María", "Núñez Ñandú", "30904465", "1999-03-17", 2201)
FOUR_BYTE = p.Bet("𝔄𝔤𝔲𝔰𝔱𝔦𝔫 😀", "Lorca 🎲", "0", "1900-01-01", 0)
EDGE = p.Bet("a", "b", "1234567890123456", "2024-02-29", 0xFFFF)

DIGEST = bytes(range(32))
NEWEST = p.SUPPORTED_VERSIONS[-1]

CLIENT_EXAMPLES = [
    p.Hello(agency=1, token=""),
    p.Hello(agency=2, token="t", version=2),
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
SERVER_EXAMPLES_V2 = [
    p.Welcome(committed=0, digest=bytes(32)),
    p.Welcome(committed=U32_MAX, agency_done=True, draw_done=True, digest=DIGEST),
    p.DoneAck(committed=0, digest=bytes(32)),
    p.DoneAck(committed=78697, digest=DIGEST),
    p.Ack(first=1, count=1),
    p.Winners(documents=("30904465",), final=True),
    p.Error(code=p.ErrorCode.STORAGE_FAILED, message="retry later", first=3),
]

# Version-1 frames byte for byte, written from PROTOCOL.md by hand: version 2 must not move them.
VERSION_1_BYTES = [
    (p.Hello(agency=3, token="ab"), "0000000b 01 0001 00000003 0002 6162"),
    (p.Welcome(committed=7, agency_done=True), "00000006 81 00000007 01"),
    (p.Welcome(committed=0x01020304, draw_done=True), "00000006 81 01020304 02"),
    (p.DoneAck(), "00000001 83"),
    (p.Ack(first=5, count=2), "00000007 82 00000005 0002"),
    (p.Winners(documents=("12",), final=True), "00000008 84 01 0001 0002 3132"),
    (p.Error(code=p.ErrorCode.TIMEOUT, message="x", first=0), "0000000a ff 000d 00000000 0001 78"),
    (p.Bets(first=1, bets=(p.Bet("A", "B", "1", "2", 9),)), "00000015 02 00000001 0001 0001 41 0001 42 0001 31 0001 32 0009"),
]
VERSION_2_BYTES = [
    (p.Hello(agency=3, token="", version=2), "00000009 01 0002 00000003 0000"),
    (p.Welcome(committed=7, agency_done=True, digest=DIGEST), "00000026 81 00000007 01" + DIGEST.hex()),
    (p.DoneAck(committed=9, digest=DIGEST), "00000025 83 00000009" + DIGEST.hex()),
]


def decode_all(role: p.Role, chunks, version: int = 1) -> list:
    decoder = p.FrameDecoder(role, version)
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


def error_of(role: p.Role, data: bytes, version: int = 1) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as caught:
        decode_all(role, [data, b""], version)
    return caught.value


@pytest.mark.parametrize("message, hex_bytes", VERSION_1_BYTES + VERSION_2_BYTES, ids=lambda v: repr(v)[:60])
def test_frames_are_exactly_the_bytes_protocol_md_gives(message, hex_bytes):
    assert p.encode(message) == bytes.fromhex(hex_bytes)


@pytest.mark.parametrize("message", CLIENT_EXAMPLES, ids=repr)
def test_client_examples_round_trip_in_every_chunking(message):
    data = p.encode(message)
    for chunks in splits(data):
        assert decode_all(p.Role.SERVER, chunks, NEWEST) == [message]


@pytest.mark.parametrize(
    "version, message", [(1, m) for m in SERVER_EXAMPLES] + [(2, m) for m in SERVER_EXAMPLES_V2], ids=repr
)
def test_server_examples_round_trip_in_every_chunking(version, message):
    data = p.encode(message)
    for chunks in splits(data):
        assert decode_all(p.Role.CLIENT, chunks, version) == [message]


def test_a_stream_of_examples_decodes_in_order_split_anywhere():
    data = b"".join(map(p.encode, CLIENT_EXAMPLES))
    for chunks in splits(data):
        assert decode_all(p.Role.SERVER, chunks, NEWEST) == CLIENT_EXAMPLES


@given(st.lists(client_messages, min_size=1, max_size=6), st.data())
def test_random_client_streams_split_at_random_points(messages, data):
    encoded = b"".join(map(p.encode, messages))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=10)))
    chunks = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)]) if b > a]
    assert decode_all(p.Role.SERVER, chunks, NEWEST) == messages
    assert decode_all(p.Role.SERVER, [encoded[i : i + 1] for i in range(len(encoded))], NEWEST) == messages


@given(st.sampled_from(p.SUPPORTED_VERSIONS), st.data())
def test_random_server_streams_split_at_random_points(version, data):
    messages = data.draw(st.lists(SERVER_MESSAGES[version], min_size=1, max_size=6))
    encoded = b"".join(map(p.encode, messages))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=10)))
    chunks = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)]) if b > a]
    assert decode_all(p.Role.CLIENT, chunks, version) == messages


@given(st.binary(max_size=3000), st.integers(1, 600))
def test_arbitrary_bytes_give_messages_or_the_protocol_error_only(blob, chunk_size):
    for role, version in [(role, version) for role in p.Role for version in p.SUPPORTED_VERSIONS]:
        decoder = p.FrameDecoder(role, version)
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
    "HELLO version 0 then garbage": (frame(0x01, b"\x00\x00garbage"), p.ErrorCode.UNSUPPORTED_VERSION),
    "HELLO version 3 then garbage": (frame(0x01, b"\x00\x03garbage"), p.ErrorCode.UNSUPPORTED_VERSION),
    "HELLO version 3, nothing else": (frame(0x01, b"\x00\x03"), p.ErrorCode.UNSUPPORTED_VERSION),
    "HELLO version 2 then garbage": (frame(0x01, b"\x00\x02garbage"), p.ErrorCode.MALFORMED_FRAME),
    "HELLO version 2 trailing bytes": (frame(0x01, struct.pack(">HIH", 2, 1, 0) + b"!"), p.ErrorCode.MALFORMED_FRAME),
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
    assert error_of(p.Role.SERVER, data, NEWEST).code is code


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


@pytest.mark.parametrize(
    "version, data",
    [
        (1, frame(0x81, struct.pack(">IB", 1, 0) + DIGEST)),  # a version-2 WELCOME in a version-1 session
        (1, frame(0x83, struct.pack(">I", 1) + DIGEST)),  # a version-2 DONE_ACK
        (2, frame(0x81, struct.pack(">IB", 1, 0))),  # a version-1 WELCOME in a version-2 session
        (2, frame(0x83, b"")),  # a version-1 DONE_ACK
        (2, frame(0x81, struct.pack(">IB", 1, 0) + DIGEST[:31])),  # digest one byte short
        (2, frame(0x81, struct.pack(">IB", 1, 0) + DIGEST + b"\x00")),  # one byte long
        (2, frame(0x83, struct.pack(">I", 1) + DIGEST[:31])),
        (2, frame(0x83, struct.pack(">I", 1) + DIGEST + b"\x00")),
        (2, frame(0x81, struct.pack(">IB", 1, 4) + DIGEST)),  # unused flag bit
    ],
)
def test_the_client_decodes_welcome_and_done_ack_strictly_in_its_sessions_version(version, data):
    assert error_of(p.Role.CLIENT, data, version).code is p.ErrorCode.MALFORMED_FRAME


def test_a_server_reads_a_hello_of_every_version_it_speaks_and_no_other():
    for newest in p.SUPPORTED_VERSIONS:
        for version in range(1, newest + 1):
            assert decode_all(p.Role.SERVER, [p.encode(p.Hello(7, "t", version))], newest) == [p.Hello(7, "t", version)]
    # a server that speaks only version 1 refuses even a well-formed version-2 HELLO
    assert error_of(p.Role.SERVER, p.encode(p.Hello(7, "t", 2)), 1).code is p.ErrorCode.UNSUPPORTED_VERSION
    assert error_of(p.Role.SERVER, frame(0x01, b"\x00\x02garbage"), 1).code is p.ErrorCode.UNSUPPORTED_VERSION
    assert "speaks 1 and 2" in error_of(p.Role.SERVER, frame(0x01, b"\x00\x03"), 2).message


def test_a_decoder_for_an_unknown_version_is_refused():
    with pytest.raises(ValueError):
        p.FrameDecoder(p.Role.CLIENT, version=3)


@pytest.mark.parametrize(
    "message",
    [
        p.Welcome(committed=1, digest=bytes(31)),
        p.Welcome(committed=1, digest=bytes(33)),
        p.DoneAck(committed=1, digest=bytes(31)),
        p.DoneAck(committed=1),
        p.DoneAck(digest=bytes(32)),
    ],
    ids=repr,
)
def test_encoding_refuses_a_version_2_message_that_is_not_whole(message):
    with pytest.raises(ValueError):
        p.encode(message)


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


# --- the BETS hot path against a plain reference -------------------------------------


def reference_bets(payload: bytes):
    """The BETS payload read field by field as PROTOCOL.md lists them: bets, or None when malformed."""
    if len(payload) < 6:
        return None
    first, count = struct.unpack_from(">IH", payload)
    if first == 0 or count == 0:
        return None
    bets, offset = [], 6
    try:
        for _ in range(count):
            fields = []
            for _ in range(4):
                if offset + 2 > len(payload):
                    return None
                (size,) = struct.unpack_from(">H", payload, offset)
                if offset + 2 + size > len(payload):
                    return None
                fields.append(payload[offset + 2 : offset + 2 + size].decode("utf-8"))
                offset += 2 + size
            if offset + 2 > len(payload):
                return None
            fields.append(struct.unpack_from(">H", payload, offset)[0])
            offset += 2
            bets.append(tuple(fields))
    except UnicodeDecodeError:
        return None
    return (first, tuple(bets)) if offset == len(payload) else None


@given(st.lists(wire_bets, min_size=1, max_size=6), st.data())
def test_decoding_bets_agrees_with_the_reference_on_damaged_payloads(bets, data):
    payload = bytearray(p.encode(p.Bets(first=1, bets=tuple(bets)))[5:])
    for _ in range(data.draw(st.integers(0, 3))):
        action = data.draw(st.sampled_from(["flip", "cut", "grow", "count"]))
        if action == "flip" and payload:
            payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del payload[data.draw(st.integers(0, len(payload))) :]
        elif action == "grow":
            payload += data.draw(st.binary(min_size=1, max_size=4))
        elif action == "count" and len(payload) >= 6:
            payload[4:6] = struct.pack(">H", data.draw(st.integers(0, 8)))
    expected = reference_bets(bytes(payload))
    try:
        decoded = p.decode_bets_payload(bytes(payload))
    except p.ProtocolError as error:
        assert error.code is p.ErrorCode.MALFORMED_FRAME
        assert expected is None
    else:
        assert (decoded.first, decoded.bets) == expected
        assert bytes(decoded.encoded) == bytes(payload[6:])


def test_many_bet_shapes_decode_alike():
    # more distinct string sizes than the decoder keeps layouts for
    bets = tuple(p.Bet("a" * (1 + i % 80), "ñ" * (1 + i // 80), "1", "2000-01-01", i) for i in range(80 * 70))
    first = 1
    for chunk in p.pack_batches(bets, 100):
        batch = p.Bets(first=first, bets=tuple(chunk))
        assert decode_all(p.Role.SERVER, [p.encode(batch)]) == [batch]
        first += len(chunk)
    assert len(wire.BET_LAYOUTS) <= wire.MAX_BET_LAYOUTS


def test_a_decoded_batch_carries_its_bets_as_they_were_on_the_wire():
    batch = p.Bets(first=9, bets=(ACCENTED, FOUR_BYTE, EDGE))
    data = p.encode(batch)
    (decoded,) = decode_all(p.Role.SERVER, [data])
    assert bytes(decoded.encoded) == data[5 + 6 :]
    assert bytes(decoded.encoded) == b"".join(map(p.encode_bet, batch.bets))
    assert decoded == batch and batch.encoded is None  # encoded takes no part in equality
    assert "encoded" not in repr(decoded)
    assert p.decode_bets_payload(bytearray(data[5:])).encoded == decoded.encoded  # any bytes-like payload
