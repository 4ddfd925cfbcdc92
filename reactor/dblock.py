"""One central per database: an exclusive lock held for the process's whole life."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DatabaseInUse(Exception):
    """Another central holds the database; the message is one line naming it."""


class DatabaseLock:
    """Owns an exclusive `flock` on the database file itself, taken before SQLite opens it.

    Two centrals on one database would each acknowledge bets the other does not
    know of, and store a resent file twice. The lock is on the database file (not
    a lock file beside it, which could be deleted alone), and `flock` locks are
    independent of the POSIX locks SQLite takes on the same file. The kernel drops
    it when the process ends, however it ends, so a crash never leaves it behind.
    Readers (`stats`, `export`, `audit`) do not take it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # an empty file is an empty database
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseInUse(f"database {self.path} is in use by another central") from None
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
