"""The designs people would otherwise pick, for comparison: same protocol, different I/O.
`python -m bench.servers KIND --port P --db D` (KIND: see SERVERS).

On the central's own lottery service and SQLite store (reactor/service.py,
reactor/store.py), each turn or frame ended by the central's own end-of-turn step
(reactor/turn.py `TurnEnd`), so only the I/O layer and the commit cadence differ:
- asyncio: an `asyncio.Protocol` per connection, written the straightforward way:
  each frame is handled and committed before the next (a commit per BETS frame).
- uvloop: the same server on uvloop's event loop (a development-only dependency:
  `pip install '.[bench]'`).
- asyncio-turn: the asyncio server with the central's group commit ported onto it
  (one commit per burst of `data_received` calls). The control, not a peer: against
  it only the loop and the connections differ.
- threaded: `socketserver.ThreadingTCPServer`, a thread per connection; one lock
  around the service and store, a commit after each burst a thread decoded.
Issue 16's reference kind, which promises less (an ACK once the bets are handed to
the OS, never fsynced) and so does less per bet:
- asyncio-csv / uvloop-csv: an `asyncio.Protocol` server the way the course's
  servers are written: it validates each batch, appends it to a CSV file, flushes
  it to the OS and ACKs; at the draw it reads the file back.
And the load generator's ceiling:
- null: ACKs every batch at once, stores nothing.
Every server prints the same `accept_connections` line as the central, so the bench finds the port.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import logging
import signal
import socket
import socketserver
import sqlite3
import sys
import threading
import time

import protocol as p
from reactor.service import Lottery, LotteryConfig
from reactor.store import Store
from reactor.turn import TurnEnd
from runtime.logfmt import configure_logging, log_event

log = logging.getLogger("bench.servers")


def announce(port: int) -> None:
    print(f"action: accept_connections | result: in_progress | port: {port}", flush=True)


def end_turn(lottery: Lottery) -> None:
    """The central's own end of a turn (commit, answer, checkpoint when due), without a loop."""
    TurnEnd(lottery)()


# --- asyncio ------------------------------------------------------------------------
class _AsyncioConnection:
    """The service's view of an asyncio transport."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.peer = "asyncio"

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def hold_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def release_reading(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        self.transport.close()


class _LotteryProtocol(asyncio.Protocol):
    def __init__(self, lottery: Lottery, schedule_commit, commit_each_frame: bool) -> None:
        self.lottery = lottery
        self.schedule_commit = schedule_commit
        self.commit_each_frame = commit_each_frame

    def connection_made(self, transport) -> None:
        self.decoder = p.FrameDecoder(p.Role.SERVER)
        self.session = self.lottery.new_session(_AsyncioConnection(transport))

    def data_received(self, data: bytes) -> None:
        try:
            self.decoder.receive_data(data)
            while (message := self.decoder.next_message()) is not p.NEED_DATA:
                if message is p.PEER_CLOSED:
                    break
                self.session.message_received(message)
                if self.commit_each_frame:
                    end_turn(self.lottery)
        except p.ProtocolError as error:
            self.session.protocol_error(error)
        self.schedule_commit()

    def eof_received(self):
        self.session.eof_received()
        return True

    def connection_lost(self, exc) -> None:
        self.session.connection_lost("closed")


class _CommittingLoop:
    """The loop the service schedules its own work on (the draw): each callback is
    followed by a commit, as the central's end-of-turn hook does."""

    def __init__(self, loop: asyncio.AbstractEventLoop, schedule_commit) -> None:
        self._loop = loop
        self._schedule_commit = schedule_commit

    def _run(self, callback, args) -> None:
        callback(*args)
        self._schedule_commit()

    def call_soon(self, callback, *args) -> None:
        self._loop.call_soon(self._run, callback, args)

    def call_later(self, delay: float, callback, *args) -> None:
        self._loop.call_later(delay, self._run, callback, args)

    def call_at(self, when: float, callback, *args) -> None:
        self._loop.call_at(when, self._run, callback, args)

    def time(self) -> float:
        return self._loop.time()

    @staticmethod
    def isolate(owner, callback, *args):
        return callback(*args)


def serve_asyncio(port: int, db: str, agencies: int, durability: str, commit_each_frame: bool = True,
                  loop_factory=None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        lottery = None
        pending = False

        def commit() -> None:
            nonlocal pending
            pending = False
            end_turn(lottery)

        def schedule_commit() -> None:
            nonlocal pending
            if not pending:
                pending = True
                loop.call_soon(commit)

        lottery = Lottery(Store(db, durability), LotteryConfig(agencies), _CommittingLoop(loop, schedule_commit))
        await _serve_until_sigterm(lambda: _LotteryProtocol(lottery, schedule_commit, commit_each_frame), port)

    _run(main, loop_factory)


def serve_uvloop(port: int, db: str, agencies: int, durability: str) -> None:
    serve_asyncio(port, db, agencies, durability, loop_factory=_uvloop_factory())


def _uvloop_factory():
    try:
        import uvloop
    except ImportError:
        print("bench.servers: uvloop is not installed (pip install '.[bench]')", file=sys.stderr)
        sys.exit(2)
    return uvloop.new_event_loop


def _run(main, loop_factory=None) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


async def _serve_until_sigterm(protocol_factory, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol_factory, "127.0.0.1", port, backlog=4096)
    announce(server.sockets[0].getsockname()[1])
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


# --- issue 16's reference: asyncio with CSV storage, no fsync -------------------------
class _CsvLottery:
    """Owns the CSV peer's whole lottery: the bets file (appended, flushed to the OS per
    batch, never fsynced), each agency's count and DONE in memory, and the draw, which
    reads the file back as the course's servers do."""

    def __init__(self, path: str, agencies: int) -> None:
        self.path = path
        self.winning_number = LotteryConfig().winning_number  # the central's default, as the course fixes it
        self.file = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.committed = dict.fromkeys(range(1, agencies + 1), 0)
        self.done: set[int] = set()
        self.winners: dict[int, list[str]] | None = None
        self.held: list[_CsvProtocol] = []

    def draw(self) -> None:
        self.file.flush()
        winners: dict[int, list[str]] = {}
        with open(self.path, newline="", encoding="utf-8") as bets:
            for agency, _, _, document, _, number in csv.reader(bets):
                if int(number) == self.winning_number:
                    winners.setdefault(int(agency), []).append(document)
        self.winners = winners
        log_event(log, logging.INFO, "sorteo", "success")
        held, self.held = self.held, []
        for protocol in held:
            protocol.send_winners()


class _CsvProtocol(asyncio.Protocol):
    """One agency connection of the CSV peer: each frame handled and answered as it comes."""

    def __init__(self, lottery: _CsvLottery) -> None:
        self.lottery = lottery
        self.agency: int | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.decoder = p.FrameDecoder(p.Role.SERVER)

    def data_received(self, data: bytes) -> None:
        try:
            self.decoder.receive_data(data)
            for message in self.decoder.messages():
                self.handle(message)
        except p.ProtocolError as error:
            self.fail(error.code, error.message)

    def handle(self, message) -> None:
        lottery = self.lottery
        if isinstance(message, p.Hello):
            if self.agency is not None or message.agency not in lottery.committed:
                self.fail(p.ErrorCode.UNAUTHORIZED, "unknown agency")
                return
            self.agency = message.agency
            self.transport.write(p.encode(p.Welcome(lottery.committed[self.agency], self.agency in lottery.done,
                                                    lottery.winners is not None)))
        elif self.agency is None:
            self.fail(p.ErrorCode.HELLO_REQUIRED, "the first frame must be HELLO")
        elif isinstance(message, p.Bets):
            self.bets(message)
        elif isinstance(message, p.Done):
            lottery.done.add(self.agency)
            self.transport.write(p.encode(p.DoneAck()))
            if lottery.winners is None and len(lottery.done) == len(lottery.committed):
                lottery.draw()
        elif self.agency not in lottery.done:
            self.transport.write(p.encode(p.Error(p.ErrorCode.NOT_DONE, "send DONE first")))
        elif lottery.winners is None:
            lottery.held.append(self)
            self.transport.pause_reading()
        else:
            self.send_winners()

    def bets(self, batch: p.Bets) -> None:
        problem = p.first_invalid_bet(batch.bets, p.utc_today())
        if problem is not None:
            self.transport.write(p.encode(p.Error(p.ErrorCode.INVALID_BET, str(problem), batch.first)))
            return
        committed = self.lottery.committed[self.agency]
        if batch.first > committed + 1:
            self.transport.write(p.encode(p.Error(p.ErrorCode.SEQUENCE_GAP, "gap", batch.first)))
            return
        new_bets = batch.bets[committed + 1 - batch.first:] if batch.last > committed else ()
        if new_bets:
            agency = self.agency
            self.lottery.writer.writerows((agency, *bet) for bet in new_bets)
            self.lottery.file.flush()
            self.lottery.committed[agency] = batch.last
        log_event(log, logging.INFO, "apuesta_recibida", "success", cantidad=len(new_bets), agency=self.agency)
        self.transport.write(p.encode(p.Ack(batch.first, batch.count)))

    def send_winners(self) -> None:
        documents = self.lottery.winners.get(self.agency, [])
        self.transport.write(b"".join(p.encode(frame) for frame in p.split_winners(documents)))
        self.transport.resume_reading()

    def fail(self, code: p.ErrorCode, message: str) -> None:
        self.transport.write(p.encode(p.Error(code, message)))
        self.transport.close()

    def connection_lost(self, exc) -> None:
        if self in self.lottery.held:
            self.lottery.held.remove(self)


def serve_csv(port: int, db: str, agencies: int, durability: str, loop_factory=None) -> None:
    async def main() -> None:
        lottery = _CsvLottery(db + ".csv", agencies)
        await _serve_until_sigterm(lambda: _CsvProtocol(lottery), port)

    _run(main, loop_factory)


def serve_uvloop_csv(port: int, db: str, agencies: int, durability: str) -> None:
    serve_csv(port, db, agencies, durability, loop_factory=_uvloop_factory())


# --- threads ------------------------------------------------------------------------
class _ThreadConnection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.peer = "thread"
        self.readable = threading.Event()
        self.readable.set()
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.close()

    def hold_reading(self) -> None:
        self.readable.clear()

    def release_reading(self) -> None:
        self.readable.set()

    def close(self) -> None:
        self.closed = True
        self.readable.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _SharedConnection(sqlite3.Connection):
    """One SQLite connection shared by every thread, always under the server's lock."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["check_same_thread"] = False
        super().__init__(*args, **kwargs)


def serve_threaded(port: int, db: str, agencies: int, durability: str) -> None:
    lock = threading.Lock()
    store = Store(db, durability, connection_factory=_SharedConnection)

    class Loop:  # the service's timers, run under the lock on a thread of their own
        def call_soon(self, callback, *args):
            threading.Timer(0, self._locked, (callback, args)).start()

        def call_later(self, delay, callback, *args):
            threading.Timer(delay, self._locked, (callback, args)).start()

        def call_at(self, when, callback, *args):
            self.call_later(max(0.0, when - self.time()), callback, *args)

        @staticmethod
        def time():
            return time.monotonic()

        @staticmethod
        def isolate(owner, callback, *args):
            return callback(*args)

        @staticmethod
        def _locked(callback, args):
            with lock:
                callback(*args)
                end_turn(lottery)

    lottery = Lottery(store, LotteryConfig(agencies), Loop())

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            connection = _ThreadConnection(self.request)
            decoder = p.FrameDecoder(p.Role.SERVER)
            with lock:
                session = lottery.new_session(connection)
            while not connection.closed:
                connection.readable.wait()
                if connection.closed:
                    break
                try:
                    data = self.request.recv(65536)
                except OSError:
                    data = b""
                with lock:
                    try:
                        decoder.receive_data(data)
                        while (message := decoder.next_message()) not in (p.NEED_DATA, p.PEER_CLOSED):
                            session.message_received(message)
                            if not connection.readable.is_set():
                                break
                    except p.ProtocolError as error:
                        session.protocol_error(error)
                    end_turn(lottery)
                if not data:
                    break
            with lock:
                session.connection_lost("closed")

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 4096

    with Server(("127.0.0.1", port), Handler) as server:
        announce(server.server_address[1])
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        server.serve_forever()


# --- null -----------------------------------------------------------------------------
def serve_null(port: int, db: str, agencies: int, durability: str) -> None:
    class Null(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            self.decoder = p.FrameDecoder(p.Role.SERVER)

        def data_received(self, data: bytes) -> None:
            self.decoder.receive_data(data)
            out = []
            while (m := self.decoder.next_message()) not in (p.NEED_DATA, p.PEER_CLOSED):
                if isinstance(m, p.Hello):
                    out.append(p.encode(p.Welcome(0)))
                elif isinstance(m, p.Bets):
                    out.append(p.encode(p.Ack(m.first, m.count)))
                elif isinstance(m, p.Done):
                    out.append(p.encode(p.DoneAck()))
                else:
                    out.append(p.encode(p.Winners(())))
            self.transport.write(b"".join(out))

    async def main() -> None:
        await _serve_until_sigterm(Null, port)

    _run(main)


SERVERS = {
    "asyncio": serve_asyncio,
    "uvloop": serve_uvloop,
    "asyncio-turn": functools.partial(serve_asyncio, commit_each_frame=False),
    "threaded": serve_threaded,
    "asyncio-csv": serve_csv,
    "uvloop-csv": serve_uvloop_csv,
    "null": serve_null,
}
NEEDS_UVLOOP = frozenset({"uvloop", "uvloop-csv"})


def main(argv=None) -> None:
    configure_logging("INFO")  # as the central runs by default: its per-batch lines are part of the cost
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__)
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", default=":memory:")
    parser.add_argument("--agencies", type=int, default=5)
    parser.add_argument("--durability", default="full")
    args = parser.parse_args(argv)
    SERVERS[args.kind](args.port, args.db, args.agencies, args.durability)


if __name__ == "__main__":
    sys.exit(main())
