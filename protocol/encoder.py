"""Messages out, bytes out: one function per frame type behind `encode(message)`.

A server message is written in version 2 when it carries its version-2 fields (a
digest), else exactly as version 1.
"""

from __future__ import annotations

import struct

from . import wire
from .messages import (
    MAX_FRAME_LENGTH,
    U16_MAX,
    Ack,
    Bets,
    Done,
    DoneAck,
    Error,
    FrameType,
    Hello,
    Message,
    Welcome,
    Winners,
    WinnersQuery,
)


def _string(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > U16_MAX:
        raise ValueError(f"string of {len(raw)} bytes does not fit a u16 length")
    return wire.U16.pack(len(raw)) + raw


def _frame(frame_type: FrameType, payload: bytes) -> bytes:
    if len(payload) + 1 > MAX_FRAME_LENGTH:
        raise ValueError(f"{frame_type.name} frame of {len(payload) + 5} bytes exceeds 8192")
    return wire.FRAME_HEAD.pack(len(payload) + 1, frame_type) + payload


def encode_bet(bet) -> bytes:
    """One bet (a `Bet` or a tuple in its field order) as it stands inside a BETS payload."""
    first_name, last_name, document, birthdate, number = bet
    return b"".join((_string(first_name), _string(last_name), _string(document), _string(birthdate), wire.U16.pack(number)))


def _hello(m: Hello) -> bytes:
    return _frame(FrameType.HELLO, wire.HELLO_HEAD.pack(m.version, m.agency) + _string(m.token))


def _bets(m: Bets) -> bytes:
    head = wire.BETS_HEAD.pack(m.first, len(m.bets))
    return _frame(FrameType.BETS, head + b"".join(map(encode_bet, m.bets)))


def _digest(value: bytes) -> bytes:
    if len(value) != wire.DIGEST_SIZE:
        raise ValueError(f"a digest has {wire.DIGEST_SIZE} bytes, not {len(value)}")
    return bytes(value)


def _welcome(m: Welcome) -> bytes:
    flags = (1 if m.agency_done else 0) | (2 if m.draw_done else 0)
    if m.digest is None:
        return _frame(FrameType.WELCOME, wire.WELCOME.pack(m.committed, flags))
    return _frame(FrameType.WELCOME, wire.WELCOME_V2.pack(m.committed, flags, _digest(m.digest)))


def _done_ack(m: DoneAck) -> bytes:
    if m.committed is None and m.digest is None:
        return _frame(FrameType.DONE_ACK, b"")
    if m.committed is None or m.digest is None:
        raise ValueError("a version-2 DONE_ACK carries both committed and digest")
    return _frame(FrameType.DONE_ACK, wire.DONE_ACK_V2.pack(m.committed, _digest(m.digest)))


def _winners(m: Winners) -> bytes:
    head = wire.WINNERS_HEAD.pack(1 if m.final else 0, len(m.documents))
    return _frame(FrameType.WINNERS, head + b"".join(map(_string, m.documents)))


# The longest message an ERROR frame carries: the frame less its type, code, first and u16 length.
_MAX_ERROR_MESSAGE = MAX_FRAME_LENGTH - 1 - wire.ERROR_HEAD.size - wire.U16.size
_CUT_MARK = "..."


def fit_error_message(message: str) -> str:
    """`message` cut (at a character boundary, marked) to what one ERROR frame carries.

    A server builds messages from what peers send; however long that was, the
    ERROR that reports it must still be encodable.
    """
    raw = message.encode()
    if len(raw) <= _MAX_ERROR_MESSAGE:
        return message
    return raw[: _MAX_ERROR_MESSAGE - len(_CUT_MARK)].decode(errors="ignore") + _CUT_MARK


def _error(m: Error) -> bytes:
    return _frame(FrameType.ERROR, wire.ERROR_HEAD.pack(m.code, m.first) + _string(fit_error_message(m.message)))


_ENCODERS = {
    Hello: _hello,
    Bets: _bets,
    Done: lambda m: _frame(FrameType.DONE, b""),
    WinnersQuery: lambda m: _frame(FrameType.WINNERS_QUERY, b""),
    Welcome: _welcome,
    Ack: lambda m: _frame(FrameType.ACK, wire.ACK.pack(m.first, m.count)),
    DoneAck: _done_ack,
    Winners: _winners,
    Error: _error,
}


def encode(message: Message) -> bytes:
    """The frame of `message`; ValueError when a field does not fit the wire format."""
    try:
        return _ENCODERS[type(message)](message)
    except struct.error as error:
        raise ValueError(f"{type(message).__name__}: {error}") from None
