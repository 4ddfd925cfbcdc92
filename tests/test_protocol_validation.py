"""Bet validation accepts exactly what PROTOCOL.md allows, and names the bet and field."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given

import protocol as p
from tests.strategies import valid_bets

TODAY = date(2026, 11, 27)
GOOD = p.Bet("Santiago Lionel", "Lorca", "30904465", "1999-03-17", 2201)


def problem(**changes):
    return p.first_invalid_bet([GOOD._replace(**changes)], today=TODAY)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"birthdate": "2024-02-29"},
        {"birthdate": "1900-01-01"},
        {"birthdate": TODAY.isoformat()},
        {"first_name": "a" * 64},
        {"last_name": "ñ" * 64},
        {"last_name": "😀" * 64},
        {"first_name": "Zoë\u00a0O'Brien-Núñez"},  # NBSP is not a control character
        {"document": "1" * 16},
        {"document": "0"},
        {"number": 9999},
        {"number": 0},
    ],
    ids=repr,
)
def test_accepted(changes):
    assert problem(**changes) is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("birthdate", "2023-02-29"),
        ("birthdate", "2023-02-30"),
        ("birthdate", "1899-12-31"),
        ("birthdate", (TODAY + timedelta(days=1)).isoformat()),
        ("birthdate", "1999-3-17"),
        ("birthdate", "19990317"),
        ("birthdate", "2024-W01-1"),
        ("birthdate", "１９９９-03-17"),
        ("birthdate", ""),
        ("first_name", ""),
        ("first_name", "a" * 65),
        ("last_name", "😀" * 65),
        ("first_name", "tab\there"),
        ("first_name", "nul\x00"),
        ("last_name", "del\x7f"),
        ("last_name", "c1\x85"),
        ("last_name", "c1 end\x9f"),
        ("document", ""),
        ("document", "1" * 17),
        ("document", "1234567a"),
        ("document", "١٢٣"),  # Arabic-Indic digits are digits, but not ASCII
        ("document", "+123"),
        ("number", 10000),
        ("number", 0xFFFF),
    ],
)
def test_rejected_with_the_field_named(field, value):
    found = problem(**{field: value})
    assert found is not None
    assert (found.index, found.field) == (0, field)
    assert found.reason


def test_the_index_is_that_of_the_first_invalid_bet():
    bets = [GOOD, GOOD, GOOD._replace(number=10000), GOOD._replace(document="x")]
    found = p.first_invalid_bet(bets, today=TODAY)
    assert (found.index, found.field) == (2, "number")
    assert str(found).startswith("bet 2: number:")


def test_today_is_the_utc_date_by_default():
    assert p.first_invalid_bet([GOOD._replace(birthdate=p.utc_today().isoformat())]) is None
    tomorrow = (p.utc_today() + timedelta(days=1)).isoformat()
    assert p.first_invalid_bet([GOOD._replace(birthdate=tomorrow)]).field == "birthdate"


@given(valid_bets)
def test_generated_valid_bets_pass(bet):
    assert p.first_invalid_bet([bet], today=TODAY) is None


@pytest.mark.parametrize(
    "field,value",
    [("document", "\x01" * 2100), ("document", "a" * 8150), ("birthdate", "\\" * 4200)],
)
def test_a_reason_quotes_a_bounded_part_of_a_huge_field(field, value):
    found = problem(**{field: value})
    assert found.field == field
    assert len(str(found)) < 200 and f"({len(value)} characters)" in found.reason
