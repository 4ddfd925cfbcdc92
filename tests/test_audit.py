"""`python -m reactor audit` (issue 14): passes on what a central stored, fails naming the place
when the database is changed by hand, and re-derives a verifiable draw.

The databases are a real central's. Each change is made with sqlite3 on a copy of a
finished lottery's database, after its central stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

import protocol as p
from reactor.audit import Audit
from reactor.store import Store
from tests.harness import (
    ROOT, Peer, ServerProcess, file_rows, finish, one_agency_mid_ingest, run_agencies, write_rows,
)
from tests.test_digest import reference_candidates, reference_digest
from tests.test_receipts import bets_of, receipt_of

SIZES = {1: 2500, 2: 1300, 3: 700}  # agency 1 finishes two blocks, 2 one, 3 none


def audit(db: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reactor", "audit", "--db", str(db), *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=300)


def audit_json(db: Path) -> tuple[int, dict]:
    done = audit(db, "--json")
    return done.returncode, json.loads(done.stdout)


def rowid_of(db: Path, agency: int, bet: int) -> int:
    """The rowid of the agency's bet number `bet` (its bet-th row)."""
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT rowid FROM bets WHERE agency = ? ORDER BY rowid LIMIT 1 OFFSET ?",
                                  (agency, bet - 1)).fetchone()[0]


def copy_of(db: Path, target: Path) -> Path:
    target.mkdir()
    for name in os.listdir(db.parent):
        if name.startswith(db.name):
            shutil.copy(db.parent / name, target / name)
    return target / db.name


def changed(db: Path, target: Path, *statements: tuple[str, tuple]) -> Path:
    """A copy of `db` with the statements run on it."""
    copy = copy_of(db, target)
    with sqlite3.connect(copy) as connection:
        for sql, params in statements:
            connection.execute(sql, params)
    return copy


@pytest.fixture(scope="module")
def lottery(tmp_path_factory):
    """A finished lottery of three agencies, its central stopped: the database, the files, the receipts."""
    where = tmp_path_factory.mktemp("lottery")
    files = {agency: write_rows(where / f"agency-{agency}.csv", rows, agency) for agency, rows in SIZES.items()}
    winning = int(file_rows(files[1])[99][4])  # a number agency 1 holds, so there are winners
    db = where / "bets.db"
    with ServerProcess(db, "--agencies", "3", "--winning-number", str(winning)) as server:
        results = run_agencies(server.port, files, max_amount=99)
    winners = {agency: [row for row in file_rows(path) if int(row[4]) == winning] for agency, path in files.items()}
    return {"db": db, "files": files, "results": results, "winning": winning, "winners": winners}


# --- what a central stored passes ------------------------------------------------------------


def test_a_finished_lottery_passes_and_shows_each_agencys_receipt(lottery):
    code, report = audit_json(lottery["db"])
    assert code == 0, report
    assert report["ok"] and all(check["ok"] for check in report["checks"].values())
    for agency, path in lottery["files"].items():
        shown = report["agencies"][str(agency)]
        assert shown["bets"] == shown["committed"] == SIZES[agency] and shown["done"]
        assert shown["digest"] == receipt_of(path).hex() == lottery["results"][agency].receipt.hex()
        assert shown["winners"] == len(lottery["winners"][agency])
    assert report["draw"]["winning_number"] == lottery["winning"]
    assert report["draw"]["winners"] == sum(map(len, lottery["winners"].values())) > 0
    text = audit(lottery["db"])
    assert text.returncode == 0 and text.stderr == ""
    assert text.stdout.splitlines()[-1] == "audit: ok"
    assert f"agency 1: bets: 2500 | committed: 2500 | done: yes | winners: {len(lottery['winners'][1])}" in text.stdout


def test_the_audit_passes_while_a_central_serves_and_after_it_is_killed(tmp_path):
    with one_agency_mid_ingest(tmp_path) as run:
        code, serving = audit_json(run.db)  # read-only, beside the central's writes
        assert code == 0, serving
        assert serving["agencies"]["1"]["bets"] > 0 and serving["draw"] is None
        run.server.kill()
        code, killed = audit_json(run.db)
        assert code == 0, killed
        assert killed["agencies"]["1"]["bets"] >= serving["agencies"]["1"]["bets"]
        run.restart_server()
        code, out = finish(run.agency)
        assert code == 0, out
    data, db = run.data, run.db
    code, report = audit_json(db)
    assert code == 0, report
    assert report["agencies"]["1"]["digest"] == receipt_of(data).hex()


# --- a database changed by hand fails, naming the place -------------------------------------------


def winner_bet(lottery) -> tuple[int, int]:
    """(agency, bet number) of agency 1's first winning bet."""
    rows = file_rows(lottery["files"][1])
    return 1, next(i for i, row in enumerate(rows, start=1) if int(row[4]) == lottery["winning"])


def not_winning(lottery, agency: int, bet: int) -> int:
    """A number that is neither the bet's nor the winning number."""
    number = int(file_rows(lottery["files"][agency])[bet - 1][4])
    return next(n for n in range(10_000) if n not in (number, lottery["winning"]))


def test_one_stored_bets_number_changed_names_its_agency_and_block(lottery, tmp_path):
    db = lottery["db"]
    copy = changed(db, tmp_path / "c", ("UPDATE bets SET number = ? WHERE rowid = ?",
                                        (not_winning(lottery, 1, 1500), rowid_of(db, 1, 1500))))
    failed(copy, "digests", agency=1, bets=[1025, 2048], message="block 2's hash differs")


def test_a_bet_changed_in_the_unfinished_last_block_differs_from_the_receipt(lottery, tmp_path):
    """Bets 2049..2500 of agency 1 finish no block, so no H_i covers them: the receipt does."""
    db = lottery["db"]
    copy = changed(db, tmp_path / "c", ("UPDATE bets SET number = ? WHERE rowid = ?",
                                        (not_winning(lottery, 1, 2400), rowid_of(db, 1, 2400))))
    failed(copy, "digests", agency=1, bets=[2049, 2500], message="another digest than the receipt")
    refused = subprocess.run([sys.executable, "-m", "reactor", "--port", "0", "--admin-port", "off", "--agencies",
                              "3", "--winning-number", str(lottery["winning"]), "--db", str(copy)],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 1 and "no longer give the receipt" in refused.stdout  # the central too


def test_a_deleted_row_names_its_agency(lottery, tmp_path):
    db = lottery["db"]
    copy = changed(db, tmp_path / "c", ("DELETE FROM bets WHERE rowid = ?", (rowid_of(db, 1, 10),)))
    report = failed(copy, "committed", agency=1, message="committed is 2500, but 2499 bets are stored")
    assert report["checks"]["digests"]["agency"] == 1 and report["checks"]["digests"]["bets"] == [1, 1024]


@pytest.mark.parametrize("edit", ["delete", "document", "insert", "agency"])
def test_an_edited_winners_table_names_the_bet(lottery, tmp_path, edit):
    db = lottery["db"]
    agency, bet = winner_bet(lottery)
    rowid = rowid_of(db, agency, bet)
    statement, place, message = {
        "delete": (("DELETE FROM winners WHERE bet_rowid = ?", (rowid,)), (agency, bet),
                   "has the winning number"),
        "document": (("UPDATE winners SET document = '1' WHERE bet_rowid = ?", (rowid,)), (agency, bet),
                     "with document '1'"),
        "insert": (("INSERT INTO winners VALUES (?, 2, 'x')", (rowid_of(db, 2, 5),)), (2, 5),
                   "listed as a winner, but its number is"),
        "agency": (("UPDATE winners SET agency = 3 WHERE bet_rowid = ?", (rowid,)), (agency, bet),
                   "listed as a winner of agency 3"),
    }[edit]
    if edit == "insert" and int(file_rows(lottery["files"][2])[4][4]) == lottery["winning"]:
        pytest.skip("agency 2's bet 5 is a winner in this data")
    copy = changed(db, tmp_path / "c", statement)
    failed(copy, "winners", agency=place[0], bets=[place[1], place[1]], message=message)


@pytest.mark.parametrize("case", ["invalid_bet", "tail_rowid", "blocks", "committed", "foreign_agency"])
def test_other_changes_fail_their_check(lottery, tmp_path, case):
    db = lottery["db"]
    statement, check, agency, bets, message = {
        "invalid_bet": (("UPDATE bets SET document = '12a' WHERE rowid = ?", (rowid_of(db, 2, 7),)),
                        "bets", 2, [7, 7], "document: must be 1 to 16 ASCII digits"),
        "tail_rowid": (("UPDATE agencies SET tail_rowid = tail_rowid + 1 WHERE agency = 1", ()),
                       "digests", 1, [2049, 2049], "tail_rowid is"),
        "blocks": (("UPDATE agencies SET blocks = CAST(zeroblob(32) || substr(blocks, 33) AS BLOB) WHERE agency = 1",
                    ()),
                   "digests", 1, [1, 1024], "block 1's hash differs"),
        "committed": (("UPDATE agencies SET committed = committed - 1 WHERE agency = 3", ()),
                      "committed", 3, None, "committed is 699, but 700 bets are stored"),
        "foreign_agency": (("INSERT INTO bets VALUES (9, 'Ana', 'Paz', '1', '1990-01-01', 5)", ()),
                           "committed", 9, None, "not one of the lottery's agencies 1..3"),
    }[case]
    failed(changed(db, tmp_path / "c", statement), check, agency=agency, bets=bets, message=message)


def failed(db: Path, check: str, agency: int, message: str, bets: list | None = None) -> dict:
    """Asserts the audit fails `check` first at `agency` (and `bets`), with exit 1 and one line; the report."""
    done = audit(db, "--json")
    assert done.returncode == 1, done
    (line,) = done.stderr.splitlines()
    assert "fails" in line and check in line
    report = json.loads(done.stdout)
    found = report["checks"][check]
    assert not found["ok"] and found["agency"] == agency and message in found["message"], found
    if bets is not None:
        assert found["bets"] == bets, found
    text = audit(db)
    assert text.returncode == 1 and f"{check}: FAIL: {'' if agency is None else f'agency {agency}'}" in text.stdout
    return report


# --- a verifiable draw ---------------------------------------------------------------------------


def test_a_verifiable_draw_re_derives_and_a_changed_seed_or_commitment_is_caught(tmp_path):
    files = {agency: write_rows(tmp_path / f"agency-{agency}.csv", rows, agency)
             for agency, rows in ((1, 1100), (2, 900))}
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "2", "--winning-number", "verifiable") as server:
        (line,) = server.log_lines("draw_commitment", "success")
        commitment = line.split("commitment: ")[1]
        peer = Peer(server.port)  # agency 1 by hand: its receipt is DONE_ACK's
        peer.send(p.Hello(agency=1, version=2))
        peer.decoder = p.FrameDecoder(p.Role.CLIENT, version=2)
        assert peer.read() == p.Welcome(0, digest=receipt_of(files[1], 0))
        first = 1
        for batch in p.pack_batches([p.Bet(*bet) for bet in bets_of(file_rows(files[1]))], 150):
            peer.send(p.Bets(first, tuple(batch)))
            assert peer.read() == p.Ack(first, len(batch))
            first += len(batch)
        peer.send(p.Done())
        receipt_1 = peer.read()
        peer.close()
        assert receipt_1 == p.DoneAck(1100, receipt_of(files[1]))

        code, before = audit_json(db)  # agency 2 is not done: no draw, and the seed stays secret
        assert code == 0, before
        assert before["lottery"]["commitment"] == commitment and before["lottery"]["seed"] is None
        assert "seed: (revealed at the draw)" in audit(db).stdout

        results = run_agencies(server.port, {2: files[2]})
        assert server.wait_for_line("sorteo", "success")
    (line,) = server.log_lines("sorteo", "success")
    number = int(line.split("numero_ganador: ")[1].split(" ")[0])
    seed = bytes.fromhex(line.split("seed: ")[1])

    # Anyone with the commitment, the revealed seed and the two receipts can check the number.
    assert hashlib.sha256(seed).hexdigest() == commitment
    *_, derived = reference_candidates(seed, [receipt_1.digest, results[2].receipt])
    assert derived == number

    code, report = audit_json(db)
    assert code == 0, report
    assert report["lottery"]["seed"] == seed.hex() and report["draw"]["winning_number"] == number

    other_seed = bytes(32) if seed != bytes(32) else b"\x01" * 32
    failed(changed(db, tmp_path / "seed", ("UPDATE lottery SET seed = ?", (other_seed,))),
           "draw", agency=None, message="not the commitment")
    failed(changed(db, tmp_path / "commitment", ("UPDATE lottery SET commitment = ?", ("0" * 64,))),
           "draw", agency=None, message="not the commitment 0000")
    failed(changed(db, tmp_path / "number", ("UPDATE draw SET winning_number = ?", ((number + 1) % 10_000,))),
           "draw", agency=None, message=f"derive {number}")
    # A bet of an unfinished block is covered by no stored hash, but by the draw's number
    # (a document chosen so that the number it derives differs, as it does but for 1 in 10,000).
    bets_2 = bets_of(file_rows(files[2]))

    def derived_with(document: str) -> int:
        edited = [*bets_2[:-1], (*bets_2[-1][:2], document, *bets_2[-1][3:])]
        return list(reference_candidates(seed, [receipt_1.digest, reference_digest(edited)]))[-1]

    document = next(d for d in map(str, range(100, 200)) if derived_with(d) != number)
    failed(changed(db, tmp_path / "bet", ("UPDATE bets SET document = ? WHERE rowid = ?",
                                          (document, rowid_of(db, 2, 900)))),
           "draw", agency=None, message="the seed and the agencies' digests derive")


# --- the command's mistakes and its memory ----------------------------------------------------------


def test_a_missing_or_foreign_database_is_one_line(tmp_path):
    missing = audit(tmp_path / "none.db")
    assert missing.returncode == 2 and "does not exist" in missing.stderr and len(missing.stderr.splitlines()) == 1
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE t (x)")
    done = audit(foreign)
    assert done.returncode == 1 and "not a lottery central database" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_damaged_database_fails_integrity_in_one_line(lottery, tmp_path):
    copy = copy_of(lottery["db"], tmp_path / "c")
    size = copy.stat().st_size
    with open(copy, "r+b") as stream:
        stream.seek(size // 2)
        stream.write(b"\xff" * 4096)  # a page or two of bets destroyed
    done = audit(copy)
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert "integrity: FAIL" in done.stdout


def test_the_server_settings_name_the_database(lottery, tmp_path):
    ini = tmp_path / "server.ini"
    ini.write_text(f"[server]\ndb = {lottery['db']}\nport = 1\n")
    done = subprocess.run([sys.executable, "-m", "reactor", "audit", "--config", str(ini), "--json"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["ok"]
    by_env = subprocess.run([sys.executable, "-m", "reactor", "audit"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "SERVER_DB": str(lottery["db"])},
                            capture_output=True, text=True, timeout=120)
    assert by_env.returncode == 0 and by_env.stdout.endswith("audit: ok\n")
    bad = subprocess.run([sys.executable, "-m", "reactor", "audit", "--nope"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) <= 2  # argparse's usage, then the line


def test_the_audit_streams_the_bets(tmp_path):
    """100,000 bets in memory would take tens of MB; the audit holds a slice of rows at a time."""
    db = tmp_path / "bets.db"
    store = Store(db, "off")
    store.record_lottery(1, "7574")
    bets = [(f"Ana{i % 97}", "Paz", str(10_000_000 + i), "1990-01-01", i % 10_000) for i in range(100_000)]
    state = p.AgencyDigest()
    for start in range(0, len(bets), p.BLOCK_BETS):  # a block a batch: each stores its block's hash
        block = bets[start : start + p.BLOCK_BETS]
        before = state.n
        state.extend(b"".join(map(p.encode_bet, block)), len(block))
        first_rowid = store.stage_bets(1, block)
        tail = first_rowid if state.n % p.BLOCK_BETS else None  # the last, unfinished block starts here
        store.stage_agency(1, state.n, state.completed_blocks(before // p.BLOCK_BETS), tail, state.digest())
    store.commit()
    store.close()
    del bets
    connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    tracemalloc.start()
    report = Audit(connection).run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    connection.close()
    assert report.findings.ok, report.lines()
    assert report.accounts[1].digest.digest() == state.digest()
    assert peak < 4_000_000, peak  # bytes: the rows fetched at a time, not the 100,000
