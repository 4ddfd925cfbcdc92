"""`python -m tests.faulty_reactor`: the real server with faults injected into its store.

- FAULT_FLAG=path: while that file exists, the database may not grow past the pages
  it has (`PRAGMA max_page_count`), so any staged work that needs a new page (bets,
  the draw's winners) fails with SQLite's own SQLITE_FULL, "database or disk is
  full", as on a full disk. Remove the file and space "returns".
- FAULT_RATE=r (and FAULT_SEED): with probability r, staging a batch does its work
  and then raises an exception that is not SQLite's (a bug half way through a piece
  of the turn), and a commit raises one before it commits.
"""

import os
import random
import sys

from reactor import __main__ as server_main
from reactor.store import Store, _Piece

if "FAULT_FLAG" in os.environ:
    _enter = _Piece.__enter__

    def enter(self):
        db = self.store._db
        if os.path.exists(os.environ["FAULT_FLAG"]):
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {pages}")
        else:
            db.execute("PRAGMA max_page_count = 4294967294")
        return _enter(self)

    _Piece.__enter__ = enter

if "FAULT_RATE" in os.environ:
    rate = float(os.environ["FAULT_RATE"])
    rng = random.Random(int(os.environ.get("FAULT_SEED", "0")))
    _stage_bets, _commit = Store.stage_bets, Store.commit

    def stage_bets(self, *args, **kwargs):
        first_rowid = _stage_bets(self, *args, **kwargs)
        if rng.random() < rate:
            raise RuntimeError("injected: a fault after a batch was staged")
        return first_rowid

    def commit(self):
        if self.in_transaction and rng.random() < rate:
            raise RuntimeError("injected: a fault before the commit")
        _commit(self)

    Store.stage_bets, Store.commit = stage_bets, commit

sys.exit(server_main.main())
