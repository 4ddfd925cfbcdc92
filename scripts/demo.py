"""`make demo`: the whole lottery on this machine, without Docker.

Generates the agency files (unless they exist), starts the central on a free port
with a fresh database, runs one `python -m client` per agency at once, and prints
each agency's winners (checked against what the generator knows) and a summary.
Only the standard library is needed.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datagen import COURSE_SIZES, write_dataset  # noqa: E402

PORT_LINE = re.compile(r"action: accept_connections \| result: in_progress \| port: (\d+)")
WINNERS_LINE = re.compile(r"^agency (\d+): (\d+) winners: (.*)$", re.M)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / ".data", help="directory of agency-N.csv (default .data)")
    parser.add_argument("--agencies", type=int, default=len(COURSE_SIZES))
    parser.add_argument("--bets", type=int, default=sum(COURSE_SIZES), help="total bets generated")
    args = parser.parse_args()

    dataset = write_dataset(args.data, total=args.bets, agencies=args.agencies)
    print(f"generated {sum(dataset.rows):,} bets for {args.agencies} agencies in {args.data}/")
    db = args.data / "demo.db"
    for leftover in args.data.glob("demo.db*"):
        leftover.unlink()

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    server_log = args.data / "demo-server.log"
    with open(server_log, "w") as log_file:  # a file, not a pipe: the server never blocks on its log
        server = subprocess.Popen(
            [sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", "0", "--db", str(db),
             "--agencies", str(args.agencies)],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    port, deadline = None, time.monotonic() + 15
    while port is None and time.monotonic() < deadline and server.poll() is None:
        match = PORT_LINE.search(server_log.read_text())
        port = int(match.group(1)) if match else time.sleep(0.05)
    if port is None:
        print(f"the central did not start; see {server_log}", file=sys.stderr)
        return 1
    print(f"central listening on 127.0.0.1:{port} (log: {server_log})")

    started = time.monotonic()
    clients = [
        subprocess.Popen(
            [sys.executable, "-m", "client", "--agency", str(n), "--server", f"127.0.0.1:{port}",
             "--data", str(path)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
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
    print("\nwinners (winning number 7574):")
    for n, (proc, out) in enumerate(zip(clients, outputs), start=1):
        found = {int(a): docs.split() if docs != "-" else [] for a, _, docs in WINNERS_LINE.findall(out)}
        winners = found.get(n)
        expected = dataset.winners[n]
        mark = "ok" if winners == expected else f"EXPECTED {expected}"
        ok &= winners == expected
        print(f"  agency {n}: {len(winners or [])} winners {' '.join(winners or []) or '-'}  [{mark}]")
        if proc.returncode != 0:
            print(f"  agency {n} exited {proc.returncode}:\n{out}")

    stats = json.loads(subprocess.run([sys.executable, "-m", "reactor", "stats", "--db", str(db)],
                                      cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout)
    stored = stats["total_bets"]
    print(f"\nsummary: {stored:,} bets stored in {elapsed:.2f} s ({stored / elapsed:,.0f} bets/s), "
          f"database {db}")
    print("demo " + ("succeeded" if ok and stored == sum(dataset.rows) else "FAILED"))
    return 0 if ok and stored == sum(dataset.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
