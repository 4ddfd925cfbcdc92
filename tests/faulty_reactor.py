"""`python -m tests.faulty_reactor`: the real server on a database that can fill up.

While the file named by FAULT_FLAG exists, the database may not grow past the
pages it has (`PRAGMA max_page_count`), so any staged work that needs a new page
(bets, the draw's winners) fails with SQLite's own SQLITE_FULL, "database or disk
is full", as on a full disk. Remove the file and space "returns".
"""

import os
import sys

from reactor import __main__ as server_main
from reactor.store import _Savepoint

_enter = _Savepoint.__enter__


def enter(self):
    db = self.store._db
    if os.path.exists(os.environ["FAULT_FLAG"]):
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
    else:
        db.execute("PRAGMA max_page_count = 4294967294")
    return _enter(self)


_Savepoint.__enter__ = enter
sys.exit(server_main.main())
