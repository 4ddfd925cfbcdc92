"""Limits and endings: deadlines, the connection limit, backpressure, drain, a full disk."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

import protocol as p
from client import Agency, AgencyConfig, BetFile
from datagen import write_dataset
from tests.harness import Peer, ServerProcess, exported_rows, file_rows, wait_until

E = p.ErrorCode
BET = p.Bet("Ana", "Gómez", "12345678", "1990-01-01", 1)


def timed_error(peer: Peer, code: E, within: float) -> float:
    started = time.monotonic()
    error = peer.read(timeout=within + 5)
    assert isinstance(error, p.Error) and error.code is code, error
    assert peer.closed()
    return time.monotonic() - started


@pytest.fixture(scope="module")
def short_server(tmp_path_factory):
    args = ["--agencies", "3", "--handshake-timeout", "0.6", "--idle-timeout", "1.2", "--frame-timeout", "0.6"]
    with ServerProcess(tmp_path_factory.mktemp("db") / "bets.db", *args) as server:
        yield server


def test_handshake_deadline(short_server):
    assert timed_error(Peer(short_server.port), E.TIMEOUT, 0.6) < 3


def test_frame_deadline_cuts_a_slowloris(short_server):
    peer = Peer(short_server.port)
    peer.hello(1)
    frame = p.encode(p.Bets(1, (BET,)))
    started = time.monotonic()
    with pytest.raises(OSError):
        for byte in frame:  # a byte every 0.2 s: each arrives well within any per-byte limit
            peer.sock.sendall(bytes([byte]))
            time.sleep(0.2)
    assert time.monotonic() - started < 4
    error = peer.read()
    assert error.code is E.TIMEOUT


def test_idle_deadline_but_not_while_a_query_is_held(short_server):
    idle = Peer(short_server.port)
    idle.hello(2)
    holder = Peer(short_server.port)
    holder.hello(3)
    holder.send(p.Done(), p.WinnersQuery())
    assert holder.read() == p.DoneAck()
    assert 0.9 < timed_error(idle, E.TIMEOUT, 1.2) < 4
    with pytest.raises(TimeoutError):
        holder.read(timeout=1.5)  # still held, past the idle deadline


def test_a_held_query_with_frames_behind_it_is_not_cut_by_the_frame_deadline(short_server):
    holder = Peer(short_server.port)
    holder.hello(1)
    # the query is held; the DONE behind it stays unread, and no frame deadline applies
    holder.send(p.Done(), p.WinnersQuery(), p.Done())
    assert holder.read() == p.DoneAck()
    with pytest.raises(TimeoutError):
        holder.read(timeout=2.0)  # frame_timeout is 0.6 s: still held, not TIMEOUT


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
        cpu_before = _cpu_seconds(server.pid)
        time.sleep(1.0)
        assert _cpu_seconds(server.pid) - cpu_before < 0.5  # paused with a timer, not spinning
        for sock in held:
            sock.close()
        assert wait_until(lambda: _welcomed(server.port, 1), timeout=10)
        assert server.proc.poll() is None


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        answered, deadline = 0, time.monotonic() + 20
        spammer.settimeout(5)
        while answered <= 1000 and time.monotonic() < deadline:
            decoder.receive_data(spammer.recv(1 << 20))
            while (message := decoder.next_message()) is not p.NEED_DATA:
                if isinstance(message, p.Winners):
                    answered += message.final
                else:
                    assert isinstance(message, p.Welcome), message
        assert answered > 1000  # far more than fit in the buffers before the pause: reading resumed
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
    acked: dict[int, int] = {1: 0, 2: 0}
    lock = threading.Lock()

    def on_ack(agency):
        def record(first, count, latency):
            with lock:
                acked[agency] = max(acked[agency], first + count - 1)
        return record

    server = ServerProcess(db, "--agencies", "3").start()
    idle = Peer(server.port)
    idle.hello(3)
    port = server.port
    errors = []

    def run(agency):
        config = AgencyConfig(agency=agency, host="127.0.0.1", port=port, max_amount=50, window=4,
                              retries=200, backoff_base=0.05, backoff_cap=0.2)
        try:
            Agency.from_file(config, BetFile(dataset.files[agency - 1]), on_ack=on_ack(agency)).run()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(a,)) for a in (1, 2)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: min(acked.values()) > 2000, timeout=30)
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0
    error = idle.read()
    assert error.code is E.SHUTTING_DOWN and idle.closed()
    stored = {1: 0, 2: 0}
    for row in exported_rows(db):
        stored[int(row[0])] += 1
    assert all(stored[a] >= acked[a] for a in (1, 2)), (stored, acked)  # nothing acknowledged was lost
    assert any(" | close_database | " in line or "action: close_database" in line for line in server.lines)

    server = ServerProcess(db, "--agencies", "3", "--port", str(port)).start()
    third = Peer(server.port)
    third.hello(3)
    third.send(p.Done())  # the draw waits for every agency
    assert third.read() == p.DoneAck()
    for thread in threads:
        thread.join(120)
    server.stop()
    assert not errors
    exported = exported_rows(db)
    for agency, path in enumerate(dataset.files, start=1):
        assert [row[1:] for row in exported if row[0] == str(agency)] == file_rows(path)


def test_storage_failed_stores_nothing_keeps_serving_and_the_client_completes(tmp_path):
    flag = tmp_path / "disk-full"
    dataset = write_dataset(tmp_path / "data", total=4000, agencies=2)
    server = ServerProcess(tmp_path / "bets.db", "--agencies", "2", module="tests.faulty_reactor",
                           env={"FAULT_FLAG": str(flag)})
    with server:
        peer = Peer(server.port)
        peer.hello(1)
        big = tuple(BET._replace(document=str(10**7 + i)) for i in range(150))
        peer.send(p.Bets(1, big))
        assert peer.read() == p.Ack(1, 150)
        flag.touch()
        peer.send(p.Bets(151, big), p.Bets(301, big))
        first, second = peer.read(), peer.read()
        assert (first.code, first.first) == (E.STORAGE_FAILED, 151)
        assert second.code in (E.STORAGE_FAILED, E.SEQUENCE_GAP)  # nothing of 151.. was stored
        peer.send(p.Bets(1, big))  # the session goes on
        assert peer.read() == p.Ack(1, 150)
        assert server.wait_for_line("apuesta_recibida", "fail")
        assert server.wait_for_line("store", "fail")
        assert "database or disk is full" in server.log_lines("store", "fail")[0]  # the cause is logged

        results = {}

        def run(agency):
            config = AgencyConfig(agency=agency, host="127.0.0.1", port=server.port, max_amount=100,
                                  retries=100, backoff_base=0.05, backoff_cap=0.2)
            results[agency] = Agency.from_file(config, BetFile(dataset.files[agency - 1])).run()

        flag.unlink()
        peer.send(p.Done())  # the draw waits for every agency
        assert peer.read() == p.DoneAck()
        peer.close()
        flag.touch()
        agency_two = threading.Thread(target=run, args=(2,))
        agency_two.start()
        time.sleep(1.0)
        flag.unlink()  # space returns
        agency_two.join(60)
        assert results[2].total == dataset.rows[1]
        assert results[2].sessions > 1  # it met STORAGE_FAILED and came back
    rows = [row for row in exported_rows(tmp_path / "bets.db") if row[0] == "1"]
    assert len(rows) == 150  # the failed batches left nothing partial
