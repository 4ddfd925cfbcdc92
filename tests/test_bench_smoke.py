"""The benchmarks still run (tiny sizes). Figures are printed, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.harness import ROOT


def run(*args: str) -> str:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300, check=True).stdout


def test_codec_benchmark_runs():
    out = run("-m", "bench.codec", "--bets", "3000")
    assert "decode + validate" in out and "bets/s" in out


def test_server_benchmark_runs_every_scenario_and_saves_json(tmp_path):
    out_file = tmp_path / "bench.json"
    out = run("-m", "bench", "--scale", "0.01", "--repeats", "1", "--durability", "full", "--out", str(out_file))
    assert "x ours" in out and "machine:" in out and "targets (issue #7)" in out and "floors:" in out
    saved = json.loads(out_file.read_text())
    rows = saved["rows"]
    assert {(r["scenario"], r["server"]) for r in rows} >= {
        ("course", "ours"), ("scale", "asyncio"), ("scale", "asyncio-turn"), ("scale", "null"), ("idle", "threaded"),
        ("latency", "ours"),
    }
    assert {r["durability"] for r in rows if r["server"] != "null"} == {"full"}
    assert all(r["bets"] > 0 for r in rows)
    assert saved["floors"]["serial_floor_bets_per_s"] > 0
    idle_ours = next(r for r in rows if (r["scenario"], r["server"]) == ("idle", "ours"))
    assert idle_ours["without_idle_bets_per_s"] > 0 and idle_ours["idle_bytes_each"] > 0
