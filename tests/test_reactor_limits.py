"""Limits and endings: deadlines, the connection limit, backpressure, drain, a full disk.

The connection's own deadlines and water marks are tested exactly, in-process, in
test_connection.py. Here: what the session adds to them (a held query is cut by no
deadline), and that the real process applies its deadline settings.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest

import protocol as p
from bench.proc import cpu_seconds
from datagen import write_dataset
from reactor.connection import ConnectionLimits
from tests.harness import (
    BET,
    AckTracker,
    AgencyRuns,
    Peer,
    ServerProcess,
    assert_files_stored_once_in_order,
    bets,
    rows_by_agency,
    stored_rows,
    wait_until,
)
from tests.inprocess import InProcessCentral

E = p.ErrorCode


def never_waiting(central: InProcessCentral) -> InProcessCentral:
    """Its loop never waits in select: a callback that is always ready makes the
    timeout 0, so a turn takes no wall-clock time whatever the fake clock's timers say."""
    def tick() -> None:
        central.loop.call_soon(tick)

    tick()
    return central


def test_a_held_query_is_cut_by_no_deadline_and_the_deadlines_run_again_once_it_is_answered(tmp_path):
    limits = ConnectionLimits(handshake_timeout=5, idle_timeout=60, frame_timeout=10)
    central = never_waiting(InProcessCentral(tmp_path / "bets.db", agencies=3, limits=limits))
    try:
        idle, holder = central.peer(), central.peer()
        idle.hello(2)
        holder.hello(3)
        # the query is held with a DONE and half a frame behind it, unread
        holder.send(p.Done(), p.WinnersQuery(), p.Done(), p.encode(bets(1, 1))[:9])
        assert holder.read() == p.DoneAck()
        central.clock.advance(60.001)
        error = idle.read()
        assert (error.code, error.message) == (E.TIMEOUT, "idle deadline passed")
        assert idle.read() is None
        central.clock.advance(10_000)  # far past every deadline
        central.turn(3)
        holder._pump()
        assert holder.messages == [] and not holder.closed
        for agency in (1, 2):  # the last DONEs: the draw answers the held query
            peer = central.peer()
            peer.hello(agency)
            assert peer.send(p.Done()).read() == p.DoneAck()
        assert holder.read() == p.Winners((), final=True)
        assert holder.read() == p.DoneAck()  # then what waited behind it is read
        central.clock.advance(10.001)  # and the half frame's clock runs from the answer
        error = holder.read()
        assert (error.code, error.message) == (E.TIMEOUT, "frame deadline passed")
    finally:
        central.close()


def test_the_process_applies_its_deadline_settings(tmp_path):
    """Each deadline cut at its setting, not at its default (10 s, 60 s, 10 s): the
    generous waits below stay under the defaults and set no lower bound."""
    args = ["--agencies", "3", "--handshake-timeout", "0.5", "--idle-timeout", "1.5", "--frame-timeout", "0.5"]
    with ServerProcess(tmp_path / "bets.db", *args) as server:
        silent, idle, slow = Peer(server.port), Peer(server.port), Peer(server.port)
        idle.send(p.Hello(1))
        slow.send(p.encode(p.Hello(2)) + p.encode(bets(1, 1))[:9])
        assert idle.read() == slow.read() == p.Welcome(committed=0)
        for peer, what in [(silent, "handshake"), (idle, "idle"), (slow, "frame")]:
            error = peer.read(timeout=8)
            assert (error.code, error.message) == (E.TIMEOUT, f"{what} deadline passed")
            assert peer.closed(timeout=8)


def test_server_busy_at_the_connection_limit(tmp_path):
    with ServerProcess(tmp_path / "bets.db", "--max-connections", "2") as server:
        first = Peer(server.port)
        first.hello(1)
        second = Peer(server.port)
        second.hello(2)
        busy = Peer(server.port)  # every connection has said HELLO: no one to make room
        error = busy.read()
        assert error.code is E.SERVER_BUSY and busy.closed()
        first.close()
        assert wait_until(lambda: _welcomed(server.port, 3), timeout=5)


def test_out_of_file_descriptors_pauses_accepting_then_recovers(tmp_path):
    with ServerProcess(tmp_path / "bets.db", "--handshake-timeout", "30", fd_limit=48) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(60)]
        assert server.wait_for_line("accept", "in_progress", timeout=5)  # EMFILE: paused
        cpu_before = cpu_seconds(server.pid)
        time.sleep(1.0)
        assert cpu_seconds(server.pid) - cpu_before < 0.5  # paused with a timer, not spinning
        for sock in held:
            sock.close()
        assert wait_until(lambda: _welcomed(server.port, 1), timeout=10)
        assert server.proc.poll() is None


def _welcomed(port: int, agency: int) -> bool:
    peer = Peer(port)
    try:
        return isinstance(peer.send(p.Hello(agency)).read(), p.Welcome)
    finally:
        peer.close()


def test_a_peer_that_never_reads_is_paused_not_buffered(tmp_path):
    documents = [f"{n:016d}" for n in range(1000)]
    with ServerProcess(tmp_path / "bets.db", "--agencies", "2", "--winning-number", "1") as server:
        setup = Peer(server.port)
        setup.hello(1)
        for start in range(0, 1000, 100):
            setup.send(p.Bets(start + 1, tuple(BET._replace(document=d) for d in documents[start : start + 100])))
            assert isinstance(setup.read(), p.Ack)
        setup.send(p.Done())
        assert setup.read() == p.DoneAck()
        setup.close()
        assert _welcomed_done(server.port, 2)
        assert server.wait_for_line("sorteo", "success")
        rss_before = server.rss_kb()

        spammer = socket.socket()
        spammer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        spammer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        spammer.connect(("127.0.0.1", server.port))
        spammer.settimeout(3)
        spammer.sendall(p.encode(p.Hello(1)))
        queries = p.encode(p.WinnersQuery()) * 10_000  # each answer is ~18 KB of WINNERS frames
        sent = 0
        with pytest.raises(TimeoutError):
            while sent < 50_000_000:  # 250 MB of queries, ~900 GB of answers: far beyond any buffer
                spammer.sendall(queries)
                sent += 10_000
        # Kernel buffers hold a few MB of queries; the server stopped reading long before 50M.
        assert sent < 5_000_000
        assert server.rss_kb() - rss_before < 30_000  # KB: answers are not buffered without bound
        assert _welcomed_done(server.port, 2)  # other sessions are served meanwhile

        # Reading again resumes the paused peer, and its answers come in order.
        # (before the pause, buffers held a few hundred answers at most: ~4 MB of ~18 KB each)
        decoder = p.FrameDecoder(p.Role.CLIENT)
        answered = 0
        spammer.settimeout(30)  # a stall, not a slow machine, would end this read
        while answered <= 1000:  # far more than fit in the buffers before the pause: reading resumed
            decoder.receive_data(spammer.recv(1 << 20))
            for message in decoder.messages():
                if isinstance(message, p.Winners):
                    answered += message.final
                else:
                    assert isinstance(message, p.Welcome), message
            assert not decoder.peer_closed
        spammer.close()


def _welcomed_done(port: int, agency: int) -> bool:
    peer = Peer(port)
    try:
        peer.hello(agency)
        peer.send(p.Done())
        return peer.read() == p.DoneAck()
    finally:
        peer.close()


def test_sigterm_drains_answers_then_shutting_down_and_loses_nothing_acknowledged(tmp_path):
    dataset = write_dataset(tmp_path / "data", total=60_000, agencies=2)
    db = tmp_path / "bets.db"
    acks = AckTracker([1, 2])
    server = ServerProcess(db, "--agencies", "3").start()
    idle = Peer(server.port)
    idle.hello(3)
    port = server.port
    agencies = AgencyRuns(port, dict(enumerate(dataset.files, start=1)), acks, max_amount=50, window=4,
                          retries=200, backoff_base=0.05, backoff_cap=0.2)
    assert wait_until(lambda: acks.least() > 2000, timeout=30)
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0
    error = idle.read()
    assert error.code is E.SHUTTING_DOWN and idle.closed()
    stored = {agency: len(rows) for agency, rows in rows_by_agency(db).items()}
    assert all(stored.get(a, 0) >= acks.acked[a] for a in (1, 2)), (stored, acks.acked)  # nothing acknowledged lost
    assert server.log_lines("close_database", "success")

    server = ServerProcess(db, "--agencies", "3", "--port", str(port)).start()
    third = Peer(server.port)
    third.hello(3)
    third.send(p.Done())  # the draw waits for every agency
    assert third.read() == p.DoneAck()
    try:
        agencies.join(120)
    finally:
        server.stop()
    assert_files_stored_once_in_order(db, dataset.files)


def test_storage_failed_stores_nothing_keeps_serving_and_the_client_completes(tmp_path):
    flag = tmp_path / "disk-full"
    dataset = write_dataset(tmp_path / "data", total=4000, agencies=2)
    server = ServerProcess(tmp_path / "bets.db", "--agencies", "2", module="tests.faulty_reactor",
                           env={"FAULT_FLAG": str(flag)})
    with server:
        peer = Peer(server.port)
        peer.hello(1)
        peer.send(bets(1, 150))
        assert peer.read() == p.Ack(1, 150)
        flag.touch()
        peer.send(bets(151, 150), bets(301, 150))
        first, second = peer.read(), peer.read()
        assert (first.code, first.first) == (E.STORAGE_FAILED, 151)
        assert second.code in (E.STORAGE_FAILED, E.SEQUENCE_GAP)  # nothing of 151.. was stored
        peer.send(bets(1, 150))  # the session goes on
        assert peer.read() == p.Ack(1, 150)
        assert server.wait_for_line("apuesta_recibida", "fail")
        assert server.wait_for_line("store", "fail")
        assert "database or disk is full" in server.log_lines("store", "fail")[0]  # the cause is logged

        flag.unlink()
        peer.send(p.Done())  # the draw waits for every agency
        assert peer.read() == p.DoneAck()
        peer.close()
        flag.touch()
        agency_two = AgencyRuns(server.port, {2: dataset.files[1]}, max_amount=100, retries=100,
                                backoff_base=0.05, backoff_cap=0.2)
        assert wait_until(lambda: any("agency: 2 | code: STORAGE_FAILED" in line
                                      for line in server.log_lines("apuesta_recibida", "fail")), timeout=60)
        flag.unlink()  # space returns
        result = agency_two.join(60)[2]
        assert result.total == dataset.rows[1]
        assert result.sessions > 1  # it met STORAGE_FAILED and came back
    assert len(stored_rows(tmp_path / "bets.db", 1)) == 150  # the failed batches left nothing partial
