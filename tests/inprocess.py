"""The central's own objects in the test's process, turned by the test.

No subprocess and no wall clock: the test owns the loop's clock (`FakeClock`) and runs
turns until what it waits for has happened, so deadlines are exact and nothing
depends on how busy the machine is.
"""

from __future__ import annotations

import socket

import protocol as p
from reactor.connection import ConnectionLimits
from reactor.loop import EventLoop
from reactor.server import Server
from reactor.service import Lottery, LotteryConfig
from reactor.store import Store
from reactor.turn import TurnEnd


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class InProcessCentral:
    """A loop, store, lottery, server and end-of-turn step wired as `python -m reactor` does."""

    def __init__(self, db, agencies: int = 3, limits: ConnectionLimits | None = None,
                 max_connections: int = 100, clock: FakeClock | None = None, **lottery) -> None:
        self.clock = clock or FakeClock()
        self.loop = EventLoop(clock=self.clock)
        self.store = Store(db, "off")
        self.lottery = Lottery(self.store, LotteryConfig(agencies, **lottery), self.loop)
        self.server = Server(self.loop, self.lottery, "127.0.0.1", 0, limits or ConnectionLimits(),
                             max_connections, drain_timeout=1.0)
        self.loop.add_fault_listener(self.lottery.fault_in_turn)
        self.end_of_turn = TurnEnd(self.lottery, self.loop, self.server.budget)
        self.loop.set_end_of_turn(self.end_of_turn)
        self.port = self.server.port

    # A turn waits at most WAIT for the sockets: the fake clock never brings a timer
    # closer, and a test waiting for something that does not come must end.
    WAIT = 0.05

    def turn(self, count: int = 1) -> None:
        for _ in range(count):
            self.loop.run_once(self.WAIT)

    def turn_until(self, predicate, turns: int = 2000) -> bool:
        for _ in range(turns):
            if predicate():
                return True
            self.loop.run_once(self.WAIT)
        return predicate()

    def peer(self) -> "LoopPeer":
        return LoopPeer(self)

    def close(self) -> None:
        for connection in list(self.server.connections):
            connection.abort()
        self.loop.close()
        self.store.close()


class LoopPeer:
    """A protocol peer whose reads turn the in-process central until an answer is there."""

    def __init__(self, central: InProcessCentral) -> None:
        self.central = central
        self.sock = socket.create_connection(("127.0.0.1", central.port))
        self.sock.setblocking(False)
        self.decoder = p.FrameDecoder(p.Role.CLIENT)
        self.messages: list = []
        self.closed = False

    def send(self, *messages) -> "LoopPeer":
        data = b"".join(m if isinstance(m, bytes) else p.encode(m) for m in messages)
        self.sock.setblocking(True)
        self.sock.sendall(data)
        self.sock.setblocking(False)
        return self

    def _pump(self) -> None:
        while not self.closed:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except ConnectionResetError:
                data = b""
            self.decoder.receive_data(data)
            if not data:
                self.closed = True
            self.messages.extend(self.decoder.messages())

    def read(self, turns: int = 2000):
        """The next message (turning the central until it comes); None once closed."""
        def arrived():
            self._pump()
            return bool(self.messages) or self.closed

        assert self.central.turn_until(arrived, turns), "no answer"
        return self.messages.pop(0) if self.messages else None

    def hello(self, agency: int) -> p.Welcome:
        welcome = self.send(p.Hello(agency)).read()
        assert isinstance(welcome, p.Welcome), welcome
        return welcome

    def close(self) -> None:
        self.sock.close()
