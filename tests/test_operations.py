"""A hostile peer or a careless operator never takes the central down (issue 11).

Each test is one reproduction, run against the real server process the way it
happened: the peer's bytes, the operator's command, the file deleted under it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import threading
import time

import pytest

import protocol as p
from bench.proc import cpu_seconds
from tests.harness import PORT_LINE, ROOT, Peer, ServerProcess, bets, env_for, raw_bet, raw_frame, wait_until
from tests.test_tls import make_certificate

E = p.ErrorCode


def run_server(db, *args, timeout: float = 30) -> subprocess.CompletedProcess:
    """A server that is expected to stop by itself (a refusal at start)."""
    return subprocess.run(
        [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0", "--db", str(db),
         *args],
        cwd=ROOT, env=env_for(), capture_output=True, text=True, timeout=timeout,
    )


def one_fail_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    failing = [line for line in result.stdout.splitlines() if "result: fail" in line]
    assert len(failing) == 1, result.stdout
    for needle in needles:
        assert needle in failing[0], failing[0]
    return failing[0]


def still_serving(server: ServerProcess, agency: int = 1) -> None:
    peer = Peer(server.port)
    committed = peer.hello(agency).committed
    batch = bets(committed + 1, 2)
    peer.send(batch)
    assert peer.read() == p.Ack(batch.first, 2)
    peer.close()


# --- a peer's bytes -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "bet",
    [raw_bet(document=b"\x01" * 2100), raw_bet(document=b"a" * 8150), raw_bet(birthdate=b"\\" * 4200)],
    ids=["2100-control-bytes", "8150-letters", "4200-backslashes"],
)
def test_an_invalid_bet_of_any_size_is_answered_not_a_crash(tmp_path, bet):
    with ServerProcess(tmp_path / "bets.db") as server:
        peer = Peer(server.port)
        peer.hello(1)
        peer.send(raw_frame(0x02, struct.pack(">IH", 1, 1) + bet))
        error = peer.read()
        assert (error.code, error.first) == (E.INVALID_BET, 1)
        assert "characters)" in error.message  # the field is quoted in part, with its length
        still_serving(server)
        assert server.proc.poll() is None


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_a_reset_before_accept_over_tls_costs_nothing(tmp_path):
    cert, key = make_certificate(tmp_path)
    with ServerProcess(tmp_path / "bets.db", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        server.signal(signal.SIGSTOP)  # the kernel completes the handshakes; nobody accepts
        try:
            for _ in range(30):
                sock = socket.create_connection(("127.0.0.1", server.port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()  # RST while it waits in the accept queue
        finally:
            server.signal(signal.SIGCONT)
        context = ssl.create_default_context(cafile=str(cert))
        with context.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=10),
                                 server_hostname="localhost") as tls:
            tls.sendall(p.encode(p.Hello(1)))
            decoder = p.FrameDecoder(p.Role.CLIENT)
            while (message := next(decoder.messages(), None)) is None:
                decoder.receive_data(tls.recv(4096))
            assert message == p.Welcome(committed=0)
        assert server.proc.poll() is None


# --- an operator's mistakes ---------------------------------------------------------------------------
def test_a_second_central_on_the_same_database_refuses_and_the_first_goes_on(tmp_path):
    db = tmp_path / "bets.db"
    with ServerProcess(db) as first:
        still_serving(first)
        second = run_server(db)
        assert second.returncode == 1
        one_fail_line(second, "open_database", str(db), "in use by another central")
        still_serving(first)
    with ServerProcess(db) as again:  # the lock ends with its process
        assert Peer(again.port).hello(1).committed == 4


@pytest.mark.parametrize("changed", ["6", "2"])
def test_a_changed_agency_count_on_a_database_that_holds_a_lottery_is_refused(tmp_path, changed):
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "3") as server:
        still_serving(server)
        peer = Peer(server.port)
        peer.hello(3)
        peer.send(p.Done())
        assert peer.read() == p.DoneAck()
    refused = run_server(db, "--agencies", changed)
    assert refused.returncode == 1
    one_fail_line(refused, "holds a lottery of 3 agencies", "2 bets, 1 agencies done", "--agencies 3")
    with ServerProcess(db, "--agencies", "3") as server:  # nothing changed by the refusal
        assert Peer(server.port).hello(1).committed == 2
        assert server.log_lines("recover", "success")
        line = server.log_lines("recover")[0]
        assert "bets: 2" in line and "committed: 1=2,2=0,3=0" in line and "done: 3" in line and "draw: open" in line


def test_an_empty_database_takes_a_new_agency_count(tmp_path):
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "3"):
        pass
    with ServerProcess(db, "--agencies", "7") as server:
        assert Peer(server.port).hello(7) == p.Welcome(committed=0)


def test_a_changed_winning_number_after_the_draw_is_refused(tmp_path):
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "1", "--winning-number", "42") as server:
        peer = Peer(server.port)
        peer.hello(1)
        peer.send(bets(1, 3, number=42), p.Done(), p.WinnersQuery())
        assert peer.read() == p.Ack(1, 3) and peer.read() == p.DoneAck()
        assert len(peer.read().documents) == 3
    refused = run_server(db, "--agencies", "1", "--winning-number", "7")
    assert refused.returncode == 1
    one_fail_line(refused, "drawn with winning number '42'", "--winning-number 42")


@pytest.mark.parametrize("content", ["garbage", "foreign", "damaged"])
def test_a_damaged_or_foreign_database_at_start_is_one_line(tmp_path, content):
    db = tmp_path / "bets.db"
    if content == "garbage":
        db.write_bytes(b"this is not a database" * 500)
    elif content == "foreign":
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE bets (id INTEGER, payload BLOB)")
    else:
        with ServerProcess(db, "--agencies", "1") as server:
            peer = Peer(server.port)
            peer.hello(1)
            for first in range(1, 3001, 150):
                peer.send(bets(first, 150))
                assert peer.read() == p.Ack(first, 150)
        data = bytearray(db.read_bytes())
        page = 4096
        data[3 * page: 10 * page] = b"\xff" * (7 * page)  # table pages, past the header
        db.write_bytes(bytes(data))
    result = run_server(db, "--agencies", "1")
    assert result.returncode == 1
    one_fail_line(result, "open_database", str(db))


def test_sighup_drains_like_sigterm(tmp_path):
    with ServerProcess(tmp_path / "bets.db") as server:
        peer = Peer(server.port)
        peer.hello(1)
        server.signal(signal.SIGHUP)
        error = peer.read()
        assert error.code is E.SHUTTING_DOWN
        assert server.wait(20) == 0
        assert server.log_lines("signal", "success")[0].endswith("signal: SIGHUP")


# --- the output, the disk, the files ---------------------------------------------------------------------
def test_a_stdout_nobody_reads_never_freezes_the_loop(tmp_path):
    with ServerProcess(tmp_path / "bets.db", "--agencies", "2") as server:
        server.stop_reading_output()
        flood = Peer(server.port)
        flood.hello(1)
        frames = [p.encode(bets(first, 1)) for first in range(1, 20_001)]
        acked = 0
        for start in range(0, len(frames), 500):  # ~100 bytes of log a batch: far past the pipe's 64 KiB
            flood.send(b"".join(frames[start:start + 500]))
            for _ in range(500):
                assert isinstance(flood.read(timeout=30), p.Ack)
                acked += 1
        other = Peer(server.port, timeout=5)
        assert other.hello(2) == p.Welcome(committed=0)  # the loop still turns
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert time.monotonic() - started < 20  # SIGTERM works although the pipe is full
    assert acked == 20_000


def test_a_stdout_whose_reader_went_away_is_not_an_error_storm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
         "--db", str(tmp_path / "bets.db")],
        cwd=ROOT, env=env_for(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        for line in proc.stdout:
            if match := PORT_LINE.search(line):
                port = int(match.group(1))
                break
        proc.stdout.close()  # the reader goes away
        peer = Peer(port)
        peer.hello(1)
        for first in range(1, 301, 3):
            peer.send(bets(first, 3))
            assert peer.read() == p.Ack(first, 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert proc.stderr.read() == ""  # no BrokenPipeError, no traceback
    finally:
        if proc.poll() is None:
            proc.kill()


def test_another_process_holding_the_write_lock_never_freezes_the_loop(tmp_path):
    db = tmp_path / "bets.db"
    with ServerProcess(db) as server:
        still_serving(server)
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # holds SQLite's write lock
        try:
            started = time.monotonic()
            peer = Peer(server.port, timeout=5)
            peer.hello(2)
            peer.send(bets(1, 2))
            answer = peer.read()
            assert (answer.code, answer.first) == (E.STORAGE_FAILED, 1)
            assert time.monotonic() - started < 5  # never SQLite's default wait of 5 s an attempt
        finally:
            other.execute("ROLLBACK")
            other.close()
        peer.send(bets(1, 2))
        assert peer.read() == p.Ack(1, 2)


def test_a_draw_that_cannot_be_stored_backs_off_then_completes(tmp_path):
    flag = tmp_path / "disk-full"
    server = ServerProcess(tmp_path / "bets.db", "--agencies", "1", "--winning-number", "77",
                           module="tests.faulty_reactor", env={"FAULT_FLAG": str(flag)})
    with server:
        peer = Peer(server.port)
        peer.hello(1)
        for first in range(1, 6001, 150):  # every bet wins: the winners need new pages
            peer.send(bets(first, 150, number=77))
            assert peer.read() == p.Ack(first, 150)
        flag.touch()
        peer.send(p.Done(), p.WinnersQuery())
        assert peer.read() == p.DoneAck()
        assert server.wait_for_line("draw_step", "fail")
        cpu = cpu_seconds(server.pid)
        failures = len(server.log_lines("draw_step", "fail"))
        time.sleep(2.0)
        assert cpu_seconds(server.pid) - cpu < 0.5  # backing off, not spinning
        assert len(server.log_lines("draw_step", "fail")) - failures <= 6  # once a backoff, not a turn
        assert Peer(server.port).send(p.Hello(2)).read().code is E.UNAUTHORIZED  # the loop answers meanwhile
        flag.unlink()
        documents = []
        while True:
            winners = peer.read(timeout=30)
            documents += winners.documents
            if winners.final:
                break
        assert len(documents) == 6000
        assert server.wait_for_line("sorteo", "success")


@pytest.mark.parametrize("victim", ["database", "wal"])
def test_a_database_deleted_while_serving_stops_before_acknowledging(tmp_path, victim):
    db = tmp_path / "bets.db"
    server = ServerProcess(db).start()
    try:
        peer = Peer(server.port)
        peer.hello(1)
        peer.send(bets(1, 5))
        assert peer.read() == p.Ack(1, 5)
        os.unlink(db if victim == "database" else f"{db}-wal")
        peer.send(bets(6, 5))
        assert peer.read() is None  # no ACK for bets a restart would not find
        assert server.wait(20) == 3
        stop = server.log_lines("stop", "fail")
        assert stop and "was deleted or replaced" in stop[0]
    finally:
        server.kill()
    with ServerProcess(db) as again:
        # Gone with the file: what it held. Kept: a WAL that SQLite could still checkpoint at
        # close (more than was acknowledged is allowed; the client's resend is ACKed then).
        assert Peer(again.port).hello(1).committed == (0 if victim == "database" else 10)


def test_a_storm_of_connects_that_never_speak_leaves_room_for_agencies(tmp_path):
    with ServerProcess(tmp_path / "bets.db", "--max-connections", "40", "--handshake-timeout", "60") as server:
        silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
        try:
            stop = threading.Event()

            def keep_connecting():
                while not stop.is_set():
                    try:
                        silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=2))
                    except OSError:
                        pass
                    if len(silent) > 600:
                        return

            storm = threading.Thread(target=keep_connecting, daemon=True)
            storm.start()
            try:
                for agency in (1, 2, 3):
                    assert wait_until(lambda agency=agency: _hello_ok(server.port, agency), timeout=30)
            finally:
                stop.set()
                storm.join(10)
        finally:
            for sock in silent:
                sock.close()


def _hello_ok(port: int, agency: int) -> bool:
    try:
        peer = Peer(port, timeout=5)
        answer = peer.send(p.Hello(agency)).read()
        peer.close()
        return isinstance(answer, p.Welcome)
    except OSError:
        return False


def test_stats_and_export_read_a_database_while_its_central_serves(tmp_path):
    db = tmp_path / "bets.db"
    with ServerProcess(db) as server:
        still_serving(server)
        env = env_for()
        stats = subprocess.run([sys.executable, "-m", "reactor", "stats", "--db", str(db)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=30)
        assert stats.returncode == 0, stats.stderr
        assert '"committed": 2' in stats.stdout
        export = subprocess.run([sys.executable, "-m", "reactor", "export", "--db", str(db), "--csv", "-"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=30)
        assert export.returncode == 0 and len(export.stdout.splitlines()) == 2
        still_serving(server)  # the readers took no lock that got in its way
