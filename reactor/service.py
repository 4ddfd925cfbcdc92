"""The lottery: sessions, per-bet sequencing, DONE, the draw, held queries.

Theory of operation. Each connection gets a `Session`, which turns messages into
work on its `Agency` and queues replies in arrival order in its outbox. Work that
must be durable before it is answered (a batch, a DONE) is staged in the store's
open transaction, and its reply waits in the outbox *for the commit*; a reply that
needs no commit but stands behind a waiting one waits its turn, so the replies of
a connection leave in the order their requests came.

At the end of every loop turn `Lottery.end_of_turn()` commits once (group commit).
On success it logs each stored batch, moves every agency's `committed` forward and
releases the waiting replies; on failure nothing of the turn is stored, every reply
that waited becomes STORAGE_FAILED, and the agencies fall back to what is durable.

The draw starts as soon as every expected agency's DONE is durable: the winning
number is fixed and recorded, then the bets are scanned for winners in slices, one
slice a turn, so ACKs and other sessions keep flowing meanwhile. When the scan is
committed the draw is logged once and every held WINNERS_QUERY is answered.
A held query's connection reads nothing more until it is answered.

Per agency: `committed` (durable), `staged` (what this turn adds), DONE, and its one
live session. Global: the expected agencies, the draw. All of it is rebuilt from
the store when the server starts.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import Mapping

from protocol import (
    Ack,
    Bets,
    Done,
    DoneAck,
    Error,
    ErrorCode,
    Hello,
    Message,
    ProtocolError,
    Welcome,
    WinnersQuery,
    encode,
    first_invalid_bet,
    split_winners,
    utc_today,
)
from runtime.logfmt import log_event

from .store import DatabaseLost, DrawState, StorageError, Store

log = logging.getLogger(__name__)

RANDOM_WINNING_NUMBER = -1  # "draw it with secrets when the draw happens"
DRAW_SCAN_SLICE = 50_000  # rowids scanned for winners per loop turn
DRAIN_SESSIONS_PER_TURN = 200  # sessions ended per turn of a drain
DRAW_RETRY_FIRST = 0.1  # seconds before a failed draw step is tried again; doubles up to the cap
DRAW_RETRY_CAP = 5.0


@dataclass
class Agency:
    """One agency's progress: durable and staged, its live session, its winners."""

    number: int
    committed: int = 0
    staged: int = 0
    done: bool = False
    done_staged: bool = False
    session: "Session | None" = None


@dataclass(slots=True)
class _Reply:
    data: bytes
    # Set when the reply waits for the turn's commit: the `first` that the
    # STORAGE_FAILED sent in its place names if the commit fails.
    commit_first: int | None = None


@dataclass
class LotteryConfig:
    """The lottery's settings: how many agencies, how the number is drawn, their tokens."""

    agencies: int = 5
    winning_number: int = 7574  # RANDOM_WINNING_NUMBER to draw one with `secrets`
    tokens: Mapping[int, str] = field(default_factory=dict)

    @property
    def winning_number_setting(self) -> str:
        """The winning-number setting as the database records it."""
        return "random" if self.winning_number == RANDOM_WINNING_NUMBER else str(self.winning_number)


class Session:
    """One connection's conversation: its agency once HELLO is through, its ordered
    outbox, and whether a WINNERS_QUERY is held. The connection's handler."""

    __slots__ = ("lottery", "connection", "agency", "_outbox", "holds_query", "_ending", "_peer_finished", "_gone")

    def __init__(self, lottery: "Lottery", connection) -> None:
        self.lottery = lottery
        self.connection = connection
        self.agency: Agency | None = None
        self._outbox: list[_Reply] = []  # a list: an empty deque costs ~600 bytes a session
        self.holds_query = False
        self._ending = False  # a fatal error is queued: nothing more is read
        self._peer_finished = False  # the peer half-closed
        self._gone = False

    # --- from the connection ---------------------------------------------------------
    def message_received(self, message: Message) -> None:
        if self._ending:
            return
        if self.lottery.draining:
            self._fatal(ErrorCode.SHUTTING_DOWN, "the server is shutting down; retry later")
        elif isinstance(message, Hello):
            if self.agency is None:
                self._hello(message)
            else:
                self._fatal(ErrorCode.HELLO_REQUIRED, "HELLO was already sent on this connection")
        elif self.agency is None:
            self._fatal(ErrorCode.HELLO_REQUIRED, "the first frame must be HELLO")
        elif isinstance(message, Bets):
            self._bets(message)
        elif isinstance(message, Done):
            self._done()
        elif isinstance(message, WinnersQuery):
            self._winners_query()
        else:  # the decoder yields client messages only
            raise AssertionError(f"unexpected message {message!r}")

    def protocol_error(self, error: ProtocolError) -> None:
        self._fatal(error.code, error.message, error.first)

    def eof_received(self) -> None:
        self._peer_finished = True
        self._close_if_answered()

    def timed_out(self, what: str) -> None:
        log_event(log, logging.DEBUG, "timeout", "success", peer=self.connection.peer, kind=what)
        self._fatal(ErrorCode.TIMEOUT, f"{what} deadline passed")

    def connection_lost(self, reason: str) -> None:
        self._gone = True
        self.holds_query = False
        if self.agency is not None and self.agency.session is self:
            self.agency.session = None
        self.lottery._session_ended(self)
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
        lottery = self.lottery
        agency = lottery.agencies.get(hello.agency)
        if agency is None:
            self._fatal(ErrorCode.UNAUTHORIZED, f"agency {hello.agency} is not one of 1..{len(lottery.agencies)}",
                        agency=hello.agency)
            return
        expected = lottery.config.tokens.get(hello.agency)
        if lottery.config.tokens and (
            expected is None or not hmac.compare_digest(hello.token.encode(), expected.encode())
        ):
            self._fatal(ErrorCode.UNAUTHORIZED, f"wrong or missing token for agency {hello.agency}",
                        agency=hello.agency)
            return
        older = agency.session
        if older is not None:
            older._replaced()
        agency.session = self
        self.agency = agency
        log_event(log, logging.DEBUG, "hello", "success", peer=self.connection.peer, agency=agency.number)
        self._reply(
            Welcome(committed=agency.committed, agency_done=agency.done, draw_done=lottery.draw_finished)
        )

    def _bets(self, batch: Bets) -> None:
        agency = self.agency
        problem = first_invalid_bet(batch.bets, self.lottery.today())
        if problem is not None:
            self._reject(batch, ErrorCode.INVALID_BET, str(problem))
            return
        if batch.first > agency.staged + 1:
            self._reject(
                batch, ErrorCode.SEQUENCE_GAP, f"batch starts at bet {batch.first}; next expected is {agency.staged + 1}"
            )
            return
        ack = encode(Ack(batch.first, batch.count))
        if batch.last <= agency.staged:  # stored before: nothing to store again, nothing to wait for
            log_event(log, logging.INFO, "apuesta_recibida", "success", cantidad=0, agency=agency.number)
            self._reply_after_commit_of(agency, batch.last, ack, batch.first)
            return
        if agency.done_staged:
            self._reject(batch, ErrorCode.AGENCY_CLOSED, "this agency sent DONE; it takes no new bets")
            return
        new_bets = batch.bets[agency.staged + 1 - batch.first :]
        try:
            self.lottery.store.stage_bets(agency.number, new_bets, batch.last)
        except StorageError as error:
            self.lottery._storage_failed(error)
            self._reject(batch, ErrorCode.STORAGE_FAILED, "the store could not take the batch; retry later")
            return
        agency.staged = batch.last
        self.lottery._note_stored(agency, len(new_bets))
        self._reply(ack, commit_first=batch.first)

    def _done(self) -> None:
        agency = self.agency
        if not agency.done_staged:
            try:
                self.lottery.store.stage_done(agency.number)
            except StorageError as error:
                self.lottery._storage_failed(error)
                self._reply(_storage_failed_frame(0))
                return
            agency.done_staged = True
        self._reply(encode(DoneAck()), commit_first=None if agency.done else 0)

    def _winners_query(self) -> None:
        agency = self.agency
        if not agency.done_staged:
            self._reply(Error(ErrorCode.NOT_DONE, "send DONE before asking for winners"))
        elif self.lottery.draw_finished:
            self._send_winners()
        else:
            self.holds_query = True
            self.connection.hold_reading()

    # --- replies -------------------------------------------------------------------
    def _reply(self, message, commit_first: int | None = None) -> None:
        data = message if isinstance(message, bytes) else encode(message)
        if commit_first is not None:
            self.lottery._waiting.add(self)
        elif not self._outbox:
            self.connection.write(data)
            return
        self._outbox.append(_Reply(data, commit_first))

    def _reply_after_commit_of(self, agency: Agency, last: int, data: bytes, first: int) -> None:
        # A resent batch already staged this turn is durable only once the turn commits.
        self._reply(data, commit_first=first if last > agency.committed else None)

    def _reject(self, batch: Bets, code: ErrorCode, message: str) -> None:
        log_event(log, logging.INFO, "apuesta_recibida", "fail", cantidad=batch.count, agency=self.agency.number,
                  code=code.name)
        self._reply(Error(code, message, batch.first))

    def _fatal(self, code: ErrorCode, message: str, first: int = 0, agency: int | None = None) -> None:
        if self._ending or self._gone:
            return
        self._ending = True
        self.holds_query = False  # a held query ends with its session
        self.connection.hold_reading()
        if self.agency is not None and self.agency.session is self:
            self.agency.session = None
        if agency is None and self.agency is not None:
            agency = self.agency.number
        level = logging.DEBUG if code in _ORDINARY_ENDINGS else logging.INFO
        log_event(log, level, "session_error", "in_progress", peer=self.connection.peer,
                  agency="-" if agency is None else agency, code=code.name, reason=message)
        self._reply(Error(code, message, first))
        self._close_if_answered()

    def _replaced(self) -> None:
        self._fatal(ErrorCode.SESSION_REPLACED, "a newer session of this agency took over")

    def _send_winners(self) -> None:
        documents = self.lottery.winners.get(self.agency.number, [])
        for frame in split_winners(documents):
            self._reply(frame)

    def _commit_settled(self, committed: bool) -> None:
        """The turn's commit is over: waiting replies go out, or become their failure."""
        released = [
            reply.data if committed or reply.commit_first is None else _storage_failed_frame(reply.commit_first)
            for reply in self._outbox
        ]
        self._outbox.clear()
        if released and not self._gone:
            self.connection.write(b"".join(released))
        self._close_if_answered()

    def _answer_held_query(self, instead: Error | None = None) -> None:
        self.holds_query = False
        if instead is None:
            self._send_winners()
        else:
            self._reply(instead)
        self.connection.release_reading()
        self._close_if_answered()

    def _close_if_answered(self) -> None:
        if self._gone or self._outbox or self.holds_query:
            return
        if self._ending or self._peer_finished:
            self.connection.close()


_ORDINARY_ENDINGS = frozenset({ErrorCode.TIMEOUT, ErrorCode.SESSION_REPLACED, ErrorCode.SHUTTING_DOWN})


def _storage_failed_frame(first: int) -> bytes:
    return encode(Error(ErrorCode.STORAGE_FAILED, "the store could not take the request; retry later", first))


class LotteryMismatch(Exception):
    """The database holds a lottery that the configuration contradicts; the message
    is one line saying what it holds and how to start fresh."""


class Lottery:
    """Owns the agencies, their sessions, the store's turn-long transaction and the draw."""

    def __init__(
        self,
        store: Store,
        config: LotteryConfig,
        loop,
        today=utc_today,
    ) -> None:
        self.store = store
        self.config = config
        self.today = today
        self._loop = loop  # call_soon / call_later only: the service never touches I/O
        self.agencies = {n: Agency(n) for n in range(1, config.agencies + 1)}
        self.sessions: set[Session] = set()
        self._waiting: set[Session] = set()
        self._stored_this_turn: list[tuple[Agency, int]] = []
        self._turn_lost: str | None = None  # why this turn's transaction cannot be committed
        self.draw: DrawState | None = None
        self._draw_staged: DrawState | None = None
        self._draw_step_scheduled = False
        self._draw_retry = 0.0  # seconds: the backoff after a failed draw step, 0 after a good one
        self._draw_resume_at = 0.0
        self.winners: dict[int, list[str]] | None = None  # known once the draw is finished
        self._answer_held = False  # the draw was just announced: held queries get their answers
        self.draining = False
        self._adopt_database()
        self._recover()

    @property
    def draw_finished(self) -> bool:
        return self.draw is not None and self.draw.finished

    def new_session(self, connection) -> Session:
        session = Session(self, connection)
        self.sessions.add(session)
        return session

    def _session_ended(self, session: Session) -> None:
        self.sessions.discard(session)
        self._waiting.discard(session)

    # --- the turn ------------------------------------------------------------------
    def _note_stored(self, agency: Agency, count: int) -> None:
        self._stored_this_turn.append((agency, count))

    def _storage_failed(self, error: StorageError) -> None:
        log_event(log, logging.ERROR, "store", "fail", error=str(error).replace("|", "/"))
        if error.transaction_lost:
            self._turn_lost = "the store lost the turn's transaction"

    def fault_in_turn(self, error: BaseException) -> None:
        """The loop isolated a fault: whatever the turn staged may be half done, so the
        turn is rolled back (its waiting replies become STORAGE_FAILED)."""
        if self.store.in_transaction or self._waiting:
            self._turn_lost = f"a fault in the turn ({type(error).__name__})"

    def fault(self, error: BaseException) -> None:
        """A fault in one of the lottery's own callbacks (a draw step): retry it later."""
        if self.winners is None:
            self._draw_failed(f"fault ({type(error).__name__})")

    def commit_turn(self) -> bool | None:
        """Commits what the turn staged and moves every agency forward, or rolls it all
        back (None when the turn staged nothing and nothing waits); then, once the
        draw's scan is durable, reads the winners and logs the draw.

        Raises DatabaseLost (from the store) when the database's files were replaced:
        then nothing of the turn may be acknowledged, and the caller stops.
        """
        committed = None
        if self.store.in_transaction or self._waiting or self._turn_lost:
            committed = self._commit()
        if self.draw_finished and self.winners is None and self._loop.time() >= self._draw_resume_at:
            self._read_winners()
        return committed

    def _commit(self) -> bool:
        committed = self._turn_lost is None
        if committed:
            try:
                self.store.commit()
            except StorageError as error:
                self._storage_failed(error)
                committed = False
            except DatabaseLost:
                raise
            except Exception as error:  # a fault inside the store's transaction: the turn is rolled back
                log.error("action: store | result: fail | error: %r", error, exc_info=error)
                self.store.rollback()
                committed = False
        else:
            log_event(log, logging.WARNING, "turn", "in_progress", rolled_back=self._turn_lost)
            self.store.rollback()  # what was staged after the loss cannot stand alone
        self._turn_lost = None
        if committed:
            for agency, count in self._stored_this_turn:
                log_event(log, logging.INFO, "apuesta_recibida", "success", cantidad=count, agency=agency.number)
            for agency in self.agencies.values():
                agency.committed = agency.staged
                agency.done = agency.done_staged
            if self._draw_staged is not None:
                self.draw = self._draw_staged
                self._draw_retry = 0.0
        else:
            for agency in self.agencies.values():
                agency.staged = agency.committed
                agency.done_staged = agency.done
            if self._draw_staged is not None:
                self._draw_failed("its commit failed")
        self._draw_staged = None
        self._stored_this_turn.clear()
        return committed

    def _read_winners(self) -> None:
        """The draw is durable: its winners are read and the draw logged, in the commit
        step, so the `sorteo` line leaves before the answers the release step sends."""
        try:
            self.winners = self.store.winners()
        except StorageError as error:
            self._draw_failed(str(error))
            return
        self._draw_retry = 0.0
        self._answer_held = True
        log_event(log, logging.INFO, "sorteo", "success", numero_ganador=self.draw.winning_number,
                  ganadores=sum(map(len, self.winners.values())))

    def release_turn(self, committed: bool | None) -> None:
        """Sends the replies that waited for the turn's commit (or their failures), the
        answers held for the draw once it is announced, then lets the draw take its
        next step."""
        if committed is not None:
            waiting, self._waiting = self._waiting, set()
            for session in waiting:  # one session's fault must not keep the others' replies
                self._loop.isolate(session.connection, session._commit_settled, committed)
            if not committed:
                for session in list(self.sessions):  # a held query whose DONE was lost
                    if session.holds_query and not session.agency.done_staged:
                        self._loop.isolate(session.connection, session._answer_held_query,
                                           Error(ErrorCode.NOT_DONE, "DONE was not stored; send it again"))
        if self._answer_held:
            self._answer_held = False
            for session in list(self.sessions):
                if session.holds_query:
                    self._loop.isolate(session.connection, session._answer_held_query)
        self._advance_draw()

    def end_of_turn(self) -> None:
        """`commit_turn` then `release_turn`: the turn's end without log output to flush."""
        self.release_turn(self.commit_turn())

    # --- the draw --------------------------------------------------------------------
    def _advance_draw(self) -> None:
        """Schedules the draw's next step once every DONE is durable: fix the number,
        scan for winners slice by slice, then announce; never sooner than a backoff
        after a failed step."""
        if self.draining or self._draw_step_scheduled or self.draw_finished:
            return
        if self.draw is None and not all(agency.done for agency in self.agencies.values()):
            return
        if self._loop.time() < self._draw_resume_at:
            return  # the timer set by _draw_failed comes back
        self._draw_step_scheduled = True
        self._loop.call_soon(self._draw_step)

    def _draw_step(self) -> None:
        """Stages one step of the draw; the turn's commit makes it durable."""
        self._draw_step_scheduled = False
        if self.draining:
            return
        try:
            if self.draw is None:
                number = self.config.winning_number
                if number == RANDOM_WINNING_NUMBER:
                    number = secrets.randbelow(10_000)
                self._draw_staged = self.store.stage_draw(number)
            else:
                self._draw_staged = self.store.stage_winner_scan(self.draw, DRAW_SCAN_SLICE)
        except StorageError as error:
            if error.transaction_lost:
                self._turn_lost = "the store lost the turn's transaction"
            self._draw_failed(str(error))

    def _draw_failed(self, why: str) -> None:
        """Backs the draw off (capped, doubling), logging once per attempt, not per turn."""
        self._draw_retry = min(DRAW_RETRY_CAP, self._draw_retry * 2 or DRAW_RETRY_FIRST)
        self._draw_resume_at = self._loop.time() + self._draw_retry
        log_event(log, logging.ERROR, "draw_step", "fail", error=why.replace("|", "/"),
                  retry_in_s=f"{self._draw_retry:.1f}")
        self._loop.call_at(self._draw_resume_at, self._advance_draw)

    # --- start and stop --------------------------------------------------------------
    def _adopt_database(self) -> None:
        """Makes sure the database holds this lottery, or refuses with LotteryMismatch."""
        config, store = self.config, self.store
        setting = config.winning_number_setting
        record, holdings = store.lottery(), store.holdings()
        if record is not None and not holdings.empty:
            fresh = "or a new --db to start a new lottery"
            if record.agencies != config.agencies:
                raise LotteryMismatch(
                    f"database {store.path} holds a lottery of {record.agencies} agencies ({_describe(holdings)}); "
                    f"started with {config.agencies}: start with --agencies {record.agencies}, {fresh}"
                )
            if holdings.draw is not None and record.winning_number != setting:
                raise LotteryMismatch(
                    f"database {store.path} holds a lottery drawn with winning number {record.winning_number!r} "
                    f"({_describe(holdings)}); started with {setting!r}: start with --winning-number "
                    f"{record.winning_number}, {fresh}"
                )
        if record is None or (record.agencies, record.winning_number) != (config.agencies, setting):
            store.record_lottery(config.agencies, setting)

    def _recover(self) -> None:
        for number, state in self.store.agencies().items():
            agency = self.agencies.get(number)
            if agency is not None:
                agency.committed = agency.staged = state.committed
                agency.done = agency.done_staged = state.done
        self.draw = self.store.draw()
        if self.draw_finished:
            self.winners = self.store.winners()  # a finished draw is not announced again
        log_event(
            log, logging.INFO, "recover", "success",
            agencies=len(self.agencies),
            bets=sum(agency.committed for agency in self.agencies.values()),
            committed=",".join(f"{a.number}={a.committed}" for a in self.agencies.values()),
            done=",".join(str(a.number) for a in self.agencies.values() if a.done) or "-",
            draw=self.draw_state,
        )
        self._advance_draw()

    @property
    def draw_state(self) -> str:
        """open (waiting for DONEs), drawing (fixed, scanning for winners), done."""
        if self.draw is None:
            return "open"
        return "done" if self.draw.finished else "drawing"

    def shutdown(self) -> None:
        """Draining: every session gets SHUTTING_DOWN after the answers it is owed.

        Sessions are ended DRAIN_SESSIONS_PER_TURN a turn, so a drain with thousands
        of sessions is many short turns, not one long one. A message that arrives
        meanwhile gets SHUTTING_DOWN too.
        """
        self.draining = True
        self._end_sessions(list(self.sessions))

    def _end_sessions(self, sessions: list[Session]) -> None:
        for session in sessions[:DRAIN_SESSIONS_PER_TURN]:
            self._loop.isolate(session.connection, session._fatal, ErrorCode.SHUTTING_DOWN,
                               "the server is shutting down; retry later")
        if len(sessions) > DRAIN_SESSIONS_PER_TURN:
            self._loop.call_soon(self._end_sessions, sessions[DRAIN_SESSIONS_PER_TURN:])


def _describe(holdings) -> str:
    draw = "no draw" if holdings.draw is None else ("draw done" if holdings.draw.finished else "draw started")
    return f"{holdings.bets} bets, {holdings.done} agencies done, {draw}"
