"""One connection's conversation with the central: the connection's handler.

Theory of operation. A session is in one `SessionState`; `_TRANSITIONS` lists every
move, and `_REQUESTS` which messages each state takes (anything else is an illegal
move for the peer: HELLO_REQUIRED):

    GREETING ──HELLO──> SERVING <──answered── HOLDING
       │                 │  └──WINNERS_QUERY────^ │
       │                 └──FIN──> FINISHING      │
       └──── a fatal error (any state) ──> ENDING ┴──> ENDED (the connection is gone)

- GREETING: waits for HELLO; the lottery admits the agency or refuses it.
- SERVING: BETS, DONE and WINNERS_QUERY go to the lottery, which answers each with
  a `Reply` or an error.
- HOLDING: a WINNERS_QUERY waits for the draw; the connection reads nothing more.
- FINISHING: the peer half-closed; the session closes once every answer is out.
- ENDING: a fatal error is queued; nothing more is read, and the connection closes
  once it is out.
- ENDED: the connection is gone.

Replies leave in the order their requests came: a reply that waits for the turn's
commit sits in the outbox, and every later reply of the session waits behind it.
When the commit is settled (`commit_settled`) the outbox goes out, each waiting reply
as itself or, when the commit failed, as the STORAGE_FAILED it names.

Whether an error ends the session is `ErrorCode.fatal`'s to say, nowhere else.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from protocol import Bets, Done, Error, ErrorCode, Hello, Message, ProtocolError, WinnersQuery, encode, split_winners
from runtime.logfmt import log_event

if TYPE_CHECKING:
    from .service import AgencyAccount, Lottery

log = logging.getLogger(__name__)


class SessionState(enum.Enum):
    GREETING = "greeting"
    SERVING = "serving"
    HOLDING = "holding"
    FINISHING = "finishing"
    ENDING = "ending"
    ENDED = "ended"


_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.GREETING: frozenset({SessionState.SERVING, SessionState.FINISHING, SessionState.ENDING,
                                      SessionState.ENDED}),
    SessionState.SERVING: frozenset({SessionState.HOLDING, SessionState.FINISHING, SessionState.ENDING,
                                     SessionState.ENDED}),
    SessionState.HOLDING: frozenset({SessionState.SERVING, SessionState.ENDING, SessionState.ENDED}),
    SessionState.FINISHING: frozenset({SessionState.ENDING, SessionState.ENDED}),
    SessionState.ENDING: frozenset({SessionState.ENDED}),
    SessionState.ENDED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A move the session's table does not allow: a bug in the caller."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer for the outbox: its frame, and whether it waits for the turn's commit.

    A reply that waits is sent only once the commit holding its work is durable; if
    that commit fails, STORAGE_FAILED naming `first` goes in its place.
    """

    data: bytes
    waits_for_commit: bool = False
    first: int = 0

    @classmethod
    def of(cls, message: Message, waits_for_commit: bool = False, first: int = 0) -> "Reply":
        return cls(encode(message), waits_for_commit, first)


class Refusal(Exception):
    """The lottery says no to a request: the error the session answers with."""

    def __init__(self, code: ErrorCode, message: str, first: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.first = first


_ORDINARY_ENDINGS = frozenset({ErrorCode.TIMEOUT, ErrorCode.SESSION_REPLACED, ErrorCode.SHUTTING_DOWN})


class Session:
    """Owns one connection's conversation: its state, its agency once admitted, and its
    ordered outbox. The connection's handler; the lottery's public seam is all it uses."""

    __slots__ = ("lottery", "connection", "agency", "version", "_state", "_outbox")

    def __init__(self, lottery: "Lottery", connection) -> None:
        self.lottery = lottery
        self.connection = connection
        self.agency: AgencyAccount | None = None
        self.version = 1  # the protocol version its HELLO spoke
        self._state = SessionState.GREETING
        self._outbox: list[Reply] = []  # a list: an empty deque costs ~600 bytes a session

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def holds_query(self) -> bool:
        return self._state is SessionState.HOLDING

    # --- from the connection ---------------------------------------------------------
    def message_received(self, message: Message) -> None:
        if self._state in (SessionState.ENDING, SessionState.ENDED):
            return
        if self.lottery.draining:
            self.end(ErrorCode.SHUTTING_DOWN, "the server is shutting down; retry later")
            return
        if self._state is SessionState.HOLDING:
            raise RuntimeError("a held session was handed a message: its transport must read nothing more")
        request = _REQUESTS[self._state].get(type(message))  # a method's name
        if request is None:
            self.end(ErrorCode.HELLO_REQUIRED, "the first frame must be HELLO" if self._state is SessionState.GREETING
                     else "HELLO was already sent on this connection")
            return
        getattr(self, request)(message)

    def protocol_error(self, error: ProtocolError) -> None:
        self.end(error.code, error.message, error.first)  # the connection reads nothing more after one

    def eof_received(self) -> None:
        if self._state in (SessionState.GREETING, SessionState.SERVING):
            self._move(SessionState.FINISHING)
        self._close_if_answered()

    def timed_out(self, what: str) -> None:
        log_event(log, logging.DEBUG, "timeout", "success", peer=self.connection.peer, kind=what)
        self.end(ErrorCode.TIMEOUT, f"{what} deadline passed")

    def connection_lost(self, reason: str) -> None:
        self._move(SessionState.ENDED)
        self.lottery.session_ended(self)
        log_event(
            log,
            logging.INFO if self.lottery.draining else logging.DEBUG,  # a drain logs each close
            "connection_closed",
            "success",
            peer=self.connection.peer,
            agency=self.agency.number if self.agency else "-",
            reason=reason,
        )

    # --- requests ----------------------------------------------------------------
    def _hello(self, hello: Hello) -> None:
        try:
            self.agency = self.lottery.admit(self, hello)
        except Refusal as refusal:
            self.end(refusal.code, refusal.message, agency=hello.agency)
            return
        self.version = hello.version
        self._move(SessionState.SERVING)
        log_event(log, logging.DEBUG, "hello", "success", peer=self.connection.peer, agency=self.agency.number,
                  version=hello.version)
        self._reply(self.lottery.welcome(self.agency, self.version))

    def _bets(self, batch: Bets) -> None:
        self._answer(self.lottery.take_batch, batch)

    def _done(self, done: Done) -> None:
        self._answer(self.lottery.take_done, self.version)

    def _winners_query(self, query: WinnersQuery) -> None:
        try:
            documents = self.lottery.winners_for(self.agency)
        except Refusal as refusal:
            self._error(refusal)
            return
        if documents is None:  # the draw has not happened: hold the query, read nothing more
            self._move(SessionState.HOLDING)
            self.connection.hold_reading()
            return
        for frame in split_winners(documents):
            self._reply(Reply.of(frame))

    def _answer(self, request, *args) -> None:
        try:
            reply = request(self.agency, *args)
        except Refusal as refusal:
            self._error(refusal)
            return
        self._reply(reply)

    # --- what the lottery calls ---------------------------------------------------------
    def end(self, code: ErrorCode, message: str, first: int = 0, agency: int | None = None) -> None:
        """A fatal error: its ERROR goes out after what is owed, then the connection closes."""
        if self._state in (SessionState.ENDING, SessionState.ENDED):
            return
        self._move(SessionState.ENDING)
        self.connection.hold_reading()
        self.lottery.session_ending(self)
        if agency is None and self.agency is not None:
            agency = self.agency.number
        level = logging.DEBUG if code in _ORDINARY_ENDINGS else logging.INFO
        log_event(log, level, "session_error", "in_progress", peer=self.connection.peer,
                  agency="-" if agency is None else agency, code=code.name, reason=message)
        self.lottery.error_sent(code)
        self._reply(Reply.of(Error(code, message, first)))
        self._close_if_answered()

    def commit_settled(self, committed: bool) -> None:
        """The turn's commit is over: the outbox goes out, each waiting reply as itself or,
        when the commit failed, as its STORAGE_FAILED."""
        released = [
            reply.data if committed or not reply.waits_for_commit else self._storage_failed(reply.first)
            for reply in self._outbox
        ]
        self._outbox.clear()
        if released and self._state is not SessionState.ENDED:
            self.connection.write(b"".join(released))
        self._close_if_answered()

    def answer_held_query(self, documents: list[str] | None, instead: Refusal | None = None) -> None:
        """The draw happened (its winners), or the query cannot stand (`instead`)."""
        if self._state is not SessionState.HOLDING:
            return
        self._move(SessionState.SERVING)
        if instead is not None:
            self._error(instead)
        else:
            for frame in split_winners(documents):
                self._reply(Reply.of(frame))
        self.connection.release_reading()
        self._close_if_answered()

    # --- inside ---------------------------------------------------------------------------
    def _move(self, new: SessionState) -> None:
        if new not in _TRANSITIONS[self._state]:
            raise IllegalTransition(f"session {self.connection.peer}: {self._state.value} -> {new.value}")
        self._state = new

    def _error(self, refusal: Refusal) -> None:
        if refusal.code.fatal:
            self.end(refusal.code, refusal.message, refusal.first)
        else:
            self.lottery.error_sent(refusal.code)
            self._reply(Reply.of(Error(refusal.code, refusal.message, refusal.first)))

    def _storage_failed(self, first: int) -> bytes:
        """What a waiting reply becomes when its commit failed."""
        self.lottery.error_sent(ErrorCode.STORAGE_FAILED)
        return _storage_failed_frame(first)

    def _reply(self, reply: Reply) -> None:
        if reply.waits_for_commit:
            self.lottery.wait_for_commit(self)
        elif not self._outbox:
            self.connection.write(reply.data)
            return
        self._outbox.append(reply)

    def _close_if_answered(self) -> None:
        if self._outbox or self._state not in (SessionState.ENDING, SessionState.FINISHING):
            return
        self.connection.close()


_REQUESTS = {
    SessionState.GREETING: {Hello: "_hello"},
    SessionState.SERVING: {Bets: "_bets", Done: "_done", WinnersQuery: "_winners_query"},
    SessionState.FINISHING: {},  # nothing comes after the peer's FIN
}


def _storage_failed_frame(first: int) -> bytes:
    return encode(Error(ErrorCode.STORAGE_FAILED, "the store could not take the request; retry later", first))
