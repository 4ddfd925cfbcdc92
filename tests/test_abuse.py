"""Abuse: many abandoned connections, a flood of random bytes, random frame sequences.

After the battery a normal session still completes and the server's RSS stays under
RSS_BOUND_KB (stated here, and in the README's Guarantees).
"""

from __future__ import annotations

import random
import resource
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol as p
from bench.proc import fd_count
from tests.conftest import LONG
from tests.harness import BET, Peer, ServerProcess, wait_until
from tests.strategies import client_messages

RSS_BOUND_KB = 80_000  # the whole server process, after the battery
ABANDONED = 2000
FLOOD_BYTES = 100 * 1024 * 1024
E = p.ErrorCode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 3 * ABANDONED + 100))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by the server
    try:
        args = ["--agencies", "3", "--handshake-timeout", "1", "--frame-timeout", "1", "--idle-timeout", "3"]
        with ServerProcess(tmp_path_factory.mktemp("abuse") / "bets.db", *args) as s:
            yield s
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 3 * ABANDONED + 100, reason="fd limit too low")
def test_abandoned_connections_are_all_reclaimed(server):
    baseline = fd_count(server.pid)
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(ABANDONED)]
    assert wait_until(lambda: fd_count(server.pid) >= baseline + ABANDONED * 0.9, timeout=10)
    # never a byte: the handshake deadline reclaims every one of them
    assert wait_until(lambda: fd_count(server.pid) <= baseline + 5, timeout=15), fd_count(server.pid)
    for sock in sockets:  # each was told why, then closed
        sock.settimeout(10)
        decoder = p.FrameDecoder(p.Role.CLIENT)
        answers = []
        while not decoder.peer_closed:
            decoder.receive_data(sock.recv(4096))
            answers += decoder.messages()
        assert answers == [p.Error(E.TIMEOUT, "handshake deadline passed")]
        sock.close()


def test_a_flood_of_random_bytes_gets_one_malformed_frame_and_a_close(server):
    rss_before = server.rss_kb()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(p.encode(p.Hello(1)))
    rng = random.Random(7)
    chunk = bytes(rng.getrandbits(8) for _ in range(1 << 16)) * 16  # 1 MiB of noise
    chunk = struct.pack(">I", 8189) + chunk[4:]  # and the very first length is illegal
    sent = 0
    try:
        while sent < FLOOD_BYTES:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the server closed on us, as it should
    decoder = p.FrameDecoder(p.Role.CLIENT)
    try:
        while data := sock.recv(65536):
            decoder.receive_data(data)
    except OSError:
        pass
    messages = list(decoder.messages())
    assert messages[0] == p.Welcome(committed=0)
    assert [m.code for m in messages[1:]] == [E.MALFORMED_FRAME]
    assert server.rss_kb() - rss_before < 10_000
    sock.close()


frames = st.one_of(
    client_messages.map(p.encode),
    st.binary(max_size=64),
    st.tuples(st.integers(0, 0xFFFF_FFFF), st.integers(0, 255), st.binary(max_size=40)).map(
        lambda t: struct.pack(">IB", t[0], t[1]) + t[2]
    ),
)


@settings(max_examples=200 if LONG else 25, deadline=None)
@given(st.lists(frames, min_size=1, max_size=6), st.sampled_from([1, 2, None]))
def test_random_frame_sequences_never_crash_the_server_and_every_answer_is_protocol(server, sequence, agency):
    peer = Peer(server.port, timeout=3)
    try:
        try:
            for data in ([p.encode(p.Hello(agency))] if agency else []) + sequence:  # None: no HELLO
                peer.sock.sendall(data)
            peer.sock.shutdown(socket.SHUT_WR)  # the server answers what came, then closes
        except OSError:
            pass  # the server already ended the session (a fatal error): read what it said
        while True:
            message = peer.read()  # decodes as a server frame, or raises
            if message is None:
                break
            assert isinstance(message, (p.Welcome, p.Ack, p.DoneAck, p.Winners, p.Error))
            if isinstance(message, p.Error):
                assert isinstance(message.code, p.ErrorCode) and message.message
    except (ConnectionResetError, TimeoutError):
        pass  # a held query (the server reads nothing more), or an abort: both correct
    finally:
        peer.close()
    assert server.proc.poll() is None, "the server died"


def test_after_the_battery_a_normal_session_completes_within_the_memory_bound(server):
    peer = Peer(server.port)
    assert peer.hello(3) == p.Welcome(committed=0)  # agency 3 is kept out of the battery
    peer.send(p.Bets(1, (BET, BET)), p.Done())
    assert peer.read() == p.Ack(1, 2) and peer.read() == p.DoneAck()
    peer.close()
    assert server.proc.poll() is None
    assert server.rss_kb() < RSS_BOUND_KB, f"{server.rss_kb()} KB"
    assert not any("Traceback" in line for line in server.lines)
