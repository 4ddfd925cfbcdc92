"""`python -m bench.client_memory`: the agency's peak RSS for a small and a large file.

Runs `python -m client` against the central for files of each size and reads the
client's VmHWM from /proc as it runs. A streaming client shows about the same peak
for both sizes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datagen import bet_line, generate_bets

from .proc import free_port, status_kb

ROOT = Path(__file__).resolve().parents[1]


def run_one(rows: int, workdir: Path) -> tuple[int, float]:
    data = workdir / f"agency-{rows}.csv"
    with open(data, "w", encoding="utf-8", newline="") as out:
        for bet in generate_bets(1, rows):
            out.write(bet_line(bet))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "reactor", "--host", "127.0.0.1", "--port", str(port),
                               "--db", str(workdir / f"{rows}.db"), "--agencies", "1", "--log-level", "WARNING",
                               "--admin-port", "off"],
                              cwd=ROOT, env=env)
    time.sleep(1.0)
    started = time.monotonic()
    client = subprocess.Popen([sys.executable, "-m", "client", "--agency", "1", "--server", f"127.0.0.1:{port}",
                               "--data", str(data), "--log-level", "WARNING"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL)
    peak = 0
    while client.poll() is None:
        peak = max(peak, status_kb(client.pid, "VmHWM"))
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    server.terminate()
    server.wait()
    if client.returncode != 0:
        raise RuntimeError(f"client exited {client.returncode}")
    return peak, elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client_memory", description=__doc__)
    parser.add_argument("--sizes", default="100000,1000000", help="row counts, comma-separated")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lottery-client-") as tmp:
        for rows in map(int, args.sizes.split(",")):
            peak, elapsed = run_one(rows, Path(tmp))
            print(f"client, {rows:>10,} rows: peak RSS {peak / 1024:6.1f} MB, {elapsed:6.1f} s "
                  f"({rows / elapsed:,.0f} bets/s)")


if __name__ == "__main__":
    main()
