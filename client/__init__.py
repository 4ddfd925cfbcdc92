"""The agency client: reads an agency file and runs its lottery against the central.

`Agency` is the library the tests and benchmarks use; `python -m client` the program.
"""

from .agency import (
    Agency,
    AgencyConfig,
    AgencyFailed,
    AgencyResult,
    FileMismatch,
    NoDraw,
    ReceiptMismatch,
    ServerNotFound,
)
from .receipt import digest_bets
from .rows import BetFile, DataFileError, InvalidRow, RowProblem

__all__ = [
    "Agency",
    "AgencyConfig",
    "AgencyFailed",
    "AgencyResult",
    "BetFile",
    "DataFileError",
    "FileMismatch",
    "InvalidRow",
    "NoDraw",
    "ReceiptMismatch",
    "RowProblem",
    "ServerNotFound",
    "digest_bets",
]
