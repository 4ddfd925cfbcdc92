"""What an idle connection costs the central: the Python objects one peer holds.

`make bench` measures the same in RSS with 10,000 idle peers (B/idle); this test
counts the allocations with tracemalloc, which is deterministic, so a change that
makes every peer heavier (a closure per connection, a deque per buffer) fails here
rather than being noticed in a benchmark table.
"""

from __future__ import annotations

import gc
import logging
import socket
import tracemalloc

from tests.inprocess import InProcessCentral

PEERS = 200  # well under any fd limit: each costs two fds here (the peer and the accepted socket)
# Today's cost is about 1,200 bytes a peer (connection, session, decoder, deadline timer,
# socket object, the pool's sets); the bound leaves room for interpreter versions, not for
# another object per peer.
BYTES_PER_IDLE_PEER = 1_450


def test_an_idle_connection_costs_the_central_a_bounded_number_of_bytes(tmp_path):
    central = InProcessCentral(tmp_path / "bets.db", max_connections=2 * PEERS)
    central.server.agencies.max_unidentified = 2 * PEERS
    peers = []
    try:
        central.turn(3)
        gc.collect()
        # A logging handler that keeps records (pytest's, at --log-level DEBUG) would count as the central's.
        logging.disable(logging.CRITICAL)
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(PEERS):
                peer = socket.socket()
                peer.setblocking(False)
                peer.connect_ex(("127.0.0.1", central.port))
                peers.append(peer)
            assert central.turn_until(lambda: len(central.server.connections) == PEERS)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
            logging.disable(logging.NOTSET)
        # Only the central's side counts: the test's own client sockets are left out.
        central_side = [stat for stat in after.compare_to(before, "filename")
                        if "/tests/" not in stat.traceback[0].filename]
        each = sum(stat.size_diff for stat in central_side) / PEERS
        assert each <= BYTES_PER_IDLE_PEER, [(str(s.traceback[0]), s.size_diff // PEERS) for s in central_side[:8]]
    finally:
        for peer in peers:
            peer.close()
        central.close()
