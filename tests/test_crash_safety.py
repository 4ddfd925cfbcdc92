"""Nothing acknowledged is lost, nothing is stored twice: the server killed at random moments.

Five agencies ingest generated bets with the client library while the test kills
the server (SIGKILL: a crash; SIGTERM: a drain) at random points of the ingest and
restarts it on the same database and port. After every kill the database is read directly: every
bet acknowledged before the kill must be there. At the end every row of every file
is stored exactly once and in file order, and the winners are exact.

LOTTERY_TEST_PROFILE=long (make test-long) runs 400,000 bets and 24 kills.
"""

from __future__ import annotations

import random
import signal
import sqlite3

import pytest

from datagen import write_dataset
from tests.conftest import LONG
from tests.harness import AckTracker, AgencyRuns, ServerProcess, assert_files_stored_once_in_order, wait_until

BETS, KILLS = (400_000, 24) if LONG else (60_000, 4)


def stored_per_agency(db) -> dict[int, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return dict(connection.execute("SELECT agency, COUNT(*) FROM bets GROUP BY agency").fetchall())


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_random_kills_lose_nothing_acknowledged_and_store_everything_once(tmp_path, signum):
    rng = random.Random(signum)
    dataset = write_dataset(tmp_path / "data", total=BETS, agencies=5, seed=11)
    db = tmp_path / "bets.db"
    acks = AckTracker(range(1, 6))
    server = ServerProcess(db).start()
    port = server.port
    agencies = AgencyRuns(port, dict(enumerate(dataset.files, start=1)), acks,
                          per_agency={a: {"max_amount": rng.choice([40, 99, 150])} for a in range(1, 6)},
                          window=4, retries=10_000, backoff_base=0.02, backoff_cap=0.2, io_timeout=10)
    # Kills happen at points of ACK progress, one at random inside each of KILLS equal
    # slices of the data set. Timed kills let a fast server finish before the second one.
    total = sum(dataset.rows)
    kill_points = [int((slice_ + rng.random()) * total / (KILLS + 1)) for slice_ in range(KILLS)]
    kills = 0
    try:
        for point in kill_points:
            reached = wait_until(lambda point=point: acks.total() >= point or bool(agencies.errors), timeout=120,
                                 interval=0.005)
            assert reached and not agencies.errors, f"ingest stopped before {point} ACKed bets: {agencies.errors}"
            with acks.lock:
                server.signal(signum)
                code = server.wait(20)
                snapshot = dict(acks.acked)  # every ACK read before the server was gone
            kills += 1
            if signum == signal.SIGTERM:
                assert code == 0, "a drain must exit 0:\n" + "\n".join(server.lines[-15:])
            stored = stored_per_agency(db)
            lost = {a: (stored.get(a, 0), n) for a, n in snapshot.items() if stored.get(a, 0) < n}
            assert not lost, f"acknowledged bets lost after kill {kills}: {lost}"
            server = ServerProcess(db, "--port", str(port)).start()
        results = agencies.join(180)
    finally:
        server.stop()
    print(f"{kills} kills; acknowledged {acks.total()} of {sum(dataset.rows)} bets")
    assert kills == KILLS
    assert_files_stored_once_in_order(db, dataset.files)
    for agency in results:
        assert results[agency].winners == dataset.winners[agency]


def test_random_faults_inside_turns_lose_nothing_acknowledged_and_store_everything_once(tmp_path):
    """Faults the loop isolates (a bug after staging a batch, a commit that raises)
    end one connection or roll one turn back; the agencies retry and finish."""
    dataset = write_dataset(tmp_path / "data", total=BETS // 2, agencies=5, seed=13)
    db = tmp_path / "bets.db"
    acks = AckTracker(range(1, 6))
    with ServerProcess(db, module="tests.faulty_reactor", env={"FAULT_RATE": "0.02", "FAULT_SEED": "5"}) as server:
        results = AgencyRuns(server.port, dict(enumerate(dataset.files, start=1)), acks, max_amount=99, window=4,
                             retries=10_000, backoff_base=0.01, backoff_cap=0.1, io_timeout=10).join(300)
        faults = len(server.log_lines("fault", "fail")) + len(server.log_lines("store", "fail"))
        assert faults >= 5, "the profile injected too few faults to prove anything"
        assert server.proc.poll() is None
    stored = assert_files_stored_once_in_order(db, dataset.files)
    assert all(len(stored[a]) >= n for a, n in acks.acked.items())
    for agency in results:
        assert results[agency].winners == dataset.winners[agency]
