"""The bet rules of PROTOCOL.md, in one place: the server and the client both call them.

A bet is valid when
- first_name and last_name have 1 to 64 code points and no control character
  (Unicode category Cc: U+0000-U+001F, U+007F-U+009F);
- document is 1 to 16 ASCII digits;
- birthdate is a real calendar date written YYYY-MM-DD, from 1900-01-01 to today (UTC);
- number is 0 to 9999.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Iterable

from .messages import Bet

MAX_NAME_LENGTH = 64
MAX_DOCUMENT_LENGTH = 16
MAX_NUMBER = 9999
EARLIEST_BIRTHDATE = "1900-01-01"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
QUOTE_LIMIT = 24  # characters of a peer's field quoted back in a reason
_DATE_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


@dataclass(frozen=True, slots=True)
class BetProblem:
    """Why a bet is invalid: its 0-based index in its batch, the field and the reason."""

    index: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"bet {self.index}: {self.field}: {self.reason}"


def quoted(value: str) -> str:
    """`value` as a reason quotes it: repr() of at most QUOTE_LIMIT characters.

    A reason goes back to the peer inside an ERROR frame and into the log, so what a
    peer sent must not decide its length (a field of 8,000 bytes would not fit).
    """
    if len(value) <= QUOTE_LIMIT:
        return repr(value)
    return f"{value[:QUOTE_LIMIT]!r}... ({len(value)} characters)"


def utc_today() -> date:
    """The server's "today": the current date in UTC."""
    return datetime.now(timezone.utc).date()


def _name_problem(value: str) -> str | None:
    if not 1 <= len(value) <= MAX_NAME_LENGTH:
        return f"must have 1 to {MAX_NAME_LENGTH} characters, has {len(value)}"
    # isprintable() is a fast C scan that is True for no string holding a Cc
    # character; only when it says no do we look for the exact category.
    if not value.isprintable():
        match = _CONTROL.search(value)
        if match:
            return f"contains the control character U+{ord(match.group()):04X}"
    return None


def bet_problem(bet: Bet, today_iso: str) -> tuple[str, str] | None:
    """(field, reason) for the first rule `bet` breaks, or None when it is valid.

    `today_iso` is today's date as YYYY-MM-DD (see `utc_today`).
    """
    first_name, last_name, document, birthdate, number = bet
    reason = _name_problem(first_name)
    if reason:
        return "first_name", reason
    reason = _name_problem(last_name)
    if reason:
        return "last_name", reason
    if not (1 <= len(document) <= MAX_DOCUMENT_LENGTH and document.isascii() and document.isdigit()):
        return "document", f"must be 1 to {MAX_DOCUMENT_LENGTH} ASCII digits, is {quoted(document)}"
    if not (EARLIEST_BIRTHDATE <= birthdate <= today_iso and _DATE_SHAPE.match(birthdate)):
        # YYYY-MM-DD strings order like their dates, so the range test is a string compare.
        if not _DATE_SHAPE.match(birthdate):
            return "birthdate", f"must be a date written YYYY-MM-DD, is {quoted(birthdate)}"
        return "birthdate", f"must be from {EARLIEST_BIRTHDATE} to {today_iso}, is {birthdate}"
    try:
        date.fromisoformat(birthdate)
    except ValueError:
        return "birthdate", f"is not a calendar date: {birthdate}"
    if not 0 <= number <= MAX_NUMBER:
        return "number", f"must be 0 to {MAX_NUMBER}, is {number}"
    return None


# Strings already proven to be real calendar dates. Bounded: only real dates from
# 1900-01-01 to today get in (about 46,000 of them).
_REAL_DATES: set[str] = set()


def first_invalid_bet(bets: Iterable[Bet], today: date | None = None) -> BetProblem | None:
    """The first invalid bet of a batch, or None when every bet is valid.

    The loop is the server's hot path: it runs only C-level checks that every valid
    bet passes (isprintable is False for any Cc character; a date seen valid before
    is in _REAL_DATES). A bet they do not clear goes through `bet_problem`, which
    decides exactly; so the fast checks can only send a valid bet the slow way,
    never let an invalid one through.
    """
    today_iso = (today or utc_today()).isoformat()
    real_dates = _REAL_DATES
    for index, (first_name, last_name, document, birthdate, number) in enumerate(bets):
        if (
            0 < len(first_name) <= MAX_NAME_LENGTH
            and 0 < len(last_name) <= MAX_NAME_LENGTH
            and first_name.isprintable()
            and last_name.isprintable()
            and 0 < len(document) <= MAX_DOCUMENT_LENGTH
            and document.isdigit()
            and document.isascii()
            and 0 <= number <= MAX_NUMBER
            and EARLIEST_BIRTHDATE <= birthdate <= today_iso
            and birthdate in real_dates
        ):
            continue
        problem = bet_problem(Bet(first_name, last_name, document, birthdate, number), today_iso)
        if problem:
            return BetProblem(index, *problem)
        real_dates.add(birthdate)  # valid, so birthdate is a real date within range
    return None
