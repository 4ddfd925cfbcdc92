"""`python -m bench` (`make bench`): the server measured the way an operator would.

Scenarios (each on a fresh database, every configuration `--repeats` times, in
round robin, medians):
  1 course    5 agencies, the course's uneven sizes (78,697 bets), window 8
  2 scale     50 agencies x 20,000 bets (1,000,000), window 8
  3 idle      scenario 2 with 10,000 idle connections held open (ours also runs
              without them, interleaved, for the slowdown)
  4 latency   5 agencies, window 1
Servers: ours (`python -m reactor`); an `asyncio.Protocol` server written the
straightforward way (a commit per BETS frame); `asyncio-turn`, the same with the
central's group commit ported onto it (the control: only the I/O layer differs);
a thread per connection (`socketserver.ThreadingTCPServer`); and a null server that
only ACKs (the load generator's ceiling). All but null run the same lottery service
and SQLite store (bench/servers.py). PLAN below says which run in which scenario
and at which durability; --servers and --durability narrow it.
Before the servers, the floors: the codec and the store alone, in this process.
Ratios are to ours in the same run: these machines are shared and noisy, so only
same-run ratios compare. Results print as a table and go to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from datagen import COURSE_SIZES, agency_sizes

from .floors import measure as measure_floors
from .loadgen import AgencyLoad, LoadGenerator
from .proc import cpu_seconds, fd_count, free_port, status_kb

ROOT = Path(__file__).resolve().parents[1]


class Server:
    """One server process under test, with its log in a file."""

    def __init__(self, kind: str, durability: str, agencies: int, workdir: Path) -> None:
        self.kind = kind
        db = workdir / f"{kind}-{durability}-{time.monotonic_ns()}.db"
        self.port = free_port()
        if kind == "ours":
            command = ["-m", "reactor", "--host", "127.0.0.1", "--port", str(self.port), "--db", str(db),
                       "--agencies", str(agencies), "--durability", durability, "--log-level", "INFO",
                       "--handshake-timeout", "3600", "--idle-timeout", "3600", "--max-connections", "20000",
                       "--admin-port", "off"]
        else:
            command = ["-m", "bench.servers", kind, "--port", str(self.port), "--db", str(db),
                       "--agencies", str(agencies), "--durability", durability]
        self.log = workdir / f"{db.name}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        # Waits for the listening line rather than probing with a connection, which
        # would still be closing while the idle connections are counted.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            if "action: accept_connections | result: in_progress" in self.log.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{kind} did not start: {self.log.read_text()}")

    def status_kb(self, key: str) -> int:
        return status_kb(self.proc.pid, key)

    def fd_count(self) -> int:
        return fd_count(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        match = re.search(r"action: shutdown .*longest_turn_ms: ([\d.]+)", self.log.read_text())
        return {"longest_turn_ms": float(match.group(1))} if match else {}


def open_idle(server: Server, count: int) -> list[socket.socket]:
    """`count` connections that send nothing, returned once the server holds them all
    (its fd count says so: a burst of connects overflows the accept queue, and the
    kernel's SYN retries would otherwise land them during the measured run)."""
    base = server.fd_count()
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", server.port))
        sockets.append(sock)
    deadline = time.monotonic() + 60
    while server.fd_count() < base + count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.kind} holds {server.fd_count() - base} of {count} idle connections")
        time.sleep(0.1)
    time.sleep(0.5)  # let the accept bursts' garbage settle before RSS is read
    return sockets


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(generator: LoadGenerator, kind: str, durability: str, agencies: int, window: int, idle: int,
            workdir: Path) -> dict:
    server = Server(kind, durability, agencies, workdir)
    rss_base = server.status_kb("VmRSS")
    idle_sockets = open_idle(server, idle) if idle else []
    rss_idle = server.status_kb("VmRSS")
    cpu_before = server.cpu_seconds()
    result, wall = generator.run(server.port, window)
    cpu = server.cpu_seconds() - cpu_before
    peak = server.status_kb("VmHWM")
    extra = server.stop()  # before the idle connections close: their hang-up is not the run's
    for sock in idle_sockets:
        sock.close()
    if result.errors:
        raise RuntimeError(f"{kind}/{durability}: {result.errors[:3]}")
    return {
        "bets": result.bets,
        "wall_s": wall,
        "bets_per_s": result.bets / wall,
        "ack_p50_ms": 1000 * percentile(result.latencies, 0.50),
        "ack_p99_ms": 1000 * percentile(result.latencies, 0.99),
        "peak_rss_mb": peak / 1024,
        "cpu_s": cpu,
        "idle_bytes_each": (rss_idle - rss_base) * 1024 / idle if idle else None,
        **extra,
    }


def scenario_loads(name: str, scale: float) -> tuple[list[AgencyLoad], int, int]:
    """(loads, window, idle connections) of a scenario; `scale` shrinks it for smoke runs."""
    if name == "course":
        sizes = agency_sizes(max(5, int(sum(COURSE_SIZES) * scale)), 5)
        return [AgencyLoad(a, n) for a, n in enumerate(sizes, start=1)], 8, 0
    if name in ("scale", "idle"):
        per = max(1, int(20_000 * scale))
        return [AgencyLoad(a, per) for a in range(1, 51)], 8, int(10_000 * scale) if name == "idle" else 0
    if name == "latency":
        sizes = agency_sizes(max(5, int(sum(COURSE_SIZES) * scale / 4)), 5)
        return [AgencyLoad(a, n) for a, n in enumerate(sizes, start=1)], 1, 0
    raise ValueError(name)


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, wanted)), hard))


PLAN = {
    "course": [("ours", "full"), ("ours", "off"), ("asyncio", "full"), ("asyncio", "off"), ("threaded", "full")],
    "scale": [("ours", "full"), ("ours", "off"), ("asyncio", "full"), ("asyncio", "off"), ("asyncio-turn", "full"),
              ("threaded", "full"), ("null", "off")],
    "idle": [("ours", "full"), ("asyncio", "full"), ("threaded", "full")],
    "latency": [("ours", "full"), ("ours", "off"), ("asyncio", "full"), ("asyncio", "off"), ("threaded", "full")],
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(PLAN))
    parser.add_argument("--servers", default="ours,asyncio,asyncio-turn,threaded,null",
                        help="run only these servers of the plan")
    parser.add_argument("--durability", default="full,off", help="run only these durabilities of the plan")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every scenario (smoke runs)")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--max-amount", type=int, default=150)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    servers, durabilities = args.servers.split(","), args.durability.split(",")

    started = time.monotonic()
    floor_bets = max(1_000, int(200_000 * args.scale))
    floors = measure_floors(floor_bets, "full", args.max_amount)
    print(f"  floors: codec {floors['codec_bets_per_s']:,.0f} bets/s, store (full) "
          f"{floors['store_bets_per_s']:,.0f} bets/s, both on one core {floors['serial_floor_bets_per_s']:,.0f}",
          flush=True)
    raise_fd_limit(12_000)  # scenario 3, in this process and the servers it starts
    generator = LoadGenerator(args.processes)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="lottery-bench-") as tmp:
            for name in args.scenarios.split(","):
                loads, window, idle = scenario_loads(name, args.scale)
                generator.prepare(loads, args.max_amount)
                configs = [(kind, durability) for kind, durability in PLAN[name]
                           if kind in servers and (durability in durabilities or kind == "null")]
                runs = {config: [] for config in configs}
                without_idle = []
                # Round robin over the configurations, so that the machine's drift over
                # minutes hits every server alike and same-run ratios stay comparable.
                for _ in range(args.repeats):
                    for kind, durability in configs:
                        runs[kind, durability].append(
                            measure(generator, kind, durability, len(loads), window, idle, Path(tmp)))
                        if idle and kind == "ours":
                            without_idle.append(
                                measure(generator, kind, durability, len(loads), window, 0, Path(tmp))["bets_per_s"])
                for (kind, durability), config_runs in runs.items():
                    row = summarize(name, kind, durability, config_runs)
                    if idle and kind == "ours":
                        row["without_idle_runs"] = without_idle
                        row["without_idle_bets_per_s"] = statistics.median(without_idle)
                    rows.append(row)
                    print(f"  {name:8} {kind:12} {durability:5} {row['bets_per_s']:>10,.0f} bets/s "
                          f"p99 {row['ack_p99_ms']:.1f} ms", flush=True)
    finally:
        generator.close()

    print()
    print_table(rows)
    print()
    print_targets(rows, floors)
    machine = {"python": platform.python_version(), "platform": platform.platform(),
               "cpus": os.cpu_count(), "processor": _cpu_model()}
    minutes = (time.monotonic() - started) / 60
    print(f"\nmachine: {machine['cpus']} CPUs, {machine['processor']}, Python {machine['python']}; "
          f"medians of {args.repeats} runs; {minutes:.1f} minutes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "args": vars(args) | {"out": str(args.out)},
                                    "floors": floors, "rows": rows}, indent=2))
    print(f"saved {args.out}")
    return 0


def summarize(scenario: str, kind: str, durability: str, runs: list[dict]) -> dict:
    row = {"scenario": scenario, "server": kind, "durability": durability, "runs": runs}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        # a stall is judged by the worst run, everything else by the median
        summary = max if key == "longest_turn_ms" else statistics.median
        row[key] = summary(values) if values else None
    return row


def print_table(rows: list[dict]) -> None:
    ours = {(r["scenario"], r["durability"]): r for r in rows if r["server"] == "ours"}
    header = (f"{'scenario':9} {'server':12} {'dur':4} {'wall s':>6} {'bets/s':>10} {'x ours':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'RSS MB':>7} {'CPU s':>6} {'turn ms':>7} {'B/idle':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        base = ours.get((r["scenario"], r["durability"])) or ours.get((r["scenario"], "off"))
        ratio = r["bets_per_s"] / base["bets_per_s"] if base else float("nan")
        turn = f"{r['longest_turn_ms']:.1f}" if r.get("longest_turn_ms") is not None else "-"
        idle_each = f"{r['idle_bytes_each']:.0f}" if r.get("idle_bytes_each") else "-"
        print(f"{r['scenario']:9} {r['server']:12} {r['durability']:4} {r['wall_s']:>6.2f} {r['bets_per_s']:>10,.0f} "
              f"{ratio:>7.2f} {r['ack_p50_ms']:>7.2f} {r['ack_p99_ms']:>7.2f} {r['peak_rss_mb']:>7.1f} "
              f"{r['cpu_s']:>6.2f} {turn:>7} {idle_each:>7}")
    print("x ours: bets/s relative to ours at the same durability; turn ms: the central's longest loop "
          "turn, worst of the runs; B/idle: server RSS per idle connection")


def print_targets(rows: list[dict], floors: dict) -> None:
    """Issue #7's targets against this run's figures (what is missing is skipped)."""
    get = {(r["scenario"], r["server"], r["durability"]): r for r in rows}.get
    print("targets (issue #7) in this run:")
    ours = get(("scale", "ours", "full"))
    if ours:
        rate = ours["bets_per_s"]
        print(f"  scale, full: ours {rate:,.0f} bets/s (target 400,000); "
              f"{rate / floors['serial_floor_bets_per_s']:.0%} of this machine's one-core floor")
        others = [(kind, get(("scale", kind, "full"))) for kind in ("asyncio", "asyncio-turn", "threaded")]
        ratios = ", ".join(f"{rate / other['bets_per_s']:.2f}x {kind}" for kind, other in others if other)
        if ratios:
            print(f"    {ratios} (target: 2x asyncio)")
        print(f"  longest turn during scale: {ours.get('longest_turn_ms', float('nan')):.1f} ms (target < 50)")
    idle = get(("idle", "ours", "full"))
    if idle and idle.get("without_idle_runs"):
        # each idle run against the run without idle sessions right after it
        slowdown = statistics.median(1 - run["bets_per_s"] / without
                                     for run, without in zip(idle["runs"], idle["without_idle_runs"]))
        print(f"  idle: {idle['idle_bytes_each']:,.0f} bytes per idle session (target <= 2,048); scale slowed "
              f"by {slowdown:+.0%} with them, the median over pairs of back-to-back runs (target <= 10%)")
    latency, asyncio_latency = get(("latency", "ours", "full")), get(("latency", "asyncio", "full"))
    if latency and asyncio_latency:
        print(f"  latency, full: ACK p99 {latency['ack_p99_ms']:.1f} ms, "
              f"asyncio {asyncio_latency['ack_p99_ms']:.1f} ms (target: no worse)")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
