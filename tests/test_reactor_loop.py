"""The event loop's own rules, without the lottery."""

from __future__ import annotations

import selectors
import socket

from reactor.loop import EventLoop
from tests.inprocess import FakeClock


class Recorder:
    def __init__(self, name, calls, on_read=None):
        self.name, self.calls, self.on_read = name, calls, on_read

    def on_readable(self):
        self.calls.append(self.name)
        if self.on_read:
            self.on_read()

    def on_writable(self):
        self.calls.append(self.name + " writable")


def test_a_handler_unregistered_earlier_in_the_turn_is_not_called():
    loop = EventLoop()
    pairs = [socket.socketpair() for _ in range(2)]
    calls = []
    for reader, writer in pairs:
        writer.send(b"x")  # both readers are ready in the same select
    first, second = pairs[0][0], pairs[1][0]

    def close_the_other(other):
        def close():
            loop.unregister(other)
            other.close()
        return close

    # whichever the selector reports first closes the other one
    loop.register(first, selectors.EVENT_READ, Recorder("first", calls, close_the_other(second)))
    loop.register(second, selectors.EVENT_READ, Recorder("second", calls, close_the_other(first)))
    loop.run_once()
    assert len(calls) == 1, calls
    for _, writer in pairs:
        writer.close()
    loop.close()


def test_timers_run_in_order_when_due_and_cancelled_ones_never():
    clock = FakeClock()
    loop = EventLoop(clock=clock)
    calls = []
    loop.call_later(0.02, calls.append, "late")
    cancelled = loop.call_later(0.01, calls.append, "cancelled")
    loop.call_later(0.0, calls.append, "soon")
    cancelled.cancel()
    loop.run_once()
    assert calls == ["soon"]
    clock.advance(0.02)
    loop.run_once()
    assert calls == ["soon", "late"]
    loop.close()


def test_callbacks_scheduled_by_callbacks_wait_for_the_next_turn():
    loop = EventLoop()
    calls = []
    loop.call_soon(lambda: (calls.append(1), loop.call_soon(calls.append, 2)))
    loop.run_once()
    assert calls == [1]
    loop.run_once()
    assert calls == [1, 2]
    loop.close()


def test_a_turn_serves_at_most_max_events_and_the_rest_come_next_turn(monkeypatch):
    monkeypatch.setattr("reactor.loop.MAX_EVENTS_PER_TURN", 8)
    loop = EventLoop()
    pairs = [socket.socketpair() for _ in range(20)]
    calls = []
    for index, (reader, writer) in enumerate(pairs):
        writer.send(b"x")

        def drain(reader=reader):
            reader.recv(1)  # served once: no longer ready
        loop.register(reader, selectors.EVENT_READ, Recorder(index, calls, drain))
    turns = []
    while len(calls) < len(pairs):
        loop.run_once()
        turns.append(len(calls))
    assert turns == [8, 16, 20]
    assert sorted(calls) == list(range(len(pairs)))  # each served exactly once
    for reader, writer in pairs:
        reader.close()
        writer.close()
    loop.close()


def test_a_turn_reads_no_more_than_the_turn_budget():
    import protocol as p
    from reactor.connection import Connection, ConnectionLimits, TurnBudget

    class Handler:
        def __init__(self):
            self.messages = []

        def message_received(self, message):
            self.messages.append(message)

        protocol_error = eof_received = timed_out = connection_lost = lambda self, *args: None

    loop = EventLoop()
    server_side, peer = socket.socketpair()
    server_side.setblocking(False)
    budget = TurnBudget(per_turn=10_000)
    handler = Handler()
    connection = Connection(loop, server_side, "test", ConnectionLimits(), lambda c: None, budget)
    connection.start(handler)
    bets = tuple(p.Bet("Ana", "Gómez", f"{n:08d}", "1990-01-01", n) for n in range(150))
    frames = [p.encode(p.Bets(first, bets)) for first in range(1, 1 + 5 * 150, 150)]
    peer.sendall(b"".join(frames))  # ~40 KB, well inside the socket buffer
    read_per_turn = []
    while len(handler.messages) < len(frames):
        loop.run_once()
        read_per_turn.append(budget.per_turn - budget.remaining)
        budget.reset()
    assert max(read_per_turn) <= budget.per_turn
    assert sum(read_per_turn) == sum(map(len, frames))
    connection.abort()
    peer.close()
    loop.close()


def test_readers_that_declined_go_first_next_turn_so_none_starves():
    loop = EventLoop()
    pairs = [socket.socketpair() for _ in range(6)]
    budget = {"reads_left": 0, "turn": 0}
    served = []

    class Reader:
        def __init__(self, index, sock):
            self.index, self.sock = index, sock

        def on_readable(self):
            if budget["reads_left"] <= 0:
                return False  # declined, as a connection does when the turn's budget is spent
            budget["reads_left"] -= 1
            self.sock.recv(1)  # plenty stays buffered: still ready next turn
            served.append((budget["turn"], self.index))

    for index, (reader, writer) in enumerate(pairs):
        writer.send(b"x" * 100)
        loop.register(reader, selectors.EVENT_READ, Reader(index, reader))
    for turn in range(6):
        budget.update(reads_left=2, turn=turn)
        loop.run_once()
    # six readers, two reads a turn: every reader within the first three turns, twice in six
    assert {index for turn, index in served if turn < 3} == set(range(6))
    assert sorted(index for _, index in served) == sorted(list(range(6)) * 2)
    for reader, writer in pairs:
        reader.close()
        writer.close()
    loop.close()
