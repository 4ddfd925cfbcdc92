"""The SQLite store: bets in arrival order, per-agency progress, and the draw.

Theory of operation. The loop stages work into one open transaction during a turn
(`stage_bets`, then `stage_agency` once per agency at the turn's end, `stage_done`),
each piece all or nothing so a piece that fails leaves the others staged (one
statement is atomic by itself; a piece of several has a savepoint), and `commit()`
ends the transaction once per turn (group commit). Nothing staged is visible as
`committed` until commit returns.

Bets carry no per-bet index: inserts append to the table's rowid B-tree, which
keeps ingest near SQLite's ceiling. A bet's number within its agency is its rank
among that agency's rows, and `agencies.committed` counts them. The draw scans the
table once, by rowid slices (`stage_winner_scan`), so the caller can spread it over
loop turns; its winners go to a small table, and the draw row remembers how far
the scan got, so a restart resumes it.

Checkpoints: SQLite's automatic WAL checkpoint would run inside whichever commit
crosses its threshold and double that turn. It is off; the store counts what it
appended (`checkpoint_due`) and `checkpoint()` is run by the server in a turn of
its own, so the WAL stays bounded and no turn pays for both.

Ownership. A database belongs to one lottery: it is marked as ours
(`application_id`), and its `lottery` row records the agency count and the
winning-number setting it was created with, so the service can refuse a
configuration that would change the meaning of what is stored. The store never
waits on a lock while serving (busy timeout 0): another process's write lock is a
failed piece of work, not a frozen loop. And it watches its files: after every
commit it checks that the database and its WAL are still the files it opened
(two `stat` calls against an fsync), because a deleted or replaced file would
take acknowledged bets with it at the next start.

Durability: `full` is synchronous=FULL (a commit is on disk when it returns),
`normal` survives a process crash but may lose the last commits on power loss,
`off` hands writes to the OS without syncing (process crash safe in WAL mode;
power loss may lose or corrupt recent commits).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path
from typing import Iterator, Sequence

from runtime.logfmt import log_event

log = logging.getLogger(__name__)

DURABILITY = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
APPLICATION_ID = 0x4C4F5454  # "LOTT": marks a database as a lottery central's
SCHEMA_VERSION = 2  # 2: the agency digest's state and the verifiable draw's seed
OPEN_BUSY_TIMEOUT = 2.0  # seconds to wait for a lock while opening, before serving starts
CHECKPOINT_EVERY_ROWS = 20_000  # about half the WAL SQLite checkpoints at by default: a short turn of its own
MAX_ROWS_PER_INSERT = 400  # a valid BETS frame holds at most ~355 bets: one statement a batch

SCHEMA = """
CREATE TABLE IF NOT EXISTS bets (
    agency     INTEGER NOT NULL,
    first_name TEXT NOT NULL,
    last_name  TEXT NOT NULL,
    document   TEXT NOT NULL,
    birthdate  TEXT NOT NULL,
    number     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agencies (
    agency     INTEGER PRIMARY KEY,
    committed  INTEGER NOT NULL DEFAULT 0,
    done       INTEGER NOT NULL DEFAULT 0,
    blocks     BLOB NOT NULL DEFAULT x'',  -- H_1 || H_2 || ... of the agency digest's finished blocks
    tail_rowid INTEGER,                    -- rowid of the first bet of the unfinished block
    digest     BLOB                        -- digest(committed): the receipt, as the central hands it out
);
CREATE TABLE IF NOT EXISTS draw (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    winning_number INTEGER NOT NULL,
    drawn_at       TEXT NOT NULL,
    scanned_to     INTEGER NOT NULL DEFAULT 0,
    last_rowid     INTEGER NOT NULL,
    finished       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS winners (
    bet_rowid INTEGER PRIMARY KEY,
    agency    INTEGER NOT NULL,
    document  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS lottery (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    agencies       INTEGER NOT NULL,
    winning_number TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    seed           BLOB,  -- a verifiable draw's secret, drawn when the lottery was recorded
    commitment     TEXT   -- SHA-256(seed), lowercase hex, published before any bet
);
"""
# The columns of each table, as SCHEMA makes them: what a database must have to be ours.
_COLUMNS = {
    "bets": ("agency", "first_name", "last_name", "document", "birthdate", "number"),
    "agencies": ("agency", "committed", "done", "blocks", "tail_rowid", "digest"),
    "draw": ("id", "winning_number", "drawn_at", "scanned_to", "last_rowid", "finished"),
    "winners": ("bet_rowid", "agency", "document"),
    "lottery": ("id", "agencies", "winning_number", "created_at", "seed", "commitment"),
}


@functools.lru_cache(maxsize=MAX_ROWS_PER_INSERT)
def _insert_bets_sql(rows: int) -> str:
    """INSERT of `rows` bets of one agency: ?1 is the agency, then five parameters a bet."""
    values = ",".join(f"(?1,?{i},?{i + 1},?{i + 2},?{i + 3},?{i + 4})" for i in range(2, 2 + 5 * rows, 5))
    return f"INSERT INTO bets (agency, first_name, last_name, document, birthdate, number) VALUES {values}"


class DatabaseUnusable(Exception):
    """The database cannot serve: not a database, damaged, or not a lottery central's.
    The message is one line that names the file."""


class DatabaseLost(Exception):
    """The database or its WAL was deleted or replaced while serving: what was
    committed since may not be found by the next start, so nothing more may be
    acknowledged."""


class StorageError(Exception):
    """The store could not take a piece of work; nothing of it was stored.

    `transaction_lost` is True when SQLite abandoned the whole open transaction,
    so every piece staged before it in the turn is gone too.
    """

    def __init__(self, message: str, transaction_lost: bool = False) -> None:
        super().__init__(message)
        self.transaction_lost = transaction_lost


@dataclass(frozen=True)
class AgencyState:
    """One agency as stored: its bets, DONE, and its digest's persisted state."""

    committed: int
    done: bool
    blocks: bytes = b""  # the finished blocks' H_i
    tail_rowid: int | None = None  # where the unfinished block's bets start
    digest: bytes | None = None  # digest(committed), as handed out


@dataclass(frozen=True)
class LotteryRecord:
    """What lottery a database holds: the settings it was created with."""

    agencies: int
    winning_number: str  # as configured: "7574", "random", "verifiable"
    created_at: str
    seed: bytes | None = None  # a verifiable draw's secret
    commitment: str | None = None


@dataclass(frozen=True)
class Holdings:
    """What a database holds that a changed configuration could contradict."""

    bets: int
    done: int
    draw: "DrawState | None"

    @property
    def empty(self) -> bool:
        return not (self.bets or self.done or self.draw)


@dataclass(frozen=True)
class DrawState:
    winning_number: int
    drawn_at: str
    scanned_to: int
    last_rowid: int
    finished: bool


class Store:
    """Owns the SQLite connection, its one open transaction, and the schema.

    `connection_factory` is the sqlite3.Connection class it opens: the seam through
    which tests and the bench give it a connection that fails on purpose or is shared
    across threads, instead of reaching into the store.
    """

    connection_factory: type[sqlite3.Connection] = sqlite3.Connection

    def __init__(
        self, path: str | Path, durability: str = "full", slow_commit_warning: float = 0.05, read_only: bool = False,
        rows_per_insert: int | None = None, connection_factory: type[sqlite3.Connection] | None = None,
    ) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self.path = str(path)
        self.durability = durability
        self.slow_commit_warning = slow_commit_warning
        self.read_only = read_only
        if connection_factory is not None:
            self.connection_factory = connection_factory
        self._in_transaction = False
        self._rows_since_checkpoint = 0
        self._identity: dict[str, tuple[int, int]] = {}
        self.commits = 0
        self.longest_commit = 0.0
        self.longest_checkpoint = 0.0
        self.last_commit = 0.0
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as error:  # "file is not a database", "malformed", ...
            raise DatabaseUnusable(f"database {self.path}: {error}") from None
        variables = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)  # 999 before SQLite 3.32
        # `rows_per_insert` lets a test cut batches as a SQLite with a lower limit would.
        self._rows_per_insert = rows_per_insert or min(MAX_ROWS_PER_INSERT, (variables - 1) // 5)
        if not read_only and self.path != ":memory:":
            self._identity = {name: _identity(name) for name in (self.path, self.path + "-wal")}

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            db = sqlite3.connect(f"{Path(self.path).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                 timeout=OPEN_BUSY_TIMEOUT, factory=self.connection_factory)
            self._check_ours(db)
            return db
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, cached_statements=512, timeout=OPEN_BUSY_TIMEOUT,
                             factory=self.connection_factory)
        self._check_ours(db)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # Serving never waits for a lock on the loop's thread: contention fails the piece of work.
        db.execute("PRAGMA busy_timeout=0")
        db.execute("BEGIN IMMEDIATE")  # the WAL exists from here on, so its identity can be taken
        db.execute("COMMIT")
        return db

    def _check_ours(self, db: sqlite3.Connection) -> None:
        """Refuses a database that some other program made (its tables could be anything)."""
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if application_id == APPLICATION_ID:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return
            raise DatabaseUnusable(
                f"database {self.path} has schema {version}, this central reads schema {SCHEMA_VERSION}: "
                "start with a new --db (export the old one with the central that wrote it)"
            )
        if application_id == 0:
            # Unmarked: a new file, or one written before databases were marked; either
            # way every table it has must be one of ours, with our columns.
            foreign = sorted(
                name for name in tables
                if tuple(row[1] for row in db.execute(f'PRAGMA table_info("{name}")')) != _COLUMNS.get(name)
            )
            if not foreign:
                if self.read_only and "bets" not in tables:
                    raise DatabaseUnusable(f"database {self.path} is empty: no central has used it")
                return
            raise DatabaseUnusable(
                f"database {self.path} is not a lottery central database (tables: {', '.join(sorted(tables))})"
            )
        raise DatabaseUnusable(
            f"database {self.path} is not a lottery central database (application_id {application_id:#x})"
        )

    # --- reading ------------------------------------------------------------------
    def agencies(self) -> dict[int, AgencyState]:
        rows = self._db.execute("SELECT agency, committed, done, blocks, tail_rowid, digest FROM agencies")
        return {row[0]: AgencyState(row[1], bool(row[2]), bytes(row[3]), row[4], row[5] and bytes(row[5]))
                for row in rows}

    @contextlib.contextmanager
    def snapshot(self):
        """Reads inside it see one commit's state (a read transaction); for readers."""
        self._db.execute("BEGIN")
        try:
            yield self
        finally:
            self._db.execute("COMMIT")

    def tail_bets(self, agency: int, from_rowid: int, count: int) -> list[tuple]:
        """The agency's first `count` bets from rowid `from_rowid` on, in stored order:
        its digest's unfinished block, so a restart hashes at most a block again."""
        rows = self._db.execute(
            "SELECT first_name, last_name, document, birthdate, number FROM bets "
            "WHERE rowid >= ? AND agency = ? ORDER BY rowid LIMIT ?",
            (from_rowid, agency, count),
        )
        return rows.fetchall()

    def draw(self) -> DrawState | None:
        row = self._db.execute(
            "SELECT winning_number, drawn_at, scanned_to, last_rowid, finished FROM draw WHERE id = 1"
        ).fetchone()
        return None if row is None else DrawState(row[0], row[1], row[2], row[3], bool(row[4]))

    def winners(self) -> dict[int, list[str]]:
        result: dict[int, list[str]] = {}
        for agency, document in self._db.execute("SELECT agency, document FROM winners ORDER BY bet_rowid"):
            result.setdefault(agency, []).append(document)
        return result

    def lottery(self) -> LotteryRecord | None:
        row = self._db.execute(
            "SELECT agencies, winning_number, created_at, seed, commitment FROM lottery WHERE id = 1"
        ).fetchone()
        return None if row is None else LotteryRecord(row[0], row[1], row[2], row[3] and bytes(row[3]), row[4])

    def holdings(self) -> Holdings:
        done = self._db.execute("SELECT COUNT(*) FROM agencies WHERE done").fetchone()[0]
        return Holdings(self.total_bets(), done, self.draw())

    def record_lottery(self, agencies: int, winning_number: str, seed: bytes | None = None,
                       commitment: str | None = None) -> LotteryRecord:
        """Records (or, for a database that holds nothing yet, changes) the lottery's
        settings, with a verifiable draw's seed and commitment when it has one."""
        created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._db.execute(
            "INSERT INTO lottery (id, agencies, winning_number, created_at, seed, commitment) "
            "VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET agencies = excluded.agencies, "
            "winning_number = excluded.winning_number, seed = excluded.seed, commitment = excluded.commitment",
            (agencies, winning_number, created_at, seed, commitment),
        )
        return self.lottery()

    def total_bets(self) -> int:
        return self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM bets").fetchone()[0]

    def iter_bets(self, batch: int = 10_000) -> Iterator[tuple]:
        """Every bet as (agency, first_name, last_name, document, birthdate, number), in arrival order."""
        cursor = self._db.execute(
            "SELECT agency, first_name, last_name, document, birthdate, number FROM bets ORDER BY rowid"
        )
        while rows := cursor.fetchmany(batch):
            yield from rows

    # --- staging (inside the turn's transaction) ------------------------------------
    def stage_bets(self, agency: int, bets: Sequence[tuple]) -> int:
        """Appends `bets` (5-tuples) for `agency`, all or nothing; the first one's rowid.

        One multi-row INSERT per chunk, not executemany: SQLite then steps one
        statement per chunk instead of one per bet (?1 is the agency in every row).
        A batch fits one chunk unless SQLite's variable limit is low, and a piece of
        one statement needs no savepoint.
        """
        per = self._rows_per_insert
        with self._piece(savepoint=len(bets) > per):
            first_rowid = None
            for start in range(0, len(bets), per):
                chunk = bets[start : start + per]
                params = [agency]
                params += chain.from_iterable(chunk)
                cursor = self._db.execute(_insert_bets_sql(len(chunk)), params)
                if first_rowid is None:  # one statement's rows get consecutive rowids
                    first_rowid = cursor.lastrowid - len(chunk) + 1
            self._rows_since_checkpoint += len(bets)
        return first_rowid

    def stage_agency(self, agency: int, committed: int, new_blocks: bytes, tail_rowid: int | None,
                     digest: bytes | None = None) -> None:
        """Sets the agency's `committed` and its digest's state: `new_blocks` are the H_i
        of the blocks finished since it was last set, `tail_rowid` where the unfinished
        block starts (None: where it started before), `digest` digest(committed), the
        receipt (it also covers the unfinished block, which no H_i does yet). Once a
        turn per agency that stored bets, beside them in the same transaction."""
        with self._piece():
            # || makes TEXT of two BLOBs, byte for byte; the CAST makes it a BLOB again.
            self._db.execute(
                "INSERT INTO agencies (agency, committed, blocks, tail_rowid, digest) VALUES (?1, ?2, ?3, ?4, ?5) "
                "ON CONFLICT (agency) DO UPDATE SET committed = ?2, blocks = CAST(blocks || ?3 AS BLOB), "
                "tail_rowid = COALESCE(?4, tail_rowid), digest = ?5",
                (agency, committed, new_blocks, tail_rowid, digest),
            )

    def stage_done(self, agency: int) -> None:
        with self._piece():
            self._db.execute(
                "INSERT INTO agencies (agency, done) VALUES (?, 1) ON CONFLICT (agency) DO UPDATE SET done = 1",
                (agency,),
            )

    def stage_draw(self, winning_number: int) -> DrawState:
        """Fixes the draw: its number and the last bet it covers (every bet, since all are done)."""
        drawn_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._piece():
            last = self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM bets").fetchone()[0]
            self._db.execute(
                "INSERT INTO draw (id, winning_number, drawn_at, scanned_to, last_rowid) VALUES (1, ?, ?, 0, ?)",
                (winning_number, drawn_at, last),
            )
        return DrawState(winning_number, drawn_at, 0, last, False)

    def stage_winner_scan(self, draw: DrawState, slice_size: int) -> DrawState:
        """Scans the next `slice_size` rowids after `draw.scanned_to` for winners; the draw after it."""
        upper = min(draw.last_rowid, draw.scanned_to + slice_size)
        finished = upper >= draw.last_rowid
        with self._piece(savepoint=True):
            self._db.execute(
                "INSERT OR IGNORE INTO winners (bet_rowid, agency, document) "
                "SELECT rowid, agency, document FROM bets WHERE rowid > ? AND rowid <= ? AND number = ?",
                (draw.scanned_to, upper, draw.winning_number),
            )
            self._db.execute("UPDATE draw SET scanned_to = ?, finished = ? WHERE id = 1", (upper, int(finished)))
        return replace(draw, scanned_to=upper, finished=finished)

    def _piece(self, savepoint: bool = False) -> "_Piece":
        return _Piece(self, savepoint)

    # --- committing ---------------------------------------------------------------
    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def commit(self) -> None:
        """Ends the turn's transaction; on failure rolls it back and raises StorageError
        (or, for an error that is not SQLite's, that error: rolled back all the same,
        so nothing of the turn can be committed later by the next turn's COMMIT)."""
        if not self._in_transaction:
            return
        started = time.monotonic()
        try:
            self._db.execute("COMMIT")
        except BaseException as error:
            self._rollback()
            if isinstance(error, sqlite3.Error):
                raise StorageError(f"commit failed: {error}", transaction_lost=True) from error
            raise
        finally:
            self._in_transaction = False
        elapsed = self._timed("commit", started)
        self.commits += 1
        self.last_commit = elapsed
        self.longest_commit = max(self.longest_commit, elapsed)
        self._check_files()

    def _check_files(self) -> None:
        """Raises DatabaseLost unless the database and its WAL are the files opened."""
        for name, opened in self._identity.items():
            try:
                now = _identity(name)
            except OSError:
                now = None
            if now != opened:
                raise DatabaseLost(f"{name} was deleted or replaced while the central was using it")

    def rollback(self) -> None:
        """Drops everything staged in the turn's transaction."""
        if self._in_transaction:
            self._rollback()
            self._in_transaction = False

    @property
    def checkpoint_due(self) -> bool:
        return self._rows_since_checkpoint >= CHECKPOINT_EVERY_ROWS and not self._in_transaction

    def checkpoint(self) -> None:
        """Copies the WAL into the database (PASSIVE: never waits for readers)."""
        started = time.monotonic()
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as error:
            log_event(log, logging.WARNING, "checkpoint", "in_progress", error=error)
            return
        self._rows_since_checkpoint = 0
        self.longest_checkpoint = max(self.longest_checkpoint, self._timed("checkpoint", started))

    def _timed(self, action: str, started: float) -> float:
        """Seconds since `started`; logs the action as slow past `slow_commit_warning`."""
        elapsed = time.monotonic() - started
        if elapsed > self.slow_commit_warning:
            log_event(log, logging.WARNING, action, "in_progress", slow_ms=f"{elapsed * 1000:.1f}")
        return elapsed

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may have rolled back already (e.g. on SQLITE_FULL)

    def close(self) -> None:
        if self._in_transaction:
            self._rollback()
            self._in_transaction = False
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # the WAL is still valid; the next open replays it
        self._db.close()


def _identity(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


class _Piece:
    """One piece of staged work in the turn's transaction: all of it, or none of it.

    A piece of one statement needs no savepoint: SQLite undoes a failed statement by
    itself. A piece of several rolls back to its savepoint. Either way, when SQLite
    abandoned the whole transaction (it may, on a full disk or an I/O error), the
    StorageError says so: everything staged before it in the turn is gone too.
    """

    def __init__(self, store: Store, savepoint: bool) -> None:
        self.store = store
        self.savepoint = savepoint

    def __enter__(self) -> None:
        store = self.store
        try:
            if not store._in_transaction:
                store._db.execute("BEGIN IMMEDIATE")
                store._in_transaction = True
            if self.savepoint:
                store._db.execute("SAVEPOINT piece")
        except sqlite3.Error as error:
            raise StorageError(str(error)) from error

    def __exit__(self, kind, error, traceback) -> bool:
        store, db = self.store, self.store._db
        if kind is None:
            if self.savepoint:
                db.execute("RELEASE piece")
            return False
        if not isinstance(error, sqlite3.Error):
            return False
        lost = not db.in_transaction
        if self.savepoint and not lost:
            try:
                db.execute("ROLLBACK TO piece")
                db.execute("RELEASE piece")
            except sqlite3.Error:
                lost = True
        if lost:
            store._rollback()
            store._in_transaction = False
            raise StorageError(str(error), transaction_lost=True) from error
        raise StorageError(str(error)) from error
