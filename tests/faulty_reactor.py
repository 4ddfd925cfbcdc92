"""`python -m tests.faulty_reactor`: the real server on a store whose SQLite connection
fails on purpose (tests/faults.py): FAULT_FLAG=path for a disk that fills while the
file exists, FAULT_RATE=r (FAULT_SEED) for faults at random inside turns."""

import os
import sys

from reactor import __main__ as server_main
from reactor.store import Store
from tests.faults import FlagFileConnection, RandomFaultConnection

if "FAULT_FLAG" in os.environ:
    Store.connection_factory = FlagFileConnection
elif "FAULT_RATE" in os.environ:
    Store.connection_factory = RandomFaultConnection
sys.exit(server_main.main())
