"""The agency client, as `python -m client` and as a library, against the real server."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tracemalloc

import pytest

from client import BetFile, InvalidRow
from datagen import bet_line, generate_bets
from tests.harness import (
    ROOT, ServerProcess, agency_process, env_for, file_rows, finish, stored_rows, wait_until, write_rows,
)


CASES = [(m, r) for m in (10, 64, 99) for r in (16, 21, 64, 99)]


def test_batches_are_exactly_max_amount_but_the_last_and_cantidad_sums_to_the_rows(tmp_path):
    with ServerProcess(tmp_path / "bets.db", "--agencies", str(len(CASES))) as server:
        procs = []
        for agency, (max_amount, rows) in enumerate(CASES, start=1):
            data = write_rows(tmp_path / f"agency-{agency}.csv", rows, agency)
            procs.append(agency_process(server.port, agency, data, "--batch-max-amount", str(max_amount), "--log-level", "DEBUG"))
        outputs = [finish(proc) for proc in procs]
    # the server has stopped: every line it logged is read
    for agency, ((max_amount, rows), (code, out)) in enumerate(zip(CASES, outputs), start=1):
        assert code == 0, out
        sizes = [int(n) for n in re.findall(r"action: apuesta_enviada \| result: success \| cantidad: (\d+)", out)]
        assert sum(sizes) == rows
        assert all(size == max_amount for size in sizes[:-1]) and 0 < sizes[-1] <= max_amount
        stored = [int(line.split("cantidad: ")[1].split(" ")[0])
                  for line in server.log_lines("apuesta_recibida", "success") if line.endswith(f"| agency: {agency}")]
        assert sum(stored) == rows
        assert "action: consulta_ganadores | result: success | cant_ganadores: " in out
        assert " | result: fail" not in out and "action: interrupcion" not in out
        assert f"action: resumen | result: success | agency: {agency} | filas: {rows} |" in out


def test_a_killed_client_rerun_with_another_batch_size_stores_every_row_once(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 40_000)
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        first = agency_process(server.port, 1, data, "--batch-max-amount", "37", "--window", "2")
        assert wait_until(lambda: len(server.log_lines("apuesta_recibida", "success")) > 20, timeout=30)
        first.kill()
        first.wait()
        stored_before = sum(server.stored_counts())
        assert 0 < stored_before < 40_000
        code, out = finish(agency_process(server.port, 1, data, "--batch-max-amount", "150"))
        assert code == 0, out
    assert stored_rows(tmp_path / "bets.db", 1) == file_rows(data)


def test_no_server_gives_up_after_the_retries_with_one_fail_line(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 10)
    code, out = finish(agency_process(1, 1, data, "--retries", "2"))
    assert code == 1
    assert out.count("action: conexion | result: in_progress") == 2
    assert out.count("action: conexion | result: fail") == 1


def test_invalid_rows_stop_by_default_and_skip_reports_them(tmp_path):
    rows = [bet_line(b) for b in generate_bets(1, 30)]
    rows[9] = "Ana,Gómez,1234x678,1990-01-01,5\r\n"
    rows[19] = "Ana,Gómez,12345678,2023-02-30,5\r\n"
    data = tmp_path / "agency-1.csv"
    data.write_text("".join(rows), encoding="utf-8", newline="")
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        code, out = finish(agency_process(server.port, 1, data, "--batch-max-amount", "5"))
        assert code == 3, out
        assert f"action: fila_invalida | result: fail | agency: 1 | file: {data}:10 | field: document" in out
        assert sum(server.stored_counts()) == 9  # every row before the invalid one, nothing past it
        code, out = finish(agency_process(server.port, 1, data, "--on-invalid", "skip", "--batch-max-amount", "5"))
        assert code == 0, out
        # the same line under skip, only its result and policy differ
        assert f"action: fila_invalida | result: in_progress | agency: 1 | file: {data}:10 | field: document" in out
        assert f"file: {data}:20 | field: birthdate" in out
        assert "omitidas: 2" in out
    expected = [line.rstrip("\r\n").split(",") for i, line in enumerate(rows) if i not in (9, 19)]
    assert stored_rows(tmp_path / "bets.db", 1) == expected


def test_sigterm_closes_and_exits_interrupted_and_a_rerun_resumes(tmp_path):
    data = write_rows(tmp_path / "agency-1.csv", 40_000)
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        proc = agency_process(server.port, 1, data, "--batch-max-amount", "20", "--window", "1")
        assert wait_until(lambda: len(server.log_lines("apuesta_recibida", "success")) > 20, timeout=30)
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc)
        assert code == 128 + signal.SIGTERM
        assert "action: interrupcion | result: success" in out
        assert "action: close_socket | result: success" in out and "action: close_file | result: success" in out
        code, out = finish(agency_process(server.port, 1, data))
        assert code == 0, out
    assert stored_rows(tmp_path / "bets.db", 1) == file_rows(data)


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--agency", "0"], {}, "--agency='0': must be at least 1"),
        (["--agency", "1", "--server", "nohost"], {}, "--server='nohost': must be HOST:PORT"),
        (["--agency", "1"], {"CLI_WINDOW": "many"}, "CLI_WINDOW='many'"),
        (["--agency", "1", "--on-invalid", "ignore"], {}, "must be one of stop, skip"),
        (["--agency", "1", "--data", "/nonexistent.csv"], {}, "data file /nonexistent.csv"),
        ([], {}, "the agency number is required"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(tmp_path, args, env, message):
    proc = subprocess.run([sys.executable, "-m", "client", "--data", str(write_rows(tmp_path / "a.csv", 1)), *args],
                          cwd=ROOT, env=env_for(**env),
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_the_file_is_read_as_a_stream(tmp_path):
    data = tmp_path / "big.csv"
    with open(data, "w", encoding="utf-8", newline="") as out:
        for bet in generate_bets(1, 100_000):
            out.write(bet_line(bet))
    bet_file = BetFile(data)
    tracemalloc.start()
    count = sum(1 for _ in bet_file.bets())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 100_000
    assert peak < 1_000_000  # bytes: a few rows at a time, not the file (~4.5 MB)


def test_lf_crlf_and_a_final_blank_line_read_alike(tmp_path):
    crlf, lf = tmp_path / "crlf.csv", tmp_path / "lf.csv"
    crlf.write_bytes(b"Ana,G\xc3\xb3mez,1,1990-01-01,5\r\nLuis,Paz,2,1991-02-03,6\r\n\r\n")
    lf.write_bytes(b"Ana,G\xc3\xb3mez,1,1990-01-01,5\nLuis,Paz,2,1991-02-03,6")
    assert list(BetFile(crlf).bets()) == list(BetFile(lf).bets())
    assert [b.document for b in BetFile(lf).bets(skip=1)] == ["2"]
    broken = tmp_path / "broken.csv"
    broken.write_bytes(b"Ana,G\xff,1,1990-01-01,5\n")
    bet_file = BetFile(broken)
    assert list(bet_file.bets()) == []
    with pytest.raises(InvalidRow, match=r"broken.csv:1: line: invalid UTF-8"):
        bet_file.check_complete()


def test_settings_precedence_flag_env_file_default(tmp_path, monkeypatch):
    from runtime.settings import Option, load_settings, positive_int

    options = [Option("window", "CLI_WINDOW", "client", "window", 8, positive_int, "w")]
    ini = tmp_path / "config.ini"
    ini.write_text("[client]\nwindow = 3\n")
    load = lambda argv, env: load_settings("t", "", options, "CLI_CONFIG", argv, env).window  # noqa: E731
    assert load(["--config", str(ini), "--window", "5"], {"CLI_WINDOW": "4"}) == 5
    assert load(["--config", str(ini)], {"CLI_WINDOW": "4"}) == 4
    assert load(["--config", str(ini)], {}) == 3
    monkeypatch.chdir(tmp_path / "..")  # no ./config.ini here: the default stands
    assert load([], {}) == 8
    with pytest.raises(SystemExit) as exit_:
        load(["--config", str(tmp_path / "missing.ini")], {})
    assert exit_.value.code == 2
