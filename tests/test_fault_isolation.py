"""One fault ends only what it belongs to: the loop's rules, then the central in-process.

The central runs in the test's process (tests/inprocess.py) with a fake clock, so an
exception can be injected exactly where it hurts and every outcome is checked turn
by turn, without waiting on the wall clock.
"""

from __future__ import annotations

import logging
import selectors
import socket

import pytest

import protocol as p
from reactor.connection import ConnectionLimits
from reactor.loop import EventLoop
from reactor.session import Session
from tests.harness import bets
from tests.inprocess import FakeClock, InProcessCentral

E = p.ErrorCode


# --- the loop's rules -----------------------------------------------------------------------
class Owner:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.faults: list[BaseException] = []
        self.calls = 0

    def on_readable(self):
        self.calls += 1
        if self.fail:
            raise RuntimeError("handler broke")

    def tick(self):
        raise ValueError("timer broke")

    def fault(self, error):
        self.faults.append(error)


def test_a_failing_handler_timer_or_callback_is_isolated_and_the_loop_goes_on(caplog):
    loop = EventLoop(clock=FakeClock())
    heard = []
    loop.add_fault_listener(heard.append)
    pairs = [socket.socketpair() for _ in range(2)]
    broken, healthy = Owner(fail=True), Owner()
    for (reader, writer), owner in zip(pairs, (broken, healthy)):
        writer.send(b"x")
        loop.register(reader, selectors.EVENT_READ, owner)
    timer_owner = Owner()
    loop.call_later(0, timer_owner.tick)
    callback_owner = Owner()
    loop.call_soon(callback_owner.tick)
    with caplog.at_level(logging.ERROR):
        loop.run_once()
    assert healthy.calls == 1  # served although the other handler raised in the same turn
    assert [type(e) for e in broken.faults] == [RuntimeError]
    assert [type(e) for e in timer_owner.faults] == [ValueError]
    assert [type(e) for e in callback_owner.faults] == [ValueError]
    assert len(heard) == 3 and loop.faults == 3
    assert sum("action: fault | result: fail" in r.getMessage() for r in caplog.records) == 3
    assert all(r.exc_info for r in caplog.records)  # each once, with its traceback
    loop.run_once()  # the loop still turns
    for reader, writer in pairs:
        reader.close()
        writer.close()
    loop.close()


def test_a_fault_at_the_end_of_a_turn_ends_run():
    loop = EventLoop(clock=FakeClock())

    def end_of_turn():
        raise RuntimeError("the shared state moved half way")

    loop.set_end_of_turn(end_of_turn)
    loop.call_soon(lambda: None)
    with pytest.raises(RuntimeError):
        loop.run()
    loop.close()


# --- the central, in-process -------------------------------------------------------------------
@pytest.fixture
def central(tmp_path):
    central = InProcessCentral(tmp_path / "bets.db", agencies=3)
    yield central
    central.close()


def ack_or_retry(peer, batch: p.Bets) -> None:
    """Sends `batch` until it is ACKed: a rolled-back turn answers STORAGE_FAILED."""
    for _ in range(5):
        answer = peer.send(batch).read()
        if answer == p.Ack(batch.first, batch.count):
            return
        assert isinstance(answer, p.Error) and answer.code is E.STORAGE_FAILED, answer
    raise AssertionError("never acknowledged")


def test_a_fault_in_one_session_ends_that_connection_only(central, monkeypatch):
    healthy, broken = central.peer(), central.peer()
    healthy.hello(1)
    broken.hello(2)
    real_bets = Session._bets

    def bets_of_agency_2_break(session, batch):
        if session.agency.number == 2:
            raise RuntimeError("a bug in one session")
        return real_bets(session, batch)

    monkeypatch.setattr(Session, "_bets", bets_of_agency_2_break)
    healthy.send(bets(1, 3))
    broken.send(bets(1, 3))
    first = healthy.read()
    # the same turn's batch was staged beside the fault: rolled back, or stored if it came first
    assert first == p.Ack(1, 3) or (first.code is E.STORAGE_FAILED and first.first == 1), first
    assert broken.read() is None  # aborted
    if first != p.Ack(1, 3):
        ack_or_retry(healthy, bets(1, 3))
    ack_or_retry(healthy, bets(4, 2))
    assert central.peer().hello(3) == p.Welcome(committed=0)  # new sessions are served
    assert central.store.agencies()[1].committed == 5
    assert 2 not in central.store.agencies()


def test_a_fault_inside_the_store_rolls_the_turn_back_and_the_central_goes_on(central, monkeypatch):
    peer, other = central.peer(), central.peer()
    peer.hello(1)
    other.hello(2)
    ack_or_retry(other, bets(1, 2))
    real_stage = central.store.stage_bets
    calls = []

    def stage_breaks_once(*args):
        calls.append(args)
        if len(calls) == 1:
            real_stage(*args)  # half the work done, then a non-SQLite error
            raise RuntimeError("the store broke mid-piece")
        return real_stage(*args)

    monkeypatch.setattr(central.store, "stage_bets", stage_breaks_once)
    peer.send(bets(1, 4))
    assert peer.read() is None  # that connection ended
    assert 1 not in central.store.agencies()  # the turn was rolled back: not even its progress row
    again = central.peer()
    assert again.hello(1) == p.Welcome(committed=0)  # nothing of the broken turn was committed
    ack_or_retry(again, bets(1, 4))
    assert central.store.agencies()[1].committed == 4
    assert central.store.agencies()[2].committed == 2


def test_a_fault_in_a_deadline_timer_ends_that_connection_only(tmp_path, monkeypatch):
    clock = FakeClock()
    central = InProcessCentral(tmp_path / "bets.db", limits=ConnectionLimits(handshake_timeout=5, idle_timeout=60),
                               clock=clock)
    try:
        silent, agency = central.peer(), central.peer()
        assert central.turn_until(lambda: len(central.server.connections) == 2)
        agency.hello(1)

        def timed_out_breaks(session, what):
            raise RuntimeError("a bug in the timeout path")

        monkeypatch.setattr(Session, "timed_out", timed_out_breaks)
        clock.advance(6)  # past the silent one's handshake deadline; the agency is within its idle one
        assert silent.read() is None
        assert central.loop.faults == 1
        ack_or_retry(agency, bets(1, 2))
    finally:
        central.close()


# --- admission: silent sockets never lock an agency out ------------------------------------------
def test_silent_sockets_at_the_limit_make_room_for_an_agency(tmp_path):
    central = InProcessCentral(tmp_path / "bets.db", max_connections=8)
    try:
        silent = [central.peer() for _ in range(20)]  # far more than the limit, none says HELLO
        assert central.turn_until(lambda: central.server.accepted >= 20)
        assert len(central.server.connections) <= 8
        agency = central.peer()
        assert agency.hello(1) == p.Welcome(committed=0)
        identified = central.peer()
        assert identified.hello(2) == p.Welcome(committed=0)
        refused = []
        for peer in silent:
            peer._pump()
            refused += peer.messages
            peer.close()
        assert len(refused) >= 12 and {m.code for m in refused} == {E.SERVER_BUSY}
    finally:
        central.close()


# --- a turn is bounded in frames, not only bytes -------------------------------------------------------
def test_a_flood_of_tiny_frames_is_cut_into_turns_of_the_frame_budget(central):
    flood = central.peer()
    flood.hello(1)
    invalid = p.encode(p.Bets(1, (p.Bet("A", "B", "x", "1990-01-01", 1),)))  # INVALID_BET, non-fatal
    other = central.peer()
    other.hello(2)
    flood.send(invalid * 1500)
    budget = central.server.budget
    handled = []
    answers = 0
    while answers < 1500:
        central.turn()
        flood._pump()
        handled.append(len(flood.messages) - answers)
        answers = len(flood.messages)
        assert len(handled) < 100
    assert max(handled) <= 256 == budget.frames_per_turn  # the promise, not whatever the budget says
    assert all(m.code is E.INVALID_BET for m in flood.messages)
    ack_or_retry(other, bets(1, 1))


# --- the frame deadline under a steady stream -------------------------------------------------
def test_a_steady_pipelined_stream_is_never_cut_by_the_frame_deadline(tmp_path):
    """Reads that end mid-frame while whole frames flow are progress: the frame clock
    belongs to the frame now arriving, not to the first one a read ever cut."""
    clock = FakeClock()
    central = InProcessCentral(tmp_path / "bets.db", agencies=1, clock=clock,
                               limits=ConnectionLimits(frame_timeout=2.0, idle_timeout=60))
    try:
        peer = central.peer()
        peer.hello(1)
        stream = b"".join(p.encode(bets(first, 7)) for first in range(1, 7 * 60, 7))
        acked = 0
        for offset in range(0, len(stream), 500):  # 500 bytes a turn: nearly every read ends mid-frame
            peer.sock.setblocking(True)
            peer.sock.sendall(stream[offset: offset + 500])
            peer.sock.setblocking(False)
            central.turn(2)
            clock.advance(0.25)  # 20 s of steady flow in all, ten frame timeouts
            peer._pump()
            assert not any(isinstance(m, p.Error) for m in peer.messages), peer.messages
            acked = len(peer.messages)
        assert central.turn_until(lambda: (peer._pump(), len(peer.messages) == 60)[1])
        assert acked > 0
    finally:
        central.close()
