"""The status document's builder and the bets-per-second window, with plain inputs."""

from __future__ import annotations

import json

import pytest

from reactor.status import BetRate, DrawFigures, LiveFigures, build_status


def test_a_live_document_while_agencies_send():
    document = build_status(
        version="0.1.0",
        expected=3,
        committed={1: 1500, 2: 300},
        done={1},
        draw=DrawFigures(),
        live=LiveFigures(connected={2}, connections=1, bets_per_second=249.96, uptime_s=12.04),
    )
    assert document == {
        "version": "0.1.0",
        "expected": 3,
        "missing": [2, 3],
        "total_bets": 1800,
        "bets_per_second": 250.0,
        "connections": 1,
        "uptime_s": 12.0,
        "agencies": [
            {"agency": 1, "committed": 1500, "done": True, "connected": False},
            {"agency": 2, "committed": 300, "done": False, "connected": True},
            {"agency": 3, "committed": 0, "done": False, "connected": False},
        ],
        "draw": {
            "state": "open", "scanned": 0, "total": 0, "winning_number": None, "winners": None,
            "commitment": None, "seed": None,
        },
    }
    json.dumps(document)  # plain JSON all the way down


def test_the_stats_document_leaves_out_live_fields_and_counts_winners_once_done():
    document = build_status(
        version="0.1.0",
        expected=2,
        committed={1: 10, 2: 5},
        done=[1, 2],
        draw=DrawFigures("done", scanned=15, total=15, winning_number=7574, winners={1: 2}),
    )
    assert "bets_per_second" not in document and "connections" not in document and "uptime_s" not in document
    assert document["missing"] == []
    assert document["agencies"] == [
        {"agency": 1, "committed": 10, "done": True, "winners": 2},
        {"agency": 2, "committed": 5, "done": True, "winners": 0},
    ]
    assert document["draw"]["winners"] == 2
    assert document["draw"]["winning_number"] == 7574


def test_winners_appear_only_once_the_draw_is_done():
    drawing = build_status(
        version="0", expected=1, committed={1: 9}, done={1},
        draw=DrawFigures("drawing", scanned=4, total=9, winning_number=1, winners={1: 1}),
    )
    assert "winners" not in drawing["agencies"][0]
    assert drawing["draw"]["winners"] is None
    assert drawing["draw"]["winning_number"] == 1


def test_an_agency_beyond_the_expected_ones_is_still_listed():
    document = build_status(version="0", expected=1, committed={1: 1, 7: 2}, done=(), draw=DrawFigures())
    assert [agency["agency"] for agency in document["agencies"]] == [1, 7]
    assert document["missing"] == [1]


def test_an_unknown_draw_state_is_refused():
    with pytest.raises(ValueError):
        DrawFigures("finished")


def test_bet_rate_over_the_window():
    rate = BetRate(window=5.0, resolution=0.25)
    assert rate.per_second(0.0) == 0.0
    for second in range(11):
        rate.record(float(second), 1000 * second)  # 1,000 bets a second for 10 s
    assert rate.per_second(10.0) == pytest.approx(1000)
    rate.record(10.1, 10_000)
    assert rate.per_second(13.0) == pytest.approx((10_000 - 8_000) / 5)  # idle since 10 s
    assert rate.per_second(30.0) == 0.0  # idle for longer than the window


def test_bet_rate_just_after_start_divides_by_the_time_so_far():
    rate = BetRate(window=5.0)
    rate.record(100.0, 0)
    rate.record(102.0, 500)
    assert rate.per_second(102.0) == pytest.approx(250)


def test_bet_rate_keeps_a_bounded_number_of_samples():
    rate = BetRate(window=5.0, resolution=0.25)
    for turn in range(100_000):
        rate.record(turn * 0.001, turn)  # a thousand turns a second for 100 s
    assert len(rate._samples) <= 5.0 / 0.25 + 2
    assert rate.per_second(99.999) == pytest.approx(1000, rel=0.06)  # lags by at most one resolution's worth
