"""The central's commands, the demo, the Makefile and the package, used as a user would (issue 15).

Each test runs the program with the arguments, environment or file the user had, and
checks the one line it ends with, its exit code, and that nothing was stored or
written wrongly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from datagen import generate_bets, write_dataset
from reactor.store import Store
from runtime.settings import __version__
from tests.harness import ROOT, ServerProcess, env_for, env_without_make, one_error_line, write_rows

SERVER_INI = """[server]
host = 127.0.0.1
port = 0
db = {db}
durability = full
max_connections = 100
handshake_timeout = 10
idle_timeout = 60
frame_timeout = 10
drain_timeout = 5

[lottery]
agencies = 1
winning_number = 7574

[log]
level = INFO
"""


# --- local helpers ---------------------------------------------------------------------
def reactor(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reactor", *args], cwd=cwd, env=env or env_for(),
                          capture_output=True, text=True, timeout=120)


def database_with_bets(path: Path, rows: int) -> list[tuple]:
    """A central's database holding `rows` bets of agency 1; the rows as export writes them."""
    bets = [tuple(bet) for bet in generate_bets(1, rows)]
    store = Store(path)
    for start in range(0, rows, 300):
        store.stage_bets(1, bets[start:start + 300])
        store.stage_agency(1, min(start + 300, rows), b"", None)  # what export and stats read
        store.commit()
    store.close()
    return [(1, *bet) for bet in bets]


def csv_lines(rows: list[tuple]) -> list[str]:
    return [",".join(str(field) for field in row) for row in rows]


def process_group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


# --- export and stats --------------------------------------------------------------------
def test_export_to_a_pipe_closed_early_is_quiet_and_exit_141(tmp_path):
    rows = database_with_bets(tmp_path / "bets.db", 5000)  # ~250 KB: more than a pipe holds
    pipeline = (f"{sys.executable} -m reactor export --db {tmp_path / 'bets.db'} --csv - | head -1; "
                "exit ${PIPESTATUS[0]}")
    done = subprocess.run(["bash", "-c", pipeline], cwd=ROOT, env=env_for(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 141
    assert done.stdout.splitlines() == csv_lines(rows[:1])
    assert done.stderr == ""


def test_stats_on_a_file_that_is_not_a_database_is_one_line_and_exit_1(tmp_path):
    for name, content in [("notes.db", b"these are my notes, not a database\n" * 100), ("empty.db", b"")]:
        path = tmp_path / name
        path.write_bytes(content)
        for command in (["stats"], ["export", "--csv", str(tmp_path / "out.csv")]):
            done = reactor(*command, "--db", str(path))
            assert done.returncode == 1, (name, command)
            assert str(path) in one_error_line(done.stderr)
            assert path.read_bytes() == content  # nothing was written into it
    assert not (tmp_path / "out.csv").exists()


def test_export_into_a_missing_directory_is_one_line_and_exit_2(tmp_path):
    database_with_bets(tmp_path / "bets.db", 10)
    out = tmp_path / "nonexistent" / "dir" / "out.csv"
    done = reactor("export", "--db", str(tmp_path / "bets.db"), "--csv", str(out))
    assert done.returncode == 2
    assert "does not exist" in one_error_line(done.stderr)
    assert not (tmp_path / "nonexistent").exists()


def test_export_writes_the_file_whole_and_leaves_nothing_else(tmp_path):
    rows = database_with_bets(tmp_path / "bets.db", 700)
    done = reactor("export", "--db", str(tmp_path / "bets.db"), "--csv", str(tmp_path / "bets.csv"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bets.csv").read_text(encoding="utf-8").splitlines() == csv_lines(rows)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("bets.db")) == ["bets.csv"]


def test_stats_and_export_read_the_servers_settings(tmp_path):
    rows = database_with_bets(tmp_path / "bets.db", 50)
    ini = tmp_path / "server.ini"
    ini.write_text(SERVER_INI.format(db=tmp_path / "bets.db"))  # every key the server's own file may hold
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for how in ({"SERVER_CONFIG": str(ini)}, {"SERVER_DB": str(tmp_path / "bets.db")}):
        done = reactor("stats", env=env_for(**how), cwd=elsewhere)
        assert done.returncode == 0, (how, done.stderr)
        assert json.loads(done.stdout)["total_bets"] == 50
    done = reactor("export", "--config", str(ini), "--csv", "-", cwd=elsewhere)
    assert done.returncode == 0 and done.stdout.splitlines() == csv_lines(rows)
    missing = reactor("stats", cwd=elsewhere)  # the default, ./data/bets.db, is not there
    assert missing.returncode == 2
    assert "data/bets.db does not exist (set it with --db, SERVER_DB or [server] db)" in one_error_line(missing.stderr)


# --- the server's settings, help and addresses ---------------------------------------------------
@pytest.mark.parametrize("ini, named", [
    ("[lottery]\nagencys = 7\n", "[lottery] agencys: unknown key (known in [lottery]: agencies, winning_number)"),
    ("[lottery]\naddress =\n", "[lottery] address: unknown key"),
    ("[sever]\nport = 1\n", "unknown section [sever]"),
])
def test_an_unknown_config_key_or_section_stops_the_server_with_one_line(tmp_path, ini, named):
    (tmp_path / "config.ini").write_text(ini)
    done = reactor("--port", "0", "--db", str(tmp_path / "bets.db"), cwd=tmp_path)
    assert done.returncode == 2
    assert named in one_error_line(done.stderr)
    assert not (tmp_path / "bets.db").exists()
    stats = reactor("stats", "--db", str(tmp_path / "bets.db"), cwd=tmp_path)  # the same file, the same rule
    assert stats.returncode == 2 and named in one_error_line(stats.stderr)


def test_the_servers_help_lists_its_exit_codes_and_both_say_their_version():
    help_text = reactor("--help").stdout
    assert "Exit codes: 0 stopped by SIGTERM, SIGINT or SIGHUP after draining; 1 could not" in help_text
    assert "3 stopped on purpose after a fault" in help_text
    for command in ([], ["stats"], ["export"]):
        done = reactor(*command, "--version")
        assert done.returncode == 0 and done.stdout.split()[-1] == __version__
    assert "Exit codes:" in reactor("export", "--help").stdout


def ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_the_central_serves_on_ipv6(tmp_path):
    data = write_rows(tmp_path / "agency.csv", 40)
    with ServerProcess(tmp_path / "bets.db", "--host", "::1", "--agencies", "1") as server:
        done = subprocess.run([sys.executable, "-m", "client", "--agency", "1", "--server", f"[::1]:{server.port}",
                               "--data", str(data)], cwd=ROOT, env=env_for(), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    assert sum(server.stored_counts()) == 40


# --- the demo -------------------------------------------------------------------------------------
def demo(tmp_path: Path, bets: int, env: dict, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "scripts/demo.py", "--data", str(tmp_path / "demo"), "--bets", str(bets)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_the_demo_sets_what_it_relies_on(tmp_path):
    leaks = {"SERVER_WINNING_NUMBER": "1696", "SERVER_AGENCIES": "2", "CLI_BATCH_MAXAMOUNT": "many",
             "CLI_ON_INVALID": "skip", "LOGGING_LEVEL": "ERROR", "CLI_WINNERS_TIMEOUT": "0.001"}
    proc = demo(tmp_path, 3000, {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | leaks)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert out.rstrip().endswith("demo succeeded") and "EXPECTED" not in out
    assert "numero_ganador: 7574" in out


def test_ctrl_c_during_the_demo_is_one_line_and_leaves_no_process(tmp_path):
    # The terminal sends SIGINT to the whole foreground process group: the demo, the central, the agencies.
    proc = demo(tmp_path, 200_000, env_for(), start_new_session=True)
    for line in proc.stdout:
        if line.startswith("central listening"):
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert one_error_line(err) == ("demo interrupted (SIGINT): the central and the agencies are stopped "
                                   "(make demo starts over)")
    assert "Traceback" not in out
    assert process_group_members(proc.pid) == []


# --- the Makefile and the package ----------------------------------------------------------------
def test_the_makefile_writes_the_data_for_as_many_agencies_as_the_compose_file_runs(tmp_path):
    compose = tmp_path / "docker-compose.yml"
    made = subprocess.run([str(ROOT / "generate-compose.sh"), str(compose), "10"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    (tmp_path / ".data" / "agency-7.csv").mkdir(parents=True)  # what Docker leaves for a missing file
    done = subprocess.run(["make", "--no-print-directory", "compose-data", f"COMPOSE_FILE={compose}", "BETS=500"],
                          cwd=ROOT, env=env_without_make(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = write_dataset(tmp_path / "expected", total=500, agencies=10)
    for n in range(1, 11):
        assert (tmp_path / ".data" / f"agency-{n}.csv").read_bytes() == expected.files[n - 1].read_bytes()


def test_make_clean_removes_build_output(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for directory in ("build/lib/reactor", "dist", "lottery_central.egg-info", ".data", "kept"):
        (tmp_path / directory).mkdir(parents=True)
    done = subprocess.run(["make", "clean"], cwd=tmp_path, env=env_without_make(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "kept"]


def test_pip_install_gives_two_programs_that_say_their_own_names(tmp_path):
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for package in ("protocol", "reactor", "client", "runtime", "datagen", "bench"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(source)], capture_output=True,
                               text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    bin_ = venv / "bin"
    for program in ("lottery-central", "lottery-agency", "lottery-datagen"):
        helped = subprocess.run([str(bin_ / program), "--help"], capture_output=True, text=True, timeout=60)
        assert helped.returncode == 0 and helped.stdout.startswith(f"usage: {program} "), program
        version = subprocess.run([str(bin_ / program), "--version"], capture_output=True, text=True, timeout=60)
        assert version.stdout.strip() == f"{program} {__version__}"
    stats = subprocess.run([str(bin_ / "lottery-central"), "stats", "--db", str(tmp_path / "none.db")],
                           capture_output=True, text=True, timeout=60)
    assert stats.returncode == 2 and one_error_line(stats.stderr).startswith("lottery-central stats: error:")
    site = next((venv / "lib").glob("python3*/site-packages"))
    assert not (site / "bench").exists() and (site / "reactor").is_dir()
    metadata = next(site.glob("lottery_central-*.dist-info")) / "METADATA"
    assert "License-Expression: MIT" in metadata.read_text()
