"""`python -m bench` (`make bench`): the central measured the way an operator would, beside its peers.

Scenarios (each server on a fresh database, every configuration `--repeats` times,
in round robin, medians):
  1 course    5 agencies, the course's uneven sizes (78,697 bets), window 8
  2 scale     50 agencies x 20,000 bets (1,000,000), window 8; each round ends
              with the one-core floor (bench/floors.py), in this process, at the
              commit cadence the central showed in that round
  3 idle      scenario 2 with 10,000 idle connections held open (ours also runs
              without them, right after, for the slowdown)
  4 latency   5 agencies, window 1
  restart     scenario 2's bets sent to a central that is then stopped before any
              DONE; then the time from process start to `accept_connections` of a
              central opening that database, against an empty one
Servers: ours (`python -m reactor`), with the admin listener off; `ours-admin`, the
same with the admin listener on and scraped every second (GET /metrics and
/status.json); `ours-nodigest`, a central that keeps no agency digests (issue 14,
bench/nodigest_reactor.py). The peers and
controls are in bench/servers.py: asyncio, uvloop (skipped with a note when not
installed), threaded, asyncio-turn (the control), asyncio-csv and uvloop-csv (issue
16's reference kind: CSV, no fsync), null (the load generator's ceiling).
PLAN says which run in which scenario and at which durability; --servers and
--durability narrow it. Ratios are from the same run only: these machines are
shared and noisy. Results print as a table, then issue 16's, 13's and 14's targets
beside this run's figures, and go to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import http.client
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
import threading
import time
from pathlib import Path

from datagen import COURSE_SIZES, agency_sizes

from . import floors
from .loadgen import AgencyLoad, LoadGenerator
from .proc import cpu_seconds, fd_count, free_port, status_kb
from .servers import NEEDS_UVLOOP

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "action: accept_connections | result: in_progress"
ADMIN_LINE = re.compile(r"action: accept_admin_connections \| result: in_progress \| port: (\d+)")

# Issue 14: the central with its digests switched off (bench/nodigest_reactor.py), for
# the A/B of what keeping them costs.
OURS_WITHOUT_DIGESTS = "bench.nodigest_reactor"
# Issue 14: the central hashes each batch for the agency digest, so the floor does it
# too (--floor-digest overrides it).
CENTRAL_KEEPS_DIGESTS = True

OURS = {"ours": (), "ours-admin": ("--admin-host", "127.0.0.1", "--admin-port", "0")}
# Servers with no durability setting: the CSV peers flush to the OS and never fsync,
# null stores nothing. Their rows run whatever --durability says.
FIXED_DURABILITY = {"asyncio-csv": "off", "uvloop-csv": "off", "null": "off"}
SAME_PROMISE_PEERS = ("asyncio", "uvloop", "threaded")  # the central's service and store, at durability full
CSV_PEERS = ("asyncio-csv", "uvloop-csv")  # issue 16's reference kind
IDLE_BYTES_TARGET = 1_368  # issue 16: no more than the README's figure when it was filed

PLAN = {
    "course": [("ours", "full"), ("ours", "off"), ("asyncio", "full"), ("asyncio", "off"), ("uvloop", "full"),
               ("threaded", "full")],
    "scale": [("ours", "full"), ("ours-admin", "full"), ("ours-nodigest", "full"), ("ours", "off"),
              ("asyncio", "full"), ("asyncio", "off"), ("uvloop", "full"), ("asyncio-turn", "full"),
              ("threaded", "full"), ("asyncio-csv", "off"), ("uvloop-csv", "off"), ("null", "off")],
    "idle": [("ours", "full"), ("asyncio", "full"), ("threaded", "full")],
    "latency": [("ours", "full"), ("ours", "off"), ("asyncio", "full"), ("asyncio", "off"), ("uvloop", "full"),
                ("threaded", "full")],
    "restart": [("ours", "full")],
}
ALL_SERVERS = ("ours", "ours-admin", "ours-nodigest", "asyncio", "uvloop", "asyncio-turn", "threaded",
               "asyncio-csv", "uvloop-csv", "null")


class Server:
    """One server process under test, with its log in a file."""

    def __init__(self, kind: str, durability: str, agencies: int, workdir: Path, db: Path | None = None) -> None:
        self.kind = kind
        db = db or workdir / f"{kind}-{durability}-{time.monotonic_ns()}.db"
        self.port = free_port()
        self.admin_port: int | None = None
        if kind in OURS or kind == "ours-nodigest":
            module = OURS_WITHOUT_DIGESTS if kind == "ours-nodigest" else "reactor"
            extra = OURS.get(kind, ())
            # The deadlines are the tests' business: no run, however slow the machine, is cut by one.
            command = ["-m", module, *ours_arguments(db, agencies, durability), "--port", str(self.port),
                       "--handshake-timeout", "3600", "--idle-timeout", "3600", "--frame-timeout", "3600",
                       "--max-connections", "20000", "--max-unidentified", "20000", "--admin-port", "off", *extra]
        else:
            command = ["-m", "bench.servers", kind, "--port", str(self.port), "--db", str(db),
                       "--agencies", str(agencies), "--durability", durability]
        self.log = workdir / f"{db.name}-{time.monotonic_ns()}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        # Waits for the listening line rather than probing with a connection, which
        # would still be closing while the idle connections are counted.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = self.log.read_text()
            if READY_LINE in text:
                if kind != "ours-admin":
                    return
                if match := ADMIN_LINE.search(text):
                    self.admin_port = int(match.group(1))
                    return
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError(f"{kind} did not start: {self.log.read_text()}")

    def status_kb(self, key: str) -> int:
        return status_kb(self.proc.pid, key)

    def fd_count(self) -> int:
        return fd_count(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> dict:
        """SIGTERM; the central's longest turn (logged when the drain starts) and its commits."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        text = self.log.read_text()
        found = {}
        if match := re.search(r"action: shutdown .*longest_turn_ms: ([\d.]+)", text):
            found["longest_turn_ms"] = float(match.group(1))
        if match := re.search(r"action: loop_stats .*\| commits: (\d+) \| longest_commit_ms: ([\d.]+) "
                              r"\| longest_checkpoint_ms: ([\d.]+)", text):
            found["commits"] = int(match.group(1))
            found["longest_commit_ms"] = float(match.group(2))
            found["longest_checkpoint_ms"] = float(match.group(3))
        return found


def ours_arguments(db: Path, agencies: int, durability: str) -> list[str]:
    return ["--host", "127.0.0.1", "--db", str(db), "--agencies", str(agencies), "--durability", durability,
            "--log-level", "INFO"]


class Scraper:
    """What an operator's Prometheus and status page do: GET /metrics and /status.json every second."""

    PATHS = ("/metrics", "/status.json")

    def __init__(self, port: int, every: float = 1.0) -> None:
        self.port = port
        self.every = every
        self.scrapes = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in self.PATHS:
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    connection.request("GET", path)
                    response = connection.getresponse()
                    response.read()
                    connection.close()
                    if response.status != 200:
                        self.failures.append(f"{path}: {response.status}")
                except OSError as error:
                    self.failures.append(f"{path}: {error!r}")
                self.scrapes += 1
            self._stop.wait(self.every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        if self.failures:
            raise RuntimeError(f"admin scrapes failed: {self.failures[:3]}")
        return self.scrapes


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
    scraper = Scraper(server.admin_port) if server.admin_port else None
    cpu_before = server.cpu_seconds()
    generator_before = sum(map(cpu_seconds, generator.pids))
    result, wall = generator.run(server.port, window)
    cpu = server.cpu_seconds() - cpu_before
    generator_cpu = sum(map(cpu_seconds, generator.pids)) - generator_before
    scrapes = scraper.stop() if scraper else None
    peak = server.status_kb("VmHWM")
    extra = server.stop()  # before the idle connections close: their hang-up is not the run's
    for sock in idle_sockets:
        sock.close()
    if result.errors:
        raise RuntimeError(f"{kind}/{durability}: {result.errors[:3]}")
    return {
        "bets": result.bets,
        "winners": result.winners,
        "wall_s": wall,
        "bets_per_s": result.bets / wall,
        "ack_p50_ms": 1000 * percentile(result.latencies, 0.50),
        "ack_p99_ms": 1000 * percentile(result.latencies, 0.99),
        "peak_rss_mb": peak / 1024,
        "cpu_s": cpu,
        "loadgen_cpu_s": generator_cpu,
        "idle_bytes_each": (rss_idle - rss_base) * 1024 / idle if idle else None,
        "scrapes": scrapes,
        **extra,
    }


def time_to_ready(db: Path, agencies: int) -> float:
    """Seconds from starting `python -m reactor` on `db` to its `accept_connections` line."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "reactor", *ours_arguments(db, agencies, "full"), "--port", "0",
                             "--admin-port", "off"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    ready = None
    lines = []
    try:
        for line in proc.stdout:
            if READY_LINE in line:
                ready = time.perf_counter() - started
                break
            lines.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    if ready is None:
        raise RuntimeError(f"the central did not start on {db}: {''.join(lines[-5:])}")
    return ready


def measure_restart(generator: LoadGenerator, loads: list[AgencyLoad], window: int, repeats: int,
                    workdir: Path) -> dict:
    """Issue 14's restart time: a central holding the scenario's bets, no agency done
    (each with an unfinished 1,024-bet block), against an empty database."""
    db, empty = workdir / "restart.db", workdir / "restart-empty.db"
    server = Server("ours", "off", len(loads), workdir, db=db)  # a fast way to the same database the central makes
    result, _ = generator.run(server.port, window, finish=False)
    server.stop()
    if result.errors:
        raise RuntimeError(f"preparing the restart database: {result.errors[:3]}")
    with_bets, without = [], []
    for _ in range(repeats):
        with_bets.append(time_to_ready(db, len(loads)))
        without.append(time_to_ready(empty, len(loads)))
    return {"bets": result.bets, "ready_s": statistics.median(with_bets), "runs": with_bets,
            "empty_ready_s": statistics.median(without), "empty_runs": without}


def scenario_loads(name: str, scale: float) -> tuple[list[AgencyLoad], int, int]:
    """(loads, window, idle connections) of a scenario; `scale` shrinks it for smoke runs."""
    if name == "course":
        sizes = agency_sizes(max(5, int(sum(COURSE_SIZES) * scale)), 5)
        return [AgencyLoad(a, n) for a, n in enumerate(sizes, start=1)], 8, 0
    if name in ("scale", "idle", "restart"):
        per = max(1, int(20_000 * scale))
        return [AgencyLoad(a, per) for a in range(1, 51)], 8, int(10_000 * scale) if name == "idle" else 0
    if name == "latency":
        sizes = agency_sizes(max(5, int(sum(COURSE_SIZES) * scale / 4)), 5)
        return [AgencyLoad(a, n) for a, n in enumerate(sizes, start=1)], 1, 0
    raise ValueError(name)


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, wanted)), hard))


def uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def available_servers(wanted: list[str]) -> tuple[list[str], list[str]]:
    """The servers of `wanted` this interpreter can run, and a note for each one left out."""
    notes = []
    servers = [kind for kind in wanted if kind in ALL_SERVERS]
    if unknown := [kind for kind in wanted if kind not in ALL_SERVERS]:
        raise SystemExit(f"python -m bench: unknown servers {', '.join(unknown)} (known: {', '.join(ALL_SERVERS)})")
    if not uvloop_installed() and NEEDS_UVLOOP & set(servers):
        notes.append(f"uvloop is not installed for {sys.executable}: its rows ({', '.join(sorted(NEEDS_UVLOOP))}) "
                     f"are skipped; pip install '.[bench]' to run them")
        servers = [kind for kind in servers if kind not in NEEDS_UVLOOP]
    return servers, notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(PLAN))
    parser.add_argument("--servers", default=",".join(ALL_SERVERS), help="run only these servers of the plan")
    parser.add_argument("--durability", default="full,off", help="run only these durabilities of the plan")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink every scenario (smoke runs)")
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--max-amount", type=int, default=150)
    parser.add_argument("--floor-digest", choices=("on", "off"), default="on" if CENTRAL_KEEPS_DIGESTS else "off",
                        help="whether the floor hashes each batch for the agency digest, as a central that "
                             "keeps receipts does (default: %(default)s)")
    parser.add_argument("--floor-commit-every", type=int, default=None,
                        help="bets per commit in the floor (default: the central's own, from its scale run of "
                             f"the same round; {floors.BETS_PER_COMMIT:,} when it did not run)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    servers, notes = available_servers(args.servers.split(","))
    durabilities = args.durability.split(",")
    for note in notes:
        print(f"  note: {note}", flush=True)

    started = time.monotonic()
    floor_bets = max(1_000, int(floors.FLOOR_BETS * args.scale))
    floor_durability = "full" if "full" in durabilities else durabilities[0]

    def measure_floor(central_run: dict | None = None) -> dict:
        # The floor commits as often as the central did in the same round: its group
        # commit is work per bet the central really saves, and a floor that committed
        # more often would flatter the central's share of it.
        commit_every = args.floor_commit_every
        if commit_every is None:
            commit_every = floors.BETS_PER_COMMIT
            if central_run and central_run.get("commits"):
                commit_every = round(central_run["bets"] / central_run["commits"])
        floor = floors.measure(floor_bets, floor_durability, args.max_amount, args.floor_digest == "on",
                               commit_every)
        print(f"  floor    {floor['bets_per_s']:>10,.0f} bets/s, a commit every {commit_every:,} bets", flush=True)
        return floor

    floor_runs: list[dict] = []
    restart = None
    raise_fd_limit(12_000)  # scenario 3, in this process and the servers it starts
    generator = LoadGenerator(args.processes)
    rows = []
    prepared = None
    scenarios = args.scenarios.split(",")
    if "scale" not in scenarios:
        floor_runs.append(measure_floor())
    try:
        with tempfile.TemporaryDirectory(prefix="lottery-bench-") as tmp:
            for name in scenarios:
                loads, window, idle = scenario_loads(name, args.scale)
                if prepared != (loads, args.max_amount):
                    generator.prepare(loads, args.max_amount)
                    prepared = (loads, args.max_amount)
                if name == "restart":
                    if "ours" in servers:
                        restart = measure_restart(generator, loads, window, args.repeats, Path(tmp))
                        print(f"  restart  {restart['bets']:,} bets: ready in {restart['ready_s']:.2f} s "
                              f"(empty: {restart['empty_ready_s']:.2f} s)", flush=True)
                    continue
                configs = [(kind, FIXED_DURABILITY.get(kind, durability)) for kind, durability in PLAN[name]
                           if kind in servers and (durability in durabilities or kind in FIXED_DURABILITY)]
                runs = {config: [] for config in configs}
                without_idle = []
                # Round robin over the configurations, every other round in reverse, so
                # that the machine's drift over minutes hits every server alike and
                # same-run ratios stay comparable.
                for round_ in range(args.repeats):
                    for kind, durability in configs if round_ % 2 == 0 else reversed(configs):
                        runs[kind, durability].append(
                            measure(generator, kind, durability, len(loads), window, idle, Path(tmp)))
                        if idle and kind == "ours":
                            without_idle.append(
                                measure(generator, kind, durability, len(loads), window, 0, Path(tmp))["bets_per_s"])
                        if name == "scale" and (kind, durability) == ("ours", floor_durability):
                            # right after the central's run, at the cadence it showed
                            floor_runs.append(measure_floor(runs[kind, durability][-1]))
                    if name == "scale" and ("ours", floor_durability) not in runs:
                        floor_runs.append(measure_floor())
                for (kind, durability), config_runs in runs.items():
                    row = summarize(name, kind, durability, config_runs)
                    if idle and kind == "ours":
                        row["without_idle_runs"] = without_idle
                        row["without_idle_bets_per_s"] = statistics.median(without_idle)
                    if kind in ("ours-admin", "ours-nodigest") and ("ours", durability) in runs:
                        # each run against the central's run of the same round
                        pairs = zip(config_runs, runs["ours", durability])
                        row["x_ours_paired"] = statistics.median(run["bets_per_s"] / base["bets_per_s"]
                                                                 for run, base in pairs)
                    rows.append(row)
                    print(f"  {name:8} {kind:13} {durability:5} {row['bets_per_s']:>10,.0f} bets/s "
                          f"p99 {row['ack_p99_ms']:.1f} ms", flush=True)
    finally:
        generator.close()

    floor = summarize_floors(floor_runs)
    notes += winners_disagree(rows)
    print()
    print_table(rows)
    print()
    print_targets(rows, floor, restart, notes)
    machine = {"python": platform.python_version(), "platform": platform.platform(),
               "cpus": os.cpu_count(), "processor": _cpu_model()}
    minutes = (time.monotonic() - started) / 60
    print(f"\nmachine: {machine['cpus']} CPUs, {machine['processor']}, Python {machine['python']}; "
          f"medians of {args.repeats} runs; {minutes:.1f} minutes")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "args": vars(args) | {"out": str(args.out)},
                                    "notes": notes, "floor": floor, "rows": rows, "restart": restart}, indent=2))
    print(f"saved {args.out}")
    return 0


def summarize(scenario: str, kind: str, durability: str, runs: list[dict]) -> dict:
    row = {"scenario": scenario, "server": kind, "durability": durability, "runs": runs}
    for key in runs[0]:
        values = [r[key] for r in runs if r.get(key) is not None]
        # a stall is judged by the worst run, everything else by the median
        summary = max if key.startswith("longest_") else statistics.median
        row[key] = summary(values) if values else None
    timed = [r for r in runs if r.get("longest_turn_ms") is not None]
    row["median_longest_turn_ms"] = statistics.median(r["longest_turn_ms"] for r in timed) if timed else None
    # the run whose turn was the longest: how much of that turn its commit or checkpoint may have been
    row["worst_turn_run"] = max(timed, key=lambda r: r["longest_turn_ms"]) if timed else None
    return row


def winners_disagree(rows: list[dict]) -> list[str]:
    """A note for each scenario whose servers (null aside) did not all answer the same number of winners."""
    found: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["server"] != "null":
            found.setdefault(r["scenario"], {})[r["server"]] = r["winners"]
    return [f"{scenario}: the servers answered different numbers of winners: {winners}"
            for scenario, winners in found.items() if len(set(winners.values())) > 1]


def summarize_floors(runs: list[dict]) -> dict:
    first = runs[0]
    return {
        **{key: first[key] for key in ("bets", "durability", "digest")},
        "commit_every": statistics.median(run["commit_every"] for run in runs),
        "bets_per_s": statistics.median(run["bets_per_s"] for run in runs),
        "us_per_bet": {phase: statistics.median(run["us_per_bet"][phase] for run in runs) for phase in floors.PHASES},
        "runs": runs,
    }


def print_table(rows: list[dict]) -> None:
    ours = {(r["scenario"], r["durability"]): r for r in rows if r["server"] == "ours"}
    header = (f"{'scenario':9} {'server':13} {'dur':4} {'wall s':>6} {'bets/s':>10} {'x ours':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'RSS MB':>7} {'CPU s':>6} {'turn ms':>7} {'B/idle':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        base = ours.get((r["scenario"], r["durability"])) or ours.get((r["scenario"], "full"))
        ratio = r["bets_per_s"] / base["bets_per_s"] if base else float("nan")
        turn = f"{r['longest_turn_ms']:.1f}" if r.get("longest_turn_ms") is not None else "-"
        idle_each = f"{r['idle_bytes_each']:.0f}" if r.get("idle_bytes_each") else "-"
        print(f"{r['scenario']:9} {r['server']:13} {r['durability']:4} {r['wall_s']:>6.2f} {r['bets_per_s']:>10,.0f} "
              f"{ratio:>7.2f} {r['ack_p50_ms']:>7.2f} {r['ack_p99_ms']:>7.2f} {r['peak_rss_mb']:>7.1f} "
              f"{r['cpu_s']:>6.2f} {turn:>7} {idle_each:>7}")
    print("x ours: bets/s relative to ours at the same durability (at full when ours did not run at it); "
          "turn ms: the central's longest loop turn, worst of the runs; B/idle: server RSS per idle connection")


def print_targets(rows: list[dict], floor: dict, restart: dict | None, notes: list[str]) -> None:
    """Issues 16, 13 and 14's targets beside this run's figures (what was not run is skipped)."""
    get = {(r["scenario"], r["server"], r["durability"]): r for r in rows}.get
    print("targets (issue 16) in this run, scenario 2 (scale) at durability full:")
    phases = " + ".join(f"{phase} {floor['us_per_bet'][phase]:.2f}" for phase in floors.PHASES
                        if floor["digest"] or phase != "digest")
    ours = get(("scale", "ours", "full"))
    cadence = ""
    if ours and ours.get("commits"):
        cadence = f"; ours committed every {ours['bets'] / ours['commits']:,.0f}"
    print(f"  floor: {floor['bets_per_s']:,.0f} bets/s on one core, durability {floor['durability']} "
          f"({phases} us a bet; digest {'on' if floor['digest'] else 'off'}; "
          f"a commit every {floor['commit_every']:,.0f} bets{cadence})")
    if ours:
        rate = ours["bets_per_s"]
        # Each run against the floor of its own round: this machine's speed drifts by tens of
        # percent over minutes, and a ratio of two medians from different moments carries it.
        # (one floor a round, measured right after the central's run of that round)
        paired = [run["bets_per_s"] / measured["bets_per_s"] for run, measured in zip(ours["runs"], floor["runs"])]
        pairs = ", ".join(f"{ratio:.2f}" for ratio in paired)
        print(f"  ours: {rate:,.0f} bets/s, {statistics.median(paired):.2f} of the floor (median over same-round "
              f"pairs: {pairs}; target >= 0.90); "
              f"its CPU {ours['cpu_s'] / ours['wall_s']:.0%} of the run's wall time, the load generator's "
              f"{ours['loadgen_cpu_s'] / ours['wall_s']:.0%} (of {os.cpu_count()} cores)")
        peers = {kind: get(("scale", kind, FIXED_DURABILITY.get(kind, "full"))) for kind in (*SAME_PROMISE_PEERS,
                                                                                              *CSV_PEERS)}
        peers = {kind: row for kind, row in peers.items() if row}
        if peers:
            same = ", ".join(f"{k} {peers[k]['bets_per_s']:,.0f}" for k in SAME_PROMISE_PEERS if k in peers)
            csv_ = ", ".join(f"{k} {peers[k]['bets_per_s']:,.0f}" for k in CSV_PEERS if k in peers)
            print(f"  peers: {same or '-'} (SQLite, full); {csv_ or '-'} (CSV, no fsync)")
            best = max(peers, key=lambda k: peers[k]["bets_per_s"])
            line = f"  ours / best peer: {rate / peers[best]['bets_per_s']:.2f}x {best} (target >= 2x)"
            same_peers = [k for k in SAME_PROMISE_PEERS if k in peers]
            if same_peers and best not in same_peers:
                best_same = max(same_peers, key=lambda k: peers[k]["bets_per_s"])
                line += f"; at the same promise: {rate / peers[best_same]['bets_per_s']:.2f}x {best_same}"
            print(line)
        if control := get(("scale", "asyncio-turn", "full")):
            print(f"  control: ours {rate / control['bets_per_s']:.2f}x asyncio-turn (its service, store and group "
                  f"commit are ours: only the loop and the connections differ)")
        if ours.get("longest_turn_ms") is not None:
            # A commit and a checkpoint wait for their fsync on the loop's thread, so a slow disk shows
            # here as a long turn: their longest say how much of the longest turn may be the disk's.
            line = (f"  longest loop turn: {ours['longest_turn_ms']:.1f} ms, draw included, worst of the runs "
                    f"(target < 50); the median run's longest {ours['median_longest_turn_ms']:.1f} ms")
            worst = ours["worst_turn_run"]
            if worst.get("longest_commit_ms") is not None:
                line += (f"; in the worst run, its longest commit {worst['longest_commit_ms']:.1f} ms and checkpoint "
                         f"{worst['longest_checkpoint_ms']:.1f} ms (fsync included)")
            print(line)
    idle = get(("idle", "ours", "full"))
    if idle and idle.get("idle_bytes_each"):
        line = (f"  idle: {idle['idle_bytes_each']:,.0f} bytes per idle session "
                f"(target <= {IDLE_BYTES_TARGET:,}, the figure when issue 16 was filed)")
        others = [f"{kind} {row['idle_bytes_each']:,.0f}" for kind in ("asyncio", "threaded")
                  if (row := get(("idle", kind, "full"))) and row.get("idle_bytes_each")]
        if others:
            line += "; " + ", ".join(others)
        print(line)
        if idle.get("without_idle_runs"):
            # each idle run against the run without idle sessions right after it
            slowdown = statistics.median(1 - run["bets_per_s"] / without
                                         for run, without in zip(idle["runs"], idle["without_idle_runs"]))
            print(f"        scale slowed by {slowdown:+.0%} with them (median over back-to-back pairs)")
    latency, asyncio_latency = get(("latency", "ours", "full")), get(("latency", "asyncio", "full"))
    if latency and asyncio_latency:
        print(f"  latency (scenario 4, full): ACK p99 {latency['ack_p99_ms']:.1f} ms, "
              f"asyncio {asyncio_latency['ack_p99_ms']:.1f} ms (target: no worse)")

    print("issue 13:")
    admin = get(("scale", "ours-admin", "full"))
    if admin and admin.get("x_ours_paired") is not None:
        print(f"  admin on, scraped every second: {admin['x_ours_paired']:.3f}x the bets/s of admin off "
              f"(median over {len(admin['runs'])} same-round pairs; {admin['scrapes']:.0f} scrapes a run; "
              f"target >= 0.98, at most 2% slower)")
    else:
        print("  admin on against admin off: not run")

    print("issue 14:")
    nodigest = get(("scale", "ours-nodigest", "full"))
    if nodigest and nodigest.get("x_ours_paired"):
        print(f"  ingest with digests: {1 / nodigest['x_ours_paired']:.3f}x the bets/s of a central without them "
              f"(median over same-round pairs; target >= 0.97, within 3%)")
    if restart:
        print(f"  restart holding {restart['bets']:,} bets: {restart['ready_s']:.2f} s from process start to "
              f"accept_connections (empty database: {restart['empty_ready_s']:.2f} s)")
    for note in notes:
        print(f"note: {note}")


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
