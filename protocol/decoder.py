"""Incremental frame decoder: bytes in, messages out.

Theory of operation. A `FrameDecoder` owns the receive buffer of one direction of
one connection. `receive_data(chunk)` appends bytes (`b""` means the peer closed);
`next_message()` hands back the next complete message, `NEED_DATA` while a frame is
incomplete, or `PEER_CLOSED` once the peer closed on a frame boundary; `messages()`
yields every complete message until one of those two, and `peer_closed` says which.
The length in a frame's 4-byte header is checked as soon as those 4 bytes are in, so
a frame that could never be legal is refused before any of its body is waited for. Any
violation raises `ProtocolError`; the decoder then stays broken and raises the same
error on every later call, like h11's ERROR state.

The buffer is a bytearray consumed from the front (`del buf[:n]`, amortised linear),
so it holds at most the frame being assembled plus what arrived after it.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator

from . import wire
from .errors import ProtocolError
from .messages import (
    MAX_FRAME_LENGTH,
    SUPPORTED_VERSIONS,
    Ack,
    Bets,
    Done,
    DoneAck,
    Error,
    ErrorCode,
    FrameType,
    Hello,
    Message,
    Welcome,
    Winners,
    WinnersQuery,
)


class Sentinel(enum.Enum):
    NEED_DATA = "need data"
    PEER_CLOSED = "peer closed"


NEED_DATA = Sentinel.NEED_DATA
PEER_CLOSED = Sentinel.PEER_CLOSED


class Role(enum.Enum):
    """Which side decodes: the server reads client frames, the client server frames."""

    SERVER = "server"
    CLIENT = "client"


def _malformed(why: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED_FRAME, why)


class _Reader:
    """Reads fields from one payload, refusing to run past its end."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def unpack(self, shape: struct.Struct) -> tuple:
        end = self.offset + shape.size
        if end > len(self.data):
            raise _malformed("payload shorter than its fields")
        values = shape.unpack_from(self.data, self.offset)
        self.offset = end
        return values

    def string(self) -> str:
        (size,) = self.unpack(wire.U16)
        end = self.offset + size
        if end > len(self.data):
            raise _malformed("string runs past the end of the payload")
        raw = self.data[self.offset : end]
        self.offset = end
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise _malformed("invalid UTF-8 in a string") from None

    def finish(self) -> None:
        if self.offset != len(self.data):
            raise _malformed("payload longer than its fields")


def _hello_decoder(newest: int):
    """The HELLO decoder of a server that speaks versions 1 to `newest` (PROTOCOL.md: it accepts those)."""
    spoken = range(1, newest + 1)
    names = " and ".join(map(str, spoken))

    def decode(payload: bytes) -> Hello:
        reader = _Reader(payload)
        (version,) = reader.unpack(wire.HELLO_VERSION)  # version first: another version's HELLO may be any shape
        if version not in spoken:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {version} is not supported (this server speaks {names})",
            )
        reader.offset = 0
        version, agency = reader.unpack(wire.HELLO_HEAD)
        token = reader.string()
        reader.finish()
        return Hello(agency=agency, token=token, version=version)

    return decode


def decode_bets_payload(payload: bytes) -> Bets:
    """Decodes a BETS payload; the server's hot path, so written out by hand.

    Per bet, the four string sizes are read by offset arithmetic with no bounds
    check, and then the bet is unpacked in one go by the layout of those sizes
    (`wire.bet_layout`, cached). A size that runs past the end makes an index raise
    IndexError, the unpack raise struct.error, or leaves the offset short of or
    beyond the end, and each of those is MALFORMED_FRAME. Each bet comes out as a
    plain 5-tuple, in `Bet`'s field order: building a tuple is one opcode, building
    a `Bet` a Python call, and these tuples go straight to validation and then to the
    store.
    """
    if type(payload) is not bytes:
        payload = bytes(payload)  # Bets.encoded views it: it must not change under the view
    if len(payload) < wire.BETS_HEAD.size:
        raise _malformed("payload shorter than its fields")
    first, count = wire.BETS_HEAD.unpack_from(payload, 0)
    if first == 0:
        raise _malformed("BETS first must be at least 1")
    if count == 0:
        raise _malformed("BETS count must be at least 1")
    bets = []
    append = bets.append
    cached_layout = wire.BET_LAYOUTS.get
    bet_layout = wire.bet_layout
    off = wire.BETS_HEAD.size
    try:
        for _ in range(count):
            first_size = (payload[off] << 8) | payload[off + 1]
            end = off + 2 + first_size
            last_size = (payload[end] << 8) | payload[end + 1]
            end += 2 + last_size
            document_size = (payload[end] << 8) | payload[end + 1]
            end += 2 + document_size
            birthdate_size = (payload[end] << 8) | payload[end + 1]
            sizes = (first_size, last_size, document_size, birthdate_size)
            layout = cached_layout(sizes) or bet_layout(sizes)
            first_name, last_name, document, birthdate, number = layout.unpack_from(payload, off)
            append((first_name.decode(), last_name.decode(), document.decode(), birthdate.decode(), number))
            off = end + 4 + birthdate_size
    except (IndexError, struct.error):
        raise _malformed("payload shorter than its fields") from None
    except UnicodeDecodeError:
        raise _malformed("invalid UTF-8 in a string") from None
    if off != len(payload):
        raise _malformed("payload shorter than its fields" if off > len(payload) else "payload longer than its fields")
    return Bets(first=first, bets=tuple(bets), encoded=memoryview(payload)[wire.BETS_HEAD.size :])


def _decode_empty(message: Message):
    def decode(payload: bytes) -> Message:
        if payload:
            raise _malformed("payload longer than its fields")
        return message

    return decode


def _welcome(committed: int, flags: int, digest: bytes | None) -> Welcome:
    if flags & ~0b11:
        raise _malformed("unused WELCOME flag bits must be 0")
    return Welcome(committed=committed, agency_done=bool(flags & 1), draw_done=bool(flags & 2), digest=digest)


def _decode_welcome(payload: bytes) -> Welcome:
    reader = _Reader(payload)
    committed, flags = reader.unpack(wire.WELCOME)
    reader.finish()
    return _welcome(committed, flags, None)


def _decode_welcome_v2(payload: bytes) -> Welcome:
    reader = _Reader(payload)
    committed, flags, digest = reader.unpack(wire.WELCOME_V2)
    reader.finish()
    return _welcome(committed, flags, digest)


def _decode_done_ack_v2(payload: bytes) -> DoneAck:
    reader = _Reader(payload)
    committed, digest = reader.unpack(wire.DONE_ACK_V2)
    reader.finish()
    return DoneAck(committed=committed, digest=digest)


def _decode_ack(payload: bytes) -> Ack:
    reader = _Reader(payload)
    first, count = reader.unpack(wire.ACK)
    reader.finish()
    if first == 0 or count == 0:
        raise _malformed("ACK first and count must be at least 1")
    return Ack(first=first, count=count)


def _decode_winners(payload: bytes) -> Winners:
    reader = _Reader(payload)
    final, count = reader.unpack(wire.WINNERS_HEAD)
    if final > 1:
        raise _malformed("WINNERS final must be 0 or 1")
    documents = tuple(reader.string() for _ in range(count))
    reader.finish()
    return Winners(documents=documents, final=bool(final))


def _decode_error(payload: bytes) -> Error:
    reader = _Reader(payload)
    code, first = reader.unpack(wire.ERROR_HEAD)
    message = reader.string()
    reader.finish()
    try:
        code = ErrorCode(code)
    except ValueError:
        pass  # a code from a later version: keep the number
    return Error(code=code, message=message, first=first)


def _client_frames(newest: int) -> dict:
    """What a server speaking versions 1 to `newest` reads: only HELLO differs (its version)."""
    return {
        FrameType.HELLO: _hello_decoder(newest),
        FrameType.BETS: decode_bets_payload,
        FrameType.DONE: _decode_empty(Done()),
        FrameType.WINNERS_QUERY: _decode_empty(WinnersQuery()),
    }


_SERVER_FRAMES_V1 = {
    FrameType.WELCOME: _decode_welcome,
    FrameType.ACK: _decode_ack,
    FrameType.DONE_ACK: _decode_empty(DoneAck()),
    FrameType.WINNERS: _decode_winners,
    FrameType.ERROR: _decode_error,
}
_SERVER_FRAMES_V2 = {
    **_SERVER_FRAMES_V1,
    FrameType.WELCOME: _decode_welcome_v2,
    FrameType.DONE_ACK: _decode_done_ack_v2,
}
_DECODERS = {
    (Role.SERVER, 1): _client_frames(1),
    (Role.SERVER, 2): _client_frames(2),
    (Role.CLIENT, 1): _SERVER_FRAMES_V1,
    (Role.CLIENT, 2): _SERVER_FRAMES_V2,
}


class FrameDecoder:
    """Owns the receive buffer of one direction of a connection and turns it into messages.

    `role` says which side decodes: `Role.SERVER` accepts only client frame types,
    `Role.CLIENT` only server frame types; a type of the other direction is
    malformed. `version` means, for the client role, the version of its session:
    it parses WELCOME and DONE_ACK strictly in it (a frame of the other version is
    malformed). For the server role it is the newest version the server speaks: a
    HELLO of versions 1 to `version` is accepted (it names its session's version),
    any other is UNSUPPORTED_VERSION. Client frames other than HELLO are the same in
    every version.
    """

    __slots__ = ("_decoders", "_buffer", "_frame_length", "_closed", "_error")

    def __init__(self, role: Role, version: int = 1) -> None:
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"protocol version {version} is not one of {SUPPORTED_VERSIONS}")
        self._decoders = _DECODERS[role, version]
        self._buffer = bytearray()
        self._frame_length: int | None = None  # from the current frame's header, once read
        self._closed = False
        self._error: ProtocolError | None = None

    @property
    def inside_frame(self) -> bool:
        """True while part of a frame has arrived and the rest has not."""
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
        self._read_header()

    def next_message(self) -> Message | Sentinel:
        """The next complete message, NEED_DATA, or PEER_CLOSED; raises ProtocolError."""
        if self._error is not None:
            raise self._error
        length = self._read_header()
        if length is not None and len(self._buffer) >= 4 + length:
            frame_type = self._buffer[4]
            payload = bytes(self._buffer[5 : 4 + length])
            del self._buffer[: 4 + length]
            self._frame_length = None
            decode = self._decoders.get(frame_type)
            try:
                if decode is None:
                    raise _malformed(f"unknown frame type 0x{frame_type:02x}")
                return decode(payload)
            except ProtocolError as error:
                if error.code is ErrorCode.MALFORMED_FRAME:
                    self._error = error
                raise
        if self._closed:
            if self._buffer:
                self._fail(_malformed("connection closed in the middle of a frame"))
            return PEER_CLOSED
        return NEED_DATA

    def messages(self) -> Iterator[Message]:
        """Every complete message, in order, until the buffer holds no complete frame.

        The iterator ends where `next_message()` would return NEED_DATA or
        PEER_CLOSED; `peer_closed` then tells which. A malformed frame raises
        ProtocolError from the iterator after the messages before it were yielded.
        Stopping early is fine: what was not yet yielded stays buffered.
        """
        next_message = self.next_message
        while (message := next_message()) is not NEED_DATA and message is not PEER_CLOSED:
            yield message

    @property
    def peer_closed(self) -> bool:
        """True once the peer closed on a frame boundary and every message before it was handed back.

        That is when `next_message()` returns PEER_CLOSED.
        """
        return self._closed and not self._buffer and self._error is None

    def _read_header(self) -> int | None:
        if self._frame_length is None and len(self._buffer) >= 4:
            (length,) = wire.U32.unpack_from(self._buffer, 0)
            if length == 0 or length > MAX_FRAME_LENGTH:
                self._fail(_malformed(f"frame length {length} is outside 1..{MAX_FRAME_LENGTH}"))
            self._frame_length = length
        return self._frame_length

    def _fail(self, error: ProtocolError) -> None:
        self._error = error
        self._buffer.clear()
        raise error
