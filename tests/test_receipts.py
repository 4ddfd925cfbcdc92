"""Receipts end to end (issue 14): the agency on protocol version 2 against the real central.

The digests an agency must see are computed here by the reference of test_digest
(hashlib over the encodings PROTOCOL.md gives) from the file's rows, not by the
client's code.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import protocol as p
from client import Agency, AgencyConfig, BetFile
from datagen import bet_line, generate_bets
from tests.harness import (
    ROOT, Peer, ServerProcess, agency_process, env_for, exported_rows, file_rows, finish, one_agency_mid_ingest,
    wait_until, write_rows,
)
from tests.test_digest import reference_digest


def bets_of(rows: list[list[str]]) -> list[tuple]:
    return [(*row[:4], int(row[4])) for row in rows]


def receipt_of(path: Path, rows: int | None = None) -> bytes:
    """digest(n) of the file's first `rows` rows (all of them by default): the receipt its agency must get."""
    return reference_digest(bets_of(file_rows(path))[:rows])


def stored(db: Path, agency: int) -> list[list[str]]:
    return [row[1:] for row in exported_rows(db) if row[0] == str(agency)]


def fail_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "| result: fail" in line]


def run_concurrently(port: int, runs: dict[int, tuple[Path, dict]]) -> dict:
    """One Agency per agency number, each with its own file and settings, at once; agency -> result."""
    results, errors = {}, {}

    def one(agency: int, path: Path, config: dict) -> None:
        try:
            results[agency] = Agency.from_file(
                AgencyConfig(agency=agency, host="127.0.0.1", port=port, **config), BetFile(path)
            ).run()
        except BaseException as error:  # reported in the test's thread
            errors[agency] = error

    threads = [threading.Thread(target=one, args=(agency, path, config)) for agency, (path, config) in runs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    return results


# --- against the real central ------------------------------------------------------------


def test_five_agencies_on_version_2_each_hold_the_receipt_of_their_file(tmp_path):
    sizes = {1: 2500, 2: 1024, 3: 1, 4: 3000, 5: 700}
    files = {agency: write_rows(tmp_path / f"agency-{agency}.csv", rows, agency) for agency, rows in sizes.items()}
    with ServerProcess(tmp_path / "bets.db", "--agencies", "5") as server:
        results = run_concurrently(server.port, {agency: (path, {"max_amount": 99}) for agency, path in files.items()})
    for agency, result in results.items():
        assert result.version == 2
        assert result.total == sizes[agency]
        assert result.receipt == receipt_of(files[agency])


def test_a_central_killed_mid_ingest_the_agency_resumes_once_and_its_receipt_still_matches(tmp_path):
    """The restart's WELCOME digest comes from what the central persisted, not from rereading the bets."""
    with one_agency_mid_ingest(tmp_path) as run:
        run.server.kill()  # SIGKILL: a crash, not a drain
        run.restart_server()
        code, out = finish(run.agency)
    data, db = run.data, run.db
    assert code == 0, out
    assert "action: conexion | result: in_progress" in out  # it did lose its session
    assert not fail_lines(out), out
    assert f"sha256: {receipt_of(data).hex()}" in out.splitlines()[-1]
    assert stored(db, 1) == file_rows(data)


def test_a_rerun_with_another_agencys_file_is_refused_and_stores_nothing_of_it(tmp_path):
    mine = write_rows(tmp_path / "agency-1.csv", 40_000, 1)
    other = write_rows(tmp_path / "agency-2.csv", 40_000, 2)
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "1") as server:
        first = agency_process(server.port, 1, mine, "--batch-max-amount", "37", "--window", "2")
        assert wait_until(lambda: len(server.log_lines("apuesta_recibida", "success")) > 20, timeout=60)
        first.kill()  # interrupted part way, as in the issue
        first.wait()

        code, out = finish(agency_process(server.port, 1, other, "--log-level", "DEBUG"))
        assert code == 5, out
        (line,) = fail_lines(out)
        assert "action: verificacion_archivo | result: fail | agency: 1" in line and str(other) in line
        held = int(line.split("the central holds ")[1].split(" bets of agency 1")[0])
        assert 0 < held < 40_000 and "not the file agency 1 sent" in line
        assert "apuesta_enviada" not in out  # nothing was sent
        now = stored(db, 1)  # the killed run's last batches may have landed after that WELCOME: more of mine
        assert len(now) >= held and now == file_rows(mine)[: len(now)]

        code, out = finish(agency_process(server.port, 1, mine))  # the right file resumes
        assert code == 0, out
    assert stored(db, 1) == file_rows(mine)


def test_a_file_edited_in_a_row_the_central_holds_or_cut_short_is_refused(tmp_path):
    lines = [bet_line(b) for b in generate_bets(1, 300)]
    lines[199] = "Ana,Gómez,1234x678,1990-01-01,5\r\n"  # stops the first run after 199 stored bets
    data = tmp_path / "agency-1.csv"
    data.write_text("".join(lines), encoding="utf-8", newline="")
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "1") as server:
        code, out = finish(agency_process(server.port, 1, data, "--batch-max-amount", "10"))
        assert code == 3, out
        assert len(stored(db, 1)) == 199
        fixed = [bet_line(b) for b in generate_bets(1, 300)]

        edited = list(fixed)
        fields = edited[49].split(",")
        fields[2] = "11111111"  # another document in a row the central holds
        edited[49] = ",".join(fields)
        data.write_text("".join(edited), encoding="utf-8", newline="")
        code, out = finish(agency_process(server.port, 1, data))
        assert code == 5, out
        assert "the central holds 199 bets of agency 1 and they differ from this file's first 199" in out

        data.write_text("".join(fixed[:100]), encoding="utf-8", newline="")
        code, out = finish(agency_process(server.port, 1, data))
        assert code == 5, out
        assert "the central holds 199 bets of agency 1 and this file has only 100" in out
        assert len(stored(db, 1)) == 199  # neither run sent a bet

        data.write_text("".join(fixed), encoding="utf-8", newline="")  # the row fixed, the rest as sent
        code, out = finish(agency_process(server.port, 1, data))
        assert code == 0, out
        assert f"sha256: {receipt_of(data).hex()}" in out
    assert stored(db, 1) == file_rows(data)


def test_a_version_1_and_a_version_2_agency_share_one_central(tmp_path):
    files = {agency: write_rows(tmp_path / f"agency-{agency}.csv", 1500, agency) for agency in (1, 2, 3)}
    with ServerProcess(tmp_path / "bets.db", "--agencies", "3") as server:
        # Agency 3 speaks version 1 by hand: every answer must parse in version 1's layouts.
        peer = Peer(server.port)
        peer.send(p.Hello(agency=3, version=1))
        assert peer.read() == p.Welcome(committed=0)
        bets = [p.Bet(*bet) for bet in bets_of(file_rows(files[3]))]
        first = 1
        for batch in p.pack_batches(bets, 150):
            peer.send(p.Bets(first, tuple(batch)))
            assert peer.read() == p.Ack(first, len(batch))
            first += len(batch)
        peer.send(p.Done())
        assert peer.read() == p.DoneAck()
        peer.close()
        again = Peer(server.port)
        again.send(p.Hello(agency=3, version=1))
        assert again.read() == p.Welcome(committed=1500, agency_done=True)
        again.close()

        results = run_concurrently(server.port, {1: (files[1], {"version": 1}), 2: (files[2], {})})
    assert (results[1].version, results[1].receipt) == (1, None)
    assert (results[2].version, results[2].receipt) == (2, receipt_of(files[2]))
    assert results[1].total == results[2].total == 1500


# --- against a central of a few lines -------------------------------------------------------


class FakeCentral:
    """Just enough central, on a thread, for the client's side of what the real one never
    does: speak only version 1, sign a wrong receipt, refuse a batch once, or die in the
    middle of a frame. It keeps one agency's bets in memory."""

    def __init__(self, versions=(1, 2), wrong_receipt=False, refuse_first_batch=None, cut_first_welcome=False):
        self.versions = versions
        self.wrong_receipt = wrong_receipt
        self.refuse_first_batch = refuse_first_batch  # an ErrorCode for the first BETS of the first session
        self.cut_first_welcome = cut_first_welcome
        self.hellos: list = []  # the version of every HELLO in order, "unsupported" for one refused
        self.bets: list[tuple] = []
        self._listener = __import__("socket").create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                try:
                    self._session(conn)
                except OSError:
                    pass  # the agency reset the connection (it closed with frames unread): its next session comes

    def _session(self, conn) -> None:
        decoder = p.FrameDecoder(p.Role.SERVER, version=max(self.versions))
        version = 1
        while not decoder.peer_closed:
            data = conn.recv(65536)
            if not data:
                return
            decoder.receive_data(data)
            try:
                for message in decoder.messages():
                    if isinstance(message, p.Hello):
                        version = message.version
                        self.hellos.append(version)
                        if self.cut_first_welcome and len(self.hellos) == 1:
                            conn.sendall(p.encode(p.Welcome(0))[:3])  # killed while sending
                            return
                    reply = self._answer(message, version)
                    conn.sendall(p.encode(reply))
            except p.ProtocolError as error:
                if error.code is p.ErrorCode.UNSUPPORTED_VERSION:
                    self.hellos.append("unsupported")
                conn.sendall(p.encode(p.Error(error.code, error.message)))
                return

    def _answer(self, message, version: int):
        digest = (lambda bets: p.agency_digest(bets)) if version == 2 else (lambda bets: None)
        if isinstance(message, p.Hello):
            return p.Welcome(len(self.bets), digest=digest(self.bets))
        if isinstance(message, p.Bets):
            if self.refuse_first_batch is not None:
                code, self.refuse_first_batch = self.refuse_first_batch, None
                return p.Error(code, "refused once by the test", message.first)
            if message.first > len(self.bets) + 1:
                return p.Error(p.ErrorCode.SEQUENCE_GAP, "gap", message.first)
            self.bets += message.bets[len(self.bets) + 1 - message.first :]
            return p.Ack(message.first, message.count)
        if isinstance(message, p.Done):
            if version == 1:
                return p.DoneAck()
            held = self.bets[:-1] if self.wrong_receipt else self.bets
            return p.DoneAck(len(self.bets), p.agency_digest(held))
        return p.Winners((), final=True)


def run_against(fake: FakeCentral, data: Path, *args: str) -> tuple[int, str]:
    try:
        return finish(agency_process(fake.port, 1, data, "--retries", "3", *args), timeout=120)
    finally:
        fake.close()


def test_a_central_that_speaks_only_version_1_is_asked_again_in_version_1(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 500, 1)
    fake = FakeCentral(versions=(1,))
    code, out = run_against(fake, data)
    assert code == 0, out
    assert fake.hellos == ["unsupported", 1]
    (line,) = [line for line in out.splitlines() if "action: version_protocolo" in line]
    assert "INFO" in line and "result: success | agency: 1 | version: 1" in line
    assert "sha256" not in out  # version 1 has no receipt
    assert fake.bets == bets_of(file_rows(data))


def test_a_receipt_that_does_not_name_the_bets_sent_is_exit_6(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 500, 1)
    code, out = run_against(FakeCentral(wrong_receipt=True), data)
    assert code == 6, out
    (line,) = fail_lines(out)
    assert "action: recibo | result: fail | agency: 1" in line
    assert f"this file has 500 (sha256 {receipt_of(data).hex()})" in line
    assert "winners" not in out


def test_a_right_receipt_is_on_the_final_line(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 2049, 1)
    fake = FakeCentral()
    code, out = run_against(fake, data, "--batch-max-amount", "7")
    assert code == 0, out
    assert fake.hellos == [2]
    assert "action: resumen" in out.splitlines()[-1] and out.splitlines()[-1].endswith(
        f"sha256: {receipt_of(data).hex()}")


def test_errors_the_protocol_says_to_retry_start_a_new_session_others_end_the_run(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 300, 1)
    for code in (p.ErrorCode.STORAGE_FAILED, p.ErrorCode.SEQUENCE_GAP):
        fake = FakeCentral(refuse_first_batch=code)
        exit_code, out = run_against(fake, data)
        assert exit_code == 0, out
        assert len(fake.hellos) == 2 and f"server answered {code.name}" in out
    fake = FakeCentral(refuse_first_batch=p.ErrorCode.AGENCY_CLOSED)
    exit_code, out = run_against(fake, data)
    assert exit_code == 1 and len(fake.hellos) == 1, out


def test_a_central_that_dies_in_the_middle_of_a_frame_is_a_lost_session(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 300, 1)
    fake = FakeCentral(cut_first_welcome=True)
    code, out = run_against(fake, data)
    assert code == 0, out
    assert "in the middle of a frame" in out and len(fake.hellos) == 2


# --- python -m client digest -------------------------------------------------------------


def digest_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client", "digest", *args], cwd=ROOT,
                          env=env_for(), capture_output=True, text=True, timeout=60)


def test_digest_prints_the_receipt_of_a_files_first_bets(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 2049, 1)
    for rows in (None, 0, 1, 1023, 1024, 1025, 2048):
        done = digest_command("--data", str(data), *([] if rows is None else ["--rows", str(rows)]))
        assert done.returncode == 0, done.stderr
        count = 2049 if rows is None else rows
        assert done.stdout == f"bets: {count} | sha256: {receipt_of(data, count).hex()}\n"


def test_digest_applies_the_agencys_row_rules(tmp_path):
    clean = write_rows(tmp_path / "clean.csv", 50, 1)
    rows = clean.read_text(encoding="utf-8").splitlines(keepends=True)
    messy = tmp_path / "messy.csv"  # a BOM, spaces around fields, LF, a blank line, an invalid row
    messy.write_text("\ufeff" + "".join(" " + row.replace(",", " ,\t").replace("\r\n", "\n") for row in rows[:20])
                     + "\nAna,Gómez,12x,1990-01-01,5\n" + "".join(rows[20:]), encoding="utf-8")
    expected = f"bets: 50 | sha256: {receipt_of(clean).hex()}\n"
    assert digest_command("--data", str(messy), "--on-invalid", "skip").stdout == expected
    stop = digest_command("--data", str(messy))
    assert stop.returncode == 3 and stop.stdout == ""
    assert f"{messy}:22: document" in stop.stderr and len(stop.stderr.splitlines()) == 1
    assert digest_command("--data", str(messy), "--rows", "20").stdout == (
        f"bets: 20 | sha256: {receipt_of(clean, 20).hex()}\n")


def test_digest_mistakes_are_one_line_and_their_exit_code(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 10, 1)
    for args, code, message in [
        (["--data", str(data), "--rows", "11"], 1, "has 10 bets, fewer than --rows 11"),
        (["--data", str(tmp_path / "missing.csv")], 2, "missing.csv: No such file or directory"),
        (["--data", str(tmp_path)], 2, "is a directory"),
        (["--data", str(data), "--rows", "-1"], 2, "--rows='-1': must be 0 or more"),
    ]:
        done = digest_command(*args)
        assert done.returncode == code, done
        assert message in done.stderr and len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
        assert done.stdout == ""
