"""The connection (reactor/connection.py) in-process: a socketpair, the loop, a fake clock.

Every deadline is checked exactly, a hair before and a hair after it, by moving the
loop's clock (`FakeClock`); no test sleeps or reads the wall clock. A turn never waits
in `select` (see `Rig.turn`), so each test runs in milliseconds however busy the
machine is.

The kernel's send buffer is the one thing a socketpair does not let a test set to
the byte, so the connection's socket is a `Metered` socket: the real socketpair end,
whose `send` takes at most `room` bytes when the test says so. That makes the send
buffer's water marks exact too.
"""

from __future__ import annotations

import selectors
import socket
from contextlib import contextmanager
from typing import Callable, NamedTuple

import pytest

import protocol as p
from reactor import connection as conn_module
from reactor import session as session_module
from reactor.connection import Connection, ConnectionLimits, State, TurnBudget
from reactor.loop import EventLoop
from reactor.service import Lottery, LotteryConfig
from reactor.session import SessionState
from reactor.store import Store
from tests.harness import BET, FakeConnection, FakeLoop
from tests.inprocess import FakeClock

HAIR = 0.001  # seconds: "just before" and "just after" a deadline
LIMITS = ConnectionLimits(handshake_timeout=5, idle_timeout=60, frame_timeout=10, linger=5,
                          high_water=64 * 1024, low_water=16 * 1024)
HELLO = p.encode(p.Hello(1))
BETS = p.encode(p.Bets(1, (BET,)))


class Metered:
    """A socketpair end whose `send` takes at most `room` bytes (None: what the kernel takes).

    `room` stands for the free space of the kernel's send buffer, so a test decides to
    the byte how much of a write is queued; everything else is the real socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.room: int | None = None

    def send(self, data) -> int:
        if self.room is None:
            return self.sock.send(data)
        if self.room == 0:
            raise BlockingIOError
        sent = self.sock.send(memoryview(data)[: self.room])
        self.room -= sent
        return sent

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        return self.sock.recv(size)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


class Recorder:
    """A handler that records what the connection tells it; `on_message` may act on it."""

    def __init__(self) -> None:
        self.events: list = []
        self.on_message = None

    def message_received(self, message) -> None:
        self.events.append(message)
        if self.on_message is not None:
            self.on_message(message)

    def protocol_error(self, error) -> None:
        self.events.append(("protocol_error", error.code))

    def eof_received(self) -> None:
        self.events.append("eof")

    def timed_out(self, what: str) -> None:
        self.events.append(("timed_out", what))

    def connection_lost(self, reason: str) -> None:
        self.events.append(("lost", reason))

    @property
    def messages(self) -> list:
        return [event for event in self.events if not isinstance(event, (str, tuple))]

    def timeouts(self) -> list[str]:
        return [event[1] for event in self.events if isinstance(event, tuple) and event[0] == "timed_out"]


class Rig:
    """One connection over a socketpair, its loop on a fake clock, and the peer's end."""

    def __init__(self, limits: ConnectionLimits = LIMITS, budget: TurnBudget | None = None) -> None:
        self.clock = FakeClock()
        self.started = self.clock.now
        self.loop = EventLoop(clock=self.clock)
        server_end, self.peer = socket.socketpair()
        server_end.setblocking(False)
        self.peer.setblocking(False)
        self.sock = Metered(server_end)
        self.budget = budget or TurnBudget()
        self.loop.set_end_of_turn(self.budget.reset)  # what the central's end of turn does with it
        self.closed: list[Connection] = []
        self.connection = Connection(self.loop, self.sock, "peer", limits, self.closed.append, self.budget)
        self.handler = Recorder()
        self.connection.start(self.handler)

    def turn(self, count: int = 1) -> None:
        """Loop turns that never wait in select: a ready callback makes its timeout 0."""
        for _ in range(count):
            self.loop.call_soon(_nothing)
            self.loop.run_once()

    def at(self, seconds: float) -> None:
        """Moves the clock to `seconds` after the rig was made, then turns."""
        self.clock.now = self.started + seconds
        self.turn(2)

    def send(self, data: bytes) -> None:
        self.peer.sendall(data)
        self.turn(2)

    def received(self) -> bytes:
        """What the peer can read now (up to a FIN, which stays to be seen)."""
        chunks = []
        while True:
            try:
                data = self.peer.recv(1 << 20)
            except BlockingIOError:
                data = b""
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def peer_sees_fin(self) -> bool:
        try:
            return self.peer.recv(1 << 20) == b""  # after a FIN, every read is empty
        except BlockingIOError:
            return False

    @property
    def reading(self) -> bool:
        """Whether the loop watches the socket for reading."""
        fd = self.sock.fileno()
        key = self.loop.selector.get_map().get(fd) if fd >= 0 else None  # -1: the socket is closed
        return key is not None and bool(key.events & selectors.EVENT_READ)

    def close(self) -> None:
        self.connection.abort()
        self.peer.close()
        self.loop.close()


def _nothing() -> None:
    pass


@pytest.fixture
def rig():
    rig = Rig()
    yield rig
    rig.close()


def identified(rig: Rig) -> None:
    """The peer's first message arrives now."""
    rig.send(HELLO)
    assert rig.handler.messages == [p.Hello(1)]


def expires_exactly(rig: Rig, seconds: float, what: str) -> None:
    """No deadline passes a hair before `seconds` (after the start); `what` passes a hair after."""
    rig.at(seconds - HAIR)
    assert rig.handler.timeouts() == []
    rig.at(seconds + HAIR)
    assert rig.handler.timeouts() == [what]


# --- deadlines ----------------------------------------------------------------------------
def test_the_handshake_deadline_is_exact(rig):
    rig.at(5 - HAIR)
    assert rig.handler.timeouts() == []
    assert rig.connection.state is State.OPEN
    rig.at(5 + HAIR)
    assert rig.handler.timeouts() == ["handshake"]
    assert rig.connection.state is State.INPUT_ENDED  # nothing more is read; the handler answers


def test_bytes_of_an_unfinished_hello_do_not_move_the_handshake_deadline(rig):
    for second in range(1, 5):
        rig.at(second)
        rig.send(HELLO[second - 1 : second])  # a byte a second: progress to no one
    expires_exactly(rig, 5, "handshake")


def test_the_idle_deadline_is_exact_and_a_message_in_or_bytes_out_restart_it(rig):
    identified(rig)  # at 0
    rig.at(30)
    rig.send(p.encode(p.Done()))  # a message in at 30
    rig.at(90 - HAIR)
    assert rig.handler.timeouts() == []
    rig.connection.write(b"an answer")  # bytes out at 90 - HAIR
    rig.at(150 - 2 * HAIR)
    assert rig.handler.timeouts() == []
    rig.at(150)
    assert rig.handler.timeouts() == ["idle"]


def test_the_idle_deadline_does_not_run_while_the_handler_holds_reading(rig):
    rig.handler.on_message = lambda message: rig.connection.hold_reading()
    identified(rig)
    rig.at(10_000)  # far past any deadline
    assert rig.handler.timeouts() == []
    assert not rig.reading
    rig.connection.write(b"the held answer")  # as the session does: the answer, then reading again
    rig.connection.release_reading()
    rig.at(10_060 - HAIR)
    assert rig.handler.timeouts() == []
    assert rig.reading
    rig.at(10_060 + HAIR)
    assert rig.handler.timeouts() == ["idle"]


def test_the_frame_deadline_is_exact_whatever_bytes_trickle_in(rig):
    identified(rig)
    rig.at(1)
    rig.send(BETS[:4])  # a frame starts at 1
    for second in range(2, 11):
        rig.at(second)
        rig.send(BETS[second + 2 : second + 3])  # a byte a second: the frame still is not done
    expires_exactly(rig, 11, "frame")
    assert rig.handler.messages == [p.Hello(1)]


def test_a_finished_frame_stops_the_frame_clock(rig):
    identified(rig)
    rig.send(BETS[:10])
    rig.at(9)
    rig.send(BETS[10:])
    rig.at(11 + HAIR)
    assert rig.handler.timeouts() == []
    assert rig.handler.messages == [p.Hello(1), p.Bets(1, (BET,))]


def test_the_frame_clock_does_not_run_while_the_handler_holds_reading(rig):
    rig.handler.on_message = lambda message: rig.connection.hold_reading()
    rig.send(HELLO + BETS[:10])  # the query is held with half a frame behind it
    rig.at(10_000)
    assert rig.handler.timeouts() == []
    rig.connection.write(b"the held answer")
    rig.handler.on_message = None
    rig.connection.release_reading()
    rig.turn(2)  # the frame clock starts again now that the half frame is read: at 10,000
    expires_exactly(rig, 10_010, "frame")


def test_the_frame_clock_does_not_run_while_the_peer_does_not_read_our_answers(rig):
    identified(rig)
    rig.send(BETS[:10])  # a frame starts at 0
    rig.sock.room = 0  # the peer reads nothing: what we write stays queued
    rig.connection.write(b"x" * (LIMITS.high_water + 1))
    assert not rig.reading
    rig.at(30)  # past the frame deadline (10), within the idle one (60)
    assert rig.handler.timeouts() == []
    rig.sock.room = None  # the peer reads again
    rig.turn(2)
    assert rig.received() == b"x" * (LIMITS.high_water + 1)
    assert rig.reading  # and the frame clock starts again: at 30
    expires_exactly(rig, 40, "frame")


# --- the send buffer's water marks ---------------------------------------------------------
def test_reading_pauses_above_high_water_and_resumes_at_low_water(rig):
    identified(rig)
    rig.sock.room = 0
    rig.connection.write(b"x" * LIMITS.high_water)
    assert rig.reading  # at the mark, not above it
    rig.connection.write(b"x")
    assert not rig.reading
    rig.send(p.encode(p.Done()))
    assert rig.handler.messages == [p.Hello(1)]  # paused: nothing more is read
    queued = LIMITS.high_water + 1
    rig.sock.room = queued - LIMITS.low_water - 1
    rig.turn(2)
    assert not rig.reading  # one byte above low water
    rig.sock.room = 1
    rig.turn(2)
    assert rig.reading  # at low water: reading again, and what waited is read
    assert rig.handler.messages == [p.Hello(1), p.Done()]
    rig.sock.room = None
    rig.turn(2)
    assert rig.received() == b"x" * queued  # every byte, in order


def test_a_peer_that_never_reads_is_paused_and_resumes_when_it_reads_again(rig):
    """The same with the kernel's real buffers: what is queued is whatever they did not take."""
    identified(rig)
    answers = []
    while rig.reading:  # the peer reads nothing: the kernel's buffers fill, then our queue
        assert len(answers) < 10_000, "never paused"
        answers.append(p.Winners((f"{len(answers):08d}",) * 400))  # ~4 KB each
        rig.connection.write(p.encode(answers[-1]))
    decoder = p.FrameDecoder(p.Role.CLIENT)
    got: list = []
    for _ in range(10_000):  # the peer reads again, until every answer is in
        data = rig.received()
        if data:
            decoder.receive_data(data)
            got += decoder.messages()
        if len(got) == len(answers):
            break
        rig.turn()
    assert got == answers  # every answer, in order
    assert rig.reading


@pytest.mark.parametrize("high, low", [(8192, 0), (100, 0), (16384, 16384), (16384, 20000), (16384, -1)])
def test_the_read_pause_threshold_is_above_one_frame_and_low_water_below_it(high, low):
    # A threshold of one frame or less could pause a connection that never resumes (python/asyncio#99).
    with pytest.raises(ValueError):
        ConnectionLimits(high_water=high, low_water=low)


def test_one_whole_frame_queued_never_pauses_reading_at_the_smallest_high_water():
    rig = Rig(ConnectionLimits(high_water=p.MAX_FRAME_SIZE + 1, low_water=0))
    try:
        identified(rig)
        rig.sock.room = 0
        rig.connection.write(b"x" * p.MAX_FRAME_SIZE)
        assert rig.reading  # a whole frame is queued and reading goes on
        rig.connection.write(b"xx")
        assert not rig.reading
    finally:
        rig.close()


# --- half-close ---------------------------------------------------------------------------
def test_a_half_close_is_told_after_every_message_before_it_and_answers_still_go_out():
    rig = Rig(budget=TurnBudget(frames_per_turn=2))  # five messages take three turns
    try:
        done = p.encode(p.Done())
        rig.peer.sendall(HELLO + done * 4)
        rig.peer.shutdown(socket.SHUT_WR)
        rig.turn(6)
        assert rig.handler.events == [p.Hello(1), p.Done(), p.Done(), p.Done(), p.Done(), "eof"]
        assert rig.connection.state is State.INPUT_ENDED
        rig.connection.write(b"the answers")
        assert rig.received() == b"the answers"
    finally:
        rig.close()


def test_a_half_close_in_the_middle_of_a_frame_is_a_malformed_frame(rig):
    rig.peer.sendall(HELLO + BETS[:7])
    rig.peer.shutdown(socket.SHUT_WR)
    rig.turn(2)
    assert rig.handler.events == [p.Hello(1), ("protocol_error", p.ErrorCode.MALFORMED_FRAME)]
    assert rig.connection.state is State.INPUT_ENDED


# --- ending: close, lingering close, abort --------------------------------------------------
def test_close_flushes_then_lingers_discarding_input_until_the_peer_closes(rig):
    identified(rig)
    rig.sock.room = 0
    rig.connection.write(b"last words")
    rig.connection.close()
    assert rig.connection.state is State.CLOSING
    assert rig.received() == b""  # nothing sent yet, and no FIN before the queue is out
    rig.sock.room = None
    rig.turn()
    assert rig.connection.state is State.LINGERING
    assert rig.received() == b"last words"
    assert rig.peer_sees_fin()
    rig.send(p.encode(p.Done()) * 3)  # the peer still talks: read and thrown away
    assert rig.handler.messages == [p.Hello(1)]
    assert rig.connection.state is State.LINGERING
    rig.peer.shutdown(socket.SHUT_WR)  # the peer closes too
    rig.turn()
    assert rig.connection.state is State.CLOSED
    assert rig.handler.events[-1] == ("lost", "closed by the server")
    assert rig.closed == [rig.connection]


@pytest.mark.parametrize("linger, waits", [(5, conn_module.LINGER_MAX), (0.5, 0.5)])
def test_a_lingering_close_ends_after_the_linger_time_when_the_peer_never_closes(linger, waits):
    rig = Rig(ConnectionLimits(linger=linger))
    try:
        rig.clock.now = rig.started + 7
        rig.connection.close()  # nothing queued: FIN at once
        assert rig.connection.state is State.LINGERING
        rig.at(7 + waits - HAIR)
        assert rig.connection.state is State.LINGERING
        rig.at(7 + waits + HAIR)
        assert rig.connection.state is State.CLOSED
        assert rig.handler.events == [("lost", "closed by the server")]
    finally:
        rig.close()


def test_a_close_whose_queue_never_drains_is_aborted_after_the_linger_time(rig):
    rig.sock.room = 0
    rig.connection.write(b"never read")
    rig.connection.close()
    rig.at(5 - HAIR)
    assert rig.connection.state is State.CLOSING
    rig.at(5 + HAIR)
    assert rig.connection.state is State.CLOSED
    assert rig.handler.events == [("lost", "send did not drain before close")]


def test_abort_drops_the_queue_and_closes_now_once(rig):
    identified(rig)
    rig.sock.room = 0
    rig.connection.write(b"dropped")
    rig.connection.abort()
    assert rig.connection.state is State.CLOSED and rig.connection.closed
    assert rig.peer.recv(100) == b""  # closed, and the queue never sent
    rig.connection.abort()
    rig.connection.close()
    rig.connection.write(b"ignored")
    assert rig.handler.events[1:] == [("lost", "aborted by the server")]
    assert rig.closed == [rig.connection]
    assert not rig.reading


# --- the connection's lifecycle ----------------------------------------------------------------------
def _eof(rig: Rig) -> None:
    rig.peer.shutdown(socket.SHUT_WR)
    rig.turn()


def _close_with_a_queue(rig: Rig) -> None:
    rig.sock.room = 0
    rig.connection.write(b"queued")
    rig.connection.close()


def _close_empty(rig: Rig) -> None:
    rig.connection.close()


def _drain(rig: Rig) -> None:
    rig.sock.room = None
    rig.turn()


def _linger_passes(rig: Rig) -> None:
    rig.at(LIMITS.linger + HAIR)


def _peer_closes(rig: Rig) -> None:
    rig.peer.close()
    rig.turn()


def _abort(rig: Rig) -> None:
    rig.connection.abort()


# How to reach each state from a new connection, through the public API only.
REACH = {
    State.OPEN: [],
    State.INPUT_ENDED: [_eof],
    State.CLOSING: [_close_with_a_queue],
    State.LINGERING: [_close_empty],
    State.CLOSED: [_abort],
}
# Every move the lifecycle allows (the module docstring's picture), each made by a public call.
CONNECTION_MOVES = {
    (State.OPEN, State.INPUT_ENDED): _eof,
    (State.OPEN, State.CLOSING): _close_with_a_queue,
    (State.OPEN, State.CLOSED): _abort,
    (State.INPUT_ENDED, State.CLOSING): _close_with_a_queue,
    (State.INPUT_ENDED, State.CLOSED): _abort,
    (State.CLOSING, State.LINGERING): _drain,
    (State.CLOSING, State.CLOSED): _linger_passes,
    (State.LINGERING, State.CLOSED): _peer_closes,
}


# --- the session's table --------------------------------------------------------------------------
class SessionRig:
    """A session of a two-agency lottery on an in-memory store, with a recording connection."""

    def __init__(self) -> None:
        self.loop = FakeLoop()
        self.store = Store(":memory:", "off")
        self.lottery = Lottery(self.store, LotteryConfig(agencies=2), self.loop)
        self.connection = FakeConnection()
        self.session = self.lottery.new_session(self.connection)

    def send(self, *messages) -> None:
        for message in messages:
            self.session.message_received(message)
        self.loop.run_ready()
        self.lottery.end_of_turn()

    def close(self) -> None:
        self.store.close()


def _hello(rig: SessionRig) -> None:
    rig.send(p.Hello(1))


def _hold(rig: SessionRig) -> None:
    rig.send(p.Done())
    rig.send(p.WinnersQuery())  # agency 2 is not done: no draw yet


def _answer_held(rig: SessionRig) -> None:
    rig.session.answer_held_query([])


def _bets_in_this_turn(rig: SessionRig) -> None:
    rig.session.message_received(p.Bets(1, (BET,)))  # its ACK waits for the turn's commit


def _peer_fin(rig: SessionRig) -> None:
    rig.session.eof_received()


def _fatal(rig: SessionRig) -> None:
    rig.session.end(p.ErrorCode.SHUTTING_DOWN, "the server is shutting down")


def _lost(rig: SessionRig) -> None:
    rig.session.connection_lost("peer gone")


S = SessionState
SESSION_REACH = {
    S.GREETING: [],
    S.SERVING: [_hello],
    S.HOLDING: [_hello, _hold],
    S.FINISHING: [_hello, _bets_in_this_turn, _peer_fin],  # an answer is owed: not closed yet
    S.ENDING: [_fatal],
    S.ENDED: [_lost],
}
SESSION_MOVES = {
    (S.GREETING, S.SERVING): _hello,
    (S.GREETING, S.FINISHING): _peer_fin,
    (S.GREETING, S.ENDING): lambda rig: rig.send(p.Done()),  # HELLO_REQUIRED
    (S.GREETING, S.ENDED): _lost,
    (S.SERVING, S.HOLDING): _hold,
    (S.SERVING, S.FINISHING): _peer_fin,
    (S.SERVING, S.ENDING): lambda rig: rig.send(p.Hello(1)),  # a second HELLO
    (S.SERVING, S.ENDED): _lost,
    (S.HOLDING, S.SERVING): _answer_held,
    (S.HOLDING, S.ENDING): lambda rig: rig.lottery.new_session(FakeConnection()).message_received(p.Hello(1)),
    (S.HOLDING, S.ENDED): _lost,
    (S.FINISHING, S.ENDING): _fatal,
    (S.FINISHING, S.ENDED): _lost,
    (S.ENDING, S.ENDED): _lost,
}


# --- both tables, through the public API ------------------------------------------------------------
class Lifecycle(NamedTuple):
    """A state machine under test: its module (`_TRANSITIONS`, `IllegalTransition`), its
    states, a rig holding a new one, how to reach each state, and every allowed move."""

    module: object
    states: type
    make_rig: Callable
    machine: Callable  # rig -> the object whose state moves
    reach: dict
    moves: dict


LIFECYCLES = {
    "connection": Lifecycle(conn_module, State, Rig, lambda rig: rig.connection, REACH, CONNECTION_MOVES),
    "session": Lifecycle(session_module, SessionState, SessionRig, lambda rig: rig.session, SESSION_REACH,
                         SESSION_MOVES),
}
ALLOWED = [(name, move) for name, life in LIFECYCLES.items() for move in life.moves]
ILLEGAL = [(name, (old, new)) for name, life in LIFECYCLES.items()
           for old in life.states for new in life.states if (old, new) not in life.moves]


def _case_id(case) -> str:
    name, (old, new) = case
    return f"{name}:{old.name}->{new.name}"


@pytest.mark.parametrize("name", list(LIFECYCLES))
def test_the_table_is_the_documented_lifecycle(name):
    life = LIFECYCLES[name]
    table = {(old, new) for old, targets in life.module._TRANSITIONS.items() for new in targets}
    assert table == set(life.moves)
    assert set(life.module._TRANSITIONS) == set(life.states)


@contextmanager
def reached(life: Lifecycle, state):
    """A new rig whose machine public calls brought to `state`."""
    rig = life.make_rig()
    try:
        for step in life.reach[state]:
            step(rig)
        assert life.machine(rig).state is state
        yield rig
    finally:
        rig.close()


@pytest.mark.parametrize("case", ALLOWED, ids=_case_id)
def test_each_allowed_move_is_made_by_a_public_call(case):
    name, (old, new) = case
    life = LIFECYCLES[name]
    with reached(life, old) as rig:
        life.moves[old, new](rig)
        assert life.machine(rig).state is new


@pytest.mark.parametrize("case", ILLEGAL, ids=_case_id)
def test_every_other_move_raises_illegal_transition(case):
    name, (old, new) = case
    life = LIFECYCLES[name]
    with reached(life, old) as rig:
        with pytest.raises(life.module.IllegalTransition):
            life.machine(rig)._move(new)  # what a bug inside it would do
        assert life.machine(rig).state is old


def test_a_connection_lost_twice_is_a_callers_bug():
    rig = SessionRig()
    try:
        _lost(rig)
        with pytest.raises(session_module.IllegalTransition):
            _lost(rig)
    finally:
        rig.close()
