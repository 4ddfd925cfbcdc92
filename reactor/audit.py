"""`python -m reactor audit`: checks that a central's database holds what it says it holds.

Theory of operation. Everything is read in one read transaction, so a central may
serve from the database meanwhile and the audit still sees one committed state. It
makes one pass over the bets in rowid (arrival) order, with a second cursor walking
the winners table in the same order beside it; per agency it keeps a count, the
running agency digest (32 bytes per 1,024 bets) and where its current block
started. Memory does not grow with the rows read.

The checks, each reporting its first problem (with the agency and bet number, an
agency's bet k being its k-th row) and how many it found:
- integrity: SQLite's own `PRAGMA integrity_check`;
- committed: every agency's `committed` is its number of stored rows, and no rows or
  accounts belong to an agency outside the lottery's 1..N;
- bets: every stored bet is valid by PROTOCOL.md, a birthdate still no later than
  today (UTC);
- digests: the digest recomputed from the rows matches the state the central
  persisted for it: each finished block's hash in `agencies.blocks`, as many hashes as
  `committed` finishes blocks, and `tail_rowid` at the first bet of the unfinished one;
- winners: once the draw has scanned a bet, it is in the winners table exactly when
  its number is the winning number, with its agency and document (so each agency's
  winners are its bets with that number, in stored order); before any draw the table
  is empty;
- draw: a draw only once every agency is done, over the bets stored before it; a
  fixed winning number is the one drawn; for a verifiable draw SHA-256(seed) is the
  commitment and the number re-derives from the seed and the recomputed digests.

The tables are read with the audit's own SQL, not through the store's code: a
mistake in how the store writes or reads them cannot then hide in both.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import sys
from dataclasses import dataclass, field
from datetime import date
from itertools import islice
from pathlib import Path
from typing import Sequence

from protocol import (
    BLOCK_BETS,
    DIGEST_SIZE,
    AgencyDigest,
    bet_problem,
    derive_winning_number,
    encode_bet,
    first_invalid_bet,
    utc_today,
)
from runtime.settings import EXIT_CONFIG, Option, SettingError, build_parser, program_name, read_config, resolve

from .commands import EXIT_FAILED, CommandError, _open_existing, _run

DESCRIPTION = """Check a central's database: SQLite's integrity check; every agency's committed
count against its stored rows; every stored bet valid; the agency digests
recomputed from the rows against the state the central persisted; after the draw,
the winners against the bets with the winning number; for a verifiable draw, the
seed against its commitment and the number re-derived. Reads the database the
server's settings name (--db, SERVER_DB, [server] db), also while a central serves
from it; never writes to it.

Prints per agency its bets, digest (the sha256 of its receipt) and winners, the
draw, and each check with the first problem it found (agency and bet number).

Exit codes: 0 every check holds; 1 a check failed, or the database cannot be
read; 2 bad arguments or settings (a missing database); 130 interrupted (Ctrl-C);
141 the output's reader went away (| head)."""

CHECKS = ("integrity", "committed", "bets", "digests", "winners", "draw")
SCAN_ROWS = 2_000  # rows fetched at a time: what the audit holds of the bets
INTEGRITY_MESSAGES = 10  # integrity_check stops after this many

# A bet, its agency and rowid, and whether SQLite holds it with the types the central
# writes (text, and an integer number): a row changed by hand may hold anything.
_SCAN_SQL = (
    "SELECT rowid, agency, first_name, last_name, document, birthdate, number, "
    "typeof(first_name) = 'text' AND typeof(last_name) = 'text' AND typeof(document) = 'text' "
    "AND typeof(birthdate) = 'text' AND typeof(number) = 'integer' FROM bets ORDER BY rowid"
)
_ROWID, _AGENCY, _BET, _TYPED = 0, 1, slice(2, 7), 7


@dataclass
class Problem:
    """The first problem a check found: where (agency, bets first..last) and what."""

    message: str
    agency: int | None = None
    bets: tuple[int, int] | None = None
    count: int = 1

    def place(self) -> str:
        where = [] if self.agency is None else [f"agency {self.agency}"]
        if self.bets is not None:
            first, last = self.bets
            where.append(f"bet {first}" if first == last else f"bets {first}-{last}")
        return ", ".join(where)


class Findings:
    """Owns the checks' outcomes: each check's first problem and how many it found."""

    def __init__(self) -> None:
        self.first: dict[str, Problem] = {}
        self.skipped: dict[str, str] = {}  # check -> why it could not run

    def add(self, check: str, message: str, agency: int | None = None, bets: tuple[int, int] | int | None = None,
            count: int = 1) -> None:
        if isinstance(bets, int):
            bets = (bets, bets)
        if check in self.first:
            self.first[check].count += count
        else:
            self.first[check] = Problem(message, agency, bets, count)

    @property
    def ok(self) -> bool:
        return not self.first and not self.skipped


@dataclass
class _Account:
    """One agency as the database records it, and as the scan finds it."""

    number: int
    committed: int = 0
    done: bool = False
    blocks: bytes = b""  # persisted: the finished blocks' hashes
    tail_rowid: int | None = None  # persisted: where the unfinished block starts
    receipt: bytes | None = None  # persisted: digest(committed), as the central handed it out
    bets: int = 0  # rows found so far
    digest: AgencyDigest = field(default_factory=AgencyDigest)
    tail_bet: int = 0  # the unfinished block's first bet, by `committed` (0: no unfinished block)
    tail_bet_rowid: int | None = None  # its rowid, as the scan finds it
    winners: int = 0  # rows of the winners table for this agency

    def stored(self, committed: int, done: bool, blocks: bytes, tail_rowid: int | None) -> None:
        """What the central persisted for this agency."""
        self.committed, self.done, self.blocks, self.tail_rowid = committed, done, blocks, tail_rowid
        finished, in_block = divmod(committed, BLOCK_BETS)
        self.tail_bet = finished * BLOCK_BETS + 1 if in_block else 0


@dataclass
class _Draw:
    winning_number: int
    drawn_at: str
    scanned_to: int
    last_rowid: int
    finished: bool

    @property
    def state(self) -> str:
        return "done" if self.finished else "drawing"


@dataclass
class Report:
    """What the audit found: the lottery, each agency, the draw, and the checks."""

    agencies: int | None  # the lottery's N, None when no lottery is recorded
    setting: str | None  # its winning-number setting
    commitment: str | None
    seed: str | None  # only once the draw is done: a central reveals it then, and so does the audit
    accounts: dict[int, _Account]
    draw: _Draw | None
    findings: Findings

    def as_json(self) -> dict:
        draw = self.draw
        return {
            "ok": self.findings.ok,
            "agencies": {
                str(n): {"bets": a.bets, "committed": a.committed, "done": a.done, "digest": a.digest.digest().hex(),
                         "winners": a.winners if draw is not None and draw.finished else None}
                for n, a in sorted(self.accounts.items())
            },
            "lottery": {"agencies": self.agencies, "winning_number": self.setting, "commitment": self.commitment,
                        "seed": self.seed},
            "draw": None if draw is None else {
                "state": draw.state, "winning_number": draw.winning_number, "drawn_at": draw.drawn_at,
                "bets": draw.last_rowid, "winners": sum(a.winners for a in self.accounts.values()),
            },
            "checks": {check: self._check_json(check) for check in CHECKS},
        }

    def _check_json(self, check: str) -> dict:
        problem = self.findings.first.get(check)
        if problem is not None:
            return {"ok": False, "problems": problem.count, "agency": problem.agency,
                    "bets": list(problem.bets) if problem.bets else None, "message": problem.message}
        if check in self.findings.skipped:
            return {"ok": False, "problems": 0, "not_checked": self.findings.skipped[check]}
        return {"ok": True}

    def lines(self) -> list[str]:
        draw, finished = self.draw, self.draw is not None and self.draw.finished
        out = []
        for n, a in sorted(self.accounts.items()):
            out.append(f"agency {n}: bets: {a.bets} | committed: {a.committed} | done: {'yes' if a.done else 'no'} | "
                       f"winners: {a.winners if finished else '-'} | digest: {a.digest.digest().hex()}")
        if draw is None:
            out.append("draw: open (not drawn yet)")
        else:
            out.append(f"draw: {draw.state} | winning_number: {draw.winning_number} | drawn_at: {draw.drawn_at} | "
                       f"bets: {draw.last_rowid} | winners: {sum(a.winners for a in self.accounts.values())}")
        lottery = f"lottery: agencies: {self.agencies} | winning_number: {self.setting}"
        if self.commitment is not None:
            lottery += f" | commitment: {self.commitment} | seed: {self.seed or '(revealed at the draw)'}"
        out.append(lottery)
        for check in CHECKS:
            problem = self.findings.first.get(check)
            if problem is not None:
                more = f" ({problem.count} problems of this kind)" if problem.count > 1 else ""
                place = problem.place()
                out.append(f"{check}: FAIL: {place + ': ' if place else ''}{problem.message}{more}")
            elif check in self.findings.skipped:
                out.append(f"{check}: NOT CHECKED: {self.findings.skipped[check]}")
            else:
                out.append(f"{check}: ok")
        failed = [check for check in CHECKS if check in self.findings.first or check in self.findings.skipped]
        out.append("audit: ok" if not failed else f"audit: FAIL ({', '.join(failed)})")
        return out


class _WinnersWalk:
    """Walks the winners table in bet_rowid order, beside the scan of the bets in rowid order."""

    def __init__(self, db: sqlite3.Connection, accounts: dict[int, _Account], findings: Findings,
                 winning_number: int | None) -> None:
        self._cursor = db.execute("SELECT bet_rowid, agency, document FROM winners ORDER BY bet_rowid")
        self._accounts = accounts
        self._findings = findings
        self._winning_number = winning_number
        self._row = None
        self.next_rowid = 0  # bet_rowid of the next winners row; infinite once there is none
        self._advance()

    def _advance(self) -> None:
        self._row = self._cursor.fetchone()
        self.next_rowid = float("inf") if self._row is None else self._row[0]
        if self._row is not None and self._row[1] in self._accounts:
            self._accounts[self._row[1]].winners += 1

    def at(self, rowid: int, agency: int, bet: int, document: str, number: int, winning: bool) -> None:
        """The scan is at bet `bet` of `agency` (rowid `rowid`); `winning` if the draw made it a winner."""
        self._skip_before(rowid)
        if self.next_rowid == rowid:
            listed_agency, listed_document = self._row[1], self._row[2]
            self._advance()
            if not winning:
                if self._winning_number is None:
                    why = "there is no draw"
                elif number == self._winning_number:
                    why = "the draw's scan has not reached it"
                else:
                    why = f"its number is {number}, the winning number {self._winning_number}"
                self._findings.add("winners", f"listed as a winner, but {why}", agency, bet)
            elif (listed_agency, listed_document) != (agency, document):
                self._findings.add("winners", f"listed as a winner of agency {listed_agency} with document "
                                   f"{listed_document!r}; the bet is agency {agency}'s, document {document!r}",
                                   agency, bet)
        elif winning:
            self._findings.add("winners", f"has the winning number {number} (document {document!r}) and is not "
                               "among the winners", agency, bet)

    def _skip_before(self, rowid: float) -> None:
        while self.next_rowid < rowid:
            bet_rowid, agency, document = self._row
            self._findings.add("winners", f"the winners table lists rowid {bet_rowid} (document {document!r}), "
                               "which holds no bet", agency)
            self._advance()

    def finish(self) -> None:
        self._skip_before(float("inf"))


class Audit:
    """Owns one audit of one database: its read transaction, the scan and the findings."""

    def __init__(self, db: sqlite3.Connection, today: date | None = None) -> None:
        self._db = db
        self._today = today or utc_today()
        self._n_agencies = 0  # the lottery's N, once read
        self.findings = Findings()

    def run(self) -> Report:
        db, findings = self._db, self.findings
        db.execute("BEGIN")  # one snapshot for every read below, whatever a central commits meanwhile
        seed = draw = None
        try:
            self._check_integrity()
            lottery = db.execute(
                "SELECT agencies, winning_number, seed, commitment FROM lottery WHERE id = 1"
            ).fetchone()
            n_agencies, setting, seed, commitment = lottery if lottery else (None, None, None, None)
            if lottery is None:
                findings.add("draw", "the database records no lottery (agency count, winning-number setting)")
            self._n_agencies = n_agencies or 0
            accounts = {n: _Account(n) for n in range(1, self._n_agencies + 1)}
            for number, committed, done, blocks, tail_rowid, receipt in db.execute(
                "SELECT agency, committed, done, blocks, tail_rowid, digest FROM agencies ORDER BY agency"
            ):
                account = accounts.get(number) or self._stray(accounts, number, "an account")
                if not isinstance(blocks, bytes):  # the central writes a BLOB, empty before a block is finished
                    findings.add("digests", f"blocks is stored as {type(blocks).__name__}, not as bytes", number)
                    blocks = b""
                account.stored(committed, bool(done), blocks, tail_rowid)
                account.receipt = receipt if isinstance(receipt, bytes) else None
            row = db.execute("SELECT winning_number, drawn_at, scanned_to, last_rowid, finished FROM draw "
                             "WHERE id = 1").fetchone()
            draw = None if row is None else _Draw(row[0], row[1], row[2], row[3], bool(row[4]))
            if self._scan(accounts, draw):
                self._check_accounts(accounts)
                self._check_draw(accounts, draw, n_agencies, setting, seed and bytes(seed), commitment)
        finally:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite ended the transaction itself after an error: the one to report
        revealed = bytes(seed).hex() if seed and draw is not None and draw.finished else None
        return Report(n_agencies, setting, commitment, revealed, accounts, draw, findings)

    def _check_integrity(self) -> None:
        rows = [m for (m,) in self._db.execute(f"PRAGMA integrity_check({INTEGRITY_MESSAGES})")]
        if rows != ["ok"]:
            # A row may hold several lines, under a "*** in database main ***" heading.
            messages = [line for row in rows for line in row.splitlines() if not line.startswith("***")]
            self.findings.add("integrity", messages[0] if messages else rows[0], count=max(len(messages), 1))

    def _stray(self, accounts: dict[int, _Account], number: int, what: str) -> _Account:
        self.findings.add("committed", f"{what} of agency {number}, which is not one of the lottery's agencies "
                          f"1..{self._n_agencies}", number)
        account = accounts[number] = _Account(number)
        return account

    # --- the pass over the bets --------------------------------------------------------
    def _scan(self, accounts: dict[int, _Account], draw: _Draw | None) -> bool:
        """The one pass; False when the rows could not all be read (the checks that need them are then skipped)."""
        findings = self.findings
        number = draw.winning_number if draw is not None else None
        scanned_to = draw.scanned_to if draw is not None else 0
        last_rowid = draw.last_rowid if draw is not None else float("inf")
        rowid = 0
        try:
            winners = _WinnersWalk(self._db, accounts, findings, number)
            cursor = self._db.execute(_SCAN_SQL)
            while rows := cursor.fetchmany(SCAN_ROWS):
                invalid = _invalid_bets(rows, self._today)
                for index, row in enumerate(rows):
                    rowid, agency, bet = row[_ROWID], row[_AGENCY], row[_BET]
                    account = accounts.get(agency) or self._stray(accounts, agency, "stored bets")
                    account.bets += 1
                    n = account.bets
                    if n == account.tail_bet:
                        account.tail_bet_rowid = rowid
                    account.digest.extend(_encoded(bet, row[_TYPED]), 1)
                    if not n % BLOCK_BETS:
                        self._check_block(account)
                    if invalid and index in invalid:
                        findings.add("bets", invalid[index], agency, n)
                    if rowid > last_rowid:
                        findings.add("draw", f"stored after the draw was fixed over rowids 1..{last_rowid}", agency, n)
                    winning = rowid <= scanned_to and bet[4] == number
                    if winning or rowid >= winners.next_rowid:
                        winners.at(rowid, agency, n, bet[2], bet[4], winning)
            winners.finish()
        except sqlite3.DatabaseError as error:
            findings.add("integrity", f"reading the bets failed after rowid {rowid}: {error}")
            for check in ("committed", "bets", "digests", "winners", "draw"):
                findings.skipped[check] = "the bets could not all be read"
            return False
        return True

    def _check_block(self, account: _Account) -> None:
        """The scan finished block i of the agency: its hash must be the i-th the central stored."""
        i = account.bets // BLOCK_BETS
        stored = account.blocks[DIGEST_SIZE * (i - 1) : DIGEST_SIZE * i]
        if stored and account.digest.completed_blocks(i - 1) != stored:
            self.findings.add("digests", f"block {i}'s hash differs from the one the central stored (H_{i}): "
                              "a bet of it was changed, removed or added since", account.number,
                              (account.bets - BLOCK_BETS + 1, account.bets))

    # --- after the pass ----------------------------------------------------------------
    def _check_accounts(self, accounts: dict[int, _Account]) -> None:
        findings = self.findings
        for number, account in sorted(accounts.items()):
            if account.bets != account.committed:
                findings.add("committed", f"committed is {account.committed}, but {account.bets} bets are stored",
                             number)
            finished = account.committed // BLOCK_BETS
            if len(account.blocks) != DIGEST_SIZE * finished:
                findings.add("digests", f"the central stored {len(account.blocks) / DIGEST_SIZE:g} block hashes, "
                             f"its committed {account.committed} finishes {finished} blocks", number)
            if account.tail_bet and account.tail_bet_rowid is not None and account.tail_rowid != account.tail_bet_rowid:
                findings.add("digests", f"tail_rowid is {account.tail_rowid}, but the unfinished block's first bet "
                             f"is at rowid {account.tail_bet_rowid}", number, account.tail_bet)
            no_bets_no_receipt = account.receipt is None and account.committed == 0  # never stored a bet
            if account.bets == account.committed and not no_bets_no_receipt \
                    and account.receipt != account.digest.digest():
                # The receipt covers the unfinished block too, which no stored H_i does yet.
                findings.add("digests", "the stored bets give another digest than the receipt the central "
                             "handed out (digest(committed))", number,
                             (account.tail_bet or 1, account.committed) if account.committed else None)

    def _check_draw(self, accounts: dict[int, _Account], draw: _Draw | None, n_agencies: int | None,
                    setting: str | None, seed: bytes | None, commitment: str | None) -> None:
        findings = self.findings
        if setting == "verifiable":
            if seed is None or commitment is None:
                findings.add("draw", "a verifiable lottery without its seed or commitment")
            elif hashlib.sha256(seed).hexdigest() != commitment:
                findings.add("draw", f"SHA-256 of the seed is {hashlib.sha256(seed).hexdigest()}, not the "
                             f"commitment {commitment}")
        if draw is None:
            return
        not_done = [n for n, a in sorted(accounts.items()) if not a.done and n_agencies and n <= n_agencies]
        if not_done:
            findings.add("draw", "drawn before this agency said DONE", not_done[0], count=len(not_done))
        if draw.finished and draw.scanned_to != draw.last_rowid:
            findings.add("draw", f"finished, yet its scan stopped at rowid {draw.scanned_to} of {draw.last_rowid}")
        if setting is not None and setting.isdigit() and draw.winning_number != int(setting):
            findings.add("draw", f"the winning number is {draw.winning_number}, the lottery's setting {setting}")
        if not 0 <= draw.winning_number <= 9999:
            findings.add("draw", f"the winning number {draw.winning_number} is outside 0..9999")
        if setting == "verifiable" and seed is not None and n_agencies:
            try:
                derived = derive_winning_number(seed, [accounts[n].digest.digest() for n in range(1, n_agencies + 1)])
            except ValueError as error:  # a seed of the wrong size
                findings.add("draw", f"the number cannot be derived: {error}")
            else:
                if derived != draw.winning_number:
                    findings.add("draw", f"the winning number is {draw.winning_number}, but the seed and the "
                                 f"agencies' digests derive {derived}")


def _encoded(bet: tuple, typed: bool) -> bytes:
    """The bet as the agency digest hashes it; a row that no bet encodes to (changed by hand:
    wrong types, a number beyond u16) hashes as its repr, so the digest shows it differs."""
    if typed:
        try:
            return encode_bet(bet)
        except (struct.error, ValueError):
            pass
    return repr(bet).encode()


def _invalid_bets(rows: Sequence[tuple], today: date) -> dict[int, str]:
    """Index in `rows` -> why that stored bet is not valid by PROTOCOL.md, for the few that are not.

    Rows with the central's types go through the server's own fast check, resumed
    after each invalid bet it finds; a chunk with a mistyped row is checked row by row.
    """
    found: dict[int, str] = {}
    if all(row[_TYPED] for row in rows):
        bets = [row[_BET] for row in rows]
        start = 0
        while (problem := first_invalid_bet(islice(bets, start, None), today)) is not None:
            found[start + problem.index] = f"{problem.field}: {problem.reason}"
            start += problem.index + 1
        return found
    today_iso = today.isoformat()
    for index, row in enumerate(rows):
        if not row[_TYPED]:
            found[index] = f"stored with types no bet has: {row[_BET]!r}"
        elif problem := bet_problem(row[_BET], today_iso):
            found[index] = ": ".join(problem)
    return found


# --- the command -------------------------------------------------------------------


class AuditFailed(CommandError):
    """A check failed: the report says which and where."""


def main(argv: Sequence[str], server_options: Sequence[Option]) -> int:
    """`python -m reactor audit [--db PATH] [--json]`."""
    prog = program_name("python -m reactor audit")
    db_option = next(option for option in server_options if option.name == "db")
    parser = build_parser(prog, DESCRIPTION, [db_option], "SERVER_CONFIG")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    args = parser.parse_args(argv)
    try:
        config = read_config(args.config, os.environ, "SERVER_CONFIG", server_options)
        db = resolve([db_option], vars(args), os.environ, config)["db"]
    except SettingError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return _run(prog, lambda: _audit(db, args.json))


def _audit(path: str, as_json: bool) -> None:
    _open_existing(path).close()  # a missing, foreign or damaged file: its one line and exit code
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        try:
            report = Audit(db).run()
        finally:
            db.close()
    except sqlite3.Error as error:
        raise CommandError(f"reading the database failed: {error}", EXIT_FAILED) from None
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join(report.lines()))
    sys.stdout.flush()  # a closed pipe shows here, inside _run
    if not report.findings.ok:
        failed = [check for check in CHECKS if check in report.findings.first or check in report.findings.skipped]
        raise AuditFailed(f"database {path} fails {len(failed)} of {len(CHECKS)} checks: {', '.join(failed)}",
                          EXIT_FAILED)
