"""Reading an agency file as a stream of numbered bets.

The file is `first_name,last_name,document,birthdate,number` per line, no header,
UTF-8, CRLF or LF. Rows are read one at a time (memory stays flat whatever the
file's size), each checked with the protocol's bet rules. A bad row is reported
with its `file:line`; what happens to it is the caller's policy (`on_invalid`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from protocol import Bet, bet_problem, utc_today
from runtime.logfmt import log_event

log = logging.getLogger(__name__)

FIELDS = ("first_name", "last_name", "document", "birthdate", "number")


@dataclass(frozen=True)
class RowProblem:
    """A row that is not a valid bet: where it is, which field, and why."""

    path: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.reason}"


class InvalidRow(Exception):
    """Stops the agency at a row it must not send (policy `stop`)."""

    def __init__(self, problem: RowProblem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def parse_row(raw: bytes, today_iso: str) -> Bet | tuple[str, str]:
    """A bet, or (field, reason) when the line is not a valid bet."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return "line", f"invalid UTF-8 at byte {error.start}"
    parts = text.rstrip("\r\n").split(",")
    if len(parts) != 5:
        return "line", f"expected 5 comma-separated fields, found {len(parts)}"
    number = parts[4]
    if not (number.isascii() and number.isdigit()):
        return "number", f"must be an integer 0 to 9999, is {number!r}"
    bet = Bet(parts[0], parts[1], parts[2], parts[3], int(number))
    problem = bet_problem(bet, today_iso)
    return problem if problem else bet


class BetFile:
    """An agency file read lazily; `bets()` numbers the valid rows 1, 2, 3, ...

    `on_invalid` is "stop" (raise InvalidRow at the first bad row, before anything
    past it is handed out) or "skip" (log the row, count it, go on). Each call of
    `bets()` reads the file from its start, so a session can resume from any bet.
    """

    def __init__(self, path: str | Path, on_invalid: str = "stop", today: Callable = utc_today) -> None:
        if on_invalid not in ("stop", "skip"):
            raise ValueError("on_invalid must be 'stop' or 'skip'")
        self.path = Path(path)
        self.on_invalid = on_invalid
        self.today = today
        self.skipped = 0
        self.size = self.path.stat().st_size  # also: a missing file fails here, early

    def bets(self, skip: int = 0) -> Iterator[Bet]:
        """The valid bets after the first `skip` of them, in file order."""
        today_iso = self.today().isoformat()
        self.skipped = 0
        seen = 0
        with open(self.path, "rb") as source:
            log_event(log, logging.DEBUG, "open_file", "success", file=self.path)
            try:
                for line_number, raw in enumerate(source, start=1):
                    if not raw.strip():
                        continue  # a blank line (such as a final one) holds no bet
                    parsed = parse_row(raw, today_iso)
                    if not isinstance(parsed, Bet):
                        problem = RowProblem(str(self.path), line_number, *parsed)
                        if self.on_invalid == "stop":
                            raise InvalidRow(problem)
                        self.skipped += 1
                        log_event(log, logging.WARNING, "fila_invalida", "in_progress", fila=problem)
                        continue
                    seen += 1
                    if seen > skip:
                        yield parsed
            finally:
                log_event(log, logging.INFO, "close_file", "success", file=self.path)
