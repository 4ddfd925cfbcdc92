"""Reading an agency file as a stream of numbered bets.

The file is `first_name,last_name,document,birthdate,number` per line, no header,
UTF-8, CRLF or LF. Two rules make what a person sees in the file the bet that is
sent, validated and stored:
- a UTF-8 byte order mark at the start of the file is not part of the first name;
- spaces and tabs around a field are not part of it (` Ana , Gómez ` is `Ana`,
  `Gómez`); spaces inside a field are (`María José`).
They are applied before validation, so the bet that is checked is the bet that is sent.

Rows are read one at a time (memory stays flat whatever the file's size), each
checked with the protocol's bet rules. A bad row is reported with its `file:line`;
what happens to it is the caller's policy (`on_invalid`).
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from protocol import Bet, bet_problem, utc_today
from runtime.logfmt import log_event

log = logging.getLogger(__name__)

FIELDS = ("first_name", "last_name", "document", "birthdate", "number")
BOM = b"\xef\xbb\xbf"
SURROUNDING_SPACE = " \t"


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


class DataFileError(Exception):
    """The data file cannot be read as an agency file (missing, a directory, unreadable)."""


def log_invalid_row(problem: RowProblem, agency: int | None, stopping: bool) -> None:
    """The one line for an invalid row, under either policy: who, where, which field, why."""
    log_event(
        log, logging.ERROR if stopping else logging.WARNING, "fila_invalida", "fail" if stopping else "in_progress",
        agency=agency, file=f"{problem.path}:{problem.line}", field=problem.field, reason=problem.reason,
        policy="stop" if stopping else "skip",
    )


def parse_row(raw: bytes, today_iso: str) -> Bet | tuple[str, str]:
    """A bet, or (field, reason) when the line is not a valid bet."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return "line", f"invalid UTF-8 at byte {error.start}"
    parts = [part.strip(SURROUNDING_SPACE) for part in text.rstrip("\r\n").split(",")]
    if len(parts) != 5:
        return "line", f"expected 5 comma-separated fields, found {len(parts)}"
    number = parts[4]
    if not (number.isascii() and number.isdigit()):
        shown = number if len(number) <= 24 else number[:24] + "..."
        return "number", f"must be an integer 0 to 9999, is {shown!r}"
    bet = Bet(parts[0], parts[1], parts[2], parts[3], int(number))
    problem = bet_problem(bet, today_iso)
    return problem if problem else bet


class BetFile:
    """An agency file read lazily; `bets()` numbers the valid rows 1, 2, 3, ...

    `on_invalid` is "stop" or "skip". With "stop", `bets()` ends at the first bad
    row, having handed out every bet before it (so they can all be sent and stored),
    and `check_complete()` then raises InvalidRow. With "skip", the row is logged,
    counted, and the file goes on. Each call of `bets()` reads the file from its
    start, so a session can resume from any bet. `agency` only labels log lines.
    """

    def __init__(
        self, path: str | Path, on_invalid: str = "stop", today: Callable = utc_today, agency: int | None = None
    ) -> None:
        if on_invalid not in ("stop", "skip"):
            raise ValueError("on_invalid must be 'stop' or 'skip'")
        self.path = Path(path)
        self.on_invalid = on_invalid
        self.today = today
        self.agency = agency
        self.skipped = 0
        self.stopped_at: RowProblem | None = None
        self._check_readable()

    def _check_readable(self) -> None:
        try:
            mode = self.path.stat().st_mode
            if stat.S_ISDIR(mode):
                raise DataFileError(f"data file {self.path} is a directory, not a file")
            if not stat.S_ISREG(mode):
                raise DataFileError(f"data file {self.path} is not a regular file")
            with open(self.path, "rb"):
                pass
        except OSError as error:
            raise DataFileError(f"data file {self.path}: {error.strerror}") from None

    def count_rows(self) -> int:
        """Rows in the file, valid or not (blank lines hold none): the total a progress line shows."""
        with open(self.path, "rb") as source:
            return sum(1 for raw in source if raw.strip() not in (b"", BOM))

    def bets(self, skip: int = 0) -> Iterator[Bet]:
        """The valid bets after the first `skip` of them, in file order."""
        today_iso = self.today().isoformat()
        self.skipped = 0
        self.stopped_at = None
        seen = 0
        with open(self.path, "rb") as source:
            log_event(log, logging.DEBUG, "open_file", "success", file=self.path)
            try:
                for line_number, raw in enumerate(source, start=1):
                    if line_number == 1 and raw.startswith(BOM):
                        raw = raw[len(BOM):]
                    if not raw.strip():
                        continue  # a blank line (such as a final one) holds no bet
                    parsed = parse_row(raw, today_iso)
                    if not isinstance(parsed, Bet):
                        problem = RowProblem(str(self.path), line_number, *parsed)
                        if self.on_invalid == "stop":
                            self.stopped_at = problem
                            return
                        self.skipped += 1
                        log_invalid_row(problem, self.agency, stopping=False)
                        continue
                    seen += 1
                    if seen > skip:
                        yield parsed
            finally:
                log_event(log, logging.INFO, "close_file", "success", file=self.path)

    def check_complete(self) -> None:
        """After `bets()` ran out: raises InvalidRow if it stopped at a bad row rather than at the end."""
        if self.stopped_at is not None:
            raise InvalidRow(self.stopped_at)
