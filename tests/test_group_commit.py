"""Group commit across turns: under sustained input one commit covers several turns, at
light load every turn commits, and no ACK ever leaves before its commit."""

from __future__ import annotations

import protocol as p
from reactor import turn
from tests.harness import bets
from tests.inprocess import FakeClock, InProcessCentral


def test_a_commit_waits_for_later_turns_while_the_budget_is_spent_then_covers_them_all(tmp_path):
    clock = FakeClock()
    central = InProcessCentral(tmp_path / "bets.db", agencies=1, clock=clock)
    try:
        peer = central.peer()
        peer.hello(1)
        budget = central.server.budget
        budget.per_turn = budget.remaining = 200  # a batch of 3 bets is ~120 bytes: input outlasts a turn
        frames = [p.encode(bets(first, 3)) for first in range(1, 31, 3)]  # 10 batches
        peer.sock.setblocking(True)
        peer.sock.sendall(b"".join(frames))
        peer.sock.setblocking(False)
        commits = central.store.commits
        central.turn(4)  # each turn spends its budget: the commit waits, and so do the ACKs
        peer._pump()
        assert central.store.commits == commits and peer.messages == []
        assert central.lottery.bets_awaiting_commit > 3
        clock.advance(turn.GROUP_COMMIT_WAIT)  # the longest an ACK may wait for its commit
        assert central.turn_until(lambda: (peer._pump(), len(peer.messages) == 10)[1])
        assert peer.messages == [p.Ack(first, 3) for first in range(1, 31, 3)]
        assert central.store.commits - commits < 10  # fewer commits than batches
        assert central.store.agencies()[1].committed == 30
    finally:
        central.close()


def test_at_light_load_every_turn_commits(tmp_path):
    central = InProcessCentral(tmp_path / "bets.db", agencies=1)
    try:
        peer = central.peer()
        peer.hello(1)
        for first in range(1, 16, 3):
            commits = central.store.commits
            assert peer.send(bets(first, 3)).read() == p.Ack(first, 3)  # the clock never moves
            assert central.store.commits == commits + 1
    finally:
        central.close()
