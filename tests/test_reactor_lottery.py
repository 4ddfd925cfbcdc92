"""The lottery end to end, against the real server process on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import protocol as p
from client import BetFile
from datagen import write_dataset
from tests.conftest import SHARED_DATASET
from tests.harness import (
    ROOT,
    Peer,
    ServerProcess,
    assert_files_stored_once_in_order,
    bets,
    exported_rows,
    run_agencies,
)


@pytest.mark.parametrize("agencies", [5, 3])
def test_course_scenario_each_agency_gets_exactly_its_winners(tmp_path, agencies):
    dataset = write_dataset(tmp_path / "data", total=6000, agencies=agencies, seed=agencies)
    with ServerProcess(tmp_path / "bets.db", "--agencies", str(agencies)) as server:
        results = run_agencies(server.port, dict(enumerate(dataset.files, start=1)), max_amount=50, window=4)
        assert {a: r.winners for a, r in results.items()} == dataset.winners
    # the server has stopped: every line it logged is read
    assert len(server.log_lines("sorteo", "success")) == 1
    assert sum(server.stored_counts()) == sum(dataset.rows)
    assert server.log_lines("apuesta_recibida", "fail") == []
    assert_files_stored_once_in_order(tmp_path / "bets.db", dataset.files)
    assert all(" | result: fail" not in line for line in server.lines)


@pytest.mark.skipif(not SHARED_DATASET.exists(), reason="../shared/data/dataset.zip is not here")
def test_the_real_data_set(tmp_path):
    with zipfile.ZipFile(SHARED_DATASET) as archive:
        archive.extractall(tmp_path / "data")
    files = {n: tmp_path / "data" / f"agency-{n}.csv" for n in range(1, 6)}
    with ServerProcess(tmp_path / "bets.db") as server:
        results = run_agencies(server.port, files)
        assert [len(results[n].winners) for n in range(1, 6)] == [2, 3, 3, 2, 0]
    assert sum(server.stored_counts()) == 78_697
    assert len(server.log_lines("sorteo", "success")) == 1


def test_pipelined_overlapping_and_duplicate_batches_store_each_bet_once(tmp_path):
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        peer = Peer(server.port)
        assert peer.hello(1) == p.Welcome(committed=0)
        all_bets = bets(1, 30).bets
        peer.send(
            p.Bets(1, all_bets[0:10]),
            p.Bets(11, all_bets[10:20]),
            p.Bets(1, all_bets[0:10]),  # resent: already stored
            p.Bets(15, all_bets[14:25]),  # overlaps: only 21..25 are new
            p.Bets(26, all_bets[25:30]),
        )
        assert [peer.read() for _ in range(5)] == [
            p.Ack(1, 10), p.Ack(11, 10), p.Ack(1, 10), p.Ack(15, 11), p.Ack(26, 5),
        ]
        peer.close()
        assert Peer(server.port).hello(1) == p.Welcome(committed=30)
    assert [row[3] for row in exported_rows(tmp_path / "bets.db")] == [b.document for b in all_bets]


def test_a_held_query_is_answered_when_the_last_agency_finishes_never_partially(tmp_path):
    with ServerProcess(tmp_path / "bets.db", "--agencies", "2") as server:
        first = Peer(server.port)
        first.hello(1)
        first.send(bets(1, 3, number=7574), p.Done(), p.WinnersQuery())
        assert first.read() == p.Ack(1, 3)
        assert first.read() == p.DoneAck()
        with pytest.raises(TimeoutError):
            first.read(timeout=0.5)
        assert server.log_lines("sorteo") == []
        second = Peer(server.port)
        second.hello(2)
        second.send(bets(1, 2, number=1), p.Done())
        assert second.read() == p.Ack(1, 2)
        assert second.read() == p.DoneAck()
        winners = first.read()
        assert winners == p.Winners(documents=tuple(b.document for b in bets(1, 3).bets), final=True)
        second.send(p.WinnersQuery())
        assert second.read() == p.Winners(documents=(), final=True)
        # a repeated query gets the same answer, at once
        first.send(p.WinnersQuery())
        assert first.read() == winners
    assert len(server.log_lines("sorteo", "success")) == 1


def test_a_restart_resumes_committed_done_and_the_draw(tmp_path):
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "2", "--winning-number", "42") as server:
        peer = Peer(server.port)
        peer.hello(1)
        peer.send(bets(1, 5, number=42), p.Done())
        assert peer.read() == p.Ack(1, 5) and peer.read() == p.DoneAck()
        peer = Peer(server.port)
        peer.hello(2)
        peer.send(bets(1, 4))
        assert peer.read() == p.Ack(1, 4)
    with ServerProcess(db, "--agencies", "2", "--winning-number", "42") as server:
        assert Peer(server.port).hello(1) == p.Welcome(committed=5, agency_done=True, draw_done=False)
        peer = Peer(server.port)
        assert peer.hello(2) == p.Welcome(committed=4)
        peer.send(p.Done())
        assert peer.read() == p.DoneAck()
        peer.send(p.WinnersQuery())
        assert peer.read() == p.Winners(documents=(), final=True)
    assert len(server.log_lines("sorteo", "success")) == 1
    with ServerProcess(db, "--agencies", "2", "--winning-number", "42") as server:
        peer = Peer(server.port)
        assert peer.hello(1) == p.Welcome(committed=5, agency_done=True, draw_done=True)
        peer.send(p.WinnersQuery())
        assert len(peer.read().documents) == 5
    assert server.log_lines("sorteo") == []  # a finished draw is not drawn again


def test_the_server_is_one_thread_and_no_children(tmp_path):
    dataset = write_dataset(tmp_path / "data", total=3000, agencies=2)
    with ServerProcess(tmp_path / "bets.db", "--agencies", "2") as server:
        peers = [Peer(server.port) for _ in range(20)]
        run_agencies(server.port, dict(enumerate(dataset.files, start=1)), max_amount=20)
        proc = Path(f"/proc/{server.pid}")
        status = dict(line.split(":\t", 1) for line in (proc / "status").read_text().splitlines() if ":\t" in line)
        assert status["Threads"].strip() == "1"
        assert [t.name for t in (proc / "task").iterdir()] == [str(server.pid)]
        assert (proc / "task" / str(server.pid) / "children").read_text().strip() == ""
        for peer in peers:
            peer.close()


def test_export_and_stats(tmp_path):
    dataset = write_dataset(tmp_path / "data", total=500, agencies=2)
    with ServerProcess(tmp_path / "bets.db", "--agencies", "2") as server:
        run_agencies(server.port, dict(enumerate(dataset.files, start=1)))
    out = subprocess.run([sys.executable, "-m", "reactor", "stats", "--db", str(tmp_path / "bets.db")],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["total_bets"] == 500
    assert report["expected"] == 2 and report["missing"] == []
    assert report["agencies"] == [
        {"agency": n, "committed": dataset.rows[n - 1], "done": True, "winners": len(dataset.winners[n]),
         "digest": p.agency_digest(BetFile(dataset.files[n - 1]).bets()).hex()}  # each agency's receipt
        for n in (1, 2)
    ]
    assert report["draw"] == {
        "state": "done", "scanned": 500, "total": 500, "winning_number": 7574,
        "winners": sum(map(len, dataset.winners.values())), "commitment": None, "seed": None,
    }
    assert not {"connections", "bets_per_second", "uptime_s"} & report.keys()  # live only
    missing = subprocess.run([sys.executable, "-m", "reactor", "stats", "--db", str(tmp_path / "nope.db")],
                             cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
