"""SQLite connections that fail on purpose, given to the store through its seam
(`Store(connection_factory=...)` or `Store.connection_factory`)."""

from __future__ import annotations

import os
import random
import sqlite3


class FlagConnection(sqlite3.Connection):
    """Fails as told by its class's flags, with SQLite's own error for a full disk:
    `disk_full` fails every statement that writes (before it runs), `fail_commits`
    makes COMMIT roll back and fail. Subclass it per test so the flags are the test's."""

    disk_full = False
    fail_commits = False

    def execute(self, sql, *args):
        if self.fail_commits and sql == "COMMIT":
            super().execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        if self.disk_full and sql.startswith(("INSERT", "UPDATE")):
            raise sqlite3.OperationalError("database or disk is full")
        return super().execute(sql, *args)


class FlagFileConnection(sqlite3.Connection):
    """While the file FAULT_FLAG names exists, the database may not grow past the pages
    it has (`PRAGMA max_page_count`): writes that need a page fail with SQLite's real
    SQLITE_FULL, as on a full disk. Remove the file and space "returns"."""

    def execute(self, sql, *args):
        if sql.startswith(("INSERT", "UPDATE")):
            if os.path.exists(os.environ["FAULT_FLAG"]):
                pages = super().execute("PRAGMA page_count").fetchone()[0]
                super().execute(f"PRAGMA max_page_count = {pages}")
            else:
                super().execute("PRAGMA max_page_count = 4294967294")
        return super().execute(sql, *args)


class RandomFaultConnection(sqlite3.Connection):
    """With probability FAULT_RATE (seeded by FAULT_SEED): a bets INSERT does its work and
    then raises an exception that is not SQLite's (a bug half way through a piece of the
    turn), and a COMMIT raises one before it commits."""

    rng = random.Random(int(os.environ.get("FAULT_SEED", "0")))
    rate = float(os.environ.get("FAULT_RATE", "0"))

    def execute(self, sql, *args):
        if sql == "COMMIT" and self.rng.random() < self.rate:
            raise RuntimeError("injected: a fault before the commit")
        cursor = super().execute(sql, *args)
        if sql.startswith("INSERT INTO bets") and self.rng.random() < self.rate:
            raise RuntimeError("injected: a fault after a batch was staged")
        return cursor
