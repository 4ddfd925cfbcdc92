"""The messages of the Lottery Bet Protocol, versions 1 and 2, as small immutable types.

One type per frame type of docs/PROTOCOL.md. They carry values only: encoding lives
in `protocol.encoder`, decoding in `protocol.decoder`, bet rules in
`protocol.validation`. A version-2 message is the version-1 type with its version-2
fields set (`Welcome.digest`, `DoneAck.committed` and `DoneAck.digest`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple, Union

from . import wire

# The HELLO versions this implementation speaks, oldest first. A server answers each
# session in the version its HELLO named.
SUPPORTED_VERSIONS = (1, 2)

HEADER_SIZE = wire.U32.size
MAX_FRAME_SIZE = 8192
MAX_FRAME_LENGTH = MAX_FRAME_SIZE - HEADER_SIZE  # `len` counts the type byte and the payload

U16_MAX = 0xFFFF


class FrameType(enum.IntEnum):
    HELLO = 0x01
    BETS = 0x02
    DONE = 0x03
    WINNERS_QUERY = 0x04
    WELCOME = 0x81
    ACK = 0x82
    DONE_ACK = 0x83
    WINNERS = 0x84
    ERROR = 0xFF


class ErrorCode(enum.IntEnum):
    MALFORMED_FRAME = 1
    HELLO_REQUIRED = 2
    UNSUPPORTED_VERSION = 3
    UNAUTHORIZED = 4
    INVALID_BET = 5
    SEQUENCE_GAP = 6
    AGENCY_CLOSED = 7
    NOT_DONE = 8
    SHUTTING_DOWN = 9
    SESSION_REPLACED = 10
    SERVER_BUSY = 11
    STORAGE_FAILED = 12
    TIMEOUT = 13

    @property
    def fatal(self) -> bool:
        """After a fatal error the server flushes the ERROR frame and closes (PROTOCOL.md's table)."""
        return self not in _NON_FATAL

    @property
    def retry_in_new_session(self) -> bool:
        """The client's rule: after this error a new session (HELLO, WELCOME, resume) may succeed.

        - STORAGE_FAILED: nothing of the batch was stored and the server says retry
          later; the new session's WELCOME says where to resume.
        - SHUTTING_DOWN: the server is draining; once it (or its successor) is up again,
          it takes the agency where it left off.
        - SERVER_BUSY: the server was at its connection limit; a later connection
          may find room.
        - TIMEOUT: the connection sat idle or left a frame unfinished (a stalled
          network); a fresh connection starts with fresh deadlines.
        - SEQUENCE_GAP: the client sent past what the server holds (an earlier
          pipelined batch was not stored, e.g. after STORAGE_FAILED); WELCOME of a
          new session gives the true `committed` to resume from.

        The others would fail again the same way: the client or its data must change
        (MALFORMED_FRAME, HELLO_REQUIRED, UNAUTHORIZED, INVALID_BET, AGENCY_CLOSED,
        NOT_DONE), another session of the agency owns it now (SESSION_REPLACED), or
        the same HELLO gets the same answer (UNSUPPORTED_VERSION: a version-2 client
        falls back to a version-1 HELLO, which is a rule of its own).
        """
        return self in _RETRY_IN_NEW_SESSION


_NON_FATAL = frozenset(
    {
        ErrorCode.INVALID_BET,
        ErrorCode.SEQUENCE_GAP,
        ErrorCode.AGENCY_CLOSED,
        ErrorCode.NOT_DONE,
        ErrorCode.STORAGE_FAILED,
    }
)
_RETRY_IN_NEW_SESSION = frozenset(
    {
        ErrorCode.STORAGE_FAILED,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.SERVER_BUSY,
        ErrorCode.TIMEOUT,
        ErrorCode.SEQUENCE_GAP,
    }
)


class Bet(NamedTuple):
    """One bet as an agency wrote it: strings as read, number as an int."""

    first_name: str
    last_name: str
    document: str
    birthdate: str
    number: int


# --- client to server -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Opens a session: protocol version, agency number and (maybe empty) token.

    `version` is the version the session speaks (see SUPPORTED_VERSIONS); the
    server answers in it.
    """

    agency: int
    token: str = ""
    version: int = 1  # a client asks for version 2 explicitly: it must then check the digests

    def __repr__(self) -> str:  # tokens never reach logs
        return f"Hello(agency={self.agency}, version={self.version}, token={'***' if self.token else ''!r})"


@dataclass(frozen=True, slots=True)
class Bets:
    """A batch: bets numbered `first` to `first + len(bets) - 1` of one agency.

    Each bet is a `Bet` or a plain tuple in its field order (the decoder makes
    plain tuples; they compare equal to the `Bet` with the same fields).
    `encoded`, set by the decoder, is the bets exactly as they were on the wire (the
    payload after `first` and `count`), so the agency digest can hash them without
    encoding them again; None for a batch built in memory. It takes no part in
    equality: the bets are the batch.
    """

    first: int
    bets: tuple[tuple, ...]
    encoded: bytes | memoryview | None = field(default=None, compare=False, repr=False)

    @property
    def count(self) -> int:
        return len(self.bets)

    @property
    def last(self) -> int:
        return self.first + len(self.bets) - 1


@dataclass(frozen=True, slots=True)
class Done:
    """The agency will send no more bets."""


@dataclass(frozen=True, slots=True)
class WinnersQuery:
    """Asks for the agency's winners; answered only after the draw."""


# --- server to client -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """Answers HELLO: how many of the agency's bets are stored, and the session's flags.

    `digest` is digest(committed) (32 bytes) in a version-2 session, None in version 1.
    """

    committed: int
    agency_done: bool = False
    draw_done: bool = False
    digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """A batch is durably stored (or was already)."""

    first: int
    count: int


@dataclass(frozen=True, slots=True)
class DoneAck:
    """DONE is durably recorded.

    In a version-2 session it is also the agency's receipt: `committed` bets are
    stored and `digest` is their digest(committed) (32 bytes). Both are None in
    version 1.
    """

    committed: int | None = None
    digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class Winners:
    """A slice of the agency's winning documents; `final` marks the last slice."""

    documents: tuple[str, ...]
    final: bool = True


@dataclass(frozen=True, slots=True)
class Error:
    """A protocol error; `first` names the BETS frame it refers to, else 0.

    `code` is an ErrorCode when the code is one this version knows, else the raw int.
    """

    code: int
    message: str = ""
    first: int = 0


ClientMessage = Union[Hello, Bets, Done, WinnersQuery]
ServerMessage = Union[Welcome, Ack, DoneAck, Winners, Error]
Message = Union[ClientMessage, ServerMessage]


def bet_wire_size(bet: Bet) -> int:
    """Bytes the bet takes inside a BETS payload: four u16-prefixed strings and a u16."""
    return (
        5 * wire.U16.size
        + len(bet.first_name.encode())
        + len(bet.last_name.encode())
        + len(bet.document.encode())
        + len(bet.birthdate.encode())
    )


# Bytes of a BETS frame around its bets: header, type, `first` and `count`.
BETS_FRAME_OVERHEAD = wire.FRAME_HEAD.size + wire.BETS_HEAD.size
