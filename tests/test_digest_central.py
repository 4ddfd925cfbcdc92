"""The central's side of receipts (PROTOCOL.md version 2): its digests are the formula's.

Raw version-2 peers against the real process; every digest the central hands out is
compared with `protocol.agency_digest` over the bets it holds, across block
boundaries, resends and overlaps, a refused commit, and restarts.
"""

from __future__ import annotations

import pytest

import protocol as p
from tests.harness import ServerProcess

E = p.ErrorCode


def bet(agency: int, n: int, number: int = 1) -> p.Bet:
    return p.Bet("Ana", "Gómez", f"{agency}{n:07d}", "1990-01-01", number)


def bets(agency: int, first: int, count: int) -> p.Bets:
    return p.Bets(first, tuple(bet(agency, n) for n in range(first, first + count)))


class V2Peer:
    """A version-2 agency speaking raw protocol messages."""

    def __init__(self, port: int) -> None:
        import socket

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.decoder = p.FrameDecoder(p.Role.CLIENT, version=2)

    def send(self, *messages) -> "V2Peer":
        self.sock.sendall(b"".join(p.encode(m) for m in messages))
        return self

    def read(self):
        while (message := next(self.decoder.messages(), None)) is None:
            self.decoder.receive_data(self.sock.recv(65536))
        return message

    def hello(self, agency: int) -> p.Welcome:
        welcome = self.send(p.Hello(agency, version=2)).read()
        assert isinstance(welcome, p.Welcome) and welcome.digest is not None, welcome
        return welcome


def held(agency: int, count: int) -> bytes:
    return p.agency_digest(bet(agency, n) for n in range(1, count + 1))


@pytest.mark.parametrize("batch", [1, 150, 211])
def test_welcome_and_done_ack_carry_the_digest_of_what_is_stored_across_blocks(tmp_path, batch):
    db = tmp_path / "bets.db"
    total = 2 * p.BLOCK_BETS + 77
    with ServerProcess(db, "--agencies", "2") as server:
        peer = V2Peer(server.port)
        assert peer.hello(1).digest == held(1, 0)
        first = 1
        while first <= total:
            count = min(batch, total - first + 1)
            peer.send(bets(1, first, count))
            assert peer.read() == p.Ack(first, count)
            first += count
        peer.send(bets(1, total - 40, 60))  # overlaps the end: only the 19 new ones are stored
        assert peer.read() == p.Ack(total - 40, 60)
        total += 19
        assert V2Peer(server.port).hello(1).digest == held(1, total)
    with ServerProcess(db, "--agencies", "2") as server:  # a restart rebuilds it from the store
        peer = V2Peer(server.port)
        welcome = peer.hello(1)
        assert (welcome.committed, welcome.digest) == (total, held(1, total))
        peer.send(p.Done())
        assert peer.read() == p.DoneAck(total, held(1, total))


def test_a_version_1_session_gets_version_1_answers_from_the_same_central(tmp_path):
    with ServerProcess(tmp_path / "bets.db", "--agencies", "2") as server:
        from tests.harness import Peer

        old = Peer(server.port)
        assert old.hello(2) == p.Welcome(committed=0)
        old.send(bets(2, 1, 3), p.Done())
        assert old.read() == p.Ack(1, 3) and old.read() == p.DoneAck()
        new = V2Peer(server.port)
        assert new.hello(2).digest == held(2, 3)


def test_a_failed_commit_leaves_the_digest_of_what_is_durable(tmp_path):
    flag = tmp_path / "disk-full"
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1", module="tests.faulty_reactor",
                       env={"FAULT_FLAG": str(flag)}) as server:
        peer = V2Peer(server.port)
        peer.hello(1)
        for first in range(1, 1001, 200):
            peer.send(bets(1, first, 200))
            assert peer.read() == p.Ack(first, 200)
        flag.touch()
        peer.send(bets(1, 1001, 150))  # crosses the block boundary, and the disk is full
        refused = peer.read()
        assert (refused.code, refused.first) == (E.STORAGE_FAILED, 1001)
        flag.unlink()
        assert V2Peer(server.port).hello(1).digest == held(1, 1000)
        again = V2Peer(server.port)
        again.hello(1)
        again.send(bets(1, 1001, 150), p.Done())
        assert again.read() == p.Ack(1001, 150)
        assert again.read() == p.DoneAck(1150, held(1, 1150))


def test_a_verifiable_draw_publishes_its_commitment_first_and_reveals_a_seed_that_rederives(tmp_path):
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "2", "--winning-number", "verifiable") as server:
        commitment = server.log_lines("draw_commitment", "success")[0].rsplit("commitment: ", 1)[1]
        for agency, count in ((1, 1500), (2, 40)):
            peer = V2Peer(server.port)
            peer.hello(agency)
            for first in range(1, count + 1, 200):
                peer.send(bets(agency, first, min(200, count - first + 1)))
                assert isinstance(peer.read(), p.Ack)
            peer.send(p.Done())
            assert isinstance(peer.read(), p.DoneAck)
        assert server.wait_for_line("sorteo", "success")
        line = server.log_lines("sorteo", "success")[0]
    seed = bytes.fromhex(line.rsplit("seed: ", 1)[1].split(" ")[0])
    number = int(line.split("numero_ganador: ")[1].split(" ")[0])
    assert p.commitment(seed) == commitment
    assert p.derive_winning_number(seed, [held(1, 1500), held(2, 40)]) == number
    with ServerProcess(db, "--agencies", "2", "--winning-number", "verifiable") as server:
        assert server.log_lines("draw_commitment")[0].endswith(commitment)  # the same, every start


def test_a_lottery_with_bets_cannot_become_verifiable_nor_stop_being_it(tmp_path):
    from tests.test_operations import one_fail_line, run_server

    plain, verifiable = tmp_path / "plain.db", tmp_path / "verifiable.db"
    for db, setting in ((plain, "7574"), (verifiable, "verifiable")):
        with ServerProcess(db, "--agencies", "1", "--winning-number", setting) as server:
            peer = V2Peer(server.port)
            peer.hello(1)
            peer.send(bets(1, 1, 2))
            assert peer.read() == p.Ack(1, 2)
    for db, setting in ((plain, "verifiable"), (verifiable, "7574")):
        refused = run_server(db, "--agencies", "1", "--winning-number", setting)
        assert refused.returncode == 1
        one_fail_line(refused, "open_database", "--winning-number")
