"""The benchmarks still run (tiny sizes). Figures are printed, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import floors, profile
from bench.__main__ import available_servers, uvloop_installed
from tests.harness import ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)


def test_codec_benchmark_runs():
    out = run("-m", "bench.codec", "--bets", "3000").stdout
    assert "decode + validate" in out and "bets/s" in out


def test_server_benchmark_runs_every_scenario_and_saves_json(tmp_path):
    out_file = tmp_path / "bench.json"
    done = run("-m", "bench", "--scale", "0.01", "--repeats", "1", "--durability", "full", "--out", str(out_file))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in ("x ours", "machine:", "targets (issue 16)", "floor:", "of the floor (median over same-round pairs:",
                 "target >= 0.90)", "the load generator's", "ours / best peer:", "longest loop turn:",
                 "in the worst run, its longest commit", "bytes per idle session", "ACK p99",
                 "admin on, scraped every second:", "ingest with digests:", "restart holding 10,000 bets:"):
        assert line in out, line
    saved = json.loads(out_file.read_text())
    rows = saved["rows"]
    servers = {(r["scenario"], r["server"]) for r in rows}
    assert servers >= {
        ("course", "ours"), ("scale", "ours-admin"), ("scale", "ours-nodigest"), ("scale", "asyncio"), ("scale", "asyncio-turn"),
        ("scale", "threaded"), ("scale", "asyncio-csv"), ("scale", "null"), ("idle", "threaded"), ("latency", "ours"),
    }
    if uvloop_installed():
        assert {("scale", "uvloop"), ("scale", "uvloop-csv")} <= servers
    else:
        assert "uvloop is not installed" in out
    assert {r["durability"] for r in rows if r["server"] not in ("null", "asyncio-csv", "uvloop-csv")} == {"full"}
    assert all(r["bets"] > 0 for r in rows)
    assert not any("different numbers of winners" in note for note in saved["notes"])
    assert saved["floor"]["bets_per_s"] > 0 and saved["floor"]["durability"] == "full"
    idle_ours = next(r for r in rows if (r["scenario"], r["server"]) == ("idle", "ours"))
    assert idle_ours["without_idle_bets_per_s"] > 0 and idle_ours["idle_bytes_each"] > 0
    admin = next(r for r in rows if (r["scenario"], r["server"]) == ("scale", "ours-admin"))
    assert admin["scrapes"] >= 2 and admin["x_ours_paired"] > 0
    assert saved["restart"]["bets"] == 10_000 and saved["restart"]["ready_s"] > 0


def test_without_uvloop_its_rows_are_left_out_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` meets when it is not installed
    servers, notes = available_servers(["ours", "asyncio", "uvloop", "uvloop-csv"])
    assert servers == ["ours", "asyncio"]
    assert len(notes) == 1 and "uvloop is not installed" in notes[0] and "pip install '.[bench]'" in notes[0]


def test_a_uvloop_server_without_uvloop_is_one_line_and_exit_2():
    done = run("-c", "import sys; sys.modules['uvloop'] = None; from bench.servers import main; main(['uvloop'])")
    assert done.returncode == 2
    assert done.stderr.strip() == "bench.servers: uvloop is not installed (pip install '.[bench]')"


def test_the_floor_hashes_batches_for_the_digest_only_when_asked():
    without = floors.measure(3_000, "off", 150)
    with_digest = floors.measure(3_000, "off", 150, digest=True)
    assert without["us_per_bet"]["digest"] < with_digest["us_per_bet"]["digest"]
    assert with_digest["digest"] and not without["digest"]
    assert set(with_digest["us_per_bet"]) == set(floors.PHASES)


def _store_line(fragment: str) -> int:
    source = (ROOT / "reactor/store.py").read_text().splitlines()
    return next(number for number, text in enumerate(source, 1) if fragment in text)


def test_the_profile_charges_each_sample_where_the_central_spends_it():
    insert = _store_line("_insert_bets_sql(len(chunk))")
    stacks = profile.read_collapsed(
        f"main (reactor/__main__.py:281);Store.stage_bets (reactor/store.py:{insert}) 10\n"
        "main (reactor/__main__.py:281);EventLoop.run_once (reactor/loop.py:226);"
        "EpollSelector.select (selectors.py:468) 2\n"
        "main (reactor/__main__.py:281);Session._reply (reactor/session.py:260);__init__ (<string>:2) 1\n"
    )
    # 13 samples over 1.3 s attached: 10 Hz; the runs took 1.5 s of it
    summary = profile.summarize(stacks, bets=1_000, wall_s=1.5, sampled_s=1.3, cpu_s=1.0)
    categories = summary["categories"]
    assert categories["store: insert bets"]["us_per_bet"] == pytest.approx(1_000.0)
    assert categories["session"]["us_per_bet"] == pytest.approx(100.0)  # a generated __init__: its caller's
    assert categories["loop: select"]["seconds"] == pytest.approx(0.4)  # what the busy samples leave of 1.5 s
    assert sum(c["share"] for c in categories.values()) == pytest.approx(1.0)
    assert [frame for frame, _ in summary["top_self"]][0].startswith("Store.stage_bets")


def test_the_profile_tells_the_agencies_upsert_from_the_insert():
    assert profile.frame_category("Store.stage_agency", "reactor/store.py", 1) == "store: agencies upsert"
    assert profile.frame_category("Store.stage_bets", "reactor/store.py", 1) == "store: insert bets"
    assert profile.frame_category("_Piece.__enter__", "reactor/store.py", 1) == "store: savepoint"
    assert profile.frame_category("log_event", "runtime/logfmt.py", 1) == "logging"
    assert profile.frame_category("__or__", "enum.py", 1) is None
