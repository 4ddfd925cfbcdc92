"""`python -m client` run as a user runs it, mistakes included (issue 15).

Each test starts the program with the arguments, environment or file the user had,
and checks the one line it ends with, its exit code, and what the central stored.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from runtime.settings import __version__
from tests.harness import ROOT, ServerProcess, env_for, file_rows, one_error_line, stored_rows, wait_until, write_rows


# --- local helpers ---------------------------------------------------------------------
def run_client(*args: str, env: dict | None = None, cwd: Path = ROOT, code: str | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m client ARGS` (or `python -c CODE ARGS`), stdout and stderr kept apart."""
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "client", *args]
    return subprocess.run(command, cwd=cwd, env=env_for(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def start_client(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "client", *args], cwd=ROOT, env=env_for(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def log_fields(out: str, action: str) -> list[dict[str, str]]:
    """The key: value fields of each `action` line."""
    found = []
    for line in out.splitlines():
        if f"action: {action} |" in line:
            parts = line.split("action: ", 1)[1].split(" | ")
            found.append(dict(part.split(": ", 1) for part in parts[1:]))
    return found


# --- the data file -----------------------------------------------------------------------
def test_a_data_path_that_is_a_directory_is_one_line_and_exit_2(tmp_path):
    # What Docker mounts when the agency's file is missing: a directory.
    (tmp_path / "agency.csv").mkdir()
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        done = run_client("--agency", "1", "--server", f"127.0.0.1:{server.port}", "--data", str(tmp_path / "agency.csv"))
        assert done.returncode == 2
        assert "agency.csv is a directory, not a file" in one_error_line(done.stderr)
        assert server.log_lines("apuesta_recibida") == []


def test_a_bom_and_spaces_around_fields_are_not_part_of_the_bet(tmp_path):
    data = tmp_path / "agency.csv"
    data.write_bytes("\ufeffRenata,Gómez,30111222,1990-01-01,7574\r\n"
                     "  Ana ,\tPérez\t, 30111333 , 1991-02-03 , 12 \r\n"
                     "María José,Lorca,30111444,1992-03-04,5\r\n".encode())
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        done = run_client("--agency", "1", "--server", f"127.0.0.1:{server.port}", "--data", str(data))
        assert done.returncode == 0, done.stdout + done.stderr
        assert "agency 1: 1 winners: 30111222" in done.stdout
    assert stored_rows(tmp_path / "bets.db") == [
        ["Renata", "Gómez", "30111222", "1990-01-01", "7574"],
        ["Ana", "Pérez", "30111333", "1991-02-03", "12"],
        ["María José", "Lorca", "30111444", "1992-03-04", "5"],
    ]


def test_a_name_of_only_spaces_is_an_empty_name(tmp_path):
    data = tmp_path / "agency.csv"
    data.write_text("Ana,Gómez,1,1990-01-01,5\n   ,Paz,2,1990-01-01,5\n", encoding="utf-8")
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        done = run_client("--agency", "1", "--server", f"127.0.0.1:{server.port}", "--data", str(data))
    assert done.returncode == 3
    assert f"file: {data}:2 | field: first_name | reason: must have 1 to 64 characters, has 0" in done.stdout
    assert stored_rows(tmp_path / "bets.db") == [["Ana", "Gómez", "1", "1990-01-01", "5"]]


# --- invalid rows: one vocabulary, and stop stores everything before the bad row ------------
def test_stop_stores_every_row_before_the_bad_one_and_a_fixed_file_resumes(tmp_path):
    data = write_rows(tmp_path / "agency.csv", 6000)
    good = data.read_text(encoding="utf-8").splitlines(keepends=True)
    bad = good.copy()
    bad[4999] = "Ana,Gómez,12x,1990-01-01,5\r\n"  # row 5,000
    data.write_text("".join(bad), encoding="utf-8", newline="")
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "1") as server:
        address = f"127.0.0.1:{server.port}"
        stopped = run_client("--agency", "1", "--server", address, "--data", str(data))
        assert stopped.returncode == 3, stopped.stdout
        [line] = [line for line in stopped.stdout.splitlines() if "fila_invalida" in line]
        assert line.endswith(f"action: fila_invalida | result: fail | agency: 1 | file: {data}:5000 | field: document "
                             "| reason: must be 1 to 16 ASCII digits, is '12x' | policy: stop")
        assert sum(server.stored_counts()) == 4999
        assert stored_rows(db) == file_rows(data)[:4999]

        data.write_text("".join(good), encoding="utf-8", newline="")  # the operator fixes row 5,000
        rerun = run_client("--agency", "1", "--server", address, "--data", str(data))
        assert rerun.returncode == 0, rerun.stdout
        [summary] = log_fields(rerun.stdout, "resumen")
        assert (summary["filas"], summary["ya_almacenadas"], summary["enviadas"], summary["almacenadas"]) == \
            ("6000", "4999", "1001", "6000")
    assert stored_rows(db) == file_rows(data)


def test_skip_logs_the_same_line_as_stop(tmp_path):
    data = write_rows(tmp_path / "agency.csv", 20)
    rows = data.read_text(encoding="utf-8").splitlines(keepends=True)
    rows[4] = "Ana,Gómez,12x,1990-01-01,5\r\n"
    data.write_text("".join(rows), encoding="utf-8", newline="")
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        done = run_client("--agency", "1", "--server", f"127.0.0.1:{server.port}", "--data", str(data),
                          "--on-invalid", "skip")
    assert done.returncode == 0, done.stdout
    [skipped] = log_fields(done.stdout, "fila_invalida")
    assert skipped == {"result": "in_progress", "agency": "1", "file": f"{data}:5", "field": "document",
                       "reason": "must be 1 to 16 ASCII digits, is '12x'", "policy": "skip"}
    [summary] = log_fields(done.stdout, "resumen")
    assert (summary["filas"], summary["almacenadas"], summary["omitidas"]) == ("20", "19", "1")


# --- the server's address and the waits ------------------------------------------------------
def test_the_default_server_is_this_machine():
    done = run_client("--help")
    assert done.returncode == 0
    assert "default 127.0.0.1:12345" in " ".join(done.stdout.split())
    assert "('server'" not in done.stdout


def test_a_server_name_that_does_not_resolve_is_exit_2_at_once_naming_the_flag(tmp_path):
    data = write_rows(tmp_path / "agency.csv", 5)
    done = run_client("--agency", "1", "--server", "no-such-central.invalid:12345", "--data", str(data),
                      "--retries", "10")
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "no-such-central.invalid" in line and "--server HOST:PORT" in line
    assert "action: conexion" not in done.stdout  # no retries: the name is wrong, not the network


def test_winners_timeout_is_one_total_wait_with_its_own_line_and_exit_4(tmp_path):
    data = write_rows(tmp_path / "agency.csv", 300)
    db = tmp_path / "bets.db"
    with ServerProcess(db, "--agencies", "2") as server:  # agency 2 never comes: no draw
        done = run_client("--agency", "1", "--server", f"127.0.0.1:{server.port}", "--data", str(data),
                          "--winners-timeout", "1", "--retries", "5")
    assert done.returncode == 4, done.stdout
    [failed] = log_fields(done.stdout, "espera_sorteo")
    assert failed["result"] == "fail" and failed["agency"] == "1" and "no draw within 1 s" in failed["reason"]
    assert "action: conexion" not in done.stdout and "gave up" not in done.stdout
    assert stored_rows(db) == file_rows(data)


# --- numbers that say what they count ---------------------------------------------------------
def test_progress_shows_the_files_real_row_count(tmp_path):
    data = write_rows(tmp_path / "agency.csv", 3000)
    assert data.stat().st_size // 47 != 3000  # the old estimate would show another total
    # The program as the user runs it, with progress lines every ACK instead of every 5 s.
    code = ("import sys, client.agency as agency; agency.PROGRESS_EVERY = 0; from client.__main__ import main; "
            "sys.argv[0] = 'client'; sys.exit(main(sys.argv[1:]))")
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        done = run_client("--agency", "1", "--server", f"127.0.0.1:{server.port}", "--data", str(data),
                          "--batch-max-amount", "100", code=code)
    assert done.returncode == 0, done.stdout + done.stderr
    progress = log_fields(done.stdout, "progreso")
    assert len(progress) == 30
    assert [p["almacenadas"] for p in progress] == [str(100 * n) for n in range(1, 31)]
    assert {p["filas"] for p in progress} == {"3000"} and {p["agency"] for p in progress} == {"1"}


def test_the_rate_counts_the_sending_not_the_wait_for_the_draw(tmp_path):
    first, second = write_rows(tmp_path / "a1.csv", 2000, 1), write_rows(tmp_path / "a2.csv", 10, 2)
    with ServerProcess(tmp_path / "bets.db", "--agencies", "2") as server:
        address = f"127.0.0.1:{server.port}"
        agency_1 = start_client("--agency", "1", "--server", address, "--data", str(first))
        assert wait_until(lambda: sum(server.stored_counts()) == 2000, timeout=120)
        time.sleep(2)  # agency 1 now waits for the draw at least this long
        assert run_client("--agency", "2", "--server", address, "--data", str(second)).returncode == 0
        out, _ = agency_1.communicate(timeout=120)
    assert agency_1.returncode == 0, out
    [summary] = log_fields(out, "resumen")
    ingest, total = float(summary["segundos_envio"]), float(summary["segundos_total"])
    assert total - ingest >= 1.99
    assert summary["enviadas"] == "2000" and summary["ya_almacenadas"] == "0"
    rate = int(summary["apuestas_por_segundo"])
    assert 2000 / (ingest + 0.005) <= rate + 1 and rate <= 2000 / max(ingest - 0.005, 1e-9) + 1


# --- output and configuration ------------------------------------------------------------------
def test_a_closed_stdout_does_not_end_the_run_nor_print_tracebacks(tmp_path):
    data = write_rows(tmp_path / "agency.csv", 3000)
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        # DEBUG and batches of 1: far more output than a pipe holds, so writes meet the closed pipe.
        pipeline = (f"{sys.executable} -m client --agency 1 --server 127.0.0.1:{server.port} --data {data} "
                    "--batch-max-amount 1 --log-level DEBUG | head -1; exit ${PIPESTATUS[0]}")
        done = subprocess.run(["bash", "-c", pipeline], cwd=ROOT, env=env_for(), capture_output=True, text=True,
                              timeout=300)
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) == 1
    assert done.stderr == ""
    assert stored_rows(tmp_path / "bets.db") == file_rows(data)


def test_an_unknown_config_key_or_section_is_one_line_and_exit_2(tmp_path):
    data = write_rows(tmp_path / "agency.csv", 5)
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        for ini, named in [
            (f"[server]\naddress = 127.0.0.1:{server.port}\n[client]\nagencys = 7\n", "[client] agencys: unknown key"),
            (f"[lottery]\naddress = 127.0.0.1:{server.port}\n", "unknown section [lottery]"),
        ]:
            (tmp_path / "config.ini").write_text(ini)
            done = run_client("--agency", "1", "--data", str(data), cwd=tmp_path)
            assert done.returncode == 2
            assert named in one_error_line(done.stderr)
        assert server.log_lines("apuesta_recibida") == []


def test_version_comes_from_one_place():
    done = run_client("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"python -m client {__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'version = { attr = "runtime.settings.__version__" }' in pyproject
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M)


def test_values_the_protocol_cannot_carry_are_settings_errors_and_a_token_is_never_repeated(tmp_path):
    data = write_rows(tmp_path / "agency.csv", 5)
    secret = "s3cret" * 11000  # 66,000 bytes: more than HELLO's u16 length
    with ServerProcess(tmp_path / "bets.db", "--agencies", "1") as server:
        address = f"127.0.0.1:{server.port}"
        for args, named in [
            (["--agency", str(2**32)], "--agency='4294967296': must be 1 to 4294967295"),
            (["--agency", "1", "--token", secret], "--token=(hidden): must be at most 65535 bytes"),
            (["--agency", "1", "--tls", "true", "--tls-ca", str(tmp_path / "missing.pem")], "missing.pem"),
            (["--agency", "1", "--tls", "true", "--tls-ca", str(data)], "TLS CA certificate"),
        ]:
            done = run_client("--server", address, "--data", str(data), *args)
            assert done.returncode == 2, args
            line = one_error_line(done.stderr)
            assert named in line and "s3cret" not in line
        assert server.log_lines("apuesta_recibida") == []
