"""`make demo`: the whole lottery on this machine, without Docker.

Generates the agency files, starts the central on a free port with a fresh
database, runs one `python -m client` per agency at once, and prints each agency's
winners (checked against what the generator knows) and a summary. Only the
standard library is needed.

The demo sets everything it relies on: both programs get a config file it writes,
and none of the SERVER_*, CLI_* or LOGGING_LEVEL variables of the caller's
environment. Ctrl-C stops the central and the agencies and ends in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datagen import COURSE_SIZES, DEFAULT_WINNING_NUMBER, write_dataset  # noqa: E402

PORT_LINE = re.compile(r"action: accept_connections \| result: in_progress \| port: (\d+)")
ADMIN_PORT_LINE = re.compile(r"action: accept_admin_connections \| result: in_progress \| port: (\d+)")
WINNERS_LINE = re.compile(r"^agency (\d+): (\d+) winners: (.*)$", re.M)
INGEST_SECONDS = re.compile(r"action: resumen \|.* segundos_envio: ([0-9.]+)")

# The demo's settings, whatever the caller's environment or ./config.ini say.
SERVER_INI = """[server]
host = 127.0.0.1
port = 0
db = {db}
durability = full

[lottery]
agencies = {agencies}
winning_number = {winning_number}

[admin]
host = 127.0.0.1
port = 0

[log]
level = INFO
"""
CLIENT_INI = """[client]
window = 8
retries = 10
on_invalid = stop
winners_timeout = 0
token =

[batch]
maxAmount = 150

[tls]
enabled = false

[log]
level = INFO
"""


def own_environment() -> dict[str, str]:
    """The caller's environment without the variables either program reads as a setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVER_", "CLI_")) and k != "LOGGING_LEVEL"}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM: stop the central and the agencies, then leave."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, frame) -> None:
    raise Interrupted(signum)


def main() -> int:
    # Set here, not inherited: a shell starts a background job with SIGINT ignored, and
    # a SIGTERM would otherwise end the demo and leave the central and agencies running.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".data", help="directory of agency-N.csv (default .data)")
    parser.add_argument("--agencies", type=int, default=len(COURSE_SIZES))
    parser.add_argument("--bets", type=int, default=sum(COURSE_SIZES), help="total bets generated")
    args = parser.parse_args()
    processes: list[subprocess.Popen] = []
    try:
        return run(args, processes)
    except OSError as error:  # e.g. a directory where an agency file goes
        stop(processes)
        print(f"demo: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 1
    except Interrupted as interrupted:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C does not cut the clean-up short
        stop(processes)
        print(f"\ndemo interrupted ({interrupted}): the central and the agencies are stopped (make demo starts over)",
              file=sys.stderr)
        return 128 + interrupted.signum


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def spawn(processes: list[subprocess.Popen], command: list[str], **popen) -> subprocess.Popen:
    """Starts a child and records it in `processes` with Ctrl-C held off meanwhile.

    A Ctrl-C that landed between the fork and the record would leave a child that
    the clean-up does not know, still running after the demo has gone. The child
    starts with the signals unblocked again (a mask survives exec).
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        proc = subprocess.Popen(command, cwd=ROOT, preexec_fn=lambda: signal.pthread_sigmask(
            signal.SIG_UNBLOCK, STOP_SIGNALS), **popen)
        processes.append(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    return proc


class Central(NamedTuple):
    """A central a script started, and the files it made for it."""

    process: subprocess.Popen
    log: Path
    server_ini: Path
    client_ini: Path
    db: Path


def start_central(processes: list[subprocess.Popen], data: Path, name: str, agencies: int,
                  env: dict[str, str]) -> Central:
    """A central on a fresh `<name>.db` in `data`, from config files of its own."""
    db = data / f"{name}.db"
    for leftover in data.glob(f"{name}.db*"):
        leftover.unlink()
    server_ini, client_ini = data / f"{name}-server.ini", data / f"{name}-client.ini"
    server_ini.write_text(SERVER_INI.format(db=db, agencies=agencies, winning_number=DEFAULT_WINNING_NUMBER))
    client_ini.write_text(CLIENT_INI)
    server_log = data / f"{name}-server.log"
    with open(server_log, "w") as log_file:  # a file, not a pipe: the central never blocks on its log
        server = spawn(processes, [sys.executable, "-m", "reactor", "--config", str(server_ini)],
                       env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return Central(server, server_log, server_ini, client_ini, db)


def stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the central drains; an agency closes, a rerun resumes
    for proc in processes:
        proc.wait()


def run(args: argparse.Namespace, processes: list[subprocess.Popen]) -> int:
    dataset = write_dataset(args.data, total=args.bets, agencies=args.agencies)
    print(f"generated {sum(dataset.rows):,} bets for {args.agencies} agencies in {args.data}/")
    env = own_environment()
    server, server_log, server_ini, client_ini, db = start_central(processes, args.data, "demo", args.agencies, env)
    port, deadline = None, time.monotonic() + 15
    while port is None and time.monotonic() < deadline and server.poll() is None:
        match = PORT_LINE.search(server_log.read_text())
        port = int(match.group(1)) if match else time.sleep(0.05)
    if port is None:
        print(f"the central did not start; see {server_log}", file=sys.stderr)
        return 1
    admin = ADMIN_PORT_LINE.search(server_log.read_text())
    print(f"central listening on 127.0.0.1:{port} (log: {server_log})")
    if admin:
        print(f"status page: http://127.0.0.1:{admin.group(1)}/ (while the demo runs)")

    started = time.monotonic()
    clients = [
        spawn(processes, [sys.executable, "-m", "client", "--config", str(client_ini), "--agency", str(n),
                          "--server", f"127.0.0.1:{port}", "--data", str(path)],
              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n, path in enumerate(dataset.files, start=1)
    ]
    outputs = [proc.communicate()[0] for proc in clients]
    elapsed = time.monotonic() - started
    server.send_signal(signal.SIGTERM)
    server.wait(30)
    draws = [line for line in server_log.read_text().splitlines() if "action: sorteo | result: success" in line]
    for line in draws:
        print(f"  server | {line}")

    ok = all(proc.returncode == 0 for proc in clients) and server.returncode == 0 and len(draws) == 1
    print(f"\nwinners (winning number {DEFAULT_WINNING_NUMBER}):")
    for n, (proc, out) in enumerate(zip(clients, outputs), start=1):
        found = {int(a): docs.split() if docs != "-" else [] for a, _, docs in WINNERS_LINE.findall(out)}
        winners = found.get(n)
        expected = dataset.winners[n]
        mark = "ok" if winners == expected else f"EXPECTED {expected}"
        ok &= winners == expected
        print(f"  agency {n}: {len(winners or [])} winners {' '.join(winners or []) or '-'}  [{mark}]")
        if proc.returncode != 0:
            print(f"  agency {n} exited {proc.returncode}:\n{out}")

    stats = json.loads(subprocess.run([sys.executable, "-m", "reactor", "stats", "--config", str(server_ini)],
                                      cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout)
    stored = stats["total_bets"]
    # The rate counts the sending only: up to the last agency's last ACK, not the draw.
    ingest = max((float(s) for out in outputs for s in INGEST_SECONDS.findall(out)), default=elapsed)
    print(f"\nsummary: {stored:,} bets stored ({stored / max(ingest, 1e-9):,.0f} bets/s over {ingest:.2f} s of "
          f"sending, the slowest agency's); start to winners {elapsed:.2f} s; database {db}")
    print("demo " + ("succeeded" if ok and stored == sum(dataset.rows) else "FAILED"))
    return 0 if ok and stored == sum(dataset.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
