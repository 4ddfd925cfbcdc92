"""`python -m bench.profile` (`make profile`): where the central's time goes during scenario 2.

Runs the central (`python -m reactor`) at the given durability, attaches `py-spy
record --idle --nonblocking` (a development-only dependency: `pip install
'.[bench]'`) while the load generator sends scenario 2 (50 agencies x 20,000 bets,
window 8), and stops py-spy before the drain. Nonblocking: py-spy never stops the
central to read its stacks, since a py-spy that is itself kept off a busy core
would hold the central still past its frame deadline. Each sample is charged to the innermost frame that belongs to
the central or to a stdlib module with a job of its own (selectors, logging);
frames of helpers such as enum or a dataclass's generated `__init__` are charged
to their caller. SQLite runs in C, under the line of the store that called it, so
the store's lines are told apart by their statement (the INSERT of the bets, the
agencies upsert, the savepoint). The categories' shares of the samples, times the
central's CPU time over the run, give microseconds per bet, set beside the floor's
own split (bench/floors.py) measured in the same run.

Writes to --out-dir (bench/results/, not versioned): `profile.txt` (the table and
the top frames), `profile.collapsed` (every stack with its count, the collapsed
format that speedscope and flamegraph.pl read) and `profile.json`.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from . import floors
from .__main__ import CENTRAL_KEEPS_DIGESTS, ROOT, Server, scenario_loads
from .loadgen import LoadGenerator

_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

SELECT = "loop: select"
# The table's rows, in order; the floor's phase that each compares with.
CATEGORIES = {
    "decode": "decode",
    "validate": "validate",
    "digest": "digest",
    "store: insert bets": "insert",
    "store: agencies upsert": None,
    "store: savepoint": None,
    "store: other": None,
    "commit": "commit",
    "checkpoint": "checkpoint",
    "service": None,
    "session": None,
    "encode replies": None,
    "connection": None,
    "connection: recv/send": None,
    "loop": None,
    SELECT: None,  # what the runs' wall time leaves (see summarize)
    "server": None,
    "logging": None,
    "draw": None,
    "admin": None,
    "other": None,
}
_BY_MODULE = {
    "protocol/decoder.py": "decode",
    "protocol/wire.py": "decode",
    "protocol/validation.py": "validate",
    "protocol/digest.py": "digest",
    "protocol/encoder.py": "encode replies",
    "protocol/packer.py": "encode replies",
    "reactor/service.py": "service",
    "reactor/turn.py": "service",
    "reactor/session.py": "session",
    "reactor/draw.py": "draw",
    "reactor/server.py": "server",
    "reactor/admin.py": "admin",
    "reactor/http.py": "admin",
    "reactor/metrics.py": "admin",
    "reactor/watch.py": "admin",
    "reactor/status.py": "admin",
    "reactor/status_page.py": "admin",
    "runtime/logfmt.py": "logging",
    "runtime/logbuffer.py": "logging",
    "reactor/__main__.py": "other",
}
_STORE_FUNCTIONS = {
    "stage_bets": "store: insert bets",
    "_insert_bets_sql": "store: insert bets",
    "stage_agency": "store: agencies upsert",
    "_piece": "store: savepoint",
    "__enter__": "store: savepoint",
    "__exit__": "store: savepoint",
    "commit": "commit",
    "_check_files": "commit",
    "_identity": "commit",
    "_timed": "commit",
    "checkpoint": "checkpoint",
    "stage_done": "draw",
    "stage_draw": "draw",
    "stage_winner_scan": "draw",
}


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@functools.cache
def _source(path: str) -> tuple[str, ast.Module | None]:
    try:
        text = Path(path).read_text()
        return text, ast.parse(text)
    except (OSError, SyntaxError):
        return "", None


@functools.cache
def statement(path: str, line: int) -> str:
    """The source of the innermost statement of `path` that holds `line` ("" when unknown)."""
    text, tree = _source(path)
    if tree is None:
        return ""
    best = None
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node.lineno <= line <= node.end_lineno:
            if best is None or node.end_lineno - node.lineno < best.end_lineno - best.lineno:
                best = node
    if best is None:
        return ""
    return ast.get_source_segment(text, best) or ""


def project_module(path: str) -> str | None:
    """`path` relative to the repository ("reactor/store.py"), None when it is not the project's."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return None


def frame_category(name: str, path: str, line: int | None) -> str | None:
    """The category a frame's own time goes to; None to charge it to its caller."""
    module = project_module(path) if path.startswith("/") else path
    function = name.rsplit(".", 1)[-1]
    if module is None or not module.startswith(("protocol/", "reactor/", "runtime/")):
        if re.search(r"(^|/)selectors\.py$", path):
            return SELECT
        if re.search(r"(^|/)logging/", path):
            return "logging"
        return None
    if module == "reactor/store.py":
        return _STORE_FUNCTIONS.get(function, "store: other")
    if module == "reactor/connection.py":
        text = statement(str(ROOT / module), line) if line else ""
        return "connection: recv/send" if re.search(r"\.(recv|send)\(", text) else "connection"
    if module == "reactor/loop.py":
        text = statement(str(ROOT / module), line) if line else ""
        return SELECT if ".select(" in text else "loop"
    if module == "protocol/messages.py":
        return None  # a message's properties: charged to whoever asked
    return _BY_MODULE.get(module, "other")


def parse_frame(frame: str) -> tuple[str, str, int | None]:
    match = _FRAME.match(frame)
    if not match:
        return frame, "", None
    return match["name"], match["path"], int(match["line"]) if match["line"] else None


def categorize(stack: list[str]) -> str:
    for frame in reversed(stack):  # the innermost frame first
        category = frame_category(*parse_frame(frame))
        if category is not None:
            return category
    return "other"


def read_collapsed(text: str) -> Counter:
    stacks: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def summarize(stacks: Counter, bets: int, wall_s: float, sampled_s: float, cpu_s: float) -> dict:
    """Each category's time per bet over the runs' wall time; the top frames of the busy samples.

    py-spy samples with `--idle`, so its samples cover the whole time it was attached
    (`sampled_s`) at an effective rate of samples / sampled_s. A category's time is
    its samples at that rate; the loop's time in select is what the runs' wall time
    (`wall_s`) leaves, since py-spy was attached, idle, a little before and after them.
    """
    total = sum(stacks.values())
    rate = total / sampled_s
    by_category: Counter = Counter()
    own: Counter = Counter()
    inclusive: Counter = Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        category = categorize(frames)
        by_category[category] += count
        if category == SELECT:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    seconds = {category: by_category[category] / rate for category in CATEGORIES if category != SELECT}
    busy = sum(seconds.values())
    seconds[SELECT] = max(0.0, wall_s - busy)
    busy_samples = total - by_category[SELECT]
    return {
        "samples": total,
        "rate": rate,
        "bets": bets,
        "wall_s": wall_s,
        "busy_s": busy,
        "cpu_s": cpu_s,
        "categories": {
            category: {"seconds": seconds[category], "share": seconds[category] / wall_s,
                       "us_per_bet": 1e6 * seconds[category] / bets}
            for category in CATEGORIES if seconds[category]
        },
        "top_self": [(frame, count / busy_samples) for frame, count in own.most_common(30)],
        "top_total": [(frame, count / busy_samples) for frame, count in inclusive.most_common(30)],
    }


def report(summary: dict, floor: dict, runs: int, durability: str) -> str:
    bets, wall_s = summary["bets"], summary["wall_s"]
    per_bet = 1e6 / bets
    lines = [
        f"the central under py-spy, scenario 2 at durability {durability}: {bets:,} bets in {runs} run(s), "
        f"{wall_s:.2f} s ({bets / wall_s:,.0f} bets/s), {summary['samples']:,} samples at "
        f"{summary['rate']:.0f} Hz",
        f"  busy (not waiting in select): {summary['busy_s'] * per_bet:.2f} us a bet, of which on a CPU "
        f"{summary['cpu_s'] * per_bet:.2f} (the rest: fsync, and waiting for a core the load generator holds)",
        f"the floor in the same run: {floor['bets_per_s']:,.0f} bets/s ({1e6 / floor['bets_per_s']:.2f} us a bet; "
        f"digest {'on' if floor['digest'] else 'off'}, a commit every {floor['commit_every']:,} bets)",
        "",
        f"{'category':24} {'share':>6} {'us/bet':>7} {'floor us/bet':>12}",
        "-" * 52,
    ]
    floor_us = floor["us_per_bet"]
    for category, phase in CATEGORIES.items():
        figures = summary["categories"].get(category)
        if figures is None:
            continue
        beside = f"{floor_us[phase]:.2f}" if phase else "-"
        lines.append(f"{category:24} {figures['share']:>6.1%} {figures['us_per_bet']:>7.2f} {beside:>12}")
    lines.append(f"{'total':24} {1:>6.1%} {wall_s * per_bet:>7.2f} {1e6 / floor['bets_per_s']:>12.2f}")
    lines += [
        "",
        "share and us/bet: of the runs' wall time. The floor's insert holds what the central's store rows",
        "insert bets, agencies upsert and savepoint hold together. Frames below: shares of the busy samples.",
    ]
    for title, key in (("top frames by own samples", "top_self"), ("top frames by total samples", "top_total")):
        lines += ["", title + ":"]
        lines += [f"  {share:>6.1%}  {frame}" for frame, share in summary[key][:25]]
    return "\n".join(lines) + "\n"


def profile_run(py_spy: str, generator: LoadGenerator, agencies: int, window: int, durability: str, rate: int,
                workdir: Path, raw: Path) -> dict:
    """One run of the central under py-spy: bets acknowledged, the run's wall time, the central's
    CPU seconds during it, and how long py-spy was attached."""
    server = Server("ours", durability, agencies, workdir)
    attached = time.perf_counter()
    spy = subprocess.Popen([py_spy, "record", "--pid", str(server.proc.pid), "--rate", str(rate), "--idle",
                            "--nonblocking", "--format", "raw", "--output", str(raw)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)  # py-spy attaches before the first bet
    try:
        cpu_before = server.cpu_seconds()
        result, wall = generator.run(server.port, window)
        cpu = server.cpu_seconds() - cpu_before
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has, before the drain
        output, _ = spy.communicate(timeout=60)
        sampled = time.perf_counter() - attached
        stopped = server.stop()
    if result.errors:
        raise RuntimeError(f"the run failed: {result.errors[:3]}")
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile: {output.strip()}")
    return {"bets": result.bets, "wall_s": wall, "cpu_s": cpu, "sampled_s": sampled,
            "commits": stopped.get("commits", 0)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--durability", default="full", choices=("full", "normal", "off"))
    parser.add_argument("--runs", type=int, default=3, help="runs of scenario 2, each on a fresh central")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the scenario (smoke runs)")
    parser.add_argument("--max-amount", type=int, default=150)
    parser.add_argument("--floor-digest", choices=("on", "off"), default="on" if CENTRAL_KEEPS_DIGESTS else "off",
                        help="whether the floor hashes each batch for the agency digest (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    py_spy = find_py_spy()
    if py_spy is None:
        print("python -m bench.profile: py-spy is not installed: pip install '.[bench]'", file=sys.stderr)
        return 2

    loads, window, _ = scenario_loads("scale", args.scale)
    generator = LoadGenerator(2)
    stacks: Counter = Counter()
    totals = Counter()
    try:
        generator.prepare(loads, args.max_amount)
        with tempfile.TemporaryDirectory(prefix="lottery-profile-") as tmp:
            for run in range(args.runs):
                raw = Path(tmp) / f"run-{run}.txt"
                figures = profile_run(py_spy, generator, len(loads), window, args.durability, args.rate, Path(tmp), raw)
                totals.update(figures)
                stacks += read_collapsed(raw.read_text())
                print(f"  run {run + 1}: {figures['bets']:,} bets in {figures['wall_s']:.2f} s, "
                      f"{figures['cpu_s']:.2f} s of CPU", flush=True)
    finally:
        generator.close()

    # The floor commits as often as the central did in these runs (as in `python -m bench`).
    commit_every = round(totals["bets"] / totals["commits"]) if totals["commits"] else floors.BETS_PER_COMMIT
    floor = floors.measure(max(1_000, int(floors.FLOOR_BETS * args.scale)), args.durability, args.max_amount,
                           args.floor_digest == "on", commit_every)
    summary = summarize(stacks, totals["bets"], totals["wall_s"], totals["sampled_s"], totals["cpu_s"])
    text = report(summary, floor, args.runs, args.durability)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "profile.txt").write_text(text)
    (args.out_dir / "profile.collapsed").write_text("".join(f"{s} {c}\n" for s, c in stacks.most_common()))
    (args.out_dir / "profile.json").write_text(json.dumps({"summary": summary, "floor": floor}, indent=2))
    print(text)
    print(f"saved {args.out_dir / 'profile.txt'}, profile.collapsed (speedscope, flamegraph.pl) and profile.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
