"""`python -m tests.faulty_reactor`: the real server on a database that can fill up.

While the file named by FAULT_FLAG exists, the database may not grow past the
pages it has (`PRAGMA max_page_count`), so inserts fail with SQLite's own
SQLITE_FULL, "database or disk is full", as on a full disk. Remove the file and
space "returns".
"""

import os
import sys

from reactor import __main__ as server_main
from reactor.store import Store

_stage_bets = Store.stage_bets


def stage_bets(self, *args, **kwargs):
    if os.path.exists(os.environ["FAULT_FLAG"]):
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages}")
    else:
        self._db.execute("PRAGMA max_page_count = 4294967294")
    return _stage_bets(self, *args, **kwargs)


Store.stage_bets = stage_bets
sys.exit(server_main.main())
